//! A DataVolume's `http` and `upload` sources through the import pipeline ([`super::import`]):
//! credentials and the CA read from the Secret and ConfigMap the source names, progress written
//! to the DataVolume at most once a second, and the pipeline's error sorted into "try again"
//! (network trouble, a server error) and "will not work as it is" (404, a wrong checksum, a
//! corrupt or too large image, a full pool).

use super::import::{self, ImportError, Progress, Target, VolumeFormat};
use super::provision::{ProvisionError, Worker};
use serde_json::json;
use std::path::Path;
use std::time::Duration;
use vmo_api::kinds::cdi::{phase, HttpSource};
use vmo_api::kinds::core::secret_data;
use vmo_api::Object;

/// The pipeline's target for a volume file.
pub fn target(path: &Path, format: &str, size: u64) -> Target {
    Target {
        path: path.to_path_buf(),
        format: if format == "raw" {
            VolumeFormat::Raw
        } else {
            VolumeFormat::Qcow2
        },
        capacity: size,
    }
}

/// Sorts an import failure into retry or fatal.
pub fn sorted(e: ImportError) -> ProvisionError {
    if e.is_retryable() {
        ProvisionError::Retry(e.to_string())
    } else {
        ProvisionError::Fatal(e.to_string())
    }
}

/// A progress sink that writes `status.progress` of the DataVolume, throttled; dropped with the
/// returned task.
pub(crate) fn progress_writer(
    w: &Worker,
    dv: &Object,
    current_phase: &'static str,
) -> (Progress, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = tokio::sync::watch::channel(0.0f64);
    let progress = Progress::new(move |p| {
        let _ = tx.send(p);
    });
    let (client, kind) = (w.client.clone(), w.kinds.data_volume);
    let (ns, name) = (dv.metadata.namespace.clone(), dv.metadata.name.clone());
    let task = tokio::spawn(async move {
        let mut last = -1.0;
        while rx.changed().await.is_ok() {
            let p = *rx.borrow_and_update();
            if p - last >= 0.1 {
                last = p;
                let patch =
                    json!({"status": {"phase": current_phase, "progress": format!("{p:.2}%")}});
                let _ = client
                    .merge_patch(&kind, &ns, &name, Some("status"), &patch, "vmo-agent")
                    .await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    (progress, task)
}

/// Imports the DataVolume's `http` source into the volume file at `path`.
pub(crate) async fn import_http(
    w: &Worker,
    dv: &Object,
    http: &HttpSource,
    path: &Path,
    format: &str,
    size: u64,
    attempt: u32,
) -> Result<(), ProvisionError> {
    let ns = &dv.metadata.namespace;
    let mut source = import::HttpSource {
        url: http.url.clone(),
        checksum: http.checksum.clone(),
        ..Default::default()
    };
    if let Some(name) = &http.secret_ref {
        let secret =
            w.client.get(&w.kinds.secret, ns, name).await.map_err(|e| {
                ProvisionError::Waiting(format!("secret {name:?} (secretRef): {e}"))
            })?;
        let data = secret_data(&secret);
        let text = |k: &str| data.get(k).map(|v| String::from_utf8_lossy(v).into_owned());
        match (text("accessKeyId"), text("secretKey")) {
            (Some(user), Some(password)) => source.basic_auth = Some((user, password)),
            _ => {
                return Err(ProvisionError::Fatal(format!(
                    "secret {name:?} (secretRef) needs the keys accessKeyId and secretKey"
                )))
            }
        }
    }
    if let Some(name) = &http.cert_config_map {
        let map = w
            .client
            .get(&w.kinds.config_map, ns, name)
            .await
            .map_err(|e| {
                ProvisionError::Waiting(format!("configmap {name:?} (certConfigMap): {e}"))
            })?;
        let ca = map.body["data"]["ca.pem"].as_str().ok_or_else(|| {
            ProvisionError::Fatal(format!("configmap {name:?} (certConfigMap) has no ca.pem"))
        })?;
        source.ca_pem = Some(ca.as_bytes().to_vec());
    }
    source.extra_headers = http
        .extra_headers
        .iter()
        .filter_map(|h| {
            let (k, v) = h.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let patch = json!({"phase": phase::IMPORT_IN_PROGRESS, "progress": "0.00%",
        "restartCount": attempt - 1,
        "conditions": Worker::conditions(phase::IMPORT_IN_PROGRESS, true, "Pending", "")});
    w.dv_status(ns, &dv.metadata.name, patch).await;
    let (progress, writer) = progress_writer(w, dv, phase::IMPORT_IN_PROGRESS);
    let result = import::import_http(&source, &target(path, format, size), progress).await;
    writer.abort();
    let imported = result.map_err(sorted)?;
    tracing::info!(dv = %dv.display_name(), format = imported.source_format, compression = ?imported.compression,
        bytes = imported.bytes_read, scratch = imported.scratch_used, "imported");
    Ok(())
}
