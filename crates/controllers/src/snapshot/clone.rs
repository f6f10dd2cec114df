//! VirtualMachineClones, the way KubeVirt runs them: a temporary VirtualMachineSnapshot of the
//! source VM (`tmp-snapshot-<clone uid>`, none when the source is a snapshot), then a temporary
//! VirtualMachineRestore into the target (`tmp-restore-<clone uid>`) whose patches give every
//! interface a fresh MAC address and the VM a fresh SMBIOS serial and no fixed firmware uuid; when
//! the restore completes, both temporary objects are deleted (the clone's disks are copies of
//! their own, so the snapshot's deletion does not touch them).
//!
//! Phases: SnapshotInProgress, CreatingTargetVM, RestoreInProgress, Succeeded, or Failed.

use super::{condition, find, owned_by, Snapshots};
use serde_json::{json, Value};
use std::hash::{Hash, Hasher};
use vmo_api::kinds::snapshot::{clone_phase, phase};
use vmo_api::Object;
use vmo_client::events::EventType;

pub(super) async fn sync(s: &Snapshots) {
    for clone in s.clones.list() {
        if clone.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let current = clone.status()["phase"].as_str().unwrap_or("");
        if current == clone_phase::SUCCEEDED || current == clone_phase::FAILED {
            continue;
        }
        match step(s, &clone).await {
            Ok(Some(next)) if next != current && next != clone_phase::SUCCEEDED => {
                let status = json!({"phase": next, "targetName": target_name(&clone),
                    "conditions": [condition("Progressing", true, next, ""),
                                   condition("Ready", false, next, "")]});
                s.set_status(&s.clone_kind, &clone, status).await;
            }
            Ok(_) => {}
            Err(why) => {
                s.note_once(&clone, EventType::Warning, "CloneFailed", &why)
                    .await;
                let status = json!({"phase": clone_phase::FAILED,
                    "conditions": [condition("Progressing", false, "Failed", &why),
                                   condition("Ready", false, "Failed", &why)]});
                s.set_status(&s.clone_kind, &clone, status).await;
            }
        }
    }
}

/// The target VM's name: `spec.target.name`, else `clone-<first 8 of the clone's uid>`.
fn target_name(clone: &Object) -> String {
    clone.spec()["target"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| {
            format!(
                "clone-{}",
                clone.metadata.uid.chars().take(8).collect::<String>()
            )
        })
}

fn hash_of(parts: &[&str]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// A locally administered unicast MAC address for interface `i` of the clone.
fn fresh_mac(clone: &Object, i: usize) -> String {
    let b = hash_of(&[&clone.metadata.uid, &i.to_string(), "mac"]).to_be_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

/// A fresh SMBIOS serial (uuid-shaped) for the clone.
fn fresh_serial(clone: &Object) -> String {
    let a = hash_of(&[&clone.metadata.uid, "serial-a"]);
    let b = hash_of(&[&clone.metadata.uid, "serial-b"]);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

/// The restore's JSON patches: fresh MACs on every interface, a fresh serial, no fixed uuid.
fn identity_patches(clone: &Object, vm_spec: &Value) -> Vec<String> {
    let mut patches = Vec::new();
    let domain = &vm_spec["template"]["spec"]["domain"];
    let interfaces = domain["devices"]["interfaces"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    for i in 0..interfaces {
        let op = if domain["devices"]["interfaces"][i]
            .get("macAddress")
            .is_some()
        {
            "replace"
        } else {
            "add"
        };
        patches.push(
            json!({"op": op, "path": format!("/spec/template/spec/domain/devices/interfaces/{i}/macAddress"),
                   "value": fresh_mac(clone, i)})
            .to_string(),
        );
    }
    if domain.get("firmware").is_none() {
        patches.push(
            json!({"op": "add", "path": "/spec/template/spec/domain/firmware", "value": {}})
                .to_string(),
        );
    }
    patches.push(
        json!({"op": "add", "path": "/spec/template/spec/domain/firmware/serial",
               "value": fresh_serial(clone)})
        .to_string(),
    );
    if domain["firmware"].get("uuid").is_some() {
        patches.push(
            json!({"op": "remove", "path": "/spec/template/spec/domain/firmware/uuid"}).to_string(),
        );
    }
    patches
}

/// Moves the clone on; returns the phase it is in.
async fn step(s: &Snapshots, clone: &Object) -> Result<Option<&'static str>, String> {
    let ns = &clone.metadata.namespace;
    let source = &clone.spec()["source"];
    let source_name = source["name"].as_str().unwrap_or("");
    let uid = &clone.metadata.uid;
    let target = target_name(clone);
    let restore_name = format!("tmp-restore-{uid}");
    let restore = find(&s.restores, ns, &restore_name);
    if restore.is_none() {
        if let Some(existing) = find(&s.vms, ns, &target) {
            let ours = existing
                .metadata
                .annotations
                .get("restore.kubevirt.io/lastRestoreUID")
                .is_some_and(|r| r.contains(uid.as_str()));
            if !ours {
                return Err(format!("the target VirtualMachine {target} already exists"));
            }
        }
    }
    let (snapshot_name, temporary) = if source["kind"] == "VirtualMachineSnapshot" {
        (source_name.to_string(), false)
    } else {
        (format!("tmp-snapshot-{uid}"), true)
    };
    let snap = find(&s.snapshots, ns, &snapshot_name);
    let snap = match snap {
        Some(snap) => snap,
        None if temporary && restore.is_none() => {
            if find(&s.vms, ns, source_name).is_none() {
                return Err(format!("VirtualMachine {ns}/{source_name} does not exist"));
            }
            let body = json!({
                "apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineSnapshot",
                "metadata": {"name": snapshot_name, "namespace": ns,
                             "ownerReferences": owned_by(clone)},
                "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine",
                                    "name": source_name}},
            });
            s.ensure(&s.snapshot_kind, ns, &body).await;
            return Ok(Some(clone_phase::SNAPSHOT_IN_PROGRESS));
        }
        None if restore.is_none() => {
            return Err(format!(
                "VirtualMachineSnapshot {ns}/{source_name} does not exist"
            ))
        }
        None => return Ok(None),
    };
    match snap.status()["phase"].as_str() {
        Some(p) if p == phase::FAILED => {
            let why = snap.status()["error"]["message"].as_str().unwrap_or("");
            return Err(format!("the snapshot {snapshot_name} failed: {why}"));
        }
        Some(p) if p == phase::SUCCEEDED => {}
        _ => return Ok(Some(clone_phase::SNAPSHOT_IN_PROGRESS)),
    }
    let Some(restore) = restore else {
        let content = find(
            &s.contents,
            ns,
            snap.status()["virtualMachineSnapshotContentName"]
                .as_str()
                .unwrap_or(""),
        )
        .ok_or_else(|| format!("the snapshot {snapshot_name} has no content"))?;
        let vm_spec = &content.spec()["source"]["virtualMachine"]["spec"];
        let body = json!({
            "apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineRestore",
            "metadata": {"name": restore_name, "namespace": ns,
                         "ownerReferences": owned_by(clone)},
            "spec": {"target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": target},
                     "virtualMachineSnapshotName": snapshot_name,
                     "patches": identity_patches(clone, vm_spec)},
        });
        s.ensure(&s.restore_kind, ns, &body).await;
        return Ok(Some(clone_phase::CREATING_TARGET_VM));
    };
    if restore.status()["complete"].as_bool() != Some(true) {
        return Ok(Some(clone_phase::RESTORE_IN_PROGRESS));
    }
    // Done: the temporary objects go (the restored claims are copies of their own).
    let _ = s
        .client
        .delete(&s.restore_kind, ns, &restore_name, "Background")
        .await;
    if temporary {
        let _ = s
            .client
            .delete(&s.snapshot_kind, ns, &snapshot_name, "Background")
            .await;
    }
    let status = json!({"phase": clone_phase::SUCCEEDED, "targetName": target,
        "conditions": [condition("Progressing", false, "Succeeded", ""),
                       condition("Ready", true, "Succeeded", "")]});
    s.set_status(&s.clone_kind, clone, status).await;
    s.events
        .record(
            clone,
            EventType::Normal,
            "CloneSucceeded",
            &format!("Successfully cloned {source_name} to {target}"),
        )
        .await;
    Ok(Some(clone_phase::SUCCEEDED))
}
