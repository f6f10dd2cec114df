//! The default network on a node bridge: the bridge holds the gateway (the first address of the
//! node's share of the pod CIDR), the agent's DHCP server hands each NIC the address reserved for
//! it, and iptables masquerades what leaves the pod CIDR. A NIC's reservation is written to its
//! instance's run directory, so an agent restart serves the same address again.

use super::dhcp::{self, Lease, Leases};
use super::links::{self, LinkError};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use vmo_api::kinds::network::Cidr;

/// The file in an instance's run directory holding its default-network reservation.
const RESERVATION_FILE: &str = "pod-address.json";

/// The node's share and its gateway, once configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodShare {
    pub share: Cidr,
    pub cluster: Cidr,
    pub gateway: Ipv4Addr,
}

#[derive(Debug)]
pub struct PodNetwork {
    /// The node bridge (`vmo<tag>`).
    pub bridge: String,
    tag: String,
    vms_dir: PathBuf,
    share: Mutex<Option<PodShare>>,
    leases: Leases,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl PodNetwork {
    pub fn new(tag: &str, data_dir: &Path) -> Self {
        Self {
            bridge: format!("vmo{tag}"),
            tag: tag.to_string(),
            vms_dir: data_dir.join("vms"),
            share: Mutex::new(None),
            leases: Leases::default(),
            server: Mutex::new(None),
        }
    }

    /// The configured share, if any.
    pub fn share(&self) -> Option<PodShare> {
        *self.share.lock().expect("share lock")
    }

    /// Sets up (or checks) the bridge, gateway, forwarding, NAT and DHCP for `share` of `cluster`.
    pub async fn configure(&self, share: Cidr, cluster: Cidr) -> Result<(), LinkError> {
        let gateway = share.host(1).expect("a share has a first host");
        let wanted = PodShare {
            share,
            cluster,
            gateway,
        };
        links::ensure_bridge(&self.bridge, false).await?;
        let address = format!("{gateway}/{}", share.prefix);
        let current = links::ip(&["-o", "-4", "addr", "show", "dev", &self.bridge]).await?;
        if !current.contains(&format!(" {address} ")) {
            links::ip(&["addr", "flush", "dev", &self.bridge]).await?;
            links::ip(&["addr", "add", &address, "dev", &self.bridge]).await?;
        }
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| LinkError {
            command: "echo 1 > /proc/sys/net/ipv4/ip_forward".into(),
            output: e.to_string(),
        })?;
        self.nat(share, cluster).await?;
        let changed = self.share() != Some(wanted);
        *self.share.lock().expect("share lock") = Some(wanted);
        if changed {
            self.reload_leases();
        }
        let mut server = self.server.lock().expect("server lock");
        if changed || server.as_ref().is_none_or(|t| t.is_finished()) {
            if let Some(old) = server.take() {
                old.abort();
            }
            let (bridge, leases) = (self.bridge.clone(), self.leases.clone());
            *server = Some(tokio::spawn(async move {
                if let Err(e) = dhcp::serve(bridge.clone(), gateway, leases).await {
                    tracing::error!(bridge, error = %e, "the DHCP server stopped");
                }
            }));
        }
        Ok(())
    }

    /// Masquerading out of the pod CIDR, and forwarding to and from the bridge, in chains of this
    /// agent's own (rewritten whole each time).
    async fn nat(&self, share: Cidr, cluster: Cidr) -> Result<(), LinkError> {
        let nat_chain = format!("VMO-NAT-{}", self.tag);
        let fwd_chain = format!("VMO-FWD-{}", self.tag);
        let (share, cluster) = (share.to_string(), cluster.to_string());
        let nat_rules: Vec<Vec<&str>> = vec![
            vec!["-s", &share, "-d", &cluster, "-j", "RETURN"],
            vec!["-s", &share, "-j", "MASQUERADE"],
        ];
        let fwd_rules: Vec<Vec<&str>> = vec![
            vec!["-i", &self.bridge, "-j", "ACCEPT"],
            vec!["-o", &self.bridge, "-j", "ACCEPT"],
        ];
        chain("nat", "POSTROUTING", &nat_chain, &nat_rules).await?;
        chain("filter", "FORWARD", &fwd_chain, &fwd_rules).await
    }

    /// The address reserved for `mac` of the instance in `run_dir` (reserving one if needed).
    pub fn reserve(&self, run_dir: &Path, mac: &str, hostname: &str) -> Result<Ipv4Addr, String> {
        let share = self
            .share()
            .ok_or("this node has no share of the pod CIDR yet")?;
        let file = run_dir.join(RESERVATION_FILE);
        let saved = read_reservation(&file).filter(|(m, a)| m == mac && share.share.contains(*a));
        let mut leases = self.leases.lock().expect("leases lock");
        let address = match saved {
            Some((_, a)) => a,
            None => {
                let used: Vec<Ipv4Addr> = leases
                    .iter()
                    .filter(|(m, _)| m.as_str() != mac)
                    .map(|(_, l)| l.address)
                    .collect();
                let free = (2..share.share.size().saturating_sub(1) as u32)
                    .filter_map(|n| share.share.host(n))
                    .find(|a| !used.contains(a))
                    .ok_or_else(|| {
                        format!("no address left in this node's share {}", share.share)
                    })?;
                let body = serde_json::json!({"mac": mac, "address": free.to_string()});
                std::fs::write(&file, body.to_string())
                    .map_err(|e| format!("saving the reservation in {}: {e}", file.display()))?;
                free
            }
        };
        leases.insert(mac.to_string(), lease(&share, address, hostname));
        Ok(address)
    }

    /// Forgets `mac`'s lease (its instance is gone).
    pub fn release(&self, mac: &str) {
        self.leases.lock().expect("leases lock").remove(mac);
    }

    /// The address reserved for `mac` of the instance in `run_dir`, if any (read from the run
    /// directory when the leases are not loaded yet, as right after an agent restart).
    pub fn address_of(&self, run_dir: &Path, mac: &str) -> Option<Ipv4Addr> {
        let leased = self
            .leases
            .lock()
            .expect("leases lock")
            .get(mac)
            .map(|l| l.address);
        leased.or_else(|| {
            read_reservation(&run_dir.join(RESERVATION_FILE))
                .filter(|(m, _)| m == mac)
                .map(|(_, a)| a)
        })
    }

    /// Rebuilds the leases from the reservations in every instance's run directory.
    fn reload_leases(&self) {
        let Some(share) = self.share() else { return };
        let mut leases: HashMap<String, Lease> = HashMap::new();
        if let Ok(dirs) = std::fs::read_dir(&self.vms_dir) {
            for dir in dirs.filter_map(|d| d.ok()) {
                if let Some((mac, address)) = read_reservation(&dir.path().join(RESERVATION_FILE)) {
                    if share.share.contains(address) {
                        leases.insert(mac, lease(&share, address, ""));
                    }
                }
            }
        }
        *self.leases.lock().expect("leases lock") = leases;
    }
}

fn read_reservation(file: &Path) -> Option<(String, Ipv4Addr)> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
    Some((
        v["mac"].as_str()?.to_string(),
        v["address"].as_str()?.parse().ok()?,
    ))
}

fn lease(share: &PodShare, address: Ipv4Addr, hostname: &str) -> Lease {
    Lease {
        address,
        prefix: share.share.prefix,
        gateway: share.gateway,
        dns: host_nameservers(),
        mtu: None,
        hostname: (!hostname.is_empty()).then(|| hostname.to_string()),
    }
}

/// The host's resolvers that a guest can reach (not the host's loopback ones).
fn host_nameservers() -> Vec<Ipv4Addr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback())
        .collect()
}

/// Makes `chain` in `table` hold exactly `rules`, jumped to from `parent`.
pub async fn chain(
    table: &str,
    parent: &str,
    chain: &str,
    rules: &[Vec<&str>],
) -> Result<(), LinkError> {
    if iptables(table, &["-n", "-L", chain]).await.is_err() {
        iptables(table, &["-N", chain]).await?;
    }
    iptables(table, &["-F", chain]).await?;
    for rule in rules {
        let mut args = vec!["-A", chain];
        args.extend(rule.iter().copied());
        iptables(table, &args).await?;
    }
    if iptables(table, &["-C", parent, "-j", chain]).await.is_err() {
        iptables(table, &["-I", parent, "-j", chain]).await?;
    }
    Ok(())
}

/// `iptables -w -t TABLE ARGS`.
async fn iptables(table: &str, args: &[&str]) -> Result<String, LinkError> {
    let mut all = vec!["-w", "-t", table];
    all.extend(args);
    links::run("iptables", &all).await
}
