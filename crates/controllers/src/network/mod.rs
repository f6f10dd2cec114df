//! Network controllers. The node address controller gives every node that runs the default network
//! on a node bridge (`vmo.io/pod-network: bridge`) its own share of the cluster's pod CIDR in
//! `spec.podCIDR`, as Kubernetes' node IPAM does: the node's agent serves its VMs addresses from
//! that share by DHCP and routes the other nodes' shares to them.

pub mod node_cidrs;

pub use node_cidrs::run;
