//! The agent's storage worker: provisions the claims whose chosen node is this one, removes the
//! files of deleted volumes it made, and grows volumes whose claims ask for more.
//!
//! Provisioning a claim: the file is filled from the owning DataVolume's source (blank, http
//! import, upload, clone) or left blank, under a `.partial` name; only when complete is it renamed
//! into place, a PersistentVolume recorded and the claim bound. The DataVolume shows each step
//! (ImportInProgress with progress, then Succeeded, or Failed with the reason).

use super::files::{self, FileError};
use super::Kinds;
use crate::runner::Vms;
use crate::AgentConfig;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use vmo_api::kinds::cdi::{phase, DataVolumeSpec};
use vmo_api::kinds::storage::{
    node_affinity_for, ClaimSpec, PersistentVolume, StorageClass, PROVISIONED_BY_ANNOTATION,
    PROVISIONED_ON_ANNOTATION, SELECTED_NODE_ANNOTATION, VOLUME_CLEANUP_FINALIZER,
};
use vmo_api::meta::now_rfc3339;
use vmo_api::Object;
use vmo_client::events::{EventType, Recorder};
use vmo_client::informer::{self, Cache};
use vmo_client::Client;

/// Provisioning jobs running at once on a node (imports are disk and network heavy).
const CONCURRENT_JOBS: usize = 2;
/// Attempts of a transfer that failed for a passing reason (network, server error).
pub const MAX_ATTEMPTS: u32 = 4;

/// Why provisioning a claim stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// Worth another try later (a network failure, a source in use).
    #[error("{0}")]
    Retry(String),
    /// Will not work without a change by the user.
    #[error("{0}")]
    Fatal(String),
    /// Waiting for something outside this job (shown, retried without counting a restart).
    #[error("{0}")]
    Waiting(String),
    /// Nothing to do until the user acts (a failed upload); the status is left as it is.
    #[error("held")]
    Held,
}

impl From<FileError> for ProvisionError {
    fn from(e: FileError) -> Self {
        Self::Fatal(e.to_string())
    }
}

/// Everything a provisioning job needs.
pub(crate) struct Worker {
    pub client: Client,
    pub config: AgentConfig,
    pub kinds: Kinds,
    pub events: Recorder,
    /// The VMs running here, to grow a volume one of them has open.
    vms: Vms,
    jobs: Semaphore,
}

/// Runs the worker until the task is dropped.
pub async fn run(client: Client, config: AgentConfig, vms: Vms) {
    let kinds = Kinds::new();
    let changed = Arc::new(Notify::new());
    let me = config.node_name.clone();
    let claims = informer::start(
        client.clone(),
        kinds.claim,
        changed.clone(),
        informer::every_change,
    );
    let volumes = informer::start(
        client.clone(),
        kinds.volume,
        changed.clone(),
        informer::every_change,
    );
    let data_volumes = informer::start(
        client.clone(),
        kinds.data_volume,
        changed.clone(),
        |_, _| false,
    );
    let worker = Arc::new(Worker {
        events: Recorder::new(client.clone(), vmo_client::events::AGENT_COMPONENT, &me),
        client,
        config,
        kinds,
        vms,
        jobs: Semaphore::new(CONCURRENT_JOBS),
    });
    let mut tasks: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(3)) => {}
        }
        if !claims.synced() || !volumes.synced() || !data_volumes.synced() {
            continue;
        }
        tasks.retain(|_, t| !t.is_finished());
        let mine = |c: &Object| {
            c.metadata.deletion_timestamp.is_none()
                && c.metadata.annotations.get(SELECTED_NODE_ANNOTATION) == Some(&me)
                && ClaimSpec::of(c)
                    .volume_name
                    .as_deref()
                    .unwrap_or("")
                    .is_empty()
        };
        // A DataVolume that failed stays failed until it is deleted and made again (as CDI's).
        let failed = |c: &Object| {
            owner_data_volume(c).is_some_and(|dv| {
                data_volumes
                    .select(|d| {
                        d.metadata.namespace == c.metadata.namespace && d.metadata.name == dv
                    })
                    .first()
                    .is_some_and(|d| d.status()["phase"] == phase::FAILED)
            })
        };
        for claim in claims.select(mine).into_iter().filter(|c| !failed(c)) {
            let key = format!("provision/{}", claim.metadata.uid);
            if tasks.contains_key(&key) {
                continue;
            }
            let w = worker.clone();
            tasks.insert(key, tokio::spawn(async move { w.provision(claim).await }));
        }
        let made_here =
            |v: &Object| v.metadata.annotations.get(PROVISIONED_ON_ANNOTATION) == Some(&me);
        for pv in volumes.select(made_here) {
            let key = format!("volume/{}", pv.metadata.uid);
            if tasks.contains_key(&key) {
                continue;
            }
            if pv.metadata.deletion_timestamp.is_some() {
                let w = worker.clone();
                tasks.insert(key, tokio::spawn(async move { w.clean_up(pv).await }));
            } else if let Some(grow) = wants_growth(&pv, &claims) {
                let w = worker.clone();
                tasks.insert(key, tokio::spawn(async move { w.grow(pv, grow).await }));
            }
        }
    }
}

/// The size a bound volume's claim asks for, when larger than the volume.
fn wants_growth(pv: &Object, claims: &Cache) -> Option<(Object, u64)> {
    let spec = PersistentVolume::of(pv);
    let (ns, name, uid) = spec.claim()?;
    let claim = claims
        .select(|c| c.metadata.namespace == ns && c.metadata.name == name && c.metadata.uid == uid)
        .into_iter()
        .next()?;
    let wanted = ClaimSpec::of(&claim).requested_bytes()?;
    (wanted > spec.capacity_bytes().unwrap_or(0)).then_some((claim, wanted))
}

/// The owning DataVolume's reference on a claim.
fn owner_data_volume(claim: &Object) -> Option<String> {
    claim
        .metadata
        .owner_references
        .iter()
        .find(|o| o.kind == "DataVolume")
        .map(|o| o.name.clone())
}

impl Worker {
    fn pool(&self, class: &StorageClass) -> Result<PathBuf, ProvisionError> {
        if class.shared() {
            self.config.shared_pool.clone().ok_or_else(|| {
                ProvisionError::Fatal(format!(
                    "node {} has no shared pool (start its agent with --shared-pool)",
                    self.config.node_name
                ))
            })
        } else {
            Ok(self.config.local_pool.clone())
        }
    }

    /// Writes a DataVolume's status fields (merged); failures are logged only.
    pub(crate) async fn dv_status(&self, ns: &str, name: &str, status: Value) {
        let r = self
            .client
            .merge_patch(
                &self.kinds.data_volume,
                ns,
                name,
                Some("status"),
                &json!({ "status": status }),
                "vmo-agent",
            )
            .await;
        if let Err(e) = r {
            tracing::debug!(dv = %format!("{ns}/{name}"), error = %e, "could not write a DataVolume's status");
        }
    }

    /// The conditions of a DataVolume in `phase`.
    pub(crate) fn conditions(phase: &str, running: bool, reason: &str, message: &str) -> Value {
        let now = now_rfc3339();
        let done = phase == phase::SUCCEEDED;
        let c = |kind: &str, ok: bool, reason: &str, message: &str| {
            json!({"type": kind, "status": if ok {"True"} else {"False"}, "reason": reason,
                   "message": message, "lastTransitionTime": now, "lastHeartbeatTime": now})
        };
        json!([
            c("Bound", done, if done { "Bound" } else { "Pending" }, ""),
            c("Ready", done, reason, message),
            c(
                "Running",
                running,
                reason,
                if running { "" } else { message }
            ),
        ])
    }

    async fn provision(self: Arc<Self>, claim: Object) {
        let _permit = self.jobs.acquire().await;
        let ns = claim.metadata.namespace.clone();
        let dv_name = owner_data_volume(&claim);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .try_provision(&claim, dv_name.as_deref(), attempt)
                .await
            {
                Ok(()) | Err(ProvisionError::Held) => return,
                Err(ProvisionError::Waiting(why)) => {
                    if let Some(dv) = &dv_name {
                        let status = json!({"conditions": Self::conditions(phase::PENDING, false, "Waiting", &why)});
                        self.dv_status(&ns, dv, status).await;
                    }
                    tracing::debug!(claim = %claim.display_name(), why, "provisioning waits");
                    return;
                }
                Err(ProvisionError::Retry(why)) if attempt < MAX_ATTEMPTS => {
                    tracing::warn!(claim = %claim.display_name(), attempt, why, "provisioning failed; retrying");
                    self.events
                        .record(&claim, EventType::Warning, "ProvisioningRetry", &why)
                        .await;
                    if let Some(dv) = &dv_name {
                        let status = json!({"restartCount": attempt,
                            "conditions": Self::conditions(phase::IMPORT_IN_PROGRESS, false, "Error", &why)});
                        self.dv_status(&ns, dv, status).await;
                    }
                    tokio::time::sleep(Duration::from_secs(2u64.pow(attempt))).await;
                }
                Err(e) => {
                    let why = e.to_string();
                    tracing::warn!(claim = %claim.display_name(), why, "provisioning failed");
                    self.events
                        .record(&claim, EventType::Warning, "ProvisioningFailed", &why)
                        .await;
                    if let Some(dv) = &dv_name {
                        let status = json!({"phase": phase::FAILED, "restartCount": attempt - 1,
                            "conditions": Self::conditions(phase::FAILED, false, "Failed", &why)});
                        self.dv_status(&ns, dv, status).await;
                    }
                    return;
                }
            }
        }
    }

    async fn try_provision(
        &self,
        claim: &Object,
        dv_name: Option<&str>,
        attempt: u32,
    ) -> Result<(), ProvisionError> {
        let ns = &claim.metadata.namespace;
        let spec = ClaimSpec::of(claim);
        let class_name = spec.storage_class_name.clone().unwrap_or_default();
        let class = self
            .client
            .get(&self.kinds.class, "", &class_name)
            .await
            .map(|c| StorageClass::of(&c))
            .map_err(|e| ProvisionError::Waiting(format!("storage class {class_name:?}: {e}")))?;
        let pool = self.pool(&class)?;
        tokio::fs::create_dir_all(&pool).await.map_err(|e| {
            ProvisionError::Fatal(format!("creating the pool {}: {e}", pool.display()))
        })?;
        let format = if spec.volume_mode() == "Block" {
            "raw"
        } else {
            class.format()
        };
        let size = spec
            .requested_bytes()
            .ok_or_else(|| ProvisionError::Fatal("the claim requests no readable size".into()))?;
        let path = pool.join(format!("pvc-{}.{format}", claim.metadata.uid));
        if !path.exists() {
            let dv = match dv_name {
                Some(name) => Some(
                    self.client
                        .get(&self.kinds.data_volume, ns, name)
                        .await
                        .map_err(|e| ProvisionError::Waiting(format!("DataVolume {name}: {e}")))?,
                ),
                None => None,
            };
            self.populate(claim, dv.as_ref(), &path, format, size, attempt)
                .await?;
        }
        let capacity = files::info(&path).await?["virtual-size"]
            .as_u64()
            .unwrap_or(size);
        self.record_volume(claim, &spec, &class, &path, capacity)
            .await?;
        if let Some(dv) = dv_name {
            let status = json!({"phase": phase::SUCCEEDED, "progress": "100.0%",
                "conditions": Self::conditions(phase::SUCCEEDED, false, "Completed", "")});
            self.dv_status(ns, dv, status).await;
        }
        self.events
            .record(
                claim,
                EventType::Normal,
                "ProvisioningSucceeded",
                &format!(
                    "Successfully provisioned volume pvc-{} on {}",
                    claim.metadata.uid, self.config.node_name
                ),
            )
            .await;
        Ok(())
    }

    /// Fills the volume file from the DataVolume's source (blank without one).
    async fn populate(
        &self,
        claim: &Object,
        dv: Option<&Object>,
        path: &Path,
        format: &str,
        size: u64,
        attempt: u32,
    ) -> Result<(), ProvisionError> {
        if let Some(r) = super::snapshot::populate_claim(self, claim, path, format, size).await {
            return r;
        }
        let Some(dv) = dv else {
            return Ok(files::create_blank(path, format, size).await?);
        };
        let spec = DataVolumeSpec::of(dv);
        let source = spec.source();
        let (ns, name) = (&dv.metadata.namespace, &dv.metadata.name);
        match source.kind() {
            "http" => {
                let http = source.http.clone().unwrap_or_default();
                super::importer::import_http(self, dv, &http, path, format, size, attempt).await
            }
            "upload" => super::upload::receive(self, dv, path, format, size).await,
            "pvc" => {
                let pvc = source.pvc.clone().unwrap_or_default();
                let source_ns = pvc.namespace.clone().unwrap_or_else(|| ns.clone());
                self.dv_status(
                    ns,
                    name,
                    json!({"phase": phase::CLONE_IN_PROGRESS, "progress": "0.0%",
                           "conditions": Self::conditions(phase::CLONE_IN_PROGRESS, true, "CloneInProgress", "")}),
                )
                .await;
                self.clone_claim(claim, &source_ns, &pvc.name, path, format, size)
                    .await
            }
            _ => {
                self.dv_status(
                    ns,
                    name,
                    json!({"phase": phase::IMPORT_IN_PROGRESS, "progress": "0.0%",
                           "conditions": Self::conditions(phase::IMPORT_IN_PROGRESS, true, "Pending", "")}),
                )
                .await;
                Ok(files::create_blank(path, format, size).await?)
            }
        }
    }

    /// Clones another claim's volume: copy-on-write in the same pool, else a full copy.
    async fn clone_claim(
        &self,
        claim: &Object,
        source_ns: &str,
        source_name: &str,
        path: &Path,
        format: &str,
        size: u64,
    ) -> Result<(), ProvisionError> {
        let source = self
            .client
            .get(&self.kinds.claim, source_ns, source_name)
            .await
            .map_err(|e| {
                ProvisionError::Waiting(format!("clone source {source_ns}/{source_name}: {e}"))
            })?;
        let volume = ClaimSpec::of(&source).volume_name.unwrap_or_default();
        if volume.is_empty() {
            return Err(ProvisionError::Waiting(format!(
                "clone source {source_ns}/{source_name} is not bound yet"
            )));
        }
        let pv = self
            .client
            .get(&self.kinds.volume, "", &volume)
            .await
            .map_err(|e| ProvisionError::Waiting(format!("volume {volume}: {e}")))?;
        let pv_spec = PersistentVolume::of(&pv);
        if let Some(node) = pv_spec.node() {
            if node != self.config.node_name {
                return Err(ProvisionError::Fatal(format!(
                    "the clone source {source_ns}/{source_name} is in node {node}'s local pool and this volume is provisioned on {}; cloning across nodes' local pools is not supported",
                    self.config.node_name
                )));
            }
        }
        let source_path = PathBuf::from(pv_spec.path().unwrap_or_default());
        if super::in_use(&self.client, &self.kinds, source_ns, source_name).await {
            return Err(ProvisionError::Waiting(format!(
                "the clone source {source_ns}/{source_name} is in use by a running VM; stop it to clone"
            )));
        }
        let same_pool = source_path.parent() == path.parent();
        // A copy-on-write clone turns the source file into a base and gives the source a fresh
        // overlay: its internal snapshots (VolumeSnapshots) would stay behind in the base.
        let has_snapshots = !super::snapshot::list(&source_path)
            .await
            .unwrap_or_default()
            .is_empty();
        if same_pool && format == "qcow2" && !has_snapshots {
            files::linked_clone(&source_path, path, size).await?;
        } else {
            files::full_copy(&source_path, path, format, size).await?;
        }
        tracing::info!(claim = %claim.display_name(), source = %source_path.display(), linked = same_pool, "cloned");
        Ok(())
    }

    /// Records the PersistentVolume of a provisioned file and binds the claim to it.
    async fn record_volume(
        &self,
        claim: &Object,
        spec: &ClaimSpec,
        class: &StorageClass,
        path: &Path,
        capacity: u64,
    ) -> Result<(), ProvisionError> {
        let name = format!("pvc-{}", claim.metadata.uid);
        let mut pv_spec = json!({
            "capacity": {"storage": capacity.to_string()},
            "accessModes": spec.access_modes,
            "persistentVolumeReclaimPolicy": class.reclaim_policy(),
            "storageClassName": spec.storage_class_name,
            "volumeMode": spec.volume_mode(),
            "claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                         "namespace": claim.metadata.namespace, "name": claim.metadata.name,
                         "uid": claim.metadata.uid},
            "local": {"path": path.to_string_lossy()},
        });
        if !class.shared() {
            pv_spec["nodeAffinity"] = node_affinity_for(&self.config.node_name);
        }
        let pv = json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "finalizers": [VOLUME_CLEANUP_FINALIZER],
                "annotations": {PROVISIONED_BY_ANNOTATION: class.provisioner,
                                PROVISIONED_ON_ANNOTATION: self.config.node_name}},
            "spec": pv_spec,
        });
        let fatal =
            |what: &str, e: vmo_client::ClientError| ProvisionError::Retry(format!("{what}: {e}"));
        match self.client.create(&self.kinds.volume, "", &pv).await {
            Ok(_) => {}
            Err(e) if e.is_conflict() => {}
            Err(e) => return Err(fatal("recording the volume", e)),
        }
        let _ = self
            .client
            .merge_patch(
                &self.kinds.volume,
                "",
                &name,
                Some("status"),
                &json!({"status": {"phase": "Bound"}}),
                "vmo-agent",
            )
            .await;
        let patch = json!({"metadata": {"annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
                           "spec": {"volumeName": name}});
        self.client
            .merge_patch(
                &self.kinds.claim,
                &claim.metadata.namespace,
                &claim.metadata.name,
                None,
                &patch,
                "vmo-agent",
            )
            .await
            .map_err(|e| fatal("binding the claim", e))?;
        let status = json!({"status": {"phase": "Bound", "accessModes": spec.access_modes,
                                       "capacity": {"storage": capacity.to_string()}}});
        self.client
            .merge_patch(
                &self.kinds.claim,
                &claim.metadata.namespace,
                &claim.metadata.name,
                Some("status"),
                &status,
                "vmo-agent",
            )
            .await
            .map_err(|e| fatal("binding the claim", e))?;
        Ok(())
    }

    /// Removes the file of a deleted volume, then lets the volume go.
    async fn clean_up(self: Arc<Self>, pv: Object) {
        let spec = PersistentVolume::of(&pv);
        if let Some(path) = spec.path() {
            if let Err(e) = files::remove(Path::new(path)).await {
                tracing::warn!(volume = %pv.metadata.name, error = %e, "could not remove a volume's file");
                return;
            }
            tracing::info!(volume = %pv.metadata.name, path, "removed the volume's file");
        }
        if let Err(e) = self
            .client
            .remove_finalizer(&self.kinds.volume, &pv, VOLUME_CLEANUP_FINALIZER)
            .await
        {
            tracing::debug!(volume = %pv.metadata.name, error = %e, "could not release a volume");
        }
    }

    /// Grows a volume to its claim's new size: online through the VM's QEMU when one runs here,
    /// else the file itself.
    async fn grow(self: Arc<Self>, pv: Object, (claim, size): (Object, u64)) {
        let spec = PersistentVolume::of(&pv);
        let Some(path) = spec.path().map(PathBuf::from) else {
            return;
        };
        let class_name = ClaimSpec::of(&claim).storage_class_name.unwrap_or_default();
        let allowed = self
            .client
            .get(&self.kinds.class, "", &class_name)
            .await
            .is_ok_and(|c| StorageClass::of(&c).allow_volume_expansion);
        if !allowed {
            let message = format!("storageclass {class_name:?} does not allow volume expansion");
            self.events
                .record(&claim, EventType::Warning, "VolumeResizeFailed", &message)
                .await;
            return;
        }
        let result = match super::online::grow_if_running(&self.vms, &path, size).await {
            Some(r) => r,
            None => files::grow_file(&path, size)
                .await
                .map_err(|e| e.to_string()),
        };
        if let Err(why) = result {
            self.events
                .record(&claim, EventType::Warning, "VolumeResizeFailed", &why)
                .await;
            tokio::time::sleep(Duration::from_secs(10)).await;
            return;
        }
        let capacity = size.to_string();
        let _ = self
            .client
            .merge_patch(
                &self.kinds.volume,
                "",
                &pv.metadata.name,
                None,
                &json!({"spec": {"capacity": {"storage": capacity}}}),
                "vmo-agent",
            )
            .await;
        let _ = self
            .client
            .merge_patch(
                &self.kinds.claim,
                &claim.metadata.namespace,
                &claim.metadata.name,
                Some("status"),
                &json!({"status": {"capacity": {"storage": capacity}}}),
                "vmo-agent",
            )
            .await;
        let message = format!("Volume grown to {size} bytes");
        self.events
            .record(
                &claim,
                EventType::Normal,
                "VolumeResizeSuccessful",
                &message,
            )
            .await;
    }
}
