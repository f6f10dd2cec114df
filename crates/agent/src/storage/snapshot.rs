//! Volume snapshots on this node: a VolumeSnapshot is a qcow2 internal snapshot inside its claim's
//! file, named after the VolumeSnapshot's uid.
//!
//! - **Taking.** The node that holds the file does it; when a VM uses the claim, the VM's node.
//!   The VolumeSnapshots of one VirtualMachineSnapshot form a group (annotation
//!   `vmo.io/snapshot-group`). While the VM runs here, its owner task takes the whole group in one
//!   QMP `transaction` of `blockdev-snapshot-internal-sync` with the guest stopped only for it,
//!   so the disks agree with each other; otherwise each file gets `qemu-img snapshot -c` (which
//!   fails on QEMU's image lock if a VM opened it meanwhile, and is tried again).
//! - **Rolling back.** A claim annotated `vmo.io/revert-request: <snapshot>/<restore uid>` is rolled
//!   back with `qemu-img snapshot -a` while no VM has it open; the agent answers with
//!   `vmo.io/revert-done` or `vmo.io/revert-error`.
//! - **Deleting.** A deleted VolumeSnapshot (deletionPolicy Delete) loses its internal snapshot,
//!   through QMP when a VM here has the file open; then its finalizer goes.
//! - **Restoring into a new claim.** [`populate_from_snapshot`] copies the snapshot's data out of the
//!   source file with `qemu-img convert -l snapshot.name=...` (used by the provisioner).

use super::Kinds;
use crate::qmp::Qmp;
use crate::runner::Vms;
use crate::AgentConfig;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Command;
use tokio::sync::Notify;
use vmo_api::kinds::kubevirt::VmiSpec;
use vmo_api::kinds::snapshot::{
    internal_name, GROUP_ANNOTATION, GROUP_SIZE_ANNOTATION, GUEST_PAUSE_ANNOTATION,
    REVERT_DONE_ANNOTATION, REVERT_ERROR_ANNOTATION, REVERT_REQUEST_ANNOTATION,
    SNAPSHOT_CLEANUP_FINALIZER,
};
use vmo_api::kinds::storage::{ClaimSpec, PersistentVolume, PROVISIONED_ON_ANNOTATION};
use vmo_api::meta::now_rfc3339;
use vmo_api::{KindInfo, Object, Registry};
use vmo_client::events::{EventType, Recorder};
use vmo_client::informer::{self, Cache};
use vmo_client::Client;

/// What the owner task of a running VM did for a snapshot request.
#[derive(Debug, Clone)]
pub struct Taken {
    /// How long the guest was stopped (zero when it was not running).
    pub paused: Duration,
}

/// Takes internal snapshots `(file, name)` of a running QEMU's disks in one transaction, the guest
/// stopped only around it. None when one of the files is not a disk of this QEMU.
pub(crate) async fn take_in_qemu(
    qmp: &Qmp,
    disks: &[(PathBuf, String)],
) -> Option<Result<Taken, String>> {
    let devices = devices_of(qmp, disks).await?;
    let actions: Vec<Value> = devices
        .iter()
        .zip(disks)
        .map(|(device, (_, name))| {
            json!({"type": "blockdev-snapshot-internal-sync",
                   "data": {"device": device, "name": name}})
        })
        .collect();
    let running = qmp.status().await.is_ok_and(|s| s == "running");
    let start = Instant::now();
    if running {
        if let Err(e) = qmp.execute("stop", None).await {
            return Some(Err(format!("stopping the guest for the snapshot: {e}")));
        }
    }
    let result = qmp
        .execute("transaction", Some(json!({ "actions": actions })))
        .await;
    let resumed = if running {
        qmp.execute("cont", None).await.err()
    } else {
        None
    };
    let paused = if running {
        start.elapsed()
    } else {
        Duration::ZERO
    };
    if let Some(e) = resumed {
        tracing::error!(error = %e, "could not resume the guest after a snapshot");
    }
    Some(
        result
            .map(|_| Taken { paused })
            .map_err(|e| format!("snapshot transaction: {e}")),
    )
}

/// Deletes the internal snapshot `name` of a running QEMU's disk `file`; None when it has no such
/// disk.
pub(crate) async fn delete_in_qemu(
    qmp: &Qmp,
    file: &Path,
    name: &str,
) -> Option<Result<(), String>> {
    let disks = [(file.to_path_buf(), name.to_string())];
    let device = devices_of(qmp, &disks).await?.pop()?;
    let args = json!({"device": device, "name": name});
    Some(
        match qmp
            .execute("blockdev-snapshot-delete-internal-sync", Some(args))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("not found") => Ok(()),
            Err(e) => Err(format!("deleting the snapshot: {e}")),
        },
    )
}

/// The root node name of the disk opening each file, or None when one is not open here.
async fn devices_of(qmp: &Qmp, disks: &[(PathBuf, String)]) -> Option<Vec<String>> {
    let block = qmp.execute("query-block", None).await.ok()?;
    let block = block.as_array()?;
    disks
        .iter()
        .map(|(file, _)| {
            let wanted = file.to_string_lossy();
            block
                .iter()
                .find(|d| d["inserted"]["file"].as_str() == Some(&wanted))
                .and_then(|d| d["inserted"]["node-name"].as_str())
                .map(str::to_string)
        })
        .collect()
}

async fn qemu_img(args: &[&str]) -> Result<String, String> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("running qemu-img: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "qemu-img {}: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The internal snapshots of an image, by name (shared lock: works while a VM has it open).
pub async fn list(file: &Path) -> Result<Vec<String>, String> {
    let info = qemu_img(&["info", "-U", "--output=json", &file.to_string_lossy()]).await?;
    let info: Value = serde_json::from_str(&info).map_err(|e| e.to_string())?;
    Ok(info["snapshots"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|s| s["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// Copies the internal snapshot `name` of `source` into a new image `target` (`format`, at least
/// `size` bytes), written under a partial name first.
pub async fn populate_from_snapshot(
    source: &Path,
    name: &str,
    target: &Path,
    format: &str,
    size: u64,
) -> Result<(), String> {
    let partial = super::files::partial_path(target);
    let _ = tokio::fs::remove_file(&partial).await;
    let snapshot = format!("snapshot.name={name}");
    let result = copy_out(source, &snapshot, &partial, format, size).await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
        return result;
    }
    super::files::finish(&partial, target)
        .await
        .map_err(|e| e.to_string())
}

async fn copy_out(
    source: &Path,
    snapshot: &str,
    partial: &Path,
    format: &str,
    size: u64,
) -> Result<(), String> {
    qemu_img(&[
        "convert",
        "-U",
        "-t",
        super::files::output_cache(partial),
        "-l",
        snapshot,
        "-O",
        format,
        &source.to_string_lossy(),
        &partial.to_string_lossy(),
    ])
    .await?;
    super::files::grow_file(partial, size)
        .await
        .map_err(|e| e.to_string())
}

/// The volume snapshot kinds.
#[derive(Debug, Clone, Copy)]
struct SnapshotKinds {
    snapshot: KindInfo,
    content: KindInfo,
    class: KindInfo,
}

struct Worker {
    client: Client,
    config: AgentConfig,
    kinds: Kinds,
    snap: SnapshotKinds,
    events: Recorder,
    vms: Vms,
    claims: Cache,
    volumes: Cache,
    vmis: Cache,
}

/// Runs the snapshot worker until the task is dropped.
pub async fn run(client: Client, config: AgentConfig, vms: Vms) {
    let kinds = Kinds::new();
    let registry = Registry::builtin();
    let k = |n: &str| *registry.resolve(n).expect("registered kind");
    let snap = SnapshotKinds {
        snapshot: k("volumesnapshots.snapshot.storage.k8s.io"),
        content: k("volumesnapshotcontents.snapshot.storage.k8s.io"),
        class: k("volumesnapshotclasses.snapshot.storage.k8s.io"),
    };
    let changed = Arc::new(Notify::new());
    let start = |kind| {
        informer::start(
            client.clone(),
            kind,
            changed.clone(),
            informer::every_change,
        )
    };
    let snapshots = start(snap.snapshot);
    let worker = Arc::new(Worker {
        events: Recorder::new(
            client.clone(),
            vmo_client::events::AGENT_COMPONENT,
            &config.node_name,
        ),
        claims: start(kinds.claim),
        volumes: start(kinds.volume),
        vmis: start(kinds.vmi),
        client: client.clone(),
        config,
        kinds,
        snap,
        vms,
    });
    let mut tasks: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        let synced = [&snapshots, &worker.claims, &worker.volumes, &worker.vmis];
        if !synced.iter().all(|c| c.synced()) {
            continue;
        }
        tasks.retain(|_, t| !t.is_finished());
        // Snapshots to take, by group.
        let mut groups: BTreeMap<String, Vec<Object>> = BTreeMap::new();
        for vs in snapshots.list() {
            let ready = vs.status()["readyToUse"].as_bool() == Some(true);
            let failed = vs.status()["error"].is_object();
            if vs.metadata.deletion_timestamp.is_some() {
                if vs
                    .metadata
                    .finalizers
                    .iter()
                    .any(|f| f == SNAPSHOT_CLEANUP_FINALIZER)
                    && worker.deletes(&vs)
                {
                    let key = format!("delete/{}", vs.metadata.uid);
                    if let std::collections::hash_map::Entry::Vacant(slot) = tasks.entry(key) {
                        let w = worker.clone();
                        slot.insert(tokio::spawn(async move { w.delete(vs).await }));
                    }
                }
                continue;
            }
            if ready || failed {
                continue;
            }
            let group = vs
                .metadata
                .annotations
                .get(GROUP_ANNOTATION)
                .cloned()
                .unwrap_or_else(|| vs.metadata.uid.clone());
            groups
                .entry(format!("{}/{group}", vs.metadata.namespace))
                .or_default()
                .push(vs);
        }
        for (group, members) in groups {
            let size: usize = members[0]
                .metadata
                .annotations
                .get(GROUP_SIZE_ANNOTATION)
                .and_then(|s| s.parse().ok())
                .unwrap_or(1);
            if members.len() < size {
                continue; // the controller is still creating the group
            }
            let Some(files) = worker.files_if_mine(&members) else {
                continue;
            };
            let key = format!("take/{group}");
            if tasks.contains_key(&key) {
                continue;
            }
            let w = worker.clone();
            tasks.insert(
                key,
                tokio::spawn(async move { w.take(members, files).await }),
            );
        }
        for claim in worker.claims.select(|c| {
            let a = &c.metadata.annotations;
            a.get(REVERT_REQUEST_ANNOTATION).is_some_and(|r| {
                r.rsplit('/').next() != a.get(REVERT_DONE_ANNOTATION).map(String::as_str)
            })
        }) {
            let key = format!("revert/{}", claim.metadata.uid);
            if tasks.contains_key(&key) {
                continue;
            }
            let Some((file, node)) = worker.file_of(&claim) else {
                continue;
            };
            if node != worker.config.node_name {
                continue;
            }
            let w = worker.clone();
            tasks.insert(
                key,
                tokio::spawn(async move { w.revert(claim, file).await }),
            );
        }
    }
}

impl Worker {
    /// The file of a bound claim and the node that acts on it: the node of a VM using it, else the
    /// node that holds (local) or made (shared) the file.
    fn file_of(&self, claim: &Object) -> Option<(PathBuf, String)> {
        let volume = ClaimSpec::of(claim).volume_name.unwrap_or_default();
        let pv = self
            .volumes
            .select(|v| v.metadata.name == volume)
            .into_iter()
            .next()?;
        let spec = PersistentVolume::of(&pv);
        let file = PathBuf::from(spec.path()?);
        let (ns, name) = (&claim.metadata.namespace, &claim.metadata.name);
        let user = self.vmis.select(|vmi| {
            vmi.metadata.namespace == *ns
                && !matches!(vmi.status()["phase"].as_str(), Some("Succeeded" | "Failed"))
                && serde_json::from_value::<VmiSpec>(vmi.spec().clone()).is_ok_and(|s| {
                    s.volumes
                        .iter()
                        .any(|v| v.claim_name() == Some(name.as_str()))
                })
        });
        let node = user
            .iter()
            .find_map(|vmi| vmi.status()["nodeName"].as_str().map(str::to_string))
            .filter(|n| !n.is_empty())
            .or_else(|| spec.node().map(str::to_string))
            .or_else(|| {
                pv.metadata
                    .annotations
                    .get(PROVISIONED_ON_ANNOTATION)
                    .cloned()
            })?;
        Some((file, node))
    }

    fn claim(&self, namespace: &str, name: &str) -> Option<Object> {
        self.claims
            .select(|c| c.metadata.namespace == namespace && c.metadata.name == name)
            .into_iter()
            .next()
    }

    fn source_claim(&self, vs: &Object) -> Option<Object> {
        let name = vs.spec()["source"]["persistentVolumeClaimName"].as_str()?;
        self.claim(&vs.metadata.namespace, name)
    }

    /// The files of a group whose work falls to this node (every member's claim bound).
    fn files_if_mine(&self, members: &[Object]) -> Option<Vec<PathBuf>> {
        let mut files = Vec::new();
        for vs in members {
            let claim = self.source_claim(vs)?;
            let (file, node) = self.file_of(&claim)?;
            if node != self.config.node_name {
                return None;
            }
            files.push(file);
        }
        Some(files)
    }

    /// True when this node should clean up after the deleted snapshot `vs`.
    fn deletes(&self, vs: &Object) -> bool {
        match self.source_claim(vs).and_then(|c| self.file_of(&c)) {
            Some((_, node)) => node == self.config.node_name,
            // The claim or its volume is gone with the file: whoever sees it lets it go.
            None => true,
        }
    }

    /// The deletion policy of the snapshot's class (`Delete` without one).
    async fn deletion_policy(&self, vs: &Object) -> String {
        let Some(class) = vs.spec()["volumeSnapshotClassName"].as_str() else {
            return "Delete".into();
        };
        self.client
            .get(&self.snap.class, "", class)
            .await
            .ok()
            .and_then(|c| c.body.get("deletionPolicy")?.as_str().map(str::to_string))
            .unwrap_or_else(|| "Delete".into())
    }

    async fn status(&self, vs: &Object, status: Value) {
        let r = self
            .client
            .merge_patch(
                &self.snap.snapshot,
                &vs.metadata.namespace,
                &vs.metadata.name,
                Some("status"),
                &json!({ "status": status }),
                "vmo-agent",
            )
            .await;
        if let Err(e) = r {
            tracing::debug!(snapshot = %vs.display_name(), error = %e, "could not write a snapshot's status");
        }
    }

    /// Takes a group's snapshots (one transaction when a VM here runs from them).
    async fn take(self: Arc<Self>, members: Vec<Object>, files: Vec<PathBuf>) {
        // The finalizer first, so a snapshot deleted meanwhile is still cleaned up.
        for vs in &members {
            if !vs
                .metadata
                .finalizers
                .iter()
                .any(|f| f == SNAPSHOT_CLEANUP_FINALIZER)
            {
                let patch = json!({"metadata": {"finalizers":
                    vs.metadata.finalizers.iter().cloned().chain([SNAPSHOT_CLEANUP_FINALIZER.to_string()]).collect::<Vec<_>>(),
                    "resourceVersion": vs.metadata.resource_version}});
                if let Err(e) = self
                    .client
                    .merge_patch(
                        &self.snap.snapshot,
                        &vs.metadata.namespace,
                        &vs.metadata.name,
                        None,
                        &patch,
                        "vmo-agent",
                    )
                    .await
                {
                    tracing::debug!(snapshot = %vs.display_name(), error = %e, "could not add the finalizer");
                    return;
                }
            }
        }
        let disks: Vec<(PathBuf, String)> = files
            .iter()
            .zip(&members)
            .map(|(f, vs)| (f.clone(), internal_name(&vs.metadata.uid)))
            .collect();
        let mut taken = None;
        let handles: Vec<_> = self
            .vms
            .lock()
            .expect("vms lock")
            .values()
            .cloned()
            .collect();
        for handle in handles {
            if let Some(r) = handle.snapshot_disks(&disks).await {
                taken = Some(r);
                break;
            }
        }
        let result = match taken {
            Some(r) => r,
            None => self.take_offline(&disks).await,
        };
        match result {
            Ok(t) => {
                let now = now_rfc3339();
                for ((file, _), vs) in disks.iter().zip(&members) {
                    let size = super::files::info(file)
                        .await
                        .ok()
                        .and_then(|i| i["virtual-size"].as_u64())
                        .unwrap_or(0);
                    let content = self.record_content(vs, file).await;
                    if !t.paused.is_zero() {
                        let patch = json!({"metadata": {"annotations": {
                            GUEST_PAUSE_ANNOTATION: t.paused.as_micros().to_string()}}});
                        let _ = self
                            .client
                            .merge_patch(
                                &self.snap.snapshot,
                                &vs.metadata.namespace,
                                &vs.metadata.name,
                                None,
                                &patch,
                                "vmo-agent",
                            )
                            .await;
                    }
                    self.status(
                        vs,
                        json!({"readyToUse": true, "creationTime": now,
                               "restoreSize": size.to_string(),
                               "boundVolumeSnapshotContentName": content}),
                    )
                    .await;
                }
                tracing::info!(
                    snapshots = members.len(),
                    paused_us = t.paused.as_micros() as u64,
                    "volume snapshots taken"
                );
            }
            Err(why) if why.contains("lock") => {
                // A VM opened the file meanwhile: the next pass takes it through that VM.
                tracing::debug!(why, "snapshot retried");
            }
            Err(why) => {
                for vs in &members {
                    self.events
                        .record(vs, EventType::Warning, "SnapshotFailed", &why)
                        .await;
                    self.status(
                        vs,
                        json!({"readyToUse": false, "error": {"message": why, "time": now_rfc3339()}}),
                    )
                    .await;
                }
            }
        }
    }

    async fn take_offline(&self, disks: &[(PathBuf, String)]) -> Result<Taken, String> {
        for (file, name) in disks {
            let info = super::files::info(file).await.map_err(|e| e.to_string())?;
            if info["format"] != "qcow2" {
                return Err(format!(
                    "{} is a {} volume: only qcow2 volumes have snapshots (use a class with format qcow2)",
                    file.display(),
                    info["format"].as_str().unwrap_or("?")
                ));
            }
            if list(file).await?.contains(name) {
                continue;
            }
            qemu_img(&["snapshot", "-c", name, &file.to_string_lossy()]).await?;
        }
        Ok(Taken {
            paused: Duration::ZERO,
        })
    }

    /// Records the VolumeSnapshotContent of a taken snapshot; returns its name.
    async fn record_content(&self, vs: &Object, file: &Path) -> String {
        let name = format!("snapcontent-{}", vs.metadata.uid);
        let driver = self
            .source_claim(vs)
            .and_then(|c| {
                c.metadata
                    .annotations
                    .get(vmo_api::kinds::storage::STORAGE_PROVISIONER_ANNOTATION)
                    .cloned()
            })
            .unwrap_or_else(|| vmo_api::kinds::storage::LOCAL_PROVISIONER.into());
        let handle = format!("{}#{}", file.display(), internal_name(&vs.metadata.uid));
        let content = json!({
            "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
            "metadata": {"name": name},
            "spec": {"driver": driver, "deletionPolicy": self.deletion_policy(vs).await,
                     "source": {"volumeHandle": file.to_string_lossy()},
                     "volumeSnapshotClassName": vs.spec()["volumeSnapshotClassName"],
                     "volumeSnapshotRef": {"kind": "VolumeSnapshot",
                         "apiVersion": "snapshot.storage.k8s.io/v1",
                         "namespace": vs.metadata.namespace, "name": vs.metadata.name,
                         "uid": vs.metadata.uid}},
        });
        match self.client.create(&self.snap.content, "", &content).await {
            Ok(_) => {}
            Err(e) if e.is_conflict() => {}
            Err(e) => tracing::debug!(error = %e, "could not record a VolumeSnapshotContent"),
        }
        let status = json!({"status": {"readyToUse": true, "snapshotHandle": handle,
                                       "creationTime": vmo_api::meta::now_rfc3339()}});
        let _ = self
            .client
            .merge_patch(
                &self.snap.content,
                "",
                &name,
                Some("status"),
                &status,
                "vmo-agent",
            )
            .await;
        name
    }

    /// Removes a deleted snapshot's internal snapshot (deletionPolicy Delete), then its finalizer.
    async fn delete(self: Arc<Self>, vs: Object) {
        let name = internal_name(&vs.metadata.uid);
        let file = self
            .source_claim(&vs)
            .and_then(|c| self.file_of(&c))
            .map(|(f, _)| f);
        let delete = self.deletion_policy(&vs).await == "Delete";
        if let Some(file) = file.filter(|f| f.exists()) {
            if delete {
                let handles: Vec<_> = self
                    .vms
                    .lock()
                    .expect("vms lock")
                    .values()
                    .cloned()
                    .collect();
                let mut result = None;
                for handle in handles {
                    if let Some(r) = handle.delete_disk_snapshot(&file, &name).await {
                        result = Some(r);
                        break;
                    }
                }
                let result = match result {
                    Some(r) => r,
                    None => match list(&file).await {
                        Ok(names) if !names.contains(&name) => Ok(()),
                        _ => qemu_img(&["snapshot", "-d", &name, &file.to_string_lossy()])
                            .await
                            .map(|_| ()),
                    },
                };
                if let Err(why) = result {
                    tracing::warn!(snapshot = %vs.display_name(), why, "could not delete an internal snapshot");
                    self.events
                        .record(&vs, EventType::Warning, "SnapshotDeleteFailed", &why)
                        .await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    return;
                }
            }
        }
        // Retain keeps the VolumeSnapshotContent too, as Kubernetes does.
        if delete {
            let content = format!("snapcontent-{}", vs.metadata.uid);
            let _ = self
                .client
                .delete(&self.snap.content, "", &content, "Background")
                .await;
        }
        if let Err(e) = self
            .client
            .remove_finalizer(&self.snap.snapshot, &vs, SNAPSHOT_CLEANUP_FINALIZER)
            .await
        {
            tracing::debug!(snapshot = %vs.display_name(), error = %e, "could not release a snapshot");
        }
    }

    /// Rolls a claim's file back to the requested snapshot while no VM has it open.
    async fn revert(self: Arc<Self>, claim: Object, file: PathBuf) {
        let request = claim.metadata.annotations[REVERT_REQUEST_ANNOTATION].clone();
        let Some((snapshot, restore)) = request.rsplit_once('/') else {
            return;
        };
        let result = async {
            let vs = self
                .client
                .get(&self.snap.snapshot, &claim.metadata.namespace, snapshot)
                .await
                .map_err(|e| format!("volumesnapshot {snapshot}: {e}"))?;
            let name = internal_name(&vs.metadata.uid);
            qemu_img(&["snapshot", "-a", &name, &file.to_string_lossy()])
                .await
                .map(|_| ())
                .map_err(|why| {
                    if why.contains("lock") {
                        format!("the volume is open in a running VM ({why})")
                    } else {
                        why
                    }
                })
        }
        .await;
        let (done, error) = match &result {
            Ok(()) => (Value::String(restore.to_string()), Value::Null),
            Err(why) => (Value::Null, Value::String(why.clone())),
        };
        if let Err(why) = &result {
            tracing::warn!(claim = %claim.display_name(), why, "rollback failed");
            tokio::time::sleep(Duration::from_secs(3)).await;
        } else {
            tracing::info!(claim = %claim.display_name(), snapshot, "rolled back");
        }
        let patch = json!({"metadata": {"annotations": {
            REVERT_DONE_ANNOTATION: done, REVERT_ERROR_ANNOTATION: error}}});
        let _ = self
            .client
            .merge_patch(
                &self.kinds.claim,
                &claim.metadata.namespace,
                &claim.metadata.name,
                None,
                &patch,
                "vmo-agent",
            )
            .await;
    }
}

/// Fills a new claim whose `dataSource` is a VolumeSnapshot from that snapshot; None for claims
/// with another source.
pub(crate) async fn populate_claim(
    w: &super::provision::Worker,
    claim: &Object,
    path: &Path,
    format: &str,
    size: u64,
) -> Option<Result<(), super::provision::ProvisionError>> {
    use super::provision::ProvisionError;
    let spec = ClaimSpec::of(claim);
    let source = spec
        .data_source_ref
        .clone()
        .or(spec.data_source.clone())
        .filter(|s| s.kind == "VolumeSnapshot")?;
    let ns = &claim.metadata.namespace;
    let kind = *Registry::builtin()
        .resolve("volumesnapshots.snapshot.storage.k8s.io")
        .expect("registered kind");
    let result = async {
        let vs = w
            .client
            .get(&kind, ns, &source.name)
            .await
            .map_err(|e| ProvisionError::Waiting(format!("volumesnapshot {}: {e}", source.name)))?;
        if vs.status()["readyToUse"].as_bool() != Some(true) {
            return Err(ProvisionError::Waiting(format!(
                "volumesnapshot {} is not ready to use yet",
                source.name
            )));
        }
        let claim_name = vs.spec()["source"]["persistentVolumeClaimName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let source_claim = w
            .client
            .get(&w.kinds.claim, ns, &claim_name)
            .await
            .map_err(|e| ProvisionError::Fatal(format!("the snapshot's claim {claim_name}: {e}")))?;
        let volume = ClaimSpec::of(&source_claim).volume_name.unwrap_or_default();
        let pv = w
            .client
            .get(&w.kinds.volume, "", &volume)
            .await
            .map_err(|e| ProvisionError::Fatal(format!("the snapshot's volume {volume}: {e}")))?;
        let pv = PersistentVolume::of(&pv);
        if let Some(node) = pv.node().filter(|n| *n != w.config.node_name) {
            return Err(ProvisionError::Fatal(format!(
                "volumesnapshot {} is in node {node}'s local pool and this claim is provisioned on {}; restoring across nodes' local pools is not supported",
                source.name, w.config.node_name
            )));
        }
        let file = PathBuf::from(pv.path().unwrap_or_default());
        populate_from_snapshot(&file, &internal_name(&vs.metadata.uid), path, format, size)
            .await
            .map_err(ProvisionError::Retry)?;
        tracing::info!(claim = %claim.display_name(), snapshot = %source.name, "restored from a volume snapshot");
        Ok(())
    }
    .await;
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu_io(file: &Path, command: &str) -> bool {
        std::process::Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", command])
            .arg(file)
            .output()
            .is_ok_and(|o| {
                o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("fail")
            })
    }

    /// An internal snapshot keeps the data it was taken with; a new image copied out of it has
    /// that data, whatever the source got afterwards; a rollback brings it back.
    #[tokio::test]
    async fn a_volume_snapshot_keeps_its_data() {
        if std::process::Command::new("qemu-io")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("SKIPPED: qemu-io is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("pvc-a.qcow2");
        super::super::files::create_blank(&source, "qcow2", 16 << 20)
            .await
            .unwrap();
        assert!(qemu_io(&source, "write -P 0xab 0 64k"));
        let s = source.to_string_lossy().to_string();
        qemu_img(&["snapshot", "-c", "vs-1", &s]).await.unwrap();
        assert_eq!(list(&source).await.unwrap(), ["vs-1"]);
        assert!(qemu_io(&source, "write -P 0xcd 0 64k"));
        let copy = dir.path().join("pvc-b.qcow2");
        populate_from_snapshot(&source, "vs-1", &copy, "qcow2", 32 << 20)
            .await
            .unwrap();
        assert!(
            qemu_io(&copy, "read -P 0xab 0 64k"),
            "the copy has the snapshot's data"
        );
        let size = super::super::files::info(&copy).await.unwrap()["virtual-size"].clone();
        assert_eq!(size, 32u64 << 20, "grown to the claim's size");
        assert!(list(&copy).await.unwrap().is_empty());
        assert!(qemu_io(&source, "read -P 0xcd 0 64k"));
        qemu_img(&["snapshot", "-a", "vs-1", &s]).await.unwrap();
        assert!(qemu_io(&source, "read -P 0xab 0 64k"), "rolled back");
        let missing = populate_from_snapshot(&source, "vs-9", &copy, "qcow2", 1).await;
        assert!(missing.is_err());
    }
}
