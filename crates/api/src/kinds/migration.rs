//! Live migration's API: `kubevirt.io/v1` VirtualMachineInstanceMigration (KubeVirt's schema, so
//! `virtctl migrate`-style YAML carries over), the `status.migrationState` a migrating instance
//! carries, and the cluster-wide migration settings with KubeVirt's field names and defaults.
//!
//! `status.migrationState` on the instance is where the parties meet, each writing its own keys:
//!
//! ```text
//!  controller: migrationUid, sourceNode, targetNode, mode, migrationConfiguration  (scheduled)
//!  target agent: targetNodeAddress, targetDirectMigrationNodePorts                   (target ready)
//!  source agent: startTimestamp, then endTimestamp + completed | failed (+ failureReason,
//!                downtimeMilliseconds, transferredBytes); on success also status.nodeName
//!  controller: abortRequested (the migration object was deleted) -> source cancels, abortStatus
//! ```
//!
//! The migration object's status mirrors it as a phase for users.

use super::{
    at, no_prepare, no_update_validation, text_at, Column, KindInfo, AGE_COLUMN, NAME_COLUMN,
};
use crate::object::Object;
use crate::quantity::Quantity;
use crate::status::FieldError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// The finalizer the migration controller keeps on a migration until it is over.
pub const MIGRATION_FINALIZER: &str = "vmo.io/migration";

pub(super) fn kinds() -> Vec<KindInfo> {
    vec![KindInfo {
        group: "kubevirt.io",
        version: "v1",
        kind: "VirtualMachineInstanceMigration",
        plural: "virtualmachineinstancemigrations",
        singular: "virtualmachineinstancemigration",
        short_names: &["vmim", "vmims"],
        categories: &["all"],
        namespaced: true,
        status_subresource: true,
        name_is_label: false,
        field_selectors: &["status.phase", "spec.vmiName"],
        columns: &[
            NAME_COLUMN,
            Column {
                name: "Phase",
                kind: "string",
                priority: 0,
                description: "The migration's phase",
                cell: |o| text_at(o, &["status", "phase"]),
            },
            Column {
                name: "VMI",
                kind: "string",
                priority: 0,
                description: "The instance being migrated",
                cell: |o| text_at(o, &["spec", "vmiName"]),
            },
            Column {
                name: "Source",
                kind: "string",
                priority: 1,
                description: "The node the instance leaves",
                cell: |o| text_at(o, &["status", "migrationState", "sourceNode"]),
            },
            Column {
                name: "Target",
                kind: "string",
                priority: 1,
                description: "The node the instance moves to",
                cell: |o| text_at(o, &["status", "migrationState", "targetNode"]),
            },
            AGE_COLUMN,
        ],
        validate: validate_migration,
        validate_update: no_update_validation,
        prepare: no_prepare,
    }]
}

/// `spec` of a VirtualMachineInstanceMigration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationSpec {
    #[serde(default)]
    pub vmi_name: String,
    /// Labels the target node must carry as well (KubeVirt's `addedNodeSelector`); `vmo migrate
    /// --target-node N` sets `kubernetes.io/hostname: N`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub added_node_selector: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn validate_migration(o: &Object) -> Vec<FieldError> {
    let spec = o.body.get("spec").cloned().unwrap_or(Value::Null);
    if spec.is_null() {
        return vec![FieldError::required("spec.vmiName", "")];
    }
    let spec: MigrationSpec = match super::kubevirt::decode_at(&spec, "spec") {
        Ok(s) => s,
        Err(e) => return vec![e],
    };
    let mut errors = Vec::new();
    if spec.vmi_name.is_empty() {
        errors.push(FieldError::required(
            "spec.vmiName",
            "the instance to migrate",
        ));
    }
    for (k, v) in &spec.added_node_selector {
        let path = format!("spec.addedNodeSelector[{k}]");
        errors.extend(crate::validation::qualified_name(&path, k));
        errors.extend(crate::validation::label_value(&path, v));
    }
    errors
}

/// Migration phases, as KubeVirt names them.
pub mod phase {
    pub const PENDING: &str = "Pending";
    pub const SCHEDULING: &str = "Scheduling";
    pub const SCHEDULED: &str = "Scheduled";
    pub const TARGET_READY: &str = "TargetReady";
    pub const RUNNING: &str = "Running";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
}

/// `status.migrationState` of an instance (and of its migration object).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationState {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub migration_uid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_node: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target_node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node_address: Option<String>,
    /// Port -> what it serves (KubeVirt's shape: 0 is the memory migration stream); vmo adds
    /// one NBD port for local disks, marked 1.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub target_direct_migration_node_ports: BTreeMap<String, i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_timestamp: Option<String>,
    #[serde(default)]
    pub completed: bool,
    #[serde(default)]
    pub failed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    #[serde(default)]
    pub abort_requested: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_configuration: Option<MigrationConfiguration>,
    /// vmo: how long the guest was paused for the switch-over, as QEMU measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_milliseconds: Option<u64>,
    /// vmo: bytes of memory (and disk, for local disks) sent to the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transferred_bytes: Option<u64>,
    /// vmo: how long QEMU's memory migration took, from `migrate` to completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_milliseconds: Option<u64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl MigrationState {
    /// The state of `vmi`, if it has one.
    pub fn of(vmi: &Object) -> Option<Self> {
        at(vmi, &["status", "migrationState"])
            .filter(|v| v.is_object())
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// Neither completed nor failed.
    pub fn active(&self) -> bool {
        !self.migration_uid.is_empty() && !self.completed && !self.failed
    }

    /// The target's migration port, once it is ready.
    pub fn target_port(&self, role: i64) -> Option<u16> {
        self.target_direct_migration_node_ports
            .iter()
            .find(|(_, r)| **r == role)
            .and_then(|(p, _)| p.parse().ok())
    }
}

/// KubeVirt's `MigrationConfiguration`, the cluster-wide settings (all optional; see the
/// accessors for defaults, which are KubeVirt's).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_per_migration: Option<super::kubevirt::QuantityText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_timeout_per_gi_b: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_timeout: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_auto_converge: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_post_copy: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_migrations_per_cluster: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_outbound_migrations_per_node: Option<u32>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl MigrationConfiguration {
    /// Bytes per second one migration may use; None: unlimited (KubeVirt's default, `0`).
    pub fn bandwidth_bytes_per_second(&self) -> Option<u64> {
        self.bandwidth_per_migration
            .as_ref()
            .and_then(|q| Quantity::parse(&q.0).ok())
            .and_then(|q| q.value_ceil())
            .and_then(|b| u64::try_from(b).ok())
            .filter(|b| *b > 0)
    }

    /// How long a migration may take per GiB of guest memory before it is aborted (or switched to
    /// post-copy); KubeVirt's default 150 s.
    pub fn completion_timeout_per_gib(&self) -> Duration {
        Duration::from_secs(self.completion_timeout_per_gi_b.unwrap_or(150).max(1) as u64)
    }

    /// How long a migration may go without progress before it is aborted; default 150 s.
    pub fn progress_timeout(&self) -> Duration {
        Duration::from_secs(self.progress_timeout.unwrap_or(150).max(1) as u64)
    }

    pub fn auto_converge(&self) -> bool {
        self.allow_auto_converge.unwrap_or(false)
    }

    pub fn post_copy(&self) -> bool {
        self.allow_post_copy.unwrap_or(false)
    }

    /// At most this many migrations run at once in the cluster; default 5.
    pub fn parallel_per_cluster(&self) -> usize {
        self.parallel_migrations_per_cluster.unwrap_or(5).max(1) as usize
    }

    /// At most this many migrations leave one node at once; default 2.
    pub fn parallel_outbound_per_node(&self) -> usize {
        self.parallel_outbound_migrations_per_node
            .unwrap_or(2)
            .max(1) as usize
    }

    /// Every problem, by field under `path`.
    pub fn validate(&self, path: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Some(q) = &self.bandwidth_per_migration {
            if Quantity::parse(&q.0)
                .ok()
                .and_then(|q| q.value_ceil())
                .is_none_or(|b| b < 0)
            {
                errors.push(FieldError::invalid(
                    format!("{path}.bandwidthPerMigration"),
                    &q.0,
                    "must be a non-negative quantity of bytes per second, such as 64Mi",
                ));
            }
        }
        for (field, value) in [
            ("completionTimeoutPerGiB", self.completion_timeout_per_gi_b),
            ("progressTimeout", self.progress_timeout),
        ] {
            if value.is_some_and(|v| v <= 0) {
                errors.push(FieldError::invalid(
                    format!("{path}.{field}"),
                    value.unwrap_or_default().to_string(),
                    "must be a positive number of seconds",
                ));
            }
        }
        for (field, value) in [
            (
                "parallelMigrationsPerCluster",
                self.parallel_migrations_per_cluster,
            ),
            (
                "parallelOutboundMigrationsPerNode",
                self.parallel_outbound_migrations_per_node,
            ),
        ] {
            if value == Some(0) {
                errors.push(FieldError::invalid(
                    format!("{path}.{field}"),
                    "0",
                    "must be at least 1",
                ));
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_are_kubevirts() {
        let c = MigrationConfiguration::default();
        assert_eq!(c.bandwidth_bytes_per_second(), None);
        assert_eq!(c.completion_timeout_per_gib(), Duration::from_secs(150));
        assert_eq!(c.progress_timeout(), Duration::from_secs(150));
        assert_eq!(c.parallel_per_cluster(), 5);
        assert_eq!(c.parallel_outbound_per_node(), 2);
        assert!(!c.auto_converge() && !c.post_copy());
    }

    #[test]
    fn bad_settings_name_their_fields() {
        let c: MigrationConfiguration = serde_json::from_value(json!({
            "bandwidthPerMigration": "lots", "progressTimeout": 0,
            "parallelOutboundMigrationsPerNode": 0, "completionTimeoutPerGiB": 30,
        }))
        .unwrap();
        let fields: Vec<String> = c
            .validate("spec.migrations")
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(
            fields,
            [
                "spec.migrations.bandwidthPerMigration",
                "spec.migrations.progressTimeout",
                "spec.migrations.parallelOutboundMigrationsPerNode"
            ]
        );
        let c: MigrationConfiguration =
            serde_json::from_value(json!({"bandwidthPerMigration": "64Mi"})).unwrap();
        assert_eq!(c.bandwidth_bytes_per_second(), Some(64 << 20));
    }

    #[test]
    fn a_migration_needs_an_instance() {
        let o: Object = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
            "metadata": {"name": "m", "namespace": "default"}, "spec": {"vmiName": ""},
        }))
        .unwrap();
        assert_eq!(validate_migration(&o)[0].path, "spec.vmiName");
    }

    #[test]
    fn the_state_finds_its_ports() {
        let s: MigrationState = serde_json::from_value(json!({
            "migrationUid": "u", "targetDirectMigrationNodePorts": {"40001": 0, "40002": 1},
        }))
        .unwrap();
        assert!(s.active());
        assert_eq!(s.target_port(0), Some(40001));
        assert_eq!(s.target_port(1), Some(40002));
    }
}
