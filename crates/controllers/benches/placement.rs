//! Placement throughput of the scheduler's pure logic, at 1,000 and at 5,000 nodes in 3 zones (some
//! tainted, cordoned or not ready; 64 cores, 256 GiB), each node already running 30 instances: the
//! snapshot is built from the Node objects and 30 bound instances per node (30,000 and 150,000), as
//! a scheduler pass builds it, then 10,000 new instances are placed one after another, each
//! placement assumed into the snapshot as the scheduler does. Existing and new instances mix
//! namespaces and app labels (zone spreading), node selectors, tolerations and preferred and
//! required VM anti-affinity. Prints, per size, the time to build the snapshot (a pass's fixed
//! cost), placements/s and the P50/P99/max time per placement.
//!
//! Run: `cargo bench -p vmo-controllers --bench placement`. VMO_BENCH_NODES (a comma-separated
//! list, default `1000,5000`), VMO_BENCH_PER_NODE (instances already on each node, default 30) and
//! VMO_BENCH_VMS (instances placed, default 10,000) change the sizes.

use serde_json::json;
use std::time::{Duration, Instant};
use vmo_api::Object;
use vmo_controllers::scheduler::{PlacementRequest, Snapshot};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sizes() -> Vec<usize> {
    std::env::var("VMO_BENCH_NODES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![1000, 5000])
}

fn node(i: usize) -> Object {
    let name = format!("node-{i:05}");
    let mut spec = json!({});
    if i % 50 == 7 {
        spec["taints"] = json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]);
    }
    if i % 100 == 13 {
        spec["unschedulable"] = json!(true);
    }
    let ready = if i % 100 == 29 { "Unknown" } else { "True" };
    Object::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "topology.kubernetes.io/zone": format!("zone-{}", i % 3),
            "vmo.io/machine-pool": format!("pool-{}", i % 4),
        }},
        "spec": spec,
        "status": {
            "allocatable": {"cpu": "64", "memory": "256Gi"},
            "capacity": {"cpu": "64", "memory": "256Gi"},
            "conditions": [{"type": "Ready", "status": ready}]
        }
    }))
    .expect("node")
}

/// Instance `i` of a family (`new`, or `run` for those already running), bound to `node` if given.
fn vmi(family: &str, i: usize, node: Option<&str>) -> Object {
    let app = format!("app-{}", i % 200);
    let mut spec = json!({
        "domain": {"cpu": {"cores": 1 + i % 2}, "memory": {"guest": format!("{}Gi", 1 + i % 4)}}
    });
    if i.is_multiple_of(10) {
        spec["nodeSelector"] = json!({"vmo.io/machine-pool": format!("pool-{}", i % 4)});
    }
    if i % 20 == 1 {
        spec["tolerations"] = json!([{"key": "dedicated", "operator": "Exists"}]);
    }
    let term =
        |key: &str| json!({"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key});
    if i % 50 == 2 {
        spec["affinity"] = json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": term("kubernetes.io/hostname")}]}});
    }
    if i % 100 == 3 {
        spec["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            term("kubernetes.io/hostname")]}});
    }
    let mut vmi = json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": format!("{family}-{i}"), "namespace": format!("ns-{}", i % 20),
                     "uid": format!("uid-{family}-{i}"), "labels": {"app": app}},
        "spec": spec,
    });
    if let Some(node) = node {
        vmi["status"] = json!({"phase": "Running", "nodeName": node});
    }
    Object::from_value(vmi).expect("vmi")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let per_node = env_or("VMO_BENCH_PER_NODE", 30);
    let n_vmis = env_or("VMO_BENCH_VMS", 10_000);
    let new: Vec<Object> = (0..n_vmis).map(|i| vmi("new", i, None)).collect();
    let requests: Vec<PlacementRequest> = new
        .iter()
        .map(|v| PlacementRequest::for_vmi(v).expect("request"))
        .collect();
    for n_nodes in sizes() {
        let nodes: Vec<Object> = (0..n_nodes).map(node).collect();
        // Exactly `per_node` on every node (tainted, cordoned and not-ready ones too: they got
        // their instances before that), consecutive ones together, so each node holds the mix.
        let names: Vec<String> = nodes.iter().map(|n| n.metadata.name.clone()).collect();
        let running: Vec<Object> = (0..n_nodes * per_node)
            .map(|i| vmi("run", i, Some(&names[i / per_node])))
            .collect();
        let t = Instant::now();
        let mut snapshot = Snapshot::from_objects(&nodes, &running);
        let build = t.elapsed();
        drop(running);
        let mut times = Vec::with_capacity(n_vmis);
        let mut unschedulable = 0;
        let started = Instant::now();
        for req in &requests {
            let t = Instant::now();
            match snapshot.place(req) {
                Ok(node) => {
                    snapshot.assume(&node, req);
                }
                Err(_) => unschedulable += 1,
            }
            times.push(t.elapsed());
        }
        let total = started.elapsed();
        times.sort();
        let held = snapshot.nodes().iter().map(|n| n.instances);
        let (fewest, most) = held.fold((u32::MAX, 0), |(lo, hi), n| (lo.min(n), hi.max(n)));
        println!(
            "placement: {n_nodes} nodes with {per_node} instances each ({} running), {n_vmis} placed one by one (place + assume)",
            n_nodes * per_node
        );
        println!(
            "  snapshot from {n_nodes} nodes + {} bound instances: {}",
            n_nodes * per_node,
            ms(build)
        );
        println!(
            "  {:.0} placements/s; per placement P50 {} P99 {} max {}; {} unschedulable; nodes then hold {fewest}-{most} instances",
            n_vmis as f64 / total.as_secs_f64(),
            ms(percentile(&times, 0.50)),
            ms(percentile(&times, 0.99)),
            ms(*times.last().unwrap_or(&Duration::ZERO)),
            unschedulable
        );
    }
}
