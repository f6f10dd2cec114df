//! Scores: among the feasible nodes, which one an instance should go to. Each score is 0-100 and
//! weighted as kube-scheduler weighs its plugins:
//!
//! | score | weight | higher for |
//! |---|---|---|
//! | least allocated | 1 | more CPU and memory left after placing (the mean of both fractions) |
//! | preferred node affinity | 2 | more weight of matching `preferredDuringScheduling...` node terms |
//! | preferred VM affinity | 2 | more instances a preferred affinity term selects in the node's domain, fewer for anti-affinity |
//! | zone spreading | 2 | fewer instances of the same group (namespace and `app` label) in the node's zone, then on the node |
//!
//! The highest sum wins; ties go to the node whose name sorts first. Pure: no IO, no clock.

use super::filter::Prepared;
use super::snapshot::{NodeFacts, Snapshot};

pub const LEAST_ALLOCATED_WEIGHT: f64 = 1.0;
pub const NODE_AFFINITY_WEIGHT: f64 = 2.0;
pub const VM_AFFINITY_WEIGHT: f64 = 2.0;
pub const SPREAD_WEIGHT: f64 = 2.0;
/// How much more an instance of the group in the node's zone counts than one on the node itself.
const ZONE_OVER_NODE: i64 = 4;

/// The least-allocated score: the mean of the CPU and memory fractions left free after placing,
/// times 100.
pub fn least_allocated(node: &NodeFacts, cpu_millis: u64, memory_bytes: u64) -> f64 {
    let left = |alloc: u64, used: u64, wanted: u64| {
        if alloc == 0 {
            0.0
        } else {
            alloc.saturating_sub(used + wanted) as f64 / alloc as f64
        }
    };
    let cpu = left(
        node.allocatable.cpu_millis,
        node.used.cpu_millis,
        cpu_millis,
    );
    let memory = left(
        node.allocatable.memory_bytes,
        node.used.memory_bytes,
        memory_bytes,
    );
    (cpu + memory) * 50.0
}

/// Scales raw scores to 0-100: `higher_is_better` maps the maximum to 100, otherwise the minimum.
/// All equal: all 0 (no preference).
fn normalize(raw: &[i64], higher_is_better: bool) -> Vec<f64> {
    let (min, max) = raw
        .iter()
        .fold((i64::MAX, i64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    if raw.is_empty() || min == max {
        return vec![0.0; raw.len()];
    }
    let span = (max - min) as f64;
    raw.iter()
        .map(|&r| {
            let above_min = (r - min) as f64 / span * 100.0;
            if higher_is_better {
                above_min
            } else {
                100.0 - above_min
            }
        })
        .collect()
}

/// The raw preferred node affinity of one node: the sum of the weights of matching terms.
fn node_preference(node: &NodeFacts, p: &Prepared) -> i64 {
    p.req
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .map(|n| {
            n.preferred_during_scheduling_ignored_during_execution
                .iter()
                .filter(|t| t.preference.matches(&node.name, &node.labels))
                .map(|t| i64::from(t.weight))
                .sum()
        })
        .unwrap_or(0)
}

/// The raw preferred VM affinity of one node: weight x matching instances in its domain, summed
/// (anti-affinity terms carry negative weights).
fn vm_preference(node: &NodeFacts, p: &Prepared) -> i64 {
    p.preferred
        .iter()
        .map(|(key, weight, domains)| {
            node.labels
                .get(key)
                .and_then(|v| domains.get(v))
                .map_or(0, |count| weight * count)
        })
        .sum()
}

/// The raw spreading count of one node for the request's group (lower is better), from the
/// group's instances per zone and per node ([`Snapshot::group_counts`]).
fn spread(snapshot: &Snapshot, zone_counts: &[i64], node_counts: &[u32], index: u32) -> i64 {
    let node = &snapshot.nodes[index as usize];
    zone_counts[node.zone as usize] * ZONE_OVER_NODE + i64::from(node_counts[index as usize])
}

/// The best of the `feasible` node indices (not empty) for the prepared request.
pub(super) fn best(snapshot: &Snapshot, p: &Prepared, feasible: &[u32]) -> u32 {
    if feasible.len() == 1 {
        return feasible[0];
    }
    let wants = &p.req.requests;
    let mut totals: Vec<f64> = feasible
        .iter()
        .map(|&i| {
            LEAST_ALLOCATED_WEIGHT
                * least_allocated(
                    &snapshot.nodes[i as usize],
                    wants.cpu_millis,
                    wants.memory_bytes,
                )
        })
        .collect();
    let mut add = |raw: Vec<i64>, weight: f64, higher_is_better: bool| {
        for (total, score) in totals.iter_mut().zip(normalize(&raw, higher_is_better)) {
            *total += weight * score;
        }
    };
    let has_node_preferences = p
        .req
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .is_some_and(|n| {
            !n.preferred_during_scheduling_ignored_during_execution
                .is_empty()
        });
    if has_node_preferences {
        let raw = feasible
            .iter()
            .map(|&i| node_preference(&snapshot.nodes[i as usize], p))
            .collect();
        add(raw, NODE_AFFINITY_WEIGHT, true);
    }
    if !p.preferred.is_empty() {
        let raw = feasible
            .iter()
            .map(|&i| vm_preference(&snapshot.nodes[i as usize], p))
            .collect();
        add(raw, VM_AFFINITY_WEIGHT, true);
    }
    if let Some(group) = p.spread_group {
        let mut zone_counts = vec![0i64; snapshot.zones.len()];
        for (zone, count) in zone_counts.iter_mut().enumerate() {
            *count = snapshot
                .group_zone
                .get(&(group, zone as u32))
                .map_or(0, |c| i64::from(*c));
        }
        let node_counts = snapshot.group_counts(group);
        let raw = feasible
            .iter()
            .map(|&i| spread(snapshot, &zone_counts, &node_counts, i))
            .collect();
        add(raw, SPREAD_WEIGHT, false);
    }
    let mut best = 0;
    for k in 1..feasible.len() {
        let (a, b) = (totals[k], totals[best]);
        let name = |k: usize| &snapshot.nodes[feasible[k] as usize].name;
        if a > b || (a == b && name(k) < name(best)) {
            best = k;
        }
    }
    feasible[best]
}

#[cfg(test)]
mod tests {
    use super::super::request::PlacementRequest;
    use super::super::snapshot::tests::{node, request, vmi};
    use super::*;
    use serde_json::{json, Value};
    use vmo_api::Object;

    fn place(nodes: &[Object], vmis: &[Object], req: &PlacementRequest) -> String {
        Snapshot::from_objects(nodes, vmis).place(req).unwrap()
    }

    fn labeled(name: &str, zone: &str, labels: Value) -> Object {
        let mut n = node(name, zone, 4, 8);
        for (k, v) in labels.as_object().unwrap() {
            n.metadata
                .labels
                .insert(k.clone(), v.as_str().unwrap().into());
        }
        n
    }

    #[test]
    fn least_allocated_prefers_the_emptier_node() {
        let nodes = [node("a", "z1", 4, 8), node("b", "z2", 4, 8)];
        let req = request(json!({}), json!({}));
        assert_eq!(place(&nodes, &[vmi("x", json!({}), 2048, "a")], &req), "b");
        assert_eq!(place(&nodes, &[vmi("x", json!({}), 2048, "b")], &req), "a");
        let f = NodeFacts::from_node(&nodes[0]);
        assert_eq!(least_allocated(&f, 0, 0), 100.0);
        assert_eq!(least_allocated(&f, 2000, 4 << 30), 50.0);
    }

    #[test]
    fn ties_go_to_the_first_name() {
        let nodes = [
            node("c", "z1", 4, 8),
            node("a", "z1", 4, 8),
            node("b", "z1", 4, 8),
        ];
        assert_eq!(place(&nodes, &[], &request(json!({}), json!({}))), "a");
    }

    #[test]
    fn preferred_node_affinity_weights_add_up() {
        let nodes = [
            labeled("a", "z1", json!({"disk": "ssd"})),
            labeled("b", "z1", json!({"gpu": "yes"})),
            labeled("c", "z1", json!({"disk": "ssd", "gpu": "yes"})),
        ];
        let prefer = |ssd: i32, gpu: i32| {
            request(
                json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": ssd, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}},
                    {"weight": gpu, "preference": {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}}]}}}),
                json!({}),
            )
        };
        assert_eq!(place(&nodes, &[], &prefer(10, 5)), "c");
        // c is fuller than b, but its preference still wins.
        let busy_c = vmi("x", json!({}), 2048, "c");
        assert_eq!(
            place(&nodes, std::slice::from_ref(&busy_c), &prefer(50, 50)),
            "c"
        );
        assert_eq!(place(&nodes[..2], &[], &prefer(10, 50)), "b");
    }

    #[test]
    fn preferred_vm_affinity_and_anti_affinity() {
        let nodes = [
            node("a", "z1", 4, 8),
            node("b", "z2", 4, 8),
            node("c", "z3", 4, 8),
        ];
        let cache = vmi("cache", json!({"role": "cache"}), 256, "b");
        let noisy = vmi("noisy", json!({"role": "batch"}), 256, "a");
        let term = |selector: &str| {
            json!({"labelSelector": {"matchLabels": {"role": selector}},
                                           "topologyKey": "topology.kubernetes.io/zone"})
        };
        let req = request(
            json!({"affinity": {
                "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 100, "podAffinityTerm": term("cache")}]},
                "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 100, "podAffinityTerm": term("batch")}]}}}),
            json!({}),
        );
        assert_eq!(place(&nodes, &[cache.clone(), noisy.clone()], &req), "b");
        let away = request(
            json!({"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": term("batch")}]}}}),
            json!({}),
        );
        // a holds the batch instance: b (fuller than c with the cache) loses to c on resources.
        assert_eq!(place(&nodes, &[cache, noisy], &away), "c");
    }

    #[test]
    fn instances_of_one_app_spread_across_zones() {
        let nodes = [
            node("a1", "z1", 16, 64),
            node("a2", "z1", 16, 64),
            node("b1", "z2", 16, 64),
            node("c1", "z3", 16, 64),
        ];
        let mut s = Snapshot::from_objects(&nodes, &[]);
        let mut zones = Vec::new();
        for i in 0..3 {
            let mut req = request(json!({}), json!({"app": "web"}));
            req.uid = format!("web-{i}");
            let n = s.place(&req).unwrap();
            s.assume(&n, &req);
            zones.push(s.node(&n).unwrap().labels["topology.kubernetes.io/zone"].clone());
        }
        zones.sort();
        assert_eq!(zones, ["z1", "z2", "z3"]);
        // Another app in the same namespace is spread on its own; the same app name in another
        // namespace is another group.
        let mut other = request(json!({}), json!({"app": "db"}));
        other.uid = "db-0".into();
        let first = s.place(&other).unwrap();
        assert_eq!(first, "a2", "the empty node of z1 wins on resources");
        let mut elsewhere = request(json!({}), json!({"app": "web"}));
        elsewhere.namespace = "other".into();
        assert!(s.existing_group(&elsewhere).is_none());
    }

    #[test]
    fn normalization_maps_the_best_raw_value_to_100() {
        assert_eq!(normalize(&[0, 5, 10], true), vec![0.0, 50.0, 100.0]);
        assert_eq!(normalize(&[0, 5, 10], false), vec![100.0, 50.0, 0.0]);
        assert_eq!(normalize(&[3, 3], true), vec![0.0, 0.0]);
    }
}
