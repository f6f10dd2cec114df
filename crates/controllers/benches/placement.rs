//! Placement throughput of the scheduler's pure logic: a snapshot of 5,000 nodes in 3 zones (some
//! tainted, cordoned or not ready), then 10,000 instances placed one after another, each placement
//! assumed into the snapshot as the scheduler does. The instances mix namespaces and app labels
//! (zone spreading), node selectors, tolerations and preferred and required VM anti-affinity.
//! Prints placements/s and the P50/P99/max time per placement, and the time to build the snapshot
//! from the objects with all instances bound.
//!
//! Run: `cargo bench -p vmo-controllers --bench placement` (VMO_BENCH_NODES, VMO_BENCH_VMS to change
//! the sizes).

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
            "allocatable": {"cpu": "16", "memory": "64Gi"},
            "capacity": {"cpu": "16", "memory": "64Gi"},
            "conditions": [{"type": "Ready", "status": ready}]
        }
    }))
    .expect("node")
}

fn vmi(i: usize) -> Object {
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
    Object::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": format!("vm-{i}"), "namespace": format!("ns-{}", i % 20),
                     "uid": format!("uid-{i}"), "labels": {"app": app}},
        "spec": spec,
    }))
    .expect("vmi")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let n_nodes = env_or("VMO_BENCH_NODES", 5000);
    let n_vmis = env_or("VMO_BENCH_VMS", 10_000);
    let nodes: Vec<Object> = (0..n_nodes).map(node).collect();
    let vmis: Vec<Object> = (0..n_vmis).map(vmi).collect();
    let requests: Vec<PlacementRequest> = vmis
        .iter()
        .map(|v| PlacementRequest::for_vmi(v).expect("request"))
        .collect();
    let mut snapshot = Snapshot::from_objects(&nodes, &[]);
    let mut times = Vec::with_capacity(n_vmis);
    let mut placed = Vec::with_capacity(n_vmis);
    let mut unschedulable = 0;
    let started = Instant::now();
    for req in &requests {
        let t = Instant::now();
        match snapshot.place(req) {
            Ok(node) => {
                snapshot.assume(&node, req);
                placed.push(node);
            }
            Err(_) => {
                unschedulable += 1;
                placed.push(String::new());
            }
        }
        times.push(t.elapsed());
    }
    let total = started.elapsed();
    times.sort();
    println!("placement: {n_nodes} nodes, {n_vmis} instances placed one by one (place + assume)");
    println!(
        "  {:.0} placements/s; per placement P50 {} P99 {} max {}; {} unschedulable",
        n_vmis as f64 / total.as_secs_f64(),
        ms(percentile(&times, 0.50)),
        ms(percentile(&times, 0.99)),
        ms(*times.last().unwrap_or(&Duration::ZERO)),
        unschedulable
    );
    // A pass's fixed cost: the snapshot from the objects, every instance bound.
    let bound: Vec<Object> = vmis
        .into_iter()
        .zip(&placed)
        .map(|(mut v, node)| {
            v.body.insert(
                "status".into(),
                json!({"phase": "Running", "nodeName": node}),
            );
            v
        })
        .collect();
    let t = Instant::now();
    let rebuilt = Snapshot::from_objects(&nodes, &bound);
    let build = t.elapsed();
    let busiest = rebuilt
        .nodes()
        .iter()
        .map(|n| n.instances)
        .max()
        .unwrap_or(0);
    println!(
        "  snapshot from {n_nodes} nodes + {n_vmis} bound instances: {}; busiest node holds {busiest}",
        ms(build)
    );
}
