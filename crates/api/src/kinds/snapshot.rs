//! Snapshots, restores and clones with the schemas users already write:
//! `snapshot.storage.k8s.io/v1` (VolumeSnapshotClass, VolumeSnapshot, VolumeSnapshotContent) for
//! one claim, `snapshot.kubevirt.io/v1beta1` (VirtualMachineSnapshot, VirtualMachineSnapshotContent,
//! VirtualMachineRestore) for a whole VM, and `clone.kubevirt.io/v1beta1` (VirtualMachineClone).
//!
//! A volume snapshot is a qcow2 internal snapshot inside the claim's own file, named after the
//! VolumeSnapshot's uid ([`internal_name`]); the agent of the node holding the file takes it,
//! rolls back to it and deletes it. Who does what:
//!
//! ```text
//!  snapshot controller: VM snapshot -> content (VM spec) + one VolumeSnapshot per claim (one group)
//!                       restore -> rollback requests on claims (same VM) or new claims + a new VM
//!                       clone -> snapshot, restore with fresh MACs and serials, clean up
//!  agent of the node:   a group's snapshots in one QMP transaction while the VM runs there
//!                       (qemu-img snapshot -c when it does not), readyToUse; rollbacks; deletion
//! ```

use super::{no_prepare, text_at, Column, KindInfo, AGE_COLUMN, NAME_COLUMN};
use crate::object::Object;
use crate::status::FieldError;
use serde_json::Value;

/// The group of volume snapshots.
pub const VOLUME_SNAPSHOT_GROUP: &str = "snapshot.storage.k8s.io";
/// The group of VM snapshots and restores.
pub const VM_SNAPSHOT_GROUP: &str = "snapshot.kubevirt.io";
/// The group of VM clones.
pub const CLONE_GROUP: &str = "clone.kubevirt.io";
/// Keeps a VolumeSnapshot until its agent removed the internal snapshot.
pub const SNAPSHOT_CLEANUP_FINALIZER: &str = "vmo.io/snapshot-cleanup";
/// On a VolumeSnapshot: the VirtualMachineSnapshot uid whose volumes are taken together.
pub const GROUP_ANNOTATION: &str = "vmo.io/snapshot-group";
/// On a VolumeSnapshot: how many VolumeSnapshots its group has.
pub const GROUP_SIZE_ANNOTATION: &str = "vmo.io/snapshot-group-size";
/// On a VolumeSnapshot: how long the guest was paused to take it (agent, online snapshots).
pub const GUEST_PAUSE_ANNOTATION: &str = "vmo.io/guest-paused-us";
/// On a claim: roll its file back to this VolumeSnapshot (`<name>/<restore uid>`).
pub const REVERT_REQUEST_ANNOTATION: &str = "vmo.io/revert-request";
/// On a claim: the restore uid whose rollback is done (agent).
pub const REVERT_DONE_ANNOTATION: &str = "vmo.io/revert-done";
/// On a claim: why the last rollback failed (agent).
pub const REVERT_ERROR_ANNOTATION: &str = "vmo.io/revert-error";
const DELETION_POLICIES: &[&str] = &["Delete", "Retain"];

/// The name of the qcow2 internal snapshot behind the VolumeSnapshot with this uid.
pub fn internal_name(volume_snapshot_uid: &str) -> String {
    format!("vs-{volume_snapshot_uid}")
}

/// VirtualMachineSnapshot phases (KubeVirt's names).
pub mod phase {
    pub const IN_PROGRESS: &str = "InProgress";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
}

/// VirtualMachineClone phases (KubeVirt's names).
pub mod clone_phase {
    pub const SNAPSHOT_IN_PROGRESS: &str = "SnapshotInProgress";
    pub const CREATING_TARGET_VM: &str = "CreatingTargetVM";
    pub const RESTORE_IN_PROGRESS: &str = "RestoreInProgress";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
}

const fn col(name: &'static str, description: &'static str, cell: super::CellFn) -> Column {
    Column {
        name,
        kind: "string",
        priority: 0,
        description,
        cell,
    }
}

#[allow(clippy::too_many_arguments)]
const fn kind(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    short_names: &'static [&'static str],
    namespaced: bool,
    status: bool,
    columns: &'static [Column],
    validate: super::ValidateFn,
    validate_update: super::ValidateUpdateFn,
) -> KindInfo {
    KindInfo {
        group,
        version,
        kind,
        plural,
        singular,
        short_names,
        categories: &[],
        namespaced,
        status_subresource: status,
        name_is_label: false,
        field_selectors: &[],
        columns,
        validate,
        validate_update,
        prepare: no_prepare,
    }
}

const CLASS_COLUMNS: &[Column] = &[
    NAME_COLUMN,
    col(
        "Driver",
        "The provisioner whose volumes it snapshots.",
        |o| text_at(o, &["driver"]),
    ),
    col(
        "DeletionPolicy",
        "What deleting a snapshot does to the data.",
        |o| text_at(o, &["deletionPolicy"]),
    ),
    AGE_COLUMN,
];
const VS_COLUMNS: &[Column] = &[
    NAME_COLUMN,
    Column {
        kind: "boolean",
        ..col("ReadyToUse", "Whether the snapshot is taken.", |o| {
            text_at(o, &["status", "readyToUse"])
        })
    },
    col("SourcePVC", "The claim snapshotted.", |o| {
        text_at(o, &["spec", "source", "persistentVolumeClaimName"])
    }),
    col("RestoreSize", "The size a restored claim needs.", |o| {
        text_at(o, &["status", "restoreSize"])
    }),
    col("SnapshotClass", "The VolumeSnapshotClass.", |o| {
        text_at(o, &["spec", "volumeSnapshotClassName"])
    }),
    col("SnapshotContent", "The VolumeSnapshotContent.", |o| {
        text_at(o, &["status", "boundVolumeSnapshotContentName"])
    }),
    col("CreationTime", "When the snapshot was taken.", |o| {
        text_at(o, &["status", "creationTime"])
    }),
    AGE_COLUMN,
];
const VSC_COLUMNS: &[Column] = &[
    NAME_COLUMN,
    col("ReadyToUse", "Whether the snapshot is taken.", |o| {
        text_at(o, &["status", "readyToUse"])
    }),
    col("Driver", "The driver that took it.", |o| {
        text_at(o, &["spec", "driver"])
    }),
    col("VolumeSnapshot", "The VolumeSnapshot it belongs to.", |o| {
        text_at(o, &["spec", "volumeSnapshotRef", "name"])
    }),
    AGE_COLUMN,
];
const VMS_COLUMNS: &[Column] = &[
    NAME_COLUMN,
    col("SourceKind", "The kind snapshotted.", |o| {
        text_at(o, &["spec", "source", "kind"])
    }),
    col("SourceName", "The VM snapshotted.", |o| {
        text_at(o, &["spec", "source", "name"])
    }),
    col("Phase", "InProgress, Succeeded or Failed.", |o| {
        text_at(o, &["status", "phase"])
    }),
    col("ReadyToUse", "Whether it can be restored.", |o| {
        text_at(o, &["status", "readyToUse"])
    }),
    col("CreationTime", "When it was taken.", |o| {
        text_at(o, &["status", "creationTime"])
    }),
    col("Error", "Why it failed.", |o| {
        text_at(o, &["status", "error", "message"])
    }),
    AGE_COLUMN,
];
const VMSC_COLUMNS: &[Column] = &[
    NAME_COLUMN,
    col("ReadyToUse", "Whether it can be restored.", |o| {
        text_at(o, &["status", "readyToUse"])
    }),
    col("CreationTime", "When it was taken.", |o| {
        text_at(o, &["status", "creationTime"])
    }),
    AGE_COLUMN,
];
const RESTORE_COLUMNS: &[Column] = &[
    NAME_COLUMN,
    col("TargetKind", "The kind restored.", |o| {
        text_at(o, &["spec", "target", "kind"])
    }),
    col("TargetName", "The VM restored.", |o| {
        text_at(o, &["spec", "target", "name"])
    }),
    col("Complete", "Whether the restore is done.", |o| {
        text_at(o, &["status", "complete"])
    }),
    col("RestoreTime", "When it completed.", |o| {
        text_at(o, &["status", "restoreTime"])
    }),
    col("Error", "Why it has not completed.", ready_message),
    AGE_COLUMN,
];
const CLONE_COLUMNS: &[Column] = &[
    NAME_COLUMN,
    col(
        "Phase",
        "SnapshotInProgress, CreatingTargetVM, RestoreInProgress, Succeeded or Failed.",
        |o| text_at(o, &["status", "phase"]),
    ),
    col("SourceVirtualMachine", "What is cloned.", |o| {
        text_at(o, &["spec", "source", "name"])
    }),
    col("TargetVirtualMachine", "The new VM.", |o| {
        text_at(o, &["status", "targetName"])
    }),
    AGE_COLUMN,
];

pub(super) fn kinds() -> Vec<KindInfo> {
    vec![
        kind(
            VOLUME_SNAPSHOT_GROUP,
            "v1",
            "VolumeSnapshotClass",
            "volumesnapshotclasses",
            "volumesnapshotclass",
            &["vsclass", "vsclasses"],
            false,
            false,
            CLASS_COLUMNS,
            validate_class,
            immutable_class,
        ),
        kind(
            VOLUME_SNAPSHOT_GROUP,
            "v1",
            "VolumeSnapshot",
            "volumesnapshots",
            "volumesnapshot",
            &["vs"],
            true,
            true,
            VS_COLUMNS,
            validate_volume_snapshot,
            immutable_spec,
        ),
        kind(
            VOLUME_SNAPSHOT_GROUP,
            "v1",
            "VolumeSnapshotContent",
            "volumesnapshotcontents",
            "volumesnapshotcontent",
            &["vsc", "vscs"],
            false,
            true,
            VSC_COLUMNS,
            super::no_validation,
            super::no_update_validation,
        ),
        kind(
            VM_SNAPSHOT_GROUP,
            "v1beta1",
            "VirtualMachineSnapshot",
            "virtualmachinesnapshots",
            "virtualmachinesnapshot",
            &["vmsnapshot", "vmsnapshots"],
            true,
            true,
            VMS_COLUMNS,
            validate_vm_snapshot,
            immutable_spec,
        ),
        kind(
            VM_SNAPSHOT_GROUP,
            "v1beta1",
            "VirtualMachineSnapshotContent",
            "virtualmachinesnapshotcontents",
            "virtualmachinesnapshotcontent",
            &["vmsnapshotcontent", "vmsnapshotcontents"],
            true,
            true,
            VMSC_COLUMNS,
            super::no_validation,
            immutable_spec,
        ),
        kind(
            VM_SNAPSHOT_GROUP,
            "v1beta1",
            "VirtualMachineRestore",
            "virtualmachinerestores",
            "virtualmachinerestore",
            &["vmrestore", "vmrestores"],
            true,
            true,
            RESTORE_COLUMNS,
            validate_restore,
            immutable_spec,
        ),
        kind(
            CLONE_GROUP,
            "v1beta1",
            "VirtualMachineClone",
            "virtualmachineclones",
            "virtualmachineclone",
            &["vmclone", "vmclones"],
            true,
            true,
            CLONE_COLUMNS,
            validate_clone,
            immutable_spec,
        ),
    ]
}

/// The message of the Ready condition when it is not True, as a cell.
fn ready_message(o: &Object) -> Value {
    let message = o.status()["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .filter(|c| c["status"] != "True")
        .and_then(|c| c["message"].as_str())
        .unwrap_or("");
    Value::String(message.to_string())
}

fn string_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(*k))?.as_str()
}

fn need_name(errors: &mut Vec<FieldError>, v: &Value, path: &[&str], field: &str) {
    match string_at(v, path) {
        Some(name) if !name.is_empty() => {
            errors.extend(crate::validation::dns1123_subdomain(field, name))
        }
        _ => errors.push(FieldError::required(field, "")),
    }
}

fn check_ref(errors: &mut Vec<FieldError>, spec: &Value, field: &str, group: &str, kinds: &[&str]) {
    let r = &spec[field];
    if !r.is_object() {
        errors.push(FieldError::required(format!("spec.{field}"), ""));
        return;
    }
    let kind = r["kind"].as_str().unwrap_or("");
    if !kinds.contains(&kind) {
        errors.push(FieldError::not_supported(
            format!("spec.{field}.kind"),
            kind,
            kinds,
        ));
    }
    let want_group = if kind == "VirtualMachineSnapshot" {
        VM_SNAPSHOT_GROUP
    } else {
        group
    };
    if let Some(g) = r["apiGroup"].as_str() {
        if !g.is_empty() && g != want_group {
            errors.push(FieldError::not_supported(
                format!("spec.{field}.apiGroup"),
                g,
                &[want_group],
            ));
        }
    }
    need_name(errors, r, &["name"], &format!("spec.{field}.name"));
}

fn validate_class(o: &Object) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let body = Value::Object(o.body.clone());
    match body["driver"].as_str() {
        Some(d) if super::storage::PROVISIONERS.contains(&d) => {}
        Some(d) if !d.is_empty() => errors.push(FieldError::not_supported(
            "driver",
            d,
            super::storage::PROVISIONERS,
        )),
        _ => errors.push(FieldError::required("driver", "")),
    }
    match body["deletionPolicy"].as_str() {
        Some(p) if DELETION_POLICIES.contains(&p) => {}
        Some(p) => errors.push(FieldError::not_supported(
            "deletionPolicy",
            p,
            DELETION_POLICIES,
        )),
        None => errors.push(FieldError::required("deletionPolicy", "Delete or Retain")),
    }
    if let Some(params) = body["parameters"].as_object() {
        for key in params.keys() {
            errors.push(FieldError::invalid(
                format!("parameters[{key}]"),
                "",
                "vmo's snapshot drivers take no parameters",
            ));
        }
    }
    errors
}

fn immutable_class(old: &Object, new: &Object) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for field in ["driver", "parameters"] {
        if old.body.get(field) != new.body.get(field) {
            errors.push(FieldError::forbidden(
                field,
                "updates to this field are forbidden",
            ));
        }
    }
    errors
}

/// The spec of a snapshot, restore or clone never changes after creation.
fn immutable_spec(old: &Object, new: &Object) -> Vec<FieldError> {
    if old.spec() != new.spec() {
        vec![FieldError::forbidden(
            "spec",
            "spec is immutable after creation",
        )]
    } else {
        Vec::new()
    }
}

fn validate_volume_snapshot(o: &Object) -> Vec<FieldError> {
    let spec = o.spec();
    let mut errors = Vec::new();
    let claim = string_at(spec, &["source", "persistentVolumeClaimName"]);
    let content = string_at(spec, &["source", "volumeSnapshotContentName"]);
    match (claim, content) {
        (Some(_), Some(_)) => errors.push(FieldError::forbidden(
            "spec.source",
            "exactly one of persistentVolumeClaimName and volumeSnapshotContentName",
        )),
        (None, Some(c)) => errors.push(FieldError::invalid(
            "spec.source.volumeSnapshotContentName",
            c,
            "pre-provisioned snapshot contents are not supported; use persistentVolumeClaimName",
        )),
        (Some(_), None) => need_name(
            &mut errors,
            spec,
            &["source", "persistentVolumeClaimName"],
            "spec.source.persistentVolumeClaimName",
        ),
        (None, None) => errors.push(FieldError::required(
            "spec.source.persistentVolumeClaimName",
            "the claim to snapshot",
        )),
    }
    if let Some(class) = string_at(spec, &["volumeSnapshotClassName"]) {
        errors.extend(crate::validation::dns1123_subdomain(
            "spec.volumeSnapshotClassName",
            class,
        ));
    }
    errors
}

fn validate_vm_snapshot(o: &Object) -> Vec<FieldError> {
    let mut errors = Vec::new();
    check_ref(
        &mut errors,
        o.spec(),
        "source",
        "kubevirt.io",
        &["VirtualMachine"],
    );
    errors
}

fn validate_restore(o: &Object) -> Vec<FieldError> {
    let spec = o.spec();
    let mut errors = Vec::new();
    check_ref(
        &mut errors,
        spec,
        "target",
        "kubevirt.io",
        &["VirtualMachine"],
    );
    need_name(
        &mut errors,
        spec,
        &["virtualMachineSnapshotName"],
        "spec.virtualMachineSnapshotName",
    );
    if let Some(patches) = spec.get("patches") {
        let ok = patches
            .as_array()
            .is_some_and(|p| p.iter().all(Value::is_string));
        if !ok {
            errors.push(FieldError::invalid(
                "spec.patches",
                "",
                "a list of JSON patch strings",
            ));
        }
    }
    errors
}

fn validate_clone(o: &Object) -> Vec<FieldError> {
    let spec = o.spec();
    let mut errors = Vec::new();
    check_ref(
        &mut errors,
        spec,
        "source",
        "kubevirt.io",
        &["VirtualMachine", "VirtualMachineSnapshot"],
    );
    if spec.get("target").is_some() {
        check_ref(
            &mut errors,
            spec,
            "target",
            "kubevirt.io",
            &["VirtualMachine"],
        );
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

    fn paths(errors: Vec<FieldError>) -> Vec<String> {
        errors.into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn volume_snapshots_name_a_claim() {
        let good = obj(
            json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": {"name": "s", "namespace": "default"},
            "spec": {"source": {"persistentVolumeClaimName": "data"}}}),
        );
        assert!(validate_volume_snapshot(&good).is_empty());
        let none = obj(
            json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": {"name": "s", "namespace": "default"}, "spec": {"source": {}}}),
        );
        assert_eq!(
            paths(validate_volume_snapshot(&none)),
            ["spec.source.persistentVolumeClaimName"]
        );
        let class = obj(json!({"apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshotClass", "metadata": {"name": "c"},
            "driver": "csi.example.com", "deletionPolicy": "Keep"}));
        assert_eq!(paths(validate_class(&class)), ["driver", "deletionPolicy"]);
    }

    #[test]
    fn vm_snapshots_restores_and_clones_name_their_bad_fields() {
        let snap = obj(json!({"apiVersion": "snapshot.kubevirt.io/v1beta1",
            "kind": "VirtualMachineSnapshot", "metadata": {"name": "s", "namespace": "default"},
            "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "Pod", "name": ""}}}));
        assert_eq!(
            paths(validate_vm_snapshot(&snap)),
            ["spec.source.kind", "spec.source.name"]
        );
        let restore = obj(json!({"apiVersion": "snapshot.kubevirt.io/v1beta1",
            "kind": "VirtualMachineRestore", "metadata": {"name": "r", "namespace": "default"},
            "spec": {"target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "vm"}}}));
        assert_eq!(
            paths(validate_restore(&restore)),
            ["spec.virtualMachineSnapshotName"]
        );
        let clone = obj(json!({"apiVersion": "clone.kubevirt.io/v1beta1",
            "kind": "VirtualMachineClone", "metadata": {"name": "c", "namespace": "default"},
            "spec": {"source": {"apiGroup": "snapshot.kubevirt.io",
                                "kind": "VirtualMachineSnapshot", "name": "s"},
                     "target": {"kind": "VirtualMachine", "name": "copy"}}}));
        assert!(validate_clone(&clone).is_empty());
        let mut changed = clone.clone();
        changed.body["spec"]["target"]["name"] = json!("other");
        assert_eq!(paths(immutable_spec(&clone, &changed)), ["spec"]);
    }
}
