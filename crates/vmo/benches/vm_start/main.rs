//! VM start latency: VirtualMachines created through the API at a steady rate under a real `vmo up`
//! and `vmo agent` (TCG), measuring API accepted -> QEMU running (the instance's Running phase, which the agent sets
//! after QMP reports `running`) and API accepted -> the guest's boot marker on the serial console;
//! side by side, in the same run, bare `qemu-system-x86_64` with the identical command line (spawn ->
//! QMP running, spawn -> boot marker), and libvirt's `virsh start` of an equivalent domain (see
//! `libvirt.rs`; skipped, saying why, without libvirt). The agent runs as its own `vmo agent` process
//! so its resident memory is measured with 0, 10 and N VMs apart from the control plane.
//!
//! Run: `cargo bench -p vmo-vmo --bench vm_start` (VMO_BENCH_VMS, VMO_BENCH_RATE to change the load;
//! `scripts/install-libvirt.sh` first for the libvirt column).

mod libvirt;

use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};
use vmo_agent::vm::plan::{Accel, Firmware, LaunchPlan};
use vmo_agent::vm::process;
use vmo_api::Registry;
use vmo_testkit::{
    console_log_until, console_until, percentile, test_guest, wait_for, KeptDir, VmoProcess,
};

const MARKER: &str = "VMO-GUEST: booted";
/// The guest kernel's command line, the same for vmo, bare QEMU and libvirt.
const KERNEL_ARGS: &str = "console=ttyS0 quiet no_timer_check vmo.netwait=0";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

fn rss_mib(pid: u32) -> f64 {
    vmo_testkit::rss_kib(pid) as f64 / 1024.0
}

/// Awaits (running, marker) timings and returns each list sorted.
async fn sorted_pairs(
    tasks: Vec<tokio::task::JoinHandle<(Duration, Duration)>>,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut running, mut marker) = (Vec::new(), Vec::new());
    for t in tasks {
        let (r, m) = t.await.unwrap();
        running.push(r);
        marker.push(m);
    }
    running.sort();
    marker.sort();
    (running, marker)
}

use vmo_testkit::guest_kernel as kernel;

fn vm(name: &str, guest: &Path) -> serde_json::Value {
    json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {"runStrategy": "Always", "template": {"spec": {
            "terminationGracePeriodSeconds": 0,
            // 50 one-vCPU VMs on 2 cores: KubeVirt's default request (100m per vCPU) would
            // leave 30 unschedulable, so each asks for 10m.
            "domain": {"memory": {"guest": "128Mi"}, "resources": {"requests": {"cpu": "10m"}},
                "firmware": {"kernelBoot": {"kernelArgs": KERNEL_ARGS,
                    "container": {"kernelPath": kernel(guest).display().to_string(),
                                  "initrdPath": guest.join("initrd.img").display().to_string()}}},
                "devices": {"disks": []}},
            "volumes": []
        }}}
    })
}

/// What the vmo phase measured.
struct VmoRun {
    running: Vec<Duration>,
    marker: Vec<Duration>,
    /// `vmo agent` resident memory (MiB) with 0 VMs, with 10 (or fewer) running, and with all.
    agent_rss: (f64, f64, f64),
    /// `vmo up` (server, controllers, no agent) resident memory with all VMs running.
    control_plane_rss: f64,
}

/// The time each instance was first seen Running, from one watch (polling 50 instances would load
/// the server being measured).
type RunningSince = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>>;

fn watch_running(client: vmo_client::Client, vmi_kind: vmo_api::KindInfo) -> RunningSince {
    let seen = RunningSince::default();
    let sink = seen.clone();
    tokio::spawn(async move {
        let mut events = client
            .watch(&vmi_kind, Some("default"), "")
            .await
            .expect("watch instances");
        while let Some(Ok(event)) = events.next().await {
            if event.object["status"]["phase"] == "Running" {
                let name = event.object["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                sink.lock()
                    .unwrap()
                    .entry(name)
                    .or_insert_with(Instant::now);
            }
        }
    });
    seen
}

async fn through_vmo(guest: &Path, count: usize, interval: Duration) -> VmoRun {
    let dir = KeptDir::new("vmo-bench-vm-");
    let data = dir.path().join("data");
    let vmo = Path::new(env!("CARGO_BIN_EXE_vmo"));
    // The agent runs as its own process so its memory is measured apart from the control plane.
    let up = VmoProcess::start_with_args(vmo, &data, &["--no-agent", "--node-name", "bench"]).await;
    let agent_dir = dir.path().join("agent");
    let mut agent = std::process::Command::new(vmo)
        .args(["agent", "--node-name", "bench", "--accel", "tcg"])
        .args(["--agent-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&agent_dir)
        .env("KUBECONFIG", &up.kubeconfig)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn vmo agent");
    let client = up.client();
    let vm_kind = *Registry::builtin().resolve("vm").unwrap();
    let vmi_kind = *Registry::builtin().resolve("vmi").unwrap();
    let node_kind = *Registry::builtin().resolve("nodes").unwrap();
    wait_for("the bench node", Duration::from_secs(30), || async {
        client.get(&node_kind, "", "bench").await.ok()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_agent = rss_mib(agent.id());
    let running_since = watch_running(client.clone(), vmi_kind);
    // The agent's memory once 10 instances run.
    let sampler = {
        let (seen, pid, at) = (running_since.clone(), agent.id(), count.min(10));
        tokio::spawn(async move {
            while seen.lock().unwrap().len() < at {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            rss_mib(pid)
        })
    };
    let mut tasks = Vec::new();
    for n in 0..count {
        let (client, guest) = (client.clone(), guest.to_path_buf());
        let (agent_dir, seen) = (agent_dir.clone(), running_since.clone());
        tasks.push(tokio::spawn(async move {
            let name = format!("bench-{n}");
            let accepted = Instant::now();
            client
                .create(&vm_kind, "default", &vm(&name, &guest))
                .await
                .expect("create");
            let running_at = wait_for("instance running", Duration::from_secs(600), || async {
                seen.lock().unwrap().get(&name).copied()
            })
            .await;
            let uid = client
                .get(&vmi_kind, "default", &name)
                .await
                .expect("instance")
                .metadata
                .uid;
            // The agent holds QEMU's serial socket (one client at a time) and logs it to serial.log.
            let log = agent_dir.join("vms").join(uid).join("serial.log");
            console_log_until(&log, MARKER, Duration::from_secs(900)).await;
            (running_at - accepted, accepted.elapsed())
        }));
        tokio::time::sleep(interval).await;
    }
    let (running, marker) = sorted_pairs(tasks).await;
    let at_ten = sampler.await.unwrap();
    let loaded_agent = rss_mib(agent.id());
    let control_plane_rss = rss_mib(up.pid());
    // Stop every VM (grace 0) and wait for their QEMUs to go before anything else is measured.
    for n in 0..count {
        let _ = client
            .delete(&vm_kind, "default", &format!("bench-{n}"), "Background")
            .await;
    }
    wait_for(
        "every benchmark QEMU gone",
        Duration::from_secs(120),
        || async {
            let left = std::fs::read_dir("/proc")
                .ok()?
                .filter_map(|e| e.ok())
                .any(|e| {
                    std::fs::read(e.path().join("cmdline"))
                        .map(|c| String::from_utf8_lossy(&c).contains("guest=default_bench-"))
                        .unwrap_or(false)
                });
            (!left).then_some(())
        },
    )
    .await;
    let _ = agent.kill();
    let _ = agent.wait();
    VmoRun {
        running,
        marker,
        agent_rss: (idle_agent, at_ten, loaded_agent),
        control_plane_rss,
    }
}

async fn bare_qemu(
    guest: &Path,
    count: usize,
    interval: Duration,
) -> (Vec<Duration>, Vec<Duration>) {
    let dir = tempfile::tempdir().unwrap();
    let mut tasks = Vec::new();
    for n in 0..count {
        let run_dir = dir.path().join(format!("bare-{n}"));
        std::fs::create_dir_all(&run_dir).unwrap();
        let (qmp_socket, serial_socket, vnc_socket, pidfile, _) = process::run_files(&run_dir);
        let plan = LaunchPlan {
            name: format!("bare-{n}"),
            uuid: format!("00000000-0000-4000-8000-{n:012}"),
            smbios_serial: None,
            accel: Accel::Tcg,
            sockets: 1,
            cores: 1,
            threads: 1,
            memory_mib: 128,
            firmware: Firmware::Bios,
            kernel: Some((
                kernel(guest),
                Some(guest.join("initrd.img")),
                KERNEL_ARGS.into(),
            )),
            disks: vec![],
            nics: vec![],
            qmp_socket,
            serial_socket,
            vnc_socket,
            pidfile,
            incoming: false,
        };
        tasks.push(tokio::spawn(async move {
            let spawned = Instant::now();
            let q = process::launch("qemu-system-x86_64", &plan)
                .await
                .expect("launch");
            while q.qmp.status().await.unwrap() != "running" {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let running = spawned.elapsed();
            console_until(&plan.serial_socket, MARKER, Duration::from_secs(900)).await;
            let marker = spawned.elapsed();
            // Booted guests keep running until every marker is in, as vmo's and libvirt's do:
            // stopping each at its marker would hand its CPU to the guests still booting.
            (running, marker, q)
        }));
        tokio::time::sleep(interval).await;
    }
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.unwrap());
    }
    for (_, _, q) in &done {
        process::kill(q.pid);
    }
    let mut running: Vec<Duration> = done.iter().map(|d| d.0).collect();
    let mut marker: Vec<Duration> = done.iter().map(|d| d.1).collect();
    running.sort();
    marker.sort();
    (running, marker)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let Some(guest) = test_guest() else { return };
        let count = env_or("VMO_BENCH_VMS", 10);
        let rate = env_or("VMO_BENCH_RATE", 2).max(1);
        let interval = Duration::from_millis(1000 / rate as u64);
        let run = through_vmo(&guest, count, interval).await;
        let (vr, vm_marker) = (&run.running, &run.marker);
        let (br, bare_marker) = bare_qemu(&guest, count, interval).await;
        let libvirt = libvirt::virsh_start(
            &kernel(&guest),
            &guest.join("initrd.img"),
            KERNEL_ARGS,
            count,
            interval,
        )
        .await;
        // P50 and P99 cells for libvirt, or "skipped" when it could not be measured.
        let cells = |d: &[Duration]| {
            format!(
                "{} | {}",
                secs(percentile(d, 0.5)),
                secs(percentile(d, 0.99))
            )
        };
        let (lv_running, lv_marker) = match &libvirt {
            Ok((running, marker)) => (cells(running), cells(marker)),
            Err(_) => ("skipped | skipped".into(), "skipped | skipped".into()),
        };
        println!("{count} VMs at {rate}/s, TCG, 128 MiB, kernel boot of the test guest");
        println!();
        println!("| measurement | vmo P50 | vmo P99 | bare QEMU P50 | bare QEMU P99 | libvirt P50 | libvirt P99 |");
        println!("|---|---|---|---|---|---|---|");
        println!("| API accepted (or spawn) -> QEMU running | {} | {} | {} | {} | {} |", secs(percentile(vr, 0.5)), secs(percentile(vr, 0.99)), secs(percentile(&br, 0.5)), secs(percentile(&br, 0.99)), lv_running);
        println!("| API accepted (or spawn) -> guest boot marker | {} | {} | {} | {} | {} |", secs(percentile(vm_marker, 0.5)), secs(percentile(vm_marker, 0.99)), secs(percentile(&bare_marker, 0.5)), secs(percentile(&bare_marker, 0.99)), lv_marker);
        println!();
        match &libvirt {
            Ok(_) => println!("libvirt: `virsh start` of persistent domains defined beforehand (spawn -> `virsh start` returned with the domain running; spawn -> boot marker)"),
            Err(why) => println!("libvirt: skipped: {why}"),
        }
        let (idle, ten, all) = run.agent_rss;
        println!("`vmo agent` resident memory: {idle:.1} MiB with 0 VMs, {ten:.1} MiB with {} VMs, {all:.1} MiB with {count} VMs; `vmo up` without its agent: {:.1} MiB with {count} VMs", count.min(10), run.control_plane_rss);
    });
}
