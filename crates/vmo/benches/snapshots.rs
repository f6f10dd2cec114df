//! Snapshot of a running VM with three disks (TCG guest): how long the guest is paused.
//!
//! - **vmo:** `vmo up`, a VM with three qcow2 claims, then VirtualMachineSnapshots one after
//!   another. The agent's owner task stops the guest, runs one QMP `transaction` of three
//!   `blockdev-snapshot-internal-sync`, and continues it; it records the time from sending `stop`
//!   to `cont` returning on each VolumeSnapshot (`vmo.io/guest-paused-us`). Also the end-to-end
//!   time from creating the VirtualMachineSnapshot to its phase Succeeded.
//! - **raw QEMU**, same run, same guest and disks: one `qemu-system-x86_64`, the same `stop`,
//!   `transaction`, `cont` sent by hand, timed the same way.
//!
//! Target (issue 5): guest pause <= 100 ms.
//!
//! Run: `cargo bench -p vmo-vmo --bench snapshots` (VMO_BENCH_RUNS snapshots, default 15).

use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};
use vmo_agent::qmp::Qmp;
use vmo_api::Registry;
use vmo_testkit::{console_log_until, percentile, test_guest, wait_for, KeptDir, VmoProcess};

const KERNEL_ARGS: &str = "console=ttyS0 quiet no_timer_check vmo.netwait=0";

fn runs() -> usize {
    std::env::var("VMO_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
}

fn summary(label: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label}: n={} median {:.1} ms, P95 {:.1} ms, min {:.1} ms, max {:.1} ms",
        v.len(),
        ms(percentile(&v, 0.5)),
        ms(percentile(&v, 0.95)),
        ms(v[0]),
        ms(v[v.len() - 1])
    );
}

async fn raw(guest: &Path, dir: &Path) -> Vec<Duration> {
    let mut c = std::process::Command::new("qemu-system-x86_64");
    c.args([
        "-machine",
        "q35",
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-m",
        "256M",
    ])
    .args(["-nodefaults", "-display", "none", "-kernel"])
    .arg(vmo_testkit::guest_kernel(guest))
    .arg("-initrd")
    .arg(guest.join("initrd.img"))
    .args(["-append", KERNEL_ARGS, "-serial"])
    .arg(format!("file:{}", dir.join("raw.log").display()))
    .arg("-qmp")
    .arg(format!(
        "unix:{},server=on,wait=off",
        dir.join("raw.sock").display()
    ));
    for i in 0..3 {
        let disk = dir.join(format!("raw-{i}.qcow2"));
        let ok = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&disk)
            .arg("64M")
            .status()
            .unwrap();
        assert!(ok.success());
        c.arg("-drive").arg(format!(
            "file={},format=qcow2,if=virtio,id=d{i}",
            disk.display()
        ));
    }
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut qemu = c.spawn().unwrap();
    console_log_until(
        &dir.join("raw.log"),
        "VMO-GUEST: ready",
        Duration::from_secs(120),
    )
    .await;
    let (qmp, _events) = Qmp::connect(&dir.join("raw.sock")).await.unwrap();
    let mut paused = Vec::new();
    for run in 0..runs() {
        let actions: Vec<_> = (0..3)
            .map(|i| {
                json!({"type": "blockdev-snapshot-internal-sync",
                             "data": {"device": format!("d{i}"), "name": format!("s{run}")}})
            })
            .collect();
        let start = Instant::now();
        qmp.execute("stop", None).await.unwrap();
        qmp.execute("transaction", Some(json!({ "actions": actions })))
            .await
            .unwrap();
        qmp.execute("cont", None).await.unwrap();
        paused.push(start.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    paused
}

fn vm(guest: &Path) -> serde_json::Value {
    let blank = |n: &str| {
        json!({"metadata": {"name": n}, "spec": {"source": {"blank": {}},
               "storage": {"resources": {"requests": {"storage": "64Mi"}}}}})
    };
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "three", "namespace": "default"},
        "spec": {"runStrategy": "Always",
            "dataVolumeTemplates": [blank("three-0"), blank("three-1"), blank("three-2")],
            "template": {"spec": {"terminationGracePeriodSeconds": 0,
                "domain": {"memory": {"guest": "256Mi"},
                    "firmware": {"kernelBoot": {"kernelArgs": KERNEL_ARGS, "container": {
                        "kernelPath": vmo_testkit::guest_kernel(guest).to_string_lossy(),
                        "initrdPath": guest.join("initrd.img").to_string_lossy()}}},
                    "devices": {"disks": [{"name": "d0", "disk": {"bus": "virtio"}},
                                          {"name": "d1", "disk": {"bus": "virtio"}},
                                          {"name": "d2", "disk": {"bus": "virtio"}}]}},
                "volumes": [{"name": "d0", "dataVolume": {"name": "three-0"}},
                            {"name": "d1", "dataVolume": {"name": "three-1"}},
                            {"name": "d2", "dataVolume": {"name": "three-2"}}]}}}})
}

async fn through_vmo(guest: &Path, dir: &Path) -> (Vec<Duration>, Vec<Duration>) {
    let data = dir.join("data");
    let args = [
        "--accel",
        "tcg",
        "--heartbeat-interval",
        "1s",
        "--node-name",
        "bench",
    ];
    let vmo = Path::new(env!("CARGO_BIN_EXE_vmo"));
    let up = VmoProcess::start_with_args(vmo, &data, &args).await;
    let client = up.client();
    let r = Registry::builtin();
    let k = |n: &str| *r.resolve(n).unwrap();
    client
        .create(&k("vm"), "default", &vm(guest))
        .await
        .unwrap();
    let vmi = wait_for("the VM to run", Duration::from_secs(300), || async {
        client
            .get(&k("vmi"), "default", "three")
            .await
            .ok()
            .filter(|i| i.status()["phase"] == "Running")
    })
    .await;
    let log = data
        .join("agent/vms")
        .join(&vmi.metadata.uid)
        .join("serial.log");
    console_log_until(&log, "VMO-GUEST: ready", Duration::from_secs(180)).await;
    let (mut paused, mut total) = (Vec::new(), Vec::new());
    for run in 0..runs() {
        let name = format!("s{run}");
        let snap = json!({"apiVersion": "snapshot.kubevirt.io/v1beta1",
            "kind": "VirtualMachineSnapshot", "metadata": {"name": name, "namespace": "default"},
            "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "three"}}});
        let start = Instant::now();
        client
            .create(&k("vmsnapshot"), "default", &snap)
            .await
            .unwrap();
        let done = wait_for("the snapshot", Duration::from_secs(120), || async {
            client
                .get(&k("vmsnapshot"), "default", &name)
                .await
                .ok()
                .filter(|s| s.status()["phase"] == "Succeeded")
        })
        .await;
        total.push(start.elapsed());
        let vs = client
            .get(
                &k("vs"),
                "default",
                &format!("vmsnapshot-{}-volume-d0", done.metadata.uid),
            )
            .await
            .unwrap();
        let us: u64 = vs.metadata.annotations["vmo.io/guest-paused-us"]
            .parse()
            .unwrap();
        paused.push(Duration::from_micros(us));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    (paused, total)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(guest) = test_guest() else { return };
    let dir = KeptDir::new("vmo-bench-snapshots-");
    let _qemus = KillQemus(dir.path().to_path_buf());
    println!(
        "snapshot of a running VM with three qcow2 disks, TCG, {} runs each",
        runs()
    );
    let raw_paused = raw(&guest, dir.path()).await;
    summary(
        "raw QEMU: guest paused (stop .. transaction .. cont)",
        raw_paused,
    );
    let (paused, total) = through_vmo(&guest, dir.path()).await;
    summary(
        "vmo: guest paused (agent: stop .. transaction .. cont)",
        paused.clone(),
    );
    summary("vmo: VirtualMachineSnapshot created -> Succeeded", total);
    let p95 = percentile(
        &{
            let mut p = paused;
            p.sort();
            p
        },
        0.95,
    );
    println!(
        "target: guest pause <= 100 ms: {} (P95 {:.1} ms)",
        if p95 <= Duration::from_millis(100) {
            "met"
        } else {
            "NOT met"
        },
        p95.as_secs_f64() * 1000.0
    );
}

/// Kills the QEMUs under a directory when dropped (they run in process groups of their own and
/// outlive `vmo up`).
struct KillQemus(std::path::PathBuf);

impl Drop for KillQemus {
    fn drop(&mut self) {
        vmo_testkit::cluster::kill_qemus_under(&self.0);
    }
}
