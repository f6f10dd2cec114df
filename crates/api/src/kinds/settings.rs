//! `vmo.io/v1alpha1` ClusterSettings: the one cluster-scoped object (named `cluster`) holding
//! settings that apply to every node and VM, where KubeVirt keeps them in its `KubeVirt` resource's
//! `spec.configuration`. Field names follow KubeVirt's, so its documentation applies. Absent, every
//! setting has its default.

use super::migration::MigrationConfiguration;
use super::{no_prepare, no_update_validation, KindInfo, AGE_COLUMN, NAME_COLUMN};
use crate::object::Object;
use crate::status::FieldError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The name of the only ClusterSettings object.
pub const CLUSTER_SETTINGS_NAME: &str = "cluster";

pub(super) fn kinds() -> Vec<KindInfo> {
    vec![KindInfo {
        group: "vmo.io",
        version: "v1alpha1",
        kind: "ClusterSettings",
        plural: "clustersettings",
        singular: "clustersetting",
        short_names: &["settings"],
        categories: &[],
        namespaced: false,
        status_subresource: false,
        name_is_label: false,
        field_selectors: &[],
        columns: &[NAME_COLUMN, AGE_COLUMN],
        validate: validate_settings,
        validate_update: no_update_validation,
        prepare: no_prepare,
    }]
}

/// `spec` of ClusterSettings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSettingsSpec {
    /// Live migration limits and tuning (KubeVirt's `spec.configuration.migrations`).
    #[serde(default)]
    pub migrations: MigrationConfiguration,
    /// What draining a node does to a VM that sets no `evictionStrategy` of its own (KubeVirt's
    /// cluster-wide setting; default `None`: the VM is shut down and, if its run strategy says
    /// so, started again elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eviction_strategy: Option<String>,
    /// The default network's range, the service range and the node bridge's VLAN policy.
    #[serde(default)]
    pub network: super::network::NetworkSettings,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ClusterSettingsSpec {
    /// The settings in `o` (defaults where it is absent or unreadable; validation refuses
    /// unreadable ones on write).
    pub fn of(o: Option<&Object>) -> Self {
        o.and_then(|o| o.body.get("spec"))
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .unwrap_or_default()
    }

    /// The settings among `objects` (a watch cache of ClusterSettings): the one named
    /// [`CLUSTER_SETTINGS_NAME`], else defaults.
    pub fn among(objects: &[Object]) -> Self {
        Self::of(
            objects
                .iter()
                .find(|o| o.metadata.name == CLUSTER_SETTINGS_NAME),
        )
    }
}

/// KubeVirt's eviction strategies.
pub const EVICTION_STRATEGIES: &[&str] =
    &["None", "LiveMigrate", "LiveMigrateIfPossible", "External"];

impl ClusterSettingsSpec {
    /// The eviction strategy of an instance whose spec says `own` (None: unset).
    pub fn eviction_strategy_for(&self, own: Option<&str>) -> String {
        own.or(self.eviction_strategy.as_deref())
            .unwrap_or("None")
            .to_string()
    }
}

fn validate_settings(o: &Object) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if o.metadata.name != CLUSTER_SETTINGS_NAME {
        errors.push(FieldError::invalid(
            "metadata.name",
            &o.metadata.name,
            format!("cluster settings live in one object named {CLUSTER_SETTINGS_NAME:?}"),
        ));
    }
    let spec = o
        .body
        .get("spec")
        .cloned()
        .unwrap_or(Value::Object(Map::new()));
    match super::kubevirt::decode_at::<ClusterSettingsSpec>(&spec, "spec") {
        Ok(spec) => {
            errors.extend(spec.migrations.validate("spec.migrations"));
            errors.extend(super::network::validate_network_settings(
                &spec.network,
                "spec.network",
            ));
            if let Some(s) = spec.eviction_strategy.as_deref() {
                if !EVICTION_STRATEGIES.contains(&s) {
                    errors.push(FieldError::not_supported(
                        "spec.evictionStrategy",
                        s,
                        EVICTION_STRATEGIES,
                    ));
                }
            }
        }
        Err(e) => errors.push(e),
    }
    errors
}
