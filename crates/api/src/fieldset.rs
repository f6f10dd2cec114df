//! Field ownership for server-side apply: which manager set which leaf of an object.
//!
//! A field set is a set of paths to leaves. Maps are walked key by key; lists and scalars are leaves
//! (lists are treated as atomic, as Kubernetes does for lists without merge keys). Sets convert to and
//! from the `fieldsV1` format (`{"f:spec": {"f:running": {}}}`) stored in `metadata.managedFields`.

use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// A path from the object root to one field.
pub type FieldPath = Vec<String>;
/// A set of owned fields.
pub type FieldSet = BTreeSet<FieldPath>;

/// Which part of an object a write may change: the main resource or its status subresource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Main,
    Status,
}

impl Scope {
    /// Whether a top-level or metadata field belongs to this scope and is user-owned at all.
    fn includes(self, path: &[String]) -> bool {
        let Some(first) = path.first() else {
            return false;
        };
        match (self, first.as_str()) {
            (Scope::Status, "status") => true,
            (Scope::Status, _) => false,
            (Scope::Main, "apiVersion" | "kind" | "status") => false,
            (Scope::Main, "metadata") => matches!(
                path.get(1).map(String::as_str),
                Some("labels" | "annotations" | "finalizers" | "ownerReferences") | None
            ),
            (Scope::Main, _) => true,
        }
    }
}

/// Every leaf of `value` within `scope`.
pub fn leaves(value: &Value, scope: Scope) -> FieldSet {
    let mut out = FieldSet::new();
    let mut path = Vec::new();
    collect(value, &mut path, &mut out);
    out.retain(|p| scope.includes(p) && !(p.len() == 1 && p[0] == "metadata"));
    out
}

fn collect(value: &Value, path: &mut FieldPath, out: &mut FieldSet) {
    match value {
        Value::Object(map) if !(map.is_empty() || path.len() == 2 && is_atomic_meta(path)) => {
            for (k, v) in map {
                path.push(k.clone());
                collect(v, path, out);
                path.pop();
            }
        }
        _ => {
            if !path.is_empty() {
                out.insert(path.clone());
            }
        }
    }
}

fn is_atomic_meta(path: &[String]) -> bool {
    path[0] == "metadata" && path[1] != "labels" && path[1] != "annotations"
}

/// The value at a path, if present.
pub fn get<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, k| v.get(k))
}

/// Sets the value at a path, creating maps on the way.
pub fn set(value: &mut Value, path: &[String], leaf: Value) {
    let mut current = value;
    for key in &path[..path.len() - 1] {
        if !current.is_object() {
            *current = Value::Object(Map::new());
        }
        current = current
            .as_object_mut()
            .expect("just made an object")
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !current.is_object() {
        *current = Value::Object(Map::new());
    }
    if let Some(map) = current.as_object_mut() {
        map.insert(path[path.len() - 1].clone(), leaf);
    }
}

/// Removes the value at a path, then any maps left empty above it.
pub fn remove(value: &mut Value, path: &[String]) {
    fn walk(value: &mut Value, path: &[String]) -> bool {
        let Some(map) = value.as_object_mut() else {
            return false;
        };
        if path.len() == 1 {
            map.remove(&path[0]);
        } else if let Some(child) = map.get_mut(&path[0]) {
            if walk(child, &path[1..]) {
                map.remove(&path[0]);
            }
        }
        map.is_empty()
    }
    walk(value, path);
}

/// True when one path is a prefix of the other: owning one touches the other.
pub fn overlaps(a: &[String], b: &[String]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// Encodes a set in the `fieldsV1` format.
pub fn to_fields_v1(set: &FieldSet) -> Map<String, Value> {
    let mut root = Value::Object(Map::new());
    for path in set {
        let keyed: Vec<String> = path.iter().map(|k| format!("f:{k}")).collect();
        set_leaf_marker(&mut root, &keyed);
    }
    match root {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn set_leaf_marker(root: &mut Value, keyed: &[String]) {
    let mut current = root;
    for key in keyed {
        current = current
            .as_object_mut()
            .expect("fieldsV1 nodes are maps")
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// Decodes a `fieldsV1` map; entries other than `f:` (Kubernetes' `k:`, `v:`, `.`) mark their parent.
pub fn from_fields_v1(map: &Map<String, Value>) -> FieldSet {
    let mut out = FieldSet::new();
    let mut path = Vec::new();
    decode(map, &mut path, &mut out);
    out
}

fn decode(map: &Map<String, Value>, path: &mut FieldPath, out: &mut FieldSet) {
    let mut has_field_children = false;
    for (key, child) in map {
        if let Some(name) = key.strip_prefix("f:") {
            has_field_children = true;
            path.push(name.to_string());
            match child.as_object() {
                Some(m) if !m.is_empty() => decode(m, path, out),
                _ => {
                    out.insert(path.clone());
                }
            }
            path.pop();
        }
    }
    if !has_field_children && !path.is_empty() {
        out.insert(path.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn leaves_skip_server_fields_and_treat_lists_atomically() {
        let obj = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "uid": "x", "labels": {"app": "web"}},
            "data": {"k": "v"},
            "spec": {"list": [1, 2], "empty": {}},
            "status": {"phase": "Running"}
        });
        let set = leaves(&obj, Scope::Main);
        let paths: Vec<String> = set.iter().map(|p| p.join(".")).collect();
        assert_eq!(
            paths,
            vec!["data.k", "metadata.labels.app", "spec.empty", "spec.list"]
        );
        let status = leaves(&obj, Scope::Status);
        assert_eq!(status.len(), 1);
        assert_eq!(from_fields_v1(&to_fields_v1(&set)), set);
    }

    #[test]
    fn remove_prunes_empty_parents() {
        let mut v = json!({"spec": {"a": {"b": 1}}, "x": 1});
        remove(&mut v, &["spec".into(), "a".into(), "b".into()]);
        assert_eq!(v, json!({"x": 1}));
    }
}
