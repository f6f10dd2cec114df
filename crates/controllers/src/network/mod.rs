//! Network controllers. The node address controller gives every node that runs the default network
//! on a node bridge (`vmo.io/pod-network: bridge`) its own share of the cluster's pod CIDR in
//! `spec.podCIDR`, as Kubernetes' node IPAM does: the node's agent serves its VMs addresses from
//! that share by DHCP and routes the other nodes' shares to them. The service controller gives
//! LoadBalancer Services their addresses and announcing nodes (MetalLB semantics).

pub mod node_cidrs;
pub mod services;

use std::sync::Arc;
use vmo_api::Registry;
use vmo_client::Client;

/// Runs the network controllers until the task is dropped.
pub async fn run(client: Client, registry: Arc<Registry>) {
    tokio::join!(
        node_cidrs::run(client.clone(), registry.clone()),
        services::run(client, registry),
    );
}
