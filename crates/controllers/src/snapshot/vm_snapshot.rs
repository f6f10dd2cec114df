//! VirtualMachineSnapshots: the content (`vmsnapshot-content-<uid>`) records the VM's spec and each
//! claimed volume's claim; one VolumeSnapshot per volume (`vmsnapshot-<uid>-volume-<volume>`),
//! annotated as one group of that size, so the agent takes them together, in one QMP transaction
//! while the VM runs. Phases: InProgress until every volume snapshot is ready (Succeeded), or
//! Failed with the reason (a missing VM or claim, a failed volume snapshot).

use super::{condition, find, owned_by, Snapshots};
use serde_json::{json, Value};
use vmo_api::kinds::snapshot::{phase, GROUP_ANNOTATION, GROUP_SIZE_ANNOTATION};
use vmo_api::meta::now_rfc3339;
use vmo_api::Object;
use vmo_client::events::EventType;

/// The content's name for a snapshot.
pub(crate) fn content_name(snapshot: &Object) -> String {
    format!("vmsnapshot-content-{}", snapshot.metadata.uid)
}

/// The claims a VM's template uses for its data (`persistentVolumeClaim`, `dataVolume`), by volume.
pub(crate) fn claimed_volumes(vm_spec: &Value) -> Vec<(String, String)> {
    vm_spec["template"]["spec"]["volumes"]
        .as_array()
        .map(|vs| {
            vs.iter()
                .filter_map(|v| {
                    let claim = v["persistentVolumeClaim"]["claimName"]
                        .as_str()
                        .or_else(|| v["dataVolume"]["name"].as_str())?;
                    Some((v["name"].as_str()?.to_string(), claim.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(super) async fn sync(s: &Snapshots) {
    for snap in s.snapshots.list() {
        if snap.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let current = snap.status()["phase"].as_str().unwrap_or("");
        if current == phase::SUCCEEDED || current == phase::FAILED {
            continue;
        }
        if let Err(why) = step(s, &snap).await {
            fail(s, &snap, &why).await;
        }
    }
}

async fn fail(s: &Snapshots, snap: &Object, why: &str) {
    s.note_once(snap, EventType::Warning, "SnapshotFailed", why)
        .await;
    let status = json!({"phase": phase::FAILED, "readyToUse": false,
        "error": {"message": why, "time": now_rfc3339()},
        "conditions": [condition("Progressing", false, "Failed", why),
                       condition("Ready", false, "Failed", why),
                       condition("Failure", true, "Failed", why)]});
    s.set_status(&s.snapshot_kind, snap, status).await;
}

async fn step(s: &Snapshots, snap: &Object) -> Result<(), String> {
    let ns = &snap.metadata.namespace;
    let vm_name = snap.spec()["source"]["name"].as_str().unwrap_or("");
    let content = find(&s.contents, ns, &content_name(snap));
    let Some(content) = content else {
        let vm = find(&s.vms, ns, vm_name)
            .ok_or_else(|| format!("VirtualMachine {ns}/{vm_name} does not exist"))?;
        return start(s, snap, &vm).await;
    };
    // Every volume snapshot of the content, ready or failed.
    let backups = content.spec()["volumeBackups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut waiting = Vec::new();
    let mut created: Vec<String> = Vec::new();
    for b in &backups {
        let name = b["volumeSnapshotName"].as_str().unwrap_or("");
        match find(&s.volume_snapshots, ns, name) {
            Some(vs) if vs.status()["readyToUse"].as_bool() == Some(true) => {
                created.push(vs.status()["creationTime"].as_str().unwrap_or("").into())
            }
            Some(vs) if vs.status()["error"].is_object() => {
                let why = vs.status()["error"]["message"].as_str().unwrap_or("");
                return Err(format!("volume snapshot {name} failed: {why}"));
            }
            _ => waiting.push(name.to_string()),
        }
    }
    if !waiting.is_empty() {
        create_volume_snapshots(s, snap, &content).await;
        let message = format!("waiting for volume snapshots: {}", waiting.join(", "));
        if super::condition_message(snap, "Progressing") != message {
            let status = json!({"phase": phase::IN_PROGRESS, "readyToUse": false,
                "conditions": [condition("Progressing", true, "InProgress", &message),
                               condition("Ready", false, "NotReady", &message)]});
            s.set_status(&s.snapshot_kind, snap, status).await;
        }
        return Ok(());
    }
    let when = created
        .into_iter()
        .max()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(now_rfc3339);
    let ready = json!({"readyToUse": true, "creationTime": when});
    s.set_status(&s.content_kind, &content, ready).await;
    let status = json!({"phase": phase::SUCCEEDED, "readyToUse": true, "creationTime": when,
        "conditions": [condition("Progressing", false, "Succeeded", "Operation complete"),
                       condition("Ready", true, "Succeeded", "Operation complete")]});
    s.set_status(&s.snapshot_kind, snap, status).await;
    s.events
        .record(
            snap,
            EventType::Normal,
            "SuccessfulVirtualMachineSnapshot",
            &format!(
                "Successfully completed VirtualMachineSnapshot {}",
                snap.metadata.name
            ),
        )
        .await;
    Ok(())
}

/// Creates the content's volume snapshots that do not exist, as one group.
async fn create_volume_snapshots(s: &Snapshots, snap: &Object, content: &Object) {
    let ns = &snap.metadata.namespace;
    let backups = content.spec()["volumeBackups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let vm_name = &content.spec()["source"]["virtualMachine"]["metadata"]["name"];
    let size = backups.len().to_string();
    for b in &backups {
        let name = b["volumeSnapshotName"].as_str().unwrap_or("");
        if find(&s.volume_snapshots, ns, name).is_some() {
            continue;
        }
        let vs = json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": {"name": name, "namespace": ns,
                "labels": {"snapshot.kubevirt.io/source-vm-name": vm_name},
                "annotations": {GROUP_ANNOTATION: snap.metadata.uid, GROUP_SIZE_ANNOTATION: size},
                "ownerReferences": owned_by(content)},
            "spec": {"source": {"persistentVolumeClaimName": b["persistentVolumeClaim"]["metadata"]["name"]}},
        });
        s.ensure(&s.vs_kind, ns, &vs).await;
    }
}

/// Records the content and creates the volume snapshots of one group.
async fn start(s: &Snapshots, snap: &Object, vm: &Object) -> Result<(), String> {
    let ns = &snap.metadata.namespace;
    let online = s.vm_running(ns, &vm.metadata.name);
    let volumes = claimed_volumes(vm.spec());
    let mut backups = Vec::new();
    let mut excluded = Vec::new();
    for v in vm.spec()["template"]["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = v["name"].as_str().unwrap_or("");
        if !volumes.iter().any(|(n, _)| n == name) {
            excluded.push(name.to_string());
        }
    }
    for (volume, claim_name) in &volumes {
        let claim = find(&s.claims, ns, claim_name).ok_or_else(|| {
            format!("persistentvolumeclaim {claim_name} of volume {volume} does not exist")
        })?;
        if claim.spec()["volumeName"].as_str().unwrap_or("").is_empty() {
            let message = format!("waiting for persistentvolumeclaim {claim_name} to be bound");
            let status = json!({"phase": phase::IN_PROGRESS, "readyToUse": false,
                "conditions": [condition("Progressing", true, "InProgress", &message)]});
            s.set_status(&s.snapshot_kind, snap, status).await;
            return Ok(());
        }
        let mut spec = claim.spec().clone();
        if let Some(size) = claim.status()["capacity"]["storage"].as_str() {
            spec["resources"]["requests"]["storage"] = json!(size);
        }
        backups.push(json!({
            "volumeName": volume,
            "persistentVolumeClaim": {"metadata": {"name": claim_name,
                "labels": claim.metadata.labels}, "spec": spec},
            "volumeSnapshotName": format!("vmsnapshot-{}-volume-{volume}", snap.metadata.uid),
        }));
    }
    let content = json!({
        "apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineSnapshotContent",
        "metadata": {"name": content_name(snap), "namespace": ns,
                     "ownerReferences": owned_by(snap)},
        "spec": {"virtualMachineSnapshotName": snap.metadata.name,
                 "source": {"virtualMachine": {
                     "metadata": {"name": vm.metadata.name, "namespace": ns,
                                  "labels": vm.metadata.labels,
                                  "annotations": vm.metadata.annotations, "uid": vm.metadata.uid},
                     "spec": vm.spec()}},
                 "volumeBackups": backups},
    });
    if !s.ensure(&s.content_kind, ns, &content).await {
        return Ok(());
    }
    let Ok(content) = s.client.get(&s.content_kind, ns, &content_name(snap)).await else {
        return Ok(());
    };
    create_volume_snapshots(s, snap, &content).await;
    let included: Vec<&String> = volumes.iter().map(|(v, _)| v).collect();
    let indications: Vec<&str> = if online {
        vec!["Online", "NoGuestAgent"]
    } else {
        Vec::new()
    };
    let status = json!({"phase": phase::IN_PROGRESS, "readyToUse": false,
        "sourceUID": vm.metadata.uid, "indications": indications,
        "virtualMachineSnapshotContentName": content_name(snap),
        "snapshotVolumes": {"includedVolumes": included, "excludedVolumes": excluded},
        "conditions": [condition("Progressing", true, "InProgress", "Source locked and operation in progress"),
                       condition("Ready", false, "NotReady", "Not ready")]});
    s.set_status(&s.snapshot_kind, snap, status).await;
    Ok(())
}
