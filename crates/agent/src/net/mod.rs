//! Host networking for VM NICs: each NIC that is not QEMU's user-mode NAT is a tap on a bridge.
//!
//! - The default network (KubeVirt's `pod` network, `masquerade` binding) is a node bridge holding
//!   the first address of the node's share of the pod CIDR (`spec.podCIDR`, given by the node
//!   address controller). The agent answers DHCP there with an address it reserves per NIC,
//!   masquerades traffic leaving the pod CIDR, and routes other nodes' shares to those nodes.
//!   An agent that may not change links (no root) falls back to QEMU's user-mode NAT.
//! - VLAN networks (Multus attachments with a bridge config): on a kernel with VLAN-aware bridges
//!   each tap joins the configured bridge (br0) with its VLAN as PVID, untagged; elsewhere each
//!   VLAN has its own bridge whose uplink is a VXLAN tunnel with VNI = VLAN ID to every other node.
//!
//! - Services: LoadBalancer addresses and node ports forwarded to VMs, the announcing node holding
//!   the address (`services`).
//!
//! The datapaths are reported on the Node. Taps are removed with their instance, VLAN bridges
//! when their last tap goes.

pub mod dhcp;
pub mod links;
pub mod nics;
pub mod peers;
pub mod pod;
pub mod services;
pub mod spoof;
pub mod vlan;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use vmo_api::Object;

/// How the agent runs the default network (`--pod-network`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodNetworkChoice {
    /// `bridge` when the agent may change links, else `user`.
    Auto,
    Bridge,
    User,
}

/// The default network's datapath on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodMode {
    Bridge,
    User,
}

/// The VLAN networks' datapath on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VlanDatapath {
    VlanAwareBridge,
    BridgePerVlan,
    /// No VLAN networks here (the agent may not change links).
    None,
}

impl VlanDatapath {
    /// The name reported on the Node.
    pub fn name(self) -> &'static str {
        match self {
            Self::VlanAwareBridge => "vlan-aware-bridge",
            Self::BridgePerVlan => "bridge-per-vlan",
            Self::None => "none",
        }
    }
}

/// This node's networking: chosen datapaths, names, and the state the tasks share.
#[derive(Debug)]
pub struct Network {
    pub pod_mode: PodMode,
    pub vlan_datapath: VlanDatapath,
    /// The node's address (the VXLAN tunnels' local end, the next hop for its pod share).
    pub node_ip: Option<Ipv4Addr>,
    /// Four hex digits naming this agent's links apart from another agent's on the same host.
    pub tag: String,
    pub data_dir: PathBuf,
    pub pod: pod::PodNetwork,
    pub vlans: vlan::VlanNetworks,
}

impl Network {
    /// Chooses the datapaths this host supports.
    pub async fn detect(
        choice: PodNetworkChoice,
        node_name: &str,
        data_dir: PathBuf,
        node_ip: Option<&str>,
    ) -> Arc<Self> {
        let allowed = links::may_change_links();
        let pod_mode = match choice {
            PodNetworkChoice::User => PodMode::User,
            PodNetworkChoice::Bridge | PodNetworkChoice::Auto if allowed => PodMode::Bridge,
            PodNetworkChoice::Bridge => {
                tracing::warn!(
                    "--pod-network bridge needs root (CAP_NET_ADMIN); using QEMU user-mode NAT"
                );
                PodMode::User
            }
            PodNetworkChoice::Auto => PodMode::User,
        };
        let tag = tag_for(node_name, &data_dir);
        let vlan_datapath = if !allowed {
            VlanDatapath::None
        } else if links::vlan_filtering_supported(&format!("vmo{tag}probe")).await {
            VlanDatapath::VlanAwareBridge
        } else {
            VlanDatapath::BridgePerVlan
        };
        tracing::info!(
            ?pod_mode,
            vlan = vlan_datapath.name(),
            "network datapaths chosen"
        );
        let node_ip = node_ip.and_then(|ip| ip.parse().ok());
        Arc::new(Self {
            pod_mode,
            vlan_datapath,
            node_ip,
            pod: pod::PodNetwork::new(&tag, &data_dir),
            vlans: vlan::VlanNetworks::new(vlan_datapath, node_ip),
            tag,
            data_dir,
        })
    }
}

/// FNV-1a, for short stable names.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for part in parts {
        for b in part.iter().chain([&0u8]) {
            h = (h ^ *b as u64).wrapping_mul(0x100000001b3);
        }
    }
    h
}

fn tag_for(node_name: &str, data_dir: &std::path::Path) -> String {
    let h = fnv(&[node_name.as_bytes(), data_dir.to_string_lossy().as_bytes()]);
    format!("{:04x}", h & 0xffff)
}

/// A NIC's MAC address: `macAddress` when the spec sets one, else derived from the owning
/// VirtualMachine's UID (the instance's own for a bare instance) and the interface name, so it
/// stays the same across restarts (new instances of one VM) and migrations, and adding a NIC
/// does not shift the others.
pub fn mac_of(vmi: &Object, interface: &str, explicit: Option<&str>) -> String {
    if let Some(mac) = explicit {
        return mac.to_ascii_lowercase();
    }
    let owner = vmi
        .metadata
        .owner_references
        .iter()
        .find(|r| r.kind == "VirtualMachine")
        .map(|r| r.uid.as_str())
        .unwrap_or(&vmi.metadata.uid);
    let b = fnv(&[owner.as_bytes(), interface.as_bytes()]).to_be_bytes();
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[0], b[1], b[2], b[3], b[4]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vmi(uid: &str, owner: Option<&str>) -> Object {
        let mut v = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "a", "namespace": "d", "uid": uid}, "spec": {}});
        if let Some(o) = owner {
            v["metadata"]["ownerReferences"] = json!([{"apiVersion": "kubevirt.io/v1",
                "kind": "VirtualMachine", "name": "a", "uid": o, "controller": true}]);
        }
        Object::from_value(v).unwrap()
    }

    #[test]
    fn macs_follow_the_vm_not_the_instance_and_differ_per_interface() {
        let first = mac_of(&vmi("i1", Some("vm")), "default", None);
        let restarted = mac_of(&vmi("i2", Some("vm")), "default", None);
        assert_eq!(first, restarted);
        assert_ne!(first, mac_of(&vmi("i1", Some("vm")), "vlan30", None));
        assert_ne!(first, mac_of(&vmi("i1", Some("other")), "default", None));
        assert!(first.starts_with("02:"), "locally administered: {first}");
        assert_eq!(
            mac_of(&vmi("i1", None), "x", Some("02:AA:00:00:00:01")),
            "02:aa:00:00:00:01"
        );
    }
}
