//! The snapshot controller: the server's part of VM snapshots, restores and clones (agents take,
//! roll back and delete the volume snapshots themselves, see `vmo_agent::storage::snapshot`).
//!
//! - [`vm_snapshot`]: a VirtualMachineSnapshot gets a VirtualMachineSnapshotContent holding the
//!   VM's spec, and one VolumeSnapshot per claimed volume, all in one group so the agent takes
//!   them in one QMP transaction; the snapshot succeeds when every volume snapshot is ready;
//! - [`restore`]: a VirtualMachineRestore into the (stopped) source VM rolls every claim back and
//!   the VM spec with it; into a VM that does not exist it creates claims from the volume
//!   snapshots and a new VM;
//! - [`clone`]: a VirtualMachineClone is a snapshot (unless it names one), a restore into a new
//!   VM with fresh MAC addresses and SMBIOS serial, then the temporary objects go.
//!
//! One level-triggered pass at a time, woken by any change of these kinds and every few seconds.

mod clone;
mod restore;
mod vm_snapshot;

use crate::informer::{self, Cache};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use vmo_api::meta::now_rfc3339;
use vmo_api::{KindInfo, Object, Registry};
use vmo_client::events::{EventType, Recorder};
use vmo_client::{Client, ClientError};

/// The kinds and caches a pass reads.
pub(crate) struct Snapshots {
    pub client: Client,
    pub events: Recorder,
    pub vm_kind: KindInfo,
    pub claim_kind: KindInfo,
    pub vs_kind: KindInfo,
    pub snapshot_kind: KindInfo,
    pub content_kind: KindInfo,
    pub restore_kind: KindInfo,
    pub clone_kind: KindInfo,
    pub vms: Cache,
    pub vmis: Cache,
    pub claims: Cache,
    pub volumes: Cache,
    pub volume_snapshots: Cache,
    pub snapshots: Cache,
    pub contents: Cache,
    pub restores: Cache,
    pub clones: Cache,
    /// The last event message recorded per object uid, so a pass repeats none.
    noted: std::sync::Mutex<HashMap<String, String>>,
}

/// The object named `namespace/name` in `cache`.
pub(crate) fn find(cache: &Cache, namespace: &str, name: &str) -> Option<Object> {
    cache
        .select(|o| o.metadata.namespace == namespace && o.metadata.name == name)
        .into_iter()
        .next()
}

/// A condition as KubeVirt writes them.
pub(crate) fn condition(kind: &str, ok: bool, reason: &str, message: &str) -> Value {
    json!({"type": kind, "status": if ok {"True"} else {"False"}, "reason": reason,
           "message": message, "lastTransitionTime": now_rfc3339()})
}

/// An owner reference to `o` as its controller.
pub(crate) fn owned_by(o: &Object) -> Value {
    json!([{"apiVersion": o.api_version, "kind": o.kind, "name": o.metadata.name,
            "uid": o.metadata.uid, "controller": true, "blockOwnerDeletion": true}])
}

/// The message of `o`'s condition of type `kind`.
pub(crate) fn condition_message(o: &Object, kind: &str) -> String {
    o.status()["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .and_then(|c| c["message"].as_str())
        .unwrap_or("")
        .to_string()
}

impl Snapshots {
    /// Records an event about `obj` unless the same message was recorded last.
    pub async fn note_once(&self, obj: &Object, kind: EventType, reason: &str, message: &str) {
        {
            let mut noted = self.noted.lock().expect("noted lock");
            if noted.get(&obj.metadata.uid).map(String::as_str) == Some(message) {
                return;
            }
            noted.insert(obj.metadata.uid.clone(), message.to_string());
        }
        self.events.record(obj, kind, reason, message).await;
    }

    /// Merges `status` into the status of `obj` (of `kind`); failures are logged.
    pub async fn set_status(&self, kind: &KindInfo, obj: &Object, status: Value) {
        let r = self
            .client
            .merge_patch(
                kind,
                &obj.metadata.namespace,
                &obj.metadata.name,
                Some("status"),
                &json!({ "status": status }),
                "vmo-snapshot-controller",
            )
            .await;
        logged("write a status", obj, r);
    }

    /// Creates `body` unless it exists.
    pub async fn ensure(&self, kind: &KindInfo, namespace: &str, body: &Value) -> bool {
        match self.client.create(kind, namespace, body).await {
            Ok(_) => true,
            Err(e) if e.is_conflict() => true,
            Err(e) => {
                tracing::warn!(kind = kind.kind, error = %e, "snapshot controller could not create");
                false
            }
        }
    }

    /// True while an instance of the VM `namespace/name` exists and has not ended.
    pub fn vm_running(&self, namespace: &str, name: &str) -> bool {
        find(&self.vmis, namespace, name).is_some_and(|vmi| {
            !matches!(vmi.status()["phase"].as_str(), Some("Succeeded" | "Failed"))
        })
    }
}

/// Logs a failed write; 404 and 409 mean another writer got there first and the next pass decides.
pub(crate) fn logged(what: &str, obj: &Object, r: Result<Object, ClientError>) -> bool {
    match r {
        Ok(_) => true,
        Err(e) if e.is_not_found() || e.is_conflict() => false,
        Err(e) => {
            tracing::warn!(object = %obj.display_name(), error = %e, "snapshot controller could not {what}");
            false
        }
    }
}

/// Runs the controller until the task is dropped.
pub async fn run(client: Client, registry: Arc<Registry>) {
    let changed = Arc::new(Notify::new());
    let kind = |name: &str| {
        *registry
            .resolve(name)
            .expect("snapshot kinds are registered")
    };
    let cache =
        |k: KindInfo| informer::start(client.clone(), k, changed.clone(), informer::every_change);
    let s = Snapshots {
        client: client.clone(),
        events: Recorder::new(client.clone(), "vmo-snapshot-controller", ""),
        vm_kind: kind("virtualmachines.kubevirt.io"),
        claim_kind: kind("persistentvolumeclaims"),
        vs_kind: kind("volumesnapshots.snapshot.storage.k8s.io"),
        snapshot_kind: kind("virtualmachinesnapshots.snapshot.kubevirt.io"),
        content_kind: kind("virtualmachinesnapshotcontents.snapshot.kubevirt.io"),
        restore_kind: kind("virtualmachinerestores.snapshot.kubevirt.io"),
        clone_kind: kind("virtualmachineclones.clone.kubevirt.io"),
        vms: cache(kind("virtualmachines.kubevirt.io")),
        vmis: cache(kind("virtualmachineinstances.kubevirt.io")),
        claims: cache(kind("persistentvolumeclaims")),
        volumes: cache(kind("persistentvolumes")),
        volume_snapshots: cache(kind("volumesnapshots.snapshot.storage.k8s.io")),
        snapshots: cache(kind("virtualmachinesnapshots.snapshot.kubevirt.io")),
        contents: cache(kind("virtualmachinesnapshotcontents.snapshot.kubevirt.io")),
        restores: cache(kind("virtualmachinerestores.snapshot.kubevirt.io")),
        clones: cache(kind("virtualmachineclones.clone.kubevirt.io")),
        noted: Default::default(),
    };
    loop {
        tokio::select! {
            _ = changed.notified() => tokio::time::sleep(Duration::from_millis(20)).await,
            _ = tokio::time::sleep(Duration::from_secs(3)) => {}
        }
        let caches = [
            &s.vms,
            &s.vmis,
            &s.claims,
            &s.volumes,
            &s.volume_snapshots,
            &s.snapshots,
            &s.contents,
            &s.restores,
            &s.clones,
        ];
        if !caches.iter().all(|c| c.synced()) {
            continue;
        }
        vm_snapshot::sync(&s).await;
        restore::sync(&s).await;
        clone::sync(&s).await;
    }
}
