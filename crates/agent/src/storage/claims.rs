//! A VM's claimed disks: the file behind each `persistentVolumeClaim`, `dataVolume` and
//! `ephemeral` volume, or why the VM must wait for it (KubeVirt's reasons, which the VM's
//! printableStatus shows: Provisioning, WaitingForVolumeBinding, DataVolumeError, PvcNotFound).

use super::Kinds;
use std::collections::BTreeMap;
use std::path::PathBuf;
use vmo_api::kinds::cdi::phase;
use vmo_api::kinds::kubevirt::VmiSpec;
use vmo_api::kinds::storage::{ClaimSpec, PersistentVolume};
use vmo_client::Client;

/// Why a VM cannot start yet: a condition reason and a message naming the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady {
    pub reason: &'static str,
    pub message: String,
}

fn not_ready(reason: &'static str, message: String) -> NotReady {
    NotReady { reason, message }
}

/// The file of every claimed volume of `spec`, by volume name, as seen from `node`.
pub async fn resolve_all(
    client: &Client,
    kinds: &Kinds,
    node: &str,
    namespace: &str,
    spec: &VmiSpec,
) -> Result<BTreeMap<String, PathBuf>, NotReady> {
    let mut files = BTreeMap::new();
    for volume in &spec.volumes {
        let Some(claim) = volume.claim_name() else {
            continue;
        };
        if let Some(dv) = &volume.data_volume {
            let dv = client
                .get(&kinds.data_volume, namespace, &dv.name)
                .await
                .map_err(|e| not_ready("PvcNotFound", format!("datavolume {:?}: {e}", dv.name)))?;
            let status = dv.status();
            let current = status["phase"].as_str().unwrap_or("Pending");
            if current == phase::FAILED {
                let why = status["conditions"]
                    .as_array()
                    .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                    .and_then(|c| c["message"].as_str())
                    .unwrap_or("");
                return Err(not_ready(
                    "DataVolumeError",
                    format!("DataVolume {} failed: {why}", dv.metadata.name),
                ));
            }
            if current != phase::SUCCEEDED {
                let progress = status["progress"].as_str().unwrap_or("N/A");
                return Err(not_ready(
                    "Provisioning",
                    format!("DataVolume {} is {current} ({progress})", dv.metadata.name),
                ));
            }
        }
        let pvc = client
            .get(&kinds.claim, namespace, claim)
            .await
            .map_err(|e| {
                not_ready(
                    "PvcNotFound",
                    format!("persistentvolumeclaim {claim:?}: {e}"),
                )
            })?;
        let volume_name = ClaimSpec::of(&pvc).volume_name.unwrap_or_default();
        if volume_name.is_empty() || pvc.status()["phase"] != "Bound" {
            return Err(not_ready(
                "WaitingForVolumeBinding",
                format!("persistentvolumeclaim {claim:?} is not bound yet"),
            ));
        }
        let pv = client
            .get(&kinds.volume, "", &volume_name)
            .await
            .map_err(|e| {
                not_ready(
                    "WaitingForVolumeBinding",
                    format!("persistentvolume {volume_name:?}: {e}"),
                )
            })?;
        let pv = PersistentVolume::of(&pv);
        if let Some(other) = pv.node().filter(|n| *n != node) {
            return Err(not_ready(
                "Unschedulable",
                format!("persistentvolumeclaim {claim:?} is on node {other}, not {node}"),
            ));
        }
        let path = PathBuf::from(pv.path().unwrap_or_default());
        if !path.exists() {
            return Err(not_ready(
                "WaitingForVolumeBinding",
                format!(
                    "the file of persistentvolumeclaim {claim:?} ({}) is not on this node",
                    path.display()
                ),
            ));
        }
        files.insert(volume.name.clone(), path);
    }
    Ok(files)
}
