//! VirtualMachineRestores. The snapshot must be ready to use. Then:
//!
//! - **into its source VM** (the target exists): the VM must be stopped, else the restore waits
//!   and its Ready condition says why (`VMRunning`). Each claim is annotated with a rollback
//!   request; the agent of its node rolls the file back (`qemu-img snapshot -a`) and answers; then
//!   the VM's spec becomes the snapshot's (its run strategy stays as it is now, so it stays stopped);
//! - **into a new VM** (the target does not exist): one claim per volume,
//!   `restore-<restore uid>-<volume>`, with the VolumeSnapshot as its dataSource (provisioned on the
//!   node holding the snapshot), and a VM with the snapshot's spec using them, `spec.patches`
//!   (JSON patches, as KubeVirt's) applied. Complete once every claim is bound.

use super::{condition, find, Snapshots};
use serde_json::{json, Value};
use vmo_api::kinds::snapshot::{
    phase, REVERT_DONE_ANNOTATION, REVERT_ERROR_ANNOTATION, REVERT_REQUEST_ANNOTATION,
};
use vmo_api::kinds::storage::{PersistentVolume, SELECTED_NODE_ANNOTATION};
use vmo_api::meta::now_rfc3339;
use vmo_api::Object;
use vmo_client::events::EventType;

/// Why a restore cannot go on now: a condition reason and message.
struct Wait(&'static str, String);

pub(super) async fn sync(s: &Snapshots) {
    for restore in s.restores.list() {
        if restore.metadata.deletion_timestamp.is_some()
            || restore.status()["complete"].as_bool() == Some(true)
        {
            continue;
        }
        if let Err(Wait(reason, message)) = step(s, &restore).await {
            s.note_once(&restore, EventType::Warning, reason, &message)
                .await;
            if super::condition_message(&restore, "Ready") != message {
                let status = json!({"complete": false,
                    "conditions": [condition("Progressing", false, reason, &message),
                                   condition("Ready", false, reason, &message)]});
                s.set_status(&s.restore_kind, &restore, status).await;
            }
        }
    }
}

async fn step(s: &Snapshots, restore: &Object) -> Result<(), Wait> {
    let ns = &restore.metadata.namespace;
    let snapshot_name = restore.spec()["virtualMachineSnapshotName"]
        .as_str()
        .unwrap_or("");
    let snap = find(&s.snapshots, ns, snapshot_name).ok_or_else(|| {
        Wait(
            "SnapshotNotFound",
            format!("VirtualMachineSnapshot {snapshot_name} does not exist"),
        )
    })?;
    if snap.status()["readyToUse"].as_bool() != Some(true) {
        let current = snap.status()["phase"].as_str().unwrap_or("InProgress");
        let mut message =
            format!("VirtualMachineSnapshot {snapshot_name} is not ready to use (phase {current}");
        if let Some(why) = snap.status()["error"]["message"].as_str() {
            message.push_str(&format!(": {why}"));
        }
        message.push(')');
        let reason = if current == phase::FAILED {
            "SnapshotFailed"
        } else {
            "SnapshotNotReady"
        };
        return Err(Wait(reason, message));
    }
    let content_name = snap.status()["virtualMachineSnapshotContentName"]
        .as_str()
        .unwrap_or("");
    let content = find(&s.contents, ns, content_name).ok_or_else(|| {
        Wait(
            "SnapshotNotReady",
            format!("VirtualMachineSnapshotContent {content_name} does not exist"),
        )
    })?;
    let target = restore.spec()["target"]["name"].as_str().unwrap_or("");
    let source = &content.spec()["source"]["virtualMachine"];
    match find(&s.vms, ns, target) {
        Some(vm) if !made_by(&vm, restore) => {
            into_existing(s, restore, &content, &vm, source).await
        }
        _ => into_new(s, restore, &content, target, source).await,
    }
}

async fn complete(s: &Snapshots, restore: &Object, restores: Vec<Value>, target_uid: &str) {
    let status = json!({"complete": true, "restoreTime": now_rfc3339(), "restores": restores,
        "targetUID": target_uid,
        "conditions": [condition("Progressing", false, "Operation complete", "Operation complete"),
                       condition("Ready", true, "Operation complete", "Operation complete")]});
    s.set_status(&s.restore_kind, restore, status).await;
    s.events
        .record(
            restore,
            EventType::Normal,
            "VirtualMachineRestoreComplete",
            &format!(
                "Successfully completed VirtualMachineRestore {}",
                restore.metadata.name
            ),
        )
        .await;
}

async fn into_existing(
    s: &Snapshots,
    restore: &Object,
    content: &Object,
    vm: &Object,
    source: &Value,
) -> Result<(), Wait> {
    let ns = &restore.metadata.namespace;
    let name = &vm.metadata.name;
    if source["metadata"]["uid"].as_str() != Some(vm.metadata.uid.as_str()) {
        return Err(Wait(
            "TargetExists",
            format!("VirtualMachine {name} exists and is not the snapshot's source: restore into it, or name a VM that does not exist yet"),
        ));
    }
    if s.vm_running(ns, name) {
        return Err(Wait(
            "VMRunning",
            format!("VirtualMachine {name} is running: stop it to restore (vmo stop {name})"),
        ));
    }
    let backups = content.spec()["volumeBackups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let uid = &restore.metadata.uid;
    let mut waiting = Vec::new();
    let mut restores = Vec::new();
    for b in &backups {
        let claim_name = b["persistentVolumeClaim"]["metadata"]["name"]
            .as_str()
            .unwrap_or("");
        let vs = b["volumeSnapshotName"].as_str().unwrap_or("");
        restores.push(
            json!({"volumeName": b["volumeName"], "persistentVolumeClaim": claim_name,
                             "volumeSnapshotName": vs}),
        );
        let claim = find(&s.claims, ns, claim_name).ok_or_else(|| {
            Wait(
                "ClaimNotFound",
                format!("persistentvolumeclaim {claim_name} of the snapshot no longer exists"),
            )
        })?;
        let a = &claim.metadata.annotations;
        if a.get(REVERT_DONE_ANNOTATION) == Some(uid) {
            continue;
        }
        if let Some(why) = a.get(REVERT_ERROR_ANNOTATION) {
            if a.get(REVERT_REQUEST_ANNOTATION)
                .is_some_and(|r| r.ends_with(uid.as_str()))
            {
                return Err(Wait(
                    "RollbackFailed",
                    format!("rolling back persistentvolumeclaim {claim_name}: {why}"),
                ));
            }
        }
        let request = format!("{vs}/{uid}");
        if a.get(REVERT_REQUEST_ANNOTATION) != Some(&request) {
            let patch = json!({"metadata": {"annotations": {REVERT_REQUEST_ANNOTATION: request,
                                                            REVERT_ERROR_ANNOTATION: null}}});
            let r = s
                .client
                .merge_patch(
                    &s.claim_kind,
                    ns,
                    claim_name,
                    None,
                    &patch,
                    "vmo-snapshot-controller",
                )
                .await;
            super::logged("request a rollback", &claim, r);
        }
        waiting.push(claim_name.to_string());
    }
    if !waiting.is_empty() {
        let message = format!("rolling back {}", waiting.join(", "));
        if super::condition_message(restore, "Progressing") != message {
            let status = json!({"complete": false,
                "conditions": [condition("Progressing", true, "RestoreInProgress", &message),
                               condition("Ready", false, "RestoreInProgress", &message)]});
            s.set_status(&s.restore_kind, restore, status).await;
        }
        return Ok(());
    }
    // Every disk is back: the spec follows, keeping how the VM runs now.
    let mut spec = source["spec"].clone();
    for field in ["runStrategy", "running"] {
        match vm.spec().get(field) {
            Some(v) => spec[field] = v.clone(),
            None => {
                if let Some(o) = spec.as_object_mut() {
                    o.remove(field);
                }
            }
        }
    }
    apply_patches(restore, &mut spec);
    if vm.spec() != &spec {
        let mut updated = vm.clone();
        updated.body.insert("spec".into(), spec);
        let r = s.client.update(&s.vm_kind, &updated, None).await;
        if !super::logged("restore a VM's spec", vm, r) {
            return Ok(());
        }
    }
    complete(s, restore, restores, &vm.metadata.uid).await;
    Ok(())
}

/// Applies the restore's `spec.patches` (JSON patch strings on the VM, as KubeVirt's) to a spec.
fn apply_patches(restore: &Object, spec: &mut Value) {
    let Some(patches) = restore.spec()["patches"].as_array() else {
        return;
    };
    let mut vm = json!({ "spec": spec.clone() });
    for p in patches.iter().filter_map(Value::as_str) {
        let Ok(op) = serde_json::from_str::<Value>(p) else {
            continue;
        };
        let list = if op.is_array() { op } else { json!([op]) };
        if let Err(e) = vmo_api::patch::json_patch(&mut vm, &list) {
            tracing::warn!(restore = %restore.display_name(), error = %e, "a restore patch did not apply");
        }
    }
    *spec = vm["spec"].take();
}

/// The annotation on a VM a restore created: `<restore name>-<restore uid>`.
const LAST_RESTORE_ANNOTATION: &str = "restore.kubevirt.io/lastRestoreUID";

/// True when `restore` created the VM `vm`.
fn made_by(vm: &Object, restore: &Object) -> bool {
    vm.metadata
        .annotations
        .get(LAST_RESTORE_ANNOTATION)
        .is_some_and(|r| r.ends_with(restore.metadata.uid.as_str()))
}

/// The claim a restore into a new VM makes for one volume.
pub(crate) fn restored_claim_name(restore: &Object, volume: &str) -> String {
    format!("restore-{}-{volume}", restore.metadata.uid)
}

async fn into_new(
    s: &Snapshots,
    restore: &Object,
    content: &Object,
    target: &str,
    source: &Value,
) -> Result<(), Wait> {
    let ns = &restore.metadata.namespace;
    let backups = content.spec()["volumeBackups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut restores = Vec::new();
    let mut renamed = std::collections::BTreeMap::new();
    let mut unbound = Vec::new();
    for b in &backups {
        let volume = b["volumeName"].as_str().unwrap_or("");
        let vs_name = b["volumeSnapshotName"].as_str().unwrap_or("");
        let name = restored_claim_name(restore, volume);
        renamed.insert(volume.to_string(), name.clone());
        restores.push(json!({"volumeName": volume, "persistentVolumeClaim": name,
                             "volumeSnapshotName": vs_name}));
        match find(&s.claims, ns, &name) {
            Some(c) if c.status()["phase"] == "Bound" => continue,
            Some(_) => {
                unbound.push(name);
                continue;
            }
            None => {}
        }
        let vs = find(&s.volume_snapshots, ns, vs_name).ok_or_else(|| {
            Wait(
                "SnapshotNotReady",
                format!("volumesnapshot {vs_name} does not exist"),
            )
        })?;
        let saved = &b["persistentVolumeClaim"]["spec"];
        let size = vs.status()["restoreSize"]
            .as_str()
            .map(str::to_string)
            .or_else(|| {
                saved["resources"]["requests"]["storage"]
                    .as_str()
                    .map(str::to_string)
            })
            .unwrap_or_default();
        let mut annotations = serde_json::Map::new();
        if let Some(node) = snapshot_node(s, ns, &vs) {
            annotations.insert(SELECTED_NODE_ANNOTATION.into(), json!(node));
        }
        let claim = json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": ns, "annotations": annotations,
                         "labels": {"restore.kubevirt.io/source-vm-name": source["metadata"]["name"]}},
            "spec": {"accessModes": saved["accessModes"],
                     "storageClassName": saved["storageClassName"],
                     "volumeMode": saved["volumeMode"],
                     "resources": {"requests": {"storage": size}},
                     "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                                    "name": vs_name}},
        });
        s.ensure(&s.claim_kind, ns, &claim).await;
        unbound.push(name);
    }
    if find(&s.vms, ns, target).is_none() {
        let mut spec = source["spec"].clone();
        if let Some(o) = spec.as_object_mut() {
            o.remove("dataVolumeTemplates");
        }
        if let Some(volumes) = spec["template"]["spec"]["volumes"].as_array_mut() {
            for v in volumes {
                let Some(claim) = v["name"].as_str().and_then(|n| renamed.get(n)) else {
                    continue;
                };
                let name = v["name"].clone();
                *v = json!({"name": name, "persistentVolumeClaim": {"claimName": claim}});
            }
        }
        apply_patches(restore, &mut spec);
        let vm = json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": target, "namespace": ns,
                         "labels": source["metadata"]["labels"],
                         "annotations": {LAST_RESTORE_ANNOTATION:
                             format!("{}-{}", restore.metadata.name, restore.metadata.uid)}},
            "spec": spec,
        });
        if let Err(e) = s.client.create(&s.vm_kind, ns, &vm).await {
            if !e.is_conflict() {
                return Err(Wait(
                    "CreateFailed",
                    format!("creating VirtualMachine {target}: {e}"),
                ));
            }
        }
        return Ok(());
    }
    if !unbound.is_empty() {
        let message = format!("waiting for restored claims: {}", unbound.join(", "));
        if super::condition_message(restore, "Progressing") != message {
            let status = json!({"complete": false,
                "conditions": [condition("Progressing", true, "RestoreInProgress", &message),
                               condition("Ready", false, "RestoreInProgress", &message)]});
            s.set_status(&s.restore_kind, restore, status).await;
        }
        return Ok(());
    }
    let uid = find(&s.vms, ns, target)
        .map(|v| v.metadata.uid)
        .unwrap_or_default();
    complete(s, restore, restores, &uid).await;
    Ok(())
}

/// The node whose local pool holds the volume snapshot's file (None for shared volumes).
fn snapshot_node(s: &Snapshots, ns: &str, vs: &Object) -> Option<String> {
    let claim_name = vs.spec()["source"]["persistentVolumeClaimName"].as_str()?;
    let claim = find(&s.claims, ns, claim_name)?;
    let volume = claim.spec()["volumeName"].as_str()?;
    let pv = s
        .volumes
        .select(|v| v.metadata.name == volume)
        .into_iter()
        .next()?;
    PersistentVolume::of(&pv).node().map(str::to_string)
}
