//! Small readers the end-to-end tests share: kinds by name, objects (and instances) in the
//! `default` namespace, a condition's message, a VM's printable status, a claim's volume file,
//! an image's qemu-img facts, a file's SHA-256, a command that must succeed.

use crate::wait_for;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use vmo_api::{KindInfo, Object, Registry};
use vmo_client::Client;

/// How long the readers below wait.
const WAIT: Duration = Duration::from_secs(180);

/// The kind a user would name (`vm`, `pvc`, `dv`, ...).
pub fn kind(name: &str) -> KindInfo {
    *Registry::builtin().resolve(name).expect("kind")
}

/// The object `name` of `resource` in `default` (or cluster-scoped), if it exists.
pub async fn get(client: &Client, resource: &str, name: &str) -> Option<Object> {
    let k = kind(resource);
    let ns = if k.namespaced { "default" } else { "" };
    client.get(&k, ns, name).await.ok()
}

/// The VirtualMachineInstance `name` in `default`, if it exists.
pub async fn vmi(client: &Client, name: &str) -> Option<Object> {
    get(client, "vmi", name).await
}

/// The message of the object's `Ready` condition (empty when none).
pub fn ready_message(o: &Object) -> String {
    o.status()["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["message"].as_str())
        .unwrap_or("")
        .to_string()
}

/// Waits until the VM `name` shows `want` as its printableStatus.
pub async fn printable(client: &Client, name: &str, want: &str) -> Object {
    wait_for(&format!("VM {name} {want}"), WAIT, || async {
        get(client, "vm", name)
            .await
            .filter(|v| v.status()["printableStatus"] == want)
    })
    .await
}

/// The serial log of an instance run by `vmo up`'s agent on `data`.
pub fn serial_log(data: &Path, uid: &str) -> PathBuf {
    data.join("agent").join("vms").join(uid).join("serial.log")
}

/// The volume file of a bound claim.
pub async fn claim_file(client: &Client, claim: &str) -> PathBuf {
    let pvc = get(client, "pvc", claim).await.expect("claim");
    let pv_name = pvc.spec()["volumeName"]
        .as_str()
        .expect("bound")
        .to_string();
    let pv = get(client, "pv", &pv_name).await.expect("volume");
    PathBuf::from(pv.spec()["local"]["path"].as_str().expect("path"))
}

/// `qemu-img info` of an image (even one a VM holds open).
pub fn image_info(path: &Path) -> Value {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(path)
        .output()
        .expect("qemu-img");
    serde_json::from_slice(&out.stdout).expect("info json")
}

/// The SHA-256 of a file, in hex.
pub fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Runs a command that must succeed.
pub fn sh(cmd: &mut Command) {
    let out = cmd.output().expect("command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
