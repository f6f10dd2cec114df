//! Patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902), and server-side apply with field
//! ownership and conflicts. kubectl's strategic merge patch is accepted as a merge patch: for the
//! map-shaped kinds it sends them for (ConfigMap, Secret, Namespace) the two agree.

use crate::fieldset::{self, FieldPath, FieldSet, Scope};
use crate::meta::{now_rfc3339, ManagedFieldsEntry};
use serde_json::Value;

/// The patch formats the API accepts, by content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchKind {
    /// Maps a `Content-Type` to a patch kind.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        match content_type.split(';').next().unwrap_or("").trim() {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/json-patch+json" => Some(Self::Json),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// Why a patch could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("invalid JSON patch: {0}")]
    InvalidJsonPatch(String),
    #[error("the JSON patch failed: {0}")]
    JsonPatchFailed(String),
    #[error("the merge patch must be a JSON object")]
    MergeNotObject,
    #[error("Apply failed with {} conflict(s): {}", .0.len(), describe_conflicts(.0))]
    Conflicts(Vec<ApplyConflict>),
}

/// One field another manager owns with a different value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyConflict {
    pub manager: String,
    pub path: String,
}

fn describe_conflicts(conflicts: &[ApplyConflict]) -> String {
    conflicts
        .iter()
        .map(|c| format!("conflict with {:?}: .{}", c.manager, c.path))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Applies a merge (or strategic merge) patch.
pub fn merge_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    if !patch.is_object() {
        return Err(PatchError::MergeNotObject);
    }
    json_patch::merge(target, patch);
    Ok(())
}

/// Applies an RFC 6902 JSON patch.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| PatchError::InvalidJsonPatch(e.to_string()))?;
    json_patch::patch(target, &ops).map_err(|e| PatchError::JsonPatchFailed(e.to_string()))
}

fn entries(obj: &Value) -> Vec<ManagedFieldsEntry> {
    obj.pointer("/metadata/managedFields")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

fn store_entries(obj: &mut Value, entries: Vec<ManagedFieldsEntry>) {
    let kept: Vec<ManagedFieldsEntry> = entries
        .into_iter()
        .filter(|e| !e.fields_v1.is_empty())
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if kept.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert(
                "managedFields".into(),
                serde_json::to_value(kept).unwrap_or(Value::Null),
            );
        }
    }
}

fn scope_subresource(scope: Scope) -> &'static str {
    match scope {
        Scope::Main => "",
        Scope::Status => "status",
    }
}

fn is_same_owner(e: &ManagedFieldsEntry, manager: &str, operation: &str, scope: Scope) -> bool {
    e.manager == manager && e.operation == operation && e.subresource == scope_subresource(scope)
}

fn take_paths(entry: &mut ManagedFieldsEntry, drop: impl Fn(&FieldPath) -> bool) {
    let mut set = fieldset::from_fields_v1(&entry.fields_v1);
    set.retain(|p| !drop(p));
    entry.fields_v1 = fieldset::to_fields_v1(&set);
}

fn upsert(
    entries: &mut Vec<ManagedFieldsEntry>,
    manager: &str,
    operation: &str,
    api_version: &str,
    scope: Scope,
    set: FieldSet,
) {
    let fields_v1 = fieldset::to_fields_v1(&set);
    let existing = entries
        .iter()
        .position(|e| is_same_owner(e, manager, operation, scope));
    match existing {
        // Unchanged ownership keeps its entry as it was, so a no-op write changes nothing.
        Some(i) if entries[i].fields_v1 == fields_v1 && entries[i].api_version == api_version => {}
        Some(i) if set.is_empty() => {
            entries.remove(i);
        }
        _ if set.is_empty() => {}
        found => {
            let entry = ManagedFieldsEntry {
                manager: manager.into(),
                operation: operation.into(),
                api_version: api_version.into(),
                time: Some(now_rfc3339()),
                fields_type: "FieldsV1".into(),
                fields_v1,
                subresource: scope_subresource(scope).into(),
            };
            match found {
                Some(i) => entries[i] = entry,
                None => entries.push(entry),
            }
        }
    }
}

/// Records an ordinary write (create, update, merge or JSON patch) by `manager`: the fields it changed
/// become its own and leave other managers. `new` gets the updated `managedFields`.
pub fn track_update(old: Option<&Value>, new: &mut Value, manager: &str, scope: Scope) {
    let mut list = old.map(entries).unwrap_or_default();
    let new_leaves = fieldset::leaves(new, scope);
    let changed: FieldSet = match old {
        None => new_leaves.clone(),
        Some(old) => new_leaves
            .iter()
            .filter(|p| fieldset::get(old, p) != fieldset::get(new, p))
            .cloned()
            .collect(),
    };
    let removed: FieldSet = old
        .map(|o| fieldset::leaves(o, scope))
        .unwrap_or_default()
        .into_iter()
        .filter(|p| fieldset::get(new, p).is_none())
        .collect();
    for entry in list.iter_mut() {
        take_paths(entry, |p| {
            changed.iter().any(|c| fieldset::overlaps(c, p)) || removed.contains(p)
        });
    }
    let mut mine = list
        .iter()
        .find(|e| is_same_owner(e, manager, "Update", scope))
        .map(|e| fieldset::from_fields_v1(&e.fields_v1))
        .unwrap_or_default();
    mine.extend(changed);
    mine.retain(|p| fieldset::get(new, p).is_some());
    let api_version = new
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    upsert(&mut list, manager, "Update", &api_version, scope, mine);
    store_entries(new, list);
}

/// Server-side apply of `applied` (the manager's whole intent) onto `live` (or a new object).
///
/// Fields the manager applied before and leaves out now are removed unless another manager owns them;
/// fields another manager owns with a different value are conflicts unless `force` takes them over.
pub fn server_side_apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    scope: Scope,
) -> Result<Value, PatchError> {
    let mut list = live.map(entries).unwrap_or_default();
    let wanted = fieldset::leaves(applied, scope);
    let mut conflicts = Vec::new();
    for entry in list.iter() {
        if is_same_owner(entry, manager, "Apply", scope) {
            continue;
        }
        for owned in fieldset::from_fields_v1(&entry.fields_v1) {
            for path in wanted.iter().filter(|w| fieldset::overlaps(w, &owned)) {
                let live_value = live.and_then(|l| fieldset::get(l, path));
                if live_value != fieldset::get(applied, path) {
                    conflicts.push(ApplyConflict {
                        manager: entry.manager.clone(),
                        path: path.join("."),
                    });
                }
            }
        }
    }
    conflicts.dedup();
    if !conflicts.is_empty() && !force {
        return Err(PatchError::Conflicts(conflicts));
    }
    if force {
        for entry in list.iter_mut() {
            if !is_same_owner(entry, manager, "Apply", scope) {
                take_paths(entry, |p| wanted.iter().any(|w| fieldset::overlaps(w, p)));
            }
        }
    }
    let previous = list
        .iter()
        .find(|e| is_same_owner(e, manager, "Apply", scope))
        .map(|e| fieldset::from_fields_v1(&e.fields_v1))
        .unwrap_or_default();
    let others: FieldSet = list
        .iter()
        .filter(|e| !is_same_owner(e, manager, "Apply", scope))
        .flat_map(|e| fieldset::from_fields_v1(&e.fields_v1))
        .collect();
    let mut result = match live {
        Some(l) => l.clone(),
        None => skeleton(applied),
    };
    for dropped in previous.difference(&wanted) {
        let still_owned = others.iter().any(|o| fieldset::overlaps(o, dropped));
        let re_applied = wanted.iter().any(|w| fieldset::overlaps(w, dropped));
        if !still_owned && !re_applied {
            fieldset::remove(&mut result, dropped);
        }
    }
    for path in &wanted {
        if let Some(value) = fieldset::get(applied, path) {
            fieldset::set(&mut result, path, value.clone());
        }
    }
    let api_version = applied
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    upsert(&mut list, manager, "Apply", &api_version, scope, wanted);
    store_entries(&mut result, list);
    Ok(result)
}

fn skeleton(applied: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for key in ["apiVersion", "kind"] {
        if let Some(v) = applied.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    let mut meta = serde_json::Map::new();
    for key in ["name", "namespace", "generateName"] {
        if let Some(v) = applied.pointer(&format!("/metadata/{key}")) {
            meta.insert(key.into(), v.clone());
        }
    }
    out.insert("metadata".into(), Value::Object(meta));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cm(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data})
    }

    #[test]
    fn apply_removes_fields_the_manager_dropped() {
        let first = server_side_apply(
            None,
            &cm(json!({"a": "1", "b": "2"})),
            "me",
            false,
            Scope::Main,
        )
        .unwrap();
        let second = server_side_apply(
            Some(&first),
            &cm(json!({"a": "1"})),
            "me",
            false,
            Scope::Main,
        )
        .unwrap();
        assert_eq!(second["data"], json!({"a": "1"}));
    }

    #[test]
    fn apply_conflicts_with_other_managers_unless_forced() {
        let first =
            server_side_apply(None, &cm(json!({"a": "1"})), "alice", false, Scope::Main).unwrap();
        let err = server_side_apply(
            Some(&first),
            &cm(json!({"a": "2"})),
            "bob",
            false,
            Scope::Main,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains(r#"conflict with "alice": .data.a"#),
            "{err}"
        );
        // Same value is shared ownership, not a conflict.
        let shared = server_side_apply(
            Some(&first),
            &cm(json!({"a": "1"})),
            "bob",
            false,
            Scope::Main,
        )
        .unwrap();
        assert_eq!(shared["data"]["a"], "1");
        let forced = server_side_apply(
            Some(&first),
            &cm(json!({"a": "2"})),
            "bob",
            true,
            Scope::Main,
        )
        .unwrap();
        assert_eq!(forced["data"]["a"], "2");
        let owners: Vec<&str> = forced["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(owners, vec!["bob"]);
    }

    #[test]
    fn updates_take_ownership_of_changed_fields() {
        let first =
            server_side_apply(None, &cm(json!({"a": "1"})), "alice", false, Scope::Main).unwrap();
        let mut edited = first.clone();
        edited["data"]["a"] = json!("edited");
        track_update(Some(&first), &mut edited, "kubectl-edit", Scope::Main);
        let err = server_side_apply(
            Some(&edited),
            &cm(json!({"a": "1"})),
            "alice",
            false,
            Scope::Main,
        )
        .unwrap_err();
        assert!(err.to_string().contains("kubectl-edit"));
    }

    #[test]
    fn merge_and_json_patches() {
        let mut v = json!({"a": {"b": 1, "c": 2}});
        merge_patch(&mut v, &json!({"a": {"b": null, "d": 3}})).unwrap();
        assert_eq!(v, json!({"a": {"c": 2, "d": 3}}));
        json_patch(
            &mut v,
            &json!([{"op": "replace", "path": "/a/c", "value": 9}]),
        )
        .unwrap();
        assert_eq!(v["a"]["c"], 9);
        assert!(json_patch(&mut v, &json!([{"op": "remove", "path": "/nope"}])).is_err());
        assert!(merge_patch(&mut v, &json!([1])).is_err());
    }
}
