//! The `vmo` CLI end to end against a real `vmo up` process: apply, get in every format, watch,
//! describe, delete, error output, api-resources, version; and `vmo up` itself: a second instance
//! refused, clean shutdown on Ctrl-C, data kept across restarts and across kill -9.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use vmo_testkit::{KeptDir, VmoProcess};

fn vmo() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vmo"))
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn ok(result: (bool, String, String)) -> String {
    assert!(
        result.0,
        "command failed:\nstdout: {}\nstderr: {}",
        result.1, result.2
    );
    result.1
}

fn fails(result: (bool, String, String)) -> String {
    assert!(!result.0, "command should fail but printed: {}", result.1);
    result.2
}

#[tokio::test]
async fn apply_get_describe_delete_round_trip() {
    let dir = KeptDir::new("vmo-cli-");
    let up = VmoProcess::start(vmo(), &dir.path().join("data")).await;
    let manifest = examples().join("vm-demo.yaml");
    let manifest = manifest.to_str().unwrap();
    assert!(
        ok(up.cli(&["apply", "-f", manifest])).contains("virtualmachine.kubevirt.io/demo created")
    );
    assert!(ok(up.cli(&["apply", "-f", manifest]))
        .contains("virtualmachine.kubevirt.io/demo unchanged"));
    let edited = std::fs::read_to_string(manifest)
        .unwrap()
        .replace("runStrategy: Halted", "runStrategy: Manual");
    assert!(ok(up.cli_with_input(&["apply", "-f", "-"], Some(&edited))).contains("demo configured"));

    let table = ok(up.cli(&["get", "vm"]));
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("NAME") && header.contains("STATUS"),
        "{table}"
    );
    assert!(table.lines().any(|l| l.starts_with("demo ")), "{table}");
    let json: Value = serde_json::from_str(&ok(up.cli(&[
        "get",
        "virtualmachines",
        "demo",
        "-o",
        "json",
    ])))
    .unwrap();
    assert_eq!(json["spec"]["runStrategy"], "Manual");
    assert_eq!(
        json["spec"]["template"]["spec"]["domain"]["memory"]["guest"],
        "256Mi"
    );
    let yaml: Value = serde_yaml_ng::from_str(&ok(up.cli(&["get", "vms", "-o", "yaml"]))).unwrap();
    assert_eq!(yaml["kind"], "List");
    assert_eq!(
        ok(up.cli(&["get", "vm", "-o", "name"])).trim(),
        "virtualmachine.kubevirt.io/demo"
    );
    assert!(ok(up.cli(&["get", "vm", "-l", "app=demo"])).contains("demo"));
    assert!(!ok(up.cli(&["get", "vm", "-l", "app=other"])).contains("demo"));
    assert!(ok(up.cli(&["get", "vm", "-A"]))
        .lines()
        .next()
        .unwrap()
        .starts_with("NAMESPACE"));
    assert!(ok(up.cli(&["get", "ns"])).contains("default"));

    let described = ok(up.cli(&["describe", "vm", "demo"]));
    for part in [
        "Name:",
        "Namespace:",
        "default",
        "Spec:",
        "runStrategy: Manual",
        "Events:",
    ] {
        assert!(
            described.contains(part),
            "{part} missing from:\n{described}"
        );
    }
    assert!(ok(up.cli(&["delete", "vm", "demo"]))
        .contains("virtualmachine.kubevirt.io \"demo\" deleted"));
    let err = fails(up.cli(&["get", "vm", "demo"]));
    assert!(
        err.contains(
            "Error from server (NotFound): virtualmachines.kubevirt.io \"demo\" not found"
        ),
        "{err}"
    );
    assert!(fails(up.cli(&["delete", "vm", "demo"])).contains("NotFound"));
    ok(up.cli(&["delete", "vm", "demo", "--ignore-not-found"]));
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let dir = KeptDir::new("vmo-cli-");
    let up = VmoProcess::start(vmo(), &dir.path().join("data")).await;
    let bad_vm = std::fs::read_to_string(examples().join("vm-demo.yaml"))
        .unwrap()
        .replace("guest: 256Mi", "guest: 12QB");
    let err = fails(up.cli_with_input(&["apply", "-f", "-"], Some(&bad_vm)));
    assert!(err.contains("Error from server (Invalid)"), "{err}");
    assert!(
        err.contains(r#"spec.template.spec.domain.memory.guest: Invalid value: "12QB""#),
        "{err}"
    );
    let err = fails(up.cli_with_input(&["apply", "-f", "-"], Some("kind: [unclosed\n")));
    assert!(err.contains("parsing <stdin>"), "{err}");
    let err = fails(up.cli_with_input(
        &["apply", "-f", "-"],
        Some("apiVersion: example.com/v9\nkind: Gadget\nmetadata: {name: g}\n"),
    ));
    assert!(err.contains("no kind \"Gadget\""), "{err}");
    let err = fails(up.cli(&["get", "gadgets"]));
    assert!(
        err.contains("doesn't have a resource type \"gadgets\""),
        "{err}"
    );
    let err = fails(up.cli(&["apply", "-f", "/nonexistent/file.yaml"]));
    assert!(err.contains("/nonexistent/file.yaml"), "{err}");
    // A client with no server to talk to says so.
    let (success, _, err) = vmo_testkit::run_with_input(
        vmo(),
        &dir.path().join("missing-kubeconfig"),
        &["get", "vm"],
        None,
    );
    assert!(!success && err.contains("no kubeconfig"), "{err}");
}

#[tokio::test]
async fn api_resources_version_and_watch() {
    let dir = KeptDir::new("vmo-cli-");
    let up = VmoProcess::start(vmo(), &dir.path().join("data")).await;
    let resources = ok(up.cli(&["api-resources"]));
    assert!(
        resources.lines().any(|l| l.starts_with("virtualmachines ")
            && l.contains("vm,vms")
            && l.contains("kubevirt.io/v1")),
        "{resources}"
    );
    assert!(ok(up.cli(&["version"])).contains("Server Version"));
    let mut watcher = Command::new(vmo())
        .args(["get", "vm", "--watch"])
        .env("KUBECONFIG", &up.kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watcher.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    ok(up.cli(&[
        "apply",
        "-f",
        examples().join("vm-demo.yaml").to_str().unwrap(),
    ]));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut seen = false;
    while std::time::Instant::now() < deadline && !seen {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            seen = line.starts_with("demo ");
        }
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
    assert!(seen, "vmo get --watch printed the new VM");
}

#[tokio::test]
async fn up_refuses_a_second_instance_stops_cleanly_and_keeps_data() {
    let dir = KeptDir::new("vmo-up-");
    let data = dir.path().join("data");
    let mut up = VmoProcess::start(vmo(), &data).await;
    ok(up.cli(&[
        "apply",
        "-f",
        examples().join("vm-demo.yaml").to_str().unwrap(),
    ]));
    // A second `vmo up` on the same data directory refuses clearly.
    let second = Command::new(vmo())
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--pod-network",
            "user",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("already running") && err.contains(&up.pid().to_string()),
        "{err}"
    );
    // Ctrl-C shuts down cleanly.
    assert!(up.signal_and_wait("INT"), "vmo up exits 0 on SIGINT");
    assert!(up.log().contains("vmo stopped"), "{}", up.log());
    // A restart keeps everything.
    let mut up = VmoProcess::start(vmo(), &data).await;
    assert!(ok(up.cli(&["get", "vm", "demo", "-o", "name"])).contains("demo"));
    // So does kill -9.
    ok(up.cli(&["delete", "vm", "demo"]));
    let up_pid = up.pid();
    assert!(!up.signal_and_wait("KILL"), "killed by SIGKILL ({up_pid})");
    let up = VmoProcess::start(vmo(), &data).await;
    let err = fails(up.cli(&["get", "vm", "demo"]));
    assert!(
        err.contains("NotFound"),
        "the acknowledged delete survived kill -9: {err}"
    );
    assert!(ok(up.cli(&["get", "ns", "default", "-o", "name"])).contains("namespace/default"));
}
