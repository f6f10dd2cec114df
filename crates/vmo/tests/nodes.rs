//! Node agents against a real `vmo up`: the local agent and two more `vmo agent` processes register
//! Nodes with capacity, labels and versions, renew heartbeat Leases, turn Unknown and tainted when
//! killed, and come back Ready when restarted; each serves its own endpoint, which the server
//! reaches. A second agent on one data directory is refused. A VM larger than its node is
//! refused with the reason.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use vmo_api::kinds::core::node_condition;
use vmo_api::{Object, Registry};
use vmo_client::Client;
use vmo_testkit::{wait_for, KeptDir, VmoProcess};

const WAIT: Duration = Duration::from_secs(30);

fn vmo() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vmo"))
}

/// An agent process, killed when the test ends, passing or failing.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_agent(up: &VmoProcess, dir: &Path, name: &str, zone: &str) -> Agent {
    Command::new(vmo())
        .args([
            "agent",
            "--node-name",
            name,
            "--zone",
            zone,
            "--pool",
            "rack-1",
            "--heartbeat-interval",
            "1s",
            "--agent-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.join(name))
        .env("KUBECONFIG", &up.kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Agent)
        .expect("spawn vmo agent")
}

async fn node(client: &Client, name: &str) -> Option<Object> {
    let kind = *Registry::builtin().resolve("nodes").unwrap();
    client.get(&kind, "", name).await.ok()
}

fn unreachable_taints(n: &Object) -> usize {
    n.spec()["taints"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter(|t| t["key"] == "node.kubernetes.io/unreachable")
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn agents_register_heartbeat_and_are_marked_unreachable_when_killed() {
    let dir = KeptDir::new("vmo-nodes-");
    let up = VmoProcess::start_with_args(
        vmo(),
        &dir.path().join("data"),
        &[
            "--node-name",
            "local",
            "--heartbeat-interval",
            "1s",
            "--node-grace-period",
            "3s",
        ],
    )
    .await;
    let client = up.client();
    let mut a1 = spawn_agent(&up, dir.path(), "n1", "zone-a");
    let a2 = spawn_agent(&up, dir.path(), "n2", "zone-b");
    for name in ["local", "n1", "n2"] {
        let n = wait_for(&format!("node {name} Ready"), WAIT, || async {
            node(&client, name)
                .await
                .filter(|n| node_condition(n, "Ready").as_deref() == Some("True"))
        })
        .await;
        let cpus = std::thread::available_parallelism()
            .unwrap()
            .get()
            .to_string();
        assert_eq!(n.status()["capacity"]["cpu"], cpus.as_str());
        let memory =
            vmo_api::Quantity::parse(n.status()["capacity"]["memory"].as_str().unwrap()).unwrap();
        let allocatable =
            vmo_api::Quantity::parse(n.status()["allocatable"]["memory"].as_str().unwrap())
                .unwrap();
        assert!(
            allocatable < memory && !allocatable.is_zero(),
            "allocatable memory keeps a reserve"
        );
        assert!(n.status()["nodeInfo"]["containerRuntimeVersion"]
            .as_str()
            .unwrap()
            .starts_with("qemu://"));
        assert!(n
            .metadata
            .labels
            .contains_key("topology.kubernetes.io/zone"));
    }
    let n1 = node(&client, "n1").await.unwrap();
    assert_eq!(n1.metadata.labels["topology.kubernetes.io/zone"], "zone-a");
    // Each agent serves its own endpoint; the server reaches every one of them.
    let mut endpoints = std::collections::HashSet::new();
    for name in ["local", "n1", "n2"] {
        let n = node(&client, name).await.unwrap();
        endpoints.insert(n.metadata.annotations["vmo.io/agent-endpoint"].clone());
    }
    assert_eq!(endpoints.len(), 3, "{endpoints:?}");
    for name in ["local", "n1", "n2"] {
        let page = client
            .get_text(&format!("/api/v1/nodes/{name}/proxy/metrics"))
            .await
            .unwrap();
        assert!(
            page.contains(&format!("vmo_agent_running_vmis{{node=\"{name}\"}} 0")),
            "{page}"
        );
    }
    assert_eq!(n1.metadata.labels["vmo.io/machine-pool"], "rack-1");
    // The table shows all three.
    let (ok, out, _) = up.cli(&["get", "nodes"]);
    assert!(
        ok && out.contains("n1") && out.contains("n2") && out.contains("local"),
        "{out}"
    );

    // Heartbeats: the lease is renewed.
    let lease_kind = *Registry::builtin().resolve("leases").unwrap();
    let first = client
        .get(&lease_kind, "vmo-node-lease", "n1")
        .await
        .unwrap();
    let renewed = |l: &Object| l.spec()["renewTime"].as_str().unwrap_or("").to_string();
    wait_for("lease renewal", WAIT, || async {
        let now = client.get(&lease_kind, "vmo-node-lease", "n1").await.ok()?;
        (renewed(&now) != renewed(&first)).then_some(())
    })
    .await;

    // A second agent on n2's data directory is refused.
    let second = Command::new(vmo())
        .args(["agent", "--node-name", "n2-again", "--data-dir"])
        .arg(dir.path().join("n2"))
        .env("KUBECONFIG", &up.kubeconfig)
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already running"));

    // kill -9 of n1: Unknown and tainted after the grace period; n2 stays Ready.
    a1.0.kill().unwrap();
    a1.0.wait().unwrap();
    let lost = wait_for("n1 unreachable", WAIT, || async {
        node(&client, "n1").await.filter(|n| {
            node_condition(n, "Ready").as_deref() == Some("Unknown") && unreachable_taints(n) == 2
        })
    })
    .await;
    assert_eq!(
        lost.status()["conditions"][0]["reason"],
        "NodeStatusUnknown"
    );
    assert_eq!(
        node_condition(&node(&client, "n2").await.unwrap(), "Ready").as_deref(),
        Some("True")
    );
    // Restarted, it is Ready again and untainted.
    let a1 = spawn_agent(&up, dir.path(), "n1", "zone-a");
    wait_for("n1 back", WAIT, || async {
        node(&client, "n1").await.filter(|n| {
            node_condition(n, "Ready").as_deref() == Some("True") && unreachable_taints(n) == 0
        })
    })
    .await;
    drop((a1, a2));
    // Agents killed while probing the accelerator leave no probe QEMU behind.
    let probes = dir.path().display().to_string();
    wait_for("no probe QEMU left", WAIT, || async {
        let left = std::fs::read_dir("/proc")
            .ok()?
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .any(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains(&probes) && c.contains("accel-probe")
            });
        (!left).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_invalid_node_name_is_refused() {
    let dir = KeptDir::new("vmo-nodes-");
    let up = VmoProcess::start_with_args(vmo(), &dir.path().join("data"), &["--no-agent"]).await;
    let out = Command::new(vmo())
        .args(["agent", "--node-name", "Bad_Name", "--data-dir"])
        .arg(dir.path().join("bad"))
        .env("KUBECONFIG", &up.kubeconfig)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid node name \"Bad_Name\""), "{err}");
}

#[tokio::test]
async fn a_vm_larger_than_its_node_is_unschedulable_and_says_why() {
    let dir = KeptDir::new("vmo-too-big-");
    let up = VmoProcess::start_with_args(
        vmo(),
        &dir.path().join("data"),
        &["--node-name", "small", "--accel", "tcg"],
    )
    .await;
    let client = up.client();
    wait_for("node small Ready", WAIT, || async {
        node(&client, "small")
            .await
            .filter(|n| node_condition(n, "Ready").as_deref() == Some("True"))
    })
    .await;
    let mut vm = vmo_testkit::vm_manifest("huge");
    vm["spec"]["runStrategy"] = "Always".into();
    vm["spec"]["template"]["spec"]["domain"]["memory"]["guest"] = "64Ti".into();
    let (ok, _, err) = up.cli_with_input(&["apply", "-f", "-"], Some(&vm.to_string()));
    assert!(ok, "{err}");
    let registry = Registry::builtin();
    let vmi = wait_for("the instance to be refused", WAIT, || async {
        client
            .get(registry.resolve("vmi").unwrap(), "default", "huge")
            .await
            .ok()
            .filter(|i| i.status()["conditions"][0]["reason"] == "Unschedulable")
    })
    .await;
    let condition = &vmi.status()["conditions"][0];
    assert_eq!(condition["type"], "PodScheduled");
    assert_eq!(condition["status"], "False");
    let message = condition["message"].as_str().unwrap();
    assert!(
        message.contains("insufficient memory") && message.contains("67108864 MiB"),
        "{message}"
    );
    assert_eq!(vmi.status()["phase"], "Pending");
    assert!(vmi.status()["nodeName"].is_null(), "never bound");
    wait_for("ErrorUnschedulable", WAIT, || async {
        client
            .get(registry.resolve("vm").unwrap(), "default", "huge")
            .await
            .ok()
            .filter(|v| v.status()["printableStatus"] == "ErrorUnschedulable")
    })
    .await;
    let described = wait_for("the event", WAIT, || async {
        let (_, out, _) = up.cli(&["describe", "vm", "huge"]);
        out.contains("FailedScheduling").then_some(out)
    })
    .await;
    assert!(described.contains("insufficient memory"), "{described}");
}
