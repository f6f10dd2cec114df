//! Controllers that run inside the server process and act only through the API, like any client:
//! the garbage collector (ownerReference cascades) and the namespace controller. Later capabilities
//! (VMs, scheduling, storage, networks) add their reconcilers here.

pub mod garbage_collector;
pub mod informer;
pub mod namespace;

use std::sync::Arc;
use vmo_api::Registry;
use vmo_client::Client;

/// Starts every controller; they run until the runtime shuts down.
pub fn start_all(client: Client) -> Vec<tokio::task::JoinHandle<()>> {
    let registry = Arc::new(Registry::builtin());
    vec![
        tokio::spawn(garbage_collector::run(client.clone(), registry.clone())),
        tokio::spawn(namespace::run(client, registry)),
    ]
}
