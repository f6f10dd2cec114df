//! The web UI at `/ui`, from files embedded at build time (see build.rs). The page and its script
//! are public (they hold no data); everything they show comes from the API with the user's token.
//! Unknown paths under `/ui/` get the page, so views can have their own URLs.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::{BodyExt, Full};

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

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
