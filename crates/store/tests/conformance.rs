//! The embedded redb backend against the store conformance suite, plus a real crash: a child process
//! writing with acknowledgements is killed with SIGKILL and every acknowledged write must survive.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use vmo_store::{conformance, RedbStore, Store};

fn open(dir: &Path) -> Arc<dyn Store> {
    Arc::new(RedbStore::open(&dir.join("store.redb")).expect("open store"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_passes_the_conformance_suite() {
    conformance::run_all(open).await;
}

/// The `crash_writer` example, built beside this test by `cargo test` and `cargo nextest`.
fn crash_writer_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    profile_dir.join("examples").join("crash_writer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let writer = crash_writer_binary();
    assert!(
        writer.exists(),
        "{} is missing: build with cargo test",
        writer.display()
    );
    let mut child = Command::new(writer)
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut acknowledged = Vec::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(key) = line.strip_prefix("ACK ") {
            acknowledged.push(key.to_string());
            if acknowledged.len() == 300 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(
        acknowledged.len(),
        300,
        "the child acknowledged writes before the kill"
    );
    conformance::verify_acknowledged(open(dir.path()), &acknowledged).await;
}
