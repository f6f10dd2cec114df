//! Linked clones of a 10 GiB volume holding 1 GiB of data: the copy-on-write clone vmo's agent
//! makes (a read-only base and two overlays), side by side with the full copy a copy-based clone
//! costs (`files::full_copy` of the same volume: `qemu-img convert`, flushed), and end to end
//! through the API under a real `vmo up`: a DataVolume with a `pvc` source created, to the
//! DataVolume reporting Succeeded.
//!
//! Run: `cargo bench -p vmo-vmo --bench clone` (VMO_BENCH_RUNS, default 10; VMO_BENCH_GIB, the
//! volume size, default 10).

use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use vmo_agent::storage::files;
use vmo_api::Registry;
use vmo_testkit::{percentile, wait_for, KeptDir, VmoProcess};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn qemu_io(path: &Path, cmd: &str) {
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", cmd])
        .arg(path)
        .output()
        .expect("qemu-io");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A volume of `gib` GiB with 1 GiB written in 64 MiB stripes across it.
async fn make_volume(path: &Path, gib: u64) {
    files::create_blank(path, "qcow2", gib << 30)
        .await
        .expect("volume");
    for i in 0..16u64 {
        let offset = i * ((gib << 30) / 16);
        qemu_io(path, &format!("write -P 0x{:02x} {offset} 64M", i + 1));
    }
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{what:<58} median {:>8.1} ms   P95 {:>8.1} ms   ({} runs)",
        percentile(&samples, 0.5).as_secs_f64() * 1000.0,
        percentile(&samples, 0.95).as_secs_f64() * 1000.0,
        samples.len()
    );
}

#[tokio::main]
async fn main() {
    let runs = env_or("VMO_BENCH_RUNS", 10);
    let gib = env_or("VMO_BENCH_GIB", 10) as u64;
    let dir = KeptDir::new("vmo-bench-clone-");
    let pool = dir.path().join("pool");
    std::fs::create_dir_all(&pool).unwrap();

    // The file operation alone: a fresh source per run (a written source, so each clone makes its
    // base), and clones of one unchanged golden image (sharing its base).
    let mut linked = Vec::new();
    let source = pool.join("golden.qcow2");
    make_volume(&source, gib).await;
    for i in 0..runs {
        qemu_io(&source, &format!("write -P 0x{:02x} 0 4k", i + 1));
        let target = pool.join(format!("clone-{i}.qcow2"));
        let start = Instant::now();
        files::linked_clone(&source, &target, gib << 30)
            .await
            .expect("clone");
        linked.push(start.elapsed());
    }
    let mut shared = Vec::new();
    for i in 0..runs {
        let target = pool.join(format!("again-{i}.qcow2"));
        let start = Instant::now();
        files::linked_clone(&source, &target, gib << 30)
            .await
            .expect("clone");
        shared.push(start.elapsed());
    }
    let mut copies = Vec::new();
    for i in 0..runs.min(3) {
        let target = pool.join(format!("copy-{i}.qcow2"));
        let start = Instant::now();
        files::full_copy(&source, &target, "qcow2", gib << 30)
            .await
            .expect("full copy");
        copies.push(start.elapsed());
        let _ = std::fs::remove_file(&target);
    }

    // End to end: DataVolume created -> Succeeded, through the controller and the agent.
    let data = dir.path().join("data");
    let pool_arg = pool.to_string_lossy().to_string();
    let up = VmoProcess::start_with_args(
        Path::new(env!("CARGO_BIN_EXE_vmo")),
        &data,
        &[
            "--accel",
            "tcg",
            "--node-name",
            "bench",
            "--local-pool",
            &pool_arg,
        ],
    )
    .await;
    let client = up.client();
    let registry = Registry::builtin();
    let dv_kind = *registry.resolve("dv").unwrap();
    let immediate = json!({"cdi.kubevirt.io/storage.bind.immediate.requested": "true"});
    let size = format!("{gib}Gi");
    let golden = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": {"name": "golden", "annotations": immediate},
        "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": size}}}}});
    client.create(&dv_kind, "default", &golden).await.unwrap();
    let succeeded = |name: String| {
        let client = client.clone();
        async move {
            wait_for(
                &format!("{name} Succeeded"),
                Duration::from_secs(120),
                || async {
                    client
                        .get(&dv_kind, "default", &name)
                        .await
                        .ok()
                        .filter(|d| d.status()["phase"] == "Succeeded")
                },
            )
            .await
        }
    };
    succeeded("golden".into()).await;
    let mut api = Vec::new();
    for i in 0..runs {
        let name = format!("vm-disk-{i}");
        let clone = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
            "metadata": {"name": name, "annotations": immediate},
            "spec": {"source": {"pvc": {"name": "golden"}}, "storage": {}}});
        let start = Instant::now();
        client.create(&dv_kind, "default", &clone).await.unwrap();
        succeeded(name).await;
        api.push(start.elapsed());
    }

    println!("clone of a {gib} GiB volume holding 1 GiB of data");
    report(
        "vmo linked clone, source written since the last clone",
        linked,
    );
    report("vmo linked clone, unchanged source (shared base)", shared);
    report("vmo full copy (files::full_copy), a copy-clone", copies);
    report("vmo end to end: DataVolume created -> Succeeded", api);
}
