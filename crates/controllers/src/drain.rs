//! Draining a node, as `kubectl drain` and vSphere's maintenance mode do it: each instance's
//! fate follows its eviction strategy (`LiveMigrate` moves it by live migration, or blocks the
//! drain when it cannot move; `LiveMigrateIfPossible` moves it or shuts it down; `None` shuts it
//! down; `External` leaves it). The plan is computed without writing anything, so `vmo node drain
//! --dry-run` and the UI's drain report show exactly what a drain would do; [`start`] then cordons
//! the node and begins every eviction (the migration controller keeps to the parallel limits).

use crate::migration::{blockers, choose_target, request_migration};
use crate::scheduler::VolumeIndex;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use vmo_api::kinds::settings::{ClusterSettingsSpec, CLUSTER_SETTINGS_NAME};
use vmo_api::{Object, Registry};
use vmo_client::{Client, ClientError};

/// What draining does to one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Migrate { target: String },
    Stop { why: String },
    Leave { why: String },
    Blocked { why: String },
}

/// One instance on the node and its fate.
#[derive(Debug, Clone)]
pub struct Eviction {
    pub vmi: Object,
    pub strategy: String,
    pub plan: Plan,
}

/// Decides each instance's fate (no writes).
pub fn plan_drain(
    node: &str,
    nodes: &[Object],
    vmis: &[Object],
    settings: &ClusterSettingsSpec,
    volumes: &VolumeIndex,
) -> Vec<Eviction> {
    let source = nodes.iter().find(|n| n.metadata.name == node);
    let mut out = Vec::new();
    // Targets fill up as the plan goes on: later VMs see earlier ones' reservations.
    let mut planned: Vec<Object> = vmis.to_vec();
    for vmi in vmis.iter().filter(|v| on_node(v, node)) {
        let strategy = settings.eviction_strategy_for(vmi.spec()["evictionStrategy"].as_str());
        let migrate = || {
            let blocked = blockers(vmi, source, volumes);
            if !blocked.is_empty() {
                return Err(blocked.join("; "));
            }
            choose_target(vmi, node, &BTreeMap::new(), nodes, &planned)
                .map_err(|why| format!("no node can take it: {why}"))
        };
        let plan = match strategy.as_str() {
            "LiveMigrate" => match migrate() {
                Ok(target) => Plan::Migrate { target },
                Err(why) => Plan::Blocked { why },
            },
            "LiveMigrateIfPossible" => match migrate() {
                Ok(target) => Plan::Migrate { target },
                Err(why) => Plan::Stop {
                    why: format!("cannot live-migrate ({why})"),
                },
            },
            "External" => Plan::Leave {
                why: "evictionStrategy External: left to an external controller".into(),
            },
            _ => Plan::Stop {
                why: "evictionStrategy None".into(),
            },
        };
        if let Plan::Migrate { target } = &plan {
            if let Some(p) = planned
                .iter_mut()
                .find(|p| p.metadata.uid == vmi.metadata.uid)
            {
                p.body.entry("status").or_insert_with(|| json!({}))["migrationState"] =
                    json!({"migrationUid": "planned", "sourceNode": node, "targetNode": target});
            }
        }
        out.push(Eviction {
            vmi: vmi.clone(),
            strategy,
            plan,
        });
    }
    out
}

/// True while `vmi` runs (or is about to run) on `node`.
pub fn on_node(vmi: &Object, node: &str) -> bool {
    vmi.status()["nodeName"].as_str() == Some(node)
        && !matches!(vmi.status()["phase"].as_str(), Some("Succeeded" | "Failed"))
}

/// Cordons (`true`) or uncordons a node.
pub async fn set_unschedulable(
    client: &Client,
    name: &str,
    value: bool,
) -> Result<(), ClientError> {
    let registry = Registry::builtin();
    let kind = registry.resolve("nodes").expect("nodes are registered");
    let patch = json!({"spec": {"unschedulable": if value { json!(true) } else { json!(null) }}});
    client
        .merge_patch(kind, "", name, None, &patch, "vmo-drain")
        .await?;
    Ok(())
}

/// What a drain plan reads.
#[derive(Debug)]
pub struct ClusterView {
    pub nodes: Vec<Object>,
    pub vmis: Vec<Object>,
    pub settings: ClusterSettingsSpec,
    pub volumes: VolumeIndex,
}

/// Reads what a drain plan needs.
pub async fn load(client: &Client) -> Result<ClusterView, ClientError> {
    let registry = Registry::builtin();
    let kind = |n: &str| *registry.resolve(n).expect("registered");
    let list = |n: &'static str| {
        let k = kind(n);
        async move { client.list(&k, None, "").await.map(|l| l.items) }
    };
    let nodes = list("nodes").await?;
    let vmis = list("vmi").await?;
    let volumes = VolumeIndex::new(
        &list("persistentvolumeclaims").await?,
        &list("persistentvolumes").await?,
        &list("storageclasses").await?,
    );
    let settings = client
        .get(&kind("clustersettings"), "", CLUSTER_SETTINGS_NAME)
        .await
        .ok();
    Ok(ClusterView {
        nodes,
        vmis,
        settings: ClusterSettingsSpec::of(settings.as_ref()),
        volumes,
    })
}

impl Plan {
    /// The plan's action as the API reports it.
    pub fn action(&self) -> &'static str {
        match self {
            Plan::Migrate { .. } => "Migrate",
            Plan::Stop { .. } => "Stop",
            Plan::Leave { .. } => "Leave",
            Plan::Blocked { .. } => "Blocked",
        }
    }
}

/// The plan as the API answers it (`DrainPlan`, `subresources.vmo.io/v1`).
pub fn plan_json(node: &str, plan: &[Eviction], started: bool) -> Value {
    let items: Vec<Value> = plan
        .iter()
        .map(|e| {
            let mut item = json!({
                "namespace": e.vmi.metadata.namespace,
                "name": e.vmi.metadata.name,
                "evictionStrategy": e.strategy,
                "action": e.plan.action(),
            });
            match &e.plan {
                Plan::Migrate { target } => item["target"] = json!(target),
                Plan::Stop { why } | Plan::Leave { why } | Plan::Blocked { why } => {
                    item["reason"] = json!(why)
                }
            }
            item
        })
        .collect();
    json!({"apiVersion": "subresources.vmo.io/v1", "kind": "DrainPlan", "node": node,
           "started": started, "items": items})
}

/// Begins one eviction: a migration is requested (its name returned) or the instance is deleted
/// (shut down); a `Leave` does nothing. A `Blocked` one must not get here.
pub async fn evict(client: &Client, e: &Eviction) -> Result<Option<String>, ClientError> {
    let (ns, name) = (&e.vmi.metadata.namespace, &e.vmi.metadata.name);
    match &e.plan {
        Plan::Migrate { .. } => Ok(Some(
            request_migration(client, ns, name, None)
                .await?
                .metadata
                .name,
        )),
        Plan::Stop { .. } => {
            let registry = Registry::builtin();
            let kind = registry.resolve("vmi").expect("registered");
            match client.delete(kind, ns, name, "Background").await {
                Err(e) if !e.is_not_found() => Err(e),
                _ => Ok(None),
            }
        }
        Plan::Leave { .. } | Plan::Blocked { .. } => Ok(None),
    }
}

/// Cordons `node` and begins every eviction of `plan` (which must have nothing blocked).
pub async fn start(client: &Client, node: &str, plan: &[Eviction]) -> Result<(), ClientError> {
    set_unschedulable(client, node, true).await?;
    for e in plan {
        evict(client, e).await?;
    }
    Ok(())
}
