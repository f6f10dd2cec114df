//! Kubernetes core v1 `Affinity` as KubeVirt carries it in `spec.affinity`: node affinity (required
//! and preferred node selector terms) and pod affinity / anti-affinity, where the "pods" are other
//! VirtualMachineInstances matched on their labels. Unknown fields are kept in `extra` maps, as
//! elsewhere in the KubeVirt types; `validate` checks operators, values, weights and topology keys
//! and names every bad field by path.

use crate::status::FieldError;
use crate::validation;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Operators of a node selector requirement.
pub const NODE_SELECTOR_OPERATORS: &[&str] = &["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"];
/// Operators of a label selector requirement.
pub const LABEL_SELECTOR_OPERATORS: &[&str] = &["In", "NotIn", "Exists", "DoesNotExist"];
/// The one field a node selector term's `matchFields` may name.
pub const NODE_NAME_FIELD: &str = "metadata.name";

/// Scheduling constraints of an instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Affinity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_affinity: Option<NodeAffinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_affinity: Option<PodAffinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_anti_affinity: Option<PodAffinity>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Which nodes an instance must, or would rather, run on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeAffinity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_during_scheduling_ignored_during_execution: Option<NodeSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred_during_scheduling_ignored_during_execution: Vec<PreferredSchedulingTerm>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Terms ORed together: a node matches when any term matches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelector {
    #[serde(default)]
    pub node_selector_terms: Vec<NodeSelectorTerm>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Requirements ANDed together, on node labels (`matchExpressions`) and fields (`matchFields`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelectorTerm {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<NodeSelectorRequirement>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_fields: Vec<NodeSelectorRequirement>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `key operator values`: In, NotIn, Exists, DoesNotExist, Gt, Lt (Gt/Lt compare one integer).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelectorRequirement {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A node preference and its weight (1-100).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreferredSchedulingTerm {
    #[serde(default)]
    pub weight: i32,
    #[serde(default)]
    pub preference: NodeSelectorTerm,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Pod affinity or anti-affinity (the same shape): which other instances this one must, or would
/// rather, share (or not share) a topology domain with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodAffinity {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_during_scheduling_ignored_during_execution: Vec<PodAffinityTerm>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred_during_scheduling_ignored_during_execution: Vec<WeightedPodAffinityTerm>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Instances selected by `labelSelector` in `namespaces` (empty: the instance's own namespace),
/// grouped by the node label `topologyKey` (a zone, a host, ...).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodAffinityTerm {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub topology_key: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A pod affinity term and its weight (1-100).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedPodAffinityTerm {
    #[serde(default)]
    pub weight: i32,
    #[serde(default)]
    pub pod_affinity_term: PodAffinityTerm,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `metav1.LabelSelector`: `matchLabels` and `matchExpressions`, ANDed. An empty selector selects
/// everything; an absent one (in a pod affinity term) selects nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `key operator values`: In, NotIn, Exists, DoesNotExist.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl LabelSelector {
    /// True when `labels` satisfy every label and expression (unknown operators match nothing;
    /// validation refuses them).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator.as_str() {
                    "In" => value.is_some_and(|v| r.values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !r.values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }
}

impl NodeSelectorRequirement {
    /// True when the requirement holds for `value` (the node's label or field, if it has one).
    pub fn matches(&self, value: Option<&str>) -> bool {
        let number = |s: &str| s.parse::<i64>().ok();
        match self.operator.as_str() {
            "In" => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            "NotIn" => value.is_none_or(|v| !self.values.iter().any(|x| x == v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            "Gt" | "Lt" => {
                let (Some(have), Some(bound)) = (
                    value.and_then(number),
                    self.values.first().and_then(|b| number(b)),
                ) else {
                    return false;
                };
                if self.operator == "Gt" {
                    have > bound
                } else {
                    have < bound
                }
            }
            _ => false,
        }
    }
}

impl NodeSelectorTerm {
    /// True when every expression holds for the node's labels and every field requirement for its
    /// name. A term with no requirements matches no node, as in Kubernetes.
    pub fn matches(&self, node_name: &str, labels: &BTreeMap<String, String>) -> bool {
        if self.match_expressions.is_empty() && self.match_fields.is_empty() {
            return false;
        }
        self.match_expressions
            .iter()
            .all(|r| r.matches(labels.get(&r.key).map(String::as_str)))
            && self
                .match_fields
                .iter()
                .all(|r| r.key == NODE_NAME_FIELD && r.matches(Some(node_name)))
    }
}

/// Validates `affinity` found at `path` (such as `spec.affinity`), collecting every problem.
pub fn validate(affinity: &Affinity, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(node) = &affinity.node_affinity {
        let p = format!("{path}.nodeAffinity");
        if let Some(required) = &node.required_during_scheduling_ignored_during_execution {
            let p = format!("{p}.requiredDuringSchedulingIgnoredDuringExecution");
            if required.node_selector_terms.is_empty() {
                errors.push(FieldError::required(
                    format!("{p}.nodeSelectorTerms"),
                    "must have at least one node selector term",
                ));
            }
            for (i, term) in required.node_selector_terms.iter().enumerate() {
                validate_node_term(term, &format!("{p}.nodeSelectorTerms[{i}]"), &mut errors);
            }
        }
        let p = format!("{p}.preferredDuringSchedulingIgnoredDuringExecution");
        for (i, pref) in node
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .enumerate()
        {
            let p = format!("{p}[{i}]");
            validate_weight(pref.weight, &p, &mut errors);
            validate_node_term(&pref.preference, &format!("{p}.preference"), &mut errors);
        }
    }
    for (field, rules) in [
        ("podAffinity", &affinity.pod_affinity),
        ("podAntiAffinity", &affinity.pod_anti_affinity),
    ] {
        let Some(rules) = rules else { continue };
        let p = format!("{path}.{field}");
        for (i, term) in rules
            .required_during_scheduling_ignored_during_execution
            .iter()
            .enumerate()
        {
            let p = format!("{p}.requiredDuringSchedulingIgnoredDuringExecution[{i}]");
            validate_pod_term(term, &p, &mut errors);
        }
        for (i, weighted) in rules
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .enumerate()
        {
            let p = format!("{p}.preferredDuringSchedulingIgnoredDuringExecution[{i}]");
            validate_weight(weighted.weight, &p, &mut errors);
            validate_pod_term(
                &weighted.pod_affinity_term,
                &format!("{p}.podAffinityTerm"),
                &mut errors,
            );
        }
    }
    errors
}

fn validate_weight(weight: i32, path: &str, errors: &mut Vec<FieldError>) {
    if !(1..=100).contains(&weight) {
        errors.push(FieldError::invalid(
            format!("{path}.weight"),
            weight.to_string(),
            "must be in the range 1-100",
        ));
    }
}

fn validate_node_term(term: &NodeSelectorTerm, path: &str, errors: &mut Vec<FieldError>) {
    for (i, r) in term.match_expressions.iter().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        errors.extend(validation::qualified_name(&format!("{p}.key"), &r.key));
        validate_node_requirement(r, &p, errors);
    }
    for (i, r) in term.match_fields.iter().enumerate() {
        let p = format!("{path}.matchFields[{i}]");
        if r.key != NODE_NAME_FIELD {
            errors.push(FieldError::not_supported(
                format!("{p}.key"),
                &r.key,
                &[NODE_NAME_FIELD],
            ));
        }
        if !matches!(r.operator.as_str(), "In" | "NotIn") {
            errors.push(FieldError::not_supported(
                format!("{p}.operator"),
                &r.operator,
                &["In", "NotIn"],
            ));
        } else if r.values.len() != 1 {
            errors.push(FieldError::invalid(
                format!("{p}.values"),
                r.values.join(","),
                "must have one element",
            ));
        }
    }
}

fn validate_node_requirement(r: &NodeSelectorRequirement, p: &str, errors: &mut Vec<FieldError>) {
    let values = format!("{p}.values");
    match r.operator.as_str() {
        "In" | "NotIn" if r.values.is_empty() => errors.push(FieldError::required(
            values,
            "must be specified when operator is In or NotIn",
        )),
        "Exists" | "DoesNotExist" if !r.values.is_empty() => errors.push(FieldError::forbidden(
            values,
            "may not be specified when operator is Exists or DoesNotExist",
        )),
        "Gt" | "Lt" => {
            if r.values.len() != 1 {
                errors.push(FieldError::required(
                    values,
                    "must be specified single value when operator is Gt or Lt",
                ));
            } else if r.values[0].parse::<i64>().is_err() {
                errors.push(FieldError::invalid(
                    format!("{values}[0]"),
                    &r.values[0],
                    "must be an integer",
                ));
            }
        }
        op if !NODE_SELECTOR_OPERATORS.contains(&op) => errors.push(FieldError::not_supported(
            format!("{p}.operator"),
            op,
            NODE_SELECTOR_OPERATORS,
        )),
        _ => {}
    }
}

fn validate_pod_term(term: &PodAffinityTerm, path: &str, errors: &mut Vec<FieldError>) {
    if term.topology_key.is_empty() {
        errors.push(FieldError::required(
            format!("{path}.topologyKey"),
            "can not be empty",
        ));
    } else {
        errors.extend(validation::qualified_name(
            &format!("{path}.topologyKey"),
            &term.topology_key,
        ));
    }
    for (i, ns) in term.namespaces.iter().enumerate() {
        errors.extend(validation::dns1123_label(
            &format!("{path}.namespaces[{i}]"),
            ns,
        ));
    }
    if let Some(selector) = &term.label_selector {
        validate_label_selector(selector, &format!("{path}.labelSelector"), errors);
    }
}

/// Validates a `metav1.LabelSelector` at `path`.
pub fn validate_label_selector(s: &LabelSelector, path: &str, errors: &mut Vec<FieldError>) {
    for (k, v) in &s.match_labels {
        let p = format!("{path}.matchLabels[{k}]");
        errors.extend(validation::qualified_name(&p, k));
        errors.extend(validation::label_value(&p, v));
    }
    for (i, r) in s.match_expressions.iter().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        errors.extend(validation::qualified_name(&format!("{p}.key"), &r.key));
        match r.operator.as_str() {
            "In" | "NotIn" if r.values.is_empty() => errors.push(FieldError::required(
                format!("{p}.values"),
                "must be specified when operator is In or NotIn",
            )),
            "Exists" | "DoesNotExist" if !r.values.is_empty() => {
                errors.push(FieldError::forbidden(
                    format!("{p}.values"),
                    "may not be specified when operator is Exists or DoesNotExist",
                ))
            }
            op if !LABEL_SELECTOR_OPERATORS.contains(&op) => errors.push(
                FieldError::not_supported(format!("{p}.operator"), op, LABEL_SELECTOR_OPERATORS),
            ),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::kubevirt::{decode_at, validate_vmi_spec, VmiSpec};
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn spec_with(affinity: Value) -> Value {
        json!({"domain": {"memory": {"guest": "128Mi"}}, "affinity": affinity})
    }

    #[test]
    fn decodes_the_kubernetes_shape_and_keeps_unknown_fields() {
        let value = spec_with(json!({
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}],
                     "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]},
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 10, "preference": {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}}]
            },
            "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "topology.kubernetes.io/zone",
                 "namespaceSelector": {}}]},
            "futureAffinity": {"x": 1}
        }));
        let spec: VmiSpec = decode_at(&value, "spec").unwrap();
        let a = spec.affinity.clone().unwrap();
        let anti = &a
            .pod_anti_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution[0];
        assert_eq!(anti.topology_key, "topology.kubernetes.io/zone");
        assert!(anti.extra.contains_key("namespaceSelector"));
        assert_eq!(a.extra["futureAffinity"]["x"], 1);
        assert_eq!(
            serde_json::to_value(&spec).unwrap()["affinity"],
            value["affinity"]
        );
        assert!(validate_vmi_spec(&spec, "spec").is_empty());
    }

    #[test]
    fn a_wrong_type_is_named_by_path() {
        let value = spec_with(json!({"nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": "heavy"}]}}));
        let e = decode_at::<VmiSpec>(&value, "spec").unwrap_err();
        assert_eq!(
            e.path,
            "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight"
        );
        let e = decode_at::<VmiSpec>(&spec_with(json!("near-db")), "spec").unwrap_err();
        assert_eq!(e.path, "spec.affinity");
    }

    #[test]
    fn every_bad_field_is_named() {
        let value = spec_with(json!({
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [
                        {"key": "disk", "operator": "Near", "values": ["ssd"]},
                        {"key": "disk", "operator": "In"},
                        {"key": "cores", "operator": "Gt", "values": ["many"]}],
                     "matchFields": [{"key": "metadata.uid", "operator": "In", "values": ["x"]}]}]},
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 0, "preference": {"matchExpressions": [{"key": "gpu", "operator": "Exists", "values": ["a"]}]}}]
            },
            "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchExpressions": [{"key": "app", "operator": "Equals"}]}}]},
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 101, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]}
        }));
        let spec: VmiSpec = decode_at(&value, "spec").unwrap();
        let errors = validate_vmi_spec(&spec, "spec");
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        let req = "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]";
        for expected in [
            format!("{req}.matchExpressions[0].operator"),
            format!("{req}.matchExpressions[1].values"),
            format!("{req}.matchExpressions[2].values[0]"),
            format!("{req}.matchFields[0].key"),
            "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight".into(),
            "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].preference.matchExpressions[0].values".into(),
            "spec.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey".into(),
            "spec.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].labelSelector.matchExpressions[0].operator".into(),
            "spec.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight".into(),
        ] {
            assert!(paths.contains(&expected.as_str()), "{expected} missing from {paths:?}");
        }
        assert_eq!(errors.len(), 9, "{paths:?}");
    }

    #[test]
    fn node_requirements_match_like_kubernetes() {
        let r = |op: &str, values: &[&str]| NodeSelectorRequirement {
            key: "k".into(),
            operator: op.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
            extra: Map::new(),
        };
        assert!(r("In", &["a", "b"]).matches(Some("b")));
        assert!(!r("In", &["a"]).matches(None));
        assert!(r("NotIn", &["a"]).matches(None));
        assert!(!r("NotIn", &["a"]).matches(Some("a")));
        assert!(r("Exists", &[]).matches(Some("")));
        assert!(r("DoesNotExist", &[]).matches(None));
        assert!(r("Gt", &["4"]).matches(Some("8")));
        assert!(!r("Gt", &["4"]).matches(Some("4")));
        assert!(r("Lt", &["4"]).matches(Some("-1")));
        assert!(!r("Lt", &["4"]).matches(Some("x")));
        let term = NodeSelectorTerm {
            match_expressions: vec![r("In", &["a"])],
            match_fields: vec![NodeSelectorRequirement {
                key: NODE_NAME_FIELD.into(),
                operator: "In".into(),
                values: vec!["n1".into()],
                extra: Map::new(),
            }],
            extra: Map::new(),
        };
        assert!(term.matches("n1", &labels(&[("k", "a")])));
        assert!(!term.matches("n2", &labels(&[("k", "a")])));
        assert!(!NodeSelectorTerm::default().matches("n1", &labels(&[])));
    }

    #[test]
    fn label_selectors_match_labels_and_expressions() {
        let s: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "db"},
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["test"]},
                                 {"key": "owner", "operator": "Exists"}]
        }))
        .unwrap();
        assert!(s.matches(&labels(&[("app", "db"), ("owner", "x")])));
        assert!(!s.matches(&labels(&[("app", "db"), ("owner", "x"), ("tier", "test")])));
        assert!(!s.matches(&labels(&[("app", "db")])));
        assert!(LabelSelector::default().matches(&labels(&[])));
    }
}
