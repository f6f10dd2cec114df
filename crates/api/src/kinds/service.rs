//! Services and load-balancer addresses as the reference architecture runs them with MetalLB:
//! core v1 Service (`ClusterIP`, `NodePort`, `LoadBalancer`) selecting VMs by label, and
//! `metallb.io/v1beta1` IPAddressPool (`addresses`, `autoAssign`, `avoidBuggyIPs`) and
//! L2Advertisement (`ipAddressPools`, `interfaces`, `nodeSelectors`). A LoadBalancer Service gets
//! an address from a pool; one node, chosen by the service controller and named in the Service's
//! [`ANNOUNCING_NODE_ANNOTATION`], answers ARP for it and forwards its ports to the VMs.

use super::{no_prepare, no_update_validation, text_at, Column, KindInfo, AGE_COLUMN, NAME_COLUMN};
use crate::object::Object;
use crate::status::FieldError;
use serde_json::Value;
use std::net::Ipv4Addr;

/// The node announcing a LoadBalancer Service's address (written by the service controller).
pub const ANNOUNCING_NODE_ANNOTATION: &str = "vmo.io/announcing-node";
/// MetalLB's annotation choosing the pool a Service's address comes from.
pub const ADDRESS_POOL_ANNOTATION: &str = "metallb.universe.tf/address-pool";
/// MetalLB's annotation asking for specific addresses.
pub const REQUESTED_IPS_ANNOTATION: &str = "metallb.universe.tf/loadBalancerIPs";
/// The NodePort range.
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;
/// Service types.
pub const SERVICE_TYPES: &[&str] = &["ClusterIP", "NodePort", "LoadBalancer"];

pub(super) fn kinds() -> Vec<KindInfo> {
    let metallb = KindInfo {
        group: "metallb.io",
        version: "v1beta1",
        kind: "",
        plural: "",
        singular: "",
        short_names: &[],
        categories: &[],
        namespaced: true,
        status_subresource: false,
        name_is_label: false,
        field_selectors: &[],
        columns: &[NAME_COLUMN, AGE_COLUMN],
        validate: validate_pool,
        validate_update: no_update_validation,
        prepare: no_prepare,
    };
    vec![
        KindInfo {
            group: "",
            version: "v1",
            kind: "Service",
            plural: "services",
            singular: "service",
            short_names: &["svc"],
            status_subresource: true,
            name_is_label: true,
            columns: &[
                NAME_COLUMN,
                Column {
                    name: "Type",
                    kind: "string",
                    priority: 0,
                    description: "ClusterIP, NodePort or LoadBalancer.",
                    cell: |o| Value::String(service_type(o).to_string()),
                },
                Column {
                    name: "External-IP",
                    kind: "string",
                    priority: 0,
                    description: "The load-balancer address.",
                    cell: |o| {
                        Value::String(load_balancer_ip(o).map(|a| a.to_string()).unwrap_or_else(
                            || match service_type(o) {
                                "LoadBalancer" => "<pending>".into(),
                                _ => "<none>".into(),
                            },
                        ))
                    },
                },
                Column {
                    name: "Port(s)",
                    kind: "string",
                    priority: 0,
                    description: "port[:nodePort]/protocol of each port.",
                    cell: |o| Value::String(ports_text(o)),
                },
                Column {
                    name: "Node",
                    kind: "string",
                    priority: 1,
                    description: "The node announcing the load-balancer address.",
                    cell: |o| {
                        Value::String(
                            o.metadata
                                .annotations
                                .get(ANNOUNCING_NODE_ANNOTATION)
                                .cloned()
                                .unwrap_or_default(),
                        )
                    },
                },
                AGE_COLUMN,
            ],
            validate: validate_service,
            ..metallb
        },
        KindInfo {
            kind: "IPAddressPool",
            plural: "ipaddresspools",
            singular: "ipaddresspool",
            columns: &[
                NAME_COLUMN,
                Column {
                    name: "Auto Assign",
                    kind: "boolean",
                    priority: 0,
                    description: "Whether Services get addresses from it without asking.",
                    cell: |o| Value::Bool(o.spec()["autoAssign"].as_bool().unwrap_or(true)),
                },
                Column {
                    name: "Avoid Buggy IPs",
                    kind: "boolean",
                    priority: 0,
                    description: "Whether .0 and .255 addresses are skipped.",
                    cell: |o| Value::Bool(o.spec()["avoidBuggyIPs"].as_bool().unwrap_or(false)),
                },
                Column {
                    name: "Addresses",
                    kind: "string",
                    priority: 0,
                    description: "The pool's ranges.",
                    cell: |o| {
                        Value::String(
                            o.spec()["addresses"]
                                .as_array()
                                .map(|a| {
                                    a.iter()
                                        .filter_map(Value::as_str)
                                        .collect::<Vec<_>>()
                                        .join(",")
                                })
                                .unwrap_or_default(),
                        )
                    },
                },
                AGE_COLUMN,
            ],
            ..metallb
        },
        KindInfo {
            kind: "L2Advertisement",
            plural: "l2advertisements",
            singular: "l2advertisement",
            columns: &[
                NAME_COLUMN,
                Column {
                    name: "IPAddressPools",
                    kind: "string",
                    priority: 0,
                    description: "Pools announced (all when empty).",
                    cell: |o| text_at(o, &["spec", "ipAddressPools"]),
                },
                Column {
                    name: "Interfaces",
                    kind: "string",
                    priority: 0,
                    description: "Interfaces announced on (the node's address's when empty).",
                    cell: |o| text_at(o, &["spec", "interfaces"]),
                },
                AGE_COLUMN,
            ],
            validate: validate_advertisement,
            ..metallb
        },
    ]
}

/// The Service's type (`ClusterIP` when unset).
pub fn service_type(o: &Object) -> &str {
    o.spec()["type"].as_str().unwrap_or("ClusterIP")
}

/// The load-balancer address in a Service's status.
pub fn load_balancer_ip(o: &Object) -> Option<Ipv4Addr> {
    o.status()["loadBalancer"]["ingress"][0]["ip"]
        .as_str()?
        .parse()
        .ok()
}

fn ports_text(o: &Object) -> String {
    o.spec()["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let node = p["nodePort"]
                .as_u64()
                .map(|n| format!(":{n}"))
                .unwrap_or_default();
            format!(
                "{}{node}/{}",
                p["port"].as_u64().unwrap_or(0),
                p["protocol"].as_str().unwrap_or("TCP")
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub protocol: String,
    pub port: u16,
    pub target_port: u16,
    pub node_port: Option<u16>,
}

/// The Service's ports (ones that do not parse are left out; validation refuses them).
pub fn ports(o: &Object) -> Vec<ServicePort> {
    o.spec()["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let port = u16::try_from(p["port"].as_u64()?).ok()?;
            Some(ServicePort {
                protocol: p["protocol"].as_str().unwrap_or("TCP").to_string(),
                port,
                target_port: p["targetPort"]
                    .as_u64()
                    .and_then(|t| u16::try_from(t).ok())
                    .unwrap_or(port),
                node_port: p["nodePort"].as_u64().and_then(|n| u16::try_from(n).ok()),
            })
        })
        .collect()
}

fn validate_service(o: &Object) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let kind = service_type(o);
    if !SERVICE_TYPES.contains(&kind) {
        errors.push(FieldError::not_supported("spec.type", kind, SERVICE_TYPES));
    }
    let list = o.spec()["ports"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        errors.push(FieldError::required(
            "spec.ports",
            "a Service needs at least one port",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, p) in list.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        match p["port"].as_u64() {
            Some(n) if (1..=65535).contains(&n) => {
                let protocol = p["protocol"].as_str().unwrap_or("TCP");
                if !seen.insert((n, protocol.to_string())) {
                    errors.push(FieldError::duplicate(format!("{path}.port"), n.to_string()));
                }
            }
            _ => errors.push(FieldError::invalid(
                format!("{path}.port"),
                p["port"].to_string(),
                "a port number 1-65535",
            )),
        }
        let protocol = p["protocol"].as_str().unwrap_or("TCP");
        if !["TCP", "UDP"].contains(&protocol) {
            errors.push(FieldError::not_supported(
                format!("{path}.protocol"),
                protocol,
                &["TCP", "UDP"],
            ));
        }
        match &p["targetPort"] {
            Value::Null => {}
            Value::Number(n) if n.as_u64().is_some_and(|n| (1..=65535).contains(&n)) => {}
            Value::String(s) => errors.push(FieldError::invalid(
                format!("{path}.targetPort"),
                s,
                "named target ports need named container ports, which VMs do not have: give the port number",
            )),
            other => errors.push(FieldError::invalid(
                format!("{path}.targetPort"),
                other.to_string(),
                "a port number 1-65535",
            )),
        }
        if let Some(n) = p.get("nodePort").filter(|n| !n.is_null()) {
            let ok = n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .is_some_and(|n| NODE_PORTS.contains(&n));
            if !ok {
                errors.push(FieldError::invalid(
                    format!("{path}.nodePort"),
                    n.to_string(),
                    "a node port is 30000-32767",
                ));
            } else if kind == "ClusterIP" {
                errors.push(FieldError::forbidden(
                    format!("{path}.nodePort"),
                    "only NodePort and LoadBalancer Services have node ports",
                ));
            }
        }
    }
    if let Some(ip) = o.spec()["loadBalancerIP"].as_str() {
        if ip.parse::<Ipv4Addr>().is_err() {
            errors.push(FieldError::invalid(
                "spec.loadBalancerIP",
                ip,
                "an IPv4 address",
            ));
        }
    }
    if let Some(selector) = o.spec().get("selector").filter(|s| !s.is_null()) {
        let ok = selector
            .as_object()
            .is_some_and(|m| m.values().all(Value::is_string));
        if !ok {
            errors.push(FieldError::invalid(
                "spec.selector",
                selector.to_string(),
                "a map of label names to values",
            ));
        }
    }
    errors
}

/// The addresses of one entry of a pool's `addresses`: `a.b.c.d/n` or `a.b.c.d-e.f.g.h`.
pub fn parse_range(text: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    if let Some((low, high)) = text.split_once('-') {
        let parse = |s: &str| {
            s.trim()
                .parse::<Ipv4Addr>()
                .map_err(|_| format!("{s:?} is not an IPv4 address"))
        };
        let (low, high) = (parse(low)?, parse(high)?);
        if u32::from(low) > u32::from(high) {
            return Err(format!("{text}: the range runs backwards"));
        }
        return Ok((low, high));
    }
    if !text.contains('/') {
        return Err(format!("{text:?} is neither a.b.c.d/n nor a.b.c.d-e.f.g.h"));
    }
    let (addr, prefix) = super::network::split_cidr(text, 32)?;
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    let low = u32::from(addr) & mask;
    Ok((Ipv4Addr::from(low), Ipv4Addr::from(low | !mask)))
}

/// A pool's addresses in order, without .0 and .255 ones when it avoids buggy IPs.
pub fn pool_addresses(pool: &Object) -> impl Iterator<Item = Ipv4Addr> + '_ {
    let avoid = pool.spec()["avoidBuggyIPs"].as_bool().unwrap_or(false);
    pool.spec()["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| parse_range(a.as_str()?).ok())
        .flat_map(|(low, high)| (u32::from(low)..=u32::from(high)).map(Ipv4Addr::from))
        .filter(move |a| !(avoid && matches!(a.octets()[3], 0 | 255)))
}

/// True when `addr` is one of the pool's addresses.
pub fn pool_contains(pool: &Object, addr: Ipv4Addr) -> bool {
    let avoid = pool.spec()["avoidBuggyIPs"].as_bool().unwrap_or(false);
    if avoid && matches!(addr.octets()[3], 0 | 255) {
        return false;
    }
    pool.spec()["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| parse_range(a.as_str()?).ok())
        .any(|(low, high)| (u32::from(low)..=u32::from(high)).contains(&u32::from(addr)))
}

fn validate_pool(o: &Object) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let list = o.spec()["addresses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if list.is_empty() {
        errors.push(FieldError::required(
            "spec.addresses",
            "a pool needs addresses",
        ));
    }
    for (i, a) in list.iter().enumerate() {
        let text = a.as_str().unwrap_or("");
        if let Err(why) = parse_range(text) {
            errors.push(FieldError::invalid(
                format!("spec.addresses[{i}]"),
                text,
                why,
            ));
        }
    }
    for field in ["autoAssign", "avoidBuggyIPs"] {
        if let Some(v) = o
            .spec()
            .get(field)
            .filter(|v| !v.is_null() && !v.is_boolean())
        {
            errors.push(FieldError::invalid(
                format!("spec.{field}"),
                v.to_string(),
                "true or false",
            ));
        }
    }
    errors
}

fn validate_advertisement(o: &Object) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (i, name) in o.spec()["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let text = name.as_str().unwrap_or("");
        if !super::network::valid_interface_name(text) {
            errors.push(FieldError::invalid(
                format!("spec.interfaces[{i}]"),
                text,
                "an interface name: 1-15 characters, no '/', ':' or spaces",
            ));
        }
    }
    for (i, name) in o.spec()["ipAddressPools"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if !name.is_string() {
            errors.push(FieldError::invalid(
                format!("spec.ipAddressPools[{i}]"),
                name.to_string(),
                "a pool name",
            ));
        }
    }
    errors
}

/// True when the L2Advertisement `ad` announces pool `pool` from node `node`.
pub fn advertises(ad: &Object, pool: &str, node: &Object) -> bool {
    let pools: Vec<&str> = ad.spec()["ipAddressPools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !pools.is_empty() && !pools.contains(&pool) {
        return false;
    }
    let selectors = ad.spec()["nodeSelectors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    selectors.is_empty()
        || selectors.iter().any(|s| {
            s["matchLabels"]
                .as_object()
                .into_iter()
                .flatten()
                .all(|(k, v)| node.metadata.labels.get(k).map(String::as_str) == v.as_str())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(kind: &str, spec: Value) -> Object {
        Object::from_value(json!({"apiVersion": "v1", "kind": kind,
            "metadata": {"name": "x", "namespace": "d"}, "spec": spec}))
        .unwrap()
    }

    #[test]
    fn pools_list_their_ranges_and_skip_buggy_addresses_when_asked() {
        let pool = obj(
            "IPAddressPool",
            json!({"addresses": ["10.0.0.254-10.0.1.1", "192.168.5.8/31"], "avoidBuggyIPs": true}),
        );
        let all: Vec<String> = pool_addresses(&pool).map(|a| a.to_string()).collect();
        assert_eq!(
            all,
            ["10.0.0.254", "10.0.1.1", "192.168.5.8", "192.168.5.9"]
        );
        assert!(!pool_contains(&pool, "10.0.1.0".parse().unwrap()));
        assert!(pool_contains(&pool, "192.168.5.9".parse().unwrap()));
        assert!(validate_pool(&pool).is_empty());
        let bad = obj(
            "IPAddressPool",
            json!({"addresses": ["10.0.0.9-10.0.0.1", "x/3"]}),
        );
        let paths: Vec<String> = validate_pool(&bad).into_iter().map(|e| e.path).collect();
        assert_eq!(paths, ["spec.addresses[0]", "spec.addresses[1]"]);
    }

    #[test]
    fn services_are_checked_field_by_field() {
        let good = obj(
            "Service",
            json!({"type": "LoadBalancer", "selector": {"app": "web"},
                   "ports": [{"port": 80, "targetPort": 8080}, {"port": 53, "protocol": "UDP", "nodePort": 30053}]}),
        );
        assert!(
            validate_service(&good).is_empty(),
            "{:?}",
            validate_service(&good)
        );
        assert_eq!(ports(&good)[0].target_port, 8080);
        assert_eq!(ports(&good)[1].node_port, Some(30053));
        let bad = obj(
            "Service",
            json!({"type": "External", "ports": [{"port": 0}, {"port": 80, "targetPort": "http", "protocol": "SCTP", "nodePort": 80}],
                   "loadBalancerIP": "nope"}),
        );
        let paths: Vec<String> = validate_service(&bad).into_iter().map(|e| e.path).collect();
        for p in [
            "spec.type",
            "spec.ports[0].port",
            "spec.ports[1].protocol",
            "spec.ports[1].targetPort",
            "spec.ports[1].nodePort",
            "spec.loadBalancerIP",
        ] {
            assert!(paths.contains(&p.to_string()), "{p} in {paths:?}");
        }
    }
}
