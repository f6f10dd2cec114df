//! Storage end to end under a real `vmo up` with real qemu-img and QEMU (TCG): the built-in
//! classes; a VM whose DataVolume template imports the test guest's disk (gzip-compressed raw, with
//! its checksum) over HTTP boots from it; vmdk and qcow2 imports; each bad input (404, a closed
//! port, a wrong checksum, an image larger than its claim) ends Failed with its cause named and
//! no volume bound; a copy-on-write clone of the stopped VM's disk boots as a second VM while the
//! first runs again; a claim grows online under its running VM and the guest sees the new size;
//! an ephemeral volume leaves its claim untouched; deleting a DataVolume removes its
//! claim, its volume and the file.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use vmo_api::Object;
use vmo_client::Client;
use vmo_testkit::objects::{
    claim_file, get, image_info, kind, printable, ready_message, serial_log, sh, sha256_of,
};
use vmo_testkit::{console_log_until, test_guest, wait_for, FileServer, KeptDir, VmoProcess};

const WAIT: Duration = Duration::from_secs(120);
const IMMEDIATE: &str = "cdi.kubevirt.io/storage.bind.immediate.requested";

fn vmo() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vmo"))
}

fn data_volume(name: &str, source: Value, size: &str) -> Value {
    json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
           "metadata": {"name": name, "namespace": "default", "annotations": {IMMEDIATE: "true"}},
           "spec": {"source": source, "storage": {"resources": {"requests": {"storage": size}}}}})
}

fn vm(name: &str, volume: Value, templates: Value) -> Value {
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"runStrategy": "Always", "dataVolumeTemplates": templates,
            "template": {"spec": {
                "terminationGracePeriodSeconds": 5,
                "domain": {"memory": {"guest": "192Mi"},
                           "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 1}]}},
                "volumes": [volume]}}}})
}

/// Waits for the DataVolume to reach `phase`; returns it.
async fn dv_phase(client: &Client, name: &str, phase: &str) -> Object {
    wait_for(&format!("DataVolume {name} {phase}"), WAIT, || async {
        get(client, "datavolumes", name)
            .await
            .filter(|d| d.status()["phase"] == phase)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_import_into_volumes_that_vms_boot_from() {
    let Some(guest) = test_guest() else { return };
    let dir = KeptDir::new("vmo-storage-");
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let raw_gz = images.join("guest.img.gz");
    sh(Command::new("sh").arg("-c").arg(format!(
        "gzip -c {} > {}",
        guest.join("disk.img").display(),
        raw_gz.display()
    )));
    sh(Command::new("qemu-img")
        .args(["convert", "-O", "vmdk", "-o", "subformat=streamOptimized"])
        .arg(guest.join("disk.img"))
        .arg(images.join("guest.vmdk")));
    std::fs::copy(guest.join("disk.qcow2"), images.join("guest.qcow2")).unwrap();
    let server = FileServer::start(&images).await;
    let data = dir.path().join("data");
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

    // A fresh cluster has vmo's two classes, local the default, each with its profile.
    let classes = wait_for("the built-in storage classes", WAIT, || async {
        let (_, out, _) = up.cli(&["get", "storageclasses"]);
        (out.contains("local (default)") && out.contains("shared")).then_some(out)
    })
    .await;
    assert!(classes.contains("WaitForFirstConsumer"), "{classes}");
    wait_for("storage profiles", WAIT, || async {
        get(&client, "storageprofiles", "shared")
            .await
            .filter(|p| p.status()["claimPropertySets"][0]["accessModes"][0] == "ReadWriteMany")
    })
    .await;

    // A VM whose DataVolume template imports the guest disk (gzip, checksum) boots from it.
    let template = json!([{"metadata": {"name": "web-root"},
        "spec": {"source": {"http": {"url": server.url("guest.img.gz"),
                                     "checksum": format!("sha256:{}", sha256_of(&raw_gz))}},
                 "storage": {"resources": {"requests": {"storage": "64Mi"}}}}}]);
    let web = vm(
        "web",
        json!({"name": "root", "dataVolume": {"name": "web-root"}}),
        template,
    );
    client
        .create(&kind("vm"), "default", &web)
        .await
        .expect("create vm");
    let dv = dv_phase(&client, "web-root", "Succeeded").await;
    assert_eq!(dv.status()["progress"], "100.0%");
    let web_vm = printable(&client, "web", "Running").await;
    let web_vmi = get(&client, "vmi", "web").await.expect("instance");
    let console = console_log_until(
        &serial_log(&data, &web_vmi.metadata.uid),
        "VMO-GUEST: ready",
        Duration::from_secs(180),
    )
    .await;
    assert!(console.contains("VMO-GUEST: ready"), "{console}");
    let (_, pvcs, _) = up.cli(&["get", "pvc"]);
    assert!(
        pvcs.contains("web-root") && pvcs.contains("Bound") && pvcs.contains("local"),
        "{pvcs}"
    );
    let (_, pvs, _) = up.cli(&["get", "pv", "-o", "wide"]);
    assert!(
        pvs.contains("default/web-root") && pvs.contains("node-a"),
        "{pvs}"
    );
    let file = claim_file(&client, "web-root").await;
    assert_eq!(image_info(&file)["virtual-size"], 64 << 20);
    let owner = &get(&client, "dv", "web-root")
        .await
        .unwrap()
        .metadata
        .owner_references;
    assert_eq!(
        owner[0].uid, web_vm.metadata.uid,
        "the VM owns its DataVolume"
    );

    // vmdk (streamOptimized) and qcow2 sources import too.
    for (name, file) in [("from-vmdk", "guest.vmdk"), ("from-qcow2", "guest.qcow2")] {
        let dv = data_volume(name, json!({"http": {"url": server.url(file)}}), "64Mi");
        client
            .create(&kind("dv"), "default", &dv)
            .await
            .expect("create dv");
    }
    for name in ["from-vmdk", "from-qcow2"] {
        dv_phase(&client, name, "Succeeded").await;
        let out = Command::new("qemu-img")
            .args(["compare", "-U", "-f", "raw", "-F", "qcow2"])
            .arg(guest.join("disk.img"))
            .arg(claim_file(&client, name).await)
            .output()
            .unwrap();
        // compare exits 1 only for the size difference past the image's end (zeros: equal).
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // Without the immediate annotation a local DataVolume waits for the VM that uses it.
    let mut waiting = data_volume("lazy", json!({"blank": {}}), "16Mi");
    waiting["metadata"]["annotations"] = json!({});
    client
        .create(&kind("dv"), "default", &waiting)
        .await
        .unwrap();
    dv_phase(&client, "lazy", "WaitForFirstConsumer").await;

    // Bad input ends Failed, says why, and binds nothing.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}/x.img", closed.local_addr().unwrap());
    drop(closed);
    let bad = [
        (
            "missing",
            json!({"http": {"url": server.url("nope.img")}}),
            "64Mi",
            "404",
        ),
        (
            "wrong-sum",
            json!({"http": {"url": server.url("guest.img.gz"),
            "checksum": format!("sha256:{}", "0".repeat(64))}}),
            "64Mi",
            "checksum mismatch",
        ),
        (
            "too-small",
            json!({"http": {"url": server.url("guest.qcow2")}}),
            "8Mi",
            "larger than",
        ),
        (
            "unreachable",
            json!({"http": {"url": closed_url}}),
            "64Mi",
            "cannot reach",
        ),
    ];
    for (name, source, size, _) in &bad {
        client
            .create(
                &kind("dv"),
                "default",
                &data_volume(name, source.clone(), size),
            )
            .await
            .expect("create bad dv");
    }
    for (name, _, _, why) in &bad {
        let dv = dv_phase(&client, name, "Failed").await;
        let message = ready_message(&dv);
        assert!(message.contains(why), "{name}: {message}");
        let pvc = get(&client, "pvc", name).await.expect("claim");
        assert!(
            pvc.spec()["volumeName"].is_null(),
            "{name} must not be bound"
        );
        if *name == "unreachable" {
            assert!(
                dv.status()["restartCount"].as_i64() > Some(0),
                "{:?}",
                dv.status()
            );
        }
    }

    // A copy-on-write clone of the stopped VM's disk boots on its own while the first VM runs.
    let (ok, out, err) = up.cli(&["stop", "web"]);
    assert!(ok, "{out}{err}");
    printable(&client, "web", "Stopped").await;
    let clone = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": {"name": "web-copy", "namespace": "default", "annotations": {IMMEDIATE: "true"}},
        "spec": {"source": {"pvc": {"name": "web-root"}}, "storage": {}}});
    client
        .create(&kind("dv"), "default", &clone)
        .await
        .expect("clone");
    dv_phase(&client, "web-copy", "Succeeded").await;
    let copy_file = claim_file(&client, "web-copy").await;
    assert!(
        image_info(&copy_file)["backing-filename"].is_string(),
        "a clone in the same pool is copy-on-write"
    );
    let mut copy = vm(
        "copy",
        json!({"name": "root", "persistentVolumeClaim": {"claimName": "web-copy"}}),
        json!([]),
    );
    // Its guest prints the size of its disk every second, to see a growth from inside.
    let template = &mut copy["spec"]["template"]["spec"];
    template["domain"]["devices"]["disks"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "cloudinit", "disk": {"bus": "virtio"}}));
    template["volumes"].as_array_mut().unwrap().push(json!({"name": "cloudinit",
        "cloudInitNoCloud": {"userData": "#!/bin/sh\n(while :; do echo \"VMO-DISK-SECTORS $(cat /sys/block/vda/size)\"; sleep 1; done) &\n"}}));
    client.create(&kind("vm"), "default", &copy).await.unwrap();
    let (ok, out, err) = up.cli(&["start", "web"]);
    assert!(ok, "{out}{err}");
    printable(&client, "copy", "Running").await;
    printable(&client, "web", "Running").await;
    for name in ["copy", "web"] {
        let vmi = get(&client, "vmi", name).await.unwrap();
        let log = console_log_until(
            &serial_log(&data, &vmi.metadata.uid),
            "VMO-GUEST: ready",
            Duration::from_secs(180),
        )
        .await;
        assert!(log.contains("VMO-GUEST: ready"), "{name}: {log}");
    }

    // A claim grows under its running VM: QEMU resizes the disk, the claim reports it.
    let pvc_kind = kind("pvc");
    let patch = json!({"spec": {"resources": {"requests": {"storage": "96Mi"}}}});
    client
        .merge_patch(&pvc_kind, "default", "web-copy", None, &patch, "test")
        .await
        .expect("grow");
    wait_for("the claim's new capacity", WAIT, || async {
        get(&client, "pvc", "web-copy")
            .await
            .filter(|c| c.status()["capacity"]["storage"] == "100663296")
    })
    .await;
    assert_eq!(image_info(&copy_file)["virtual-size"], 96 << 20);
    let copy_vmi = get(&client, "vmi", "copy").await.unwrap();
    let grown = console_log_until(
        &serial_log(&data, &copy_vmi.metadata.uid),
        &format!("VMO-DISK-SECTORS {}", (96u64 << 20) / 512),
        Duration::from_secs(60),
    )
    .await;
    assert!(
        grown.contains(&format!("VMO-DISK-SECTORS {}", (96u64 << 20) / 512)),
        "the running guest sees its disk grow: {}",
        grown.lines().rev().take(3).collect::<Vec<_>>().join(" | ")
    );
    up.wait_for_event("VolumeResizeSuccessful").await;
    // Offline too: a claim no VM uses grows as a file.
    client
        .merge_patch(&pvc_kind, "default", "from-vmdk", None, &patch, "test")
        .await
        .expect("grow offline");
    wait_for("the unused claim's new capacity", WAIT, || async {
        get(&client, "pvc", "from-vmdk")
            .await
            .filter(|c| c.status()["capacity"]["storage"] == "100663296")
    })
    .await;
    assert_eq!(
        image_info(&claim_file(&client, "from-vmdk").await)["virtual-size"],
        96 << 20
    );
    // Shrinking is refused with the field named.
    let shrink = json!({"spec": {"resources": {"requests": {"storage": "8Mi"}}}});
    let refused = client
        .merge_patch(&pvc_kind, "default", "from-vmdk", None, &shrink, "test")
        .await
        .expect_err("a claim never shrinks");
    assert!(
        refused
            .to_string()
            .contains("spec.resources.requests[storage]"),
        "{refused}"
    );

    // An ephemeral volume boots from a claim through a throwaway overlay: the claim's file stays
    // exactly as it was.
    let base_file = claim_file(&client, "from-qcow2").await;
    let before = sha256_of(&base_file);
    let eph = vm(
        "eph",
        json!({"name": "root", "ephemeral": {"persistentVolumeClaim": {"claimName": "from-qcow2"}}}),
        json!([]),
    );
    client.create(&kind("vm"), "default", &eph).await.unwrap();
    printable(&client, "eph", "Running").await;
    let eph_vmi = get(&client, "vmi", "eph").await.unwrap();
    let log = console_log_until(
        &serial_log(&data, &eph_vmi.metadata.uid),
        "VMO-GUEST: ready",
        Duration::from_secs(180),
    )
    .await;
    assert!(log.contains("VMO-GUEST: ready"), "{log}");
    client
        .delete(&kind("vm"), "default", "eph", "Foreground")
        .await
        .unwrap();
    wait_for("the ephemeral VM to go", WAIT, || async {
        get(&client, "vmi", "eph").await.is_none().then_some(())
    })
    .await;
    assert_eq!(
        sha256_of(&base_file),
        before,
        "the claim behind an ephemeral volume is never written"
    );

    // Deleting a DataVolume takes its claim, volume and file with it.
    let vmdk_file = claim_file(&client, "from-vmdk").await;
    client
        .delete(&kind("dv"), "default", "from-vmdk", "Background")
        .await
        .unwrap();
    wait_for("the vmdk volume's file to go", WAIT, || async {
        (!vmdk_file.exists() && get(&client, "pvc", "from-vmdk").await.is_none()).then_some(())
    })
    .await;
    drop(server);
}

/// A pool that runs out of space fails the import with the cause, and leaves no partial file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_fails_the_import_and_keeps_nothing() {
    let Some(guest) = test_guest() else { return };
    let dir = KeptDir::new("vmo-full-pool-");
    let pool = dir.path().join("pool");
    std::fs::create_dir_all(&pool).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&pool)
        .output();
    if !mounted.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: a small tmpfs pool needs root and mount: {mounted:?}");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(pool.clone());
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::copy(guest.join("disk.img"), images.join("guest.img")).unwrap();
    let server = FileServer::start(&images).await;
    let data = dir.path().join("data");
    let pool_arg = pool.to_string_lossy().to_string();
    let args = [
        "--accel",
        "tcg",
        "--heartbeat-interval",
        "1s",
        "--node-name",
        "node-a",
        "--local-pool",
        &pool_arg,
    ];
    let up = VmoProcess::start_with_args(vmo(), &data, &args).await;
    let client = up.client();
    wait_for("the built-in classes", WAIT, || async {
        get(&client, "storageclasses", "local").await
    })
    .await;
    let dv = data_volume(
        "big",
        json!({"http": {"url": server.url("guest.img")}}),
        "64Mi",
    );
    client.create(&kind("dv"), "default", &dv).await.unwrap();
    let failed = dv_phase(&client, "big", "Failed").await;
    let message = ready_message(&failed);
    assert!(message.contains("no space left"), "{message}");
    let left: Vec<_> = std::fs::read_dir(&pool)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.is_empty(),
        "nothing half-written stays in the pool: {left:?}"
    );
    up.wait_for_event("ProvisioningFailed").await;
    drop(server);
}
