//! API benchmarks against a real `vmo up` process over HTTPS:
//! 1. VirtualMachine creates per second with 16 concurrent clients (each with its own connections);
//! 2. watch delivery latency with 100 watchers while VirtualMachines are created at a steady rate.
//!
//! Run: `cargo bench -p vmo-vmo --bench api`. Prints a Markdown table for docs/benchmarks.md.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmo_api::Registry;
use vmo_client::Client;
use vmo_testkit::{percentile, rss_kib, vm_manifest, KeptDir, VmoProcess};

const CLIENTS: usize = 16;
const CREATES_PER_CLIENT: usize = 400;
const WATCHERS: usize = 100;
const WATCHED_WRITES: usize = 300;
const WRITE_INTERVAL: Duration = Duration::from_millis(10);

/// When each watched object's create was sent, and when it was acknowledged.
type SendTimes = HashMap<String, (Instant, Option<Instant>)>;

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn creates(up: &VmoProcess) -> (f64, Vec<Duration>) {
    let vm = *Registry::builtin().resolve("vm").unwrap();
    let clients: Vec<Client> = (0..CLIENTS).map(|_| up.client()).collect();
    // Warm up connections and the server.
    for (i, c) in clients.iter().enumerate() {
        c.create(&vm, "default", &vm_manifest(&format!("warm-{i}")))
            .await
            .unwrap();
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(CREATES_PER_CLIENT);
            for n in 0..CREATES_PER_CLIENT {
                let t = Instant::now();
                client
                    .create(&vm, "default", &vm_manifest(&format!("vm-{i}-{n}")))
                    .await
                    .unwrap();
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    (
        (CLIENTS * CREATES_PER_CLIENT) as f64 / elapsed.as_secs_f64(),
        latencies,
    )
}

async fn watch_latency(up: &VmoProcess) -> (Vec<Duration>, Vec<Duration>) {
    let vm = *Registry::builtin().resolve("vm").unwrap();
    let ns = *Registry::builtin().resolve("ns").unwrap();
    let writer = up.client();
    writer
        .create(
            &ns,
            "",
            &serde_json::json!({"metadata": {"name": "watched"}}),
        )
        .await
        .unwrap();
    let sent: Arc<Mutex<SendTimes>> = Arc::default();
    let start_rv = writer
        .list(&vm, Some("watched"), "")
        .await
        .unwrap()
        .metadata
        .resource_version;
    let mut watchers = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(WATCHERS);
    for _ in 0..WATCHERS {
        let client = up.client();
        let rv = start_rv.clone();
        let ready = ready_tx.clone();
        watchers.push(tokio::spawn(async move {
            let mut w = client
                .watch(&vm, Some("watched"), &format!("resourceVersion={rv}"))
                .await
                .unwrap();
            ready.send(()).await.unwrap();
            let mut received = Vec::with_capacity(WATCHED_WRITES);
            while received.len() < WATCHED_WRITES {
                let e = w.next().await.expect("stream").expect("event");
                if e.event_type == "ADDED" {
                    let name = e.object["metadata"]["name"].as_str().unwrap().to_string();
                    received.push((name, Instant::now()));
                }
            }
            received
        }));
    }
    for _ in 0..WATCHERS {
        ready_rx.recv().await.unwrap();
    }
    for n in 0..WATCHED_WRITES {
        let name = format!("w-{n}");
        let t = Instant::now();
        sent.lock().unwrap().insert(name.clone(), (t, None));
        writer
            .create(&vm, "watched", &vm_manifest(&name))
            .await
            .unwrap();
        sent.lock().unwrap().get_mut(&name).unwrap().1 = Some(Instant::now());
        tokio::time::sleep(WRITE_INTERVAL).await;
    }
    let mut from_send = Vec::new();
    let mut from_ack = Vec::new();
    for w in watchers {
        for (name, at) in w.await.unwrap() {
            let (sent_at, acked_at) = sent.lock().unwrap()[&name];
            from_send.push(at.saturating_duration_since(sent_at));
            from_ack.push(at.saturating_duration_since(acked_at.unwrap_or(sent_at)));
        }
    }
    from_send.sort();
    from_ack.sort();
    (from_send, from_ack)
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    ticks / 100.0
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = KeptDir::new("vmo-bench-");
        let up = VmoProcess::start(Path::new(env!("CARGO_BIN_EXE_vmo")), &dir.path().join("data")).await;
        let cpu_before = cpu_seconds(up.pid());
        let wall = Instant::now();
        let (rate, latencies) = creates(&up).await;
        let server_cpu = (cpu_seconds(up.pid()) - cpu_before) / wall.elapsed().as_secs_f64();
        let own_cpu = cpu_seconds(std::process::id()) / wall.elapsed().as_secs_f64();
        let (from_send, from_ack) = watch_latency(&up).await;
        let rss = rss_kib(up.pid());
        println!("| measurement | result | target |");
        println!("|---|---|---|");
        println!("| VirtualMachine creates over HTTPS, {CLIENTS} concurrent clients, {} creates | {rate:.0} creates/s | >= 1,000 creates/s |", CLIENTS * CREATES_PER_CLIENT);
        println!("| create latency P50 / P99 | {} / {} | - |", ms(percentile(&latencies, 0.5)), ms(percentile(&latencies, 0.99)));
        println!("| cores busy during the creates: `vmo up` / the benchmark's 16 clients | {server_cpu:.2} / {own_cpu:.2} | - |");
        println!("| watch delivery, {WATCHERS} watchers x {WATCHED_WRITES} creates, request sent -> event received, P50 / P99 | {} / {} | P99 <= 50 ms |", ms(percentile(&from_send, 0.5)), ms(percentile(&from_send, 0.99)));
        println!("| watch delivery, write acknowledged -> event received, P50 / P99 | {} / {} | - |", ms(percentile(&from_ack, 0.5)), ms(percentile(&from_ack, 0.99)));
        println!("| `vmo up` resident memory after the run ({} objects) | {:.1} MiB | - |", CLIENTS * CREATES_PER_CLIENT + WATCHED_WRITES + CLIENTS, rss as f64 / 1024.0);
    });
}
