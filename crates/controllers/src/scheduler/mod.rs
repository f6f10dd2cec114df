//! The VM scheduler: binds every unbound VirtualMachineInstance to the best node, or says why no
//! node can take it.
//!
//! Each pass is level-triggered: it builds a [`Snapshot`] from the Node and instance caches, places
//! the unbound instances oldest first (each placement assumed into the snapshot, so the next one
//! sees it), then writes the results with the read resourceVersion as precondition:
//!
//! - placed: status `phase: Scheduled, nodeName: N` and a `Scheduled` event
//!   (`Successfully assigned NS/NAME to N`); the node's agent takes it from there;
//! - not placeable: `phase: Pending` with the condition `PodScheduled=False`, reason
//!   `Unschedulable`, and kube-scheduler's message (`0/3 nodes available: 3 insufficient memory.`),
//!   plus a `FailedScheduling` warning event whenever that message changes.
//!
//! A new pass runs when a node changes (added, uncordoned, Ready again), when an instance appears
//! unbound or finishes or goes (capacity freed), and every few seconds regardless. Placements whose
//! write succeeded but is not in the cache yet are remembered ([`ASSUME_FOR`]) and counted in the
//! next snapshots, so two passes never hand out the same capacity twice.
//!
//! The placement logic (`snapshot`, `filter`, `score`) is pure; the migration controller uses it
//! too: [`PlacementRequest::for_vmi`], then `exclude_nodes` / `extra_node_selector`, then
//! [`Snapshot::place`] and [`Snapshot::assume`].

mod filter;
mod request;
mod score;
mod snapshot;
mod volumes;

pub use filter::{tolerates, Reason, Unschedulable, UNSCHEDULABLE_TAINT};
pub use request::{
    qemu_overhead_bytes, vmi_requests, PlacementRequest, Requests, MILLICPU_PER_VCPU,
    QEMU_OVERHEAD_BASE_BYTES,
};
pub use snapshot::{
    feasible_nodes_to_find, migration_target, NodeFacts, Resources, Snapshot, Taint,
    MIN_FEASIBLE_NODES, SPREAD_LABELS,
};
pub use volumes::{VolumeIndex, VolumeNeeds};

use crate::informer;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use vmo_api::{KindInfo, Object, Registry};
use vmo_client::events::{EventType, Recorder};
use vmo_client::Client;

/// How long a placement written but not yet seen in the cache keeps its capacity reserved.
pub const ASSUME_FOR: Duration = Duration::from_secs(30);
/// Status writes in flight at once.
const WRITE_CONCURRENCY: usize = 32;
/// A pass runs at least this often.
const RESYNC: Duration = Duration::from_secs(5);

/// True for an instance the scheduler should bind: not deleted, no node yet.
pub fn unbound(vmi: &Object) -> bool {
    vmi.metadata.deletion_timestamp.is_none()
        && vmi.status()["nodeName"].as_str().unwrap_or("").is_empty()
}

/// Instance changes that can change what a pass does: one waiting to be placed, one whose
/// capacity is freed (finished, deleted) or reserved (migrating).
fn relevant(event: &str, vmi: &Object) -> bool {
    event == "DELETED"
        || unbound(vmi)
        || matches!(vmi.status()["phase"].as_str(), Some("Succeeded" | "Failed"))
        || !vmi.status()["migrationState"].is_null()
}

/// A placement written, not yet seen in the cache.
struct Assumed {
    node: String,
    request: PlacementRequest,
    since: Instant,
}

/// What a pass decided for one instance.
enum Decision {
    Bind(String),
    Refuse(String),
    /// Not placeable yet for a reason other than capacity (its volumes): condition reason, message.
    Wait(&'static str, String),
}

/// Runs the scheduler until the task is dropped.
pub async fn run(client: Client, registry: Arc<Registry>) {
    let events = Recorder::new(client.clone(), "vmo-scheduler", "vmo-scheduler");
    let changed = Arc::new(Notify::new());
    let vmi_kind = *registry.resolve("vmi").expect("vmis are registered");
    let node_kind = *registry.resolve("nodes").expect("nodes are registered");
    let vmis = informer::start(client.clone(), vmi_kind, changed.clone(), relevant);
    let nodes = informer::start(
        client.clone(),
        node_kind,
        changed.clone(),
        informer::every_change,
    );
    let kind = |name: &str| {
        *registry
            .resolve(name)
            .expect("storage kinds are registered")
    };
    let claim_kind = kind("persistentvolumeclaims");
    let claims = informer::start(
        client.clone(),
        claim_kind,
        changed.clone(),
        informer::every_change,
    );
    let volumes = informer::start(
        client.clone(),
        kind("persistentvolumes"),
        changed.clone(),
        informer::every_change,
    );
    let classes = informer::start(
        client.clone(),
        kind("storageclasses"),
        changed.clone(),
        informer::every_change,
    );
    let mut assumed: HashMap<String, Assumed> = HashMap::new();
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(RESYNC) => {}
        }
        if !vmis.synced()
            || !nodes.synced()
            || !claims.synced()
            || !volumes.synced()
            || !classes.synced()
        {
            continue;
        }
        // The snapshot is built straight from the caches: only instances waiting for a node are
        // copied out.
        let mut facts = Vec::new();
        nodes.visit(|n| facts.push(NodeFacts::from_node(n)));
        let mut snapshot = Snapshot::with_nodes(facts);
        let mut waiting = Vec::new();
        vmis.visit(|v| {
            snapshot.add_vmi(v);
            if unbound(v) {
                waiting.push(v.clone());
            }
        });
        let index = VolumeIndex::new(&claims.list(), &volumes.list(), &classes.list());
        let decisions = plan(snapshot, waiting, &mut assumed, &index);
        let written: Vec<(String, Option<(String, PlacementRequest)>)> =
            futures_util::stream::iter(decisions)
                .map(|(vmi, request, decision)| {
                    let (client, events, index) = (&client, &events, &index);
                    async move {
                        let selected = match &decision {
                            Decision::Bind(node) => {
                                select_claims(client, &claim_kind, index, &vmi, node).await
                            }
                            _ => true,
                        };
                        let bound =
                            selected && write(client, events, &vmi_kind, &vmi, &decision).await;
                        let assumed = match (bound, decision, request) {
                            (true, Decision::Bind(node), Some(request)) => Some((node, request)),
                            _ => None,
                        };
                        (vmi.metadata.uid.clone(), assumed)
                    }
                })
                .buffer_unordered(WRITE_CONCURRENCY)
                .collect()
                .await;
        for (uid, placement) in written {
            if let Some((node, request)) = placement {
                let since = Instant::now();
                assumed.insert(
                    uid,
                    Assumed {
                        node,
                        request,
                        since,
                    },
                );
            }
        }
    }
}

/// One pass's decisions: each `waiting` (unbound) instance, oldest first, with its request and
/// where it goes or why it cannot. `snapshot` holds the cluster as the caches show it; `assumed`
/// loses placements the cache now shows (or that expired) and the rest are added to the snapshot.
fn plan(
    mut snapshot: Snapshot,
    waiting: Vec<Object>,
    assumed: &mut HashMap<String, Assumed>,
    volumes: &VolumeIndex,
) -> Vec<(Object, Option<PlacementRequest>, Decision)> {
    let uids: HashSet<&str> = waiting.iter().map(|v| v.metadata.uid.as_str()).collect();
    assumed.retain(|uid, a| uids.contains(uid.as_str()) && a.since.elapsed() < ASSUME_FOR);
    for a in assumed.values() {
        snapshot.assume(&a.node, &a.request);
    }
    let mut pending: Vec<&Object> = waiting
        .iter()
        .filter(|v| !assumed.contains_key(&v.metadata.uid))
        .collect();
    pending.sort_by(|a, b| {
        let created = |o: &Object| o.metadata.creation_timestamp.clone().unwrap_or_default();
        created(a)
            .cmp(&created(b))
            .then_with(|| a.metadata.namespace.cmp(&b.metadata.namespace))
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    pending
        .into_iter()
        .map(|vmi| match PlacementRequest::for_vmi(vmi) {
            Err(e) => (
                vmi.clone(),
                None,
                Decision::Refuse(format!("the instance's spec cannot be scheduled: {e}")),
            ),
            Ok(mut request) => match volumes.needs(vmi) {
                VolumeNeeds::Wait { reason, message } => {
                    (vmi.clone(), None, Decision::Wait(reason, message))
                }
                VolumeNeeds::Place { required_node } => {
                    request.required_node = required_node;
                    match snapshot.place(&request) {
                        Ok(node) => {
                            snapshot.assume(&node, &request);
                            (vmi.clone(), Some(request), Decision::Bind(node))
                        }
                        Err(why) => (
                            vmi.clone(),
                            Some(request),
                            Decision::Refuse(why.to_string()),
                        ),
                    }
                }
            },
        })
        .collect()
}

/// Names `node` on the instance's claims that wait for their first consumer, before the
/// instance is bound there; false when a claim could not be written (the next pass retries).
async fn select_claims(
    client: &Client,
    claim_kind: &KindInfo,
    volumes: &VolumeIndex,
    vmi: &Object,
    node: &str,
) -> bool {
    for claim in volumes.to_select(vmi) {
        let patch = json!({"metadata": {"annotations": {
            vmo_api::kinds::storage::SELECTED_NODE_ANNOTATION: node}}});
        let r = client
            .merge_patch(
                claim_kind,
                &vmi.metadata.namespace,
                &claim,
                None,
                &patch,
                "vmo-scheduler",
            )
            .await;
        if let Err(e) = r {
            tracing::warn!(vmi = %vmi.display_name(), claim, error = %e, "could not name the node on a claim");
            return false;
        }
    }
    true
}

/// The instance's status after the decision.
fn decided_status(vmi: &Object, decision: &Decision) -> Value {
    let mut status = match vmi.status() {
        Value::Object(m) => m.clone(),
        _ => Default::default(),
    };
    let mut conditions: Vec<Value> = status
        .get("conditions")
        .and_then(Value::as_array)
        .map(|c| {
            c.iter()
                .filter(|c| c["type"] != "PodScheduled")
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    match decision {
        Decision::Bind(node) => {
            status.insert("phase".into(), json!("Scheduled"));
            status.insert("nodeName".into(), json!(node));
        }
        Decision::Refuse(message) => {
            status.insert("phase".into(), json!("Pending"));
            conditions.push(json!({
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": message,
            }));
        }
        Decision::Wait(reason, message) => {
            status.insert("phase".into(), json!("Pending"));
            conditions.push(json!({
                "type": "PodScheduled", "status": "False", "reason": reason,
                "message": message,
            }));
        }
    }
    status.insert("conditions".into(), Value::Array(conditions));
    Value::Object(status)
}

/// Writes the decision (conditional on the version read) and records its event; true when the
/// instance was bound.
async fn write(
    client: &Client,
    events: &Recorder,
    kind: &KindInfo,
    vmi: &Object,
    decision: &Decision,
) -> bool {
    let mut updated = vmi.clone();
    updated
        .body
        .insert("status".into(), decided_status(vmi, decision));
    if updated == *vmi {
        return false;
    }
    match client.update(kind, &updated, Some("status")).await {
        Ok(_) => {
            match decision {
                Decision::Bind(node) => {
                    tracing::debug!(vmi = %vmi.display_name(), node, "bound");
                    let message = format!("Successfully assigned {} to {node}", vmi.display_name());
                    events
                        .record(vmi, EventType::Normal, "Scheduled", &message)
                        .await;
                    return true;
                }
                Decision::Refuse(message) => {
                    tracing::info!(vmi = %vmi.display_name(), message, "unschedulable");
                    events
                        .record(vmi, EventType::Warning, "FailedScheduling", message)
                        .await;
                }
                Decision::Wait(reason, message) => {
                    events
                        .record(vmi, EventType::Warning, reason, message)
                        .await;
                }
            }
            false
        }
        Err(e) if e.is_conflict() || e.is_not_found() => false,
        Err(e) => {
            tracing::warn!(vmi = %vmi.display_name(), error = %e, "writing the scheduling decision failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::snapshot::tests::{node, vmi};
    use super::*;

    fn decisions(
        nodes: &[Object],
        vmis: &[Object],
        assumed: &mut HashMap<String, Assumed>,
    ) -> Vec<(String, String)> {
        let waiting = vmis.iter().filter(|v| unbound(v)).cloned().collect();
        plan(
            Snapshot::from_objects(nodes, vmis),
            waiting,
            assumed,
            &VolumeIndex::default(),
        )
        .into_iter()
        .map(|(v, _, d)| {
            let what = match d {
                Decision::Bind(n) => n,
                Decision::Refuse(m) | Decision::Wait(_, m) => m,
            };
            (v.metadata.name, what)
        })
        .collect()
    }

    #[test]
    fn a_pass_places_oldest_first_and_accounts_each_placement() {
        let nodes = [node("a", "z1", 4, 2)];
        let mut first = vmi("first", json!({}), 1024, "");
        first.metadata.creation_timestamp = Some("2026-01-01T00:00:00Z".into());
        let mut second = vmi("second", json!({}), 1024, "");
        second.metadata.creation_timestamp = Some("2026-01-01T00:00:01Z".into());
        let mut assumed = HashMap::new();
        let got = decisions(&nodes, &[second.clone(), first.clone()], &mut assumed);
        assert_eq!(got[0], ("first".into(), "a".into()));
        assert_eq!(got[1].0, "second");
        assert!(
            got[1]
                .1
                .starts_with("0/1 nodes available: 1 insufficient memory."),
            "{}",
            got[1].1
        );
    }

    #[test]
    fn written_placements_count_until_the_cache_shows_them() {
        let nodes = [node("a", "z1", 4, 2)];
        let mut assumed = HashMap::new();
        let first = vmi("first", json!({}), 1024, "");
        let request = PlacementRequest::for_vmi(&first).unwrap();
        assumed.insert(
            first.metadata.uid.clone(),
            Assumed {
                node: "a".into(),
                request,
                since: Instant::now(),
            },
        );
        let second = vmi("second", json!({}), 1024, "");
        // The cache still shows `first` unbound: it is not placed again, and its capacity is taken.
        let got = decisions(&nodes, &[first.clone(), second.clone()], &mut assumed);
        assert_eq!(got.len(), 1);
        assert!(got[0].1.contains("insufficient memory"));
        // Once the cache shows it bound, the assumption goes.
        let bound = vmi("first", json!({}), 1024, "a");
        decisions(&nodes, &[bound, second], &mut assumed);
        assert!(assumed.is_empty());
    }

    #[test]
    fn statuses_say_where_or_why() {
        let mut v = vmi("x", json!({}), 128, "");
        v.body.insert(
            "status".into(),
            json!({"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "old"}]}),
        );
        let bound = decided_status(&v, &Decision::Bind("n1".into()));
        assert_eq!(
            bound,
            json!({"phase": "Scheduled", "nodeName": "n1", "conditions": []})
        );
        let refused = decided_status(&v, &Decision::Refuse("new".into()));
        assert_eq!(refused["conditions"][0]["message"], "new");
        assert_eq!(refused["conditions"].as_array().unwrap().len(), 1);
        assert!(!relevant("MODIFIED", &vmi("r", json!({}), 128, "n1")));
        assert!(relevant("MODIFIED", &v));
        assert!(relevant("DELETED", &vmi("r", json!({}), 128, "n1")));
    }
}
