//! Filters: whether one node can take one instance, and if not, the first reason why (insufficient
//! CPU and memory are reported together). Pure functions of a node's facts and a request prepared
//! once per placement ([`Prepared`]); [`Unschedulable`] turns the reasons of every node into
//! kube-scheduler's message, `0/3 nodes available: 2 insufficient memory, 1 unschedulable.`

use super::request::PlacementRequest;
use super::snapshot::{NodeFacts, Snapshot, Taint};
use std::collections::{HashMap, HashSet};
use vmo_api::kinds::affinity::NodeSelectorTerm;
use vmo_api::kinds::kubevirt::Toleration;

/// The taint a cordoned node carries in Kubernetes; tolerating it lets an instance onto a
/// cordoned node.
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// Why a node was filtered out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// In the request's exclusion list (a migration's source node).
    Excluded,
    /// Not the node the request requires (where its local volume is).
    NotRequiredNode,
    NotReady,
    Cordoned,
    /// The node's taint at this index is not tolerated.
    Taint(u16),
    Insufficient {
        cpu: bool,
        memory: bool,
    },
    NodeSelector,
    VmAffinity,
    VmAntiAffinity,
}

/// Values of one topology key (`topology.kubernetes.io/zone`, ...).
#[derive(Debug, Clone, Default)]
pub(super) struct TopologyRule {
    pub key: String,
    pub values: HashSet<String>,
}

/// A request with its constraints resolved against the snapshot, once per placement.
#[derive(Debug)]
pub(super) struct Prepared<'a> {
    pub req: &'a PlacementRequest,
    /// `nodeSelector` and the added selector as label ids; `None`: no node has them all.
    pub selector: Option<Vec<u32>>,
    pub required_terms: Option<&'a [NodeSelectorTerm]>,
    pub excluded: Vec<u32>,
    /// `Some(None)`: the required node does not exist, so no node passes.
    pub required_node: Option<Option<u32>>,
    /// Each must hold: the node's value of `key` is one of `values`. `None` values: satisfied
    /// anywhere (no instance matches the term yet and the request matches its own term).
    pub affinity: Vec<Option<TopologyRule>>,
    /// None may hold: the node's value of `key` is one of `values`.
    pub anti_affinity: Vec<TopologyRule>,
    /// Preferred VM (anti-)affinity: topology key, weight (negative for anti-affinity), and
    /// matching instances per value.
    pub preferred: Vec<(String, i64, HashMap<String, i64>)>,
    pub spread_group: Option<u32>,
    pub tolerates_cordon: bool,
}

impl<'a> Prepared<'a> {
    pub fn new(snapshot: &Snapshot, req: &'a PlacementRequest) -> Self {
        let node_affinity = req.affinity.as_ref().and_then(|a| a.node_affinity.as_ref());
        let mut prepared = Prepared {
            req,
            selector: snapshot
                .selector_ids(req.node_selector.iter().chain(&req.extra_node_selector)),
            required_terms: node_affinity
                .and_then(|n| {
                    n.required_during_scheduling_ignored_during_execution
                        .as_ref()
                })
                .map(|s| s.node_selector_terms.as_slice()),
            excluded: req
                .exclude_nodes
                .iter()
                .filter_map(|n| snapshot.node_index(n))
                .collect(),
            required_node: req.required_node.as_ref().map(|n| snapshot.node_index(n)),
            affinity: Vec::new(),
            anti_affinity: Vec::new(),
            preferred: Vec::new(),
            spread_group: snapshot.existing_group(req),
            tolerates_cordon: tolerated(
                &req.tolerations,
                &Taint {
                    key: UNSCHEDULABLE_TAINT.into(),
                    value: String::new(),
                    effect: "NoSchedule".into(),
                },
            ),
        };
        if let Some(rules) = req.affinity.as_ref().and_then(|a| a.pod_affinity.as_ref()) {
            for term in &rules.required_during_scheduling_ignored_during_execution {
                let domains = snapshot.term_domains(term, req);
                let in_namespace =
                    term.namespaces.is_empty() || term.namespaces.contains(&req.namespace);
                let selects_itself = in_namespace
                    && term
                        .label_selector
                        .as_ref()
                        .is_some_and(|s| s.matches(&req.labels));
                prepared
                    .affinity
                    .push(if domains.is_empty() && selects_itself {
                        None
                    } else {
                        Some(TopologyRule {
                            key: term.topology_key.clone(),
                            values: domains.into_keys().collect(),
                        })
                    });
            }
            for w in &rules.preferred_during_scheduling_ignored_during_execution {
                let term = &w.pod_affinity_term;
                let domains = snapshot.term_domains(term, req);
                prepared
                    .preferred
                    .push((term.topology_key.clone(), w.weight.into(), domains));
            }
        }
        if let Some(rules) = req
            .affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
        {
            for term in &rules.required_during_scheduling_ignored_during_execution {
                prepared.anti_affinity.push(TopologyRule {
                    key: term.topology_key.clone(),
                    values: snapshot.term_domains(term, req).into_keys().collect(),
                });
            }
            for w in &rules.preferred_during_scheduling_ignored_during_execution {
                let term = &w.pod_affinity_term;
                let domains = snapshot.term_domains(term, req);
                prepared
                    .preferred
                    .push((term.topology_key.clone(), -i64::from(w.weight), domains));
            }
        }
        for (key, values) in snapshot.closed_by_others(req) {
            prepared.anti_affinity.push(TopologyRule { key, values });
        }
        prepared
    }
}

/// Whether `toleration` lets an instance onto a node with `taint`, as Kubernetes decides it.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or("");
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or("");
    let exists = toleration.operator.as_deref() == Some("Exists");
    if key.is_empty() {
        return exists;
    }
    key == taint.key && (exists || toleration.value.as_deref().unwrap_or("") == taint.value)
}

fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

/// Whether the node has every label id of the selector (both sorted).
fn selector_matches(selector: Option<&[u32]>, node: &NodeFacts) -> bool {
    let Some(wanted) = selector else {
        return false;
    };
    let mut have = node.label_ids.iter();
    wanted.iter().all(|id| have.any(|h| h == id))
}

/// Whether `node` (at `index` in the snapshot) can take the prepared request.
pub(super) fn check(node: &NodeFacts, index: u32, p: &Prepared) -> Result<(), Reason> {
    if p.excluded.contains(&index) {
        return Err(Reason::Excluded);
    }
    if let Some(required) = p.required_node {
        if required != Some(index) {
            return Err(Reason::NotRequiredNode);
        }
    }
    if !node.ready {
        return Err(Reason::NotReady);
    }
    if node.unschedulable && !p.tolerates_cordon {
        return Err(Reason::Cordoned);
    }
    for (i, taint) in node.taints.iter().enumerate() {
        if matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute")
            && !tolerated(&p.req.tolerations, taint)
        {
            return Err(Reason::Taint(i as u16));
        }
    }
    if !selector_matches(p.selector.as_deref(), node)
        || p.required_terms
            .is_some_and(|terms| !terms.iter().any(|t| t.matches(&node.name, &node.labels)))
    {
        return Err(Reason::NodeSelector);
    }
    let free = node.free();
    let wants = &p.req.requests;
    let cpu = wants.cpu_millis > free.cpu_millis;
    let memory = wants.memory_bytes > free.memory_bytes;
    if cpu || memory {
        return Err(Reason::Insufficient { cpu, memory });
    }
    for rule in p.affinity.iter().flatten() {
        if !node
            .labels
            .get(&rule.key)
            .is_some_and(|v| rule.values.contains(v))
        {
            return Err(Reason::VmAffinity);
        }
    }
    for rule in &p.anti_affinity {
        if node
            .labels
            .get(&rule.key)
            .is_some_and(|v| rule.values.contains(v))
        {
            return Err(Reason::VmAntiAffinity);
        }
    }
    Ok(())
}

/// No node can take the instance: how many nodes there are, how many failed for each reason, and
/// the sizes when resources were short. Displays as kube-scheduler's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable {
    pub nodes: usize,
    /// (reason, nodes), most frequent first, then by reason.
    pub reasons: Vec<(String, usize)>,
    /// Sizes asked and available, when resources were short.
    pub detail: Option<String>,
}

impl std::fmt::Display for Unschedulable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0/{} nodes available: ", self.nodes)?;
        if self.reasons.is_empty() {
            f.write_str("no nodes are registered.")?;
        } else {
            let parts: Vec<String> = self
                .reasons
                .iter()
                .map(|(reason, count)| format!("{count} {reason}"))
                .collect();
            write!(f, "{}.", parts.join(", "))?;
        }
        if let Some(detail) = &self.detail {
            write!(f, " {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Unschedulable {}

impl Unschedulable {
    /// The verdict from each node's reason.
    pub(super) fn new(
        snapshot: &Snapshot,
        req: &PlacementRequest,
        failures: &[(u32, Reason)],
    ) -> Self {
        let mut counts: HashMap<String, usize> = HashMap::new();
        let (mut short_cpu, mut short_memory) = (false, false);
        for (node, reason) in failures {
            let mut add = |text: String| *counts.entry(text).or_default() += 1;
            match reason {
                Reason::Excluded => add("is the VM's current node".into()),
                Reason::NotRequiredNode => add(format!(
                    "volume is on node {}",
                    req.required_node.as_deref().unwrap_or("")
                )),
                Reason::NotReady => add("node(s) not ready".into()),
                Reason::Cordoned => add("unschedulable".into()),
                Reason::Taint(i) => {
                    let key = &snapshot.nodes[*node as usize].taints[*i as usize].key;
                    add(format!("node(s) had untolerated taint {{{key}}}"))
                }
                Reason::Insufficient { cpu, memory } => {
                    if *cpu {
                        short_cpu = true;
                        add("insufficient cpu".into());
                    }
                    if *memory {
                        short_memory = true;
                        add("insufficient memory".into());
                    }
                }
                Reason::NodeSelector => add("node(s) didn't match node selector/affinity".into()),
                Reason::VmAffinity => add("node(s) didn't match VM affinity rules".into()),
                Reason::VmAntiAffinity => add("node(s) didn't match VM anti-affinity rules".into()),
            }
        }
        let mut reasons: Vec<(String, usize)> = counts.into_iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut detail = Vec::new();
        let largest = |f: fn(&NodeFacts) -> u64| snapshot.nodes.iter().map(f).max().unwrap_or(0);
        let wants = &req.requests;
        if short_memory {
            detail.push(format!(
                "The VM asks for {} MiB of memory (+{} MiB for QEMU); the largest node has {} MiB allocatable.",
                wants.guest_memory_bytes >> 20,
                (wants.memory_bytes - wants.guest_memory_bytes) >> 20,
                largest(|n| n.allocatable.memory_bytes) >> 20,
            ));
        }
        if short_cpu {
            detail.push(format!(
                "The VM asks for {}m CPU; the largest node has {}m allocatable.",
                wants.cpu_millis,
                largest(|n| n.allocatable.cpu_millis),
            ));
        }
        Self {
            nodes: snapshot.nodes.len(),
            reasons,
            detail: (!detail.is_empty()).then(|| detail.join(" ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::snapshot::tests::{node, request, vmi};
    use super::*;
    use serde_json::{json, Value};
    use vmo_api::Object;

    fn with(mut n: Object, spec: Value, labels: Value) -> Object {
        n.body.insert("spec".into(), spec);
        for (k, v) in labels.as_object().unwrap() {
            n.metadata
                .labels
                .insert(k.clone(), v.as_str().unwrap().into());
        }
        n
    }

    fn verdict(
        nodes: &[Object],
        vmis: &[Object],
        req: &PlacementRequest,
    ) -> Result<String, String> {
        Snapshot::from_objects(nodes, vmis)
            .place(req)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn not_ready_nodes_are_skipped() {
        let mut down = node("a", "z1", 4, 8);
        down.body["status"]["conditions"][0]["status"] = json!("Unknown");
        let req = request(json!({}), json!({}));
        assert_eq!(
            verdict(&[down.clone(), node("b", "z1", 4, 8)], &[], &req).unwrap(),
            "b"
        );
        assert_eq!(
            verdict(&[down], &[], &req).unwrap_err(),
            "0/1 nodes available: 1 node(s) not ready."
        );
    }

    #[test]
    fn cordoned_nodes_are_skipped_unless_tolerated() {
        let cordoned = with(
            node("a", "z1", 4, 8),
            json!({"unschedulable": true}),
            json!({}),
        );
        let req = request(json!({}), json!({}));
        assert_eq!(
            verdict(std::slice::from_ref(&cordoned), &[], &req).unwrap_err(),
            "0/1 nodes available: 1 unschedulable."
        );
        let req = request(
            json!({"tolerations": [{"key": UNSCHEDULABLE_TAINT, "operator": "Exists", "effect": "NoSchedule"}]}),
            json!({}),
        );
        assert_eq!(verdict(&[cordoned], &[], &req).unwrap(), "a");
    }

    #[test]
    fn untolerated_taints_repel() {
        let tainted = with(
            node("a", "z1", 4, 8),
            json!({"taints": [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]}),
            json!({}),
        );
        let soft = with(
            node("b", "z1", 4, 8),
            json!({"taints": [{"key": "soft", "effect": "PreferNoSchedule"}]}),
            json!({}),
        );
        let req = request(json!({}), json!({}));
        assert_eq!(verdict(&[tainted.clone(), soft], &[], &req).unwrap(), "b");
        assert_eq!(
            verdict(std::slice::from_ref(&tainted), &[], &req).unwrap_err(),
            "0/1 nodes available: 1 node(s) had untolerated taint {gpu}."
        );
        for toleration in [
            json!({"key": "gpu", "operator": "Equal", "value": "yes"}),
            json!({"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}),
            json!({"operator": "Exists"}),
        ] {
            let req = request(json!({"tolerations": [toleration]}), json!({}));
            assert_eq!(
                verdict(std::slice::from_ref(&tainted), &[], &req).unwrap(),
                "a"
            );
        }
        for toleration in [
            json!({"key": "gpu", "value": "no"}),
            json!({"key": "gpu", "operator": "Exists", "effect": "NoExecute"}),
        ] {
            let req = request(json!({"tolerations": [toleration]}), json!({}));
            assert!(verdict(std::slice::from_ref(&tainted), &[], &req).is_err());
        }
    }

    #[test]
    fn cpu_and_memory_must_fit_beside_what_is_placed() {
        let nodes = [node("a", "z1", 1, 2), node("b", "z1", 1, 2)];
        let busy = vmi("busy", json!({}), 1536, "a");
        let req = request(json!({}), json!({}));
        assert_eq!(
            verdict(&nodes, std::slice::from_ref(&busy), &req).unwrap(),
            "b"
        );
        let big = request(
            json!({"domain": {"memory": {"guest": "3Gi"}, "cpu": {"cores": 16}}}),
            json!({}),
        );
        assert_eq!(
            verdict(&nodes, &[busy], &big).unwrap_err(),
            "0/2 nodes available: 2 insufficient cpu, 2 insufficient memory. \
             The VM asks for 3072 MiB of memory (+93 MiB for QEMU); the largest node has 2048 MiB allocatable. \
             The VM asks for 1600m CPU; the largest node has 1000m allocatable."
        );
    }

    #[test]
    fn node_selector_added_selector_and_required_node_affinity() {
        let ssd = with(
            node("a", "z1", 4, 8),
            json!({}),
            json!({"disk": "ssd", "cores": "32"}),
        );
        let hdd = with(
            node("b", "z1", 4, 8),
            json!({}),
            json!({"disk": "hdd", "cores": "8"}),
        );
        let nodes = [ssd, hdd];
        let req = request(json!({"nodeSelector": {"disk": "hdd"}}), json!({}));
        assert_eq!(verdict(&nodes, &[], &req).unwrap(), "b");
        let mut added = request(json!({}), json!({}));
        added
            .extra_node_selector
            .insert("disk".into(), "ssd".into());
        assert_eq!(verdict(&nodes, &[], &added).unwrap(), "a");
        let affinity = |expr: Value| {
            request(
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                    {"nodeSelectorTerms": [{"matchExpressions": [expr]}]}}}}),
                json!({}),
            )
        };
        let gt = affinity(json!({"key": "cores", "operator": "Gt", "values": ["16"]}));
        assert_eq!(verdict(&nodes, &[], &gt).unwrap(), "a");
        let none = affinity(json!({"key": "disk", "operator": "In", "values": ["nvme"]}));
        assert_eq!(
            verdict(&nodes, &[], &none).unwrap_err(),
            "0/2 nodes available: 2 node(s) didn't match node selector/affinity."
        );
        let by_name = request(
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}]}}}}),
            json!({}),
        );
        assert_eq!(verdict(&nodes, &[], &by_name).unwrap(), "b");
    }

    #[test]
    fn vm_affinity_follows_matching_instances_by_topology() {
        let nodes = [
            node("a1", "z1", 4, 8),
            node("b1", "z2", 4, 8),
            node("b2", "z2", 4, 8),
        ];
        let db = vmi("db", json!({"app": "db"}), 256, "b1");
        let near_db = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "topology.kubernetes.io/zone"}]}}});
        let req = request(near_db.clone(), json!({"app": "web"}));
        let placed = verdict(&nodes, std::slice::from_ref(&db), &req).unwrap();
        assert!(placed.starts_with('b'), "{placed}");
        // Nothing matches yet: unschedulable, unless the instance matches its own term.
        assert_eq!(
            verdict(&nodes, &[], &req).unwrap_err(),
            "0/3 nodes available: 3 node(s) didn't match VM affinity rules."
        );
        let first = request(near_db, json!({"app": "db"}));
        assert!(verdict(&nodes, &[], &first).is_ok());
    }

    #[test]
    fn vm_anti_affinity_is_kept_both_ways() {
        let nodes = [node("a1", "z1", 4, 8), node("b1", "z2", 4, 8)];
        let apart = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "topology.kubernetes.io/zone"}]}}});
        let req = request(apart.clone(), json!({"app": "db"}));
        assert_eq!(
            verdict(&nodes, &[vmi("db0", json!({"app": "db"}), 256, "a1")], &req).unwrap(),
            "b1"
        );
        // An existing instance's anti-affinity keeps a matching newcomer out of its zone, too.
        let mut holder = vmi("db0", json!({"app": "db"}), 256, "a1");
        holder.body.get_mut("spec").unwrap()["affinity"] = apart["affinity"].clone();
        let plain = request(json!({}), json!({"app": "db"}));
        assert_eq!(
            verdict(&nodes, std::slice::from_ref(&holder), &plain).unwrap(),
            "b1"
        );
        let mut other_app = request(json!({}), json!({"app": "web"}));
        other_app.exclude_nodes = vec!["b1".into()];
        assert_eq!(
            verdict(&nodes, std::slice::from_ref(&holder), &other_app).unwrap(),
            "a1"
        );
        let both = [holder, vmi("db1", json!({"app": "db"}), 256, "b1")];
        assert_eq!(
            verdict(&nodes, &both, &req).unwrap_err(),
            "0/2 nodes available: 2 node(s) didn't match VM anti-affinity rules."
        );
        // An instance never repels itself (a migration places an instance that is already placed).
        let mut itself = request(apart, json!({"app": "db"}));
        itself.uid = "uid-db1".into();
        itself.exclude_nodes = vec!["b1".into()];
        assert_eq!(verdict(&nodes, &both[1..], &itself).unwrap(), "a1");
    }

    #[test]
    fn exclusions_and_a_required_node() {
        let nodes = [node("a", "z1", 4, 8), node("b", "z1", 4, 8)];
        let mut req = request(json!({}), json!({}));
        req.exclude_nodes = vec!["a".into(), "b".into()];
        assert_eq!(
            verdict(&nodes, &[], &req).unwrap_err(),
            "0/2 nodes available: 2 is the VM's current node."
        );
        let mut req = request(json!({}), json!({}));
        req.required_node = Some("b".into());
        assert_eq!(verdict(&nodes, &[], &req).unwrap(), "b");
        req.required_node = Some("gone".into());
        assert_eq!(
            verdict(&nodes, &[], &req).unwrap_err(),
            "0/2 nodes available: 2 volume is on node gone."
        );
    }

    #[test]
    fn the_message_counts_reasons_most_frequent_first() {
        let nodes = [
            node("a", "z1", 4, 1),
            node("b", "z1", 4, 1),
            with(
                node("c", "z1", 4, 8),
                json!({"unschedulable": true}),
                json!({}),
            ),
        ];
        let req = request(json!({}), json!({}));
        let e = Snapshot::from_objects(&nodes, &[]).place(&req).unwrap_err();
        assert_eq!(
            e.reasons,
            vec![
                ("insufficient memory".to_string(), 2),
                ("unschedulable".to_string(), 1)
            ]
        );
        assert!(e.to_string().starts_with(
            "0/3 nodes available: 2 insufficient memory, 1 unschedulable. The VM asks"
        ));
        assert_eq!(
            Snapshot::from_objects(&[], &[])
                .place(&req)
                .unwrap_err()
                .to_string(),
            "0/0 nodes available: no nodes are registered."
        );
    }
}
