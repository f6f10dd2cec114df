//! The web UI at `/ui`, from files embedded at build time (see build.rs). The page and its script
//! are public (they hold no data); everything they show comes from the API with the user's token.
//! Unknown paths under `/ui/` get the page, so views can have their own URLs.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use std::path::Path;

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// For working on the UI: serve `/ui` from this directory (`web/dist`) at request time instead
/// of the files embedded at build time, so a rebuilt UI needs no rebuilt server.
pub const DEV_DIR_ENV: &str = "VMO_UI_DIR";

/// `wanted` (or, for view URLs, the page) from `dir`; never a path outside it.
fn from_dir(dir: &Path, wanted: &str) -> Option<(String, Vec<u8>)> {
    if wanted
        .split('/')
        .any(|part| part == ".." || part.is_empty())
    {
        return None;
    }
    std::fs::read(dir.join(wanted))
        .map(|bytes| (wanted.to_string(), bytes))
        .or_else(|_| std::fs::read(dir.join("index.html")).map(|b| ("index.html".into(), b)))
        .ok()
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("woff2") => "font/woff2",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// The response for `/ui/<path>`.
pub fn serve(path: &str) -> Response<crate::server::Body> {
    let body = |status: StatusCode, kind: &str, bytes: Bytes| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, kind)
            .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
            .header(header::CACHE_CONTROL, "no-cache")
            .header(
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
            )
            .body(Full::new(bytes).boxed_unsync())
            .expect("a valid response")
    };
    let wanted = if path.is_empty() { "index.html" } else { path };
    if let Some(dir) = std::env::var_os(DEV_DIR_ENV) {
        if let Some((p, bytes)) = from_dir(Path::new(&dir), wanted) {
            return body(StatusCode::OK, content_type(&p), Bytes::from(bytes));
        }
    }
    let found = ASSETS
        .iter()
        .find(|(p, _)| *p == wanted)
        .or_else(|| ASSETS.iter().find(|(p, _)| *p == "index.html"));
    match found {
        Some((p, bytes)) => body(StatusCode::OK, content_type(p), Bytes::from_static(bytes)),
        None => body(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            Bytes::from_static(
                b"The web UI was not built into this vmo binary: run scripts/build-web.sh (npm), then build vmo again.\n",
            ),
        ),
    }
}
