//! Disk images into volumes, with CDI's API (`cdi.kubevirt.io/v1beta1`) so its YAML carries over:
//! a DataVolume is a claim plus where its data comes from (`http`, `upload`, `pvc` clone, `blank`),
//! and a StorageProfile per StorageClass says what claims of that class get when a DataVolume's
//! `storage` leaves access modes or volume mode out.
//!
//! A DataVolume owns a claim of the same name. The claim is bound only once its data is complete,
//! so nothing half-written reaches a VM; the DataVolume's status shows how far it got:
//!
//! ```text
//!  storage controller: Pending / WaitForFirstConsumer / ImportScheduled (node chosen)
//!  agent of the node:  ImportInProgress | CloneInProgress | UploadReady, progress "42.17%",
//!                      then Succeeded, or Failed with a condition saying why (restartCount on retries)
//! ```

use super::storage::{validate_claim_spec, ClaimSpec};
use super::{no_prepare, text_at, Column, KindInfo, AGE_COLUMN, NAME_COLUMN};
use crate::object::Object;
use crate::status::FieldError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Source kinds vmo imports from.
pub const SOURCES: &[&str] = &["http", "upload", "pvc", "blank"];
/// CDI source kinds vmo does not run (refused with the supported list).
const OTHER_SOURCES: &[&str] = &["s3", "gcs", "registry", "imageio", "vddk", "snapshot"];

/// DataVolume phases (CDI's names).
pub mod phase {
    pub const PENDING: &str = "Pending";
    pub const WAIT_FOR_FIRST_CONSUMER: &str = "WaitForFirstConsumer";
    pub const IMPORT_SCHEDULED: &str = "ImportScheduled";
    pub const IMPORT_IN_PROGRESS: &str = "ImportInProgress";
    pub const CLONE_SCHEDULED: &str = "CloneScheduled";
    pub const CLONE_IN_PROGRESS: &str = "CloneInProgress";
    pub const UPLOAD_SCHEDULED: &str = "UploadScheduled";
    pub const UPLOAD_READY: &str = "UploadReady";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";

    /// Phases the storage controller writes; once the agent writes a later one it owns the status.
    pub fn before_work(phase: &str) -> bool {
        matches!(
            phase,
            "" | PENDING
                | WAIT_FOR_FIRST_CONSUMER
                | IMPORT_SCHEDULED
                | CLONE_SCHEDULED
                | UPLOAD_SCHEDULED
        )
    }
}

pub(super) fn kinds() -> Vec<KindInfo> {
    vec![
        KindInfo {
            group: "cdi.kubevirt.io",
            version: "v1beta1",
            kind: "DataVolume",
            plural: "datavolumes",
            singular: "datavolume",
            short_names: &["dv", "dvs"],
            categories: &["all"],
            namespaced: true,
            status_subresource: true,
            name_is_label: false,
            field_selectors: &["status.phase"],
            columns: &[
                NAME_COLUMN,
                Column {
                    name: "Phase",
                    kind: "string",
                    priority: 0,
                    description: "Where the import, upload or clone is.",
                    cell: |o| text_at(o, &["status", "phase"]),
                },
                Column {
                    name: "Progress",
                    kind: "string",
                    priority: 0,
                    description: "How much of the data is in.",
                    cell: |o| text_at(o, &["status", "progress"]),
                },
                Column {
                    name: "Restarts",
                    kind: "integer",
                    priority: 0,
                    description: "How often the transfer was restarted.",
                    cell: |o| o.status()["restartCount"].as_i64().unwrap_or(0).into(),
                },
                AGE_COLUMN,
            ],
            validate: validate_data_volume,
            validate_update: validate_data_volume_update,
            prepare: no_prepare,
        },
        KindInfo {
            group: "cdi.kubevirt.io",
            version: "v1beta1",
            kind: "StorageProfile",
            plural: "storageprofiles",
            singular: "storageprofile",
            short_names: &[],
            categories: &[],
            namespaced: false,
            status_subresource: true,
            name_is_label: false,
            field_selectors: &[],
            columns: &[NAME_COLUMN, AGE_COLUMN],
            validate: validate_profile,
            validate_update: super::no_update_validation,
            prepare: no_prepare,
        },
    ]
}

/// `spec.source.http`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpSource {
    #[serde(default)]
    pub url: String,
    /// A Secret with `accessKeyId` and `secretKey`: basic auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    /// A ConfigMap whose `ca.pem` is the CA of an https server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_config_map: Option<String>,
    /// `Name: value` headers sent with the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_headers: Vec<String>,
    /// vmo's addition: `sha256:<hex>` or `sha512:<hex>` of the bytes served; a mismatch fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `spec.source.pvc`: the claim to clone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PvcSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: String,
}

/// `spec.source`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blank: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl DataVolumeSource {
    /// `http`, `upload`, `pvc` or `blank`.
    pub fn kind(&self) -> &'static str {
        if self.http.is_some() {
            "http"
        } else if self.upload.is_some() {
            "upload"
        } else if self.pvc.is_some() {
            "pvc"
        } else {
            "blank"
        }
    }
}

/// `spec` of a DataVolume (and of a VirtualMachine's `dataVolumeTemplates[].spec`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<DataVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ref: Option<Value>,
    /// A full claim spec: used as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<ClaimSpec>,
    /// A claim spec whose missing access modes and volume mode come from the StorageProfile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<ClaimSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl DataVolumeSpec {
    /// The spec of the DataVolume in `o` (defaults where unreadable).
    pub fn of(o: &Object) -> Self {
        serde_json::from_value(o.spec().clone()).unwrap_or_default()
    }
    /// The source (blank when none is readable).
    pub fn source(&self) -> DataVolumeSource {
        self.source.clone().unwrap_or_default()
    }
    /// The claim spec as written (`pvc` or `storage`).
    pub fn claim(&self) -> ClaimSpec {
        self.pvc
            .clone()
            .or_else(|| self.storage.clone())
            .unwrap_or_default()
    }
}

/// Checks a DataVolume spec at `path`, collecting every problem.
pub fn validate_data_volume_spec(spec: &DataVolumeSpec, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if spec.source_ref.is_some() {
        errors.push(FieldError::invalid(
            format!("{path}.sourceRef"),
            "",
            "DataSource references are not supported; use source",
        ));
    }
    let source = match &spec.source {
        Some(s) => s.clone(),
        None => {
            if spec.source_ref.is_none() {
                errors.push(FieldError::required(
                    format!("{path}.source"),
                    format!("one of: {}", SOURCES.join(", ")),
                ));
            }
            DataVolumeSource::default()
        }
    };
    let p = format!("{path}.source");
    let set = [
        source.http.is_some(),
        source.upload.is_some(),
        source.pvc.is_some(),
        source.blank.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    for other in OTHER_SOURCES {
        if source.extra.contains_key(*other) {
            errors.push(FieldError::not_supported(
                format!("{p}.{other}"),
                other,
                SOURCES,
            ));
        }
    }
    if set > 1 {
        errors.push(FieldError::invalid(&p, "", "only one source may be set"));
    } else if set == 0 && spec.source.is_some() && errors.is_empty() {
        errors.push(FieldError::required(
            &p,
            format!("one of: {}", SOURCES.join(", ")),
        ));
    }
    if let Some(http) = &source.http {
        validate_http(http, &format!("{p}.http"), &mut errors);
    }
    if let Some(pvc) = &source.pvc {
        if pvc.name.is_empty() {
            errors.push(FieldError::required(format!("{p}.pvc.name"), ""));
        }
    }
    let size_required = source.pvc.is_none();
    match (&spec.pvc, &spec.storage) {
        (Some(_), Some(_)) => errors.push(FieldError::invalid(
            format!("{path}.pvc"),
            "",
            "pvc and storage are mutually exclusive",
        )),
        (None, None) => errors.push(FieldError::required(
            format!("{path}.storage"),
            "the volume to create (pvc or storage)",
        )),
        (Some(pvc), None) => {
            errors.extend(validate_claim_spec(
                pvc,
                &format!("{path}.pvc"),
                size_required,
            ));
            if pvc.access_modes.is_empty() {
                errors.push(FieldError::required(
                    format!("{path}.pvc.accessModes"),
                    "at least 1 access mode is required (or use storage, which takes the StorageProfile's)",
                ));
            }
        }
        (None, Some(storage)) => errors.extend(validate_claim_spec(
            storage,
            &format!("{path}.storage"),
            size_required,
        )),
    }
    match spec.content_type.as_deref() {
        None | Some("kubevirt") | Some("") => {}
        Some(other) => errors.push(FieldError::not_supported(
            format!("{path}.contentType"),
            other,
            &["kubevirt"],
        )),
    }
    errors
}

fn validate_http(http: &HttpSource, p: &str, errors: &mut Vec<FieldError>) {
    let url = http.url.trim();
    if url.is_empty() {
        errors.push(FieldError::required(format!("{p}.url"), ""));
    } else {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        match rest {
            None => errors.push(FieldError::invalid(
                format!("{p}.url"),
                url,
                "must be an http:// or https:// URL",
            )),
            Some(rest) if rest.split('/').next().unwrap_or("").is_empty() => errors.push(
                FieldError::invalid(format!("{p}.url"), url, "the URL has no host"),
            ),
            Some(_) => {}
        }
    }
    if let Some(sum) = &http.checksum {
        let ok = match sum.split_once(':') {
            Some(("sha256", hex)) => hex.len() == 64,
            Some(("sha512", hex)) => hex.len() == 128,
            _ => false,
        } && sum
            .split_once(':')
            .is_some_and(|(_, h)| h.chars().all(|c| c.is_ascii_hexdigit()));
        if !ok {
            errors.push(FieldError::invalid(
                format!("{p}.checksum"),
                sum,
                "must be sha256:<64 hex digits> or sha512:<128 hex digits>",
            ));
        }
    }
    for (i, h) in http.extra_headers.iter().enumerate() {
        let valid = h.split_once(':').is_some_and(|(name, _)| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
        if !valid {
            errors.push(FieldError::invalid(
                format!("{p}.extraHeaders[{i}]"),
                h,
                "must be \"Name: value\"",
            ));
        }
    }
}

fn validate_data_volume(o: &Object) -> Vec<FieldError> {
    match super::kubevirt::decode_at::<DataVolumeSpec>(o.spec(), "spec") {
        Ok(spec) => validate_data_volume_spec(&spec, "spec"),
        Err(e) => vec![e],
    }
}

fn validate_data_volume_update(old: &Object, new: &Object) -> Vec<FieldError> {
    if new.spec() != old.spec() {
        vec![FieldError::forbidden(
            "spec",
            "a DataVolume's spec cannot change after creation",
        )]
    } else {
        Vec::new()
    }
}

fn validate_profile(o: &Object) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(sets) = o.spec()["claimPropertySets"].as_array() {
        for (i, set) in sets.iter().enumerate() {
            for (j, m) in set["accessModes"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let m = m.as_str().unwrap_or("");
                if !super::storage::ACCESS_MODES.contains(&m) {
                    errors.push(FieldError::not_supported(
                        format!("spec.claimPropertySets[{i}].accessModes[{j}]"),
                        m,
                        super::storage::ACCESS_MODES,
                    ));
                }
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dv(spec: Value) -> Object {
        Object::from_value(
            json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
            "metadata": {"name": "d", "namespace": "default"}, "spec": spec}),
        )
        .expect("object")
    }

    fn paths(o: &Object) -> Vec<String> {
        validate_data_volume(o)
            .into_iter()
            .map(|e| e.path)
            .collect()
    }

    #[test]
    fn a_good_import_passes() {
        let o = dv(
            json!({"source": {"http": {"url": "https://images.example/debian.qcow2",
            "checksum": format!("sha256:{}", "ab".repeat(32)), "extraHeaders": ["X-Token: 1"]}},
            "storage": {"resources": {"requests": {"storage": "10Gi"}}}}),
        );
        assert!(paths(&o).is_empty(), "{:?}", validate_data_volume(&o));
        assert_eq!(DataVolumeSpec::of(&o).source().kind(), "http");
        let clone = dv(
            json!({"source": {"pvc": {"namespace": "golden", "name": "debian"}},
            "pvc": {"accessModes": ["ReadWriteOnce"]}}),
        );
        assert!(
            paths(&clone).is_empty(),
            "a clone may take its size from the source"
        );
    }

    #[test]
    fn bad_sources_are_named() {
        let o = dv(
            json!({"source": {"http": {"url": "ftp://x/y", "checksum": "md5:abc",
            "extraHeaders": ["no colon"]}},
            "storage": {"resources": {"requests": {"storage": "0"}}}}),
        );
        let p = paths(&o);
        for want in [
            "spec.source.http.url",
            "spec.source.http.checksum",
            "spec.source.http.extraHeaders[0]",
            "spec.storage.resources.requests[storage]",
        ] {
            assert!(p.iter().any(|x| x == want), "{want} in {p:?}");
        }
        let registry = dv(json!({"source": {"registry": {"url": "docker://x"}},
            "storage": {"resources": {"requests": {"storage": "1Gi"}}}}));
        assert_eq!(paths(&registry), vec!["spec.source.registry"]);
        let two = dv(json!({"source": {"blank": {}, "upload": {}},
            "storage": {"resources": {"requests": {"storage": "1Gi"}}}}));
        assert_eq!(paths(&two), vec!["spec.source"]);
        let no_claim = dv(json!({"source": {"blank": {}}}));
        assert_eq!(paths(&no_claim), vec!["spec.storage"]);
        let pvc_without_modes = dv(json!({"source": {"blank": {}},
            "pvc": {"resources": {"requests": {"storage": "1Gi"}}}}));
        assert_eq!(paths(&pvc_without_modes), vec!["spec.pvc.accessModes"]);
    }

    #[test]
    fn the_spec_is_fixed_after_creation() {
        let a = dv(json!({"source": {"blank": {}},
            "storage": {"resources": {"requests": {"storage": "1Gi"}}}}));
        let b = dv(json!({"source": {"blank": {}},
            "storage": {"resources": {"requests": {"storage": "2Gi"}}}}));
        assert_eq!(validate_data_volume_update(&a, &b)[0].path, "spec");
        assert!(validate_data_volume_update(&a, &a).is_empty());
    }
}
