//! `instancetype.kubevirt.io/v1beta1` VirtualMachineInstancetype (namespaced) and
//! VirtualMachineClusterInstancetype: named VM sizes, as KubeVirt's instance types (and vSphere's
//! VM templates' hardware) give them. A VM names one in `spec.instancetype` and leaves the vCPUs
//! and memory out of its template; the VM controller fills them in when it creates the instance,
//! so a size is chosen once, by name, and changed for every VM using it in one place (taking
//! effect at each VM's next start).

use super::{at, no_prepare, no_update_validation, Column, KindInfo, AGE_COLUMN, NAME_COLUMN};
use crate::object::Object;
use crate::status::FieldError;
use crate::validation;
use serde_json::{json, Value};

/// The instance type kinds a VM's `spec.instancetype.kind` may name (the first is the default).
pub const KINDS: &[&str] = &[
    "VirtualMachineClusterInstancetype",
    "VirtualMachineInstancetype",
];

/// The sizes a new cluster gets (name, vCPUs, memory): the u1 ("universal") series.
pub const COMMON: &[(&str, u32, &str)] = &[
    ("u1.nano", 1, "512Mi"),
    ("u1.micro", 1, "1Gi"),
    ("u1.small", 1, "2Gi"),
    ("u1.medium", 1, "4Gi"),
    ("u1.2xmedium", 2, "4Gi"),
    ("u1.large", 2, "8Gi"),
    ("u1.xlarge", 4, "16Gi"),
    ("u1.2xlarge", 8, "32Gi"),
];

const CPU_COLUMN: Column = Column {
    name: "CPUs",
    kind: "integer",
    priority: 0,
    description: "Virtual CPUs of a VM of this size.",
    cell: |o| {
        at(o, &["spec", "cpu", "guest"])
            .cloned()
            .unwrap_or(Value::Null)
    },
};

const MEMORY_COLUMN: Column = Column {
    name: "Memory",
    kind: "string",
    priority: 0,
    description: "Guest memory of a VM of this size.",
    cell: |o| {
        at(o, &["spec", "memory", "guest"])
            .cloned()
            .unwrap_or(Value::Null)
    },
};

pub(super) fn kinds() -> Vec<KindInfo> {
    let namespaced = KindInfo {
        group: "instancetype.kubevirt.io",
        version: "v1beta1",
        kind: "VirtualMachineInstancetype",
        plural: "virtualmachineinstancetypes",
        singular: "virtualmachineinstancetype",
        short_names: &["vminstancetype", "vmit"],
        categories: &["all"],
        namespaced: true,
        status_subresource: false,
        name_is_label: false,
        field_selectors: &[],
        columns: &[NAME_COLUMN, CPU_COLUMN, MEMORY_COLUMN, AGE_COLUMN],
        validate: validate_instancetype,
        validate_update: no_update_validation,
        prepare: no_prepare,
    };
    let cluster = KindInfo {
        kind: "VirtualMachineClusterInstancetype",
        plural: "virtualmachineclusterinstancetypes",
        singular: "virtualmachineclusterinstancetype",
        short_names: &["vmclusterinstancetype", "vmcit"],
        namespaced: false,
        ..namespaced
    };
    vec![namespaced, cluster]
}

fn validate_instancetype(o: &Object) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match at(o, &["spec", "cpu", "guest"]) {
        None => errors.push(FieldError::required(
            "spec.cpu.guest",
            "the number of vCPUs",
        )),
        Some(v) if !v.as_u64().is_some_and(|n| (1..=512).contains(&n)) => {
            errors.push(FieldError::invalid(
                "spec.cpu.guest",
                v.to_string(),
                "must be a whole number of vCPUs from 1 to 512",
            ))
        }
        Some(_) => {}
    }
    match at(o, &["spec", "memory", "guest"]) {
        None => errors.push(FieldError::required(
            "spec.memory.guest",
            "the guest's memory",
        )),
        Some(Value::String(q)) => {
            validation::positive_quantity("spec.memory.guest", q, &mut errors);
        }
        Some(v) => errors.push(FieldError::invalid(
            "spec.memory.guest",
            v.to_string(),
            "must be a quantity such as 2Gi",
        )),
    }
    errors
}

/// The instance type a VM's spec names: (kind, name), the kind defaulting as KubeVirt's does.
pub fn reference(vm_spec: &Value) -> Option<(&str, &str)> {
    let matcher = vm_spec.get("instancetype")?;
    let name = matcher.get("name")?.as_str()?;
    let kind = matcher
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or(KINDS[0]);
    Some((kind, name))
}

/// Problems with a VM's `spec.instancetype`, given its template's domain: the kind must be known
/// and the template may not decide what the instance type does.
pub fn validate_reference(vm_spec: &Value) -> Vec<FieldError> {
    let Some(matcher) = vm_spec.get("instancetype") else {
        return Vec::new();
    };
    let mut errors = Vec::new();
    if matcher
        .get("name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        errors.push(FieldError::required(
            "spec.instancetype.name",
            "the instance type's name",
        ));
    }
    if let Some(kind) = matcher.get("kind") {
        let kind = kind.as_str().unwrap_or_default();
        if !KINDS.contains(&kind) {
            errors.push(FieldError::not_supported(
                "spec.instancetype.kind",
                kind,
                KINDS,
            ));
        }
    }
    let domain = &vm_spec["template"]["spec"]["domain"];
    if !domain["cpu"].is_null() {
        errors.push(FieldError::invalid(
            "spec.template.spec.domain.cpu",
            domain["cpu"].to_string(),
            "must not be set: the instance type in spec.instancetype decides the vCPUs",
        ));
    }
    if !domain["memory"]["guest"].is_null() {
        errors.push(FieldError::invalid(
            "spec.template.spec.domain.memory.guest",
            domain["memory"]["guest"].to_string(),
            "must not be set: the instance type in spec.instancetype decides the memory",
        ));
    }
    errors
}

/// Fills an instance's spec with the instance type's vCPUs (as sockets, one core and thread
/// each) and memory.
pub fn apply(instance_spec: &mut Value, instancetype: &Object) {
    let cpus = at(instancetype, &["spec", "cpu", "guest"])
        .cloned()
        .unwrap_or(json!(1));
    let memory = at(instancetype, &["spec", "memory", "guest"])
        .cloned()
        .unwrap_or(Value::Null);
    let domain = &mut instance_spec["domain"];
    domain["cpu"] = json!({"sockets": cpus, "cores": 1, "threads": 1});
    domain["memory"]["guest"] = memory;
}

/// The object for one of [`COMMON`]'s sizes.
pub fn common(name: &str, cpus: u32, memory: &str) -> Value {
    json!({
        "apiVersion": "instancetype.kubevirt.io/v1beta1",
        "kind": "VirtualMachineClusterInstancetype",
        "metadata": {"name": name, "labels": {"instancetype.kubevirt.io/vendor": "vmo"}},
        "spec": {"cpu": {"guest": cpus}, "memory": {"guest": memory}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(v: Value) -> Object {
        Object::from_value(v).unwrap()
    }

    #[test]
    fn a_size_needs_vcpus_and_memory() {
        let ok = object(common("u1.small", 1, "2Gi"));
        assert!(validate_instancetype(&ok).is_empty());
        let bad = object(
            json!({"metadata": {"name": "x"}, "spec": {"cpu": {"guest": 0},
            "memory": {"guest": "lots"}}}),
        );
        let fields: Vec<String> = validate_instancetype(&bad)
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(fields, ["spec.cpu.guest", "spec.memory.guest"]);
    }

    #[test]
    fn a_vm_naming_a_size_may_not_set_cpu_or_memory_itself() {
        let spec = json!({"instancetype": {"name": "u1.small", "kind": "Bogus"},
            "template": {"spec": {"domain": {"cpu": {"cores": 2}, "memory": {"guest": "1Gi"}}}}});
        let fields: Vec<String> = validate_reference(&spec)
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(
            fields,
            [
                "spec.instancetype.kind",
                "spec.template.spec.domain.cpu",
                "spec.template.spec.domain.memory.guest"
            ]
        );
        assert_eq!(reference(&spec), Some(("Bogus", "u1.small")));
    }

    #[test]
    fn applying_a_size_sets_the_instances_cpu_and_memory() {
        let mut spec = json!({"domain": {"devices": {}}});
        apply(&mut spec, &object(common("u1.large", 2, "8Gi")));
        assert_eq!(spec["domain"]["cpu"]["sockets"], 2);
        assert_eq!(spec["domain"]["memory"]["guest"], "8Gi");
        assert_eq!(
            reference(&json!({"instancetype": {"name": "n"}})),
            Some((KINDS[0], "n"))
        );
    }
}
