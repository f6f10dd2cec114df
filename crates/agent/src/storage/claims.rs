//! A VM's claimed disks: the file behind each `persistentVolumeClaim`, `dataVolume` and
//! `ephemeral` volume, or why the VM must wait for it (KubeVirt's reasons, which the VM's
//! printableStatus shows: Provisioning, WaitingForVolumeBinding, DataVolumeError, PvcNotFound).

use super::Kinds;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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

/// The file of every claimed volume of `spec`, by volume name, as seen from `node`. With
/// `incoming_pool` (the target of a live migration), a claim in another node's local pool gets a
/// fresh file of its size here, which the migration's disk copy fills ([`incoming_path`]).
pub async fn resolve_all(
    client: &Client,
    kinds: &Kinds,
    node: &str,
    namespace: &str,
    spec: &VmiSpec,
    incoming_pool: Option<&Path>,
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
        if let (Some(_), Some(pool)) = (pv.node().filter(|n| *n != node), incoming_pool) {
            let path = incoming_path(pool, &pvc.metadata.uid);
            if !path.exists() {
                tokio::fs::create_dir_all(pool).await.map_err(|e| {
                    not_ready(
                        "WaitingForVolumeBinding",
                        format!("creating the pool {}: {e}", pool.display()),
                    )
                })?;
                let size = pv.capacity_bytes().unwrap_or(0);
                super::files::create_blank(&path, "qcow2", size)
                    .await
                    .map_err(|e| not_ready("WaitingForVolumeBinding", e.to_string()))?;
            }
            files.insert(volume.name.clone(), path);
            continue;
        }
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

/// Where a migration's target keeps its copy of a claim from another node's local pool.
pub fn incoming_path(pool: &Path, claim_uid: &str) -> PathBuf {
    pool.join(format!("pvc-{claim_uid}.qcow2"))
}

/// A claimed volume of a VM that lives in one node's local pool: it moves with a live migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalClaim {
    /// The VM's volume name.
    pub volume: String,
    pub claim: String,
    pub claim_uid: String,
    /// The PersistentVolume and where its file is now.
    pub pv: String,
    pub node: String,
    pub path: PathBuf,
}

/// The VM's claims in a node's local pool (those a live migration must copy).
pub async fn local_claims(
    client: &Client,
    kinds: &Kinds,
    namespace: &str,
    spec: &VmiSpec,
) -> Vec<LocalClaim> {
    let mut out = Vec::new();
    for volume in &spec.volumes {
        if volume.ephemeral.is_some() {
            continue;
        }
        let Some(claim) = volume.claim_name() else {
            continue;
        };
        let Ok(pvc) = client.get(&kinds.claim, namespace, claim).await else {
            continue;
        };
        let pv_name = ClaimSpec::of(&pvc).volume_name.unwrap_or_default();
        let Ok(pv) = client.get(&kinds.volume, "", &pv_name).await else {
            continue;
        };
        let spec = PersistentVolume::of(&pv);
        if let (Some(node), Some(path)) = (spec.node(), spec.path()) {
            out.push(LocalClaim {
                volume: volume.name.clone(),
                claim: claim.to_string(),
                claim_uid: pvc.metadata.uid.clone(),
                pv: pv_name,
                node: node.to_string(),
                path: PathBuf::from(path),
            });
        }
    }
    out
}

/// After a live migration to `target`: the volume now lives there, at `path`.
pub async fn moved(
    client: &Client,
    kinds: &Kinds,
    claim: &LocalClaim,
    target: &str,
    path: &Path,
) -> Result<(), vmo_client::ClientError> {
    let patch = serde_json::json!({
        "metadata": {"annotations": {vmo_api::kinds::storage::PROVISIONED_ON_ANNOTATION: target}},
        "spec": {"local": {"path": path.to_string_lossy()},
                 "nodeAffinity": vmo_api::kinds::storage::node_affinity_for(target)},
    });
    client
        .merge_patch(&kinds.volume, "", &claim.pv, None, &patch, "vmo-agent")
        .await
        .map(|_| ())
}

/// On a target whose incoming migration failed: removes the copies it made of claims that still
/// live on another node.
pub async fn discard_incoming(
    client: &Client,
    kinds: &Kinds,
    node: &str,
    pool: &Path,
    namespace: &str,
    spec: &VmiSpec,
) {
    for claim in local_claims(client, kinds, namespace, spec).await {
        if claim.node != node {
            let copy = incoming_path(pool, &claim.claim_uid);
            if copy != claim.path {
                let _ = super::files::remove(&copy).await;
            }
        }
    }
}
