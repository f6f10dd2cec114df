//! The agent's VM runner: every VirtualMachineInstance bound to this node gets one owner task, which
//! alone talks QMP to its QEMU.
//!
//! ```text
//!            launch/adopt ok               guest powers off
//!  Scheduled ───────────────► Running ───────────────────────► Succeeded
//!      │                        │  │ QEMU dies / is killed
//!      │ spec cannot run        │  └───────────────────────────► Failed
//!      └──────────────► Failed  │ instance deleted: ACPI power-down, wait the grace period, kill
//!                               └───────────────────────────► (finalizer removed, object gone)
//! ```
//!
//! The agent holds a finalizer on each instance it runs, so a deleted instance stays until its QEMU
//! is gone. QEMU runs in its own process group: an agent restart (even kill -9) leaves it running,
//! and the new agent adopts it from its run directory.

use crate::console::SerialHub;
use crate::net::nics::AttachError;
use crate::vm::disks::{self, Identity, Secrets};
use crate::vm::plan::{memory_mib, Accel, Firmware, LaunchPlan, PlanError};
use crate::vm::process::{self, QemuProcess};
use crate::AgentConfig;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};
use vmo_api::kinds::kubevirt::VmiSpec;
use vmo_api::kinds::migration::MigrationState;
use vmo_api::{KindInfo, Object, Registry};
use vmo_client::events::{EventType, Recorder};
use vmo_client::{informer, Client, ClientError};

/// The finalizer the agent keeps on instances it runs.
pub const AGENT_FINALIZER: &str = "vmo.io/agent";
/// KubeVirt's default grace period for a guest to shut down.
const DEFAULT_GRACE: Duration = Duration::from_secs(180);

pub(crate) enum Command {
    Stop {
        grace: Duration,
    },
    /// The desired paused state (from the `vmo.io/paused` annotation); repeated, idempotent.
    Pause(bool),
    /// The instance as last seen, for NICs to plug in or out; repeated, idempotent.
    Nics(Box<Object>),
    /// QEMU's `query-blockstats`, for metrics.
    BlockStats(oneshot::Sender<Value>),
    /// The instance's migration state as last seen; repeated, idempotent.
    Migration(Box<MigrationState>),
    /// Grow the disk whose image is this file to this many bytes (`block_resize`); the guest sees
    /// the new size at once. Answers None when no disk of this instance is that file.
    GrowDisk {
        path: PathBuf,
        size: u64,
        reply: oneshot::Sender<Option<Result<(), String>>>,
    },
    /// Take these internal snapshots `(file, name)` of this instance's disks in one transaction,
    /// the guest stopped only for it. Answers None when a file is not a disk of this instance.
    SnapshotDisks {
        disks: Vec<(PathBuf, String)>,
        reply: oneshot::Sender<Option<Result<crate::storage::snapshot::Taken, String>>>,
    },
    /// Delete the internal snapshot `name` of the disk whose image is `path`; None when no disk of
    /// this instance is that file.
    DeleteDiskSnapshot {
        path: PathBuf,
        name: String,
        reply: oneshot::Sender<Option<Result<(), String>>>,
    },
}

/// A running instance as the endpoint and the metrics see it.
#[derive(Debug, Clone)]
pub struct VmHandle {
    pub namespace: String,
    pub name: String,
    pub pid: u32,
    pub run_dir: PathBuf,
    pub serial: Arc<SerialHub>,
    /// Tap-backed NICs: (interface name, tap), for the network metrics.
    pub taps: Vec<(String, String)>,
    commands: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Stop { .. } => "Stop",
            Command::Pause(_) => "Pause",
            Command::Nics(_) => "Nics",
            Command::BlockStats(_) => "BlockStats",
            Command::Migration(_) => "Migration",
            Command::GrowDisk { .. } => "GrowDisk",
            Command::SnapshotDisks { .. } => "SnapshotDisks",
            Command::DeleteDiskSnapshot { .. } => "DeleteDiskSnapshot",
        })
    }
}

impl VmHandle {
    /// The instance's block device statistics, asked of its owner task (which alone speaks QMP).
    pub async fn block_stats(&self) -> Option<Value> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::BlockStats(tx)).ok()?;
        tokio::time::timeout(Duration::from_secs(2), rx)
            .await
            .ok()?
            .ok()
    }

    /// Grows the instance's disk backed by `path` while it runs; None when it has no such disk.
    pub async fn grow_disk(&self, path: &Path, size: u64) -> Option<Result<(), String>> {
        let (reply, rx) = oneshot::channel();
        let command = Command::GrowDisk {
            path: path.to_path_buf(),
            size,
            reply,
        };
        self.commands.send(command).ok()?;
        tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .ok()?
            .ok()?
    }

    /// Takes internal snapshots of the instance's disks in one transaction; None when one of the
    /// files is not its disk.
    pub async fn snapshot_disks(
        &self,
        disks: &[(PathBuf, String)],
    ) -> Option<Result<crate::storage::snapshot::Taken, String>> {
        let (reply, rx) = oneshot::channel();
        let disks = disks.to_vec();
        self.commands
            .send(Command::SnapshotDisks { disks, reply })
            .ok()?;
        tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .ok()?
            .ok()?
    }

    /// Deletes an internal snapshot of the instance's disk `path`; None when it has no such disk.
    pub async fn delete_disk_snapshot(
        &self,
        path: &Path,
        name: &str,
    ) -> Option<Result<(), String>> {
        let (reply, rx) = oneshot::channel();
        let command = Command::DeleteDiskSnapshot {
            path: path.to_path_buf(),
            name: name.to_string(),
            reply,
        };
        self.commands.send(command).ok()?;
        tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .ok()?
            .ok()?
    }
}

/// Finds the block node that opens `path` and grows it to `size` bytes.
async fn grow_disk(qmp: &crate::qmp::Qmp, path: &Path, size: u64) -> Option<Result<(), String>> {
    let nodes = qmp.execute("query-named-block-nodes", None).await.ok()?;
    let wanted = path.to_string_lossy();
    let node = nodes
        .as_array()?
        .iter()
        .find(|n| n["file"].as_str() == Some(&wanted) && n["drv"].as_str() != Some("file"))?;
    let name = node["node-name"].as_str()?.to_string();
    let args = json!({"node-name": name, "size": size});
    Some(
        qmp.execute("block_resize", Some(args))
            .await
            .map(|_| ())
            .map_err(|e| format!("block_resize: {e}")),
    )
}

/// The instances this agent runs now, by uid.
pub type Vms = Arc<std::sync::Mutex<HashMap<String, VmHandle>>>;

fn wants_paused(vmi: &Object) -> bool {
    vmi.metadata
        .annotations
        .get("vmo.io/paused")
        .is_some_and(|v| v == "true")
}

pub(crate) struct Runner {
    pub(crate) client: Client,
    pub(crate) events: Recorder,
    pub(crate) config: AgentConfig,
    accel: Accel,
    pub(crate) vmi_kind: KindInfo,
    secret_kind: KindInfo,
    pub(crate) storage: crate::storage::Kinds,
    pub(crate) network: Arc<crate::net::Network>,
    pub(crate) vms: Vms,
    /// The address other nodes' QEMUs reach this node's on, for incoming migrations.
    pub(crate) migration_host: String,
}

/// An owner task's command channel and the task.
type Owner = (mpsc::UnboundedSender<Command>, tokio::task::JoinHandle<()>);

/// Runs every instance bound to this node until the task is dropped.
pub async fn run(
    client: Client,
    config: AgentConfig,
    accel: Accel,
    vms: Vms,
    migration_host: String,
    network: Arc<crate::net::Network>,
) {
    let registry = Registry::builtin();
    let runner = Arc::new(Runner {
        client: client.clone(),
        events: Recorder::new(
            client.clone(),
            vmo_client::events::AGENT_COMPONENT,
            &config.node_name,
        ),
        vmi_kind: *registry.resolve("vmi").expect("vmis are registered"),
        secret_kind: *registry.resolve("secrets").expect("secrets are registered"),
        storage: crate::storage::Kinds::new(),
        network,
        config,
        accel,
        vms,
        migration_host,
    });
    let changed = Arc::new(Notify::new());
    let vmis = informer::start(
        client,
        runner.vmi_kind,
        changed.clone(),
        informer::every_change,
    );
    let mut owners: HashMap<String, Owner> = HashMap::new();
    let mut last_sweep = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        if !vmis.synced() {
            continue;
        }
        owners.retain(|_, (_, task)| !task.is_finished());
        let me = runner.config.node_name.as_str();
        // Only this node's instances and those migrating to or from it are copied out of the cache.
        for vmi in vmis.select(|v| concerns(v, me)) {
            let uid = vmi.metadata.uid.clone();
            let state = MigrationState::of(&vmi);
            if let (Some((commands, _)), Some(s)) = (owners.get(&uid), &state) {
                let _ = commands.send(Command::Migration(Box::new(s.clone())));
            }
            if vmi.status()["nodeName"].as_str() != Some(me) {
                let incoming = state
                    .as_ref()
                    .is_some_and(|s| s.active() && s.target_node == me);
                if incoming
                    && vmi.metadata.deletion_timestamp.is_none()
                    && !owners.contains_key(&uid)
                {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let runner = runner.clone();
                    let commands = tx.clone();
                    let task =
                        tokio::spawn(async move { runner.own_incoming(vmi, commands, rx).await });
                    owners.insert(uid, (tx, task));
                }
                continue;
            }
            let deleting = vmi.metadata.deletion_timestamp.is_some();
            let has_finalizer = vmi.metadata.finalizers.iter().any(|f| f == AGENT_FINALIZER);
            match owners.get(&uid) {
                Some((commands, _)) if deleting => {
                    let _ = commands.send(Command::Stop { grace: grace(&vmi) });
                }
                Some((commands, _)) => {
                    let _ = commands.send(Command::Pause(wants_paused(&vmi)));
                    let _ = commands.send(Command::Nics(Box::new(vmi)));
                }
                None if deleting => {
                    // A QEMU may still run for it (say, after an agent restart): the owner task
                    // adopts and stops it, and releases the instance only then.
                    if has_finalizer {
                        let (tx, rx) = mpsc::unbounded_channel();
                        let _ = tx.send(Command::Stop { grace: grace(&vmi) });
                        let runner = runner.clone();
                        let commands = tx.clone();
                        let task = tokio::spawn(async move { runner.own(vmi, commands, rx).await });
                        owners.insert(uid, (tx, task));
                    }
                }
                None => {
                    let phase = vmi.status()["phase"].as_str().unwrap_or("");
                    if matches!(phase, "Succeeded" | "Failed") {
                        continue;
                    }
                    let (tx, rx) = mpsc::unbounded_channel();
                    let runner = runner.clone();
                    let commands = tx.clone();
                    let task = tokio::spawn(async move { runner.own(vmi, commands, rx).await });
                    owners.insert(uid, (tx, task));
                }
            }
        }
        if last_sweep.elapsed() > SWEEP_INTERVAL {
            last_sweep = tokio::time::Instant::now();
            runner
                .sweep(&vmis.select(|v| concerns(v, me)), &owners)
                .await;
        }
    }
}

/// True when `vmi` runs on `node` or migrates to or from it.
fn concerns(vmi: &Object, node: &str) -> bool {
    vmi.status()["nodeName"].as_str() == Some(node)
        || vmi.status()["migrationState"]["targetNode"].as_str() == Some(node)
}

/// How often run directories nobody owns are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

fn grace(vmi: &Object) -> Duration {
    vmi.spec()["terminationGracePeriodSeconds"]
        .as_u64()
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_GRACE)
}

impl Runner {
    pub(crate) fn run_dir(&self, vmi: &Object) -> PathBuf {
        self.config.data_dir.join("vms").join(&vmi.metadata.uid)
    }

    pub(crate) async fn set_status(&self, vmi: &Object, status: Value) -> Result<(), ClientError> {
        let patch = json!({"status": status});
        self.client
            .merge_patch(
                &self.vmi_kind,
                &vmi.metadata.namespace,
                &vmi.metadata.name,
                Some("status"),
                &patch,
                "vmo-agent",
            )
            .await
            .map(|_| ())
    }

    async fn fail(&self, vmi: &Object, reason: &str, message: &str) {
        tracing::warn!(vmi = %vmi.display_name(), reason, message, "instance failed");
        self.events
            .record(vmi, EventType::Warning, reason, message)
            .await;
        let status = json!({
            "phase": "Failed",
            "conditions": [{"type": "Ready", "status": "False", "reason": reason, "message": message}],
        });
        if let Err(e) = self.set_status(vmi, status).await {
            tracing::warn!(vmi = %vmi.display_name(), error = %e, "could not report the failure");
        }
    }

    async fn add_finalizer(&self, vmi: &Object) -> Result<Object, ClientError> {
        if vmi.metadata.finalizers.iter().any(|f| f == AGENT_FINALIZER) {
            return Ok(vmi.clone());
        }
        let mut finalizers = vmi.metadata.finalizers.clone();
        finalizers.push(AGENT_FINALIZER.into());
        // Conditional on the version read, so a deletion in between is not missed.
        self.set_finalizers(vmi, finalizers, Some(&vmi.metadata.resource_version))
            .await
    }

    async fn set_finalizers(
        &self,
        vmi: &Object,
        finalizers: Vec<String>,
        version: Option<&str>,
    ) -> Result<Object, ClientError> {
        let mut patch = json!({"metadata": {"finalizers": finalizers}});
        if let Some(v) = version {
            patch["metadata"]["resourceVersion"] = json!(v);
        }
        self.client
            .merge_patch(
                &self.vmi_kind,
                &vmi.metadata.namespace,
                &vmi.metadata.name,
                None,
                &patch,
                "vmo-agent",
            )
            .await
    }

    async fn finish_deletion(&self, vmi: &Object) {
        // Disk images can be large: removing them must not hold up an async worker.
        let run_dir = self.run_dir(vmi);
        self.network.detach(&vmi.metadata.uid, &run_dir).await;
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(run_dir)).await;
        let finalizers: Vec<String> = vmi
            .metadata
            .finalizers
            .iter()
            .filter(|f| *f != AGENT_FINALIZER)
            .cloned()
            .collect();
        if let Err(e) = self.set_finalizers(vmi, finalizers, None).await {
            if !e.is_not_found() {
                tracing::warn!(vmi = %vmi.display_name(), error = %e, "could not release the instance");
            }
        }
    }

    /// The files of the instance's claimed volumes, or why it must wait for them.
    async fn claimed_disks(
        &self,
        vmi: &Object,
        spec: &VmiSpec,
        incoming: bool,
    ) -> Result<std::collections::BTreeMap<String, PathBuf>, crate::storage::claims::NotReady> {
        crate::storage::claims::resolve_all(
            &self.client,
            &self.storage,
            &self.config.node_name,
            &vmi.metadata.namespace,
            spec,
            incoming.then_some(self.config.local_pool.as_path()),
        )
        .await
    }

    /// Shows why the instance waits for its volumes (once per distinct reason), as KubeVirt's
    /// Ready condition does; the VM's printableStatus follows the reason.
    async fn note_waiting(&self, vmi: &Object, reason: &str, message: &str) {
        let shown = vmi.status()["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["message"] == message)
        });
        if shown {
            return;
        }
        let mut conditions: Vec<Value> = vmi.status()["conditions"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .filter(|c| c["type"] != "Ready")
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        conditions.push(json!({"type": "Ready", "status": "False", "reason": reason,
                               "message": message}));
        let _ = self
            .set_status(vmi, json!({"conditions": conditions}))
            .await;
        self.events
            .record(vmi, EventType::Normal, reason, message)
            .await;
    }

    async fn secrets_for(&self, vmi: &Object, spec: &VmiSpec) -> Result<Secrets, PlanError> {
        let mut secrets = Secrets::new();
        for (i, v) in spec.volumes.iter().enumerate() {
            let Some(ci) = &v.cloud_init_no_cloud else {
                continue;
            };
            for (field, r) in [
                ("secretRef", &ci.secret_ref),
                ("networkDataSecretRef", &ci.network_data_secret_ref),
            ] {
                let Some(r) = r else { continue };
                let secret = self
                    .client
                    .get(&self.secret_kind, &vmi.metadata.namespace, &r.name)
                    .await
                    .map_err(|e| PlanError {
                        field: format!("spec.volumes[{i}].cloudInitNoCloud.{field}"),
                        why: format!("secret {:?}: {e}", r.name),
                    })?;
                secrets.insert(r.name.clone(), vmo_api::kinds::core::secret_data(&secret));
            }
        }
        Ok(secrets)
    }

    pub(crate) async fn plan(
        &self,
        vmi: &Object,
        run_dir: &Path,
        incoming: bool,
        nics: Option<Vec<crate::net::nics::NicPlan>>,
    ) -> Result<LaunchPlan, PlanError> {
        let spec: VmiSpec =
            vmo_api::kinds::kubevirt::decode_at(vmi.spec(), "spec").map_err(|e| PlanError {
                field: e.path,
                why: e.detail,
            })?;
        let secrets = self.secrets_for(vmi, &spec).await?;
        let claims = self
            .claimed_disks(vmi, &spec, incoming)
            .await
            .map_err(|e| PlanError {
                field: "spec.volumes".into(),
                why: e.message,
            })?;
        let hostname = spec
            .hostname
            .clone()
            .unwrap_or_else(|| vmi.metadata.name.clone());
        let identity = Identity {
            instance_id: vmi.metadata.uid.clone(),
            hostname,
        };
        let disks = {
            let (spec, run_dir) = (spec.clone(), run_dir.to_path_buf());
            tokio::task::spawn_blocking(move || {
                disks::prepare(&spec, &run_dir, &identity, &secrets, &claims)
            })
            .await
            .map_err(|e| PlanError {
                field: "spec.volumes".into(),
                why: e.to_string(),
            })??
        };
        let cpu = spec.domain.cpu.clone().unwrap_or_default();
        let firmware = match spec
            .domain
            .firmware
            .as_ref()
            .and_then(|f| f.bootloader.as_ref())
        {
            Some(b) if b.efi.is_some() => {
                let code = PathBuf::from("/usr/share/OVMF/OVMF_CODE_4M.fd");
                let template = Path::new("/usr/share/OVMF/OVMF_VARS_4M.fd");
                let vars = run_dir.join("efivars.fd");
                if !vars.exists() {
                    std::fs::copy(template, &vars).map_err(|e| PlanError {
                        field: "spec.domain.firmware.bootloader.efi".into(),
                        why: format!(
                            "UEFI firmware is not installed on this node ({}): {e}",
                            template.display()
                        ),
                    })?;
                }
                Firmware::Uefi { code, vars }
            }
            _ => Firmware::Bios,
        };
        let kernel = spec
            .domain
            .firmware
            .as_ref()
            .and_then(|f| f.kernel_boot.as_ref())
            .and_then(|k| {
                let c = k.container.as_ref()?;
                Some((
                    PathBuf::from(c.kernel_path.clone()?),
                    c.initrd_path.clone().map(PathBuf::from),
                    k.kernel_args.clone().unwrap_or_default(),
                ))
            });
        let nics = match nics {
            Some(n) => n,
            None => self
                .network
                .attach(&self.client, vmi, &spec, run_dir)
                .await
                .map_err(|e| match e {
                    AttachError::Wait { message, .. } => PlanError {
                        field: "spec.networks".into(),
                        why: message,
                    },
                    AttachError::Refused { field, why } => PlanError { field, why },
                })?,
        };
        let (qmp_socket, serial_socket, vnc_socket, pidfile, _) = process::run_files(run_dir);
        Ok(LaunchPlan {
            name: format!("{}_{}", vmi.metadata.namespace, vmi.metadata.name),
            uuid: vmi.metadata.uid.clone(),
            smbios_serial: spec.domain.firmware.as_ref().and_then(|f| f.serial.clone()),
            accel: self.accel,
            sockets: cpu.sockets.unwrap_or(1),
            cores: cpu.cores.unwrap_or(1),
            threads: cpu.threads.unwrap_or(1),
            memory_mib: memory_mib(&spec)?,
            firmware,
            kernel,
            disks,
            nics,
            qmp_socket,
            serial_socket,
            vnc_socket,
            pidfile,
            incoming,
        })
    }

    /// The owner task of one instance bound to this node.
    async fn own(
        self: Arc<Self>,
        vmi: Object,
        sender: mpsc::UnboundedSender<Command>,
        commands: mpsc::UnboundedReceiver<Command>,
    ) {
        let name = vmi.display_name();
        let taken = std::time::Instant::now();
        let vmi = match self.add_finalizer(&vmi).await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(vmi = %name, error = %e, "could not take the instance yet");
                return;
            }
        };
        if let Some(qemu) = self.acquire(&vmi, taken).await {
            self.supervise(vmi, qemu, sender, commands).await;
        }
    }

    /// The instance's QEMU: adopted if one runs, else launched; None when there is nothing to run
    /// (reported, or to be retried on the next pass). `began` is when this agent took the
    /// instance on, for the start timings it logs.
    async fn acquire(&self, vmi: &Object, began: std::time::Instant) -> Option<QemuProcess> {
        let name = vmi.display_name();
        let vmi = vmi.clone();
        let run_dir = self.run_dir(&vmi);
        let qemu: QemuProcess = match process::adopt(&run_dir, &vmi.metadata.uid).await {
            Ok(q) => {
                tracing::info!(vmi = %name, pid = q.pid, "adopted a running QEMU");
                let message = format!(
                    "Adopted the running QEMU (pid {}) after an agent restart",
                    q.pid
                );
                self.events
                    .record(&vmi, EventType::Normal, "Adopted", &message)
                    .await;
                q
            }
            Err(process::ProcessError::NotRunning(_))
                if vmi.metadata.deletion_timestamp.is_some() =>
            {
                self.finish_deletion(&vmi).await;
                return None;
            }
            Err(e @ process::ProcessError::Qmp(_)) => {
                // QEMU may be alive but slow to answer: never start a second one; retry soon.
                tracing::warn!(vmi = %name, error = %e, "cannot reach this instance's QEMU yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                return None;
            }
            Err(_) if vmi.status()["phase"] == "Running" => {
                // The instance may have ended or moved meanwhile (the cache lags): never
                // overwrite that.
                let fresh = self
                    .client
                    .get(&self.vmi_kind, &vmi.metadata.namespace, &vmi.metadata.name)
                    .await;
                if fresh.is_ok_and(|f| {
                    matches!(f.status()["phase"].as_str(), Some("Succeeded" | "Failed"))
                        || f.status()["nodeName"].as_str() != Some(&self.config.node_name)
                }) {
                    return None;
                }
                self.fail(&vmi, "QemuGone", "QEMU is no longer running on this node")
                    .await;
                return None;
            }
            Err(_) => {
                if let Err(e) = std::fs::create_dir_all(&run_dir) {
                    self.fail(&vmi, "RunDirectory", &e.to_string()).await;
                    return None;
                }
                let mut nics = None;
                if let Ok(spec) = vmo_api::kinds::kubevirt::decode_at::<VmiSpec>(vmi.spec(), "spec")
                {
                    if let Err(why) = self.claimed_disks(&vmi, &spec, false).await {
                        self.note_waiting(&vmi, why.reason, &why.message).await;
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        return None;
                    }
                    match self
                        .network
                        .attach(&self.client, &vmi, &spec, &run_dir)
                        .await
                    {
                        Ok(n) => nics = Some(n),
                        Err(AttachError::Wait { reason, message }) => {
                            self.note_waiting(&vmi, &reason, &message).await;
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            return None;
                        }
                        Err(AttachError::Refused { field, why }) => {
                            self.fail(&vmi, "InvalidNetwork", &format!("{field}: {why}"))
                                .await;
                            return None;
                        }
                    }
                }
                let plan = match self.plan(&vmi, &run_dir, false, nics).await {
                    Ok(p) => p,
                    Err(e) => {
                        self.fail(&vmi, "InvalidSpec", &e.to_string()).await;
                        return None;
                    }
                };
                let prepared = began.elapsed();
                match process::launch(&self.config.qemu_binary, &plan).await {
                    Ok(q) => {
                        tracing::info!(
                            vmi = %name,
                            pid = q.pid,
                            prepare_ms = prepared.as_millis() as u64,
                            qemu_ms = (began.elapsed() - prepared).as_millis() as u64,
                            "QEMU started"
                        );
                        let message = format!(
                            "VirtualMachineInstance started on {} (QEMU pid {})",
                            self.config.node_name, q.pid
                        );
                        self.events
                            .record(&vmi, EventType::Normal, "Started", &message)
                            .await;
                        q
                    }
                    Err(e) => {
                        self.fail(&vmi, "LaunchFailed", &e.to_string()).await;
                        return None;
                    }
                }
            }
        };
        Some(qemu)
    }

    /// Runs the instance's QEMU until it ends: reports it Running, applies pause and stop
    /// requests, sends it away when a migration asks, and reports how it ended.
    pub(crate) async fn supervise(
        &self,
        vmi: Object,
        mut qemu: QemuProcess,
        sender: mpsc::UnboundedSender<Command>,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        let name = vmi.display_name();
        let run_dir = self.run_dir(&vmi);
        let (serial, relay) = SerialHub::start(
            run_dir.join("serial.sock"),
            crate::console::log_path(&run_dir),
        );
        let handle = VmHandle {
            namespace: vmi.metadata.namespace.clone(),
            name: vmi.metadata.name.clone(),
            pid: qemu.pid,
            run_dir: run_dir.clone(),
            serial,
            taps: self.network.taps_of(&vmi),
            commands: sender,
        };
        self.vms
            .lock()
            .expect("vms lock")
            .insert(vmi.metadata.uid.clone(), handle);
        let _registered = Registered {
            vms: self.vms.clone(),
            uid: vmi.metadata.uid.clone(),
            relay,
        };
        let paused = matches!(qemu.qmp.status().await.as_deref(), Ok("paused"));
        let interfaces: Vec<Value> =
            vmo_api::kinds::kubevirt::decode_at::<VmiSpec>(vmi.spec(), "spec")
                .map(|spec| self.network.interfaces_status(&vmi, &spec, &run_dir))
                .unwrap_or_default();
        let running = json!({
            "phase": "Running",
            "nodeName": self.config.node_name,
            "interfaces": interfaces,
            "conditions": conditions(true, paused),
        });
        if let Err(e) = self.set_status(&vmi, running).await {
            tracing::warn!(vmi = %name, error = %e, "could not report Running");
        }
        tracing::info!(vmi = %name, pid = qemu.pid, "instance running");
        let mut guest_shutdown = false;
        // The paused state last asked for; the guest starts running.
        let mut applied_pause = paused;
        let mut stop_deadline: Option<tokio::time::Instant> = None;
        // While stopping, the power button is pressed again now and then: a guest still booting
        // ignores the first press.
        let mut press_again = tokio::time::interval(Duration::from_secs(5));
        press_again.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // An outgoing live migration, polled until QEMU says how it ended.
        let mut outgoing: Option<crate::migration::Outgoing> = None;
        let mut migrated_away = false;
        // STOP and RESUME events still to come from a snapshot's stop and cont.
        let mut snapshot_pause_events = 0u8;
        // The NICs in the guest, and the instance as last seen (for hot-plugging).
        let mut plugged = crate::vm::nic_hotplug::Plugged::of(&vmi);
        let mut latest = vmi.clone();
        let mut poll = tokio::time::interval(crate::migration::POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wait = async {
                match stop_deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = qemu.events.recv() => match event {
                    Some(e) if e.name == "SHUTDOWN" => guest_shutdown = e.data["guest"].as_bool().unwrap_or(false) || stop_deadline.is_some(),
                    // The stop and cont around a snapshot are not a user's pause.
                    Some(e) if (e.name == "STOP" || e.name == "RESUME") && snapshot_pause_events > 0 => {
                        snapshot_pause_events -= 1;
                    }
                    Some(e) if e.name == "STOP" || e.name == "RESUME" => {
                        let paused = e.name == "STOP";
                        let _ = self.set_status(&vmi, json!({"conditions": conditions(true, paused)})).await;
                    }
                    Some(e) if e.name == "DEVICE_DELETED" => {
                        let device = e.data["device"].as_str().unwrap_or("");
                        self.nic_deleted(&latest, device, &qemu.qmp, &mut plugged).await;
                    }
                    Some(_) => {}
                    None => break, // QEMU exited
                },
                command = commands.recv() => match command {
                    Some(Command::Pause(paused)) if stop_deadline.is_none() && paused != applied_pause => {
                        applied_pause = paused;
                        let state = qemu.qmp.status().await.unwrap_or_default();
                        let command = match (paused, state.as_str()) {
                            (true, "running") => Some("stop"),
                            (false, "paused") => Some("cont"),
                            _ => None,
                        };
                        if let Some(command) = command {
                            if let Err(e) = qemu.qmp.execute(command, None).await {
                                tracing::warn!(vmi = %name, error = %e, "could not {command} the guest");
                            } else {
                                let (reason, message) = if paused { ("Paused", "The guest was paused") } else { ("Unpaused", "The guest was unpaused") };
                                self.events.record(&vmi, EventType::Normal, reason, message).await;
                            }
                        }
                    }
                    Some(Command::Nics(fresh)) if stop_deadline.is_none() && outgoing.is_none() && !migrated_away => {
                        latest = *fresh;
                        self.sync_nics(&latest, &qemu.qmp, &mut plugged).await;
                    }
                    Some(Command::Migration(state)) if stop_deadline.is_none() && !migrated_away => {
                        self.on_migration(&vmi, &qemu, &mut outgoing, *state).await;
                    }
                    Some(Command::BlockStats(reply)) => {
                        let stats = qemu.qmp.execute("query-blockstats", None).await.unwrap_or(Value::Null);
                        let _ = reply.send(stats);
                    }
                    Some(Command::GrowDisk { path, size, reply }) => {
                        let _ = reply.send(grow_disk(&qemu.qmp, &path, size).await);
                    }
                    Some(Command::SnapshotDisks { disks, reply }) => {
                        let taken = crate::storage::snapshot::take_in_qemu(&qemu.qmp, &disks).await;
                        if matches!(&taken, Some(Ok(t)) if !t.paused.is_zero()) {
                            snapshot_pause_events = 2;
                        }
                        let _ = reply.send(taken);
                    }
                    Some(Command::DeleteDiskSnapshot { path, name, reply }) => {
                        let _ = reply.send(crate::storage::snapshot::delete_in_qemu(&qemu.qmp, &path, &name).await);
                    }
                    Some(Command::Stop { grace }) if stop_deadline.is_some() => {
                        // A later stop may shorten the grace period (vmo stop --force).
                        let sooner = tokio::time::Instant::now() + grace;
                        if stop_deadline.is_some_and(|d| sooner < d) {
                            stop_deadline = Some(sooner);
                        }
                    }
                    Some(Command::Stop { grace }) => {
                        tracing::info!(vmi = %name, ?grace, "stopping: ACPI power-down");
                        if outgoing.is_some() {
                            let _ = qemu.qmp.execute("migrate_cancel", None).await;
                        }
                        if matches!(qemu.qmp.status().await.as_deref(), Ok("paused")) {
                            let _ = qemu.qmp.execute("cont", None).await;
                        }
                        press_again.reset();
                        let message = format!("Signaled graceful shutdown (ACPI power button); grace period {}s", grace.as_secs());
                        self.events.record(&vmi, EventType::Normal, "ShuttingDown", &message).await;
                        let _ = qemu.qmp.execute("system_powerdown", None).await;
                        stop_deadline = Some(tokio::time::Instant::now() + grace);
                    }
                    _ => {}
                },
                _ = poll.tick(), if outgoing.is_some() => {
                    migrated_away = self.poll_outgoing(&vmi, &qemu, &mut outgoing).await;
                }
                _ = press_again.tick(), if stop_deadline.is_some() => {
                    let _ = qemu.qmp.execute("system_powerdown", None).await;
                }
                _ = wait => {
                    tracing::warn!(vmi = %name, "the guest did not shut down within its grace period; killing QEMU");
                    self.events.record(&vmi, EventType::Warning, "GracePeriodExpired", "The guest did not shut down within its grace period; QEMU was killed").await;
                    let pid = qemu.pid;
                    let _ = tokio::task::spawn_blocking(move || process::kill(pid)).await;
                    stop_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(3600));
                }
            }
        }
        if migrated_away {
            // The guest runs on the target now, which holds the instance (and its finalizer).
            self.network.detach(&vmi.metadata.uid, &run_dir).await;
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(run_dir)).await;
            tracing::info!(vmi = %name, "instance migrated away");
            return;
        }
        let stopping = stop_deadline.is_some();
        if stopping {
            self.events
                .record(
                    &vmi,
                    EventType::Normal,
                    "Stopped",
                    "The VirtualMachineInstance was shut down",
                )
                .await;
            if let Ok(fresh) = self
                .client
                .get(&self.vmi_kind, &vmi.metadata.namespace, &vmi.metadata.name)
                .await
            {
                self.finish_deletion(&fresh).await;
            }
        } else if guest_shutdown {
            self.events
                .record(&vmi, EventType::Normal, "Stopped", "The guest shut down")
                .await;
            let _ = self
                .set_status(
                    &vmi,
                    json!({"phase": "Succeeded", "conditions": conditions(false, false)}),
                )
                .await;
        } else {
            self.fail(&vmi, "QemuExited", "QEMU exited unexpectedly")
                .await;
        }
        tracing::info!(vmi = %name, "instance ended");
    }
}

/// Removes an instance from [`Vms`] and stops its console relay when its owner task ends.
struct Registered {
    vms: Vms,
    uid: String,
    relay: tokio::task::JoinHandle<()>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.relay.abort();
        if let Ok(mut vms) = self.vms.lock() {
            vms.remove(&self.uid);
        }
    }
}

fn conditions(ready: bool, paused: bool) -> Value {
    let mut list =
        vec![json!({"type": "Ready", "status": if ready && !paused { "True" } else { "False" }})];
    if paused {
        list.push(json!({"type": "Paused", "status": "True", "reason": "PausedByUser"}));
    }
    Value::Array(list)
}
