//! DataVolumes: each gets a claim of its own name, owned by it (so deleting the DataVolume deletes
//! the claim), with the StorageProfile's access modes and volume mode where `storage` leaves them
//! out and the source claim's size where a clone gives none. Until an agent starts the work the
//! controller keeps the phase: Pending, WaitForFirstConsumer, then ImportScheduled, CloneScheduled
//! or UploadScheduled once a node is chosen; a claim found bound means Succeeded.

use super::classes::{default_class, profile_defaults};
use super::{logged, Storage};
use crate::storage::claims::BIND_IMMEDIATE_ANNOTATION;
use serde_json::{json, Value};
use vmo_api::kinds::cdi::{phase, DataVolumeSpec};
use vmo_api::kinds::storage::{ClaimSpec, StorageClass, SELECTED_NODE_ANNOTATION};
use vmo_api::meta::now_rfc3339;
use vmo_api::Object;

pub(super) async fn sync(s: &Storage) {
    let classes = s.classes.list();
    let default = default_class(&classes).map(|c| c.metadata.name.clone());
    for dv in s.data_volumes.list() {
        if dv.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let claim = s.claim(&dv.metadata.namespace, &dv.metadata.name);
        let (phase, why) = match &claim {
            None => match claim_for(s, &dv, default.as_deref()) {
                Ok(body) => {
                    let r = s
                        .client
                        .create(&s.claim_kind, &dv.metadata.namespace, &body)
                        .await;
                    logged("create a DataVolume's claim", &dv, r);
                    (phase::PENDING, None)
                }
                Err(why) => (phase::PENDING, Some(why)),
            },
            Some(c) if !c.metadata.owner_references.iter().any(|o| o.uid == dv.metadata.uid) => (
                phase::FAILED,
                Some(format!(
                    "a PersistentVolumeClaim named {:?} already exists and does not belong to this DataVolume",
                    c.metadata.name
                )),
            ),
            Some(c) => (scheduled_phase(s, &dv, c), None),
        };
        let current = dv.status()["phase"].as_str().unwrap_or("");
        let agent_owns = !phase::before_work(current);
        if agent_owns && !(phase == phase::SUCCEEDED && current != phase::SUCCEEDED) {
            continue;
        }
        let message = why.clone().unwrap_or_default();
        let same_message = dv.status()["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .and_then(|c| c["message"].as_str())
            .unwrap_or("")
            == message;
        if current == phase && same_message && !dv.status()["claimName"].is_null() {
            continue;
        }
        if let Some(why) = &why {
            s.warn_once(&dv, "Pending", why).await;
        }
        let bound = phase == phase::SUCCEEDED;
        let now = now_rfc3339();
        let condition = |kind: &str, ok: bool, reason: &str, message: &str| {
            json!({"type": kind, "status": if ok {"True"} else {"False"}, "reason": reason,
                   "message": message, "lastTransitionTime": now, "lastHeartbeatTime": now})
        };
        let status = json!({
            "phase": phase,
            "progress": if bound { "100.0%" } else { "N/A" },
            "claimName": dv.metadata.name,
            "restartCount": dv.status()["restartCount"].as_i64().unwrap_or(0),
            "conditions": [
                condition("Bound", bound, if bound {"Bound"} else {"Pending"}, ""),
                condition("Ready", bound, phase, &message),
                condition("Running", false, phase, ""),
            ],
        });
        let r = s
            .client
            .merge_patch(
                &s.dv_kind,
                &dv.metadata.namespace,
                &dv.metadata.name,
                Some("status"),
                &json!({"status": status}),
                "vmo-storage-controller",
            )
            .await;
        logged("write a DataVolume's status", &dv, r);
    }
}

/// The phase of a DataVolume whose claim exists and no agent works on yet.
fn scheduled_phase(s: &Storage, dv: &Object, claim: &Object) -> &'static str {
    let spec = ClaimSpec::of(claim);
    if !spec.volume_name.as_deref().unwrap_or("").is_empty() {
        return phase::SUCCEEDED;
    }
    if claim
        .metadata
        .annotations
        .contains_key(SELECTED_NODE_ANNOTATION)
    {
        return match DataVolumeSpec::of(dv).source().kind() {
            "pvc" => phase::CLONE_SCHEDULED,
            "upload" => phase::UPLOAD_SCHEDULED,
            _ => phase::IMPORT_SCHEDULED,
        };
    }
    let waits = spec
        .storage_class_name
        .as_deref()
        .and_then(|n| s.class(n))
        .is_some_and(|c| StorageClass::of(&c).waits_for_consumer());
    if waits {
        phase::WAIT_FOR_FIRST_CONSUMER
    } else {
        phase::PENDING
    }
}

/// The claim a DataVolume owns, or why it cannot be made yet.
fn claim_for(s: &Storage, dv: &Object, default: Option<&str>) -> Result<Value, String> {
    let spec = DataVolumeSpec::of(dv);
    let source = spec.source();
    let mut claim = spec.claim();
    let class = claim
        .storage_class_name
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| default.map(str::to_string));
    if spec.storage.is_some() {
        let profile = class.as_deref().and_then(|name| {
            s.profiles
                .select(|p| p.metadata.name == name)
                .into_iter()
                .next()
        });
        let (modes, mode) = profile_defaults(profile.as_ref());
        if claim.access_modes.is_empty() {
            claim.access_modes = modes;
        }
        if claim.volume_mode.is_none() {
            claim.volume_mode = Some(mode);
        }
    }
    claim.storage_class_name = class;
    if claim.requested_bytes().is_none() {
        let pvc = source
            .pvc
            .as_ref()
            .ok_or("the DataVolume gives no size for its volume")?;
        let ns = pvc.namespace.as_deref().unwrap_or(&dv.metadata.namespace);
        let source_claim = s
            .claim(ns, &pvc.name)
            .ok_or_else(|| format!("the clone source claim {ns}/{} is not found", pvc.name))?;
        let size = source_claim.spec()["resources"]["requests"]["storage"].clone();
        claim.resources.requests.insert(
            "storage".into(),
            serde_json::from_value(size).map_err(|e| e.to_string())?,
        );
    }
    let mut annotations = serde_json::Map::new();
    annotations.insert(
        "cdi.kubevirt.io/storage.contentType".into(),
        json!("kubevirt"),
    );
    let immediate = source.upload.is_some()
        || dv
            .metadata
            .annotations
            .get(BIND_IMMEDIATE_ANNOTATION)
            .is_some_and(|v| v == "true");
    if immediate {
        annotations.insert(BIND_IMMEDIATE_ANNOTATION.into(), json!("true"));
    }
    Ok(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": dv.metadata.name, "namespace": dv.metadata.namespace,
            "labels": dv.metadata.labels, "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
                "name": dv.metadata.name, "uid": dv.metadata.uid,
                "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": claim,
    }))
}
