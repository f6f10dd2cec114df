//! The node drain subresource (`POST /apis/subresources.vmo.io/v1/nodes/NAME/drain`, the web UI's
//! drain) against a real `vmo up` with simulated nodes: the dry run reports each VM's fate without
//! changing anything, a drain that would strand a VM is refused whole (409, nothing changed), and a
//! drain that can finish cordons the node and empties it (live migration keeps the instance).

use http::Method;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use vmo_agent::sim::{SimAgents, SimConfig};
use vmo_api::{KindInfo, Registry};
use vmo_client::{Client, ClientError};
use vmo_testkit::{wait_for, KeptDir, VmoProcess};

const WAIT: Duration = Duration::from_secs(60);

fn kind(name: &str) -> KindInfo {
    *Registry::builtin().resolve(name).unwrap()
}

async fn drain(client: &Client, node: &str, dry_run: bool) -> Result<Value, ClientError> {
    let query = if dry_run { "?dryRun=All" } else { "" };
    let path = format!("/apis/subresources.vmo.io/v1/nodes/{node}/drain{query}");
    client
        .call(Method::POST, &path, None, "application/json")
        .await
}

/// `name -> (action, target or reason)` from a DrainPlan.
fn fates(plan: &Value) -> std::collections::BTreeMap<String, (String, String)> {
    plan["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let detail = i["target"].as_str().or(i["reason"].as_str()).unwrap_or("");
            (
                i["name"].as_str().unwrap().to_string(),
                (
                    i["action"].as_str().unwrap().to_string(),
                    detail.to_string(),
                ),
            )
        })
        .collect()
}

async fn instance(client: &Client, name: &str) -> Option<vmo_api::Object> {
    client.get(&kind("vmi"), "default", name).await.ok()
}

async fn cordoned(client: &Client, node: &str) -> bool {
    let n = client.get(&kind("nodes"), "", node).await.unwrap();
    n.spec()["unschedulable"] == true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_subresource_plans_refuses_and_drains() {
    let dir = KeptDir::new("vmo-drain-api-");
    let vmo = Path::new(env!("CARGO_BIN_EXE_vmo"));
    let up = VmoProcess::start_with_args(vmo, &dir.path().join("data"), &["--no-agent"]).await;
    let client = up.client();
    let mut config = SimConfig::new(2);
    config.heartbeat_interval = Duration::from_secs(1);
    config.migration_time = Duration::from_millis(300);
    let _sims = SimAgents::start(client.clone(), config).await.unwrap();
    wait_for("two sim nodes", WAIT, || async {
        let nodes = client.list(&kind("nodes"), None, "").await.ok()?;
        (nodes.items.len() == 2).then_some(())
    })
    .await;
    assert!(up.cli(&["node", "cordon", "sim-1"]).0);
    for (name, eviction) in [
        ("mover", "LiveMigrate"),
        ("stopper", "None"),
        ("keeper", "External"),
    ] {
        let mut vm = vmo_testkit::vm_manifest(name);
        vm["spec"]["runStrategy"] = json!("Always");
        vm["spec"]["template"]["spec"]["evictionStrategy"] = json!(eviction);
        client.create(&kind("vm"), "default", &vm).await.unwrap();
    }
    let mover = wait_for("three VMs running on sim-0", WAIT, || async {
        let mut on_sim0 = 0;
        for name in ["mover", "stopper", "keeper"] {
            let i = instance(&client, name).await?;
            if i.status()["phase"] == "Running" && i.status()["nodeName"] == "sim-0" {
                on_sim0 += 1;
            }
        }
        if on_sim0 == 3 {
            instance(&client, "mover").await
        } else {
            None
        }
    })
    .await;

    // Nowhere to go: the plan says so, and a drain is refused with nothing changed.
    let plan = drain(&client, "sim-0", true).await.expect("dry run");
    assert_eq!(
        (plan["kind"].as_str(), plan["started"].as_bool()),
        (Some("DrainPlan"), Some(false))
    );
    let f = fates(&plan);
    assert_eq!(f["mover"].0, "Blocked", "{plan}");
    assert!(f["mover"].1.contains("no node can take it"), "{plan}");
    assert_eq!(f["stopper"].0, "Stop");
    assert_eq!(f["keeper"].0, "Leave");
    match drain(&client, "sim-0", false).await {
        Err(ClientError::Api(s)) => {
            assert_eq!(s.code, 409);
            assert!(
                s.message.contains("mover") && s.message.contains("nothing was changed"),
                "{}",
                s.message
            );
        }
        other => panic!("a drain that would strand mover was not refused: {other:?}"),
    }
    assert!(!cordoned(&client, "sim-0").await, "sim-0 was left alone");
    assert_eq!(
        instance(&client, "stopper").await.unwrap().status()["nodeName"],
        "sim-0"
    );

    // Room elsewhere: the plan names the target, and the drain empties the node.
    assert!(up.cli(&["node", "uncordon", "sim-1"]).0);
    let plan = drain(&client, "sim-0", true).await.expect("dry run");
    assert_eq!(
        fates(&plan)["mover"],
        ("Migrate".to_string(), "sim-1".to_string()),
        "{plan}"
    );
    let started = drain(&client, "sim-0", false).await.expect("drain");
    assert_eq!(started["started"], true);
    assert!(cordoned(&client, "sim-0").await);
    wait_for("mover live-migrated to sim-1", WAIT, || async {
        let i = instance(&client, "mover").await?;
        (i.metadata.uid == mover.metadata.uid && i.status()["nodeName"] == "sim-1").then_some(())
    })
    .await;
    wait_for("stopper restarted on sim-1", WAIT, || async {
        let i = instance(&client, "stopper").await?;
        (i.status()["nodeName"] == "sim-1" && i.status()["phase"] == "Running").then_some(())
    })
    .await;
    assert_eq!(
        instance(&client, "keeper").await.unwrap().status()["nodeName"],
        "sim-0"
    );

    // Bad requests name the cause.
    match drain(&client, "no-such-node", true).await {
        Err(ClientError::Api(s)) => assert_eq!(s.code, 404),
        other => panic!("{other:?}"),
    }
    match client
        .call(
            Method::GET,
            "/apis/subresources.vmo.io/v1/nodes/sim-0/drain",
            None,
            "application/json",
        )
        .await
    {
        Err(ClientError::Api(s)) => assert_eq!(s.code, 405, "{}", s.message),
        other => panic!("{other:?}"),
    }
}
