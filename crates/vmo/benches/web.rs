//! The web UI's VM list with 1,000 VMs, in real headless Chromium: a real `vmo up` (control plane
//! only) with simulated nodes running the VMs (no QEMU), the UI embedded in the binary, and
//! `web/bench/vmlist.mjs` measuring page load (a fresh tab) to the list showing every VM with its
//! first screen painted, scrolling to the last row, and the search response and the longest
//! main-thread task while 50 VM updates a second stream in. Needs Chromium, node and
//! the built UI (scripts/build-web.sh); says so and exits otherwise.
//! Run: `cargo bench -p vmo-vmo --bench web`.

use futures_util::{stream, StreamExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use vmo_agent::sim::{SimAgents, SimConfig};
use vmo_api::Registry;
use vmo_testkit::{wait_for, KeptDir, VmoProcess};

const VMS: usize = 1000;

fn web_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web")
}

fn missing() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!("{chromium} is not installed"));
    }
    if !web_dir().join("node_modules/playwright-core").exists()
        || !web_dir().join("dist/index.html").exists()
    {
        return Some("the web UI is not built (scripts/build-web.sh)".into());
    }
    None
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Some(why) = missing() {
        eprintln!("web bench skipped: {why}");
        return;
    }
    let dir = KeptDir::new("vmo-web-bench-");
    let vmo = Path::new(env!("CARGO_BIN_EXE_vmo"));
    let up = VmoProcess::start_with_args(vmo, &dir.path().join("data"), &["--no-agent"]).await;
    let client = up.client();
    let mut config = SimConfig::new(20);
    config.cpus = 64;
    let _sims = SimAgents::start(client.clone(), config)
        .await
        .expect("sim agents");
    let registry = Registry::builtin();
    let (vm, vmi) = (
        *registry.resolve("vm").unwrap(),
        *registry.resolve("vmi").unwrap(),
    );
    let started = Instant::now();
    stream::iter(0..VMS)
        .for_each_concurrent(16, |i| {
            let client = client.clone();
            async move {
                let mut manifest = vmo_testkit::vm_manifest(&format!("vm-{i:04}"));
                manifest["spec"]["runStrategy"] = serde_json::json!("Always");
                client
                    .create(&vm, "default", &manifest)
                    .await
                    .expect("create a VM");
            }
        })
        .await;
    wait_for("every VM running", Duration::from_secs(600), || async {
        let list = client.list(&vmi, Some("default"), "").await.ok()?;
        let running = list
            .items
            .iter()
            .filter(|i| i.status()["phase"] == "Running")
            .count();
        (running == VMS).then_some(())
    })
    .await;
    println!(
        "{VMS} VMs created and running on 20 simulated nodes in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let token = vmo_client::kubeconfig::load(&up.kubeconfig)
        .expect("kubeconfig")
        .token;
    let out = Command::new("node")
        .current_dir(web_dir())
        .args([
            "bench/vmlist.mjs",
            client.server(),
            &token,
            &VMS.to_string(),
            "5",
            "50",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run node");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser measurement failed: {text}"
    );
    let line = text.lines().last().unwrap_or_default();
    let r: serde_json::Value = serde_json::from_str(line).expect("results");
    println!("VM list, {VMS} VMs, Chromium headless, 2 cores:");
    println!(
        "  page load (fresh tab) to the list showing all {VMS}, first screen painted: P50 {} ms, max {} ms (5 loads)",
        r["load_ms_p50"], r["load_ms_max"]
    );
    println!(
        "  scroll to the last VM's row (and back): max {} ms",
        r["scroll_ms_max"]
    );
    println!(
        "  search to filtered table while {} updates/s stream in: P50 {} ms, max {} ms",
        r["updates_per_s"], r["search_ms_p50"], r["search_ms_max"]
    );
    let longest = r["longest_task_ms"].as_u64().unwrap_or_default();
    println!(
        "  longest main-thread task meanwhile: {} ({} updates sent)",
        if longest == 0 {
            "none over 50 ms (the browser's long-task threshold)".to_string()
        } else {
            format!("{longest} ms")
        },
        r["updates_sent"]
    );
}
