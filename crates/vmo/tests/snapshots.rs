//! Snapshots, restores and clones end to end under a real `vmo up` with real QEMU (TCG) and
//! qemu-img. A VM with two data disks writes a marker on both from its console; a snapshot taken
//! while it runs holds both disks at that moment (one internal snapshot in each file) and the
//! guest keeps running; a marker written after it is gone once the stopped VM is restored, and the
//! VM spec is back too; a restore while the VM runs waits and says why; a restore into a new VM
//! and a clone (fresh MAC address and serial) boot with the snapshot's data. Bad input: a snapshot
//! of a VM that does not exist fails, and a restore of it says the snapshot is not ready. One
//! claim's VolumeSnapshot (class with deletionPolicy Retain) restores into a new claim.

use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use vmo_api::Object;
use vmo_client::Client;
use vmo_testkit::objects::{get, kind, printable, ready_message, serial_log};
use vmo_testkit::{
    collect_output, console_log_until, process_alive, test_guest, wait_for, KeptDir, VmoProcess,
};

const WAIT: Duration = Duration::from_secs(180);

fn vmo() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vmo"))
}

/// The guest's user-data: finds the two data disks by size and prints what each starts with, and
/// its first NIC's MAC address, on every boot.
const USER_DATA: &str = r#"#!/bin/sh
for d in /sys/class/block/vd*; do
  case $(cat $d/size) in
    32768) echo /dev/${d##*/} > /run/disk-a ;;
    49152) echo /dev/${d##*/} > /run/disk-b ;;
  esac
done
show() { dd if=$(cat /run/disk-$1) bs=32 count=1 2>/dev/null | tr -dc A-Za-z0-9; }
echo "VMO-DISKS: a=[$(show a)] b=[$(show b)] mac=$(cat /sys/class/net/eth0/address) serial=$(cat /sys/class/dmi/id/product_serial)"
"#;

fn vm_manifest(name: &str, guest: &Path) -> Value {
    let kernel = vmo_testkit::guest_kernel(guest);
    let blank = |dv: &str, size: &str| {
        json!({"metadata": {"name": dv},
               "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": size}}}}})
    };
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"runStrategy": "Always",
            "dataVolumeTemplates": [blank(&format!("{name}-a"), "16Mi"), blank(&format!("{name}-b"), "24Mi")],
            "template": {"metadata": {"labels": {"stage": "before"}}, "spec": {
                "terminationGracePeriodSeconds": 10,
                "domain": {"memory": {"guest": "192Mi"},
                    "firmware": {"serial": "source-serial-0001",
                        "kernelBoot": {"kernelArgs": "console=ttyS0 quiet no_timer_check vmo.netwait=0",
                            "container": {"kernelPath": kernel.to_string_lossy(),
                                          "initrdPath": guest.join("initrd.img").to_string_lossy()}}},
                    "devices": {
                        "disks": [{"name": "a", "disk": {"bus": "virtio"}},
                                  {"name": "b", "disk": {"bus": "virtio"}},
                                  {"name": "cloudinit", "disk": {"bus": "virtio"}}],
                        "interfaces": [{"name": "default", "masquerade": {},
                                        "macAddress": "52:54:00:aa:00:01"}]}},
                "networks": [{"name": "default", "pod": {}}],
                "volumes": [{"name": "a", "dataVolume": {"name": format!("{name}-a")}},
                            {"name": "b", "dataVolume": {"name": format!("{name}-b")}},
                            {"name": "cloudinit", "cloudInitNoCloud": {"userData": USER_DATA}}]}}}})
}

fn qemu_pid(data: &Path, uid: &str) -> u32 {
    let dir = data.join("agent").join("vms").join(uid);
    std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".pid"))
        .and_then(|e| std::fs::read_to_string(e.path()).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid file in {}", dir.display()))
}

/// The `VMO-DISKS:` line the current instance of `vm` printed when it booted.
async fn disks_line(client: &Client, data: &Path, vm: &str) -> String {
    let vmi = wait_for(&format!("an instance of {vm}"), WAIT, || async {
        get(client, "vmi", vm)
            .await
            .filter(|i| i.status()["phase"] == "Running")
    })
    .await;
    let log = console_log_until(
        &serial_log(data, &vmi.metadata.uid),
        "VMO-GUEST: ready",
        WAIT,
    )
    .await;
    log.lines()
        .find(|l| l.starts_with("VMO-DISKS:"))
        .unwrap_or_else(|| panic!("no VMO-DISKS line in:\n{log}"))
        .trim()
        .to_string()
}

/// The internal snapshots in a claim's volume file.
async fn internal_snapshots(client: &Client, claim: &str) -> Vec<String> {
    let pvc = get(client, "pvc", claim).await.expect("claim");
    let pv = get(
        client,
        "pv",
        pvc.spec()["volumeName"].as_str().expect("bound"),
    )
    .await
    .expect("volume");
    let file = pv.spec()["local"]["path"]
        .as_str()
        .expect("path")
        .to_string();
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json", &file])
        .output()
        .expect("qemu-img");
    let info: Value = serde_json::from_slice(&out.stdout).expect("info json");
    info["snapshots"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|s| s["name"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Types `command` on the VM's console and waits for `answer`.
async fn console_run(up: &VmoProcess, vm: &str, command: &str, answer: &str) {
    let mut child = up.spawn_cli(&["console", vm]);
    let out = collect_output(child.stdout.take().unwrap());
    let err = collect_output(child.stderr.take().unwrap());
    wait_for("the console to attach", WAIT, || async {
        err.lock()
            .unwrap()
            .contains("Successfully connected")
            .then_some(())
    })
    .await;
    let mut keys = child.stdin.take().unwrap();
    keys.write_all(format!("{command}\n").as_bytes()).unwrap();
    wait_for(&format!("{answer} on the console"), WAIT, || async {
        out.lock().unwrap().contains(answer).then_some(())
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
}

fn marker_command(tag: &str, answer: u32) -> String {
    format!(
        "for x in a b; do printf VMO{tag}$x | dd of=$(cat /run/disk-$x) conv=fsync 2>/dev/null; done; echo MARK-$(({answer}-1+1))"
    )
}

async fn create(client: &Client, resource: &str, body: Value) {
    client
        .create(&kind(resource), "default", &body)
        .await
        .unwrap_or_else(|e| panic!("create {resource}: {e}"));
}

fn vm_snapshot(name: &str, vm: &str) -> Value {
    json!({"apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineSnapshot",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": vm}}})
}

fn vm_restore(name: &str, snapshot: &str, target: &str) -> Value {
    json!({"apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineRestore",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": target},
                    "virtualMachineSnapshotName": snapshot}})
}

async fn restore_says(client: &Client, name: &str, text: &str) -> Object {
    wait_for(&format!("restore {name} to say {text:?}"), WAIT, || async {
        get(client, "vmrestore", name)
            .await
            .filter(|r| ready_message(r).contains(text))
    })
    .await
}

async fn restore_complete(client: &Client, name: &str) -> Object {
    wait_for(&format!("restore {name} to complete"), WAIT, || async {
        get(client, "vmrestore", name)
            .await
            .filter(|r| r.status()["complete"] == true)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_restore_and_clone_vms_with_their_disks() {
    let Some(guest) = test_guest() else { return };
    let dir = KeptDir::new("vmo-snapshots-");
    let data = dir.path().join("data");
    let _qemus = KillQemus(data.clone());
    let args = [
        "--accel",
        "tcg",
        "--heartbeat-interval",
        "1s",
        "--node-name",
        "node-a",
    ];
    let up = VmoProcess::start_with_args(vmo(), &data, &args).await;
    let client = up.client();

    // Bad input first (no VM needed): a snapshot of a VM that does not exist fails and says so;
    // a restore of it waits, saying the snapshot is not ready.
    create(&client, "vmsnapshot", vm_snapshot("ghost-snap", "ghost")).await;
    let ghost = wait_for("the ghost snapshot to fail", WAIT, || async {
        get(&client, "vmsnapshot", "ghost-snap")
            .await
            .filter(|s| s.status()["phase"] == "Failed")
    })
    .await;
    let why = ghost.status()["error"]["message"].as_str().unwrap_or("");
    assert!(
        why.contains("VirtualMachine default/ghost does not exist"),
        "{why}"
    );
    assert_eq!(ghost.status()["readyToUse"], false);
    create(
        &client,
        "vmrestore",
        vm_restore("ghost-restore", "ghost-snap", "ghost"),
    )
    .await;
    let r = restore_says(&client, "ghost-restore", "is not ready to use").await;
    assert_ne!(r.status()["complete"], true);

    // A running VM with two data disks writes a marker on both.
    create(&client, "vm", vm_manifest("db", &guest)).await;
    printable(&client, "db", "Running").await;
    let first = disks_line(&client, &data, "db").await;
    assert!(first.starts_with("VMO-DISKS: a=[] b=[]"), "{first}");
    assert!(
        first.contains("mac=52:54:00:aa:00:01 serial=source-serial-0001"),
        "{first}"
    );
    console_run(&up, "db", &marker_command("BEFORE", 41), "MARK-41").await;

    // A snapshot of the running VM: both disks in one group, the guest keeps running.
    let vmi = get(&client, "vmi", "db").await.unwrap();
    let pid = qemu_pid(&data, &vmi.metadata.uid);
    create(&client, "vmsnapshot", vm_snapshot("snap-1", "db")).await;
    let snap = wait_for("snap-1 to succeed", WAIT, || async {
        get(&client, "vmsnapshot", "snap-1")
            .await
            .filter(|s| s.status()["phase"] == "Succeeded")
    })
    .await;
    assert_eq!(snap.status()["readyToUse"], true);
    assert!(
        snap.status()["indications"]
            .as_array()
            .unwrap()
            .contains(&json!("Online")),
        "{:?}",
        snap.status()
    );
    let (_, listed, _) = up.cli(&["get", "volumesnapshots"]);
    for claim in ["db-a", "db-b"] {
        let vs_name = format!("vmsnapshot-{}-volume-{}", snap.metadata.uid, &claim[3..]);
        let vs = get(&client, "vs", &vs_name).await.expect("volume snapshot");
        assert_eq!(vs.status()["readyToUse"], true, "{vs_name}");
        assert!(listed.contains(&vs_name), "{listed}");
        let inside = internal_snapshots(&client, claim).await;
        assert!(
            inside.contains(&format!("vs-{}", vs.metadata.uid)),
            "{claim}: {inside:?}"
        );
    }
    let after = get(&client, "vmi", "db").await.unwrap();
    assert_eq!(
        after.metadata.uid, vmi.metadata.uid,
        "the same instance runs on"
    );
    assert!(process_alive(pid), "QEMU kept running");
    assert_ne!(
        after.status()["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Paused"))
            .map(|c| c["status"].clone()),
        Some(json!("True")),
        "the guest is not left paused"
    );
    // The guest answers after the snapshot, and writes a second marker.
    console_run(&up, "db", &marker_command("AFTER", 42), "MARK-42").await;
    let relabel = json!({"spec": {"template": {"metadata": {"labels": {"stage": "after"}}}}});
    client
        .merge_patch(&kind("vm"), "default", "db", None, &relabel, "test")
        .await
        .unwrap();

    // A restore into the running VM waits and says why.
    create(&client, "vmrestore", vm_restore("back", "snap-1", "db")).await;
    let r = restore_says(&client, "back", "is running: stop it to restore").await;
    assert_ne!(r.status()["complete"], true);

    // Stopped, the VM is restored: disks and spec as they were at the snapshot.
    let (ok, out, err) = up.cli(&["stop", "db"]);
    assert!(ok, "{out}{err}");
    printable(&client, "db", "Stopped").await;
    let done = restore_complete(&client, "back").await;
    assert!(done.status()["restoreTime"].is_string());
    let vm = get(&client, "vm", "db").await.unwrap();
    assert_eq!(
        vm.spec()["template"]["metadata"]["labels"]["stage"],
        "before"
    );
    assert_eq!(
        vm.spec()["runStrategy"],
        "Halted",
        "a restored VM stays stopped"
    );
    let (ok, out, err) = up.cli(&["start", "db"]);
    assert!(ok, "{out}{err}");
    let restored = disks_line(&client, &data, "db").await;
    assert!(
        restored.starts_with("VMO-DISKS: a=[VMOBEFOREa] b=[VMOBEFOREb]"),
        "the marker written after the snapshot is gone: {restored}"
    );

    // A restore into a VM that does not exist makes new claims and a new VM, which boots.
    create(
        &client,
        "vmrestore",
        vm_restore("to-copy", "snap-1", "db-copy"),
    )
    .await;
    let done = restore_complete(&client, "to-copy").await;
    assert_eq!(done.status()["restores"].as_array().unwrap().len(), 2);
    printable(&client, "db-copy", "Running").await;
    let copy = disks_line(&client, &data, "db-copy").await;
    assert!(
        copy.starts_with("VMO-DISKS: a=[VMOBEFOREa] b=[VMOBEFOREb]"),
        "{copy}"
    );
    client
        .delete(&kind("vm"), "default", "db-copy", "Foreground")
        .await
        .unwrap();

    // A clone of the running VM: a new VM with its own disks, MAC address and serial.
    create(
        &client,
        "vmclone",
        json!({"apiVersion": "clone.kubevirt.io/v1beta1", "kind": "VirtualMachineClone",
               "metadata": {"name": "db-clone", "namespace": "default"},
               "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "db"},
                        "target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "db2"}}}),
    )
    .await;
    let clone = wait_for("the clone to succeed", WAIT, || async {
        get(&client, "vmclone", "db-clone").await.filter(|c| {
            assert_ne!(c.status()["phase"], "Failed", "{:?}", c.status());
            c.status()["phase"] == "Succeeded"
        })
    })
    .await;
    assert_eq!(clone.status()["targetName"], "db2");
    let (source, target) = (
        get(&client, "vm", "db").await.unwrap(),
        get(&client, "vm", "db2").await.unwrap(),
    );
    let domain = |v: &Object| v.spec()["template"]["spec"]["domain"].clone();
    let mac = |v: &Object| domain(v)["devices"]["interfaces"][0]["macAddress"].clone();
    assert_ne!(mac(&target), mac(&source));
    assert!(
        mac(&target).as_str().is_some_and(|m| m.len() == 17),
        "{:?}",
        mac(&target)
    );
    assert_ne!(
        domain(&target)["firmware"]["serial"],
        domain(&source)["firmware"]["serial"]
    );
    assert!(domain(&target)["firmware"]["serial"].is_string());
    printable(&client, "db2", "Running").await;
    let cloned = disks_line(&client, &data, "db2").await;
    let want_mac = mac(&target).as_str().unwrap().to_string();
    assert!(cloned.contains(&format!("mac={want_mac}")), "{cloned}");
    let want_serial = domain(&target)["firmware"]["serial"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        cloned.contains(&format!("serial={want_serial}")),
        "{cloned}"
    );
    assert!(
        cloned.starts_with("VMO-DISKS: a=[VMOBEFOREa] b=[VMOBEFOREb]"),
        "{cloned}"
    );
    printable(&client, "db", "Running").await;
    for claim in ["db-a", "db-b"] {
        let v = get(&client, "vm", "db2").await.unwrap();
        let names: Vec<String> = v.spec()["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| {
                v["persistentVolumeClaim"]["claimName"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        assert!(
            !names.iter().any(|n| n == claim),
            "the clone has disks of its own: {names:?}"
        );
    }
    // The clone's temporary snapshot is gone, and with it its internal snapshots.
    wait_for("the clone's temporary snapshot to go", WAIT, || async {
        let left = internal_snapshots(&client, "db-a").await;
        (left.len() == 1).then_some(())
    })
    .await;

    // Deleting a VM snapshot removes its volume snapshots and their data in the files.
    client
        .delete(&kind("vmsnapshot"), "default", "snap-1", "Foreground")
        .await
        .unwrap();
    wait_for("snap-1's internal snapshots to go", WAIT, || async {
        let (a, b) = (
            internal_snapshots(&client, "db-a").await,
            internal_snapshots(&client, "db-b").await,
        );
        (a.is_empty() && b.is_empty()).then_some(())
    })
    .await;
    // One claim on its own: a VolumeSnapshot (class with deletionPolicy Retain) of the running VM's
    // disk, and a new claim restored from it.
    create(
        &client,
        "volumesnapshotclass",
        json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
               "metadata": {"name": "keep"}, "driver": "vmo.io/local", "deletionPolicy": "Retain"}),
    )
    .await;
    create(
        &client,
        "vs",
        json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
               "metadata": {"name": "a-now", "namespace": "default"},
               "spec": {"volumeSnapshotClassName": "keep",
                        "source": {"persistentVolumeClaimName": "db-a"}}}),
    )
    .await;
    let vs = wait_for("the volume snapshot", WAIT, || async {
        get(&client, "vs", "a-now")
            .await
            .filter(|v| v.status()["readyToUse"] == true)
    })
    .await;
    assert_eq!(vs.status()["restoreSize"], "16777216");
    let content = vs.status()["boundVolumeSnapshotContentName"]
        .as_str()
        .unwrap()
        .to_string();
    let content = get(&client, "vsc", &content).await.expect("content");
    assert!(content.status()["snapshotHandle"]
        .as_str()
        .is_some_and(|h| h.ends_with(&format!("#vs-{}", vs.metadata.uid))));
    create(
        &client,
        "sc",
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
               "metadata": {"name": "local-now"}, "provisioner": "vmo.io/local",
               "volumeBindingMode": "Immediate"}),
    )
    .await;
    create(
        &client,
        "pvc",
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": "from-vs", "namespace": "default"},
               "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-now",
                        "resources": {"requests": {"storage": "16Mi"}},
                        "dataSource": {"apiGroup": "snapshot.storage.k8s.io",
                                       "kind": "VolumeSnapshot", "name": "a-now"}}}),
    )
    .await;
    let pvc = wait_for("the restored claim to bind", WAIT, || async {
        get(&client, "pvc", "from-vs")
            .await
            .filter(|c| c.status()["phase"] == "Bound")
    })
    .await;
    let pv = get(&client, "pv", pvc.spec()["volumeName"].as_str().unwrap())
        .await
        .unwrap();
    let raw = dir.path().join("from-vs.raw");
    let out = Command::new("qemu-img")
        .args(["convert", "-U", "-O", "raw"])
        .arg(pv.spec()["local"]["path"].as_str().unwrap())
        .arg(&raw)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = std::fs::read(&raw).unwrap();
    assert!(
        head.starts_with(b"VMOBEFOREa"),
        "the restored claim has the data"
    );
    client
        .delete(&kind("vs"), "default", "a-now", "Background")
        .await
        .unwrap();
    wait_for("the volume snapshot to go", WAIT, || async {
        get(&client, "vs", "a-now").await.is_none().then_some(())
    })
    .await;
    assert_eq!(
        internal_snapshots(&client, "db-a").await.len(),
        1,
        "Retain keeps the data"
    );
    assert!(
        get(&client, "vsc", &content.metadata.name).await.is_some(),
        "Retain keeps the VolumeSnapshotContent"
    );
    up.wait_for_event("SuccessfulVirtualMachineSnapshot").await;
}

/// Kills the QEMUs under a directory when dropped (they run in process groups of their own and
/// outlive `vmo up`).
struct KillQemus(std::path::PathBuf);

impl Drop for KillQemus {
    fn drop(&mut self) {
        vmo_testkit::cluster::kill_qemus_under(&self.0);
    }
}
