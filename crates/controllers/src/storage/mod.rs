//! The storage controller: the server's part of volumes (the agents make the files).
//!
//! - [`classes`]: the built-in classes on a fresh cluster, and one StorageProfile per class;
//! - [`claims`]: every claim gets a class, protection while a VM uses it, and (Immediate classes)
//!   a node to be provisioned on; a volume whose claim is gone is deleted or released;
//! - [`data_volumes`]: every DataVolume gets its claim, and its phase until an agent takes over.
//!
//! One level-triggered pass over the caches at a time, woken by any change of these kinds and every
//! few seconds regardless. Warnings are recorded as events once per distinct message.

mod claims;
mod classes;
mod data_volumes;

pub use classes::{default_class, BUILTIN_CLASSES};

use crate::informer::{self, Cache};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use vmo_api::{KindInfo, Object, Registry};
use vmo_client::events::{EventType, Recorder};
use vmo_client::{Client, ClientError};

/// The caches and kinds a pass reads.
pub(crate) struct Storage {
    pub client: Client,
    pub events: Recorder,
    pub class_kind: KindInfo,
    pub profile_kind: KindInfo,
    pub claim_kind: KindInfo,
    pub volume_kind: KindInfo,
    pub dv_kind: KindInfo,
    pub classes: Cache,
    pub profiles: Cache,
    pub claims: Cache,
    pub volumes: Cache,
    pub data_volumes: Cache,
    pub vmis: Cache,
    pub nodes: Cache,
    /// The last warning recorded per object uid, so a pass repeats none.
    warned: std::sync::Mutex<HashMap<String, String>>,
}

impl Storage {
    /// Records a warning about `obj` unless the same one was recorded last.
    pub async fn warn_once(&self, obj: &Object, reason: &str, message: &str) {
        {
            let mut warned = self.warned.lock().expect("warned lock");
            let key = obj.metadata.uid.clone();
            if warned.get(&key).map(String::as_str) == Some(message) {
                return;
            }
            warned.insert(key, message.to_string());
        }
        self.events
            .record(obj, EventType::Warning, reason, message)
            .await;
    }

    /// Forgets the warning about `obj` (it recovered).
    pub fn clear_warning(&self, obj: &Object) {
        self.warned
            .lock()
            .expect("warned lock")
            .remove(&obj.metadata.uid);
    }

    /// The claim `namespace/name` in the cache.
    pub fn claim(&self, namespace: &str, name: &str) -> Option<Object> {
        self.claims
            .select(|c| c.metadata.namespace == namespace && c.metadata.name == name)
            .into_iter()
            .next()
    }

    /// The class named `name` in the cache.
    pub fn class(&self, name: &str) -> Option<Object> {
        self.classes
            .select(|c| c.metadata.name == name)
            .into_iter()
            .next()
    }
}

/// Logs a failed write; 404 and 409 mean another writer got there first and the next pass decides.
pub(crate) fn logged(what: &str, obj: &Object, r: Result<Object, ClientError>) -> bool {
    match r {
        Ok(_) => true,
        Err(e) if e.is_not_found() || e.is_conflict() => false,
        Err(e) => {
            tracing::warn!(object = %obj.display_name(), error = %e, "storage controller could not {what}");
            false
        }
    }
}

/// Instance changes that matter here: one appearing or ending (claims in use).
fn instance_relevant(event: &str, vmi: &Object) -> bool {
    event != "MODIFIED"
        || vmi.metadata.deletion_timestamp.is_some()
        || matches!(vmi.status()["phase"].as_str(), Some("Succeeded" | "Failed"))
}

/// Runs the controller until the task is dropped.
pub async fn run(client: Client, registry: Arc<Registry>) {
    let changed = Arc::new(Notify::new());
    let kind = |name: &str| {
        *registry
            .resolve(name)
            .expect("storage kinds are registered")
    };
    let cache = |k: KindInfo, relevant: informer::Relevance| {
        informer::start(client.clone(), k, changed.clone(), relevant)
    };
    let storage = Storage {
        client: client.clone(),
        events: Recorder::new(client.clone(), "vmo-storage-controller", ""),
        class_kind: kind("storageclasses"),
        profile_kind: kind("storageprofiles"),
        claim_kind: kind("persistentvolumeclaims"),
        volume_kind: kind("persistentvolumes"),
        dv_kind: kind("datavolumes"),
        classes: cache(kind("storageclasses"), informer::every_change),
        profiles: cache(kind("storageprofiles"), informer::every_change),
        claims: cache(kind("persistentvolumeclaims"), informer::every_change),
        volumes: cache(kind("persistentvolumes"), informer::every_change),
        data_volumes: cache(kind("datavolumes"), informer::every_change),
        vmis: cache(kind("vmi"), instance_relevant),
        nodes: cache(kind("nodes"), |event, _| event != "MODIFIED"),
        warned: Default::default(),
    };
    let mut bootstrapped = false;
    loop {
        tokio::select! {
            _ = changed.notified() => tokio::time::sleep(Duration::from_millis(20)).await,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let caches = [
            &storage.classes,
            &storage.profiles,
            &storage.claims,
            &storage.volumes,
            &storage.data_volumes,
            &storage.vmis,
            &storage.nodes,
        ];
        if !caches.iter().all(|c| c.synced()) {
            continue;
        }
        if !bootstrapped {
            bootstrapped = classes::bootstrap(&storage).await;
        }
        classes::sync_profiles(&storage).await;
        data_volumes::sync(&storage).await;
        claims::sync(&storage).await;
    }
}
