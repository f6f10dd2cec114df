//! Scheduling end to end: a real `vmo up --no-agent` with 500 simulated nodes in 3 zones (the
//! simulated agent runs in this process), then N VirtualMachineInstances created through the API by
//! 16 concurrent clients. One watch sees each instance get its node (Scheduled) and then Running
//! (the simulated agent). Prints placements/s from the first create to the last binding, the time
//! to all Running, and the API writes the run cost by resource and verb (from the server's
//! /metrics), per instance.
//!
//! Run: `cargo bench -p vmo-vmo --bench scheduling` (VMO_BENCH_NODES, VMO_BENCH_VMS to change the
//! sizes).

use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};
use vmo_agent::sim::{SimAgents, SimConfig};
use vmo_api::{Object, Registry};
use vmo_client::Client;
use vmo_testkit::{percentile, KeptDir, VmoProcess};

const CLIENTS: usize = 16;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn vmi(i: usize) -> serde_json::Value {
    json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": format!("vmi-{i}"), "labels": {"app": format!("app-{}", i % 50)}},
        "spec": {"domain": {"cpu": {"cores": 1}, "memory": {"guest": "1Gi"},
                            "devices": {"disks": []}}}
    })
}

/// Successful writes by (resource, verb) from the server's metrics.
async fn writes(client: &Client) -> BTreeMap<(String, String), u64> {
    let page = client.get_text("/metrics").await.expect("metrics");
    let mut out = BTreeMap::new();
    for line in page.lines() {
        let Some(rest) = line.strip_prefix("vmo_apiserver_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let verb = label("verb");
        if !matches!(verb.as_str(), "CREATE" | "UPDATE" | "PATCH" | "DELETE")
            || !label("code").starts_with('2')
        {
            continue;
        }
        *out.entry((label("resource"), verb)).or_insert(0) += value.parse::<u64>().unwrap_or(0);
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n_nodes = env_or("VMO_BENCH_NODES", 500);
    let n_vmis = env_or("VMO_BENCH_VMS", 2000);
    let dir = KeptDir::new("vmo-bench-scheduling-");
    let vmo = Path::new(env!("CARGO_BIN_EXE_vmo"));
    let up = VmoProcess::start_with_args(vmo, &dir.path().join("data"), &["--no-agent"]).await;
    let client = up.client();
    let t = Instant::now();
    let _sims = SimAgents::start(client.clone(), SimConfig::new(n_nodes))
        .await
        .expect("simulated nodes");
    println!(
        "scheduling: {n_nodes} simulated nodes registered in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let kind = *Registry::builtin().resolve("vmi").unwrap();
    let listed = client.list(&kind, Some("default"), "").await.unwrap();
    let mut watch = client
        .watch(
            &kind,
            Some("default"),
            &format!("resourceVersion={}", listed.metadata.resource_version),
        )
        .await
        .unwrap();
    let before = writes(&client).await;

    let started = Instant::now();
    let mut creators = Vec::new();
    for c in 0..CLIENTS {
        let client = up.client();
        creators.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in (c..n_vmis).step_by(CLIENTS) {
                client.create(&kind, "default", &vmi(i)).await.unwrap();
                acknowledged.push((format!("vmi-{i}"), Instant::now()));
            }
            acknowledged
        }));
    }
    let mut bound_at = HashMap::new();
    let (mut scheduled, mut running) = (HashSet::new(), HashSet::new());
    let (mut all_scheduled, mut all_running) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(300);
    while all_running.is_none() {
        let next = tokio::time::timeout_at(deadline.into(), watch.next())
            .await
            .expect("every instance running within 300 s")
            .expect("watch open")
            .expect("watch event");
        let Ok(o) = Object::from_value(next.object) else {
            continue;
        };
        let bound = o.status()["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty());
        if bound && scheduled.insert(o.metadata.name.clone()) {
            bound_at.insert(o.metadata.name.clone(), Instant::now());
        }
        if o.status()["phase"] == "Running" {
            running.insert(o.metadata.name.clone());
        }
        if all_scheduled.is_none() && scheduled.len() == n_vmis {
            all_scheduled = Some(started.elapsed());
        }
        if running.len() == n_vmis {
            all_running = Some(started.elapsed());
        }
    }
    let mut latencies = Vec::new();
    for c in creators {
        for (name, acknowledged) in c.await.unwrap() {
            latencies.push(bound_at[&name].saturating_duration_since(acknowledged));
        }
    }
    latencies.sort();
    let (all_scheduled, all_running) = (all_scheduled.unwrap(), all_running.unwrap());
    println!(
        "  {n_vmis} instances by {CLIENTS} clients: all Scheduled after {:.2} s ({:.0} placements/s), all Running after {:.2} s",
        all_scheduled.as_secs_f64(),
        n_vmis as f64 / all_scheduled.as_secs_f64(),
        all_running.as_secs_f64(),
    );
    println!(
        "  create acknowledged -> bound (seen by a watch): P50 {:.1} ms, P99 {:.1} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
    );
    let after = writes(&client).await;
    println!("  API writes during the run (2xx), per instance:");
    let mut total = 0;
    for (key, n) in &after {
        let delta = n - before.get(key).copied().unwrap_or(0);
        if delta == 0 {
            continue;
        }
        if key.0 != "leases" {
            total += delta;
        }
        println!(
            "    {:<28} {:<7} {:>7} ({:.2} per instance)",
            key.0,
            key.1,
            delta,
            delta as f64 / n_vmis as f64
        );
    }
    println!(
        "  writes per instance, leases excluded: {:.2}",
        total as f64 / n_vmis as f64
    );
    println!(
        "  vmo up resident memory: {} MiB",
        vmo_testkit::rss_kib(up.pid()) / 1024
    );
}
