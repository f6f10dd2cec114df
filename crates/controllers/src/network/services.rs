//! The service controller (MetalLB's controller and its speakers' leader choice in one): gives
//! NodePort and LoadBalancer Services their node ports, LoadBalancer Services an address from an
//! IPAddressPool, and picks the node that announces each address: a Ready node an L2Advertisement
//! of the address's pool covers, kept while it stays eligible, else the one whose hash with the
//! address is lowest, so another node takes over when the announcing one goes away.

use crate::informer::{self, Cache};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use vmo_api::kinds::core::node_condition;
use vmo_api::kinds::service::{
    advertises, load_balancer_ip, pool_addresses, pool_contains, service_type,
    ADDRESS_POOL_ANNOTATION, ANNOUNCING_NODE_ANNOTATION, NODE_PORTS, REQUESTED_IPS_ANNOTATION,
};
use vmo_api::{KindInfo, Object, Registry};
use vmo_client::events::{EventType, Recorder};
use vmo_client::Client;

const MANAGER: &str = "vmo-service-controller";
/// Nodes with this label never announce load-balancer addresses (as in Kubernetes).
const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

struct Caches {
    services: Cache,
    pools: Cache,
    ads: Cache,
    nodes: Cache,
}

/// Runs the service controller until the task is dropped.
pub async fn run(client: Client, registry: Arc<Registry>) {
    let changed = Arc::new(Notify::new());
    let kind = |n: &str| *registry.resolve(n).expect("built-in kind");
    let watch =
        |k: KindInfo| informer::start(client.clone(), k, changed.clone(), informer::every_change);
    let service_kind = kind("services");
    let caches = Caches {
        services: watch(service_kind),
        pools: watch(kind("ipaddresspools")),
        ads: watch(kind("l2advertisements")),
        nodes: watch(kind("nodes")),
    };
    let events = Recorder::new(client.clone(), MANAGER, "");
    let mut reported: BTreeSet<(String, String)> = BTreeSet::new();
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        if ![&caches.services, &caches.pools, &caches.ads, &caches.nodes]
            .iter()
            .all(|c| c.synced())
        {
            continue;
        }
        let services = caches.services.list();
        let mut used_ports: BTreeSet<u16> = services
            .iter()
            .flat_map(|s| vmo_api::kinds::service::ports(s).into_iter())
            .filter_map(|p| p.node_port)
            .collect();
        let mut used_ips: BTreeSet<Ipv4Addr> =
            services.iter().filter_map(load_balancer_ip).collect();
        for svc in &services {
            if svc.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let key = format!("{}/{}", svc.metadata.namespace, svc.metadata.name);
            let outcome = reconcile(
                &client,
                &service_kind,
                svc,
                &caches,
                &mut used_ports,
                &mut used_ips,
            )
            .await;
            match outcome {
                Ok(Some((reason, message))) => {
                    events
                        .record(svc, EventType::Normal, reason, &message)
                        .await;
                }
                Ok(None) => {}
                Err((reason, message)) => {
                    if reported.insert((key, message.clone())) {
                        events
                            .record(svc, EventType::Warning, reason, &message)
                            .await;
                    }
                }
            }
        }
    }
}

type Outcome = Result<Option<(&'static str, String)>, (&'static str, String)>;

async fn reconcile(
    client: &Client,
    kind: &KindInfo,
    svc: &Object,
    caches: &Caches,
    used_ports: &mut BTreeSet<u16>,
    used_ips: &mut BTreeSet<Ipv4Addr>,
) -> Outcome {
    let (ns, name) = (&svc.metadata.namespace, &svc.metadata.name);
    let kind_of = service_type(svc);
    if kind_of == "ClusterIP" {
        return Ok(None);
    }
    // Node ports first (the spec), then the address and the announcing node.
    let mut ports = svc.spec()["ports"].as_array().cloned().unwrap_or_default();
    let mut missing = false;
    for p in ports.iter_mut() {
        if p["nodePort"].as_u64().is_none() {
            let free = NODE_PORTS
                .clone()
                .find(|n| !used_ports.contains(n))
                .ok_or((
                    "NodePortsExhausted",
                    "every node port (30000-32767) is taken".to_string(),
                ))?;
            used_ports.insert(free);
            p["nodePort"] = json!(free);
            missing = true;
        }
    }
    if missing {
        let patch = json!({"metadata": {"resourceVersion": svc.metadata.resource_version}, "spec": {"ports": ports}});
        client
            .merge_patch(kind, ns, name, None, &patch, MANAGER)
            .await
            .map_err(|e| ("UpdateFailed", e.to_string()))?;
        return Ok(None); // the next pass sees the new version
    }
    if kind_of != "LoadBalancer" {
        return Ok(None);
    }
    let pools = caches.pools.list();
    let (ip, pool) = match load_balancer_ip(svc)
        .and_then(|ip| Some((ip, pools.iter().find(|p| pool_contains(p, ip))?)))
    {
        Some(found) => found,
        None => {
            let (ip, pool) = allocate(svc, &pools, used_ips)?;
            used_ips.insert(ip);
            let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": ip.to_string()}]}}});
            client
                .merge_patch(kind, ns, name, Some("status"), &status, MANAGER)
                .await
                .map_err(|e| ("UpdateFailed", e.to_string()))?;
            return Ok(Some((
                "IPAllocated",
                format!("Assigned IP [\"{ip}\"] from pool {}", pool.metadata.name),
            )));
        }
    };
    let eligible: Vec<String> = caches
        .nodes
        .list()
        .into_iter()
        .filter(|n| node_condition(n, "Ready").as_deref() == Some("True"))
        .filter(|n| !n.metadata.labels.contains_key(EXCLUDE_LABEL))
        .filter(|n| {
            caches
                .ads
                .list()
                .iter()
                .any(|ad| advertises(ad, &pool.metadata.name, n))
        })
        .map(|n| n.metadata.name)
        .collect();
    let current = svc
        .metadata
        .annotations
        .get(ANNOUNCING_NODE_ANNOTATION)
        .cloned();
    let chosen = choose_announcer(current.as_deref(), &eligible, ip);
    if chosen == current {
        return Ok(None);
    }
    let patch = json!({"metadata": {
        "resourceVersion": svc.metadata.resource_version,
        "annotations": {ANNOUNCING_NODE_ANNOTATION: chosen.clone().map(Value::String).unwrap_or(Value::Null)},
    }});
    client
        .merge_patch(kind, ns, name, None, &patch, MANAGER)
        .await
        .map_err(|e| ("UpdateFailed", e.to_string()))?;
    Ok(Some(match chosen {
        Some(node) => ("nodeAssigned", format!("announcing {ip} from node {node}")),
        None => (
            "NoAnnouncingNode",
            format!(
                "no Ready node is covered by an L2Advertisement of pool {}: {ip} is not announced",
                pool.metadata.name
            ),
        ),
    }))
}

/// An address for `svc`: the one it asks for (spec.loadBalancerIP or MetalLB's annotation), else
/// the lowest free one of the pool it names, else of the auto-assigning pools in name order.
fn allocate<'a>(
    svc: &Object,
    pools: &'a [Object],
    used: &BTreeSet<Ipv4Addr>,
) -> Result<(Ipv4Addr, &'a Object), (&'static str, String)> {
    let requested: Vec<Ipv4Addr> = svc.spec()["loadBalancerIP"]
        .as_str()
        .into_iter()
        .chain(
            svc.metadata
                .annotations
                .get(REQUESTED_IPS_ANNOTATION)
                .map(String::as_str)
                .into_iter()
                .flat_map(|l| l.split(',')),
        )
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    if let Some(ip) = requested.first() {
        let pool = pools
            .iter()
            .find(|p| pool_contains(p, *ip))
            .ok_or(("AllocationFailed", format!("{ip} is in no IPAddressPool")))?;
        if used.contains(ip) {
            return Err((
                "AllocationFailed",
                format!("{ip} is already used by another Service"),
            ));
        }
        return Ok((*ip, pool));
    }
    let named = svc.metadata.annotations.get(ADDRESS_POOL_ANNOTATION);
    let mut candidates: Vec<&Object> = pools
        .iter()
        .filter(|p| match named {
            Some(n) => p.metadata.name == *n,
            None => p.spec()["autoAssign"].as_bool().unwrap_or(true),
        })
        .collect();
    if candidates.is_empty() {
        return Err((
            "AllocationFailed",
            match named {
                Some(n) => format!("no IPAddressPool named {n}"),
                None => "no IPAddressPool assigns addresses automatically".into(),
            },
        ));
    }
    candidates.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for pool in candidates {
        if let Some(ip) = pool_addresses(pool).find(|a| !used.contains(a)) {
            return Ok((ip, pool));
        }
    }
    Err((
        "AllocationFailed",
        "every address of the pools is in use".into(),
    ))
}

/// Keeps `current` while it is eligible; else the eligible node whose hash with `ip` is lowest.
pub fn choose_announcer(
    current: Option<&str>,
    eligible: &[String],
    ip: Ipv4Addr,
) -> Option<String> {
    if let Some(c) = current.filter(|c| eligible.iter().any(|e| e == c)) {
        return Some(c.to_string());
    }
    let hash = |node: &str| {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in node.bytes().chain(ip.octets()) {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
        h
    };
    let ranked: BTreeMap<u64, &String> = eligible.iter().map(|n| (hash(n), n)).collect();
    ranked.values().next().map(|n| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(kind: &str, name: &str, spec: Value, annotations: Value) -> Object {
        Object::from_value(json!({"apiVersion": "v1", "kind": kind,
            "metadata": {"name": name, "namespace": "d", "annotations": annotations}, "spec": spec}))
        .unwrap()
    }

    #[test]
    fn addresses_come_from_the_named_or_auto_assigning_pools_and_never_twice() {
        let pools = [
            obj(
                "IPAddressPool",
                "a-manual",
                json!({"addresses": ["10.0.0.10/32"], "autoAssign": false}),
                json!({}),
            ),
            obj(
                "IPAddressPool",
                "b-auto",
                json!({"addresses": ["10.0.1.0/30"], "avoidBuggyIPs": true}),
                json!({}),
            ),
        ];
        let plain = obj("Service", "s", json!({"type": "LoadBalancer"}), json!({}));
        let mut used = BTreeSet::new();
        let (ip, pool) = allocate(&plain, &pools, &used).unwrap();
        assert_eq!(
            (ip.to_string().as_str(), pool.metadata.name.as_str()),
            ("10.0.1.1", "b-auto")
        );
        used.insert(ip);
        assert_eq!(
            allocate(&plain, &pools, &used).unwrap().0.to_string(),
            "10.0.1.2"
        );
        let named = obj(
            "Service",
            "s",
            json!({}),
            json!({ADDRESS_POOL_ANNOTATION: "a-manual"}),
        );
        assert_eq!(
            allocate(&named, &pools, &used).unwrap().0.to_string(),
            "10.0.0.10"
        );
        let asked = obj(
            "Service",
            "s",
            json!({"loadBalancerIP": "10.0.1.1"}),
            json!({}),
        );
        assert!(allocate(&asked, &pools, &used)
            .unwrap_err()
            .1
            .contains("already used"));
        let outside = obj(
            "Service",
            "s",
            json!({"loadBalancerIP": "192.0.2.1"}),
            json!({}),
        );
        assert!(allocate(&outside, &pools, &used)
            .unwrap_err()
            .1
            .contains("in no IPAddressPool"));
    }

    #[test]
    fn the_announcer_stays_while_eligible_and_moves_when_it_is_not() {
        let ip: Ipv4Addr = "10.0.1.1".parse().unwrap();
        let nodes = vec!["n1".to_string(), "n2".to_string(), "n3".to_string()];
        let first = choose_announcer(None, &nodes, ip).unwrap();
        assert_eq!(
            choose_announcer(Some("n2"), &nodes, ip).as_deref(),
            Some("n2")
        );
        let rest: Vec<String> = nodes.iter().filter(|n| **n != first).cloned().collect();
        let next = choose_announcer(Some(&first), &rest, ip).unwrap();
        assert_ne!(next, first);
        assert_eq!(choose_announcer(Some("n1"), &[], ip), None);
    }
}
