//! The migration controller: takes each VirtualMachineInstanceMigration from Pending to a target
//! node and then reports what the agents do, as a phase users can watch.
//!
//! ```text
//!  Pending ──limits allow, a target fits──► Scheduled ──target agent listens──► TargetReady
//!     │ (waits: another migration of the VM,                                        │ source starts
//!     │  parallel limits, no node has room)                                         ▼
//!     └─ not running / not migratable ──► Failed ◄── failed / aborted ──────────  Running ──► Succeeded
//! ```
//!
//! It never talks to QEMU: the agents do the migration, QEMU to QEMU, and write their parts of the
//! instance's `status.migrationState` (see `vmo_api::kinds::migration`). The controller writes the
//! plan there (source, target, the cluster's migration settings), fails a migration whose target
//! never becomes ready or whose node is lost before it starts, and asks the source to cancel when
//! the migration object is deleted (a finalizer holds the object until the source has answered).

use crate::informer::{self, Cache};
use crate::scheduler::{PlacementRequest, Snapshot, VolumeIndex};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use vmo_api::kinds::core::node_condition;
use vmo_api::kinds::kubevirt::VmiSpec;
use vmo_api::kinds::migration::{
    phase, MigrationConfiguration, MigrationState, MIGRATION_FINALIZER,
};
use vmo_api::kinds::settings::ClusterSettingsSpec;
use vmo_api::meta::{now_rfc3339, parse_rfc3339, unix_now};
use vmo_api::{KindInfo, Object, Registry};
use vmo_client::events::{EventType, Recorder};
use vmo_client::Client;

/// How long a target may take to start listening before the migration fails.
pub const TARGET_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The node annotation naming a node's shared storage pool (a directory every node that has it
/// mounts at the same path); disks inside it need no copying to migrate.
pub use vmo_api::kinds::core::SHARED_POOL_ANNOTATION;

struct Controller {
    client: Client,
    events: Recorder,
    vmi_kind: KindInfo,
    migration_kind: KindInfo,
}

/// Migrations in flight, for the parallel limits.
#[derive(Default)]
struct InFlight {
    total: usize,
    outbound: HashMap<String, usize>,
}

/// Runs the controller until the task is dropped.
pub async fn run(client: Client, registry: Arc<Registry>) {
    let changed = Arc::new(Notify::new());
    let resolve = |name: &str| *registry.resolve(name).expect("registered kind");
    let controller = Controller {
        events: Recorder::new(client.clone(), "vmo-migration-controller", ""),
        vmi_kind: resolve("vmi"),
        migration_kind: resolve("vmim"),
        client: client.clone(),
    };
    let start = |kind, relevant| informer::start(client.clone(), kind, changed.clone(), relevant);
    let migrations = start(controller.migration_kind, informer::every_change);
    // Only instances with a migration wake the controller; nodes and settings are read when it
    // runs (a lost node is noticed on the periodic pass), so a busy cluster does not keep it awake.
    let vmis = start(controller.vmi_kind, |_, o| {
        o.body
            .get("status")
            .is_some_and(|s| s.get("migrationState").is_some())
    });
    let nodes = start(resolve("nodes"), |_, _| false);
    let settings = start(resolve("clustersettings"), |_, _| false);
    let claims = start(resolve("persistentvolumeclaims"), |_, _| false);
    let volumes = start(resolve("persistentvolumes"), |_, _| false);
    let classes = start(resolve("storageclasses"), |_, _| false);
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        if [
            &migrations,
            &vmis,
            &nodes,
            &settings,
            &claims,
            &volumes,
            &classes,
        ]
        .iter()
        .all(|c| c.synced())
        {
            let storage = [&claims, &volumes, &classes];
            controller
                .pass(&migrations, &vmis, &nodes, &settings, storage)
                .await;
        }
    }
}

/// The cluster's migration settings.
pub fn configuration(settings: &Cache) -> MigrationConfiguration {
    ClusterSettingsSpec::among(&settings.list()).migrations
}

fn ready(nodes: &[Object], name: &str) -> bool {
    nodes
        .iter()
        .any(|n| n.metadata.name == name && node_condition(n, "Ready").as_deref() == Some("True"))
}

/// Why `vmi` cannot be live-migrated away from `source` at all (empty: it can).
pub fn blockers(vmi: &Object, source: Option<&Object>, volumes: &VolumeIndex) -> Vec<String> {
    let mut why = Vec::new();
    if let Some((claim, node)) = volumes.local_ephemeral(vmi) {
        why.push(format!(
            "its ephemeral volume reads persistentvolumeclaim {claim:?} in node {node}'s local pool, which other nodes do not have"
        ));
    }
    let Ok(spec) = serde_json::from_value::<VmiSpec>(vmi.spec().clone()) else {
        return vec!["its spec cannot be read".into()];
    };
    let pool = source
        .and_then(|n| n.metadata.annotations.get(SHARED_POOL_ANNOTATION))
        .map(|p| p.trim_end_matches('/').to_string());
    for v in &spec.volumes {
        if let Some(h) = &v.host_disk {
            let in_pool = pool
                .as_deref()
                .is_some_and(|p| h.path.starts_with(&format!("{p}/")));
            if !in_pool && h.shared != Some(true) {
                why.push(format!(
                    "hostDisk volume {:?} ({}) is local to its node: mark it shared: true or keep it in the shared pool",
                    v.name, h.path
                ));
            }
        }
    }
    for device in ["hostDevices", "gpus"] {
        let devices = spec
            .domain
            .devices
            .extra
            .get(device)
            .and_then(Value::as_array);
        if devices.is_some_and(|a| !a.is_empty()) {
            why.push(format!("it uses {device}, which stay on their host"));
        }
    }
    if let Some(node) = source {
        let tcg = node
            .metadata
            .labels
            .get("vmo.io/accelerator")
            .map(String::as_str)
            == Some("tcg");
        let major = node
            .metadata
            .labels
            .get("vmo.io/qemu-version")
            .and_then(|v| v.split('.').next()?.parse::<u32>().ok());
        if tcg && major.is_some_and(|m| m < 8) {
            why.push(format!(
                "node {} runs QEMU {} under TCG, which corrupts guests that migrate while writing memory; QEMU 8 or later is needed",
                node.metadata.name,
                node.metadata.labels["vmo.io/qemu-version"]
            ));
        }
    }
    why
}

/// The node a migration of `vmi` would go to, or why none can take it.
pub fn choose_target(
    vmi: &Object,
    source: &str,
    added_selector: &std::collections::BTreeMap<String, String>,
    nodes: &[Object],
    vmis: &[Object],
) -> Result<String, String> {
    let mut request = PlacementRequest::for_vmi(vmi)?;
    request.exclude_nodes.push(source.to_string());
    request
        .extra_node_selector
        .extend(added_selector.iter().map(|(k, v)| (k.clone(), v.clone())));
    // A disk in the shared pool needs a target that has the pool too.
    let source_pool = nodes
        .iter()
        .find(|n| n.metadata.name == source)
        .and_then(|n| n.metadata.annotations.get(SHARED_POOL_ANNOTATION));
    if let Some(pool) = source_pool {
        for n in nodes {
            if n.metadata.annotations.get(SHARED_POOL_ANNOTATION) != Some(pool) {
                request.exclude_nodes.push(n.metadata.name.clone());
            }
        }
    }
    Snapshot::from_objects(nodes, vmis)
        .place(&request)
        .map_err(|u| u.to_string())
}

impl Controller {
    async fn pass(
        &self,
        migrations: &Cache,
        vmis: &Cache,
        nodes: &Cache,
        settings: &Cache,
        [claims, volumes, classes]: [&Cache; 3],
    ) {
        // Finished migrations need nothing: with none in progress nothing else is read.
        let mut list = migrations.select(|m| {
            m.metadata.deletion_timestamp.is_some()
                || !matches!(
                    m.status()["phase"].as_str(),
                    Some(phase::SUCCEEDED | phase::FAILED)
                )
        });
        if list.is_empty() {
            return;
        }
        let config = configuration(settings);
        let index = VolumeIndex::new(&claims.list(), &volumes.list(), &classes.list());
        let mut vmi_list = vmis.list();
        let node_list = nodes.list();
        let mut in_flight = InFlight::default();
        for state in vmi_list.iter().filter_map(MigrationState::of) {
            if state.active() {
                in_flight.total += 1;
                *in_flight.outbound.entry(state.source_node).or_default() += 1;
            }
        }
        // First come, first served.
        list.sort_by(|a, b| {
            (&a.metadata.creation_timestamp, &a.metadata.name)
                .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
        });
        for m in list {
            if let Some(scheduled) = self
                .reconcile(
                    &m,
                    &mut vmi_list,
                    &node_list,
                    &config,
                    &mut in_flight,
                    &index,
                )
                .await
            {
                // Later placements in this pass see this target's reservation.
                if let Some(v) = vmi_list
                    .iter_mut()
                    .find(|v| v.metadata.uid == scheduled.metadata.uid)
                {
                    *v = scheduled;
                }
            }
        }
    }

    /// One migration; returns the instance when it was just given a target.
    async fn reconcile(
        &self,
        m: &Object,
        vmis: &mut [Object],
        nodes: &[Object],
        config: &MigrationConfiguration,
        in_flight: &mut InFlight,
        volumes: &VolumeIndex,
    ) -> Option<Object> {
        let vmi_name = m.spec()["vmiName"].as_str().unwrap_or("");
        let vmi = vmis
            .iter()
            .find(|v| v.metadata.namespace == m.metadata.namespace && v.metadata.name == vmi_name)
            .cloned();
        let state = vmi
            .as_ref()
            .and_then(MigrationState::of)
            .filter(|s| s.migration_uid == m.metadata.uid);
        let current = m.status()["phase"].as_str().unwrap_or("");
        let has_finalizer = m
            .metadata
            .finalizers
            .iter()
            .any(|f| f == MIGRATION_FINALIZER);

        if m.metadata.deletion_timestamp.is_some() {
            match (&vmi, &state) {
                (Some(vmi), Some(s)) if s.active() => {
                    if !s.abort_requested {
                        self.patch_state(vmi, json!({"abortRequested": true})).await;
                        self.events
                            .record(
                                vmi,
                                EventType::Normal,
                                "MigrationAbortRequested",
                                &format!(
                                    "Migration {} was deleted; cancelling it",
                                    m.metadata.name
                                ),
                            )
                            .await;
                    }
                    if !ready(nodes, &s.source_node) {
                        // Nobody will answer: the source node is gone.
                        self.fail_state(
                            vmi,
                            &format!("the source node {} is not ready", s.source_node),
                        )
                        .await;
                    }
                }
                _ if has_finalizer => self.release(m).await,
                _ => {}
            }
            return None;
        }
        if matches!(current, phase::SUCCEEDED | phase::FAILED) {
            return None;
        }
        if !has_finalizer {
            let mut finalizers = m.metadata.finalizers.clone();
            finalizers.push(MIGRATION_FINALIZER.into());
            self.set_finalizers(m, finalizers, Some(&m.metadata.resource_version))
                .await;
            return None;
        }
        if let (Some(vmi), Some(s)) = (&vmi, &state) {
            let new_phase = if s.completed {
                phase::SUCCEEDED
            } else if s.failed {
                phase::FAILED
            } else if s.start_timestamp.is_some() {
                phase::RUNNING
            } else if s.target_node_address.is_some() {
                phase::TARGET_READY
            } else {
                phase::SCHEDULED
            };
            if s.active() && s.start_timestamp.is_none() {
                let waited = phase_since(m).map(|t| unix_now() - t).unwrap_or(0);
                let why = if !ready(nodes, &s.target_node) {
                    Some(format!("the target node {} is not ready", s.target_node))
                } else if !ready(nodes, &s.source_node) {
                    Some(format!("the source node {} is not ready", s.source_node))
                } else if waited > TARGET_READY_TIMEOUT.as_secs() as i64 {
                    Some(format!(
                        "the target on {} did not become ready within {}s",
                        s.target_node,
                        TARGET_READY_TIMEOUT.as_secs()
                    ))
                } else {
                    None
                };
                if let Some(why) = why {
                    self.fail_state(vmi, &why).await;
                    return None;
                }
            }
            let message = match new_phase {
                phase::FAILED => s
                    .failure_reason
                    .clone()
                    .unwrap_or_else(|| "the migration failed".into()),
                phase::SUCCEEDED => format!("migrated from {} to {}", s.source_node, s.target_node),
                _ => format!("migrating from {} to {}", s.source_node, s.target_node),
            };
            self.set_phase(m, new_phase, Some(s), &message).await;
            return None;
        }
        // Not yet given a target.
        let Some(vmi) = vmi else {
            self.set_phase(
                m,
                phase::FAILED,
                None,
                &format!(
                    "VirtualMachineInstance {}/{vmi_name} does not exist",
                    m.metadata.namespace
                ),
            )
            .await;
            return None;
        };
        let vmi_phase = vmi.status()["phase"].as_str().unwrap_or("");
        if vmi_phase != "Running" {
            self.set_phase(
                m,
                phase::FAILED,
                None,
                &format!(
                    "VirtualMachineInstance {} is not running (phase {vmi_phase:?})",
                    vmi.display_name()
                ),
            )
            .await;
            return None;
        }
        let source = vmi.status()["nodeName"].as_str().unwrap_or("").to_string();
        let source_node = nodes.iter().find(|n| n.metadata.name == source);
        let blocked = blockers(&vmi, source_node, volumes);
        if !blocked.is_empty() {
            self.set_phase(
                m,
                phase::FAILED,
                None,
                &format!(
                    "VirtualMachineInstance {} is not live-migratable: {}",
                    vmi.display_name(),
                    blocked.join("; ")
                ),
            )
            .await;
            return None;
        }
        if let Some(other) = MigrationState::of(&vmi).filter(MigrationState::active) {
            self.set_phase(
                m,
                phase::PENDING,
                None,
                &format!(
                    "waiting: migration {} of this instance is in progress",
                    other.migration_uid
                ),
            )
            .await;
            return None;
        }
        if in_flight.total >= config.parallel_per_cluster() {
            self.set_phase(m, phase::PENDING, None, &format!("waiting: {} migrations are running in the cluster (parallelMigrationsPerCluster: {})", in_flight.total, config.parallel_per_cluster())).await;
            return None;
        }
        let outbound = in_flight.outbound.get(&source).copied().unwrap_or(0);
        if outbound >= config.parallel_outbound_per_node() {
            self.set_phase(m, phase::PENDING, None, &format!("waiting: {outbound} migrations are leaving node {source} (parallelOutboundMigrationsPerNode: {})", config.parallel_outbound_per_node())).await;
            return None;
        }
        let added =
            serde_json::from_value(m.spec()["addedNodeSelector"].clone()).unwrap_or_default();
        let target = match choose_target(&vmi, &source, &added, nodes, vmis) {
            Ok(t) => t,
            Err(why) => {
                self.set_phase(
                    m,
                    phase::PENDING,
                    None,
                    &format!("waiting for a target node: {why}"),
                )
                .await;
                return None;
            }
        };
        let state = MigrationState {
            migration_uid: m.metadata.uid.clone(),
            source_node: source.clone(),
            target_node: target.clone(),
            mode: Some("PreCopy".into()),
            migration_configuration: Some(config.clone()),
            ..Default::default()
        };
        let mut updated = vmi.clone();
        let status = updated.body.entry("status").or_insert_with(|| json!({}));
        status["migrationState"] = serde_json::to_value(&state).unwrap_or_default();
        match self
            .client
            .update(&self.vmi_kind, &updated, Some("status"))
            .await
        {
            Ok(written) => {
                in_flight.total += 1;
                *in_flight.outbound.entry(source.clone()).or_default() += 1;
                self.set_phase(
                    m,
                    phase::SCHEDULED,
                    Some(&state),
                    &format!("migrating from {source} to {target}"),
                )
                .await;
                self.events
                    .record(
                        &vmi,
                        EventType::Normal,
                        "MigrationScheduled",
                        &format!(
                            "Migration {} will move the instance from {source} to {target}",
                            m.metadata.name
                        ),
                    )
                    .await;
                Some(written)
            }
            Err(e) => {
                if !e.is_conflict() {
                    tracing::warn!(migration = %m.display_name(), error = %e, "could not schedule the migration");
                }
                None
            }
        }
    }

    /// Merges `fields` into the instance's `status.migrationState`.
    async fn patch_state(&self, vmi: &Object, fields: Value) {
        let patch = json!({"status": {"migrationState": fields}});
        if let Err(e) = self
            .client
            .merge_patch(
                &self.vmi_kind,
                &vmi.metadata.namespace,
                &vmi.metadata.name,
                Some("status"),
                &patch,
                "vmo-migration-controller",
            )
            .await
        {
            tracing::warn!(vmi = %vmi.display_name(), error = %e, "could not update the migration state");
        }
    }

    async fn fail_state(&self, vmi: &Object, why: &str) {
        self.patch_state(
            vmi,
            json!({"failed": true, "failureReason": why, "endTimestamp": now_rfc3339()}),
        )
        .await;
        self.events
            .record(vmi, EventType::Warning, "MigrationFailed", why)
            .await;
    }

    async fn release(&self, m: &Object) {
        let finalizers: Vec<String> = m
            .metadata
            .finalizers
            .iter()
            .filter(|f| *f != MIGRATION_FINALIZER)
            .cloned()
            .collect();
        self.set_finalizers(m, finalizers, None).await;
    }

    /// Writes the migration's finalizers, conditional on `version` when given (a failed write is
    /// retried by the next pass).
    async fn set_finalizers(&self, m: &Object, finalizers: Vec<String>, version: Option<&str>) {
        let mut patch = json!({"metadata": {"finalizers": finalizers}});
        if let Some(v) = version {
            patch["metadata"]["resourceVersion"] = json!(v);
        }
        let _ = self
            .client
            .merge_patch(
                &self.migration_kind,
                &m.metadata.namespace,
                &m.metadata.name,
                None,
                &patch,
                "vmo-migration-controller",
            )
            .await;
    }

    /// Writes the migration's phase (recording the transition) and state when they changed.
    async fn set_phase(
        &self,
        m: &Object,
        new_phase: &str,
        state: Option<&MigrationState>,
        message: &str,
    ) {
        let status = m.status();
        let state_value = state.map(|s| serde_json::to_value(s).unwrap_or_default());
        let condition_message = status["conditions"][0]["message"].as_str().unwrap_or("");
        if status["phase"] == new_phase
            && state_value
                .as_ref()
                .is_none_or(|s| status["migrationState"] == *s)
            && condition_message == message
        {
            return;
        }
        let mut transitions: Vec<Value> = status["phaseTransitionTimestamps"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if status["phase"] != new_phase {
            transitions
                .push(json!({"phase": new_phase, "phaseTransitionTimestamp": now_rfc3339()}));
        }
        let (kind, reason) = match new_phase {
            phase::FAILED => ("Failed", "MigrationFailed"),
            phase::SUCCEEDED => ("Succeeded", "MigrationSucceeded"),
            phase::PENDING => ("Pending", "MigrationPending"),
            _ => ("Progressing", "MigrationProgressing"),
        };
        let mut new_status = Map::new();
        new_status.insert("phase".into(), json!(new_phase));
        new_status.insert(
            "phaseTransitionTimestamps".into(),
            Value::Array(transitions),
        );
        new_status.insert(
            "conditions".into(),
            json!([{"type": kind, "status": "True", "reason": reason, "message": message}]),
        );
        if let Some(s) = state_value {
            new_status.insert("migrationState".into(), s);
        }
        let patch = json!({"status": new_status});
        match self
            .client
            .merge_patch(
                &self.migration_kind,
                &m.metadata.namespace,
                &m.metadata.name,
                Some("status"),
                &patch,
                "vmo-migration-controller",
            )
            .await
        {
            Ok(_) => {
                if status["phase"] != new_phase
                    && matches!(new_phase, phase::FAILED | phase::SUCCEEDED)
                {
                    let kind = if new_phase == phase::FAILED {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    };
                    self.events.record(m, kind, reason, message).await;
                }
            }
            Err(e) if !e.is_not_found() => {
                tracing::warn!(migration = %m.display_name(), error = %e, "could not update the migration's status");
            }
            Err(_) => {}
        }
    }
}

/// When the migration entered its current phase (unix seconds).
fn phase_since(m: &Object) -> Option<i64> {
    m.status()["phaseTransitionTimestamps"].as_array()?.last()?["phaseTransitionTimestamp"]
        .as_str()
        .and_then(parse_rfc3339)
}

/// Asks for `vmi` (in `ns`) to be live-migrated, to `target_node` or wherever the scheduler
/// chooses: creates a VirtualMachineInstanceMigration (named `<vmi>-migration-<random>`).
pub async fn request_migration(
    client: &Client,
    ns: &str,
    vmi: &str,
    target_node: Option<&str>,
) -> Result<Object, vmo_client::ClientError> {
    let registry = vmo_api::Registry::builtin();
    let kind = registry.resolve("vmim").expect("migrations are registered");
    let mut spec = json!({ "vmiName": vmi });
    if let Some(node) = target_node {
        spec["addedNodeSelector"] = json!({ "kubernetes.io/hostname": node });
    }
    let body = json!({
        "apiVersion": kind.api_version(),
        "kind": kind.kind,
        "metadata": {"generateName": format!("{vmi}-migration-"), "namespace": ns},
        "spec": spec,
    });
    client.create(kind, ns, &body).await
}
