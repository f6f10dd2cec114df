//! The DataVolume `upload` subresource
//! (`/apis/cdi.kubevirt.io/v1beta1/namespaces/NS/datavolumes/NAME/upload`), which `vmo
//! image-upload` and plain HTTP clients use:
//!
//! ```text
//! PUT|POST .../upload   body: image bytes from `offset` on; the total size and the offset from
//!                       X-Upload-Size / X-Upload-Offset (or ?size= / ?offset=; a body sent
//!                       whole from 0 may give only Content-Length); X-Upload-Checksum
//!                       (or ?checksum=) `sha256:<hex>` of the whole image, optional
//!                       -> 200 {phase, received, size}: `Complete` once the image is in,
//!                          `UploadReady` when the body ended before `size` (send the rest)
//! GET      .../upload   -> 200 {phase, received, size}: where to resume
//! ```
//!
//! The user's token was checked before the request got here. The DataVolume must have an
//! `upload` source and be `UploadReady`; the body then streams, never buffered and without the
//! API's body size limit, to the agent of the node its claim was given to
//! (`volume.kubernetes.io/selected-node`), which keeps the upload session (see the agent's
//! `storage::upload`). Every refusal is an API Status naming the cause.

use crate::agent_proxy::ProxyIdentity;
use crate::routes::{self, ResourcePath};
use crate::server::Body;
use crate::service::ResourceService;
use bytes::Bytes;
use http::{header, Method, Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};
use vmo_api::kinds::cdi::{phase, DataVolumeSpec};
use vmo_api::kinds::storage::SELECTED_NODE_ANNOTATION;
use vmo_api::{Object, Status};

/// Header with the byte offset a request's body starts at.
pub const OFFSET_HEADER: &str = "x-upload-offset";
/// Header with the image's total size in bytes.
pub const SIZE_HEADER: &str = "x-upload-size";
/// Header with `sha256:<hex>` (or sha1, sha384, sha512) of the whole image, checked when the
/// upload completes (only the request that starts the upload at offset 0 sets it).
pub const CHECKSUM_HEADER: &str = "x-upload-checksum";
/// Header (server to agent) with the DataVolume's uid, so a re-created one never continues an
/// older session.
pub const UID_HEADER: &str = "x-upload-uid";

/// True for the upload subresource of a DataVolume.
pub fn is_upload(path: &ResourcePath) -> bool {
    path.group == "cdi.kubevirt.io"
        && path.plural == "datavolumes"
        && path.subresource.as_deref() == Some("upload")
}

fn json_response(code: u16, value: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed_unsync())
        .expect("valid response")
}

/// The Ready condition's message of a DataVolume.
fn ready_message(dv: &Object) -> String {
    dv.status()["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["message"].as_str())
        .unwrap_or("")
        .to_string()
}

fn number(req: &Request<Incoming>, header_name: &str, query: &str) -> Result<Option<u64>, Status> {
    let params = routes::query(req.uri().query());
    let raw = req
        .headers()
        .get(header_name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| params.get(query).cloned());
    match raw {
        None => Ok(None),
        Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
            Status::bad_request(format!(
                "invalid {header_name} / ?{query}= {v:?}: a number of bytes"
            ))
        }),
    }
}

/// Serves the upload subresource.
pub async fn serve(
    service: &ResourceService,
    proxy: Option<&ProxyIdentity>,
    req: Request<Incoming>,
    path: &ResourcePath,
) -> Result<Response<Body>, Status> {
    let (Some(ns), Some(name)) = (&path.namespace, &path.name) else {
        return Err(Status::not_found("datavolumes.cdi.kubevirt.io", ""));
    };
    let registry = service.registry();
    let dv_kind = *registry.resolve("datavolumes").expect("registered");
    let claim_kind = *registry.resolve("pvc").expect("registered");
    let node_kind = *registry.resolve("nodes").expect("registered");
    let method = req.method().clone();
    if !matches!(method, Method::GET | Method::PUT | Method::POST) {
        return Err(Status::method_not_allowed(format!(
            "{method} is not supported on upload; use PUT or POST with the image, GET for the state"
        )));
    }
    let dv = service.get(&dv_kind, ns, name).await?;
    let source = DataVolumeSpec::of(&dv).source();
    if source.kind() != "upload" {
        return Err(Status::bad_request(format!(
            "DataVolume {ns}/{name} is not an upload DataVolume (its source is {}); only DataVolumes \
             with `source: {{upload: {{}}}}` take uploads",
            source.kind()
        )));
    }
    let current = dv.status()["phase"]
        .as_str()
        .unwrap_or("Pending")
        .to_string();
    if method == Method::GET && current != phase::UPLOAD_READY {
        let done = current == phase::SUCCEEDED;
        return Ok(json_response(
            200,
            &json!({"phase": current, "received": Value::Null, "size": Value::Null,
                    "complete": done, "progress": dv.status()["progress"],
                    "message": ready_message(&dv)}),
        ));
    }
    if current != phase::UPLOAD_READY {
        let why = match current.as_str() {
            phase::SUCCEEDED => "the upload is complete already".to_string(),
            phase::FAILED => format!("it failed: {}", ready_message(&dv)),
            _ => "wait until it is UploadReady".to_string(),
        };
        return Err(Status::failure(
            409,
            "Conflict",
            format!(
                "DataVolume {ns}/{name} is not ready for an upload: its phase is {current} ({why})"
            ),
        ));
    }
    let claim_name = dv.status()["claimName"]
        .as_str()
        .unwrap_or(name)
        .to_string();
    let claim = service.get(&claim_kind, ns, &claim_name).await?;
    let node_name = claim
        .metadata
        .annotations
        .get(SELECTED_NODE_ANNOTATION)
        .cloned()
        .ok_or_else(|| {
            Status::failure(
                409,
                "Conflict",
                format!("DataVolume {ns}/{name} has no node for its volume yet; wait until it is UploadReady"),
            )
        })?;
    let node = service.get(&node_kind, "", &node_name).await?;
    let proxy = proxy
        .ok_or_else(|| Status::unavailable("this server has no client identity for agents"))?;
    let agent_path = format!(
        "/uploads/{}/{}",
        vmo_client_encode(ns),
        vmo_client_encode(name)
    );
    let response = if method == Method::GET {
        let request = Request::get(&agent_path)
            .header(header::HOST, "agent")
            .header(UID_HEADER, &dv.metadata.uid)
            .body(Empty::<Bytes>::new())
            .expect("valid request");
        proxy.send(&node, request).await?
    } else {
        let offset = number(&req, OFFSET_HEADER, "offset")?.unwrap_or(0);
        let length = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let size = match number(&req, SIZE_HEADER, "size")? {
            Some(s) => s,
            None if offset == 0 && length.is_some() => length.unwrap_or(0),
            None => {
                return Err(Status::bad_request(format!(
                    "say the image's total size in bytes ({SIZE_HEADER} or ?size=)"
                )))
            }
        };
        if size == 0 {
            return Err(Status::bad_request("the image is empty (size 0)"));
        }
        if offset > size {
            return Err(Status::bad_request(format!(
                "offset {offset} is past the image's size {size}"
            )));
        }
        let mut builder = Request::put(format!("{agent_path}?offset={offset}&size={size}"))
            .header(header::HOST, "agent")
            .header(UID_HEADER, &dv.metadata.uid);
        let checksum = req
            .headers()
            .get(CHECKSUM_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| routes::query(req.uri().query()).get("checksum").cloned());
        if let Some(checksum) = checksum {
            builder = builder.header(CHECKSUM_HEADER, checksum);
        }
        if let Some(length) = length {
            builder = builder.header(header::CONTENT_LENGTH, length);
        }
        let request = builder
            .body(req.into_body())
            .map_err(|e| Status::bad_request(e.to_string()))?;
        proxy.send(&node, request).await?
    };
    let code = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| {
            Status::unavailable(format!(
                "the agent of node {node_name:?} stopped answering: {e}"
            ))
        })?
        .to_bytes();
    let answer: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| json!({"message": String::from_utf8_lossy(&body).trim().to_string()}));
    if (200..300).contains(&code) {
        return Ok(json_response(code, &answer));
    }
    let message = answer["message"].as_str().unwrap_or("").to_string();
    let reason = answer["reason"].as_str().unwrap_or(match code {
        400 => "BadRequest",
        404 => "NotFound",
        409 => "Conflict",
        _ => "InternalError",
    });
    Err(Status::failure(code, reason, message))
}

/// Percent-encodes a path segment (names are DNS labels; this is belt and braces).
fn vmo_client_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_datavolume_upload_subresource() {
        let crate::routes::Route::Resource(p) =
            routes::parse("/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes/d/upload")
        else {
            panic!()
        };
        assert!(is_upload(&p));
        let crate::routes::Route::Resource(p) =
            routes::parse("/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes/d/status")
        else {
            panic!()
        };
        assert!(!is_upload(&p));
    }
}
