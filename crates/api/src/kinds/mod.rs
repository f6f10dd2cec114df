//! The kind registry: every resource the API serves is one `KindInfo` entry here, carrying its names,
//! scope, printer columns, selectable fields and validation. Adding a kind is one entry plus its module.

pub mod affinity;
pub mod cdi;
pub mod coordination;
pub mod core;
pub mod hotplug;
pub mod instancetype;
pub mod kubevirt;
pub mod migration;
pub mod network;
pub mod service;
pub mod settings;
pub mod snapshot;
pub mod storage;

use crate::object::Object;
use crate::status::FieldError;
use serde_json::Value;

/// How one table column reads its cell from an object.
pub type CellFn = fn(&Object) -> Value;

/// A printer column, served in `Table` responses for kubectl and `vmo get`.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    /// `string`, `integer`, `number`, `boolean` or `date`.
    pub kind: &'static str,
    /// 0 shows always; 1 only with `-o wide`.
    pub priority: u8,
    pub description: &'static str,
    pub cell: CellFn,
}

/// Validation of a whole object (after metadata checks), returning every bad field.
pub type ValidateFn = fn(&Object) -> Vec<FieldError>;
/// Validation of an update against the stored object (immutable fields): `(old, new)`.
pub type ValidateUpdateFn = fn(&Object, &Object) -> Vec<FieldError>;

/// Normalization applied to every write before validation.
pub type PrepareFn = fn(&mut Object);

/// Leaves the object as it is.
pub fn no_prepare(_: &mut Object) {}

/// Everything the API machinery needs to serve one kind.
#[derive(Debug, Clone, Copy)]
pub struct KindInfo {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub namespaced: bool,
    /// Spec and status are written separately (`/status`); status is ignored on the main resource.
    pub status_subresource: bool,
    /// Names follow DNS-1123 label rules (63 chars, no dots) instead of subdomain rules.
    pub name_is_label: bool,
    /// Fields selectable with `fieldSelector` beyond `metadata.name` and `metadata.namespace`.
    pub field_selectors: &'static [&'static str],
    pub columns: &'static [Column],
    pub validate: ValidateFn,
    pub validate_update: ValidateUpdateFn,
    /// Normalizes an incoming object before validation (e.g. folds a Secret's `stringData` into `data`).
    pub prepare: PrepareFn,
}

impl KindInfo {
    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural.group` as Kubernetes names resources in messages (`virtualmachines.kubevirt.io`).
    pub fn resource_name(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// True when `field` may be used in a field selector on this kind.
    pub fn selectable(&self, field: &str) -> bool {
        matches!(field, "metadata.name" | "metadata.namespace")
            || self.field_selectors.contains(&field)
    }
}

/// No extra checks.
pub fn no_validation(_: &Object) -> Vec<FieldError> {
    Vec::new()
}

/// No immutable fields.
pub fn no_update_validation(_: &Object, _: &Object) -> Vec<FieldError> {
    Vec::new()
}

/// The Name column every kind starts with.
pub const NAME_COLUMN: Column = Column {
    name: "Name",
    kind: "string",
    priority: 0,
    description: "Name must be unique within a namespace.",
    cell: |o| Value::String(o.metadata.name.clone()),
};

/// The Age column.
pub const AGE_COLUMN: Column = Column {
    name: "Age",
    kind: "date",
    priority: 0,
    description: "Time since the object was created.",
    cell: |o| {
        Value::String(crate::meta::human_age(
            o.metadata.creation_timestamp.as_deref(),
        ))
    },
};

/// All kinds vmo serves, in one list.
#[derive(Debug, Clone)]
pub struct Registry {
    kinds: Vec<KindInfo>,
}

impl Registry {
    /// The built-in kinds.
    pub fn builtin() -> Self {
        let mut kinds = Vec::new();
        kinds.extend(core::kinds());
        kinds.extend(coordination::kinds());
        kinds.extend(kubevirt::kinds());
        kinds.extend(instancetype::kinds());
        kinds.extend(migration::kinds());
        kinds.extend(settings::kinds());
        kinds.extend(storage::kinds());
        kinds.extend(cdi::kinds());
        kinds.extend(network::kinds());
        kinds.extend(service::kinds());
        kinds.extend(snapshot::kinds());
        Self { kinds }
    }

    /// Every kind.
    pub fn all(&self) -> &[KindInfo] {
        &self.kinds
    }

    /// The kind served at `group/version/plural`.
    pub fn by_resource(&self, group: &str, version: &str, plural: &str) -> Option<&KindInfo> {
        self.kinds
            .iter()
            .find(|k| k.group == group && k.version == version && k.plural == plural)
    }

    /// The kind named by `apiVersion` and `kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&KindInfo> {
        self.kinds
            .iter()
            .find(|k| k.api_version() == api_version && k.kind == kind)
    }

    /// Resolves what a user typed: plural, singular, short name or kind, case-insensitively, optionally
    /// qualified by group (`vm`, `VirtualMachine`, `virtualmachines.kubevirt.io`).
    pub fn resolve(&self, name: &str) -> Option<&KindInfo> {
        let lower = name.to_ascii_lowercase();
        let (base, group) = match lower.split_once('.') {
            Some((b, g)) => (b.to_string(), Some(g.to_string())),
            None => (lower.clone(), None),
        };
        self.kinds.iter().find(|k| {
            let names_match = k.plural == base
                || k.singular == base
                || k.kind.eq_ignore_ascii_case(&base)
                || k.short_names.contains(&base.as_str());
            names_match && group.as_deref().is_none_or(|g| k.group == g)
        })
    }

    /// The kinds served at one group-version.
    pub fn in_group_version(&self, group: &str, version: &str) -> Vec<&KindInfo> {
        self.kinds
            .iter()
            .filter(|k| k.group == group && k.version == version)
            .collect()
    }

    /// The groups and their versions, core first.
    pub fn group_versions(&self) -> Vec<(&'static str, &'static str)> {
        let mut out: Vec<(&str, &str)> = Vec::new();
        for k in &self.kinds {
            if !out.contains(&(k.group, k.version)) {
                out.push((k.group, k.version));
            }
        }
        out
    }
}

/// Reads a nested value by JSON pointer-like dotted path, for columns.
pub fn at<'a>(o: &'a Object, path: &[&str]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter().try_fold(o.body.get(*first)?, |v, k| v.get(*k))
}

/// A string cell, or empty.
pub fn text_at(o: &Object, path: &[&str]) -> Value {
    match at(o, path) {
        Some(Value::String(s)) => Value::String(s.clone()),
        Some(Value::Null) | None => Value::String(String::new()),
        Some(other) => Value::String(other.to_string()),
    }
}

/// The status of the condition of the given type, as a cell.
pub fn condition_status(o: &Object, condition: &str) -> Value {
    let status = at(o, &["status", "conditions"])
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some(condition))
        })
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
        .unwrap_or("");
    Value::String(status.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_every_spelling() {
        let r = Registry::builtin();
        for name in [
            "vm",
            "vms",
            "virtualmachine",
            "VirtualMachine",
            "virtualmachines.kubevirt.io",
        ] {
            assert_eq!(
                r.resolve(name).map(|k| k.kind),
                Some("VirtualMachine"),
                "{name}"
            );
        }
        assert_eq!(
            r.resolve("vmi").map(|k| k.kind),
            Some("VirtualMachineInstance")
        );
        assert_eq!(r.resolve("ns").map(|k| k.kind), Some("Namespace"));
        assert_eq!(r.resolve("cm").map(|k| k.kind), Some("ConfigMap"));
        assert!(r.resolve("virtualmachines.example.com").is_none());
        assert!(r.resolve("nonsense").is_none());
    }

    #[test]
    fn names_are_unique() {
        let r = Registry::builtin();
        let mut seen = std::collections::HashSet::new();
        for k in r.all() {
            for n in [k.plural, k.singular].iter().chain(k.short_names) {
                assert!(seen.insert((k.group, *n)), "{n} registered twice");
            }
        }
    }
}
