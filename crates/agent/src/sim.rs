//! The simulated agent: many nodes in one process, speaking the real agent's protocol without QEMU,
//! for scale tests and benchmarks.
//!
//! Each simulated node registers a Node shaped like a real agent's (hostname, zone and machine-pool
//! labels, capacity and allocatable, a Ready condition, addresses and nodeInfo) and renews its
//! heartbeat Lease. Instances bound to a simulated node are "run" at once: the agent finalizer is
//! added (conditional on the version read, as the real runner does), then the status says
//! `Running`, Ready. A deleted instance is released at once (its finalizer removed). A node the
//! node lifecycle controller marked not Ready gets its status written again at the next heartbeat,
//! and a deleted Node is registered again.
//!
//! One informer for Nodes and one for instances serve every simulated node, and writes run with
//! bounded concurrency, so a few hundred nodes cost little more than one. What a simulated node
//! does with an instance is decided by [`next_step`], a pure function, where migration handling
//! will go.

use crate::net::mac_of;
use crate::runner::AGENT_FINALIZER;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use vmo_api::kinds::core::{node_condition, MACHINE_POOL_LABEL, ZONE_LABEL};
use vmo_api::kinds::migration::MigrationState;
use vmo_api::meta::now_rfc3339;
use vmo_api::{KindInfo, Object, Registry};
use vmo_client::informer::{self, Cache};
use vmo_client::{Client, ClientError};

/// The label every simulated node carries.
pub const SIMULATED_LABEL: &str = "vmo.io/simulated";
/// API writes a simulator has in flight at once.
const WRITE_CONCURRENCY: usize = 32;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// How many nodes.
    pub nodes: usize,
    /// Node `i` is named `{name_prefix}{i}`.
    pub name_prefix: String,
    /// Node `i` is in zone `{zone_prefix}{i % zones}`.
    pub zones: usize,
    pub zone_prefix: String,
    /// `vmo.io/machine-pool` of every node.
    pub pool: String,
    /// Cores per node (capacity and allocatable).
    pub cpus: u32,
    /// Memory per node (capacity); allocatable keeps `reserved_memory_bytes` back.
    pub memory_bytes: u64,
    pub reserved_memory_bytes: u64,
    /// More labels on every node.
    pub labels: BTreeMap<String, String>,
    /// Renewal period of each node's Lease.
    pub heartbeat_interval: Duration,
    /// How long a Lease is valid without renewal.
    pub lease_duration: Duration,
    /// How long a simulated live migration copies before it completes.
    pub migration_time: Duration,
}

impl SimConfig {
    /// `nodes` nodes named `sim-0`, `sim-1`, ... in 3 zones (`zone-0`..`zone-2`), 16 cores and
    /// 64 GiB each, heartbeats every 10 s.
    pub fn new(nodes: usize) -> Self {
        Self {
            nodes,
            name_prefix: "sim-".into(),
            zones: 3,
            zone_prefix: "zone-".into(),
            pool: "default".into(),
            cpus: 16,
            memory_bytes: 64 << 30,
            reserved_memory_bytes: 512 << 20,
            labels: BTreeMap::new(),
            heartbeat_interval: Duration::from_secs(10),
            lease_duration: Duration::from_secs(40),
            migration_time: Duration::from_millis(500),
        }
    }

    /// The name of node `i`.
    pub fn node_name(&self, i: usize) -> String {
        format!("{}{i}", self.name_prefix)
    }

    /// The zone of node `i`.
    pub fn zone(&self, i: usize) -> String {
        format!("{}{}", self.zone_prefix, i % self.zones.max(1))
    }
}

/// Why the simulated nodes could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid node name {name:?}: {why}")]
    NodeName { name: String, why: String },
    #[error("registering simulated node {node}")]
    Register {
        node: String,
        #[source]
        source: ClientError,
    },
}

/// What a simulated node does next with an instance bound to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Take it: add the agent finalizer, then report it Running and Ready.
    Run,
    /// It was deleted: remove the agent finalizer (no guest to stop).
    Release,
    /// Migration target: say where it "listens".
    Listen,
    /// Migration source, the target ready: start "copying".
    Send,
    /// Migration source, copying: complete after `migration_time` and hand the instance over.
    Complete,
    /// Migration source, the migration object deleted: cancel.
    Abort,
    /// Nothing to do.
    Nothing,
}

/// The next step of a live migration of `vmi` from or to a node `mine` says is simulated here;
/// the same protocol as the real agents (`vmo_api::kinds::migration`), with no QEMU.
pub fn migration_step(vmi: &Object, mine: impl Fn(&str) -> bool) -> Step {
    let Some(s) = MigrationState::of(vmi).filter(MigrationState::active) else {
        return Step::Nothing;
    };
    if mine(&s.target_node) && s.target_node_address.is_none() {
        return Step::Listen;
    }
    if !mine(&s.source_node) || vmi.status()["nodeName"].as_str() != Some(&s.source_node) {
        return Step::Nothing;
    }
    match (
        s.abort_requested,
        &s.target_node_address,
        &s.start_timestamp,
    ) {
        (true, _, _) => Step::Abort,
        (false, Some(_), None) => Step::Send,
        (false, Some(_), Some(_)) => Step::Complete,
        _ => Step::Nothing,
    }
}

/// The step for `vmi` on the simulator's nodes (`mine`): its own node's, else a migration's.
fn step_for(vmi: &Object, mine: impl Fn(&str) -> bool) -> Step {
    let bound_here = vmi.status()["nodeName"].as_str().is_some_and(&mine);
    match next_step(vmi) {
        Step::Nothing => migration_step(vmi, mine),
        step if bound_here => step,
        _ => migration_step(vmi, mine),
    }
}

/// The next step for `vmi`, bound to one of the simulator's nodes. (Migration, when simulated,
/// branches here on `status.migrationState`.)
pub fn next_step(vmi: &Object) -> Step {
    let has_finalizer = vmi.metadata.finalizers.iter().any(|f| f == AGENT_FINALIZER);
    if vmi.metadata.deletion_timestamp.is_some() {
        return if has_finalizer {
            Step::Release
        } else {
            Step::Nothing
        };
    }
    match vmi.status()["phase"].as_str().unwrap_or("") {
        "" | "Pending" | "Scheduling" | "Scheduled" => Step::Run,
        _ => Step::Nothing,
    }
}

/// Wakes the instance loop only for bound instances with a step to take (any simulator's node:
/// the loop filters its own), so running instances cost nothing.
fn actionable(_: &str, vmi: &Object) -> bool {
    vmi.status()["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty())
        && step_for(vmi, |_| true) != Step::Nothing
}

struct Sim {
    client: Client,
    config: SimConfig,
    node_kind: KindInfo,
    lease_kind: KindInfo,
    vmi_kind: KindInfo,
    names: Vec<String>,
    writes: Semaphore,
}

/// Simulated nodes, running until dropped.
#[derive(Debug)]
pub struct SimAgents {
    names: Vec<String>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for SimAgents {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl SimAgents {
    /// Registers every node (they exist and are Ready when this returns), then keeps their
    /// heartbeats and runs the instances bound to them until the returned value is dropped.
    pub async fn start(client: Client, config: SimConfig) -> Result<Self, SimError> {
        let registry = Registry::builtin();
        let names: Vec<String> = (0..config.nodes).map(|i| config.node_name(i)).collect();
        for name in &names {
            let errors = vmo_api::validation::dns1123_subdomain("node name", name);
            if let Some(e) = errors.first() {
                return Err(SimError::NodeName {
                    name: name.clone(),
                    why: e.detail.clone(),
                });
            }
        }
        let sim = Arc::new(Sim {
            client: client.clone(),
            node_kind: *registry.resolve("nodes").expect("nodes are registered"),
            lease_kind: *registry.resolve("leases").expect("leases are registered"),
            vmi_kind: *registry.resolve("vmi").expect("vmis are registered"),
            names: names.clone(),
            config,
            writes: Semaphore::new(WRITE_CONCURRENCY),
        });
        let registered: Vec<Result<(), SimError>> = futures_util::stream::iter(0..names.len())
            .map(|i| {
                let sim = sim.clone();
                async move {
                    sim.register(i).await.map_err(|source| SimError::Register {
                        node: sim.names[i].clone(),
                        source,
                    })
                }
            })
            .buffer_unordered(WRITE_CONCURRENCY)
            .collect()
            .await;
        registered.into_iter().collect::<Result<Vec<()>, _>>()?;
        tracing::info!(
            nodes = names.len(),
            prefix = sim.config.name_prefix,
            "simulated nodes registered"
        );
        let tasks = vec![
            tokio::spawn(sim.clone().heartbeats()),
            tokio::spawn(sim.run_instances()),
        ];
        Ok(Self { names, tasks })
    }

    /// The simulated nodes' names.
    pub fn node_names(&self) -> &[String] {
        &self.names
    }
}

impl Sim {
    fn labels(&self, i: usize) -> Value {
        let mut labels = json!({
            "kubernetes.io/hostname": self.names[i],
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            ZONE_LABEL: self.config.zone(i),
            MACHINE_POOL_LABEL: self.config.pool,
            SIMULATED_LABEL: "true",
        });
        for (k, v) in &self.config.labels {
            labels[k] = json!(v);
        }
        labels
    }

    fn status(&self, i: usize) -> Value {
        let c = &self.config;
        let allocatable = c.memory_bytes.saturating_sub(c.reserved_memory_bytes);
        let now = now_rfc3339();
        json!({
            "capacity": {"cpu": c.cpus.to_string(), "memory": format!("{}Ki", c.memory_bytes / 1024)},
            "allocatable": {"cpu": c.cpus.to_string(), "memory": format!("{}Ki", allocatable / 1024)},
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "AgentReady",
                "message": "vmo simulated agent is posting ready status",
                "lastHeartbeatTime": now, "lastTransitionTime": now,
            }],
            "addresses": [{"type": "Hostname", "address": self.names[i]}],
            "nodeInfo": {
                "machineID": format!("sim-{i}"),
                "kernelVersion": "simulated",
                "osImage": "vmo simulated node",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "kubeletVersion": format!("vmo-{}", env!("CARGO_PKG_VERSION")),
                "containerRuntimeVersion": "sim://none",
            },
        })
    }

    /// Creates (or relabels) node `i`, writes its status and renews its Lease.
    async fn register(&self, i: usize) -> Result<(), ClientError> {
        let name = &self.names[i];
        let _permit = self.writes.acquire().await;
        let node = match self
            .client
            .create(
                &self.node_kind,
                "",
                &json!({
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": name, "labels": self.labels(i)},
                    "spec": {},
                }),
            )
            .await
        {
            Ok(n) => n,
            Err(e) if e.is_conflict() => {
                let patch = json!({"metadata": {"labels": self.labels(i)}});
                self.client
                    .merge_patch(&self.node_kind, "", name, None, &patch, "vmo-sim-agent")
                    .await?
            }
            Err(e) => return Err(e),
        };
        self.write_status(i).await?;
        self.renew_lease(i, &node.metadata.uid).await
    }

    async fn write_status(&self, i: usize) -> Result<(), ClientError> {
        let patch = json!({"status": self.status(i)});
        self.client
            .merge_patch(
                &self.node_kind,
                "",
                &self.names[i],
                Some("status"),
                &patch,
                "vmo-sim-agent",
            )
            .await
            .map(|_| ())
    }

    /// Renews node `i`'s Lease, creating it (owned by the Node) when missing.
    async fn renew_lease(&self, i: usize, node_uid: &str) -> Result<(), ClientError> {
        crate::node::renew_node_lease(
            &self.client,
            &self.lease_kind,
            &self.names[i],
            node_uid,
            self.config.lease_duration,
            "vmo-sim-agent",
        )
        .await
    }

    /// One heartbeat of node `i`: registered again if its Node is gone, status rewritten if it
    /// is not Ready, Lease renewed.
    async fn heartbeat(&self, i: usize, nodes: &Cache) -> Result<(), ClientError> {
        let name = &self.names[i];
        let node = nodes
            .select(|n| &n.metadata.name == name)
            .into_iter()
            .next();
        let Some(node) = node else {
            return if nodes.synced() {
                self.register(i).await
            } else {
                Ok(())
            };
        };
        let _permit = self.writes.acquire().await;
        if node_condition(&node, "Ready").as_deref() != Some("True") {
            self.write_status(i).await?;
        }
        self.renew_lease(i, &node.metadata.uid).await
    }

    /// Heartbeats of every node, spread evenly over the interval.
    async fn heartbeats(self: Arc<Self>) {
        let nodes = informer::start(
            self.client.clone(),
            self.node_kind,
            Arc::new(Notify::new()),
            informer::every_change,
        );
        let n = self.names.len().max(1) as u32;
        let step = self.config.heartbeat_interval / n;
        let mut tick = tokio::time::interval(step.max(Duration::from_micros(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut i = 0;
        loop {
            tick.tick().await;
            if self.names.is_empty() {
                continue;
            }
            let sim = self.clone();
            let nodes = nodes.clone();
            let index = i;
            tokio::spawn(async move {
                if let Err(e) = sim.heartbeat(index, &nodes).await {
                    tracing::warn!(node = %sim.names[index], error = %e, "simulated heartbeat failed");
                }
            });
            i = (i + 1) % self.names.len();
        }
    }

    /// Runs the instances bound to the simulated nodes.
    async fn run_instances(self: Arc<Self>) {
        let changed = Arc::new(Notify::new());
        let vmis = informer::start(
            self.client.clone(),
            self.vmi_kind,
            changed.clone(),
            actionable,
        );
        let mine: HashSet<String> = self.names.iter().cloned().collect();
        // Steps started or done, until the cache shows them taken: each is written once.
        let taken: Arc<Mutex<HashMap<String, Step>>> = Arc::default();
        loop {
            tokio::select! {
                _ = changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
            if !vmis.synced() {
                continue;
            }
            // Only instances with something to do are copied out of the cache.
            let is_mine = |n: &str| mine.contains(n);
            let to_do = vmis.select(|v| step_for(v, is_mine) != Step::Nothing);
            let pending: HashMap<&str, Step> = to_do
                .iter()
                .map(|v| (v.metadata.uid.as_str(), step_for(v, is_mine)))
                .collect();
            taken
                .lock()
                .expect("taken lock")
                .retain(|uid, step| pending.get(uid.as_str()) == Some(step));
            for vmi in &to_do {
                let step = step_for(vmi, is_mine);
                let uid = vmi.metadata.uid.clone();
                if taken.lock().expect("taken lock").insert(uid.clone(), step) == Some(step) {
                    continue;
                }
                let (sim, taken, vmi) = (self.clone(), taken.clone(), vmi.clone());
                tokio::spawn(async move {
                    if let Err(e) = sim.take(&vmi, step).await {
                        if !e.is_conflict() && !e.is_not_found() {
                            tracing::warn!(vmi = %vmi.display_name(), ?step, error = %e, "simulated step failed");
                        }
                        // Not taken: the next pass decides again.
                        taken.lock().expect("taken lock").remove(&uid);
                    }
                });
            }
        }
    }

    /// Carries out `step` for `vmi`.
    async fn take(&self, vmi: &Object, step: Step) -> Result<(), ClientError> {
        if step == Step::Complete {
            tokio::time::sleep(self.config.migration_time).await;
        }
        let _permit = self.writes.acquire().await;
        let (namespace, name) = (&vmi.metadata.namespace, &vmi.metadata.name);
        let migration = |fields: Value, extra: Value| {
            let mut status = json!({ "migrationState": fields });
            if let (Some(s), Value::Object(extra)) = (status.as_object_mut(), extra) {
                s.extend(extra);
            }
            let patch = json!({ "status": status });
            async move {
                self.client
                    .merge_patch(
                        &self.vmi_kind,
                        namespace,
                        name,
                        Some("status"),
                        &patch,
                        "vmo-sim-agent",
                    )
                    .await
                    .map(|_| ())
            }
        };
        let state = MigrationState::of(vmi).unwrap_or_default();
        match step {
            Step::Nothing => Ok(()),
            Step::Listen => {
                migration(
                    json!({"targetNodeAddress": format!("{}.sim", state.target_node),
                                 "targetDirectMigrationNodePorts": {"1": 0}}),
                    json!({}),
                )
                .await
            }
            Step::Send => migration(json!({"startTimestamp": now_rfc3339()}), json!({})).await,
            Step::Abort => migration(
                json!({"failed": true, "abortStatus": "Succeeded", "endTimestamp": now_rfc3339(),
                                 "failureReason": "cancelled: the migration object was deleted"}),
                json!({}),
            )
            .await,
            Step::Complete => {
                // Cancelled while "copying"?
                let fresh = self.client.get(&self.vmi_kind, namespace, name).await?;
                if MigrationState::of(&fresh).is_some_and(|s| s.abort_requested) {
                    return Ok(()); // the next pass aborts
                }
                let bytes =
                    serde_json::from_value::<vmo_api::kinds::kubevirt::VmiSpec>(vmi.spec().clone())
                        .ok()
                        .and_then(|s| s.guest_memory_bytes().ok())
                        .unwrap_or(0);
                migration(
                    json!({"completed": true, "endTimestamp": now_rfc3339(), "downtimeMilliseconds": 0,
                           "transferredBytes": bytes,
                           "migrationMilliseconds": self.config.migration_time.as_millis() as u64}),
                    json!({"nodeName": state.target_node}),
                )
                .await
            }
            Step::Release => {
                let finalizers: Vec<&String> = vmi
                    .metadata
                    .finalizers
                    .iter()
                    .filter(|f| *f != AGENT_FINALIZER)
                    .collect();
                let patch = json!({"metadata": {"finalizers": finalizers}});
                self.client
                    .merge_patch(
                        &self.vmi_kind,
                        namespace,
                        name,
                        None,
                        &patch,
                        "vmo-sim-agent",
                    )
                    .await
                    .map(|_| ())
            }
            Step::Run => {
                if !vmi.metadata.finalizers.iter().any(|f| f == AGENT_FINALIZER) {
                    let mut finalizers = vmi.metadata.finalizers.clone();
                    finalizers.push(AGENT_FINALIZER.into());
                    // Conditional on the version read, so a deletion in between is not missed.
                    let patch = json!({"metadata": {
                        "finalizers": finalizers,
                        "resourceVersion": vmi.metadata.resource_version,
                    }});
                    self.client
                        .merge_patch(
                            &self.vmi_kind,
                            namespace,
                            name,
                            None,
                            &patch,
                            "vmo-sim-agent",
                        )
                        .await?;
                }
                let interfaces: Vec<Value> = vmi.spec()["domain"]["devices"]["interfaces"]
                    .as_array()
                    .map(|nics| {
                        nics.iter()
                            .map(|n| {
                                let mac = mac_of(
                                    vmi,
                                    n["name"].as_str().unwrap_or(""),
                                    n["macAddress"].as_str(),
                                );
                                json!({"name": n["name"], "mac": mac})
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let status = json!({"status": {
                    "phase": "Running",
                    "nodeName": vmi.status()["nodeName"],
                    "interfaces": interfaces,
                    "conditions": [{"type": "Ready", "status": "True"}],
                }});
                self.client
                    .merge_patch(
                        &self.vmi_kind,
                        namespace,
                        name,
                        Some("status"),
                        &status,
                        "vmo-sim-agent",
                    )
                    .await
                    .map(|_| ())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmi(phase: &str, finalizer: bool, deleted: bool) -> Object {
        let mut o = Object::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "a", "namespace": "default"},
            "status": {"phase": phase, "nodeName": "sim-0"}
        }))
        .unwrap();
        if finalizer {
            o.metadata.finalizers.push(AGENT_FINALIZER.into());
        }
        if deleted {
            o.metadata.deletion_timestamp = Some("2026-11-24T00:00:00Z".into());
        }
        o
    }

    #[test]
    fn scheduled_instances_run_and_deleted_ones_are_released() {
        assert_eq!(next_step(&vmi("Scheduled", false, false)), Step::Run);
        assert_eq!(next_step(&vmi("Scheduled", true, false)), Step::Run);
        assert_eq!(next_step(&vmi("Running", true, false)), Step::Nothing);
        assert_eq!(next_step(&vmi("Succeeded", true, false)), Step::Nothing);
        assert_eq!(next_step(&vmi("Running", true, true)), Step::Release);
        assert_eq!(next_step(&vmi("Scheduled", false, true)), Step::Nothing);
    }

    #[test]
    fn migrations_step_through_the_agents_protocol() {
        let mut o = vmi("Running", true, false);
        let mine = |n: &str| n.starts_with("sim-");
        let mut set = |state: Value| {
            o.body.get_mut("status").unwrap()["migrationState"] = state;
            migration_step(&o, mine)
        };
        let base = json!({"migrationUid": "m", "sourceNode": "sim-0", "targetNode": "sim-1"});
        assert_eq!(set(base.clone()), Step::Listen);
        let mut ready = base.clone();
        ready["targetNodeAddress"] = json!("sim-1.sim");
        assert_eq!(set(ready.clone()), Step::Send);
        ready["startTimestamp"] = json!("2026-11-24T00:00:00Z");
        assert_eq!(set(ready.clone()), Step::Complete);
        ready["abortRequested"] = json!(true);
        assert_eq!(set(ready.clone()), Step::Abort);
        ready["failed"] = json!(true);
        assert_eq!(set(ready), Step::Nothing);
        // A target on another simulator, or a source that is not this one: not ours.
        let elsewhere =
            json!({"migrationUid": "m", "sourceNode": "real-0", "targetNode": "real-1"});
        assert_eq!(set(elsewhere), Step::Nothing);
    }

    #[test]
    fn nodes_are_named_and_zoned_by_index() {
        let mut c = SimConfig::new(5);
        c.name_prefix = "big-".into();
        c.zones = 2;
        assert_eq!(c.node_name(3), "big-3");
        assert_eq!(c.zone(3), "zone-1");
        c.zones = 0;
        assert_eq!(c.zone(3), "zone-0");
    }
}
