//! Core v1 kinds: Namespace, ConfigMap, Secret, Event.

use super::{
    at, no_prepare, no_update_validation, no_validation, text_at, Column, KindInfo, AGE_COLUMN,
    NAME_COLUMN,
};
use crate::object::Object;
use crate::status::FieldError;
use base64::Engine;
use serde_json::Value;

/// Finalizer in a namespace's `spec.finalizers` that the namespace controller removes once empty.
pub const NAMESPACE_FINALIZER: &str = "kubernetes";

pub(super) fn kinds() -> Vec<KindInfo> {
    let core = KindInfo {
        group: "",
        version: "v1",
        kind: "",
        plural: "",
        singular: "",
        short_names: &[],
        categories: &[],
        namespaced: true,
        status_subresource: false,
        name_is_label: false,
        field_selectors: &[],
        columns: &[NAME_COLUMN, AGE_COLUMN],
        validate: no_validation,
        validate_update: no_update_validation,
        prepare: no_prepare,
    };
    vec![
        KindInfo {
            kind: "Namespace",
            plural: "namespaces",
            singular: "namespace",
            short_names: &["ns"],
            namespaced: false,
            status_subresource: true,
            name_is_label: true,
            field_selectors: &["status.phase"],
            columns: &[
                NAME_COLUMN,
                Column {
                    name: "Status",
                    kind: "string",
                    priority: 0,
                    description: "The phase of the namespace.",
                    cell: |o| text_at(o, &["status", "phase"]),
                },
                AGE_COLUMN,
            ],
            ..core
        },
        KindInfo {
            kind: "Node",
            plural: "nodes",
            singular: "node",
            short_names: &["no"],
            namespaced: false,
            status_subresource: true,
            field_selectors: &["spec.unschedulable"],
            columns: &[
                NAME_COLUMN,
                Column {
                    name: "Status",
                    kind: "string",
                    priority: 0,
                    description:
                        "Ready, NotReady or Unknown, and SchedulingDisabled when cordoned.",
                    cell: |o| Value::String(node_status(o)),
                },
                Column {
                    name: "Zone",
                    kind: "string",
                    priority: 0,
                    description: "The node's topology.kubernetes.io/zone label.",
                    cell: |o| label_cell(o, "topology.kubernetes.io/zone"),
                },
                AGE_COLUMN,
                Column {
                    name: "Version",
                    kind: "string",
                    priority: 0,
                    description: "The vmo agent's version.",
                    cell: |o| text_at(o, &["status", "nodeInfo", "kubeletVersion"]),
                },
                Column {
                    name: "Internal-IP",
                    kind: "string",
                    priority: 1,
                    description: "The node's internal address.",
                    cell: |o| {
                        let ip = at(o, &["status", "addresses"])
                            .and_then(Value::as_array)
                            .and_then(|a| a.iter().find(|x| x["type"] == "InternalIP"))
                            .and_then(|x| x["address"].as_str())
                            .unwrap_or("");
                        Value::String(ip.to_string())
                    },
                },
                Column {
                    name: "Pool",
                    kind: "string",
                    priority: 1,
                    description: "The machine pool the node belongs to.",
                    cell: |o| label_cell(o, MACHINE_POOL_LABEL),
                },
                Column {
                    name: "Kernel-Version",
                    kind: "string",
                    priority: 1,
                    description: "The host kernel.",
                    cell: |o| text_at(o, &["status", "nodeInfo", "kernelVersion"]),
                },
                Column {
                    name: "Hypervisor",
                    kind: "string",
                    priority: 1,
                    description: "The QEMU the agent runs VMs with.",
                    cell: |o| text_at(o, &["status", "nodeInfo", "containerRuntimeVersion"]),
                },
            ],
            validate: validate_node,
            ..core
        },
        KindInfo {
            kind: "ConfigMap",
            plural: "configmaps",
            singular: "configmap",
            short_names: &["cm"],
            columns: &[
                NAME_COLUMN,
                Column {
                    name: "Data",
                    kind: "integer",
                    priority: 0,
                    description: "Number of data entries.",
                    cell: |o| Value::from(data_count(o)),
                },
                AGE_COLUMN,
            ],
            validate: validate_config_map,
            validate_update: immutable_data,
            ..core
        },
        KindInfo {
            kind: "Secret",
            plural: "secrets",
            singular: "secret",
            field_selectors: &["type"],
            columns: &[
                NAME_COLUMN,
                Column {
                    name: "Type",
                    kind: "string",
                    priority: 0,
                    description: "The type of the secret.",
                    cell: |o| Value::String(secret_type(o).to_string()),
                },
                Column {
                    name: "Data",
                    kind: "integer",
                    priority: 0,
                    description: "Number of data entries.",
                    cell: |o| Value::from(data_count(o)),
                },
                AGE_COLUMN,
            ],
            validate: validate_secret,
            validate_update: immutable_data,
            prepare: fold_string_data,
            ..core
        },
        KindInfo {
            kind: "Event",
            plural: "events",
            singular: "event",
            short_names: &["ev"],
            field_selectors: &[
                "involvedObject.kind",
                "involvedObject.name",
                "involvedObject.namespace",
                "involvedObject.uid",
                "reason",
                "type",
            ],
            columns: &[
                Column {
                    name: "Last Seen",
                    kind: "string",
                    priority: 0,
                    description: "Time since the event was last seen.",
                    cell: |o| {
                        let last = at(o, &["lastTimestamp"])
                            .and_then(Value::as_str)
                            .or(o.metadata.creation_timestamp.as_deref());
                        Value::String(crate::meta::human_age(last))
                    },
                },
                Column {
                    name: "Type",
                    kind: "string",
                    priority: 0,
                    description: "Normal or Warning.",
                    cell: |o| text_at(o, &["type"]),
                },
                Column {
                    name: "Reason",
                    kind: "string",
                    priority: 0,
                    description: "Why the event happened.",
                    cell: |o| text_at(o, &["reason"]),
                },
                Column {
                    name: "Object",
                    kind: "string",
                    priority: 0,
                    description: "The object the event is about.",
                    cell: |o| {
                        let kind = text_at(o, &["involvedObject", "kind"]);
                        let name = text_at(o, &["involvedObject", "name"]);
                        Value::String(format!(
                            "{}/{}",
                            kind.as_str().unwrap_or("").to_ascii_lowercase(),
                            name.as_str().unwrap_or("")
                        ))
                    },
                },
                Column {
                    name: "Message",
                    kind: "string",
                    priority: 0,
                    description: "What happened.",
                    cell: |o| text_at(o, &["message"]),
                },
            ],
            validate: validate_event,
            ..core
        },
    ]
}

fn data_count(o: &Object) -> usize {
    ["data", "binaryData", "stringData"]
        .iter()
        .filter_map(|k| o.body.get(*k).and_then(Value::as_object))
        .map(|m| m.len())
        .sum()
}

fn secret_type(o: &Object) -> &str {
    o.body
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("Opaque")
}

fn validate_data_keys(o: &Object, fields: &[&str], errors: &mut Vec<FieldError>) {
    let mut total = 0;
    for field in fields {
        match o.body.get(*field) {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (key, value) in map {
                    let ok = !key.is_empty()
                        && key.len() <= 253
                        && key
                            .bytes()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
                    if !ok {
                        errors.push(FieldError::invalid(
                            format!("{field}[{key}]"),
                            key,
                            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                        ));
                    }
                    match value {
                        Value::String(s) => total += s.len(),
                        other => errors.push(FieldError::invalid(
                            format!("{field}[{key}]"),
                            other.to_string(),
                            "must be a string",
                        )),
                    }
                }
            }
            Some(other) => errors.push(FieldError::invalid(
                *field,
                other.to_string(),
                "must be a map of strings",
            )),
        }
    }
    if total > 1024 * 1024 {
        errors.push(FieldError::invalid(
            fields[0],
            "",
            "data may not be larger than 1 MiB in total",
        ));
    }
}

fn validate_config_map(o: &Object) -> Vec<FieldError> {
    let mut errors = Vec::new();
    validate_data_keys(o, &["data", "binaryData"], &mut errors);
    errors
}

fn validate_secret(o: &Object) -> Vec<FieldError> {
    let mut errors = Vec::new();
    validate_data_keys(o, &["data", "stringData"], &mut errors);
    if let Some(Value::Object(map)) = o.body.get("data") {
        for (key, value) in map {
            if let Some(s) = value.as_str() {
                if base64::engine::general_purpose::STANDARD.decode(s).is_err() {
                    errors.push(FieldError::invalid(
                        format!("data[{key}]"),
                        "<redacted>",
                        "must be base64-encoded",
                    ));
                }
            }
        }
    }
    errors
}

fn immutable_data(old: &Object, new: &Object) -> Vec<FieldError> {
    let immutable = old.body.get("immutable") == Some(&Value::Bool(true));
    let mut errors = Vec::new();
    if immutable {
        for field in ["data", "binaryData", "stringData", "immutable"] {
            if old.body.get(field) != new.body.get(field) {
                errors.push(FieldError::forbidden(
                    field,
                    "field is immutable when `immutable` is set",
                ));
            }
        }
    }
    if old.kind == "Secret" && secret_type(old) != secret_type(new) {
        errors.push(FieldError::invalid(
            "type",
            secret_type(new),
            "field is immutable",
        ));
    }
    errors
}

fn validate_event(o: &Object) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if at(o, &["involvedObject"]).is_none() {
        errors.push(FieldError::required("involvedObject", ""));
    }
    if let Some(t) = at(o, &["type"]).and_then(Value::as_str) {
        if t != "Normal" && t != "Warning" {
            errors.push(FieldError::not_supported("type", t, &["Normal", "Warning"]));
        }
    }
    errors
}

/// Decodes a Secret's `data` (base64) and `stringData` into key -> bytes.
pub fn secret_data(o: &Object) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    if let Some(Value::Object(map)) = o.body.get("data") {
        for (k, v) in map {
            if let Some(bytes) = v
                .as_str()
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            {
                out.insert(k.clone(), bytes);
            }
        }
    }
    if let Some(Value::Object(map)) = o.body.get("stringData") {
        for (k, v) in map {
            if let Some(s) = v.as_str() {
                out.insert(k.clone(), s.as_bytes().to_vec());
            }
        }
    }
    out
}

/// Kubernetes' `stringData` is write-only: it is folded into base64 `data` on every write.
fn fold_string_data(o: &mut Object) {
    let all_strings = match o.body.get("stringData") {
        Some(Value::Object(m)) => m.values().all(Value::is_string),
        _ => false,
    };
    if !all_strings {
        return; // validation names the bad entries
    }
    let Some(Value::Object(strings)) = o.body.remove("stringData") else {
        return;
    };
    let data = o
        .body
        .entry("data")
        .or_insert_with(|| Value::Object(Default::default()));
    if !data.is_object() {
        *data = Value::Object(Default::default());
    }
    if let Some(map) = data.as_object_mut() {
        for (k, v) in strings {
            if let Some(s) = v.as_str() {
                let encoded = base64::engine::general_purpose::STANDARD.encode(s);
                map.insert(k, Value::String(encoded));
            }
        }
    }
}

/// The label naming a node's machine pool (MAAS pools in the reference architecture).
pub const MACHINE_POOL_LABEL: &str = "vmo.io/machine-pool";
/// The label naming a node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The Node annotation with the URL of the agent's endpoint (consoles, metrics), which the server
/// proxies to.
pub const AGENT_ENDPOINT_ANNOTATION: &str = "vmo.io/agent-endpoint";
/// The Node annotation with the SHA-256 fingerprint of the agent endpoint's certificate, which the
/// server pins.
pub const AGENT_CERT_ANNOTATION: &str = "vmo.io/agent-cert-sha256";
/// The Node annotation naming the node's shared storage pool: a directory every node that has it
/// mounts at the same path (NFS or a SAN filesystem), so disks inside it migrate without copying.
pub const SHARED_POOL_ANNOTATION: &str = "vmo.io/shared-pool";
/// The HTTP upgrade token of the agent endpoint's raw byte streams (console, VNC), which the server
/// asks for and the agent answers.
pub const AGENT_STREAM_PROTOCOL: &str = "vmo-stream";

fn label_cell(o: &Object, key: &str) -> Value {
    Value::String(o.metadata.labels.get(key).cloned().unwrap_or_default())
}

/// The status of a node's condition of this type (`True`, `False`, `Unknown`), if reported.
pub fn node_condition(o: &Object, condition: &str) -> Option<String> {
    at(o, &["status", "conditions"])
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == condition)
        .and_then(|c| c["status"].as_str())
        .map(str::to_string)
}

fn node_status(o: &Object) -> String {
    let ready = match node_condition(o, "Ready").as_deref() {
        Some("True") => "Ready",
        Some("False") => "NotReady",
        _ => "Unknown",
    };
    if at(o, &["spec", "unschedulable"]) == Some(&Value::Bool(true)) {
        format!("{ready},SchedulingDisabled")
    } else {
        ready.to_string()
    }
}

const TAINT_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];

fn validate_node(o: &Object) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(u) = at(o, &["spec", "unschedulable"]) {
        if !u.is_boolean() {
            errors.push(FieldError::invalid(
                "spec.unschedulable",
                u.to_string(),
                "must be true or false",
            ));
        }
    }
    if let Some(taints) = at(o, &["spec", "taints"]) {
        match taints.as_array() {
            None => errors.push(FieldError::invalid(
                "spec.taints",
                taints.to_string(),
                "must be a list",
            )),
            Some(list) => {
                for (i, t) in list.iter().enumerate() {
                    let key = t.get("key").and_then(Value::as_str).unwrap_or("");
                    if key.is_empty() {
                        errors.push(FieldError::required(format!("spec.taints[{i}].key"), ""));
                    } else {
                        errors.extend(crate::validation::qualified_name(
                            &format!("spec.taints[{i}].key"),
                            key,
                        ));
                    }
                    let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
                    if !TAINT_EFFECTS.contains(&effect) {
                        errors.push(FieldError::not_supported(
                            format!("spec.taints[{i}].effect"),
                            effect,
                            TAINT_EFFECTS,
                        ));
                    }
                }
            }
        }
    }
    errors
}
