//! Hands out node shares of the pod CIDR. A share once given is never moved (VMs hold addresses
//! from it); a node that is deleted frees its share. Shares come lowest first, so a cluster's
//! addresses are predictable.

use crate::informer;
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use vmo_api::kinds::network::{Cidr, POD_NETWORK_ANNOTATION};
use vmo_api::kinds::settings::ClusterSettingsSpec;
use vmo_api::{Object, Registry};
use vmo_client::events::{EventType, Recorder};
use vmo_client::Client;

/// Runs the node address controller until the task is dropped.
pub async fn run(client: Client, registry: Arc<Registry>) {
    let changed = Arc::new(Notify::new());
    let node_kind = *registry.resolve("nodes").expect("nodes are registered");
    let settings_kind = *registry
        .resolve("clustersettings")
        .expect("cluster settings are registered");
    let nodes = informer::start(
        client.clone(),
        node_kind,
        changed.clone(),
        informer::every_change,
    );
    let settings = informer::start(
        client.clone(),
        settings_kind,
        changed.clone(),
        informer::every_change,
    );
    let events = Recorder::new(client.clone(), "vmo-node-cidr-controller", "");
    let mut exhausted_reported = BTreeSet::new();
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        if !nodes.synced() || !settings.synced() {
            continue;
        }
        let spec = ClusterSettingsSpec::among(&settings.list());
        let all = nodes.list();
        let plan = assign(
            &all,
            spec.network.pod_cidr(),
            spec.network.node_cidr_mask_size(),
        );
        for node in plan.exhausted {
            if exhausted_reported.insert(node.metadata.uid.clone()) {
                let message = format!(
                    "no share of the pod CIDR {} is left for this node: its VMs cannot use the default network",
                    spec.network.pod_cidr()
                );
                events
                    .record(&node, EventType::Warning, "PodCIDRExhausted", &message)
                    .await;
            }
        }
        for (node, cidr) in plan.given {
            // The resourceVersion makes the patch fail if the node changed meanwhile (another
            // writer may have set a share); the next pass sees the new state.
            let patch = json!({
                "metadata": {"resourceVersion": node.metadata.resource_version},
                "spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]},
            });
            match client
                .merge_patch(
                    &node_kind,
                    "",
                    &node.metadata.name,
                    None,
                    &patch,
                    "vmo-node-cidr-controller",
                )
                .await
            {
                Ok(_) => tracing::info!(node = %node.metadata.name, %cidr, "pod CIDR share given"),
                Err(e) => {
                    tracing::debug!(node = %node.metadata.name, error = %e, "could not give a pod CIDR share yet")
                }
            }
        }
    }
}

/// What one pass does.
#[derive(Debug, Default)]
pub struct Assignment {
    /// Nodes that get a share now.
    pub given: Vec<(Object, Cidr)>,
    /// Nodes that need one but none is left.
    pub exhausted: Vec<Object>,
}

/// Gives each bridge-networked node without a share the lowest free one.
pub fn assign(nodes: &[Object], cluster: Cidr, size: u8) -> Assignment {
    let taken: BTreeSet<u32> = nodes
        .iter()
        .filter_map(|n| n.spec()["podCIDR"].as_str())
        .filter_map(|t| Cidr::parse(t).ok())
        .filter(|c| c.prefix == size && cluster.contains(c.network))
        .map(|c| (u32::from(c.network) - u32::from(cluster.network)) >> (32 - size))
        .collect();
    let mut wanting: Vec<&Object> = nodes
        .iter()
        .filter(|n| {
            n.metadata
                .annotations
                .get(POD_NETWORK_ANNOTATION)
                .map(String::as_str)
                == Some("bridge")
                && n.spec()["podCIDR"].as_str().is_none_or(str::is_empty)
                && n.metadata.deletion_timestamp.is_none()
        })
        .collect();
    wanting.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut out = Assignment::default();
    let mut index = 0u32;
    for node in wanting {
        while taken.contains(&index) {
            index += 1;
        }
        match cluster.subnet(size, index) {
            Some(c) => {
                out.given.push((node.clone(), c));
                index += 1;
            }
            None => out.exhausted.push(node.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, mode: &str, cidr: Option<&str>) -> Object {
        let mut o = Object::from_value(json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "uid": name, "annotations": {POD_NETWORK_ANNOTATION: mode}},
            "spec": {}}))
        .expect("node");
        if let Some(c) = cidr {
            o.body["spec"]["podCIDR"] = json!(c);
        }
        o
    }

    #[test]
    fn free_shares_go_lowest_first_and_taken_ones_stay() {
        let cluster = Cidr::parse("100.64.0.0/22").unwrap();
        let nodes = [
            node("b", "bridge", None),
            node("a", "bridge", Some("100.64.0.0/24")),
            node("c", "bridge", None),
            node("user", "user", None),
        ];
        let plan = assign(&nodes, cluster, 24);
        let given: Vec<(String, String)> = plan
            .given
            .iter()
            .map(|(n, c)| (n.metadata.name.clone(), c.to_string()))
            .collect();
        assert_eq!(
            given,
            [
                ("b".to_string(), "100.64.1.0/24".to_string()),
                ("c".to_string(), "100.64.2.0/24".to_string())
            ]
        );
        assert!(plan.exhausted.is_empty());
    }

    #[test]
    fn a_full_pod_cidr_is_reported_not_overcommitted() {
        let cluster = Cidr::parse("100.64.0.0/23").unwrap();
        let nodes = [
            node("a", "bridge", None),
            node("b", "bridge", None),
            node("c", "bridge", None),
        ];
        let plan = assign(&nodes, cluster, 24);
        assert_eq!(plan.given.len(), 2);
        assert_eq!(plan.exhausted.len(), 1);
        assert_eq!(plan.exhausted[0].metadata.name, "c");
    }
}
