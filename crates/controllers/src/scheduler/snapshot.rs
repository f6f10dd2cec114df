//! The cluster as the scheduler sees it during one pass: every node's facts parsed once (labels,
//! zone, taints, cordon, readiness, allocatable and used resources) and every placed instance with
//! what VM affinity and spreading need. [`Snapshot::place`] runs the filters and scores over it;
//! [`Snapshot::assume`] accounts a placement before the API write that makes it true lands, so the
//! next placement in the same pass sees it.
//!
//! Used resources of a node are those of its bound instances that have not finished (Succeeded or
//! Failed), plus those of instances migrating to it: a migration target reserves its capacity from
//! the moment the migration names it until the migration completes or fails.
//!
//! On large clusters the filters stop once enough feasible nodes are found, as kube-scheduler's
//! `percentageOfNodesToScore` does ([`feasible_nodes_to_find`]), and each placement starts where the
//! previous one stopped, so every node is considered in turn. An unschedulable verdict therefore
//! always comes from examining every node.

use super::filter::{self, Reason, Unschedulable};
use super::request::{PlacementRequest, Requests};
use super::score;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use vmo_api::kinds::affinity::PodAffinityTerm;
use vmo_api::kinds::core::{node_condition, ZONE_LABEL};
use vmo_api::{Object, Quantity};

/// The label whose value, with the namespace, groups instances that zone spreading spreads.
pub const SPREAD_LABELS: &[&str] = &["app", "app.kubernetes.io/name"];
/// Fewest nodes the filters look for before scoring, as kube-scheduler's `minFeasibleNodesToFind`.
pub const MIN_FEASIBLE_NODES: usize = 100;

/// How many feasible nodes a placement looks for before it stops filtering: every node up to
/// [`MIN_FEASIBLE_NODES`]; beyond that kube-scheduler's adaptive percentage, 50% less 1% per 125
/// nodes and at least 5% (10% of 5,000 nodes: 500), and never fewer than [`MIN_FEASIBLE_NODES`].
pub fn feasible_nodes_to_find(nodes: usize) -> usize {
    if nodes <= MIN_FEASIBLE_NODES {
        return nodes;
    }
    let percent = 50usize.saturating_sub(nodes / 125).max(5);
    (nodes * percent / 100).max(MIN_FEASIBLE_NODES)
}

/// Resources in the units the scheduler counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// A taint on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: String,
    /// NoSchedule, PreferNoSchedule or NoExecute.
    pub effect: String,
}

/// One node's facts, parsed once per snapshot.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Index into the snapshot's zones (nodes without a zone label share the zone "").
    pub zone: u32,
    /// The Ready condition is True.
    pub ready: bool,
    /// Cordoned: `spec.unschedulable`.
    pub unschedulable: bool,
    pub taints: Vec<Taint>,
    /// `status.allocatable` (or `status.capacity` when a node reports no allocatable).
    pub allocatable: Resources,
    pub used: Resources,
    /// Instances bound here (not counting migration targets).
    pub instances: u32,
    /// The node's labels as interned `key=value` ids, sorted: node selectors compare integers.
    pub(super) label_ids: Vec<u32>,
}

impl NodeFacts {
    /// Parses a Node object.
    pub fn from_node(node: &Object) -> Self {
        let status = node.status();
        let resource = |name: &str, read: fn(&Quantity) -> Option<i128>| {
            let value = match &status["allocatable"][name] {
                Value::Null => &status["capacity"][name],
                v => v,
            };
            value
                .as_str()
                .and_then(|s| Quantity::parse(s).ok())
                .or_else(|| value.as_u64().map(|n| Quantity::from_units(n.into())))
                .and_then(|q| read(&q))
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(0)
        };
        let taints = node.spec()["taints"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|t| Taint {
                        key: t["key"].as_str().unwrap_or("").to_string(),
                        value: t["value"].as_str().unwrap_or("").to_string(),
                        effect: t["effect"].as_str().unwrap_or("").to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            name: node.metadata.name.clone(),
            labels: node.metadata.labels.clone(),
            zone: 0,
            ready: node_condition(node, "Ready").as_deref() == Some("True"),
            unschedulable: node.spec()["unschedulable"].as_bool() == Some(true),
            taints,
            allocatable: Resources {
                cpu_millis: resource("cpu", Quantity::milli_value_ceil),
                memory_bytes: resource("memory", Quantity::value_ceil),
            },
            used: Resources::default(),
            instances: 0,
            label_ids: Vec::new(),
        }
    }

    /// What is left after the used resources.
    pub fn free(&self) -> Resources {
        Resources {
            cpu_millis: self
                .allocatable
                .cpu_millis
                .saturating_sub(self.used.cpu_millis),
            memory_bytes: self
                .allocatable
                .memory_bytes
                .saturating_sub(self.used.memory_bytes),
        }
    }
}

/// A placed instance, as VM affinity and spreading see it.
#[derive(Debug, Clone)]
pub(super) struct Placed {
    pub uid: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub node: u32,
}

/// The placed instances of one namespace, and among them those with each label, for VM affinity
/// terms: a term looks only at the instances with one of its `matchLabels`, or of its namespace,
/// not at every instance in the cluster.
#[derive(Debug, Default)]
pub(super) struct NamespaceIndex {
    /// Indexes into [`Snapshot::placed`].
    pub all: Vec<u32>,
    /// label key -> label value -> indexes into [`Snapshot::placed`].
    pub by_label: ByLabel<u32>,
}

/// label key -> label value -> items.
type ByLabel<T> = HashMap<String, HashMap<String, Vec<T>>>;

/// Adds `item` under `key=value`, allocating keys only when they are new.
fn push_by_label<T>(map: &mut ByLabel<T>, key: &str, value: &str, item: T) {
    if !map.contains_key(key) {
        map.insert(key.to_string(), HashMap::new());
    }
    let values = map.get_mut(key).expect("inserted above");
    match values.get_mut(value) {
        Some(list) => list.push(item),
        None => {
            values.insert(value.to_string(), vec![item]);
        }
    }
}

/// A placed instance's required anti-affinity terms, which keep matching newcomers away from it.
#[derive(Debug, Clone)]
pub(super) struct AntiAffinityHolder {
    pub placed: usize,
    pub terms: Vec<PodAffinityTerm>,
}

/// The cluster state one pass of the scheduler works on.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub(super) nodes: Vec<NodeFacts>,
    by_name: HashMap<String, u32>,
    pub(super) zones: Vec<String>,
    pub(super) placed: Vec<Placed>,
    /// namespace -> its placed instances.
    placed_by_namespace: HashMap<String, NamespaceIndex>,
    pub(super) anti_affinity: Vec<AntiAffinityHolder>,
    /// The holders' terms (holder, term) that select by label within their holder's namespace:
    /// namespace -> the term's first matchLabels pair -> terms. A newcomer can only match those
    /// under its own namespace and labels.
    anti_affinity_by_label: HashMap<String, ByLabel<(u32, u16)>>,
    /// The other terms (explicit namespaces, expressions only), checked for every newcomer.
    anti_affinity_other: Vec<(u32, u16)>,
    /// (namespace, spread label value) -> group id.
    groups: HashMap<(String, String), u32>,
    /// (group, zone) -> instances.
    pub(super) group_zone: HashMap<(u32, u32), u32>,
    /// group -> (node, instances of the group there), for the nodes holding any.
    group_nodes: HashMap<u32, Vec<(u32, u32)>>,
    /// (group, node) -> its place in `group_nodes[group]`.
    group_node_slot: HashMap<(u32, u32), u32>,
    /// (label key, label value) -> id, for every label of every node.
    label_pairs: HashMap<(String, String), u32>,
    next_start: AtomicUsize,
}

fn finished(vmi: &Object) -> bool {
    matches!(vmi.status()["phase"].as_str(), Some("Succeeded" | "Failed"))
}

/// The node an unfinished migration of `vmi` reserves capacity on.
pub fn migration_target(vmi: &Object) -> Option<&str> {
    let state = &vmi.status()["migrationState"];
    if state["completed"] == true || state["failed"] == true {
        return None;
    }
    state["targetNode"].as_str().filter(|n| !n.is_empty())
}

impl Snapshot {
    /// The snapshot of these Node and VirtualMachineInstance objects.
    pub fn from_objects(nodes: &[Object], vmis: &[Object]) -> Self {
        let mut snapshot = Self::with_nodes(nodes.iter().map(NodeFacts::from_node).collect());
        for vmi in vmis {
            snapshot.add_vmi(vmi);
        }
        snapshot
    }

    /// A snapshot of these nodes with nothing placed yet; [`Snapshot::add_vmi`] adds instances.
    pub fn with_nodes(mut facts: Vec<NodeFacts>) -> Self {
        facts.sort_by(|a, b| a.name.cmp(&b.name));
        let mut snapshot = Snapshot::default();
        let mut zones: HashMap<String, u32> = HashMap::new();
        for (i, mut node) in facts.into_iter().enumerate() {
            let zone = node.labels.get(ZONE_LABEL).cloned().unwrap_or_default();
            let next = zones.len() as u32;
            node.zone = *zones.entry(zone.clone()).or_insert_with(|| {
                snapshot.zones.push(zone);
                next
            });
            node.label_ids.clear();
            for (k, v) in &node.labels {
                let next = snapshot.label_pairs.len() as u32;
                let id = *snapshot
                    .label_pairs
                    .entry((k.clone(), v.clone()))
                    .or_insert(next);
                node.label_ids.push(id);
            }
            node.label_ids.sort_unstable();
            snapshot.by_name.insert(node.name.clone(), i as u32);
            snapshot.nodes.push(node);
        }
        snapshot
    }

    /// Accounts an instance as the cluster shows it: bound and unfinished, it uses its node's
    /// resources and counts for VM affinity and spreading; migrating, it also reserves its
    /// target's resources. Others (unbound, finished, on unknown nodes) change nothing.
    pub fn add_vmi(&mut self, vmi: &Object) {
        if finished(vmi) {
            return;
        }
        let bound = vmi.status()["nodeName"].as_str().unwrap_or("");
        let target = migration_target(vmi);
        if bound.is_empty() && target.is_none() {
            return;
        }
        let requests = super::request::vmi_requests(vmi.spec());
        if let Some(&node) = self.by_name.get(bound) {
            let anti = vmi.spec()["affinity"]["podAntiAffinity"]
                ["requiredDuringSchedulingIgnoredDuringExecution"]
                .as_array()
                .filter(|terms| !terms.is_empty())
                .and_then(|terms| serde_json::from_value(Value::Array(terms.clone())).ok());
            self.add_placed(
                node,
                &vmi.metadata.uid,
                &vmi.metadata.namespace,
                &vmi.metadata.labels,
                &requests,
                anti,
            );
        }
        if let Some(&node) = target.and_then(|t| self.by_name.get(t)) {
            self.reserve(node, &requests);
        }
    }

    fn reserve(&mut self, node: u32, requests: &Requests) {
        let used = &mut self.nodes[node as usize].used;
        used.cpu_millis += requests.cpu_millis;
        used.memory_bytes += requests.memory_bytes;
    }

    fn add_placed(
        &mut self,
        node: u32,
        uid: &str,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        requests: &Requests,
        anti_affinity: Option<Vec<PodAffinityTerm>>,
    ) {
        self.reserve(node, requests);
        self.nodes[node as usize].instances += 1;
        if let Some(group) = self.group_id(namespace, labels, true) {
            let zone = self.nodes[node as usize].zone;
            *self.group_zone.entry((group, zone)).or_default() += 1;
            let on_nodes = self.group_nodes.entry(group).or_default();
            match self.group_node_slot.get(&(group, node)) {
                Some(&slot) => on_nodes[slot as usize].1 += 1,
                None => {
                    self.group_node_slot
                        .insert((group, node), on_nodes.len() as u32);
                    on_nodes.push((node, 1));
                }
            }
        }
        if let Some(terms) = anti_affinity {
            let holder = self.anti_affinity.len() as u32;
            for (t, term) in terms.iter().enumerate() {
                let first_label = term
                    .label_selector
                    .as_ref()
                    .and_then(|s| s.match_labels.iter().next())
                    .filter(|_| term.namespaces.is_empty());
                match first_label {
                    Some((k, v)) => {
                        if !self.anti_affinity_by_label.contains_key(namespace) {
                            self.anti_affinity_by_label
                                .insert(namespace.to_string(), HashMap::new());
                        }
                        let by_label = self
                            .anti_affinity_by_label
                            .get_mut(namespace)
                            .expect("inserted above");
                        push_by_label(by_label, k, v, (holder, t as u16));
                    }
                    None => self.anti_affinity_other.push((holder, t as u16)),
                }
            }
            self.anti_affinity.push(AntiAffinityHolder {
                placed: self.placed.len(),
                terms,
            });
        }
        let index = self.placed.len() as u32;
        if !self.placed_by_namespace.contains_key(namespace) {
            self.placed_by_namespace
                .insert(namespace.to_string(), NamespaceIndex::default());
        }
        let in_namespace = self
            .placed_by_namespace
            .get_mut(namespace)
            .expect("inserted above");
        in_namespace.all.push(index);
        for (k, v) in labels {
            push_by_label(&mut in_namespace.by_label, k, v, index);
        }
        self.placed.push(Placed {
            uid: uid.to_string(),
            namespace: namespace.to_string(),
            labels: labels.clone(),
            node,
        });
    }

    /// The spreading group of an instance: its namespace and the first of [`SPREAD_LABELS`] it has.
    pub(super) fn group_id(
        &mut self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        create: bool,
    ) -> Option<u32> {
        let value = SPREAD_LABELS.iter().find_map(|l| labels.get(*l))?;
        let key = (namespace.to_string(), value.clone());
        if let Some(id) = self.groups.get(&key) {
            return Some(*id);
        }
        if !create {
            return None;
        }
        let id = self.groups.len() as u32;
        self.groups.insert(key, id);
        Some(id)
    }

    /// The existing group of a request, if any instance of it is placed.
    pub(super) fn existing_group(&self, req: &PlacementRequest) -> Option<u32> {
        let value = SPREAD_LABELS.iter().find_map(|l| req.labels.get(*l))?;
        self.groups
            .get(&(req.namespace.clone(), value.clone()))
            .copied()
    }

    /// Instances of spreading `group` on each node, indexed like [`Snapshot::nodes`], so that
    /// scoring reads an array.
    pub(super) fn group_counts(&self, group: u32) -> Vec<u32> {
        let mut counts = vec![0; self.nodes.len()];
        for &(node, count) in self.group_nodes.get(&group).map_or(&[][..], Vec::as_slice) {
            counts[node as usize] = count;
        }
        counts
    }

    /// The nodes, sorted by name.
    pub fn nodes(&self) -> &[NodeFacts] {
        &self.nodes
    }

    /// One node's facts.
    pub fn node(&self, name: &str) -> Option<&NodeFacts> {
        self.by_name.get(name).map(|i| &self.nodes[*i as usize])
    }

    pub(super) fn node_index(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// The label ids a node must all have to match these selectors, sorted; `None` when some
    /// `key=value` is on no node at all.
    pub(super) fn selector_ids<'a>(
        &self,
        selectors: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Option<Vec<u32>> {
        let mut ids = Vec::new();
        for (k, v) in selectors {
            ids.push(*self.label_pairs.get(&(k.clone(), v.clone()))?);
        }
        ids.sort_unstable();
        ids.dedup();
        Some(ids)
    }

    /// Accounts `req` as placed on `node` (its resources, VM affinity and spreading), for a
    /// placement whose API write has not been seen yet. False when the node is unknown.
    pub fn assume(&mut self, node: &str, req: &PlacementRequest) -> bool {
        let Some(index) = self.node_index(node) else {
            return false;
        };
        let anti = req
            .affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .map(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .clone()
            })
            .filter(|t| !t.is_empty());
        self.add_placed(
            index,
            &req.uid,
            &req.namespace,
            &req.labels,
            &req.requests,
            anti,
        );
        true
    }

    /// Chooses the best feasible node for `req`, or says why there is none.
    pub fn place(&self, req: &PlacementRequest) -> Result<String, Unschedulable> {
        let n = self.nodes.len();
        let prepared = filter::Prepared::new(self, req);
        let wanted = feasible_nodes_to_find(n);
        let start = if n == 0 {
            0
        } else {
            self.next_start.load(Ordering::Relaxed) % n
        };
        let mut feasible: Vec<u32> = Vec::with_capacity(wanted.min(1024));
        let mut failures: Vec<(u32, Reason)> = Vec::new();
        let mut examined = 0;
        for k in 0..n {
            let i = ((start + k) % n) as u32;
            examined += 1;
            match filter::check(&self.nodes[i as usize], i, &prepared) {
                Ok(()) => feasible.push(i),
                Err(reason) => failures.push((i, reason)),
            }
            if feasible.len() >= wanted {
                break;
            }
        }
        if n > 0 {
            self.next_start
                .store((start + examined) % n, Ordering::Relaxed);
        }
        if feasible.is_empty() {
            return Err(Unschedulable::new(self, req, &failures));
        }
        let best = score::best(self, &prepared, &feasible);
        Ok(self.nodes[best as usize].name.clone())
    }

    /// The values of `term.topology_key` on nodes holding instances the term selects (the
    /// instance `req` itself excluded), with how many such instances each value has.
    pub(super) fn term_domains(
        &self,
        term: &PodAffinityTerm,
        req: &PlacementRequest,
    ) -> HashMap<String, i64> {
        let mut domains = HashMap::new();
        let Some(selector) = &term.label_selector else {
            return domains;
        };
        let namespaces: BTreeSet<&String> = if term.namespaces.is_empty() {
            BTreeSet::from([&req.namespace])
        } else {
            term.namespaces.iter().collect()
        };
        for namespace in namespaces {
            let Some(index) = self.placed_by_namespace.get(namespace) else {
                continue;
            };
            // Only instances with the term's first matchLabels pair can match it.
            let candidates: &[u32] = match selector.match_labels.iter().next() {
                Some((k, v)) => index
                    .by_label
                    .get(k)
                    .and_then(|values| values.get(v))
                    .map_or(&[], Vec::as_slice),
                None => &index.all,
            };
            for &i in candidates {
                let p = &self.placed[i as usize];
                if p.uid == req.uid && !req.uid.is_empty() {
                    continue;
                }
                if !selector.matches(&p.labels) {
                    continue;
                }
                if let Some(v) = self.nodes[p.node as usize].labels.get(&term.topology_key) {
                    *domains.entry(v.clone()).or_insert(0) += 1;
                }
            }
        }
        domains
    }

    /// Topology domains (key, values) that placed instances' required anti-affinity closes to
    /// `req`, because `req` matches their terms.
    pub(super) fn closed_by_others(
        &self,
        req: &PlacementRequest,
    ) -> Vec<(String, HashSet<String>)> {
        let mut closed: BTreeMap<String, HashSet<String>> = BTreeMap::new();
        let mut check = |(h, t): (u32, u16)| {
            let holder = &self.anti_affinity[h as usize];
            let p = &self.placed[holder.placed];
            if p.uid == req.uid && !req.uid.is_empty() {
                return;
            }
            let term = &holder.terms[t as usize];
            let in_namespace = if term.namespaces.is_empty() {
                p.namespace == req.namespace
            } else {
                term.namespaces.contains(&req.namespace)
            };
            let selected = term
                .label_selector
                .as_ref()
                .is_some_and(|s| s.matches(&req.labels));
            if !in_namespace || !selected {
                return;
            }
            if let Some(v) = self.nodes[p.node as usize].labels.get(&term.topology_key) {
                closed
                    .entry(term.topology_key.clone())
                    .or_default()
                    .insert(v.clone());
            }
        };
        self.anti_affinity_other
            .iter()
            .copied()
            .for_each(&mut check);
        // A term indexed under `k=v` can select `req` only if `req` has `k=v`; each term is
        // indexed once, and `req` has one value per key, so none is checked twice.
        if let Some(by_label) = self.anti_affinity_by_label.get(&req.namespace) {
            for (k, v) in &req.labels {
                if let Some(terms) = by_label.get(k).and_then(|values| values.get(v)) {
                    terms.iter().copied().for_each(&mut check);
                }
            }
        }
        closed.into_iter().collect()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use serde_json::json;

    /// A Ready node with `cpus` cores and `gib` GiB allocatable in `zone`.
    pub fn node(name: &str, zone: &str, cpus: u64, gib: u64) -> Object {
        Object::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {ZONE_LABEL: zone, "kubernetes.io/hostname": name}},
            "spec": {},
            "status": {
                "allocatable": {"cpu": cpus.to_string(), "memory": format!("{gib}Gi")},
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        }))
        .unwrap()
    }

    /// An instance of `mib` MiB guest memory with these labels, bound to `node` if not empty.
    pub fn vmi(name: &str, labels: Value, mib: u64, node: &str) -> Object {
        let mut o = Object::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": labels},
            "spec": {"domain": {"memory": {"guest": format!("{mib}Mi")}}},
            "status": {}
        }))
        .unwrap();
        if !node.is_empty() {
            o.body.insert(
                "status".into(),
                json!({"phase": "Running", "nodeName": node}),
            );
        }
        o
    }

    /// The placement request of a new 1 GiB instance with these labels and more spec fields.
    pub fn request(spec_extra: Value, labels: Value) -> super::super::request::PlacementRequest {
        let mut v = vmi("new", labels, 1024, "");
        let spec = v.body.get_mut("spec").unwrap().as_object_mut().unwrap();
        for (k, val) in spec_extra.as_object().unwrap() {
            spec.insert(k.clone(), val.clone());
        }
        super::super::request::PlacementRequest::for_vmi(&v).unwrap()
    }

    /// An instance in `namespace` on `node` with these labels and required anti-affinity terms.
    fn placed_in(namespace: &str, name: &str, labels: Value, node: &str, anti: Value) -> Object {
        let mut o = vmi(name, labels, 256, node);
        o.metadata.namespace = namespace.into();
        if anti != json!([]) {
            o.body["spec"]["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": anti}});
        }
        o
    }

    #[test]
    fn vm_affinity_terms_see_exactly_the_namespaces_and_labels_they_name() {
        let nodes = [
            node("a", "z1", 4, 8),
            node("b", "z2", 4, 8),
            node("c", "z3", 4, 8),
        ];
        let web = json!({"app": "web", "tier": "front"});
        let term = |t: Value| -> PodAffinityTerm { serde_json::from_value(t).unwrap() };
        let host = "kubernetes.io/hostname";
        let by_web = json!({"matchLabels": {"app": "web"}});
        let s = Snapshot::from_objects(
            &nodes,
            &[
                // Holder in the request's namespace: closes its host to web instances.
                placed_in(
                    "default",
                    "web-a",
                    web.clone(),
                    "a",
                    json!([{"labelSelector": by_web, "topologyKey": host}]),
                ),
                // Holder in another namespace without a namespace list: leaves them alone.
                placed_in(
                    "other",
                    "web-b",
                    web.clone(),
                    "b",
                    json!([{"labelSelector": by_web, "topologyKey": host}]),
                ),
                // Holder in another namespace naming the request's: closes its host too.
                placed_in(
                    "other",
                    "db-c",
                    json!({"app": "db"}),
                    "c",
                    json!([{"labelSelector": by_web, "namespaces": ["default"], "topologyKey": host}]),
                ),
                // Holder selecting by expression only: closes its zone.
                placed_in(
                    "default",
                    "cache-b",
                    json!({"app": "cache"}),
                    "b",
                    json!([{"labelSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]},
                            "topologyKey": ZONE_LABEL}]),
                ),
                placed_in("default", "db-c2", json!({"app": "db"}), "c", json!([])),
            ],
        );
        let req =
            PlacementRequest::for_vmi(&placed_in("default", "new", web, "", json!([]))).unwrap();
        let domains = |t: Value| {
            let mut d: Vec<(String, i64)> = s.term_domains(&term(t), &req).into_iter().collect();
            d.sort();
            d
        };
        let count = |pairs: &[(&str, i64)]| -> Vec<(String, i64)> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        // matchLabels: the request's namespace only.
        assert_eq!(
            domains(json!({"labelSelector": by_web, "topologyKey": host})),
            count(&[("a", 1)])
        );
        // Named namespaces, each counted once.
        assert_eq!(
            domains(
                json!({"labelSelector": by_web, "namespaces": ["default", "other", "default"], "topologyKey": host})
            ),
            count(&[("a", 1), ("b", 1)])
        );
        // Every matchLabels pair must hold, not just the first.
        assert_eq!(
            domains(
                json!({"labelSelector": {"matchLabels": {"app": "web", "tier": "back"}}, "topologyKey": host})
            ),
            count(&[])
        );
        // Expressions only: every instance of the namespace is a candidate.
        assert_eq!(
            domains(
                json!({"labelSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "db"]}]}, "topologyKey": host})
            ),
            count(&[("a", 1), ("c", 1)])
        );
        let closed: BTreeMap<String, BTreeSet<String>> = s
            .closed_by_others(&req)
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect();
        let want: BTreeMap<String, BTreeSet<String>> = [
            (host.to_string(), ["a".to_string(), "c".to_string()].into()),
            (ZONE_LABEL.to_string(), ["z2".to_string()].into()),
        ]
        .into();
        assert_eq!(closed, want);
    }

    #[test]
    fn node_facts_are_parsed_once() {
        let mut n = node("n1", "z1", 4, 8);
        n.body.insert(
            "spec".into(),
            json!({"unschedulable": true, "taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]}),
        );
        let f = NodeFacts::from_node(&n);
        assert_eq!(f.allocatable.cpu_millis, 4000);
        assert_eq!(f.allocatable.memory_bytes, 8 << 30);
        assert!(f.ready && f.unschedulable);
        assert_eq!(f.taints[0].effect, "NoSchedule");
        let mut not_ready = node("n2", "z1", 4, 8);
        not_ready.body["status"]["conditions"][0]["status"] = json!("Unknown");
        assert!(!NodeFacts::from_node(&not_ready).ready);
    }

    #[test]
    fn used_counts_bound_unfinished_instances_and_migration_targets() {
        let nodes = [node("a", "z1", 4, 8), node("b", "z2", 4, 8)];
        let mut done = vmi("done", json!({}), 1024, "a");
        done.body["status"]["phase"] = json!("Succeeded");
        let mut migrating = vmi("m", json!({}), 1024, "a");
        migrating.body["status"]["migrationState"] = json!({"targetNode": "b"});
        let mut migrated = vmi("m2", json!({}), 1024, "a");
        migrated.body["status"]["migrationState"] = json!({"targetNode": "b", "completed": true});
        let mut failed = vmi("m3", json!({}), 1024, "a");
        failed.body["status"]["migrationState"] = json!({"targetNode": "b", "failed": true});
        let s = Snapshot::from_objects(
            &nodes,
            &[
                vmi("r", json!({}), 1024, "a"),
                done,
                migrating,
                migrated,
                failed,
                vmi("p", json!({}), 1024, ""),
            ],
        );
        let per =
            super::super::request::vmi_requests(&json!({"domain": {"memory": {"guest": "1Gi"}}}));
        assert_eq!(s.node("a").unwrap().used.memory_bytes, 4 * per.memory_bytes);
        assert_eq!(s.node("a").unwrap().instances, 4);
        assert_eq!(s.node("b").unwrap().used.memory_bytes, per.memory_bytes);
        assert_eq!(s.node("b").unwrap().used.cpu_millis, 100);
        assert_eq!(s.node("b").unwrap().instances, 0);
    }

    #[test]
    fn the_number_of_feasible_nodes_sought_follows_kube_scheduler() {
        assert_eq!(feasible_nodes_to_find(3), 3);
        assert_eq!(feasible_nodes_to_find(100), 100);
        assert_eq!(feasible_nodes_to_find(200), 100);
        assert_eq!(feasible_nodes_to_find(1000), 420);
        assert_eq!(feasible_nodes_to_find(5000), 500);
        assert_eq!(feasible_nodes_to_find(100_000), 5000);
    }

    #[test]
    fn sampling_rotates_through_every_node() {
        let nodes: Vec<Object> = (0..1000)
            .map(|i| node(&format!("n{i:04}"), "z", 64, 256))
            .collect();
        let mut s = Snapshot::from_objects(&nodes, &[]);
        let mut chosen = HashSet::new();
        for i in 0..3000 {
            let mut req =
                PlacementRequest::for_vmi(&vmi(&format!("v{i}"), json!({}), 64, "")).unwrap();
            req.uid = format!("u{i}");
            let n = s.place(&req).unwrap();
            s.assume(&n, &req);
            chosen.insert(n);
        }
        // Least-allocated within each window of 420 nodes, windows rotating: all nodes get used.
        assert_eq!(chosen.len(), 1000);
    }

    #[test]
    fn assume_accounts_the_placement() {
        let mut s = Snapshot::from_objects(&[node("a", "z1", 1, 8)], &[]);
        let req = PlacementRequest::for_vmi(&vmi("x", json!({"app": "web"}), 512, "")).unwrap();
        assert!(s.assume("a", &req));
        assert!(!s.assume("nowhere", &req));
        let a = s.node("a").unwrap();
        assert_eq!(a.used.memory_bytes, req.requests.memory_bytes);
        assert_eq!(a.instances, 1);
        assert_eq!(s.group_zone.values().sum::<u32>(), 1);
    }
}
