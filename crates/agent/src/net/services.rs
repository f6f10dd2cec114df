//! The node side of Services (MetalLB's speaker and kube-proxy in one): on every node, iptables
//! sends a LoadBalancer address's ports and every node port to the Service's VMs (the Running
//! instances its selector matches, at their default-network addresses), spreading connections
//! at random and masquerading them so replies come back the same way. The node the service
//! controller names in `vmo.io/announcing-node` holds the address on the advertised interfaces,
//! so the kernel answers ARP for it, and sends gratuitous ARP (`arping -U`) so neighbours learn
//! the new owner at once after a failover. Addresses this agent announced are remembered in its
//! data directory and withdrawn when it no longer should announce them.

use super::links::{self, LinkError};
use super::pod::chain;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use vmo_api::kinds::service::{
    advertises, load_balancer_ip, pool_contains, ports, service_type, ANNOUNCING_NODE_ANNOTATION,
};
use vmo_api::{Object, Registry};
use vmo_client::{informer, Client};

/// The mark on connections to a Service, masqueraded on their way to the VM.
const SERVICE_MARK: &str = "0x4000/0x4000";

/// Runs until the task is dropped.
pub async fn run(client: Client, network: Arc<super::Network>, node_name: String) {
    if network.pod_mode != super::PodMode::Bridge {
        return;
    }
    let registry = Registry::builtin();
    let changed = Arc::new(Notify::new());
    let watch = |name: &str| {
        informer::start(
            client.clone(),
            *registry.resolve(name).expect("built-in kind"),
            changed.clone(),
            informer::every_change,
        )
    };
    let (services, vmis, pools, ads, nodes) = (
        watch("services"),
        watch("vmi"),
        watch("ipaddresspools"),
        watch("l2advertisements"),
        watch("nodes"),
    );
    let state_file = network.data_dir.join("announced-addresses.json");
    let mut announced = load(&state_file);
    let mut rules_text = String::new();
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        if ![&services, &vmis, &pools, &ads, &nodes]
            .iter()
            .all(|c| c.synced())
        {
            continue;
        }
        let services: Vec<Object> = services
            .list()
            .into_iter()
            .filter(|s| service_type(s) != "ClusterIP")
            .collect();
        let vmis = vmis.list();
        let rules = forwarding_rules(&services, &vmis);
        let text = format!("{rules:?}");
        if text != rules_text {
            match install(&network.tag, &rules).await {
                Ok(()) => rules_text = text,
                Err(e) => tracing::error!(error = %e, "could not install the Services' forwarding"),
            }
        }
        let me = nodes
            .list()
            .into_iter()
            .find(|n| n.metadata.name == node_name);
        // The interface holding the node's address, for advertisements that name none (looked
        // up only while this node announces something).
        let announcing = services
            .iter()
            .any(|s| s.metadata.annotations.get(ANNOUNCING_NODE_ANNOTATION) == Some(&node_name));
        let uplink = match network.node_ip {
            Some(ip) if announcing => interface_holding(ip).await,
            _ => None,
        };
        let wanted = me
            .map(|me| {
                wanted_addresses(
                    &services,
                    &pools.list(),
                    &ads.list(),
                    &me,
                    uplink.as_deref(),
                )
            })
            .unwrap_or_default();
        if let Err(e) = announce(&wanted, &mut announced).await {
            tracing::error!(error = %e, "could not announce load-balancer addresses");
        }
        let _ = std::fs::write(
            &state_file,
            serde_json::to_string(&announced).unwrap_or_default(),
        );
    }
}

fn load(file: &PathBuf) -> BTreeSet<(String, Ipv4Addr)> {
    std::fs::read(file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The default-network addresses of the Running instances `selector` matches in `namespace`.
fn endpoints(svc: &Object, vmis: &[Object]) -> Vec<Ipv4Addr> {
    let Some(selector) = svc.spec()["selector"].as_object().filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    let mut found: Vec<Ipv4Addr> = vmis
        .iter()
        .filter(|v| v.metadata.namespace == svc.metadata.namespace)
        .filter(|v| v.status()["phase"] == "Running" && v.metadata.deletion_timestamp.is_none())
        .filter(|v| {
            selector
                .iter()
                .all(|(k, want)| v.metadata.labels.get(k).map(String::as_str) == want.as_str())
        })
        .filter_map(|v| {
            v.status()["interfaces"]
                .as_array()?
                .iter()
                .find_map(|i| i["ipAddress"].as_str()?.parse().ok())
        })
        .collect();
    found.sort();
    found
}

/// The nat rules of every Service, in the order they are installed.
pub fn forwarding_rules(services: &[Object], vmis: &[Object]) -> Vec<Vec<String>> {
    let mut rules = Vec::new();
    for svc in services {
        let targets = endpoints(svc, vmis);
        if targets.is_empty() {
            continue;
        }
        let address = load_balancer_ip(svc).filter(|_| service_type(svc) == "LoadBalancer");
        for port in ports(svc) {
            let protocol = port.protocol.to_ascii_lowercase();
            let mut matches: Vec<Vec<String>> = Vec::new();
            if let Some(ip) = address {
                matches.push(strings(&[
                    "-d",
                    &format!("{ip}/32"),
                    "-p",
                    &protocol,
                    "--dport",
                    &port.port.to_string(),
                ]));
            }
            if let Some(node_port) = port.node_port {
                matches.push(strings(&[
                    "-m",
                    "addrtype",
                    "--dst-type",
                    "LOCAL",
                    "-p",
                    &protocol,
                    "--dport",
                    &node_port.to_string(),
                ]));
            }
            for m in matches {
                let mut mark = m.clone();
                mark.extend(strings(&["-j", "MARK", "--set-xmark", SERVICE_MARK]));
                rules.push(mark);
                let n = targets.len();
                for (k, target) in targets.iter().enumerate() {
                    let mut rule = m.clone();
                    if k + 1 < n {
                        let probability = 1.0 / (n - k) as f64;
                        rule.extend(strings(&[
                            "-m",
                            "statistic",
                            "--mode",
                            "random",
                            "--probability",
                            &format!("{probability:.5}"),
                        ]));
                    }
                    rule.extend(strings(&[
                        "-j",
                        "DNAT",
                        "--to-destination",
                        &format!("{target}:{}", port.target_port),
                    ]));
                    rules.push(rule);
                }
            }
        }
    }
    rules
}

fn strings(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

async fn install(tag: &str, rules: &[Vec<String>]) -> Result<(), LinkError> {
    let rules: Vec<Vec<&str>> = rules
        .iter()
        .map(|r| r.iter().map(String::as_str).collect())
        .collect();
    chain("nat", "PREROUTING", &format!("VMO-SVC-{tag}"), &rules).await?;
    let masquerade = vec![vec![
        "-m",
        "mark",
        "--mark",
        SERVICE_MARK,
        "-j",
        "MASQUERADE",
    ]];
    chain(
        "nat",
        "POSTROUTING",
        &format!("VMO-SVCM-{tag}"),
        &masquerade,
    )
    .await?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| LinkError {
        command: "echo 1 > /proc/sys/net/ipv4/ip_forward".into(),
        output: e.to_string(),
    })
}

/// (interface, address) pairs this node should hold: the addresses of LoadBalancer Services it
/// announces, on the interfaces of the L2Advertisements covering their pools (the interface
/// holding the node's address where they name none).
pub fn wanted_addresses(
    services: &[Object],
    pools: &[Object],
    ads: &[Object],
    me: &Object,
    uplink: Option<&str>,
) -> BTreeSet<(String, Ipv4Addr)> {
    let mut wanted = BTreeSet::new();
    for svc in services {
        if svc.metadata.annotations.get(ANNOUNCING_NODE_ANNOTATION) != Some(&me.metadata.name) {
            continue;
        }
        let Some(ip) = load_balancer_ip(svc) else {
            continue;
        };
        let Some(pool) = pools.iter().find(|p| pool_contains(p, ip)) else {
            continue;
        };
        let mut interfaces: BTreeSet<String> = BTreeSet::new();
        let mut any = false;
        for ad in ads
            .iter()
            .filter(|ad| advertises(ad, &pool.metadata.name, me))
        {
            any = true;
            interfaces.extend(
                ad.spec()["interfaces"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i.as_str().map(str::to_string))
                    .filter(|i| links::exists(i)),
            );
        }
        if !any {
            continue;
        }
        if interfaces.is_empty() {
            interfaces.extend(uplink.map(str::to_string));
        }
        wanted.extend(interfaces.into_iter().map(|i| (i, ip)));
    }
    wanted
}

/// The link holding `address`.
async fn interface_holding(address: Ipv4Addr) -> Option<String> {
    let out = links::ip(&["-o", "-4", "addr", "show"]).await.ok()?;
    let needle = format!("inet {address}/");
    out.lines()
        .find(|l| l.contains(&needle))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(|d| d.split('@').next().unwrap_or(d).to_string())
}

/// Adds the wanted addresses (with gratuitous ARP) and withdraws the ones no longer wanted.
async fn announce(
    wanted: &BTreeSet<(String, Ipv4Addr)>,
    announced: &mut BTreeSet<(String, Ipv4Addr)>,
) -> Result<(), LinkError> {
    let held = links::ip(&["-o", "-4", "addr", "show"]).await?;
    let holds = |iface: &str, ip: &Ipv4Addr| {
        held.lines().any(|l| {
            l.split_whitespace().nth(1) == Some(iface) && l.contains(&format!("inet {ip}/32 "))
        })
    };
    for (iface, ip) in announced.difference(wanted).cloned().collect::<Vec<_>>() {
        if holds(&iface, &ip) {
            links::ip(&["addr", "del", &format!("{ip}/32"), "dev", &iface]).await?;
            tracing::info!(%ip, iface, "withdrew a load-balancer address");
        }
        announced.remove(&(iface, ip));
    }
    for (iface, ip) in wanted {
        announced.insert((iface.clone(), *ip));
        if holds(iface, ip) {
            continue;
        }
        links::ip(&["addr", "add", &format!("{ip}/32"), "dev", iface]).await?;
        tracing::info!(%ip, iface, "announcing a load-balancer address");
        let (iface, ip) = (iface.clone(), ip.to_string());
        tokio::spawn(async move {
            // Unsolicited ARP: neighbours update their caches to this node now.
            if let Err(e) = links::run("arping", &["-U", "-c", "3", "-I", &iface, &ip]).await {
                tracing::warn!(ip, iface, error = %e, "gratuitous ARP failed (is iputils-arping installed?)");
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc() -> Object {
        Object::from_value(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "d"},
            "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                     "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.9.0.5"}]}}}))
        .unwrap()
    }

    fn vmi(name: &str, app: &str, ip: &str, phase: &str) -> Object {
        Object::from_value(json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": name, "namespace": "d", "labels": {"app": app}},
            "spec": {}, "status": {"phase": phase, "interfaces": [{"name": "default", "ipAddress": ip}]}}))
        .unwrap()
    }

    #[test]
    fn connections_spread_over_the_running_selected_vms() {
        let vmis = [
            vmi("a", "web", "100.64.0.3", "Running"),
            vmi("b", "web", "100.64.1.2", "Running"),
            vmi("c", "db", "100.64.0.4", "Running"),
            vmi("d", "web", "100.64.0.9", "Scheduling"),
        ];
        let rules: Vec<String> = forwarding_rules(&[svc()], &vmis)
            .into_iter()
            .map(|r| r.join(" "))
            .collect();
        assert_eq!(rules.len(), 6, "{rules:#?}");
        assert!(rules[0].starts_with("-d 10.9.0.5/32 -p tcp --dport 80 -j MARK"));
        assert!(rules[1].contains("--probability 0.50000 -j DNAT --to-destination 100.64.0.3:8080"));
        assert!(rules[2].ends_with("-j DNAT --to-destination 100.64.1.2:8080"));
        assert!(rules[3].contains("--dst-type LOCAL -p tcp --dport 30080"));
        assert!(forwarding_rules(&[svc()], &vmis[2..]).is_empty());
    }
}
