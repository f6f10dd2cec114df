//! What an instance asks of a node: its resource requests (guest memory plus QEMU's own overhead,
//! CPU by KubeVirt's allocation ratio) and its placement constraints, as a [`PlacementRequest`] the
//! snapshot places.

use serde_json::Value;
use std::collections::BTreeMap;
use vmo_api::kinds::affinity::Affinity;
use vmo_api::kinds::kubevirt::{decode_at, Toleration, VmiSpec};
use vmo_api::{Object, Quantity};

/// QEMU's fixed memory overhead beyond the guest's RAM: its own code, heap, device models and
/// (under TCG) the translation cache. Measured here: a 256 MiB TCG guest's QEMU holds ~231 MiB RSS
/// with the guest far from touching all of its RAM; 32 MiB + 2% covers QEMU itself once the guest
/// has touched everything.
pub const QEMU_OVERHEAD_BASE_BYTES: u64 = 32 << 20;

/// The memory a node must hold for QEMU beside a guest of `guest_bytes`: [`QEMU_OVERHEAD_BASE_BYTES`]
/// plus 2% of the guest (page tables and per-page bookkeeping grow with guest RAM).
pub fn qemu_overhead_bytes(guest_bytes: u64) -> u64 {
    QEMU_OVERHEAD_BASE_BYTES + guest_bytes / 50
}

/// CPU requested per vCPU when `resources.requests.cpu` is not set: KubeVirt's default
/// `cpuAllocationRatio` of 10 (one vCPU asks for a tenth of a host core).
pub const MILLICPU_PER_VCPU: u64 = 100;

/// What an instance asks a node for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    /// Thousandths of a host core.
    pub cpu_millis: u64,
    /// Guest memory plus QEMU overhead, in bytes.
    pub memory_bytes: u64,
    /// The guest's memory alone (for messages).
    pub guest_memory_bytes: u64,
}

fn quantity(v: &Value) -> Option<Quantity> {
    match v {
        Value::String(s) => Quantity::parse(s).ok(),
        Value::Number(n) => Quantity::parse(&n.to_string()).ok(),
        _ => None,
    }
}

fn bytes(v: &Value) -> Option<u64> {
    quantity(v)?
        .value_ceil()
        .and_then(|b| u64::try_from(b).ok())
}

fn millis(v: &Value) -> Option<u64> {
    quantity(v)?
        .milli_value_ceil()
        .and_then(|m| u64::try_from(m).ok())
}

/// The resources an instance with this `spec` (a VMI's `spec`, or a VM template's) asks for:
/// memory is the guest's (`domain.memory.guest`, or `domain.resources.requests.memory` when that is
/// larger) plus [`qemu_overhead_bytes`]; CPU is `domain.resources.requests.cpu`, else
/// [`MILLICPU_PER_VCPU`] per vCPU (sockets x cores x threads). Reads the JSON directly: the
/// scheduler computes this for every instance in the cluster on every pass.
pub fn vmi_requests(spec: &Value) -> Requests {
    let domain = &spec["domain"];
    let requests = &domain["resources"]["requests"];
    let guest = bytes(&domain["memory"]["guest"]).unwrap_or(0);
    let requested = bytes(&requests["memory"]).unwrap_or(0);
    let guest = guest.max(requested);
    let count = |field: &str| domain["cpu"][field].as_u64().unwrap_or(1).max(1);
    let vcpus = count("sockets") * count("cores") * count("threads");
    let cpu_millis = millis(&requests["cpu"]).unwrap_or(vcpus * MILLICPU_PER_VCPU);
    Requests {
        cpu_millis,
        memory_bytes: guest + qemu_overhead_bytes(guest),
        guest_memory_bytes: guest,
    }
}

/// One instance to place, with everything the filters and scores read. Built from an instance by
/// [`PlacementRequest::for_vmi`]; callers (the migration controller) add exclusions and selectors.
#[derive(Debug, Clone, Default)]
pub struct PlacementRequest {
    pub namespace: String,
    pub name: String,
    /// The instance's uid: the instance itself (already bound, when it migrates) never counts for
    /// its own VM affinity or spreading.
    pub uid: String,
    /// The instance's labels, which other instances' VM (anti-)affinity terms select on.
    pub labels: BTreeMap<String, String>,
    pub requests: Requests,
    /// `spec.nodeSelector`.
    pub node_selector: BTreeMap<String, String>,
    /// More node labels that must match (a migration's `spec.addedNodeSelector`).
    pub extra_node_selector: BTreeMap<String, String>,
    pub affinity: Option<Affinity>,
    pub tolerations: Vec<Toleration>,
    /// Nodes that must not be chosen (a migration's source node).
    pub exclude_nodes: Vec<String>,
    /// The only node that may be chosen (a local volume lives there).
    pub required_node: Option<String>,
}

impl PlacementRequest {
    /// The request of a VirtualMachineInstance; an error says which field does not decode.
    pub fn for_vmi(vmi: &Object) -> Result<Self, String> {
        let spec: VmiSpec = decode_at(vmi.spec(), "spec").map_err(|e| e.to_string())?;
        Ok(Self {
            namespace: vmi.metadata.namespace.clone(),
            name: vmi.metadata.name.clone(),
            uid: vmi.metadata.uid.clone(),
            labels: vmi.metadata.labels.clone(),
            requests: vmi_requests(vmi.spec()),
            node_selector: spec.node_selector,
            extra_node_selector: BTreeMap::new(),
            affinity: spec.affinity,
            tolerations: spec.tolerations,
            exclude_nodes: Vec::new(),
            required_node: None,
        })
    }

    /// `namespace/name`.
    pub fn display_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MIB: u64 = 1 << 20;

    #[test]
    fn memory_is_the_guest_plus_qemu_overhead() {
        let r = vmi_requests(&json!({"domain": {"memory": {"guest": "1Gi"}}}));
        assert_eq!(r.guest_memory_bytes, 1024 * MIB);
        assert_eq!(r.memory_bytes, 1024 * MIB + 32 * MIB + 1024 * MIB / 50);
        // A larger memory request wins over the guest size.
        let r = vmi_requests(&json!({"domain": {"memory": {"guest": "1Gi"},
            "resources": {"requests": {"memory": "2Gi"}}}}));
        assert_eq!(r.guest_memory_bytes, 2048 * MIB);
        let r = vmi_requests(&json!({"domain": {"resources": {"requests": {"memory": "512Mi"}}}}));
        assert_eq!(r.guest_memory_bytes, 512 * MIB);
    }

    #[test]
    fn cpu_is_the_request_or_a_tenth_of_a_core_per_vcpu() {
        let r = vmi_requests(&json!({"domain": {"memory": {"guest": "1Gi"}}}));
        assert_eq!(r.cpu_millis, 100);
        let r = vmi_requests(&json!({"domain": {"cpu": {"sockets": 2, "cores": 4, "threads": 2}}}));
        assert_eq!(r.cpu_millis, 1600);
        let r = vmi_requests(
            &json!({"domain": {"cpu": {"cores": 4}, "resources": {"requests": {"cpu": "1500m"}}}}),
        );
        assert_eq!(r.cpu_millis, 1500);
        let r = vmi_requests(&json!({"domain": {"resources": {"requests": {"cpu": 2}}}}));
        assert_eq!(r.cpu_millis, 2000);
    }

    #[test]
    fn a_request_carries_the_instance_constraints() {
        let vmi = Object::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "a", "namespace": "ns", "uid": "u1", "labels": {"app": "db"}},
            "spec": {"domain": {"memory": {"guest": "128Mi"}}, "nodeSelector": {"disk": "ssd"},
                     "tolerations": [{"key": "gpu", "operator": "Exists"}]}
        }))
        .unwrap();
        let r = PlacementRequest::for_vmi(&vmi).unwrap();
        assert_eq!(r.display_name(), "ns/a");
        assert_eq!(r.node_selector["disk"], "ssd");
        assert_eq!(r.tolerations[0].key.as_deref(), Some("gpu"));
        assert_eq!(r.labels["app"], "db");
        let mut bad = vmi.clone();
        bad.body
            .insert("spec".into(), json!({"domain": {"cpu": {"cores": "two"}}}));
        let e = PlacementRequest::for_vmi(&bad).unwrap_err();
        assert!(e.contains("spec.domain.cpu.cores"), "{e}");
    }
}
