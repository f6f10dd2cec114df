//! The agent's side of live migration, on both ends, driven by the instance's
//! `status.migrationState` (see `vmo_api::kinds::migration` for who writes what).
//!
//! Target: an owner task starts QEMU with `-incoming defer` from the same spec (so the device model
//! is identical), listens on a port the kernel picks, and reports address and port. When the guest
//! resumes here, the task becomes the instance's ordinary owner. If the migration fails or is
//! abandoned, it kills its QEMU and removes its run directory, so nothing is left behind.
//!
//! Source: the instance's owner task starts sending once the target is ready, polls QEMU, enforces
//! the cluster's timeouts, and on success hands the instance over (`status.nodeName`) and quits its
//! QEMU; on failure QEMU keeps the guest running here and the failure is reported.

use crate::runner::{Command, Runner};
use crate::storage::claims::LocalClaim;
use crate::vm::migrate::{self, Progress, Verdict, Watchdog};
use crate::vm::process::{self, QemuProcess};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use vmo_api::kinds::kubevirt::VmiSpec;
use vmo_api::kinds::migration::MigrationState;
use vmo_api::meta::now_rfc3339;
use vmo_api::Object;
use vmo_client::events::EventType;

/// How often an outgoing migration's progress is read.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// An outgoing migration in progress.
#[derive(Debug)]
pub struct Outgoing {
    uid: String,
    target: String,
    watchdog: Watchdog,
    /// Why vmo cancelled it (a timeout or a deleted migration), reported instead of QEMU's
    /// "cancelled".
    cancel_reason: Option<String>,
    aborted_on_request: bool,
    /// Node-local disks being copied to the target first (drive ids).
    mirrors: Vec<String>,
    /// Claims in this node's local pool that move with the guest, and their files on the target.
    volumes: Vec<(LocalClaim, PathBuf)>,
    /// The memory migration has started (after the disk copies were in sync).
    migrating: bool,
    /// The switch-over was let go (`migrate-continue`): QEMU may still say `pre-switchover` for a
    /// while, longer when its threads wait behind other work, and must not be answered twice.
    switchover_released: bool,
    disk_bytes: u64,
    /// Where the target listens for memory, and the settings to send with.
    address: (String, u16),
    config: vmo_api::kinds::migration::MigrationConfiguration,
}

impl Runner {
    /// Merges `fields` into the instance's `status.migrationState` (and `extra` into `status`).
    async fn report_migration(&self, vmi: &Object, fields: Value, extra: Value) {
        let mut status = json!({ "migrationState": fields });
        if let (Some(s), Value::Object(extra)) = (status.as_object_mut(), extra) {
            s.extend(extra);
        }
        let patch = json!({ "status": status });
        if let Err(e) = self
            .client
            .merge_patch(
                &self.vmi_kind,
                &vmi.metadata.namespace,
                &vmi.metadata.name,
                Some("status"),
                &patch,
                "vmo-agent",
            )
            .await
        {
            tracing::warn!(vmi = %vmi.display_name(), error = %e, "could not report the migration");
        }
    }

    /// A moving claim that has VolumeSnapshots (asked of the API: a snapshot just taken may not
    /// be in the file's header on disk yet), with how many.
    async fn snapshotted_claim(
        &self,
        vmi: &Object,
        claims: &[LocalClaim],
    ) -> Option<(String, usize)> {
        if claims.is_empty() {
            return None;
        }
        let kind = *vmo_api::Registry::builtin().resolve("volumesnapshots")?;
        let list = self
            .client
            .list(&kind, Some(&vmi.metadata.namespace), "")
            .await
            .ok()?;
        claims.iter().find_map(|c| {
            let count = list
                .items
                .iter()
                .filter(|s| s.spec()["source"]["persistentVolumeClaimName"] == c.claim.as_str())
                .count();
            (count > 0).then(|| (c.claim.clone(), count))
        })
    }

    /// What a migration of `vmi` copies: its claims in a node's local pool, and the QEMU drive ids
    /// of every node-local writable disk (those claims', empty disks', overlays').
    async fn moving_disks(
        &self,
        vmi: &Object,
        spec: Option<&VmiSpec>,
    ) -> (Vec<LocalClaim>, Vec<String>) {
        let Some(spec) = spec else {
            return (Vec::new(), Vec::new());
        };
        let claims = crate::storage::claims::local_claims(
            &self.client,
            &self.storage,
            &vmi.metadata.namespace,
            spec,
        )
        .await;
        let names: Vec<String> = claims.iter().map(|c| c.volume.clone()).collect();
        let drives = migrate::local_disks(spec, &names);
        (claims, drives)
    }

    /// Source side: acts on the latest migration state of an instance this task runs.
    pub(crate) async fn on_migration(
        &self,
        vmi: &Object,
        qemu: &QemuProcess,
        outgoing: &mut Option<Outgoing>,
        state: MigrationState,
    ) {
        let me = &self.config.node_name;
        if state.source_node != *me || !state.active() {
            return;
        }
        if let Some(out) = outgoing.as_mut() {
            if out.uid == state.migration_uid
                && state.abort_requested
                && out.cancel_reason.is_none()
            {
                out.aborted_on_request = true;
                self.cancel(
                    vmi,
                    qemu,
                    outgoing,
                    "cancelled: the migration object was deleted",
                )
                .await;
            }
            return;
        }
        let config = state.migration_configuration.clone().unwrap_or_default();
        let spec = serde_json::from_value::<VmiSpec>(vmi.spec().clone()).ok();
        let memory = spec
            .as_ref()
            .and_then(|s| s.guest_memory_bytes().ok())
            .unwrap_or(1 << 30);
        let (claims, mirrors) = self.moving_disks(vmi, spec.as_ref()).await;
        // Volume snapshots stay behind in the source's file: refuse rather than lose them.
        if let Some((claim, count)) = self.snapshotted_claim(vmi, &claims).await {
            let why = format!(
                "persistentvolumeclaim {claim:?} in {}'s local pool has {count} volume snapshot(s), which a live migration does not carry; delete them or keep the VM on its node",
                self.config.node_name
            );
            self.report_failure(vmi, &why, false, &why).await;
            return;
        }
        let targets = &state
            .extra
            .get("targetVolumePaths")
            .cloned()
            .unwrap_or_default();
        let volumes: Vec<(LocalClaim, PathBuf)> = claims
            .into_iter()
            .filter_map(|c| {
                let path = PathBuf::from(targets[c.claim.as_str()].as_str()?);
                Some((c, path))
            })
            .collect();
        let mut out = Outgoing {
            uid: state.migration_uid.clone(),
            target: state.target_node.clone(),
            watchdog: Watchdog::new(&config, memory, Instant::now()),
            cancel_reason: None,
            aborted_on_request: false,
            migrating: mirrors.is_empty(),
            switchover_released: false,
            mirrors,
            volumes,
            disk_bytes: 0,
            address: (
                state.target_node_address.clone().unwrap_or_default(),
                state.target_port(0).unwrap_or(0),
            ),
            config: config.clone(),
        };
        if state.start_timestamp.is_some() {
            // Started before this agent restarted: QEMU carried on; watch it again.
            out.migrating = out.mirrors.is_empty()
                || matches!(
                    migrate::progress(&qemu.qmp).await,
                    Ok(Progress::Active { remaining }) if remaining != u64::MAX
                );
            *outgoing = Some(out);
            return;
        }
        if state.abort_requested {
            self.report_migration(
                vmi,
                json!({"failed": true, "endTimestamp": now_rfc3339(), "abortStatus": "Succeeded",
                       "failureReason": "cancelled before it started: the migration object was deleted"}),
                json!({}),
            )
            .await;
            return;
        }
        let (Some(host), Some(port)) = (state.target_node_address.as_deref(), state.target_port(0))
        else {
            return; // the target is not listening yet
        };
        let started = if out.mirrors.is_empty() {
            migrate::start(&qemu.qmp, host, port, &config, false).await
        } else {
            match state.target_port(1) {
                Some(nbd) => migrate::start_mirrors(&qemu.qmp, host, nbd, &out.mirrors).await,
                None => Err(migrate::MigrateError::Mirror {
                    drive: out.mirrors.join(","),
                    why: "the target exports no disks to copy into".into(),
                }),
            }
        };
        match started {
            Ok(()) => {
                self.report_migration(vmi, json!({"startTimestamp": now_rfc3339()}), json!({}))
                    .await;
                let message = format!("Live migration to {} started", state.target_node);
                self.events
                    .record(vmi, EventType::Normal, "Migrating", &message)
                    .await;
                *outgoing = Some(out);
            }
            Err(e) => {
                migrate::abandon_mirrors(&qemu.qmp, &out.mirrors).await;
                let why = format!("could not start the migration: {e}");
                self.report_failure(vmi, &why, false, &why).await;
            }
        }
    }

    /// Source side: reads the migration's progress; true once the guest runs on the target.
    pub(crate) async fn poll_outgoing(
        &self,
        vmi: &Object,
        qemu: &QemuProcess,
        outgoing: &mut Option<Outgoing>,
    ) -> bool {
        let Some(out) = outgoing.as_mut() else {
            return false;
        };
        if !out.migrating {
            // Disks first: the memory migration starts once every copy is in sync.
            match migrate::mirrors_ready(&qemu.qmp, &out.mirrors).await {
                Ok((ready, copied)) => {
                    out.disk_bytes = copied;
                    if let Verdict::Abort(why) =
                        out.watchdog.check(u64::MAX - copied, Instant::now())
                    {
                        self.cancel(vmi, qemu, outgoing, &why).await;
                        return false;
                    }
                    if ready {
                        let (host, port) = &out.address;
                        match migrate::start(&qemu.qmp, host, *port, &out.config, true).await {
                            Ok(()) => out.migrating = true,
                            Err(e) => self.cancel(vmi, qemu, outgoing, &e.to_string()).await,
                        }
                    }
                }
                Err(e) => self.cancel(vmi, qemu, outgoing, &e.to_string()).await,
            }
            return false;
        }
        let progress = match migrate::progress(&qemu.qmp).await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(vmi = %vmi.display_name(), error = %e, "query-migrate failed");
                return false;
            }
        };
        match progress {
            Progress::Active { remaining } => {
                match out.watchdog.check(remaining, Instant::now()) {
                    Verdict::Continue => {}
                    Verdict::StartPostCopy => {
                        tracing::info!(vmi = %vmi.display_name(), "switching the migration to post-copy");
                        let _ = qemu.qmp.execute("migrate-start-postcopy", None).await;
                        self.report_migration(vmi, json!({"mode": "PostCopy"}), json!({}))
                            .await;
                    }
                    Verdict::Abort(why) if out.cancel_reason.is_none() => {
                        self.cancel(vmi, qemu, outgoing, &why).await;
                    }
                    Verdict::Abort(_) => {}
                }
                false
            }
            Progress::PreSwitchover if out.switchover_released => false,
            Progress::PreSwitchover => {
                // The guest is stopped: complete the disk copies, then let the switch-over go.
                let finished = match migrate::finish_mirrors(&qemu.qmp, &out.mirrors).await {
                    Ok(()) => qemu
                        .qmp
                        .execute("migrate-continue", Some(json!({"state": "pre-switchover"})))
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match finished {
                    Ok(()) => out.switchover_released = true,
                    Err(why) => self.cancel(vmi, qemu, outgoing, &why).await,
                }
                false
            }
            Progress::Completed {
                downtime_ms,
                total_ms,
                transferred,
            } => {
                let transferred = transferred + out.disk_bytes;
                let target = out.target.clone();
                let volumes = out.volumes.clone();
                // The claims' volumes live on the target now: recorded before the switch is
                // reported, so the instance never runs where its volumes are not said to be.
                for (claim, path) in &volumes {
                    let mut tries = 0;
                    while let Err(e) = crate::storage::claims::moved(
                        &self.client,
                        &self.storage,
                        claim,
                        &target,
                        path,
                    )
                    .await
                    {
                        tries += 1;
                        tracing::warn!(claim = claim.claim, error = %e, "could not record the volume's new node");
                        if tries >= 5 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                    }
                }
                self.report_migration(
                    vmi,
                    json!({"completed": true, "endTimestamp": now_rfc3339(),
                           "downtimeMilliseconds": downtime_ms, "transferredBytes": transferred, "migrationMilliseconds": total_ms}),
                    json!({"nodeName": target}),
                )
                .await;
                let message = format!(
                    "Live migration to {target} completed (downtime {downtime_ms} ms, {} MiB sent)",
                    transferred >> 20
                );
                self.events
                    .record(vmi, EventType::Normal, "Migrated", &message)
                    .await;
                *outgoing = None;
                // The source QEMU holds a stopped copy; it goes now.
                if qemu.qmp.execute("quit", None).await.is_err() {
                    let pid = qemu.pid;
                    let _ = tokio::task::spawn_blocking(move || process::kill(pid)).await;
                }
                for (claim, _) in &volumes {
                    if let Err(e) = crate::storage::files::remove(&claim.path).await {
                        tracing::warn!(claim = claim.claim, error = %e, "could not remove the moved volume's old file");
                    }
                }
                true
            }
            Progress::Failed(qemu_reason) => {
                let why = out.cancel_reason.clone().unwrap_or(qemu_reason);
                self.give_up(vmi, qemu, outgoing, &why).await;
                false
            }
        }
    }

    /// Source side: gives up an outgoing migration for `why`. A memory migration is cancelled in
    /// QEMU (its failure is reported by the next poll); disk copies alone are dropped and the
    /// failure reported here.
    pub(crate) async fn cancel(
        &self,
        vmi: &Object,
        qemu: &QemuProcess,
        outgoing: &mut Option<Outgoing>,
        why: &str,
    ) {
        let Some(out) = outgoing.as_mut() else {
            return;
        };
        out.cancel_reason.get_or_insert_with(|| why.to_string());
        if out.migrating {
            let _ = qemu.qmp.execute("migrate_cancel", None).await;
            return;
        }
        self.give_up(vmi, qemu, outgoing, why).await;
    }

    /// Source side: drops the disk copies, reports the migration failed for `why` (the guest runs
    /// on here) and forgets it.
    async fn give_up(
        &self,
        vmi: &Object,
        qemu: &QemuProcess,
        outgoing: &mut Option<Outgoing>,
        why: &str,
    ) {
        let Some(out) = outgoing.take() else {
            return;
        };
        migrate::abandon_mirrors(&qemu.qmp, &out.mirrors).await;
        let message = format!(
            "Live migration to {} failed: {why}; the guest keeps running here",
            out.target
        );
        self.report_failure(vmi, why, out.aborted_on_request, &message)
            .await;
    }

    /// Reports the migration failed for `why` (`aborted`: cancelled on request) with a
    /// `MigrationFailed` event saying `message`.
    async fn report_failure(&self, vmi: &Object, why: &str, aborted: bool, message: &str) {
        let mut fields =
            json!({"failed": true, "failureReason": why, "endTimestamp": now_rfc3339()});
        if aborted {
            fields["abortStatus"] = json!("Succeeded");
        }
        self.report_migration(vmi, fields, json!({})).await;
        self.events
            .record(vmi, EventType::Warning, "MigrationFailed", message)
            .await;
    }

    /// Target side: the owner task of an instance migrating to this node.
    pub(crate) async fn own_incoming(
        self: Arc<Self>,
        vmi: Object,
        sender: mpsc::UnboundedSender<Command>,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        let name = vmi.display_name();
        let Some(state) = MigrationState::of(&vmi) else {
            return;
        };
        let run_dir = self.run_dir(&vmi);
        let mut qemu = match process::adopt(&run_dir, &vmi.metadata.uid).await {
            Ok(q) => {
                let status = q.qmp.status().await.unwrap_or_default();
                if status == "inmigrate" && state.target_node_address.is_none() {
                    // Launched but never announced (the agent stopped in between): start over.
                    process::kill_and_wait(q.pid).await;
                    drop(q);
                    match self.listen_for(&vmi, &state, &run_dir).await {
                        Some(q) => q,
                        None => return,
                    }
                } else {
                    tracing::info!(vmi = %name, pid = q.pid, status, "adopted an incoming QEMU");
                    q
                }
            }
            Err(process::ProcessError::Qmp(e)) => {
                tracing::warn!(vmi = %name, error = %e, "cannot reach the incoming QEMU yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                return;
            }
            Err(_) => match self.listen_for(&vmi, &state, &run_dir).await {
                Some(q) => q,
                None => return,
            },
        };
        let arrived = matches!(qemu.qmp.status().await.as_deref(), Ok("running"));
        if !arrived {
            loop {
                tokio::select! {
                    event = qemu.events.recv() => match event {
                        Some(e) if e.name == "RESUME" => break,
                        Some(_) => {}
                        None => {
                            // The incoming QEMU gave up (the stream broke); the source reports why.
                            tracing::info!(vmi = %name, "incoming migration ended without the guest");
                            self.discard(&vmi, &run_dir).await;
                            return;
                        }
                    },
                    command = commands.recv() => match command {
                        // Ours failed; or a newer migration exists that does not start here,
                        // so ours never completed (when it did, the newer one leaves from here:
                        // the guest is about to resume on this node).
                        Some(Command::Migration(s)) if (s.migration_uid == state.migration_uid && s.failed)
                            || (s.migration_uid != state.migration_uid && s.source_node != self.config.node_name) => {
                            tracing::info!(vmi = %name, "migration failed or superseded: discarding the target");
                            process::kill_and_wait(qemu.pid).await;
                            self.discard(&vmi, &run_dir).await;
                            return;
                        }
                        Some(Command::Stop { .. }) | None => {
                            process::kill_and_wait(qemu.pid).await;
                            self.discard(&vmi, &run_dir).await;
                            return;
                        }
                        Some(_) => {}
                    },
                }
            }
        }
        migrate::stop_exports(&qemu.qmp).await;
        tracing::info!(vmi = %name, pid = qemu.pid, "the migrated guest runs here now");
        self.supervise(vmi, qemu, sender, commands).await;
    }

    /// Target side: launches the incoming QEMU and announces where it listens.
    async fn listen_for(
        &self,
        vmi: &Object,
        state: &MigrationState,
        run_dir: &Path,
    ) -> Option<QemuProcess> {
        let name = vmi.display_name();
        let failed = |why: String| async move { self.report_failure(vmi, &why, false, &why).await };
        if let Err(e) = std::fs::create_dir_all(run_dir) {
            failed(format!(
                "target {}: run directory: {e}",
                self.config.node_name
            ))
            .await;
            return None;
        }
        let plan = match self.plan(vmi, run_dir, true, None).await {
            Ok(p) => p,
            Err(e) => {
                failed(format!("target {}: {e}", self.config.node_name)).await;
                self.discard(vmi, run_dir).await;
                return None;
            }
        };
        let qemu = match process::launch(&self.config.qemu_binary, &plan).await {
            Ok(q) => q,
            Err(e) => {
                failed(format!("target {}: {e}", self.config.node_name)).await;
                self.discard(vmi, run_dir).await;
                return None;
            }
        };
        let config = state.migration_configuration.clone().unwrap_or_default();
        let spec = serde_json::from_value::<VmiSpec>(vmi.spec().clone()).ok();
        let (claims, drives) = self.moving_disks(vmi, spec.as_ref()).await;
        // Where this node keeps its copies of the claims that move here.
        let volume_paths: serde_json::Map<String, Value> = claims
            .iter()
            .map(|c| {
                let path =
                    crate::storage::claims::incoming_path(&self.config.local_pool, &c.claim_uid);
                (c.claim.clone(), json!(path.to_string_lossy()))
            })
            .collect();
        let mut ports = serde_json::Map::new();
        let listening = async {
            if !drives.is_empty() {
                let nbd = migrate::export_disks(&qemu.qmp, qemu.pid, &self.migration_host, &drives)
                    .await?;
                ports.insert(nbd.to_string(), json!(1));
            }
            migrate::listen(&qemu.qmp, &self.migration_host, &config).await
        };
        match listening.await {
            Ok(port) => {
                tracing::info!(vmi = %name, port, disks = drives.len(), "waiting for the incoming migration");
                ports.insert(port.to_string(), json!(0));
                self.report_migration(
                    vmi,
                    json!({"targetNodeAddress": self.migration_host,
                           "targetDirectMigrationNodePorts": ports,
                           "targetVolumePaths": volume_paths}),
                    json!({}),
                )
                .await;
                Some(qemu)
            }
            Err(e) => {
                process::kill_and_wait(qemu.pid).await;
                failed(format!("target {}: {e}", self.config.node_name)).await;
                self.discard(vmi, run_dir).await;
                None
            }
        }
    }

    /// Target side: drops what a failed incoming migration left here, the run directory and
    /// the copies of claims from another node's local pool.
    async fn discard(&self, vmi: &Object, run_dir: &Path) {
        if let Ok(spec) = serde_json::from_value::<VmiSpec>(vmi.spec().clone()) {
            crate::storage::claims::discard_incoming(
                &self.client,
                &self.storage,
                &self.config.node_name,
                &self.config.local_pool,
                &vmi.metadata.namespace,
                &spec,
            )
            .await;
        }
        self.discard_dir(run_dir).await;
    }

    async fn discard_dir(&self, run_dir: &Path) {
        if let Some(uid) = run_dir.file_name().and_then(|n| n.to_str()) {
            self.network.detach(uid, run_dir).await;
        }
        let run_dir = run_dir.to_path_buf();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(run_dir)).await;
    }

    /// Removes run directories that no instance here needs any more (a target abandoned while
    /// this agent was down, say), killing a QEMU still running in one.
    pub(crate) async fn sweep<T>(&self, vmis: &[Object], owners: &HashMap<String, T>) {
        let me = &self.config.node_name;
        let needed: HashSet<&str> = vmis
            .iter()
            .filter(|v| {
                v.status()["nodeName"].as_str() == Some(me)
                    || MigrationState::of(v).is_some_and(|s| s.active() && s.target_node == *me)
            })
            .map(|v| v.metadata.uid.as_str())
            .collect();
        let dir = self.config.data_dir.join("vms");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let uid = entry.file_name().to_string_lossy().to_string();
            if needed.contains(uid.as_str()) || owners.contains_key(&uid) {
                continue;
            }
            let run_dir = entry.path();
            if let Ok(q) = process::adopt(&run_dir, &uid).await {
                tracing::warn!(uid, pid = q.pid, "killing a QEMU no instance here needs");
                process::kill_and_wait(q.pid).await;
            }
            tracing::info!(uid, "removing a run directory no instance here needs");
            self.discard_dir(&run_dir).await;
        }
    }
}
