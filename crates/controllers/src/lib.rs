//! Controllers that run inside the server process and act only through the API, like any client:
//! the garbage collector (ownerReference cascades), the namespace controller, the node lifecycle
//! controller, the VirtualMachine controller, the VM scheduler, the migration controller, the storage
//! controller and the snapshot controller (VM snapshots, restores, clones) and the
//! network controllers.

pub mod drain;
pub mod garbage_collector;
pub mod migration;
pub use vmo_client::informer;
pub mod namespace;
pub mod network;
pub mod node_lifecycle;
pub mod scheduler;
pub mod snapshot;
pub mod storage;
pub mod vm;

use std::sync::Arc;
use std::time::Duration;
use vmo_api::Registry;
use vmo_client::Client;

/// Tunables of the controllers.
#[derive(Debug, Clone)]
pub struct ControllerSettings {
    /// How long after its last heartbeat a node is declared unreachable.
    pub node_grace_period: Duration,
}

impl Default for ControllerSettings {
    fn default() -> Self {
        Self {
            node_grace_period: Duration::from_secs(40),
        }
    }
}

/// Starts every controller; they run until the runtime shuts down.
pub fn start_all(client: Client, settings: ControllerSettings) -> Vec<tokio::task::JoinHandle<()>> {
    let registry = Arc::new(Registry::builtin());
    vec![
        tokio::spawn(garbage_collector::run(client.clone(), registry.clone())),
        tokio::spawn(namespace::run(client.clone(), registry.clone())),
        tokio::spawn(vm::run(client.clone(), registry.clone())),
        tokio::spawn(node_lifecycle::run(
            client.clone(),
            registry.clone(),
            settings.node_grace_period,
        )),
        tokio::spawn(migration::run(client.clone(), registry.clone())),
        tokio::spawn(storage::run(client.clone(), registry.clone())),
        tokio::spawn(snapshot::run(client.clone(), registry.clone())),
        tokio::spawn(network::run(client.clone(), registry.clone())),
        tokio::spawn(scheduler::run(client, registry)),
    ]
}
