//! Writes to a redb store forever, printing `ACK <key>` after each acknowledged write; the store's
//! crash test runs it as a child process and kills it with SIGKILL.

use std::path::PathBuf;
use std::sync::Arc;
use vmo_store::{conformance, RedbStore};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).expect("usage: crash_writer DIR"));
    let store = RedbStore::open(&dir.join("store.redb")).expect("open store");
    conformance::crash_writer(Arc::new(store)).await;
}
