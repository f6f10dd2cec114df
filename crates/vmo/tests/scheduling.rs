//! The scheduler against a real `vmo up --no-agent`, with simulated nodes in three zones (the
//! simulated agent runs in this process): VM anti-affinity by zone puts three VMs in three zones and
//! keeps a fourth Pending with the reason; a node selector picks its node; a tainted node is avoided
//! unless tolerated; a cordoned node is avoided until uncordoned; a VM too big for every node waits,
//! saying so, until a big enough node joins.

use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use vmo_agent::sim::{SimAgents, SimConfig};
use vmo_api::{KindInfo, Object, Registry};
use vmo_client::Client;
use vmo_testkit::objects::vmi;
use vmo_testkit::{wait_for, KeptDir, VmoProcess};

const WAIT: Duration = Duration::from_secs(30);
const ZONE: &str = "topology.kubernetes.io/zone";

fn vmo() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vmo"))
}

fn kind(name: &str) -> KindInfo {
    *Registry::builtin().resolve(name).unwrap()
}

/// A control plane without nodes, and `config`'s simulated nodes joined to it.
async fn cluster(dir: &KeptDir, config: SimConfig) -> (VmoProcess, Client, SimAgents) {
    let up = VmoProcess::start_with_args(vmo(), &dir.path().join("data"), &["--no-agent"]).await;
    let client = up.client();
    let sims = SimAgents::start(client.clone(), config).await.unwrap();
    (up, client, sims)
}

fn sim_config(nodes: usize) -> SimConfig {
    let mut config = SimConfig::new(nodes);
    config.heartbeat_interval = Duration::from_secs(1);
    config.lease_duration = Duration::from_secs(10);
    config
}

/// Creates a running VM whose template has `labels` and the `spec` fields of `extra`.
async fn create_vm(client: &Client, name: &str, labels: Value, extra: Value) {
    let mut vm = vmo_testkit::vm_manifest(name);
    vm["spec"]["runStrategy"] = json!("Always");
    vm["spec"]["template"]["metadata"] = json!({ "labels": labels });
    for (k, v) in extra.as_object().unwrap() {
        vm["spec"]["template"]["spec"][k] = v.clone();
    }
    client.create(&kind("vm"), "default", &vm).await.unwrap();
}

/// Waits until the VM's instance runs; returns its node.
async fn running_on(client: &Client, name: &str) -> String {
    let i = wait_for(&format!("{name} Running"), WAIT, || async {
        vmi(client, name).await.filter(|i| {
            i.status()["phase"] == "Running"
                && i.status()["conditions"][0]["type"] == "Ready"
                && i.status()["conditions"][0]["status"] == "True"
        })
    })
    .await;
    i.status()["nodeName"].as_str().unwrap().to_string()
}

/// Waits until the VM's instance is refused with a message that passes `check` (the nodes may
/// still be coming up at first); returns the message.
async fn unschedulable(client: &Client, name: &str, check: impl Fn(&str) -> bool) -> String {
    let i = wait_for(&format!("{name} Unschedulable"), WAIT, || async {
        vmi(client, name).await.filter(|i| {
            i.status()["conditions"][0]["reason"] == "Unschedulable"
                && check(
                    i.status()["conditions"][0]["message"]
                        .as_str()
                        .unwrap_or(""),
                )
        })
    })
    .await;
    assert_eq!(i.status()["phase"], "Pending");
    assert!(i.status()["nodeName"].is_null(), "never bound");
    let condition = &i.status()["conditions"][0];
    assert_eq!(condition["type"], "PodScheduled");
    assert_eq!(condition["status"], "False");
    condition["message"].as_str().unwrap().to_string()
}

async fn node(client: &Client, name: &str) -> Object {
    client.get(&kind("nodes"), "", name).await.unwrap()
}

async fn patch_node(client: &Client, name: &str, patch: Value) {
    client
        .merge_patch(&kind("nodes"), "", name, None, &patch, "test")
        .await
        .unwrap();
}

/// Messages of the events with this reason about `name`.
async fn events(client: &Client, name: &str, reason: &str) -> Vec<String> {
    let query = format!("fieldSelector=involvedObject.name%3D{name}%2Creason%3D{reason}&limit=100");
    client
        .list(&kind("events"), Some("default"), &query)
        .await
        .map(|l| {
            l.items
                .iter()
                .filter_map(|e| e.body.get("message").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_affinity_by_zone_spreads_three_vms_and_keeps_a_fourth_pending() {
    let dir = KeptDir::new("vmo-sched-anti-");
    let (_up, client, sims) = cluster(&dir, sim_config(3)).await;
    assert_eq!(sims.node_names(), ["sim-0", "sim-1", "sim-2"]);
    let apart = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": ZONE}]}}});
    let mut zones = Vec::new();
    for i in 0..3 {
        let name = format!("db-{i}");
        create_vm(&client, &name, json!({"app": "db"}), apart.clone()).await;
        let n = running_on(&client, &name).await;
        zones.push(node(&client, &n).await.metadata.labels[ZONE].clone());
        let scheduled = wait_for("the Scheduled event", WAIT, || async {
            events(&client, &name, "Scheduled").await.pop()
        })
        .await;
        assert_eq!(
            scheduled,
            format!("Successfully assigned default/{name} to {n}")
        );
    }
    zones.sort();
    assert_eq!(zones, ["zone-0", "zone-1", "zone-2"]);
    create_vm(&client, "db-3", json!({"app": "db"}), apart).await;
    let expected = "0/3 nodes available: 3 node(s) didn't match VM anti-affinity rules.";
    unschedulable(&client, "db-3", |m| m == expected).await;
    wait_for("ErrorUnschedulable", WAIT, || async {
        client
            .get(&kind("vm"), "default", "db-3")
            .await
            .ok()
            .filter(|v| v.status()["printableStatus"] == "ErrorUnschedulable")
    })
    .await;
    // Another app is not kept apart from the databases.
    create_vm(&client, "web", json!({"app": "web"}), json!({})).await;
    running_on(&client, "web").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_selectors_taints_and_cordons_steer_placement() {
    let dir = KeptDir::new("vmo-sched-steer-");
    let up = VmoProcess::start_with_args(vmo(), &dir.path().join("data"), &["--no-agent"]).await;
    let client = up.client();
    // The Nodes exist with their label, taint and cordon before their agents report them Ready,
    // so no placement can happen before the scheduler knows them (the simulated agent keeps the
    // spec and adds its labels).
    for (name, labels, spec) in [
        (
            "sim-0",
            json!({}),
            json!({"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}),
        ),
        ("sim-1", json!({}), json!({"unschedulable": true})),
        ("sim-2", json!({"disk": "ssd"}), json!({})),
    ] {
        let node = json!({"apiVersion": "v1", "kind": "Node",
                          "metadata": {"name": name, "labels": labels}, "spec": spec});
        client.create(&kind("nodes"), "", &node).await.unwrap();
    }
    let _sims = SimAgents::start(client.clone(), sim_config(3))
        .await
        .unwrap();
    assert_eq!(node(&client, "sim-2").await.metadata.labels[ZONE], "zone-2");
    create_vm(
        &client,
        "fast",
        json!({}),
        json!({"nodeSelector": {"disk": "ssd"}}),
    )
    .await;
    assert_eq!(running_on(&client, "fast").await, "sim-2");

    // sim-0 is tainted, sim-1 cordoned: only sim-2 takes a VM without tolerations.
    for i in 0..3 {
        let name = format!("plain-{i}");
        create_vm(&client, &name, json!({}), json!({})).await;
        assert_eq!(running_on(&client, &name).await, "sim-2", "{name}");
    }
    // On sim-0 only with the toleration.
    let on_sim0 = json!({"kubernetes.io/hostname": "sim-0"});
    create_vm(
        &client,
        "untolerated",
        json!({}),
        json!({"nodeSelector": on_sim0}),
    )
    .await;
    let expected = "0/3 nodes available: 1 node(s) didn't match node selector/affinity, \
                    1 node(s) had untolerated taint {dedicated}, 1 unschedulable.";
    unschedulable(&client, "untolerated", |m| m == expected).await;
    create_vm(
        &client,
        "tolerated",
        json!({}),
        json!({"nodeSelector": on_sim0,
               "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}),
    )
    .await;
    assert_eq!(running_on(&client, "tolerated").await, "sim-0");

    // On the cordoned node once it is uncordoned.
    let on_sim1 = json!({"nodeSelector": {"kubernetes.io/hostname": "sim-1"}});
    create_vm(&client, "waits", json!({}), on_sim1).await;
    unschedulable(&client, "waits", |m| m.contains("1 unschedulable")).await;
    patch_node(&client, "sim-1", json!({"spec": {"unschedulable": false}})).await;
    assert_eq!(running_on(&client, "waits").await, "sim-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_too_big_for_every_node_waits_until_a_big_enough_node_joins() {
    let dir = KeptDir::new("vmo-sched-big-");
    let mut small = sim_config(3);
    small.memory_bytes = 4 << 30;
    let (_up, client, _sims) = cluster(&dir, small).await;
    let big_guest = json!({"domain": {
        "cpu": {"cores": 1}, "memory": {"guest": "8Gi"},
        "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}}});
    create_vm(&client, "huge", json!({}), big_guest).await;
    let message = unschedulable(&client, "huge", |m| {
        m.starts_with("0/3 nodes available: 3 insufficient memory.")
    })
    .await;
    assert!(message.contains("8192 MiB"), "{message}");
    wait_for("the FailedScheduling event", WAIT, || async {
        let warnings = events(&client, "huge", "FailedScheduling").await;
        warnings.contains(&message).then_some(())
    })
    .await;

    let mut big = sim_config(1);
    big.name_prefix = "big-".into();
    big.memory_bytes = 64 << 30;
    let _big = SimAgents::start(client.clone(), big).await.unwrap();
    assert_eq!(running_on(&client, "huge").await, "big-0");
}
