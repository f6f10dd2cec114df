//! The generic object every kind shares: `{apiVersion, kind, metadata, ...}` with all other top-level
//! fields kept verbatim, so fields vmo does not know survive a round trip through the store.

use crate::meta::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An API object of any kind. `spec`, `status`, `data` and unknown fields live in `body`.
///
/// Deserialization is written by hand: serde's `flatten` buffers every field through an intermediate
/// representation, which made decoding the hottest path of the API server.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Object {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(flatten)]
    pub body: Map<String, Value>,
}

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = Object;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object with apiVersion, kind and metadata")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Object, A::Error> {
                let mut obj = Object::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "apiVersion" => {
                            obj.api_version =
                                map.next_value::<Option<String>>()?.unwrap_or_default()
                        }
                        "kind" => {
                            obj.kind = map.next_value::<Option<String>>()?.unwrap_or_default()
                        }
                        "metadata" => {
                            obj.metadata =
                                map.next_value::<Option<ObjectMeta>>()?.unwrap_or_default()
                        }
                        _ => {
                            let value = map.next_value::<Value>()?;
                            obj.body.insert(key, value);
                        }
                    }
                }
                Ok(obj)
            }
        }
        d.deserialize_map(Fields)
    }
}

impl Object {
    /// A new, empty object of the given type.
    pub fn new(api_version: &str, kind: &str, namespace: &str, name: &str) -> Self {
        Self {
            api_version: api_version.into(),
            kind: kind.into(),
            metadata: ObjectMeta {
                name: name.into(),
                namespace: namespace.into(),
                ..Default::default()
            },
            body: Map::new(),
        }
    }

    /// Converts to a JSON value.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Builds from a JSON value, moving its fields; fails when metadata has the wrong shape.
    pub fn from_value(value: Value) -> Result<Self, serde_json::Error> {
        let Value::Object(mut map) = value else {
            return serde_json::from_value(value);
        };
        let text = |v: Option<Value>| -> Result<String, serde_json::Error> {
            match v {
                None | Some(Value::Null) => Ok(String::new()),
                Some(other) => serde_json::from_value(other),
            }
        };
        let api_version = text(map.shift_remove("apiVersion"))?;
        let kind = text(map.shift_remove("kind"))?;
        let metadata = match map.shift_remove("metadata") {
            None | Some(Value::Null) => ObjectMeta::default(),
            Some(m) => serde_json::from_value(m)?,
        };
        Ok(Self {
            api_version,
            kind,
            metadata,
            body: map,
        })
    }

    /// `spec`, or `null`.
    pub fn spec(&self) -> &Value {
        self.body.get("spec").unwrap_or(&Value::Null)
    }

    /// `status`, or `null`.
    pub fn status(&self) -> &Value {
        self.body.get("status").unwrap_or(&Value::Null)
    }

    /// Reads a dotted path (`status.nodeName`, `metadata.name`) as a string, for field selectors.
    pub fn field_string(&self, path: &str) -> Option<String> {
        let value = self.to_value();
        let mut current = &value;
        for part in path.split('.') {
            current = current.get(part)?;
        }
        match current {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }

    /// `namespace/name`, or `name` for cluster-scoped objects.
    pub fn display_name(&self) -> String {
        if self.metadata.namespace.is_empty() {
            self.metadata.name.clone()
        } else {
            format!("{}/{}", self.metadata.namespace, self.metadata.name)
        }
    }

    /// The API group of `apiVersion` (empty for core).
    pub fn group(&self) -> &str {
        self.api_version
            .rsplit_once('/')
            .map(|(g, _)| g)
            .unwrap_or("")
    }
}

/// A list response: `{apiVersion, kind: FooList, metadata: {resourceVersion, continue}, items}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectList {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ListMeta,
    #[serde(default)]
    pub items: Vec<Object>,
}

/// `metadata` of a list.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    #[serde(default, rename = "continue", skip_serializing_if = "String::is_empty")]
    pub continue_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_item_count: Option<i64>,
}

/// One watch event on the wire: `{"type": "ADDED", "object": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub event_type: String,
    pub object: Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let input = json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "a", "labels": {"x": "y"}},
            "spec": {"running": true, "somethingNew": {"deep": [1, 2]}},
            "extraTopLevel": "kept"
        });
        let obj = Object::from_value(input.clone()).unwrap();
        assert_eq!(obj.to_value(), input);
        assert_eq!(obj.field_string("metadata.name").as_deref(), Some("a"));
        assert_eq!(obj.group(), "kubevirt.io");
    }
}
