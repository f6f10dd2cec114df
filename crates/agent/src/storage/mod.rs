//! Volumes on this node: provisioning PersistentVolumeClaims as disk files in the node's pools,
//! filling them from a DataVolume's source (import, upload, clone, blank), growing them, and
//! removing them when their PersistentVolume is released; and finding a VM's claimed disks.

pub mod claims;
pub mod files;
pub mod import;
mod importer;
mod online;
pub mod provision;
pub mod snapshot;
pub mod upload;

use vmo_api::kinds::kubevirt::VmiSpec;
use vmo_api::{KindInfo, Registry};
use vmo_client::Client;

/// The kinds the storage parts of the agent read and write.
#[derive(Debug, Clone, Copy)]
pub struct Kinds {
    pub class: KindInfo,
    pub claim: KindInfo,
    pub volume: KindInfo,
    pub data_volume: KindInfo,
    pub vmi: KindInfo,
    pub secret: KindInfo,
    pub config_map: KindInfo,
}

impl Kinds {
    /// Resolved from the built-in registry.
    pub fn new() -> Self {
        let r = Registry::builtin();
        let k = |n: &str| *r.resolve(n).expect("registered kind");
        Self {
            class: k("storageclasses"),
            claim: k("persistentvolumeclaims"),
            volume: k("persistentvolumes"),
            data_volume: k("datavolumes"),
            vmi: k("vmi"),
            secret: k("secrets"),
            config_map: k("configmaps"),
        }
    }
}

impl Default for Kinds {
    fn default() -> Self {
        Self::new()
    }
}

/// True when an instance that has not ended uses the claim `namespace/name` (asked of the server,
/// so a clone never races a cache).
pub async fn in_use(client: &Client, kinds: &Kinds, namespace: &str, name: &str) -> bool {
    let Ok(list) = client.list(&kinds.vmi, Some(namespace), "").await else {
        return true;
    };
    list.items.iter().any(|vmi| {
        let ended = matches!(vmi.status()["phase"].as_str(), Some("Succeeded" | "Failed"));
        !ended
            && serde_json::from_value::<VmiSpec>(vmi.spec().clone())
                .is_ok_and(|spec| spec.volumes.iter().any(|v| v.claim_name() == Some(name)))
    })
}
