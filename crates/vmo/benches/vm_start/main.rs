//! VM start latency: VirtualMachines created through the API at a steady rate under a real `vmo up`
//! and `vmo agent` (TCG), measuring API accepted -> QEMU running (the instance's Running phase, which the agent sets
//! after QMP reports `running`) and API accepted -> the guest's boot marker on the serial console;
//! side by side, in the same run, bare `qemu-system-x86_64` with the identical command line (spawn ->
//! QMP running, spawn -> boot marker), and libvirt's `virsh start` of an equivalent domain (see
//! `libvirt.rs`; skipped, saying why, without libvirt). The agent runs as its own `vmo agent` process
//! so its resident memory is measured with 0, 10 and N VMs apart from the control plane.
//!
//! Run: `cargo bench -p vmo-vmo --bench vm_start` (VMO_BENCH_VMS, VMO_BENCH_RATE to change the load;
//! VMO_BENCH_MARKERS=0 to measure only the start to running; VMO_BENCH_KERNEL=vmlinux to boot the
//! PVH kernel instead of `vmlinuz`; VMO_BENCH_SETTLE_SECS, default 20, the quiet spell before each
//! phase; `scripts/install-libvirt.sh` first for the libvirt column). The
//! agent's log, with each QEMU's start timings, is summarised after the table.

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

/// The guest kernel every phase boots: the test guest's compressed `vmlinuz` (as a kernelBoot
/// container ships it; QEMU copies its 8 MiB into guest memory at start), or the file
/// VMO_BENCH_KERNEL names in the guest directory (`vmlinux`: the PVH kernel the tests boot, quicker to
/// the boot marker, but QEMU copies its 57 MiB of segments twice before QMP answers).
fn kernel(guest: &Path) -> std::path::PathBuf {
    let file = std::env::var("VMO_BENCH_KERNEL").unwrap_or_default();
    match file.as_str() {
        "" if guest.join("vmlinuz").exists() => guest.join("vmlinuz"),
        "" => vmo_testkit::guest_kernel(guest),
        _ => guest.join(file),
    }
}

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
    /// The control plane's hops: API accepted -> instance created, -> bound to the node.
    hops: (Vec<Duration>, Vec<Duration>),
    /// From the agent's log, per VM: instance taken on -> QEMU spawned (preparation), and spawn ->
    /// QMP answering; sorted.
    agent_phases: (Vec<Duration>, Vec<Duration>),
}

/// The agent's "QEMU started" timings (`prepare_ms`, `qemu_ms`) from its log, each list sorted.
fn agent_phases(log: &Path) -> (Vec<Duration>, Vec<Duration>) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let field = |line: &str, key: &str| -> Option<Duration> {
        let at = line.find(&format!("{key}="))? + key.len() + 1;
        let digits: String = line[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok().map(Duration::from_millis)
    };
    let (mut prepare, mut qemu) = (Vec::new(), Vec::new());
    for line in text.lines().filter(|l| l.contains("QEMU started")) {
        if let (Some(p), Some(q)) = (field(line, "prepare_ms"), field(line, "qemu_ms")) {
            prepare.push(p);
            qemu.push(q);
        }
    }
    prepare.sort();
    qemu.sort();
    (prepare, qemu)
}

/// When one watch first saw each instance (by name): created, bound to a node, and Running.
/// (Polling 50 instances would load the server being measured.)
#[derive(Default, Clone, Copy)]
struct Seen {
    /// When the benchmark sent the VirtualMachine.
    accepted: Option<Instant>,
    created: Option<Instant>,
    scheduled: Option<Instant>,
    running: Option<Instant>,
}

type SeenByName = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Seen>>>;

fn watch_instances(client: vmo_client::Client, vmi_kind: vmo_api::KindInfo) -> SeenByName {
    let seen = SeenByName::default();
    let sink = seen.clone();
    tokio::spawn(async move {
        let mut events = client
            .watch(&vmi_kind, Some("default"), "")
            .await
            .expect("watch instances");
        while let Some(Ok(event)) = events.next().await {
            let now = Instant::now();
            let name = event.object["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let status = &event.object["status"];
            let mut all = sink.lock().unwrap();
            let entry = all.entry(name).or_default();
            entry.created.get_or_insert(now);
            if status["nodeName"].is_string() {
                entry.scheduled.get_or_insert(now);
            }
            if status["phase"] == "Running" {
                entry.running.get_or_insert(now);
            }
        }
    });
    seen
}

async fn through_vmo(guest: &Path, count: usize, interval: Duration, markers: bool) -> VmoRun {
    let dir = KeptDir::new("vmo-bench-vm-");
    let data = dir.path().join("data");
    let vmo = Path::new(env!("CARGO_BIN_EXE_vmo"));
    // The agent runs as its own process so its memory is measured apart from the control plane.
    let up = VmoProcess::start_with_args(vmo, &data, &["--no-agent", "--node-name", "bench"]).await;
    let agent_dir = dir.path().join("agent");
    // The agent's log (with each QEMU's start timings) is kept with the run's files.
    let agent_log = std::fs::File::create(dir.path().join("agent.log")).expect("agent log");
    let mut agent = std::process::Command::new(vmo)
        .args(["agent", "--node-name", "bench", "--accel", "tcg"])
        .args(["--agent-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&agent_dir)
        .env("KUBECONFIG", &up.kubeconfig)
        .stdout(std::process::Stdio::null())
        .stderr(agent_log)
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
    let running_since = watch_instances(client.clone(), vmi_kind);
    // The agent's memory once 10 instances run.
    let sampler = {
        let (seen, pid, at) = (running_since.clone(), agent.id(), count.min(10));
        tokio::spawn(async move {
            while seen
                .lock()
                .unwrap()
                .values()
                .filter(|s| s.running.is_some())
                .count()
                < at
            {
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
            seen.lock()
                .unwrap()
                .entry(name.clone())
                .or_default()
                .accepted = Some(accepted);
            client
                .create(&vm_kind, "default", &vm(&name, &guest))
                .await
                .expect("create");
            let running_at = wait_for("instance running", Duration::from_secs(600), || async {
                seen.lock().unwrap().get(&name).and_then(|s| s.running)
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
            if markers {
                console_log_until(&log, MARKER, Duration::from_secs(900)).await;
            }
            (running_at - accepted, accepted.elapsed())
        }));
        tokio::time::sleep(interval).await;
    }
    let (running, marker) = sorted_pairs(tasks).await;
    let hops = hops(&running_since.lock().unwrap());
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
    let agent_phases = agent_phases(&dir.path().join("agent.log"));
    VmoRun {
        running,
        marker,
        agent_rss: (idle_agent, at_ten, loaded_agent),
        control_plane_rss,
        hops,
        agent_phases,
    }
}

/// Per instance, API accepted -> created and -> bound to a node; each list sorted.
fn hops(seen: &std::collections::HashMap<String, Seen>) -> (Vec<Duration>, Vec<Duration>) {
    let (mut created, mut scheduled) = (Vec::new(), Vec::new());
    for s in seen.values() {
        let Some(accepted) = s.accepted else { continue };
        let since = |t: Instant| t.saturating_duration_since(accepted);
        created.extend(s.created.map(since));
        scheduled.extend(s.scheduled.map(since));
    }
    created.sort();
    scheduled.sort();
    (created, scheduled)
}

async fn bare_qemu(
    guest: &Path,
    count: usize,
    interval: Duration,
    markers: bool,
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
            if markers {
                console_until(&plan.serial_socket, MARKER, Duration::from_secs(900)).await;
            }
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
        // VMO_BENCH_MARKERS=0 measures only the start to running (minutes sooner under load):
        // nothing waits for boot markers, and libvirt is skipped.
        let markers = env_or("VMO_BENCH_MARKERS", 1) != 0;
        let settle = Duration::from_secs(env_or("VMO_BENCH_SETTLE_SECS", 20) as u64);
        let run = through_vmo(&guest, count, interval, markers).await;
        let (vr, vm_marker) = (&run.running, &run.marker);
        // Memory a phase's QEMUs just freed is cheap to touch again for a few seconds, until this
        // VM's host takes it back (virtio-balloon free page reporting); a phase started at once
        // after another started its QEMUs 5-10x faster. Every phase starts after a quiet spell,
        // as the first one does after `vmo up` starts.
        tokio::time::sleep(settle).await;
        let (br, bare_marker) = bare_qemu(&guest, count, interval, markers).await;
        let libvirt = if markers {
            tokio::time::sleep(settle).await;
            libvirt::virsh_start(
                &kernel(&guest),
                &guest.join("initrd.img"),
                KERNEL_ARGS,
                count,
                interval,
            )
            .await
        } else {
            Err("VMO_BENCH_MARKERS=0".to_string())
        };
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
        let kernel_file = kernel(&guest);
        let kernel_file = kernel_file.file_name().unwrap_or_default().to_string_lossy();
        println!("{count} VMs at {rate}/s, TCG, 128 MiB, kernel boot of the test guest ({kernel_file})");
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
        let p50_p99 = |d: &[Duration]| {
            format!(
                "P50 {} P99 {}",
                secs(percentile(d, 0.5)),
                secs(percentile(d, 0.99))
            )
        };
        let (created, scheduled) = &run.hops;
        println!(
            "control plane (one watch): API accepted -> instance created {}; -> bound to the node {}",
            p50_p99(created),
            p50_p99(scheduled),
        );
        let (prepare, qemu) = &run.agent_phases;
        println!(
            "inside the agent (its log): instance taken on (finalizer written) -> QEMU spawned {}; spawn -> QMP answering {}",
            p50_p99(prepare),
            p50_p99(qemu),
        );
        let (idle, ten, all) = run.agent_rss;
        println!("`vmo agent` resident memory: {idle:.1} MiB with 0 VMs, {ten:.1} MiB with {} VMs, {all:.1} MiB with {count} VMs; `vmo up` without its agent: {:.1} MiB with {count} VMs", count.min(10), run.control_plane_rss);
    });
}
