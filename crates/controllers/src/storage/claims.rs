//! Claims and volumes: every claim gets the default class when it names none, the protection
//! finalizer (so a claim a VM uses is not removed under it), the provisioner annotation, and, for
//! an Immediate class, the node whose agent provisions it (the least loaded ready node that has
//! the pool). WaitForFirstConsumer claims get their node from the scheduler instead. A volume whose
//! claim is gone is deleted (its agent removes the file) or, with `Retain`, released.

use super::classes::default_class;
use super::{logged, Storage};
use crate::scheduler::NodeFacts;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use vmo_api::kinds::core::SHARED_POOL_ANNOTATION;
use vmo_api::kinds::kubevirt::VmiSpec;
use vmo_api::kinds::storage::{
    ClaimSpec, PersistentVolume, StorageClass, PVC_PROTECTION_FINALIZER, SELECTED_NODE_ANNOTATION,
    STORAGE_PROVISIONER_ANNOTATION,
};
use vmo_api::Object;

/// Asks for a node at once even in a WaitForFirstConsumer class (CDI's annotation; uploads set it).
pub const BIND_IMMEDIATE_ANNOTATION: &str = "cdi.kubevirt.io/storage.bind.immediate.requested";

/// `(namespace, claim)` pairs used by instances that have not ended.
pub fn claims_in_use(vmis: &[Object]) -> HashSet<(String, String)> {
    let mut used = HashSet::new();
    for vmi in vmis {
        let ended = matches!(vmi.status()["phase"].as_str(), Some("Succeeded" | "Failed"));
        if ended && vmi.metadata.finalizers.is_empty() {
            continue;
        }
        let Ok(spec) = serde_json::from_value::<VmiSpec>(vmi.spec().clone()) else {
            continue;
        };
        for v in &spec.volumes {
            if let Some(claim) = v.claim_name() {
                used.insert((vmi.metadata.namespace.clone(), claim.to_string()));
            }
        }
    }
    used
}

/// The node to provision an Immediate claim of `class` on: ready, not cordoned, with the pool,
/// holding the fewest volumes; None when no node qualifies.
pub fn pick_node(
    nodes: &[Object],
    class: &StorageClass,
    load: &HashMap<String, usize>,
) -> Option<String> {
    nodes
        .iter()
        .filter(|n| {
            let facts = NodeFacts::from_node(n);
            facts.ready
                && !facts.unschedulable
                && (!class.shared() || n.metadata.annotations.contains_key(SHARED_POOL_ANNOTATION))
        })
        .min_by_key(|n| {
            (
                load.get(&n.metadata.name).copied().unwrap_or(0),
                n.metadata.name.clone(),
            )
        })
        .map(|n| n.metadata.name.clone())
}

pub(super) async fn sync(s: &Storage) {
    let classes = s.classes.list();
    let default = default_class(&classes).map(|c| c.metadata.name.clone());
    let claims = s.claims.list();
    let volumes = s.volumes.list();
    let nodes = s.nodes.list();
    let in_use = claims_in_use(&s.vmis.list());
    let mut load: HashMap<String, usize> = HashMap::new();
    for pv in &volumes {
        if let Some(node) = PersistentVolume::of(pv).node() {
            *load.entry(node.to_string()).or_default() += 1;
        }
    }
    for c in &claims {
        if let Some(node) = c.metadata.annotations.get(SELECTED_NODE_ANNOTATION) {
            *load.entry(node.clone()).or_default() += 1;
        }
    }
    for claim in &claims {
        sync_claim(s, claim, default.as_deref(), &nodes, &in_use, &mut load).await;
    }
    for pv in &volumes {
        reclaim(s, pv, &claims).await;
    }
}

async fn sync_claim(
    s: &Storage,
    claim: &Object,
    default: Option<&str>,
    nodes: &[Object],
    in_use: &HashSet<(String, String)>,
    load: &mut HashMap<String, usize>,
) {
    let used = in_use.contains(&(
        claim.metadata.namespace.clone(),
        claim.metadata.name.clone(),
    ));
    let protected = claim
        .metadata
        .finalizers
        .iter()
        .any(|f| f == PVC_PROTECTION_FINALIZER);
    if claim.metadata.deletion_timestamp.is_some() {
        if protected && !used {
            let r = s
                .client
                .remove_finalizer(&s.claim_kind, claim, PVC_PROTECTION_FINALIZER)
                .await;
            logged("release a claim", claim, r);
        } else if used {
            s.warn_once(
                claim,
                "ClaimInUse",
                "the claim is deleted once no VirtualMachineInstance uses it",
            )
            .await;
        }
        return;
    }
    let mut desired = claim.clone();
    if !protected {
        desired
            .metadata
            .finalizers
            .push(PVC_PROTECTION_FINALIZER.to_string());
    }
    let spec = ClaimSpec::of(claim);
    let class_name = match spec.storage_class_name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => Some(name.to_string()),
        None => {
            if let (Some(d), Some(spec)) = (default, desired.body.get_mut("spec")) {
                spec["storageClassName"] = json!(d);
            }
            default.map(str::to_string)
        }
    };
    let unbound = spec.volume_name.as_deref().unwrap_or("").is_empty();
    if unbound {
        match class_name.as_deref() {
            None => {
                s.warn_once(
                    claim,
                    "ProvisioningFailed",
                    "the claim names no storageClassName and no class is the default",
                )
                .await
            }
            Some(name) => match s.class(name) {
                None => {
                    s.warn_once(
                        claim,
                        "ProvisioningFailed",
                        &format!("storageclass.storage.k8s.io \"{name}\" not found"),
                    )
                    .await
                }
                Some(class_obj) => {
                    let class = StorageClass::of(&class_obj);
                    desired
                        .metadata
                        .annotations
                        .entry(STORAGE_PROVISIONER_ANNOTATION.into())
                        .or_insert_with(|| class.provisioner.clone());
                    choose_node(s, claim, &mut desired, &spec, &class, nodes, load).await;
                }
            },
        }
    }
    if desired != *claim {
        let r = s.client.update(&s.claim_kind, &desired, None).await;
        logged("update a claim", claim, r);
    } else if claim.status()["phase"].is_null() {
        let r = s
            .client
            .merge_patch(
                &s.claim_kind,
                &claim.metadata.namespace,
                &claim.metadata.name,
                Some("status"),
                // Conditional: an agent may have bound the claim since this cache saw it.
                &json!({"metadata": {"resourceVersion": claim.metadata.resource_version},
                        "status": {"phase": "Pending"}}),
                "vmo-storage-controller",
            )
            .await;
        logged("write a claim's status", claim, r);
    }
}

/// Sets (or drops, when that node went away) the node that provisions an unbound claim.
async fn choose_node(
    s: &Storage,
    claim: &Object,
    desired: &mut Object,
    spec: &ClaimSpec,
    class: &StorageClass,
    nodes: &[Object],
    load: &mut HashMap<String, usize>,
) {
    if spec.wants_shared() && !class.shared() {
        s.warn_once(
            claim,
            "ProvisioningFailed",
            &format!(
                "{} volumes live on one node and cannot be ReadWriteMany; use a class of {}",
                class.provisioner,
                vmo_api::kinds::storage::SHARED_PROVISIONER
            ),
        )
        .await;
        return;
    }
    let selected = claim.metadata.annotations.get(SELECTED_NODE_ANNOTATION);
    if let Some(node) = selected {
        if !nodes.iter().any(|n| &n.metadata.name == node) {
            desired
                .metadata
                .annotations
                .remove(SELECTED_NODE_ANNOTATION);
        }
        return;
    }
    let immediate = !class.waits_for_consumer()
        || claim
            .metadata
            .annotations
            .get(BIND_IMMEDIATE_ANNOTATION)
            .is_some_and(|v| v == "true");
    if !immediate {
        return;
    }
    match pick_node(nodes, class, load) {
        Some(node) => {
            *load.entry(node.clone()).or_default() += 1;
            desired
                .metadata
                .annotations
                .insert(SELECTED_NODE_ANNOTATION.into(), node);
            s.clear_warning(claim);
        }
        None => {
            let pool = if class.shared() {
                "with the shared pool "
            } else {
                ""
            };
            s.warn_once(
                claim,
                "ProvisioningFailed",
                &format!("no ready, schedulable node {pool}to provision the volume on"),
            )
            .await;
        }
    }
}

/// Deletes or releases a volume whose claim is gone.
async fn reclaim(s: &Storage, pv: &Object, claims: &[Object]) {
    if pv.metadata.deletion_timestamp.is_some() {
        return;
    }
    let spec = PersistentVolume::of(pv);
    let Some((namespace, name, uid)) = spec.claim() else {
        return;
    };
    let present = |c: &Object| {
        c.metadata.namespace == namespace
            && c.metadata.name == name
            && (uid.is_empty() || c.metadata.uid == uid)
    };
    if claims.iter().any(present) {
        return;
    }
    // The cache may lag a new claim: ask the server before removing anything.
    match s.client.get(&s.claim_kind, &namespace, &name).await {
        Ok(c) if uid.is_empty() || c.metadata.uid == uid => return,
        Ok(_) => {}
        Err(e) if e.is_not_found() => {}
        Err(_) => return,
    }
    match spec
        .persistent_volume_reclaim_policy
        .as_deref()
        .unwrap_or("Delete")
    {
        "Retain" => {
            if pv.status()["phase"] != "Released" {
                let r = s
                    .client
                    .merge_patch(
                        &s.volume_kind,
                        "",
                        &pv.metadata.name,
                        Some("status"),
                        &json!({"status": {"phase": "Released"}}),
                        "vmo-storage-controller",
                    )
                    .await;
                logged("release a volume", pv, r);
            }
        }
        _ => {
            tracing::info!(volume = %pv.metadata.name, claim = %format!("{namespace}/{name}"), "deleting the volume of a deleted claim");
            let r = s
                .client
                .delete(&s.volume_kind, "", &pv.metadata.name, "Background")
                .await;
            logged("delete a volume", pv, r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ready: bool, shared: bool) -> Object {
        let mut annotations = serde_json::Map::new();
        if shared {
            annotations.insert(SHARED_POOL_ANNOTATION.into(), json!("/srv/pool"));
        }
        Object::from_value(json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": annotations},
            "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}}))
        .expect("node")
    }

    fn class(provisioner: &str) -> StorageClass {
        StorageClass {
            provisioner: provisioner.into(),
            ..Default::default()
        }
    }

    #[test]
    fn immediate_claims_go_to_the_least_loaded_ready_node_with_the_pool() {
        let nodes = vec![
            node("a", true, false),
            node("b", true, true),
            node("c", false, true),
        ];
        let mut load = HashMap::new();
        load.insert("a".to_string(), 3);
        let local = class(vmo_api::kinds::storage::LOCAL_PROVISIONER);
        assert_eq!(pick_node(&nodes, &local, &load).as_deref(), Some("b"));
        load.insert("b".to_string(), 5);
        assert_eq!(pick_node(&nodes, &local, &load).as_deref(), Some("a"));
        let shared = class(vmo_api::kinds::storage::SHARED_PROVISIONER);
        assert_eq!(pick_node(&nodes, &shared, &load).as_deref(), Some("b"));
        assert_eq!(pick_node(&nodes[..1], &shared, &load), None);
    }

    #[test]
    fn running_instances_hold_their_claims() {
        let vmi = |phase: &str, finalizers: Vec<&str>| {
            Object::from_value(json!({"apiVersion": "kubevirt.io/v1",
                "kind": "VirtualMachineInstance",
                "metadata": {"name": "v", "namespace": "ns", "finalizers": finalizers},
                "spec": {"volumes": [{"name": "a", "persistentVolumeClaim": {"claimName": "c1"}},
                                     {"name": "b", "dataVolume": {"name": "d1"}}]},
                "status": {"phase": phase}}))
            .expect("vmi")
        };
        let used = claims_in_use(&[vmi("Running", vec![])]);
        assert!(used.contains(&("ns".to_string(), "c1".to_string())));
        assert!(used.contains(&("ns".to_string(), "d1".to_string())));
        assert!(claims_in_use(&[vmi("Succeeded", vec![])]).is_empty());
        assert_eq!(claims_in_use(&[vmi("Failed", vec!["x"])]).len(), 2);
    }
}
