//! VLAN networks. With VLAN-aware bridges (the reference architecture's br0 with vlan_filtering)
//! a tap joins the configured bridge with its VLAN as PVID, untagged. Without them (kernels like
//! the one these tests run on) each VLAN has a bridge `vmo-v<VLAN>` whose uplink is a VXLAN device
//! `vmo-x<VLAN>` (VNI = VLAN ID, port 4789) flooding to every other node: VMs on one VLAN share one
//! L2 segment across nodes, and different VLANs never meet. VLAN bridges are shared by all agents
//! on a host (one segment per VLAN per host) and removed when their last tap goes.

use super::links::{self, LinkError};
use super::VlanDatapath;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use vmo_api::kinds::network::{Attachment, NetworkSettings};

/// The VXLAN port (IANA).
const VXLAN_PORT: &str = "4789";
/// The VNI of untagged attachments (VLAN 0), outside the VLAN ID range.
const UNTAGGED_VNI: u32 = 4095;
const BRIDGE_PREFIX: &str = "vmo-v";
const TUNNEL_PREFIX: &str = "vmo-x";
/// The all-zero MAC: a VXLAN FDB entry for it floods to its destination.
const FLOOD: &str = "00:00:00:00:00:00";

#[derive(Debug)]
pub struct VlanNetworks {
    datapath: VlanDatapath,
    node_ip: Option<Ipv4Addr>,
    /// Other nodes' addresses (VXLAN flood destinations).
    peers: std::sync::Mutex<BTreeSet<Ipv4Addr>>,
    /// Serialises changes to shared bridges and tunnels.
    changing: tokio::sync::Mutex<()>,
}

/// The per-VLAN bridge.
pub fn bridge_for(vlan: u16) -> String {
    format!("{BRIDGE_PREFIX}{vlan}")
}

fn tunnel_for(vlan: u16) -> String {
    format!("{TUNNEL_PREFIX}{vlan}")
}

impl VlanNetworks {
    pub fn new(datapath: VlanDatapath, node_ip: Option<Ipv4Addr>) -> Self {
        Self {
            datapath,
            node_ip,
            peers: Default::default(),
            changing: Default::default(),
        }
    }

    /// Puts `tap` on the attachment's segment.
    pub async fn attach(
        &self,
        tap: &str,
        attachment: &Attachment,
        settings: &NetworkSettings,
    ) -> Result<(), LinkError> {
        let _changing = self.changing.lock().await;
        match self.datapath {
            VlanDatapath::None => Err(LinkError {
                command: format!("attaching {tap}"),
                output: "this node's agent may not change links (it needs root or CAP_NET_ADMIN), so it runs no VLAN networks".into(),
            }),
            VlanDatapath::VlanAwareBridge => {
                let bridge = settings
                    .vlan_filtering
                    .as_ref()
                    .map(|f| f.bridge().to_string())
                    .unwrap_or_else(|| "br0".into());
                if !links::exists(&bridge) {
                    return Err(LinkError {
                        command: format!("attaching {tap} to {bridge}"),
                        output: format!("the bridge {bridge} (ClusterSettings spec.network.vlanFiltering.bridgeIF) does not exist on this node"),
                    });
                }
                links::ensure_tap(tap, &bridge, attachment.mtu).await?;
                if attachment.vlan != 0 {
                    let vid = attachment.vlan.to_string();
                    links::run("bridge", &["vlan", "add", "dev", tap, "vid", &vid, "pvid", "untagged", "master"]).await?;
                    let _ = links::run("bridge", &["vlan", "del", "dev", tap, "vid", "1", "master"]).await;
                }
                Ok(())
            }
            VlanDatapath::BridgePerVlan => {
                let bridge = bridge_for(attachment.vlan);
                links::ensure_bridge(&bridge, false).await?;
                if let Some(local) = self.node_ip {
                    self.ensure_tunnel(attachment.vlan, &bridge, local).await?;
                }
                links::ensure_tap(tap, &bridge, attachment.mtu).await
            }
        }
    }

    async fn ensure_tunnel(
        &self,
        vlan: u16,
        bridge: &str,
        local: Ipv4Addr,
    ) -> Result<(), LinkError> {
        let tunnel = tunnel_for(vlan);
        if !links::exists(&tunnel) {
            let vni = if vlan == 0 {
                UNTAGGED_VNI
            } else {
                u32::from(vlan)
            };
            let (vni, local_text) = (vni.to_string(), local.to_string());
            let args = [
                "link",
                "add",
                &tunnel,
                "type",
                "vxlan",
                "id",
                &vni,
                "local",
                &local_text,
                "dstport",
                VXLAN_PORT,
            ];
            if let Err(e) = links::ip(&args).await {
                if !links::exists(&tunnel) {
                    return Err(e);
                }
            }
            // Guests keep their usual MTU of 1500: the tunnel has no lower device (which would
            // cap it at the uplink's MTU minus 50), so on a 1500-byte underlay the outer packets
            // are fragmented rather than large frames silently dropped. An underlay of 1550 bytes
            // or more avoids the fragmentation.
            links::ip(&["link", "set", &tunnel, "mtu", "1500"]).await?;
        }
        links::ip(&["link", "set", &tunnel, "master", bridge, "up"]).await?;
        let peers = self.peers.lock().expect("peers lock").clone();
        sync_flood_list(&tunnel, &peers).await
    }

    /// Sets the other nodes' addresses and brings every tunnel's flood list up to date.
    pub async fn set_peers(&self, peers: BTreeSet<Ipv4Addr>) {
        let peers: BTreeSet<Ipv4Addr> = peers
            .into_iter()
            .filter(|p| Some(*p) != self.node_ip)
            .collect();
        *self.peers.lock().expect("peers lock") = peers.clone();
        if self.datapath != VlanDatapath::BridgePerVlan {
            return;
        }
        let _changing = self.changing.lock().await;
        for tunnel in links::named_with(TUNNEL_PREFIX) {
            if let Err(e) = sync_flood_list(&tunnel, &peers).await {
                tracing::warn!(tunnel, error = %e, "could not update the tunnel's peers");
            }
        }
    }

    /// Removes VLAN bridges (and their tunnels) that no tap uses any more.
    pub async fn prune(&self) {
        if self.datapath != VlanDatapath::BridgePerVlan {
            return;
        }
        let _changing = self.changing.lock().await;
        for bridge in links::named_with(BRIDGE_PREFIX) {
            let Ok(vlan) = bridge[BRIDGE_PREFIX.len()..].parse::<u16>() else {
                continue;
            };
            let tunnel = tunnel_for(vlan);
            if links::ports(&bridge).iter().all(|p| *p == tunnel) {
                for link in [&tunnel, &bridge] {
                    if let Err(e) = links::delete(link).await {
                        tracing::warn!(link, error = %e, "could not remove an unused VLAN link");
                    }
                }
                tracing::info!(bridge, "removed an unused VLAN bridge");
            }
        }
    }
}

/// Makes `tunnel`'s flood entries exactly `peers`.
async fn sync_flood_list(tunnel: &str, peers: &BTreeSet<Ipv4Addr>) -> Result<(), LinkError> {
    let out = links::run("bridge", &["fdb", "show", "dev", tunnel]).await?;
    let present: BTreeSet<Ipv4Addr> = out
        .lines()
        .filter(|l| l.starts_with(FLOOD))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "dst")?;
            words.next()?.parse().ok()
        })
        .collect();
    for add in peers.difference(&present) {
        let dst = add.to_string();
        links::run(
            "bridge",
            &["fdb", "append", FLOOD, "dev", tunnel, "dst", &dst],
        )
        .await?;
    }
    for gone in present.difference(peers) {
        let dst = gone.to_string();
        links::run("bridge", &["fdb", "del", FLOOD, "dev", tunnel, "dst", &dst]).await?;
    }
    Ok(())
}
