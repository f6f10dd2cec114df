//! Volumes as Kubernetes has them: `storage.k8s.io/v1` StorageClass and core v1
//! PersistentVolumeClaim and PersistentVolume, with vmo's two provisioners.
//!
//! A claim asks for a size and access modes from a class; a node agent provisions it as one disk file
//! in a pool on a node (`vmo.io/local`: the node's own pool, so the volume pins its node) or in the
//! pool every node mounts (`vmo.io/shared`: ReadWriteMany, migrates without copying), records it as a
//! PersistentVolume and binds the claim. Who does what:
//!
//! ```text
//!  storage controller: default class, claim protection, picks a node for Immediate claims
//!  scheduler:          picks the node of a WaitForFirstConsumer claim with the VM that uses it
//!     both write the claim annotation volume.kubernetes.io/selected-node
//!  agent of that node: fills the file (blank, import, upload, clone), creates the PV, binds the claim
//! ```

use super::{at, no_prepare, text_at, Column, KindInfo, AGE_COLUMN, NAME_COLUMN};
use crate::object::Object;
use crate::quantity::Quantity;
use crate::status::FieldError;
use crate::validation;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The provisioner of volumes in a node's own pool.
pub const LOCAL_PROVISIONER: &str = "vmo.io/local";
/// The provisioner of volumes in the pool every node mounts at the same path.
pub const SHARED_PROVISIONER: &str = "vmo.io/shared";
/// Every provisioner vmo runs.
pub const PROVISIONERS: &[&str] = &[LOCAL_PROVISIONER, SHARED_PROVISIONER];
/// The annotation that makes a class the default.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
/// The node chosen to provision a claim (Kubernetes' own annotation for WaitForFirstConsumer).
pub const SELECTED_NODE_ANNOTATION: &str = "volume.kubernetes.io/selected-node";
/// The provisioner a claim waits for (set by the storage controller, as Kubernetes does).
pub const STORAGE_PROVISIONER_ANNOTATION: &str = "volume.kubernetes.io/storage-provisioner";
/// On a PersistentVolume: which provisioner made it.
pub const PROVISIONED_BY_ANNOTATION: &str = "pv.kubernetes.io/provisioned-by";
/// On a PersistentVolume: the node whose agent made the file and removes it.
pub const PROVISIONED_ON_ANNOTATION: &str = "vmo.io/provisioned-on";
/// Keeps a claim while a VM uses it (Kubernetes' name).
pub const PVC_PROTECTION_FINALIZER: &str = "kubernetes.io/pvc-protection";
/// Keeps a PersistentVolume until its agent removed the file.
pub const VOLUME_CLEANUP_FINALIZER: &str = "vmo.io/volume-cleanup";
/// Access modes Kubernetes defines.
pub const ACCESS_MODES: &[&str] = &[
    "ReadWriteOnce",
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOncePod",
];
/// Volume modes.
pub const VOLUME_MODES: &[&str] = &["Filesystem", "Block"];
/// Formats of volume files (the `format` class parameter).
pub const VOLUME_FORMATS: &[&str] = &["qcow2", "raw"];
const RECLAIM_POLICIES: &[&str] = &["Delete", "Retain"];
const BINDING_MODES: &[&str] = &["Immediate", "WaitForFirstConsumer"];

pub(super) fn kinds() -> Vec<KindInfo> {
    vec![
        KindInfo {
            group: "storage.k8s.io",
            version: "v1",
            kind: "StorageClass",
            plural: "storageclasses",
            singular: "storageclass",
            short_names: &["sc"],
            categories: &[],
            namespaced: false,
            status_subresource: false,
            name_is_label: false,
            field_selectors: &[],
            columns: &[
                Column {
                    name: "Name",
                    kind: "string",
                    priority: 0,
                    description: "The class's name, marked (default) for the default class.",
                    cell: |o| {
                        let mark = if is_default_class(o) {
                            " (default)"
                        } else {
                            ""
                        };
                        Value::String(format!("{}{mark}", o.metadata.name))
                    },
                },
                Column {
                    name: "Provisioner",
                    kind: "string",
                    priority: 0,
                    description: "Who makes the volumes.",
                    cell: |o| text_at(o, &["provisioner"]),
                },
                Column {
                    name: "ReclaimPolicy",
                    kind: "string",
                    priority: 0,
                    description: "What happens to a volume when its claim goes.",
                    cell: |o| Value::String(StorageClass::of(o).reclaim_policy().into()),
                },
                Column {
                    name: "VolumeBindingMode",
                    kind: "string",
                    priority: 0,
                    description: "When a claim gets its volume.",
                    cell: |o| Value::String(StorageClass::of(o).binding_mode().into()),
                },
                Column {
                    name: "AllowVolumeExpansion",
                    kind: "boolean",
                    priority: 0,
                    description: "Whether claims may grow.",
                    cell: |o| Value::Bool(StorageClass::of(o).allow_volume_expansion),
                },
                AGE_COLUMN,
            ],
            validate: validate_class,
            validate_update: validate_class_update,
            prepare: no_prepare,
        },
        KindInfo {
            group: "",
            version: "v1",
            kind: "PersistentVolumeClaim",
            plural: "persistentvolumeclaims",
            singular: "persistentvolumeclaim",
            short_names: &["pvc"],
            categories: &["all"],
            namespaced: true,
            status_subresource: true,
            name_is_label: false,
            field_selectors: &["spec.volumeName", "status.phase"],
            columns: &[
                NAME_COLUMN,
                Column {
                    name: "Status",
                    kind: "string",
                    priority: 0,
                    description: "Pending, Bound or Lost.",
                    cell: |o| text_at(o, &["status", "phase"]),
                },
                Column {
                    name: "Volume",
                    kind: "string",
                    priority: 0,
                    description: "The bound PersistentVolume.",
                    cell: |o| text_at(o, &["spec", "volumeName"]),
                },
                Column {
                    name: "Capacity",
                    kind: "string",
                    priority: 0,
                    description: "The bound volume's size.",
                    cell: |o| text_at(o, &["status", "capacity", "storage"]),
                },
                Column {
                    name: "Access Modes",
                    kind: "string",
                    priority: 0,
                    description: "How the volume may be used.",
                    cell: |o| access_modes_cell(at(o, &["status", "accessModes"])),
                },
                Column {
                    name: "StorageClass",
                    kind: "string",
                    priority: 0,
                    description: "The claim's class.",
                    cell: |o| text_at(o, &["spec", "storageClassName"]),
                },
                AGE_COLUMN,
                Column {
                    name: "VolumeMode",
                    kind: "string",
                    priority: 1,
                    description: "Filesystem or Block.",
                    cell: |o| Value::String(ClaimSpec::of(o).volume_mode().into()),
                },
            ],
            validate: validate_claim,
            validate_update: validate_claim_update,
            prepare: no_prepare,
        },
        KindInfo {
            group: "",
            version: "v1",
            kind: "PersistentVolume",
            plural: "persistentvolumes",
            singular: "persistentvolume",
            short_names: &["pv"],
            categories: &[],
            namespaced: false,
            status_subresource: true,
            name_is_label: false,
            field_selectors: &["status.phase"],
            columns: &[
                NAME_COLUMN,
                Column {
                    name: "Capacity",
                    kind: "string",
                    priority: 0,
                    description: "The volume's size.",
                    cell: |o| text_at(o, &["spec", "capacity", "storage"]),
                },
                Column {
                    name: "Access Modes",
                    kind: "string",
                    priority: 0,
                    description: "How the volume may be used.",
                    cell: |o| access_modes_cell(at(o, &["spec", "accessModes"])),
                },
                Column {
                    name: "Reclaim Policy",
                    kind: "string",
                    priority: 0,
                    description: "What happens when the claim goes.",
                    cell: |o| text_at(o, &["spec", "persistentVolumeReclaimPolicy"]),
                },
                Column {
                    name: "Status",
                    kind: "string",
                    priority: 0,
                    description: "Available, Bound, Released or Failed.",
                    cell: |o| text_at(o, &["status", "phase"]),
                },
                Column {
                    name: "Claim",
                    kind: "string",
                    priority: 0,
                    description: "The claim bound to it.",
                    cell: |o| {
                        let ns = text_at(o, &["spec", "claimRef", "namespace"]);
                        let name = text_at(o, &["spec", "claimRef", "name"]);
                        match (ns.as_str(), name.as_str()) {
                            (Some(ns), Some(name)) if !name.is_empty() => {
                                Value::String(format!("{ns}/{name}"))
                            }
                            _ => Value::String(String::new()),
                        }
                    },
                },
                Column {
                    name: "StorageClass",
                    kind: "string",
                    priority: 0,
                    description: "The volume's class.",
                    cell: |o| text_at(o, &["spec", "storageClassName"]),
                },
                AGE_COLUMN,
                Column {
                    name: "Node",
                    kind: "string",
                    priority: 1,
                    description: "The node a local volume lives on.",
                    cell: |o| {
                        Value::String(PersistentVolume::of(o).node().unwrap_or_default().into())
                    },
                },
            ],
            validate: validate_volume,
            validate_update: super::no_update_validation,
            prepare: no_prepare,
        },
    ]
}

fn access_modes_cell(modes: Option<&Value>) -> Value {
    let short = |m: &str| match m {
        "ReadWriteOnce" => "RWO",
        "ReadOnlyMany" => "ROX",
        "ReadWriteMany" => "RWX",
        "ReadWriteOncePod" => "RWOP",
        _ => "?",
    };
    let list: Vec<&str> = modes
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(short).collect())
        .unwrap_or_default();
    Value::String(list.join(","))
}

/// True when the class carries the default-class annotation.
pub fn is_default_class(o: &Object) -> bool {
    o.metadata
        .annotations
        .get(DEFAULT_CLASS_ANNOTATION)
        .is_some_and(|v| v == "true")
}

/// A StorageClass (its fields are top level, not under `spec`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageClass {
    #[serde(default)]
    pub provisioner: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclaim_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_binding_mode: Option<String>,
    #[serde(default)]
    pub allow_volume_expansion: bool,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl StorageClass {
    /// The class in `o` (defaults where unreadable; validation refuses unreadable ones).
    pub fn of(o: &Object) -> Self {
        serde_json::from_value(Value::Object(o.body.clone())).unwrap_or_default()
    }
    /// `Delete` unless set.
    pub fn reclaim_policy(&self) -> &str {
        self.reclaim_policy.as_deref().unwrap_or("Delete")
    }
    /// `Immediate` unless set.
    pub fn binding_mode(&self) -> &str {
        self.volume_binding_mode.as_deref().unwrap_or("Immediate")
    }
    /// True when claims wait for the first VM that uses them.
    pub fn waits_for_consumer(&self) -> bool {
        self.binding_mode() == "WaitForFirstConsumer"
    }
    /// True for the shared pool.
    pub fn shared(&self) -> bool {
        self.provisioner == SHARED_PROVISIONER
    }
    /// The volume file format (`qcow2` unless the `format` parameter says `raw`).
    pub fn format(&self) -> &str {
        self.parameters
            .get("format")
            .map(String::as_str)
            .unwrap_or("qcow2")
    }
}

fn validate_class(o: &Object) -> Vec<FieldError> {
    let class: StorageClass = match super::kubevirt::decode_at(&Value::Object(o.body.clone()), "") {
        Ok(c) => c,
        Err(mut e) => {
            e.path = e.path.trim_start_matches('.').to_string();
            return vec![e];
        }
    };
    let mut errors = Vec::new();
    if class.provisioner.is_empty() {
        errors.push(FieldError::required("provisioner", ""));
    } else if !PROVISIONERS.contains(&class.provisioner.as_str()) {
        errors.push(FieldError::not_supported(
            "provisioner",
            &class.provisioner,
            PROVISIONERS,
        ));
    }
    for (key, value) in &class.parameters {
        let path = format!("parameters[{key}]");
        match key.as_str() {
            "format" if !VOLUME_FORMATS.contains(&value.as_str()) => {
                errors.push(FieldError::not_supported(path, value, VOLUME_FORMATS));
            }
            "format" => {}
            _ => errors.push(FieldError::invalid(
                path,
                value,
                "unknown parameter; vmo's provisioners take: format",
            )),
        }
    }
    if let Some(p) = &class.reclaim_policy {
        if !RECLAIM_POLICIES.contains(&p.as_str()) {
            errors.push(FieldError::not_supported(
                "reclaimPolicy",
                p,
                RECLAIM_POLICIES,
            ));
        }
    }
    if let Some(m) = &class.volume_binding_mode {
        if !BINDING_MODES.contains(&m.as_str()) {
            errors.push(FieldError::not_supported(
                "volumeBindingMode",
                m,
                BINDING_MODES,
            ));
        }
    }
    if let Some(v) = o.metadata.annotations.get(DEFAULT_CLASS_ANNOTATION) {
        if v != "true" && v != "false" {
            errors.push(FieldError::not_supported(
                format!("metadata.annotations[{DEFAULT_CLASS_ANNOTATION}]"),
                v,
                &["true", "false"],
            ));
        }
    }
    errors
}

fn validate_class_update(old: &Object, new: &Object) -> Vec<FieldError> {
    let (n, o) = (StorageClass::of(new), StorageClass::of(old));
    let mut errors = Vec::new();
    let mut immutable = |path: &str, changed: bool| {
        if changed {
            errors.push(FieldError::forbidden(
                path,
                "updates to this field are forbidden",
            ));
        }
    };
    immutable("provisioner", n.provisioner != o.provisioner);
    immutable("parameters", n.parameters != o.parameters);
    immutable("reclaimPolicy", n.reclaim_policy() != o.reclaim_policy());
    immutable("volumeBindingMode", n.binding_mode() != o.binding_mode());
    errors
}

/// A reference from a claim to the object its data comes from (`dataSource` / `dataSourceRef`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypedReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Requested resources of a claim.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimResources {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, super::kubevirt::QuantityText>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `spec` of a PersistentVolumeClaim (also a DataVolume's `pvc` and `storage`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<String>,
    #[serde(default)]
    pub resources: ClaimResources,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_source: Option<TypedReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_source_ref: Option<TypedReference>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ClaimSpec {
    /// The spec of the claim in `o` (defaults where unreadable).
    pub fn of(o: &Object) -> Self {
        serde_json::from_value(o.spec().clone()).unwrap_or_default()
    }
    /// `Filesystem` unless set.
    pub fn volume_mode(&self) -> &str {
        self.volume_mode.as_deref().unwrap_or("Filesystem")
    }
    /// The requested size in bytes, if readable.
    pub fn requested_bytes(&self) -> Option<u64> {
        let text = &self.resources.requests.get("storage")?.0;
        Quantity::parse(text)
            .ok()?
            .value_ceil()
            .and_then(|b| u64::try_from(b).ok())
    }
    /// True when the claim asks for shared (ReadWriteMany) access.
    pub fn wants_shared(&self) -> bool {
        self.access_modes.iter().any(|m| m == "ReadWriteMany")
    }
}

/// Checks a claim spec at `path`; `size_required` is false where the size may come from a source.
pub fn validate_claim_spec(spec: &ClaimSpec, path: &str, size_required: bool) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (i, m) in spec.access_modes.iter().enumerate() {
        if !ACCESS_MODES.contains(&m.as_str()) {
            errors.push(FieldError::not_supported(
                format!("{path}.accessModes[{i}]"),
                m,
                ACCESS_MODES,
            ));
        }
    }
    match spec.resources.requests.get("storage") {
        Some(q) => {
            validation::positive_quantity(
                &format!("{path}.resources.requests[storage]"),
                &q.0,
                &mut errors,
            );
        }
        None if size_required => errors.push(FieldError::required(
            format!("{path}.resources.requests[storage]"),
            "the size of the volume",
        )),
        None => {}
    }
    if let Some(m) = &spec.volume_mode {
        if !VOLUME_MODES.contains(&m.as_str()) {
            errors.push(FieldError::not_supported(
                format!("{path}.volumeMode"),
                m,
                VOLUME_MODES,
            ));
        }
    }
    if let Some(class) = &spec.storage_class_name {
        if !class.is_empty() {
            errors.extend(validation::dns1123_subdomain(
                &format!("{path}.storageClassName"),
                class,
            ));
        }
    }
    for (field, r) in [
        ("dataSource", &spec.data_source),
        ("dataSourceRef", &spec.data_source_ref),
    ] {
        if let Some(r) = r {
            let group = r.api_group.as_deref().unwrap_or("");
            let supported = match r.kind.as_str() {
                "PersistentVolumeClaim" => group.is_empty(),
                "VolumeSnapshot" => group == super::snapshot::VOLUME_SNAPSHOT_GROUP,
                _ => false,
            };
            if !supported {
                errors.push(FieldError::not_supported(
                    format!("{path}.{field}.kind"),
                    &r.kind,
                    &[
                        "PersistentVolumeClaim",
                        "VolumeSnapshot (apiGroup snapshot.storage.k8s.io)",
                    ],
                ));
            }
            if r.name.is_empty() {
                errors.push(FieldError::required(format!("{path}.{field}.name"), ""));
            }
        }
    }
    errors
}

fn validate_claim(o: &Object) -> Vec<FieldError> {
    let spec: ClaimSpec = match super::kubevirt::decode_at(o.spec(), "spec") {
        Ok(s) => s,
        Err(e) => return vec![e],
    };
    let mut errors = validate_claim_spec(&spec, "spec", true);
    if spec.access_modes.is_empty() {
        errors.push(FieldError::required(
            "spec.accessModes",
            "at least 1 access mode is required",
        ));
    }
    errors
}

fn validate_claim_update(old: &Object, new: &Object) -> Vec<FieldError> {
    let (n, o) = (ClaimSpec::of(new), ClaimSpec::of(old));
    let mut errors = Vec::new();
    // Only the size may change, and only upwards; the class and volume may be filled in once.
    let comparable = |s: &ClaimSpec| {
        let mut s = s.clone();
        s.resources.requests.remove("storage");
        s.storage_class_name = None;
        s.volume_name = None;
        s
    };
    if comparable(&n) != comparable(&o) {
        errors.push(FieldError::forbidden(
            "spec",
            "spec is immutable after creation except resources.requests for bound claims",
        ));
    }
    for (field, a, b) in [
        (
            "spec.storageClassName",
            &n.storage_class_name,
            &o.storage_class_name,
        ),
        ("spec.volumeName", &n.volume_name, &o.volume_name),
    ] {
        if b.as_deref().is_some_and(|b| !b.is_empty()) && a != b {
            errors.push(FieldError::forbidden(field, "may not change once set"));
        }
    }
    if let (Some(a), Some(b)) = (n.requested_bytes(), o.requested_bytes()) {
        if a < b {
            errors.push(FieldError::forbidden(
                "spec.resources.requests[storage]",
                "field can not be less than previous value",
            ));
        }
    }
    errors
}

/// A PersistentVolume: one disk file vmo provisioned.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolume {
    #[serde(default)]
    pub capacity: BTreeMap<String, super::kubevirt::QuantityText>,
    #[serde(default)]
    pub access_modes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_reclaim_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_ref: Option<Value>,
    /// `{path}`: where the disk file is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_affinity: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl PersistentVolume {
    /// The spec of the volume in `o` (defaults where unreadable).
    pub fn of(o: &Object) -> Self {
        serde_json::from_value(o.spec().clone()).unwrap_or_default()
    }
    /// The disk file.
    pub fn path(&self) -> Option<&str> {
        self.local.as_ref()?.get("path")?.as_str()
    }
    /// The one node a local volume lives on (its required node affinity), None for shared ones.
    pub fn node(&self) -> Option<&str> {
        let terms = self.node_affinity.as_ref()?["required"]["nodeSelectorTerms"].as_array()?;
        let expr = terms.first()?["matchExpressions"].as_array()?.first()?;
        (expr["key"] == "kubernetes.io/hostname" && expr["operator"] == "In")
            .then(|| expr["values"][0].as_str())
            .flatten()
    }
    /// The size in bytes, if readable.
    pub fn capacity_bytes(&self) -> Option<u64> {
        Quantity::parse(&self.capacity.get("storage")?.0)
            .ok()?
            .value_ceil()
            .and_then(|b| u64::try_from(b).ok())
    }
    /// `namespace/name` of the bound claim, and its uid.
    pub fn claim(&self) -> Option<(String, String, String)> {
        let r = self.claim_ref.as_ref()?;
        Some((
            r["namespace"].as_str()?.to_string(),
            r["name"].as_str()?.to_string(),
            r["uid"].as_str().unwrap_or("").to_string(),
        ))
    }
}

/// The node affinity that pins a local volume to `node`.
pub fn node_affinity_for(node: &str) -> Value {
    serde_json::json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
    ]}]}})
}

fn validate_volume(o: &Object) -> Vec<FieldError> {
    let pv: PersistentVolume = match super::kubevirt::decode_at(o.spec(), "spec") {
        Ok(s) => s,
        Err(e) => return vec![e],
    };
    let mut errors = Vec::new();
    match pv.capacity.get("storage") {
        Some(q) => {
            validation::positive_quantity("spec.capacity[storage]", &q.0, &mut errors);
        }
        None => errors.push(FieldError::required("spec.capacity[storage]", "")),
    }
    for (i, m) in pv.access_modes.iter().enumerate() {
        if !ACCESS_MODES.contains(&m.as_str()) {
            errors.push(FieldError::not_supported(
                format!("spec.accessModes[{i}]"),
                m,
                ACCESS_MODES,
            ));
        }
    }
    match pv.path() {
        Some(p) if p.starts_with('/') => {}
        Some(p) => errors.push(FieldError::invalid(
            "spec.local.path",
            p,
            "must be an absolute path",
        )),
        None => errors.push(FieldError::required(
            "spec.local.path",
            "vmo volumes are files at a path",
        )),
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Object {
        Object::from_value(v).expect("object")
    }

    fn claim(spec: Value) -> Object {
        obj(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": "c", "namespace": "default"}, "spec": spec}))
    }

    #[test]
    fn a_class_names_its_bad_fields() {
        let c = obj(
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "px", "annotations": {DEFAULT_CLASS_ANNOTATION: "yes"}},
            "provisioner": "pxd.portworx.com", "parameters": {"repl": "3", "format": "vmdk"},
            "reclaimPolicy": "Recycle", "volumeBindingMode": "Later"}),
        );
        let paths: Vec<String> = validate_class(&c).into_iter().map(|e| e.path).collect();
        for p in [
            "provisioner",
            "parameters[repl]",
            "parameters[format]",
            "reclaimPolicy",
            "volumeBindingMode",
        ] {
            assert!(paths.iter().any(|x| x == p), "{p} in {paths:?}");
        }
        assert!(paths.iter().any(|p| p.starts_with("metadata.annotations")));
        let good = obj(
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "local"}, "provisioner": LOCAL_PROVISIONER,
            "volumeBindingMode": "WaitForFirstConsumer", "allowVolumeExpansion": true}),
        );
        assert!(validate_class(&good).is_empty());
        let class = StorageClass::of(&good);
        assert!(class.waits_for_consumer() && !class.shared());
        assert_eq!(
            (class.reclaim_policy(), class.format()),
            ("Delete", "qcow2")
        );
        let mut changed = good.clone();
        changed
            .body
            .insert("volumeBindingMode".into(), json!("Immediate"));
        assert_eq!(
            validate_class_update(&good, &changed)[0].path,
            "volumeBindingMode"
        );
    }

    #[test]
    fn a_claim_needs_modes_and_a_size() {
        let errors = validate_claim(&claim(json!({"volumeMode": "Disk"})));
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"spec.accessModes"), "{paths:?}");
        assert!(paths.contains(&"spec.resources.requests[storage]"));
        assert!(paths.contains(&"spec.volumeMode"));
        let bad_size = claim(json!({"accessModes": ["ReadWriteOnce"],
                                    "resources": {"requests": {"storage": "-1Gi"}}}));
        assert_eq!(
            validate_claim(&bad_size)[0].path,
            "spec.resources.requests[storage]"
        );
        let good = claim(json!({"accessModes": ["ReadWriteMany"],
                                "resources": {"requests": {"storage": "10Gi"}}}));
        assert!(validate_claim(&good).is_empty());
        let spec = ClaimSpec::of(&good);
        assert_eq!(spec.requested_bytes(), Some(10 << 30));
        assert!(spec.wants_shared());
    }

    #[test]
    fn a_claim_only_grows() {
        let old = claim(json!({"accessModes": ["ReadWriteOnce"],
                               "resources": {"requests": {"storage": "10Gi"}}}));
        let grown = claim(
            json!({"accessModes": ["ReadWriteOnce"], "volumeName": "pv-1",
                                 "storageClassName": "local",
                                 "resources": {"requests": {"storage": "20Gi"}}}),
        );
        assert!(validate_claim_update(&old, &grown).is_empty());
        let shrunk = claim(json!({"accessModes": ["ReadWriteOnce"],
                                  "resources": {"requests": {"storage": "5Gi"}}}));
        assert_eq!(
            validate_claim_update(&old, &shrunk)[0].path,
            "spec.resources.requests[storage]"
        );
        let remoded = claim(json!({"accessModes": ["ReadWriteMany"],
                                   "resources": {"requests": {"storage": "10Gi"}}}));
        assert_eq!(validate_claim_update(&old, &remoded)[0].path, "spec");
        let moved = claim(
            json!({"accessModes": ["ReadWriteOnce"], "volumeName": "pv-2",
                                 "storageClassName": "local",
                                 "resources": {"requests": {"storage": "20Gi"}}}),
        );
        assert_eq!(
            validate_claim_update(&grown, &moved)[0].path,
            "spec.volumeName"
        );
    }

    #[test]
    fn a_local_volume_names_its_node() {
        let pv = obj(json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "pvc-1"},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "local": {"path": "/pool/pvc-1.qcow2"},
                     "nodeAffinity": node_affinity_for("n1"),
                     "claimRef": {"namespace": "default", "name": "c", "uid": "u"}}}));
        assert!(validate_volume(&pv).is_empty());
        let spec = PersistentVolume::of(&pv);
        assert_eq!(spec.node(), Some("n1"));
        assert_eq!(spec.path(), Some("/pool/pvc-1.qcow2"));
        assert_eq!(spec.capacity_bytes(), Some(1 << 30));
        assert_eq!(spec.claim().map(|c| c.1), Some("c".to_string()));
        let relative = obj(json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "x"}, "spec": {"capacity": {"storage": "1Gi"},
            "local": {"path": "pool/x"}}}));
        assert_eq!(validate_volume(&relative)[0].path, "spec.local.path");
    }
}
