//! The node lifecycle controller: a Node whose agent stopped renewing its heartbeat Lease for longer
//! than the grace period is marked `Ready=Unknown` and tainted unreachable, so nothing new is placed
//! there; when the agent comes back and reports Ready, the taints are removed.

use crate::informer::{self, Cache};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use vmo_api::kinds::coordination::{lease_expiry, NODE_LEASE_NAMESPACE};
use vmo_api::kinds::core::node_condition;
use vmo_api::meta::{now_rfc3339, unix_now};
use vmo_api::{KindInfo, Object, Registry};
use vmo_client::Client;

/// The taint key for nodes whose agent is not heard from.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// Runs the controller; a node is unreachable `grace` after its lease's renewal.
pub async fn run(client: Client, registry: Arc<Registry>, grace: Duration) {
    let changed = Arc::new(Notify::new());
    let node_kind = *registry.resolve("nodes").expect("nodes are registered");
    let lease_kind = *registry.resolve("leases").expect("leases are registered");
    let nodes = informer::start(
        client.clone(),
        node_kind,
        changed.clone(),
        informer::every_change,
    );
    // A renewal never makes a node unreachable, and an agent that comes back also writes its Node's
    // status (which wakes the controller): renewals need not wake it, the 1 s tick looks at expiry.
    // With hundreds of nodes renewing every few seconds, waking on each meant a pass per renewal.
    let leases = informer::start(client.clone(), lease_kind, changed.clone(), |_, _| false);
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if nodes.synced() && leases.synced() {
            reconcile(&client, &node_kind, &nodes, &leases, grace).await;
        }
    }
}

fn has_unreachable_taint(node: &Object) -> bool {
    node.spec()["taints"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t["key"] == UNREACHABLE_TAINT))
}

async fn reconcile(
    client: &Client,
    kind: &KindInfo,
    nodes: &Cache,
    leases: &Cache,
    grace: Duration,
) {
    let now = unix_now();
    let leases: HashMap<String, Object> = leases
        .select(|l| l.metadata.namespace == NODE_LEASE_NAMESPACE)
        .into_iter()
        .map(|l| (l.metadata.name.clone(), l))
        .collect();
    for node in nodes.list() {
        let lease = leases.get(&node.metadata.name);
        let renewed_until = lease.and_then(|l| {
            let duration = l.spec()["leaseDurationSeconds"].as_i64().unwrap_or(40);
            lease_expiry(l).map(|expiry| expiry - duration + grace.as_secs() as i64)
        });
        let alive = renewed_until.is_some_and(|until| until >= now);
        let ready = node_condition(&node, "Ready");
        let result = if !alive && lease.is_some() && ready.as_deref() != Some("Unknown") {
            tracing::warn!(node = %node.metadata.name, "node agent stopped posting status; marking the node unreachable");
            mark_unreachable(client, kind, &node).await
        } else if alive && ready.as_deref() == Some("True") && has_unreachable_taint(&node) {
            tracing::info!(node = %node.metadata.name, "node agent is back; removing the unreachable taints");
            set_taints(client, kind, &node, false).await
        } else if !alive && ready.as_deref() == Some("Unknown") && !has_unreachable_taint(&node) {
            set_taints(client, kind, &node, true).await
        } else {
            Ok(())
        };
        if let Err(e) = result {
            tracing::warn!(node = %node.metadata.name, error = %e, "updating node health failed; will retry");
        }
    }
}

async fn mark_unreachable(
    client: &Client,
    kind: &KindInfo,
    node: &Object,
) -> Result<(), vmo_client::ClientError> {
    let mut conditions: Vec<Value> = node.status()["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let now = now_rfc3339();
    let unknown = json!({
        "type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
        "message": "vmo agent stopped posting node status",
        "lastHeartbeatTime": conditions.iter().find(|c| c["type"] == "Ready").and_then(|c| c["lastHeartbeatTime"].as_str()).unwrap_or(&now),
        "lastTransitionTime": now,
    });
    conditions.retain(|c| c["type"] != "Ready");
    conditions.push(unknown);
    let patch = json!({"status": {"conditions": conditions}});
    let fresh = client
        .merge_patch(
            kind,
            "",
            &node.metadata.name,
            Some("status"),
            &patch,
            "vmo-node-lifecycle",
        )
        .await?;
    set_taints(client, kind, &fresh, true).await
}

async fn set_taints(
    client: &Client,
    kind: &KindInfo,
    node: &Object,
    unreachable: bool,
) -> Result<(), vmo_client::ClientError> {
    let mut taints: Vec<Value> = node.spec()["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    taints.retain(|t| t["key"] != UNREACHABLE_TAINT);
    if unreachable {
        for effect in ["NoSchedule", "NoExecute"] {
            taints.push(
                json!({"key": UNREACHABLE_TAINT, "effect": effect, "timeAdded": now_rfc3339()}),
            );
        }
    }
    let mut updated = node.clone();
    let spec = updated.body.entry("spec").or_insert_with(|| json!({}));
    if !spec.is_object() {
        *spec = json!({});
    }
    if taints.is_empty() {
        spec.as_object_mut().map(|s| s.remove("taints"));
    } else {
        spec["taints"] = Value::Array(taints);
    }
    client.update(kind, &updated, None).await.map(|_| ())
}
