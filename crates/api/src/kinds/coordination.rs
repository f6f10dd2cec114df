//! `coordination.k8s.io/v1` Lease: each node agent renews one as its heartbeat.

use super::{
    at, no_prepare, no_update_validation, text_at, Column, KindInfo, AGE_COLUMN, NAME_COLUMN,
};
use crate::object::Object;
use crate::status::FieldError;
use serde_json::Value;

/// The namespace holding node heartbeat leases.
pub const NODE_LEASE_NAMESPACE: &str = "vmo-node-lease";

pub(super) fn kinds() -> Vec<KindInfo> {
    vec![KindInfo {
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        plural: "leases",
        singular: "lease",
        short_names: &[],
        categories: &[],
        namespaced: true,
        status_subresource: false,
        name_is_label: false,
        field_selectors: &["spec.holderIdentity"],
        columns: &[
            NAME_COLUMN,
            Column {
                name: "Holder",
                kind: "string",
                priority: 0,
                description: "Who holds the lease.",
                cell: |o| text_at(o, &["spec", "holderIdentity"]),
            },
            Column {
                name: "Renewed",
                kind: "string",
                priority: 0,
                description: "When the holder last renewed it.",
                cell: |o| text_at(o, &["spec", "renewTime"]),
            },
            AGE_COLUMN,
        ],
        validate: validate_lease,
        validate_update: no_update_validation,
        prepare: no_prepare,
    }]
}

fn validate_lease(o: &Object) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(d) = at(o, &["spec", "leaseDurationSeconds"]) {
        if d.as_i64().is_none_or(|d| d <= 0) {
            errors.push(FieldError::invalid(
                "spec.leaseDurationSeconds",
                d.to_string(),
                "must be a whole number of seconds greater than 0",
            ));
        }
    }
    for field in ["renewTime", "acquireTime"] {
        if let Some(t) = at(o, &["spec", field]) {
            if t.as_str().and_then(crate::meta::parse_rfc3339).is_none() {
                errors.push(FieldError::invalid(
                    format!("spec.{field}"),
                    t.to_string(),
                    "must be an RFC 3339 time",
                ));
            }
        }
    }
    errors
}

/// When the lease expires, in seconds since the epoch, if it says.
pub fn lease_expiry(o: &Object) -> Option<i64> {
    let renewed = at(o, &["spec", "renewTime"])
        .and_then(Value::as_str)
        .and_then(crate::meta::parse_rfc3339)?;
    let duration = at(o, &["spec", "leaseDurationSeconds"]).and_then(Value::as_i64)?;
    Some(renewed + duration)
}
