//! The interim binder: until the scheduler lands, every unbound instance goes to one node (the node
//! of `vmo up`), if that node is Ready; otherwise it says why it waits.

use crate::informer;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use vmo_api::kinds::core::node_condition;
use vmo_api::{Object, Registry};
use vmo_client::Client;

/// Runs the binder for `node` until the task is dropped.
pub async fn run(client: Client, registry: Arc<Registry>, node: String) {
    let changed = Arc::new(Notify::new());
    let vmi_kind = *registry.resolve("vmi").expect("vmis are registered");
    let node_kind = *registry.resolve("nodes").expect("nodes are registered");
    let vmis = informer::start(
        client.clone(),
        vmi_kind,
        changed.clone(),
        informer::every_change,
    );
    let nodes = informer::start(
        client.clone(),
        node_kind,
        changed.clone(),
        informer::every_change,
    );
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let target = nodes.select(|n| n.metadata.name == node).into_iter().next();
        let ready = target
            .as_ref()
            .is_some_and(|n| node_condition(n, "Ready").as_deref() == Some("True"));
        for vmi in vmis.select(unbound) {
            let status = if ready {
                json!({"phase": "Scheduled", "nodeName": node, "conditions": []})
            } else {
                json!({"phase": "Pending", "conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": format!("0/1 nodes available: node {node} is not ready"),
                }]})
            };
            let mut updated = vmi.clone();
            updated.body.insert("status".into(), status);
            if updated == vmi {
                continue;
            }
            if let Err(e) = client.update(&vmi_kind, &updated, Some("status")).await {
                if !e.is_conflict() && !e.is_not_found() {
                    tracing::warn!(vmi = %vmi.display_name(), error = %e, "binding failed");
                }
            }
        }
    }
}

fn unbound(vmi: &Object) -> bool {
    vmi.metadata.deletion_timestamp.is_none()
        && vmi.status()["nodeName"].as_str().unwrap_or("").is_empty()
}
