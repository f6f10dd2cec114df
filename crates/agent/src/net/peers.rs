//! Keeps this node's networking in step with the cluster: configures the default network once the
//! node has its share of the pod CIDR, routes every other node's share to that node, keeps the
//! VLAN tunnels' flood lists to the other nodes, and removes VLAN bridges no tap uses.

use super::links;
use super::{Network, PodMode};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use vmo_api::kinds::network::{Cidr, POD_NETWORK_ANNOTATION, VLAN_DATAPATH_ANNOTATION};
use vmo_api::kinds::settings::ClusterSettingsSpec;
use vmo_api::{Object, Registry};
use vmo_client::{informer, Client};

/// The routing protocol number marking routes this agent made (`ip route show proto 77`).
const ROUTE_PROTO: &str = "77";

/// Runs until the task is dropped.
pub async fn run(client: Client, network: Arc<Network>, node_name: String) {
    if network.pod_mode == PodMode::User && network.vlan_datapath == super::VlanDatapath::None {
        return;
    }
    let registry = Registry::builtin();
    let changed = Arc::new(Notify::new());
    let nodes = informer::start(
        client.clone(),
        *registry.resolve("nodes").expect("nodes are registered"),
        changed.clone(),
        informer::every_change,
    );
    let settings = informer::start(
        client,
        *registry
            .resolve("clustersettings")
            .expect("cluster settings are registered"),
        changed.clone(),
        informer::every_change,
    );
    let mut last_error = String::new();
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
        let me = all.iter().find(|n| n.metadata.name == node_name);
        let mut error = String::new();
        if network.pod_mode == PodMode::Bridge {
            if let Some(share) = me.and_then(share_of) {
                if let Err(e) = network.pod.configure(share, spec.network.pod_cidr()).await {
                    error = format!("configuring the default network: {e}");
                }
            }
            let routes: BTreeMap<Cidr, Ipv4Addr> = all
                .iter()
                .filter(|n| n.metadata.name != node_name)
                .filter(|n| annotation(n, POD_NETWORK_ANNOTATION) == Some("bridge"))
                .filter_map(|n| Some((share_of(n)?, address_of(n)?)))
                .filter(|(_, ip)| Some(*ip) != network.node_ip)
                .collect();
            if let Err(e) = sync_routes(&routes).await {
                error = format!("routing other nodes' pod addresses: {e}");
            }
        }
        let peers: BTreeSet<Ipv4Addr> = all
            .iter()
            .filter(|n| n.metadata.name != node_name)
            .filter(|n| annotation(n, VLAN_DATAPATH_ANNOTATION) == Some("bridge-per-vlan"))
            .filter_map(address_of)
            .collect();
        network.vlans.set_peers(peers).await;
        network.vlans.prune().await;
        if error != last_error {
            if !error.is_empty() {
                tracing::error!(error, "node networking");
            }
            last_error = error;
        }
    }
}

fn annotation<'a>(node: &'a Object, key: &str) -> Option<&'a str> {
    node.metadata.annotations.get(key).map(String::as_str)
}

fn share_of(node: &Object) -> Option<Cidr> {
    Cidr::parse(node.spec()["podCIDR"].as_str()?).ok()
}

fn address_of(node: &Object) -> Option<Ipv4Addr> {
    node.status()["addresses"]
        .as_array()?
        .iter()
        .find(|a| a["type"] == "InternalIP")?["address"]
        .as_str()?
        .parse()
        .ok()
}

/// Makes the routes this agent owns exactly `routes` (share via node address).
async fn sync_routes(routes: &BTreeMap<Cidr, Ipv4Addr>) -> Result<(), links::LinkError> {
    let out = links::ip(&["-o", "-4", "route", "show", "proto", ROUTE_PROTO]).await?;
    let present: BTreeMap<String, String> = out
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let dest = words.next()?.to_string();
            words.find(|w| *w == "via")?;
            Some((dest, words.next()?.to_string()))
        })
        .collect();
    for (share, via) in routes {
        let (dest, via) = (share.to_string(), via.to_string());
        if present.get(&dest) != Some(&via) {
            links::ip(&["route", "replace", &dest, "via", &via, "proto", ROUTE_PROTO]).await?;
        }
    }
    for dest in present.keys() {
        if !routes.keys().any(|c| c.to_string() == *dest) {
            links::ip(&["route", "del", dest, "proto", ROUTE_PROTO]).await?;
        }
    }
    Ok(())
}
