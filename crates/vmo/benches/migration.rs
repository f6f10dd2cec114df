//! Live migration: 256 MiB and 1 GiB guests, idle and dirtying memory (TCG), through vmo (a
//! VirtualMachineInstanceMigration between two `vmo agent` processes) and, side by side in the
//! same run, raw QEMU: two `qemu-system-x86_64` processes with the same command line and a QMP
//! `migrate` between them. Reports QEMU's total time and downtime for both, and for vmo the end to
//! end time from the migration object's creation to the instance reporting its new node. Then a
//! drain of a node running N VMs.
//!
//! Run: `cargo bench -p vmo-vmo --bench migration` (VMO_BENCH_RUNS repetitions, default 3;
//! VMO_BENCH_DRAIN_VMS, default 6).

use std::path::Path;
use std::time::{Duration, Instant};
use vmo_agent::qmp::Qmp;
use vmo_api::kinds::migration::MigrationState;
use vmo_api::Registry;
use vmo_testkit::{console_log_until, test_guest, wait_for, Cluster, KeptDir};

const DIRTY_MIB_S: u32 = 60;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

use vmo_testkit::guest_kernel as kernel;

fn kernel_args(dirty: u32) -> String {
    format!("console=ttyS0 quiet no_timer_check vmo.netwait=0 vmo.dirty={dirty} vmo.dirtybuf=64")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Raw QEMU: (total ms, downtime ms) of one migration between two fresh processes.
async fn raw_once(guest: &Path, dir: &Path, mib: u32, dirty: u32) -> (f64, f64) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let spawn = |side: &str, incoming: bool| {
        let mut c = std::process::Command::new("qemu-system-x86_64");
        c.args([
            "-machine",
            "q35",
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-m",
        ])
        .arg(format!("{mib}M"))
        .args(["-nodefaults", "-display", "none", "-kernel"])
        .arg(kernel(guest))
        .arg("-initrd")
        .arg(guest.join("initrd.img"))
        .args(["-append", &kernel_args(dirty), "-serial"])
        .arg(format!(
            "file:{}",
            dir.join(format!("{side}.log")).display()
        ))
        .arg("-qmp")
        .arg(format!(
            "unix:{},server=on,wait=off",
            dir.join(format!("{side}.sock")).display()
        ));
        if incoming {
            c.args(["-incoming", "defer"]);
        }
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c.spawn().unwrap()
    };
    let mut src = spawn("src", false);
    let mut dst = spawn("dst", true);
    console_log_until(
        &dir.join("src.log"),
        "VMO-GUEST: ready",
        Duration::from_secs(120),
    )
    .await;
    let connect = |side: &str| {
        let path = dir.join(format!("{side}.sock"));
        async move { Qmp::connect(&path).await.unwrap().0 }
    };
    let (s, d) = (connect("src").await, connect("dst").await);
    d.execute(
        "migrate-incoming",
        Some(serde_json::json!({"uri": "tcp:127.0.0.1:0"})),
    )
    .await
    .unwrap();
    let port = d.execute("query-migrate", None).await.unwrap()["socket-address"][0]["port"]
        .as_str()
        .unwrap()
        .to_string();
    s.execute(
        "migrate-set-parameters",
        Some(serde_json::json!({"max-bandwidth": 1u64 << 40})),
    )
    .await
    .unwrap();
    s.execute(
        "migrate",
        Some(serde_json::json!({"uri": format!("tcp:127.0.0.1:{port}")})),
    )
    .await
    .unwrap();
    let info = loop {
        let info = s.execute("query-migrate", None).await.unwrap();
        match info["status"].as_str() {
            Some("completed") => break info,
            Some("failed") => panic!("raw migration failed: {info}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let _ = src.kill();
    let _ = dst.kill();
    let _ = src.wait();
    let _ = dst.wait();
    (
        info["total-time"].as_f64().unwrap_or(0.0),
        info["downtime"].as_f64().unwrap_or(0.0),
    )
}

fn manifest(name: &str, guest: &Path, mib: u32, dirty: u32) -> String {
    format!(
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {{name: {name}}}
spec:
  runStrategy: Always
  template:
    spec:
      evictionStrategy: LiveMigrate
      terminationGracePeriodSeconds: 0
      domain:
        memory: {{guest: {mib}Mi}}
        firmware:
          kernelBoot:
            kernelArgs: {args}
            container: {{kernelPath: {k}, initrdPath: {i}}}
        devices: {{}}
"#,
        args = kernel_args(dirty),
        k = kernel(guest).display(),
        i = guest.join("initrd.img").display()
    )
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let Some(guest) = test_guest() else { return };
    let runs = env_or("VMO_BENCH_RUNS", 3);
    let dir = KeptDir::new("vmo-bench-migration-");
    let vmo = Path::new(env!("CARGO_BIN_EXE_vmo"));
    let cluster = Cluster::start(vmo, dir.path(), &[("node-a", "a"), ("node-b", "b")]).await;
    let client = cluster.client();
    let vmi_kind = *Registry::builtin().resolve("vmi").unwrap();
    println!("| guest | memory load | raw QEMU total / downtime | vmo QEMU total / downtime | vmo end to end | end to end - raw total |");
    println!("|---|---|---|---|---|---|");
    for (mib, dirty) in [(256, 0), (256, DIRTY_MIB_S), (1024, 0), (1024, DIRTY_MIB_S)] {
        let (mut raw_total, mut raw_down) = (Vec::new(), Vec::new());
        for r in 0..runs {
            let (t, d) = raw_once(
                &guest,
                &dir.path().join(format!("raw-{mib}-{dirty}-{r}")),
                mib,
                dirty,
            )
            .await;
            raw_total.push(t);
            raw_down.push(d);
        }
        let name = format!("m{mib}-{dirty}");
        let (ok, out, err) = cluster.up.cli_with_input(
            &["apply", "-f", "-"],
            Some(&manifest(&name, &guest, mib, dirty)),
        );
        assert!(ok, "{out}{err}");
        let running = wait_for("running", Duration::from_secs(120), || async {
            let i = client.get(&vmi_kind, "default", &name).await.ok()?;
            (i.status()["phase"] == "Running").then_some(i)
        })
        .await;
        let uid = running.metadata.uid.clone();
        let node = running.status()["nodeName"].as_str().unwrap().to_string();
        let log = dir
            .path()
            .join(&node)
            .join("vms")
            .join(&uid)
            .join("serial.log");
        console_log_until(&log, "VMO-GUEST: ready", Duration::from_secs(120)).await;
        let (mut total, mut down, mut e2e) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let before = client.get(&vmi_kind, "default", &name).await.unwrap();
            let from = before.status()["nodeName"].as_str().unwrap().to_string();
            let started = Instant::now();
            let m = vmo::cli_migrate(&client, &name).await;
            let state = wait_for("migrated", Duration::from_secs(300), || async {
                let i = client.get(&vmi_kind, "default", &name).await.ok()?;
                let s = MigrationState::of(&i)?;
                if s.migration_uid == m && s.failed {
                    panic!("migration failed: {s:?}");
                }
                (s.migration_uid == m && s.completed && i.status()["nodeName"] != from.as_str())
                    .then_some(s)
            })
            .await;
            e2e.push(started.elapsed().as_secs_f64() * 1000.0);
            total.push(state.migration_milliseconds.unwrap_or(0) as f64);
            down.push(state.downtime_milliseconds.unwrap_or(0) as f64);
        }
        let (rt, rd, vt, vd, ve) = (
            median(raw_total),
            median(raw_down),
            median(total),
            median(down),
            median(e2e),
        );
        println!(
            "| {mib} MiB | {} | {rt:.0} / {rd:.0} ms | {vt:.0} / {vd:.0} ms | {ve:.0} ms | {:+.0} ms |",
            if dirty == 0 { "idle".to_string() } else { format!("dirtying {dirty} MiB/s") },
            ve - rt
        );
        let (ok, out, err) = cluster.up.cli(&["delete", "vm", &name]);
        assert!(ok, "{out}{err}");
    }

    // Drain: N idle 128 MiB VMs on one node, all moved live.
    let count = env_or("VMO_BENCH_DRAIN_VMS", 6);
    assert!(cluster.up.cli(&["node", "cordon", "node-b"]).0);
    for n in 0..count {
        let (ok, out, err) = cluster.up.cli_with_input(
            &["apply", "-f", "-"],
            Some(&manifest(&format!("d{n}"), &guest, 128, 0)),
        );
        assert!(ok, "{out}{err}");
    }
    for n in 0..count {
        wait_for("drain VMs running", Duration::from_secs(300), || async {
            let i = client
                .get(&vmi_kind, "default", &format!("d{n}"))
                .await
                .ok()?;
            (i.status()["phase"] == "Running").then_some(())
        })
        .await;
    }
    assert!(cluster.up.cli(&["node", "uncordon", "node-b"]).0);
    let started = Instant::now();
    let (ok, out, err) = cluster
        .up
        .cli(&["node", "drain", "node-a", "--timeout", "600"]);
    assert!(ok, "{out}{err}");
    println!(
        "\ndrain of node-a with {count} idle 128 MiB VMs (LiveMigrate, parallelOutboundMigrationsPerNode 2): {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

mod vmo {
    use vmo_client::Client;

    /// Creates a migration of `vmi` as `vmo migrate` does; returns its uid.
    pub async fn cli_migrate(client: &Client, vmi: &str) -> String {
        let kind = vmo_api::Registry::builtin();
        let kind = kind.resolve("vmim").unwrap();
        let body = serde_json::json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
            "metadata": {"generateName": format!("{vmi}-"), "namespace": "default"},
            "spec": {"vmiName": vmi},
        });
        client
            .create(kind, "default", &body)
            .await
            .unwrap()
            .metadata
            .uid
    }
}
