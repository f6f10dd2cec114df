//! Uploads and VMware imports end to end under a real `vmo up` with real qemu-img and QEMU (TCG):
//! `vmo image-upload` of the test guest's qcow2 stores the same data and a VM boots from it; an
//! upload killed half-way resumes from what the server has when the command runs again; a
//! hand-made OVA (OVF + streamOptimized VMDK, tarred) becomes a VM with the OVF's vCPUs and
//! memory that boots, its manifest's digests checked; bad input (an upload into a non-upload
//! DataVolume, a corrupt image, an OVA without a descriptor, missing its disk or not matching its
//! manifest, a file that is no OVA) fails saying why.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use vmo_api::Object;
use vmo_client::Client;
use vmo_testkit::objects::{claim_file, get, kind, ready_message, sh, sha256_of};
use vmo_testkit::{console_log_until, test_guest, wait_for, KeptDir, VmoProcess};

const WAIT: Duration = Duration::from_secs(180);

fn vmo() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vmo"))
}

async fn start(dir: &KeptDir) -> (VmoProcess, PathBuf) {
    let data = dir.path().join("data");
    let args = [
        "--accel",
        "tcg",
        "--heartbeat-interval",
        "1s",
        "--node-name",
        "node-a",
    ];
    (VmoProcess::start_with_args(vmo(), &data, &args).await, data)
}

/// `qemu-img compare` of a source image with a volume (the volume may be larger: zeros).
fn same_data(source: &Path, source_format: &str, volume: &Path) {
    let out = Command::new("qemu-img")
        .args(["compare", "-U", "-f", source_format, "-F", "qcow2"])
        .arg(source)
        .arg(volume)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "{} differs from {}: {}",
        volume.display(),
        source.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

fn vm(name: &str, dv: &str) -> Value {
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"runStrategy": "Always",
            "template": {"spec": {
                "terminationGracePeriodSeconds": 5,
                "domain": {"memory": {"guest": "192Mi"},
                           "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 1}]}},
                "volumes": [{"name": "root", "dataVolume": {"name": dv}}]}}}})
}

/// Waits for the VM's instance to print the guest's ready marker; returns the instance.
async fn boots(client: &Client, data: &Path, name: &str) -> Object {
    let vmi = wait_for(&format!("VM {name} running"), WAIT, || async {
        get(client, "vmi", name)
            .await
            .filter(|v| v.status()["phase"] == "Running")
    })
    .await;
    let log = data
        .join("agent")
        .join("vms")
        .join(&vmi.metadata.uid)
        .join("serial.log");
    let console = console_log_until(&log, "VMO-GUEST: ready", WAIT).await;
    assert!(console.contains("VMO-GUEST: ready"), "{console}");
    vmi
}

/// The upload's state as the server reports it (`None` before the DataVolume exists).
async fn upload_state(client: &Client, dv: &str) -> Option<Value> {
    client
        .get_json(&format!(
            "/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes/{dv}/upload"
        ))
        .await
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_store_the_image_resume_after_a_kill_and_boot() {
    let Some(guest) = test_guest() else { return };
    let dir = KeptDir::new("vmo-upload-");
    let (up, data) = start(&dir).await;
    let client = up.client();
    let qcow2 = guest.join("disk.qcow2");
    let raw = guest.join("disk.img");

    // The qcow2 goes in through the CLI, which creates the DataVolume; the data is the same.
    let qcow2_arg = qcow2.to_string_lossy().to_string();
    let (ok, _, err) = up.cli(&[
        "image-upload",
        "dv",
        "uploaded",
        "--image-path",
        &qcow2_arg,
        "--size",
        "64Mi",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("100.0%") && err.contains("Succeeded"), "{err}");
    let dv = get(&client, "dv", "uploaded").await.expect("dv");
    assert_eq!(dv.status()["phase"], "Succeeded");
    same_data(&qcow2, "qcow2", &claim_file(&client, "uploaded").await);

    // A VM boots from it.
    client
        .create(&kind("vm"), "default", &vm("from-upload", "uploaded"))
        .await
        .expect("vm");
    boots(&client, &data, "from-upload").await;

    // Killed half-way (the rate is limited so there is a half-way), the upload resumes from
    // what the server has, not from 0, when the command runs again.
    let raw_arg = raw.to_string_lossy().to_string();
    let args = [
        "image-upload",
        "dv",
        "resumed",
        "--image-path",
        raw_arg.as_str(),
        "--size",
        "64Mi",
    ];
    let mut limited: Vec<&str> = args.to_vec();
    limited.extend(["--limit-rate", "2Mi"]);
    let mut first = up.spawn_cli(&limited);
    let size = std::fs::metadata(&raw).unwrap().len();
    let part = wait_for("part of the upload in", WAIT, || async {
        let s = upload_state(&client, "resumed").await?;
        s["received"]
            .as_u64()
            .filter(|r| *r > 0 && *r < size)
            .map(|_| s)
    })
    .await;
    first.kill().expect("kill the upload");
    let _ = first.wait();
    let before = upload_state(&client, "resumed")
        .await
        .expect("upload state");
    let at_kill = before["received"].as_u64().expect("received");
    assert!(at_kill > 0 && at_kill < size, "{part} / {before}");
    assert_eq!(before["size"], size);
    let (ok, _, err) = up.cli(&args);
    assert!(ok, "{err}");
    let resumed_at: u64 = err
        .split("at byte ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the rerun did not resume: {err}"));
    assert!(
        resumed_at >= at_kill,
        "resumed at {resumed_at}, had {at_kill}: {err}"
    );
    assert_eq!(
        get(&client, "dv", "resumed").await.unwrap().status()["phase"],
        "Succeeded"
    );
    same_data(&raw, "raw", &claim_file(&client, "resumed").await);

    // A connection that drops mid-upload is resumed by the same command from what the server
    // has: through a proxy that cuts the first connection carrying more than 3 MiB.
    let proxied = cutting_proxy(&up.kubeconfig, dir.path(), 3 << 20).await;
    let (ok, _, err) = vmo_testkit::run_with_input(
        vmo(),
        &proxied,
        &[
            "image-upload",
            "dv",
            "cut",
            "--image-path",
            &raw_arg,
            "--size",
            "64Mi",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert!(err.contains("the upload was interrupted"), "{err}");
    let resumed_at: u64 = err
        .split("resuming at byte ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume: {err}"));
    assert!(resumed_at > 0, "{err}");
    same_data(&raw, "raw", &claim_file(&client, "cut").await);

    // Only authenticated users reach it.
    let mut creds = vmo_client::kubeconfig::load(&up.kubeconfig).unwrap();
    creds.token = "not-the-token".into();
    let stranger = Client::new(creds).unwrap();
    let refused = stranger
        .get_json("/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes/resumed/upload")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(401), "{refused}");

    // Bad input: not an upload DataVolume; an image that claims to be qcow2 but is not.
    let blank = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": {"name": "blank", "namespace": "default",
                     "annotations": {"cdi.kubevirt.io/storage.bind.immediate.requested": "true"}},
        "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "16Mi"}}}}});
    client.create(&kind("dv"), "default", &blank).await.unwrap();
    let (ok, _, err) = up.cli(&["image-upload", "dv", "blank", "--image-path", &qcow2_arg]);
    assert!(!ok);
    assert!(err.contains("is not an upload DataVolume"), "{err}");

    let corrupt = dir.path().join("corrupt.qcow2");
    let mut bytes: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut header = Vec::new();
    header.extend(b"QFI\xfb");
    header.extend(3u32.to_be_bytes()); // version
    header.extend(0u64.to_be_bytes()); // no backing file
    header.extend(0u32.to_be_bytes());
    header.extend(16u32.to_be_bytes()); // cluster bits
    header.extend((8u64 << 20).to_be_bytes()); // virtual size: 8 MiB, fits
    header.extend(0u32.to_be_bytes()); // not encrypted
    bytes[..header.len()].copy_from_slice(&header);
    std::fs::write(&corrupt, &bytes).unwrap();
    let corrupt_arg = corrupt.to_string_lossy().to_string();
    let (ok, _, err) = up.cli(&[
        "image-upload",
        "dv",
        "corrupt",
        "--image-path",
        &corrupt_arg,
        "--size",
        "16Mi",
    ]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("the upload failed") && err.contains("qcow2"),
        "{err}"
    );
    let failed = wait_for("the corrupt upload Failed", WAIT, || async {
        get(&client, "dv", "corrupt")
            .await
            .filter(|d| d.status()["phase"] == "Failed")
    })
    .await;
    let message = ready_message(&failed);
    assert!(message.contains("qcow2"), "{message}");
    assert!(get(&client, "pvc", "corrupt").await.unwrap().spec()["volumeName"].is_null());
    // A failed upload stays Failed with its message (the agent does not reset it).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let still = get(&client, "dv", "corrupt").await.unwrap();
    assert_eq!(still.status()["phase"], "Failed");
    assert_eq!(ready_message(&still), message);
}

/// A TCP proxy to the server that cuts the first connection once `cut_after` bytes went through
/// it towards the server (TLS passes through untouched); returns a kubeconfig that uses it.
async fn cutting_proxy(kubeconfig: &Path, dir: &Path, cut_after: u64) -> PathBuf {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://"))
        .expect("server line")
        .to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let cut = Arc::new(AtomicBool::new(false));
    let upstream_addr = server.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (server, cut) = (upstream_addr.clone(), cut.clone());
            tokio::spawn(async move {
                let Ok(upstream) = tokio::net::TcpStream::connect(&server).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut ur, mut uw) = upstream.into_split();
                let down = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut ur, &mut cw).await;
                });
                let mut sent = 0u64;
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if uw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    sent += n as u64;
                    if sent > cut_after && !cut.swap(true, Ordering::SeqCst) {
                        break;
                    }
                }
                down.abort();
            });
        }
    });
    let path = dir.join("kubeconfig-through-proxy");
    std::fs::write(
        &path,
        text.replace(
            &format!("https://{server}"),
            &format!("https://127.0.0.1:{port}"),
        ),
    )
    .unwrap();
    path
}

/// An OVF descriptor for one disk and one NIC.
fn ovf(cpus: u32, memory_mib: u64, disk_file: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
  xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
  xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References><File ovf:href="{disk_file}" ovf:id="file1"/></References>
  <DiskSection><Info>Virtual disk information</Info>
    <Disk ovf:capacity="64" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk1" ovf:fileRef="file1"
      ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection><Info>networks</Info><Network ovf:name="VM Network"/></NetworkSection>
  <VirtualSystem ovf:id="Web Server 01"><Info>A virtual machine</Info><Name>Web Server 01</Name>
    <VirtualHardwareSection><Info>hardware</Info>
      <System><vssd:VirtualSystemType>vmx-19</vssd:VirtualSystemType></System>
      <Item><rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits><rasd:ElementName>{cpus} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>{cpus}</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ElementName>{memory_mib}MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>{memory_mib}</rasd:VirtualQuantity></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:Address>00:50:56:01:02:03</rasd:Address><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection><rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>4</rasd:InstanceID><rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="bios"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#
    )
}

fn tar(dir: &Path, ova: &str, files: &[&str]) -> String {
    sh(Command::new("tar")
        .arg("-cf")
        .arg(dir.join(ova))
        .arg("-C")
        .arg(dir)
        .args(files));
    dir.join(ova).to_string_lossy().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_made_ova_becomes_a_vm_that_boots() {
    let Some(guest) = test_guest() else { return };
    let dir = KeptDir::new("vmo-ova-");
    let work = dir.path().join("ova");
    std::fs::create_dir_all(&work).unwrap();
    sh(Command::new("qemu-img")
        .args(["convert", "-O", "vmdk", "-o", "subformat=streamOptimized"])
        .arg(guest.join("disk.img"))
        .arg(work.join("web-disk1.vmdk")));
    std::fs::write(work.join("web.ovf"), ovf(2, 256, "web-disk1.vmdk")).unwrap();
    // A manifest as VMware writes it: each file's digest, checked on import.
    let manifest = format!(
        "SHA256(web.ovf)= {}\nSHA256(web-disk1.vmdk)= {}\n",
        sha256_of(&work.join("web.ovf")),
        sha256_of(&work.join("web-disk1.vmdk"))
    );
    std::fs::write(work.join("web.mf"), &manifest).unwrap();
    let ova = tar(&work, "web.ova", &["web.ovf", "web.mf", "web-disk1.vmdk"]);
    let (up, data) = start(&dir).await;
    let client = up.client();

    // Bad archives fail before anything is created, saying why.
    let no_ovf = tar(&work, "no-ovf.ova", &["web-disk1.vmdk"]);
    let (ok, _, err) = up.cli(&["import", "ova", &no_ovf]);
    assert!(!ok);
    assert!(err.contains("has no OVF descriptor (.ovf)"), "{err}");
    std::fs::write(work.join("lost.ovf"), ovf(1, 128, "lost-disk.vmdk")).unwrap();
    let lost = tar(&work, "lost.ova", &["lost.ovf"]);
    let (ok, _, err) = up.cli(&["import", "ova", &lost]);
    assert!(!ok);
    assert!(err.contains("\"lost-disk.vmdk\", which is not in"), "{err}");
    std::fs::write(work.join("bad.ovf"), "<Envelope><VirtualSystem></Envelope>").unwrap();
    let bad = tar(&work, "bad.ova", &["bad.ovf", "web-disk1.vmdk"]);
    let (ok, _, err) = up.cli(&["import", "ova", &bad]);
    assert!(!ok);
    assert!(
        err.contains("bad.ovf does not parse") && err.contains("VirtualSystem"),
        "{err}"
    );
    std::fs::create_dir_all(work.join("tampered")).unwrap();
    std::fs::write(
        work.join("tampered/web.ovf"),
        ovf(2, 256, "web-disk1.vmdk").replace("256", "512"),
    )
    .unwrap();
    std::fs::write(work.join("tampered/web.mf"), &manifest).unwrap();
    let tampered = tar(&work.join("tampered"), "t.ova", &["web.ovf", "web.mf"]);
    let (ok, _, err) = up.cli(&["import", "ova", &tampered]);
    assert!(!ok);
    assert!(
        err.contains("the OVF descriptor web.ovf does not match the manifest"),
        "{err}"
    );
    let (ok, _, err) = up.cli(&["import", "ova", &work.join("web.ovf").to_string_lossy()]);
    assert!(!ok);
    assert!(err.contains("is not an OVA"), "{err}");
    let (_, vms, _) = up.cli(&["get", "vm"]);
    assert!(!vms.contains("web-server-01"), "{vms}");

    // The good one becomes a VM with the OVF's vCPUs, memory, disk and NIC, and boots.
    let (ok, out, err) = up.cli(&["import", "ova", &ova, "--start"]);
    assert!(ok, "{err}");
    assert!(out.contains("web-server-01"), "{out}");
    assert!(
        err.contains("2 vCPUs, 256 MiB, 1 disk(s), 1 NIC(s)"),
        "{err}"
    );
    let vm = get(&client, "vm", "web-server-01").await.expect("vm");
    let domain = &vm.spec()["template"]["spec"]["domain"];
    assert_eq!(domain["cpu"]["cores"], 2);
    assert_eq!(domain["memory"]["guest"], "256Mi");
    assert_eq!(
        domain["devices"]["interfaces"][0]["macAddress"],
        "00:50:56:01:02:03"
    );
    assert!(vm.metadata.annotations["vmo.io/ovf-networks"].contains("VM Network"));
    let dv = get(&client, "dv", "web-server-01-disk0")
        .await
        .expect("disk");
    assert_eq!(dv.status()["phase"], "Succeeded");
    assert_eq!(dv.metadata.owner_references[0].uid, vm.metadata.uid);
    same_data(
        &guest.join("disk.img"),
        "raw",
        &claim_file(&client, "web-server-01-disk0").await,
    );
    let vmi = boots(&client, &data, "web-server-01").await;
    assert_eq!(vmi.spec()["domain"]["cpu"]["cores"], 2);
}
