//! Volume topology: what an instance's claims say about where it may run. A claim bound to a
//! volume in a node's local pool pins the instance to that node (as does a local claim already
//! being provisioned on a chosen node); a WaitForFirstConsumer claim not yet placed goes wherever
//! the instance goes, and the scheduler then names that node on the claim; an Immediate claim not
//! yet provisioned, or a missing claim, makes the instance wait with a reason the VM shows.

use std::collections::HashMap;
use vmo_api::kinds::kubevirt::VmiSpec;
use vmo_api::kinds::storage::{
    ClaimSpec, PersistentVolume, StorageClass, SELECTED_NODE_ANNOTATION,
};
use vmo_api::Object;

/// What the scheduler knows about one claim.
#[derive(Debug, Clone, Default, PartialEq)]
struct ClaimFacts {
    /// Bound (or being provisioned) on this node's local pool.
    pinned_to: Option<String>,
    bound: bool,
    /// A node is chosen (bound, or provisioning there).
    placed: bool,
    waits_for_consumer: bool,
}

/// The claims of the cluster, by `(namespace, name)`.
#[derive(Debug, Clone, Default)]
pub struct VolumeIndex {
    claims: HashMap<(String, String), ClaimFacts>,
}

/// Where an instance's volumes let it go.
#[derive(Debug, Clone, PartialEq)]
pub enum VolumeNeeds {
    /// Anywhere the rest of the request allows, or only on this node.
    Place { required_node: Option<String> },
    /// Not yet: the condition reason and message to show.
    Wait {
        reason: &'static str,
        message: String,
    },
}

impl VolumeIndex {
    /// Indexes claims with their volumes and classes.
    pub fn new(claims: &[Object], volumes: &[Object], classes: &[Object]) -> Self {
        let pv_nodes: HashMap<&str, Option<String>> = volumes
            .iter()
            .map(|pv| {
                let node = PersistentVolume::of(pv).node().map(str::to_string);
                (pv.metadata.name.as_str(), node)
            })
            .collect();
        let class = |name: &str| {
            classes
                .iter()
                .find(|c| c.metadata.name == name)
                .map(StorageClass::of)
        };
        let claims = claims
            .iter()
            .filter(|c| c.metadata.deletion_timestamp.is_none())
            .map(|c| {
                let spec = ClaimSpec::of(c);
                let volume = spec.volume_name.clone().unwrap_or_default();
                let bound = !volume.is_empty();
                let class = spec.storage_class_name.as_deref().and_then(class);
                let local = class.as_ref().is_some_and(|k| !k.shared());
                let selected = c
                    .metadata
                    .annotations
                    .get(SELECTED_NODE_ANNOTATION)
                    .cloned();
                let pinned_to = if bound {
                    pv_nodes.get(volume.as_str()).cloned().flatten()
                } else if local {
                    selected.clone()
                } else {
                    None
                };
                let facts = ClaimFacts {
                    pinned_to,
                    bound,
                    placed: bound || selected.is_some(),
                    waits_for_consumer: class.is_some_and(|k| k.waits_for_consumer()),
                };
                (
                    (c.metadata.namespace.clone(), c.metadata.name.clone()),
                    facts,
                )
            })
            .collect();
        Self { claims }
    }

    fn claim_names(vmi: &Object) -> Vec<String> {
        serde_json::from_value::<VmiSpec>(vmi.spec().clone())
            .map(|spec| {
                spec.volumes
                    .iter()
                    .filter_map(|v| v.claim_name().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Where the instance's volumes let it go.
    pub fn needs(&self, vmi: &Object) -> VolumeNeeds {
        let ns = &vmi.metadata.namespace;
        let mut required: Option<(String, String)> = None;
        for name in Self::claim_names(vmi) {
            let Some(facts) = self.claims.get(&(ns.clone(), name.clone())) else {
                return VolumeNeeds::Wait {
                    reason: "PvcNotFound",
                    message: format!("persistentvolumeclaim \"{name}\" not found"),
                };
            };
            if !facts.placed && !facts.waits_for_consumer {
                return VolumeNeeds::Wait {
                    reason: "WaitingForVolumeBinding",
                    message: format!(
                        "waiting for persistentvolumeclaim \"{name}\" to be provisioned"
                    ),
                };
            }
            if let Some(node) = &facts.pinned_to {
                match &required {
                    Some((other_claim, other)) if other != node => {
                        return VolumeNeeds::Wait {
                            reason: "Unschedulable",
                            message: format!(
                                "the instance's volumes are on different nodes: {other_claim} on {other}, {name} on {node}"
                            ),
                        }
                    }
                    _ => required = Some((name.clone(), node.clone())),
                }
            }
        }
        VolumeNeeds::Place {
            required_node: required.map(|(_, node)| node),
        }
    }

    /// The instance's claims still waiting for their first consumer: they are told its node.
    pub fn to_select(&self, vmi: &Object) -> Vec<String> {
        let ns = &vmi.metadata.namespace;
        Self::claim_names(vmi)
            .into_iter()
            .filter(|name| {
                self.claims
                    .get(&(ns.clone(), name.clone()))
                    .is_some_and(|f| !f.placed && f.waits_for_consumer)
            })
            .collect()
    }

    /// An `ephemeral` volume of the instance whose claim is in a node's local pool, and that node.
    pub fn local_ephemeral(&self, vmi: &Object) -> Option<(String, String)> {
        let ns = &vmi.metadata.namespace;
        let spec = serde_json::from_value::<VmiSpec>(vmi.spec().clone()).ok()?;
        spec.volumes.iter().find_map(|v| {
            v.ephemeral.as_ref()?;
            let name = v.claim_name()?.to_string();
            let node = self
                .claims
                .get(&(ns.clone(), name.clone()))?
                .pinned_to
                .clone()?;
            Some((name, node))
        })
    }

    /// True when the instance uses a claim bound in a node's local pool.
    #[cfg(test)]
    pub fn uses_local_volume(&self, vmi: &Object) -> Option<(String, String)> {
        let ns = &vmi.metadata.namespace;
        Self::claim_names(vmi).into_iter().find_map(|name| {
            let node = self
                .claims
                .get(&(ns.clone(), name.clone()))?
                .pinned_to
                .clone()?;
            Some((name, node))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use vmo_api::kinds::storage::{node_affinity_for, LOCAL_PROVISIONER, SHARED_PROVISIONER};

    fn obj(v: serde_json::Value) -> Object {
        Object::from_value(v).expect("object")
    }

    fn class(name: &str, provisioner: &str, mode: &str) -> Object {
        obj(
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                   "metadata": {"name": name}, "provisioner": provisioner,
                   "volumeBindingMode": mode}),
        )
    }

    fn claim(name: &str, class: &str, volume: &str, selected: Option<&str>) -> Object {
        let mut annotations = serde_json::Map::new();
        if let Some(n) = selected {
            annotations.insert(SELECTED_NODE_ANNOTATION.into(), json!(n));
        }
        obj(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": "ns", "annotations": annotations},
            "spec": {"storageClassName": class, "volumeName": volume,
                     "accessModes": ["ReadWriteOnce"]}}))
    }

    fn pv(name: &str, node: Option<&str>) -> Object {
        let mut spec = json!({"capacity": {"storage": "1Gi"}, "local": {"path": "/p"}});
        if let Some(n) = node {
            spec["nodeAffinity"] = node_affinity_for(n);
        }
        obj(json!({"apiVersion": "v1", "kind": "PersistentVolume",
                   "metadata": {"name": name}, "spec": spec}))
    }

    fn vmi(claims: &[&str]) -> Object {
        let volumes: Vec<_> = claims
            .iter()
            .map(|c| json!({"name": c, "persistentVolumeClaim": {"claimName": c}}))
            .collect();
        obj(
            json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                   "metadata": {"name": "v", "namespace": "ns"},
                   "spec": {"volumes": volumes}}),
        )
    }

    fn index() -> VolumeIndex {
        let classes = [
            class("local", LOCAL_PROVISIONER, "WaitForFirstConsumer"),
            class("shared", SHARED_PROVISIONER, "Immediate"),
        ];
        let claims = [
            claim("on-a", "local", "pv-a", None),
            claim("on-b", "local", "pv-b", None),
            claim("new", "local", "", None),
            claim("going-to-b", "local", "", Some("b")),
            claim("rwx", "shared", "pv-s", None),
            claim("rwx-pending", "shared", "", None),
        ];
        let volumes = [
            pv("pv-a", Some("a")),
            pv("pv-b", Some("b")),
            pv("pv-s", None),
        ];
        VolumeIndex::new(&claims, &volumes, &classes)
    }

    #[test]
    fn local_volumes_pin_their_node() {
        let ix = index();
        let place = |node: Option<&str>| VolumeNeeds::Place {
            required_node: node.map(str::to_string),
        };
        assert_eq!(ix.needs(&vmi(&["on-a", "rwx"])), place(Some("a")));
        assert_eq!(ix.needs(&vmi(&["going-to-b"])), place(Some("b")));
        assert_eq!(ix.needs(&vmi(&["new", "rwx"])), place(None));
        assert_eq!(
            ix.to_select(&vmi(&["new", "on-a"])),
            vec!["new".to_string()]
        );
        assert_eq!(
            ix.uses_local_volume(&vmi(&["rwx", "on-b"])),
            Some(("on-b".to_string(), "b".to_string()))
        );
        let mut eph = vmi(&[]);
        eph.body["spec"]["volumes"] = json!([
            {"name": "a", "persistentVolumeClaim": {"claimName": "on-a"}},
            {"name": "e", "ephemeral": {"persistentVolumeClaim": {"claimName": "on-b"}}},
            {"name": "s", "ephemeral": {"persistentVolumeClaim": {"claimName": "rwx"}}}]);
        assert_eq!(
            ix.local_ephemeral(&eph),
            Some(("on-b".to_string(), "b".to_string())),
            "only ephemeral volumes on local claims keep a VM from migrating"
        );
    }

    #[test]
    fn missing_unprovisioned_or_split_volumes_wait() {
        let ix = index();
        let reason = |n: VolumeNeeds| match n {
            VolumeNeeds::Wait { reason, .. } => reason,
            VolumeNeeds::Place { .. } => "placed",
        };
        assert_eq!(reason(ix.needs(&vmi(&["nope"]))), "PvcNotFound");
        assert_eq!(
            reason(ix.needs(&vmi(&["rwx-pending"]))),
            "WaitingForVolumeBinding"
        );
        assert_eq!(reason(ix.needs(&vmi(&["on-a", "on-b"]))), "Unschedulable");
    }
}
