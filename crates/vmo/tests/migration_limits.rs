//! Drains at control-plane level, with simulated nodes (the same migration protocol as real agents,
//! no QEMU): every VM leaves the drained node live (same instance), and the migration controller
//! keeps to KubeVirt's parallel limits, per node and per cluster, while the drains run.

use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vmo_agent::sim::{SimAgents, SimConfig};
use vmo_api::kinds::migration::MigrationState;
use vmo_api::{KindInfo, Registry};
use vmo_client::Client;
use vmo_testkit::{wait_for, KeptDir, VmoProcess};

const WAIT: Duration = Duration::from_secs(60);

fn kind(name: &str) -> KindInfo {
    *Registry::builtin().resolve(name).unwrap()
}

/// The most migrations seen in flight at once: (in the cluster, leaving one node).
#[derive(Default, Debug, Clone, Copy)]
struct Peak {
    total: usize,
    per_node: usize,
}

/// Samples the instances' migration states every 20 ms until dropped.
fn watch_peaks(client: Client) -> (Arc<Mutex<Peak>>, tokio::task::JoinHandle<()>) {
    let peak = Arc::new(Mutex::new(Peak::default()));
    let seen = peak.clone();
    let task = tokio::spawn(async move {
        loop {
            if let Ok(list) = client.list(&kind("vmi"), None, "").await {
                let mut per_node: HashMap<String, usize> = HashMap::new();
                let active: Vec<MigrationState> = list
                    .items
                    .iter()
                    .filter_map(MigrationState::of)
                    .filter(MigrationState::active)
                    .collect();
                for s in &active {
                    *per_node.entry(s.source_node.clone()).or_default() += 1;
                }
                let mut p = seen.lock().unwrap();
                p.total = p.total.max(active.len());
                p.per_node = p
                    .per_node
                    .max(per_node.values().copied().max().unwrap_or(0));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (peak, task)
}

async fn placements(client: &Client) -> HashMap<String, (String, String)> {
    let list = client
        .list(&kind("vmi"), Some("default"), "")
        .await
        .unwrap();
    list.items
        .into_iter()
        .map(|i| {
            let node = i.status()["nodeName"].as_str().unwrap_or("").to_string();
            (i.metadata.name.clone(), (i.metadata.uid.clone(), node))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_keep_to_the_parallel_migration_limits() {
    let dir = KeptDir::new("vmo-drain-limits-");
    let vmo = Path::new(env!("CARGO_BIN_EXE_vmo"));
    let up = VmoProcess::start_with_args(vmo, &dir.path().join("data"), &["--no-agent"]).await;
    let client = up.client();
    let mut config = SimConfig::new(4);
    config.heartbeat_interval = Duration::from_secs(1);
    config.lease_duration = Duration::from_secs(10);
    config.migration_time = Duration::from_millis(400);
    let _sims = SimAgents::start(client.clone(), config).await.unwrap();

    // Ten VMs, all on sim-0.
    for n in ["sim-1", "sim-2", "sim-3"] {
        assert!(up.cli(&["node", "cordon", n]).0);
    }
    for i in 0..10 {
        let mut vm = vmo_testkit::vm_manifest(&format!("vm-{i}"));
        vm["spec"]["runStrategy"] = json!("Always");
        vm["spec"]["template"]["spec"]["evictionStrategy"] = json!("LiveMigrate");
        client.create(&kind("vm"), "default", &vm).await.unwrap();
    }
    let before = wait_for("ten VMs running on sim-0", WAIT, || async {
        let p = placements(&client).await;
        (p.len() == 10 && p.values().all(|(_, n)| n == "sim-0")).then_some(p)
    })
    .await;
    for n in ["sim-1", "sim-2", "sim-3"] {
        assert!(up.cli(&["node", "uncordon", n]).0);
    }

    // Drain sim-0: at most 2 leave one node at a time (KubeVirt's default, unchanged by the
    // settings below, which are applied now: the migration controller reads them from its cache,
    // and a change only reaches it a moment after the API accepted it).
    let settings = "apiVersion: vmo.io/v1alpha1\nkind: ClusterSettings\nmetadata:\n  name: cluster\nspec:\n  migrations:\n    parallelMigrationsPerCluster: 3\n";
    assert!(up.cli_with_input(&["apply", "-f", "-"], Some(settings)).0);
    let (peak, sampler) = watch_peaks(client.clone());
    let (ok, out, err) = up.cli(&["node", "drain", "sim-0", "--timeout", "120"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("node/sim-0 drained"), "{out}");
    let seen = *peak.lock().unwrap();
    assert_eq!(
        seen.per_node, 2,
        "parallelOutboundMigrationsPerNode 2: {seen:?}"
    );
    let after = placements(&client).await;
    for (name, (uid, node)) in &after {
        assert_eq!(uid, &before[name].0, "{name} moved live, same instance");
        assert_ne!(node, "sim-0", "{name}");
    }

    // Two drains at once, with a cluster-wide limit of 3 (set above) and 2 per node.
    *peak.lock().unwrap() = Peak::default();
    let drain = |node: &str| {
        std::process::Command::new(vmo)
            .args(["node", "drain", node, "--timeout", "120"])
            .env("KUBECONFIG", &up.kubeconfig)
            .output()
            .unwrap()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| drain("sim-1"));
        let b = s.spawn(|| drain("sim-2"));
        (a.join().unwrap(), b.join().unwrap())
    });
    for out in [&a, &b] {
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    sampler.abort();
    let seen = *peak.lock().unwrap();
    assert!(
        seen.total <= 3 && seen.per_node <= 2,
        "limits exceeded: {seen:?}"
    );
    assert!(seen.total >= 2, "the two drains overlapped: {seen:?}");
    let last = placements(&client).await;
    assert!(last.values().all(|(_, n)| n == "sim-3"), "{last:?}");
    assert_eq!(last.len(), 10);
}
