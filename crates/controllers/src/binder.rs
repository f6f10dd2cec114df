//! The interim binder: until the scheduler lands, every unbound instance goes to one node (the node
//! of `vmo up`), if that node is Ready and has the memory the guest asks for; otherwise the
//! instance stays Pending with a `PodScheduled=False/Unschedulable` condition and a
//! `FailedScheduling` event that say why (the VM then shows ErrorUnschedulable).

use crate::informer;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use vmo_api::kinds::core::node_condition;
use vmo_api::kinds::kubevirt::VmiSpec;
use vmo_api::{Object, Quantity, Registry};
use vmo_client::events::{EventType, Recorder};
use vmo_client::Client;

/// Runs the binder for `node` until the task is dropped.
pub async fn run(client: Client, registry: Arc<Registry>, node: String) {
    let events = Recorder::new(client.clone(), "vmo-binder", &node);
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
        for vmi in vmis.select(unbound) {
            let status = match why_not(target.as_ref(), &node, &vmi) {
                None => json!({"phase": "Scheduled", "nodeName": node, "conditions": []}),
                Some(why) => json!({"phase": "Pending", "conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": format!("0/1 nodes available: {why}"),
                }]}),
            };
            let mut updated = vmi.clone();
            updated.body.insert("status".into(), status);
            if updated == vmi {
                continue;
            }
            match client.update(&vmi_kind, &updated, Some("status")).await {
                Ok(_) => {
                    if let Some(message) = updated.status()["conditions"][0]["message"].as_str() {
                        events
                            .record(&vmi, EventType::Warning, "FailedScheduling", message)
                            .await;
                    }
                }
                Err(e) if !e.is_conflict() && !e.is_not_found() => {
                    tracing::warn!(vmi = %vmi.display_name(), error = %e, "binding failed");
                }
                Err(_) => {}
            }
        }
    }
}

/// Why `vmi` cannot go to `node` (None: it can).
fn why_not(node: Option<&Object>, name: &str, vmi: &Object) -> Option<String> {
    let Some(node) = node.filter(|n| node_condition(n, "Ready").as_deref() == Some("True")) else {
        return Some(format!("node {name} is not ready"));
    };
    let wanted = serde_json::from_value::<VmiSpec>(vmi.spec().clone())
        .ok()
        .and_then(|spec| spec.guest_memory_bytes().ok());
    let allocatable = node.status()["allocatable"]["memory"]
        .as_str()
        .and_then(|m| Quantity::parse(m).ok())
        .and_then(|q| q.value_ceil())
        .and_then(|b| u64::try_from(b).ok());
    match (wanted, allocatable) {
        (Some(wanted), Some(allocatable)) if wanted > allocatable => Some(format!(
            "1 insufficient memory (the VM asks for {} MiB; node {name} has {} MiB allocatable)",
            wanted >> 20,
            allocatable >> 20
        )),
        _ => None,
    }
}

fn unbound(vmi: &Object) -> bool {
    vmi.metadata.deletion_timestamp.is_none()
        && vmi.status()["nodeName"].as_str().unwrap_or("").is_empty()
}
