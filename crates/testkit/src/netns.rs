//! Separate hosts on one machine: each host is a Linux network namespace with its own address,
//! joined by a veth pair to a bridge in the root namespace; the bridge holds the subnet's first
//! address, where a control plane in the root namespace listens. Every host sees the others and
//! the control plane only through the bridge, and its 127.0.0.1 is its own.
//!
//! Each network claims a free subnet `10.77.N.0/24` by creating its bridge `vmobrN` (creation is
//! atomic, so parallel tests never share one); hosts are `10.77.N.11`, `.12`, ... in namespaces
//! `vmoN-I`. The bridge's alias names the owning process, so a network left behind by a killed
//! test is removed by the next test that comes across it. Dropping the network removes its
//! namespaces, veths and bridge. Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and `ip` (iproute2).

use std::path::Path;
use std::process::Command;

/// The first two octets of every subnet.
const PREFIX: &str = "10.77";
/// The last octet of the first host's address.
const FIRST_HOST: usize = 11;
/// Subnets tried: `10.77.1.0/24` to `10.77.250.0/24`.
const SUBNETS: u32 = 250;
const ALIAS: &str = "vmo-test pid ";

/// One host: a network namespace with one interface on the bridge.
#[derive(Debug)]
pub struct NetHost {
    /// The network namespace (`ip netns exec NETNS ...` runs a program on this host).
    pub netns: String,
    /// The host's interface, inside its namespace.
    pub interface: String,
    /// The host's address on the bridge's subnet.
    pub address: String,
    /// The other end of the veth pair, a port of the bridge in the root namespace.
    bridge_port: String,
}

impl NetHost {
    /// Bytes this host's interface has received so far (what its bridge port has sent it).
    pub fn received_bytes(&self) -> u64 {
        let path = Path::new("/sys/class/net")
            .join(&self.bridge_port)
            .join("statistics/tx_bytes");
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// A bridge and the hosts on it.
#[derive(Debug)]
pub struct HostNetwork {
    pub bridge: String,
    /// The bridge's address: the root namespace, as the hosts reach it.
    pub gateway: String,
    pub hosts: Vec<NetHost>,
    subnet: u32,
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn bridge_name(subnet: u32) -> String {
    format!("vmobr{subnet}")
}

fn netns_prefix(subnet: u32) -> String {
    format!("vmo{subnet}-")
}

/// The pid in a bridge's alias, if it is one of ours.
fn owner(bridge: &str) -> Option<u32> {
    let out = ip(&["-j", "link", "show", "dev", bridge]).ok()?;
    let links: serde_json::Value = serde_json::from_str(&out).ok()?;
    links[0]["ifalias"]
        .as_str()?
        .strip_prefix(ALIAS)?
        .trim()
        .parse()
        .ok()
}

/// Removes what a network on `subnet` left behind: its namespaces, veths and bridge.
fn remove(subnet: u32, hosts: &[NetHost]) {
    for host in hosts {
        let _ = ip(&["link", "del", "dev", &host.bridge_port]);
        let _ = ip(&["netns", "del", &host.netns]);
    }
    // Whatever a killed owner did not record: its namespaces by name.
    let prefix = netns_prefix(subnet);
    if let Ok(list) = ip(&["netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if ns.starts_with(&prefix) {
                let _ = ip(&["netns", "del", ns]);
            }
        }
    }
    let _ = ip(&["link", "del", "dev", &bridge_name(subnet)]);
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes every network whose owning process is gone (a test killed before its drop ran).
fn remove_abandoned() {
    let Ok(links) = ip(&["-o", "link", "show", "type", "bridge"]) else {
        return;
    };
    for line in links.lines() {
        let Some(name) = line.split_whitespace().nth(1) else {
            continue;
        };
        let name = name.trim_end_matches(':');
        let Some(subnet) = name
            .strip_prefix("vmobr")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if owner(name).is_some_and(|pid| !alive(pid)) {
            remove(subnet, &[]);
        }
    }
}

/// Claims a free subnet by creating its bridge, after removing abandoned networks.
fn claim_subnet() -> Result<u32, String> {
    remove_abandoned();
    let in_use = ip(&["-o", "-4", "addr", "show"])?;
    let start = std::process::id() % SUBNETS;
    for k in 0..SUBNETS {
        let subnet = (start + k) % SUBNETS + 1;
        if in_use.contains(&format!(" {PREFIX}.{subnet}.")) {
            continue;
        }
        let bridge = bridge_name(subnet);
        match ip(&["link", "add", "name", &bridge, "type", "bridge"]) {
            Ok(_) => {
                let alias = format!("{ALIAS}{}", std::process::id());
                ip(&["link", "set", "dev", &bridge, "alias", &alias])
                    .inspect_err(|_| remove(subnet, &[]))?;
                return Ok(subnet);
            }
            Err(e) if e.contains("File exists") => continue,
            Err(e) => return Err(e),
        }
    }
    Err(format!("no free subnet in {PREFIX}.1-{SUBNETS}.0/24"))
}

impl HostNetwork {
    /// A bridge with `hosts` hosts on it, each in its own namespace. Fails, removing what it made,
    /// when this process may not create namespaces, veths or bridges (not root, say).
    pub fn create(hosts: usize) -> Result<Self, String> {
        if hosts + FIRST_HOST > 254 {
            return Err(format!("{hosts} hosts do not fit one /24"));
        }
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        if uid != "0" {
            return Err(format!("running as uid {uid:?}, not root"));
        }
        let subnet = claim_subnet()?;
        let mut network = HostNetwork {
            bridge: bridge_name(subnet),
            gateway: format!("{PREFIX}.{subnet}.1"),
            hosts: Vec::new(),
            subnet,
        };
        // From here on, dropping `network` removes whatever was made.
        ip(&[
            "addr",
            "add",
            &format!("{}/24", network.gateway),
            "dev",
            &network.bridge,
        ])?;
        ip(&["link", "set", "dev", &network.bridge, "up"])?;
        for i in 0..hosts {
            network.add_host(i)?;
        }
        Ok(network)
    }

    fn add_host(&mut self, i: usize) -> Result<(), String> {
        let subnet = self.subnet;
        let host = NetHost {
            netns: format!("{}{i}", netns_prefix(subnet)),
            interface: format!("vmo{subnet}n{i}"),
            address: format!("{PREFIX}.{subnet}.{}", FIRST_HOST + i),
            bridge_port: format!("vmo{subnet}h{i}"),
        };
        // A namespace of this name can only be a dead owner's: the bridge is ours.
        let _ = ip(&["netns", "del", &host.netns]);
        ip(&["netns", "add", &host.netns])?;
        let (netns, interface, port) = (
            host.netns.clone(),
            host.interface.clone(),
            host.bridge_port.clone(),
        );
        let address = format!("{}/24", host.address);
        self.hosts.push(host);
        ip(&[
            "link", "add", "name", &port, "type", "veth", "peer", "name", &interface, "netns",
            &netns,
        ])?;
        ip(&["link", "set", "dev", &port, "master", &self.bridge, "up"])?;
        ip(&["-n", &netns, "addr", "add", &address, "dev", &interface])?;
        ip(&["-n", &netns, "link", "set", "dev", &interface, "up"])?;
        ip(&["-n", &netns, "link", "set", "dev", "lo", "up"])?;
        Ok(())
    }

    /// [`HostNetwork::create`], or `None` with the reason printed (`SKIPPED: needs root and network
    /// namespaces: ...`) for the caller to skip its test. With `VMO_REQUIRE_NETNS` set (the test
    /// script sets it when it runs as root) the failure panics instead.
    pub fn create_or_skip(hosts: usize) -> Option<Self> {
        match Self::create(hosts) {
            Ok(network) => Some(network),
            Err(why) if std::env::var_os("VMO_REQUIRE_NETNS").is_some() => {
                panic!("VMO_REQUIRE_NETNS is set but network namespaces fail: {why}")
            }
            Err(why) => {
                eprintln!("SKIPPED: needs root and network namespaces: {why}");
                None
            }
        }
    }

    /// The `i`th host.
    pub fn host(&self, i: usize) -> &NetHost {
        &self.hosts[i]
    }
}

impl Drop for HostNetwork {
    fn drop(&mut self) {
        remove(self.subnet, &self.hosts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_reach_the_gateway_from_their_own_addresses_and_are_removed_on_drop() {
        let Some(network) = HostNetwork::create_or_skip(2) else {
            return;
        };
        let (a, b) = (network.host(0), network.host(1));
        assert!(network.bridge.len() <= 15 && a.interface.len() <= 15);
        // Host a's only global address is its own.
        let shown = ip(&[
            "-n", &a.netns, "-o", "-4", "addr", "show", "scope", "global",
        ])
        .unwrap();
        assert!(shown.contains(&format!("inet {}/24", a.address)), "{shown}");
        assert_eq!(shown.lines().count(), 1, "{shown}");
        // The control plane's side: a listener on the gateway sees each host connect from its own
        // address; one on the root namespace's 127.0.0.1 is out of every host's reach.
        let gateway = std::net::TcpListener::bind((network.gateway.as_str(), 0)).unwrap();
        let loopback = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let connect = |netns: &str, to: std::net::SocketAddr| {
            Command::new("ip")
                .args(["netns", "exec", netns, "bash", "-c"])
                .arg(format!(
                    "exec 3<>/dev/tcp/{}/{} && echo hello >&3",
                    to.ip(),
                    to.port()
                ))
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap()
                .success()
        };
        for host in [a, b] {
            assert!(connect(&host.netns, gateway.local_addr().unwrap()));
            let (_, peer) = gateway.accept().unwrap();
            assert_eq!(peer.ip().to_string(), host.address);
            assert!(
                !connect(&host.netns, loopback.local_addr().unwrap()),
                "{} has a loopback of its own",
                host.netns
            );
        }
        let subnet = network.subnet;
        drop(network);
        let left = ip(&["-o", "link", "show"]).unwrap();
        assert!(!left.contains(&bridge_name(subnet)), "{left}");
        let namespaces = ip(&["netns", "list"]).unwrap();
        assert!(!namespaces.contains(&netns_prefix(subnet)), "{namespaces}");
    }
}
