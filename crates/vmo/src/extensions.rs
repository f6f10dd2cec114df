//! The action subresources `vmo up` adds to its API server (see vmo_apiserver::extension), served
//! through the in-process client with the controllers' logic:
//!
//! ```text
//! POST /apis/subresources.vmo.io/v1/nodes/NAME/drain?dryRun=All
//!      -> 200 DrainPlan {node, started: false, items: [{namespace, name, evictionStrategy,
//!         action: Migrate|Stop|Leave|Blocked, target?, reason?}]}; nothing changes
//! POST /apis/subresources.vmo.io/v1/nodes/NAME/drain
//!      -> 200 DrainPlan {started: true, ...}: the node is cordoned and every eviction begun
//!         (watch the VMIs and migrations for progress), or 409 naming the VMs that cannot
//!         move, nothing changed
//! ```
//!
//! `vmo node drain` plans with the same code and then follows the drain to its end.

use std::sync::Arc;
use vmo_api::Status;
use vmo_apiserver::extension::{Extension, ExtensionCall, ExtensionFuture};
use vmo_apiserver::ApiServer;
use vmo_client::{Client, ClientError};
use vmo_controllers::drain::{load, plan_drain, plan_json, start, Plan};

/// Registers every extension on `server`.
pub fn register(server: &ApiServer, client: &Client) {
    server.extend(Arc::new(Drain {
        client: client.clone(),
    }));
}

fn status_of(e: ClientError) -> Status {
    match e {
        ClientError::Api(s) => *s,
        other => Status::unavailable(other.to_string()),
    }
}

/// `nodes/NAME/drain`.
#[derive(Debug)]
struct Drain {
    client: Client,
}

impl Extension for Drain {
    fn path(&self) -> (&'static str, &'static str) {
        ("nodes", "drain")
    }

    fn call(&self, call: ExtensionCall) -> ExtensionFuture {
        let client = self.client.clone();
        Box::pin(async move { drain(&client, call).await })
    }
}

async fn drain(client: &Client, call: ExtensionCall) -> Result<serde_json::Value, Status> {
    if call.method != http::Method::POST {
        return Err(Status::method_not_allowed(format!(
            "{} is not supported on nodes/drain: POST (with ?dryRun=All for the plan alone)",
            call.method
        )));
    }
    let node = call.name.as_str();
    let view = load(client).await.map_err(status_of)?;
    if !view.nodes.iter().any(|n| n.metadata.name == node) {
        return Err(Status::not_found("nodes", node));
    }
    let plan = plan_drain(node, &view.nodes, &view.vmis, &view.settings, &view.volumes);
    if call.dry_run {
        return Ok(plan_json(node, &plan, false));
    }
    let blocked: Vec<String> = plan
        .iter()
        .filter_map(|e| match &e.plan {
            Plan::Blocked { why } => Some(format!("{} ({why})", e.vmi.display_name())),
            _ => None,
        })
        .collect();
    if !blocked.is_empty() {
        return Err(Status::conflict(
            "nodes",
            node,
            &format!(
                "the drain would strand VMs that cannot move, so nothing was changed: {}",
                blocked.join("; ")
            ),
        ));
    }
    start(client, node, &plan).await.map_err(status_of)?;
    Ok(plan_json(node, &plan, true))
}
