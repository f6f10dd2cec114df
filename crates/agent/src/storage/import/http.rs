//! The HTTP(S) side of an import: one GET, following redirects, whose body is handed on chunk by
//! chunk; when the connection drops, stalls or ends short of `Content-Length`, and the server
//! announced `Accept-Ranges: bytes`, the download continues from the last byte received
//! (`Range:` with `If-Range:`, so a file that changed meanwhile is not spliced), with backoff.
//!
//! A plain hyper 1 client over tokio and rustls (ring), as the rest of vmo uses, rather than a
//! bigger HTTP stack; HTTP/1.1 only.

use super::{HttpSource, ImportError};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Consecutive attempts to resume a dropped download before giving up; an attempt that brings
/// new bytes starts the count again.
pub const MAX_RESUME_ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// A body that sends nothing for this long counts as dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_REDIRECTS: usize = 5;
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A parsed http(s) URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Url {
    https: bool,
    /// Without IPv6 brackets.
    host: String,
    port: u16,
    /// `host[:port]` as written, for the Host header.
    authority: String,
    path: String,
}

impl Url {
    fn parse(text: &str) -> Result<Self, ImportError> {
        let bad = |why: &str| ImportError::InvalidUrl {
            url: text.to_string(),
            why: why.to_string(),
        };
        let uri: http::Uri = text
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("the URL must start with http:// or https://")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad(
                "credentials in the URL are not supported; give them as basic-auth credentials",
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Self {
            https,
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            host,
            authority: authority.as_str().to_string(),
            path: uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into()),
        })
    }

    fn text(&self) -> String {
        format!(
            "{}://{}{}",
            if self.https { "https" } else { "http" },
            self.authority,
            self.path
        )
    }

    fn same_origin(&self, other: &Url) -> bool {
        self.https == other.https && self.host == other.host && self.port == other.port
    }

    /// Resolves a `Location` header against this URL.
    fn join(&self, location: &str) -> Result<Url, ImportError> {
        let scheme = if self.https { "https" } else { "http" };
        let absolute = if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else if let Some(rest) = location.strip_prefix("//") {
            format!("{scheme}://{rest}")
        } else if location.starts_with('/') {
            format!("{scheme}://{}{}", self.authority, without_dots(location))
        } else {
            let path = self.path.split('?').next().unwrap_or("/");
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            let joined = without_dots(&format!("{dir}{location}"));
            format!("{scheme}://{}{joined}", self.authority)
        };
        Url::parse(&absolute)
    }
}

/// `path` (absolute, maybe with a query) with its `.` and `..` segments resolved.
fn without_dots(path: &str) -> String {
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *segment {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
        // A path ending in `.` or `..` names a directory.
        if last && (*segment == "." || *segment == "..") {
            out.push("");
        }
    }
    let mut text = format!("/{}", out.join("/"));
    if let Some(q) = query {
        text.push('?');
        text.push_str(q);
    }
    text
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// `a: b: c` of an error and its sources.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// A download in progress.
pub(crate) struct Download<'a> {
    src: &'a HttpSource,
    origin: Url,
    url: Url,
    tls: Option<tokio_rustls::TlsConnector>,
    body: Option<Incoming>,
    connection: Option<JoinHandle<()>>,
    pos: u64,
    total: Option<u64>,
    resumable: bool,
    validator: Option<HeaderValue>,
    failures: u32,
}

impl Drop for Download<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.connection.take() {
            c.abort();
        }
    }
}

impl<'a> Download<'a> {
    /// Sends the request and checks the response status; the body is read by [`next`].
    pub(crate) async fn open(src: &'a HttpSource) -> Result<Self, ImportError> {
        let origin = Url::parse(&src.url)?;
        for (name, value) in &src.extra_headers {
            if HeaderName::try_from(name.as_str()).is_err()
                || HeaderValue::try_from(value.as_str()).is_err()
            {
                return Err(ImportError::InvalidHeader { name: name.clone() });
            }
        }
        let tls = if origin.https {
            Some(tls_connector(src, &origin)?)
        } else {
            None
        };
        let mut download = Self {
            src,
            url: origin.clone(),
            origin,
            tls,
            body: None,
            connection: None,
            pos: 0,
            total: None,
            resumable: false,
            validator: None,
            failures: 0,
        };
        for _ in 0..=MAX_REDIRECTS {
            let url = download.url.clone();
            let response = download.request(&url, None).await?;
            let status = response.status();
            if status.is_redirection() {
                if let Some(location) = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                {
                    download.url = url.join(location)?;
                    if download.url.https && download.tls.is_none() {
                        download.tls = Some(tls_connector(src, &download.url)?);
                    }
                    continue;
                }
            }
            if status != StatusCode::OK {
                return Err(status_error(&url, status));
            }
            let headers = response.headers();
            download.total = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            download.resumable = headers
                .get(header::ACCEPT_RANGES)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|u| u.trim().eq_ignore_ascii_case("bytes")));
            download.validator = headers
                .get(header::ETAG)
                .filter(|e| !e.as_bytes().starts_with(b"W/"))
                .or_else(|| headers.get(header::LAST_MODIFIED))
                .cloned();
            download.body = Some(response.into_body());
            return Ok(download);
        }
        Err(ImportError::InvalidUrl {
            url: src.url.clone(),
            why: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    /// The body's length, if the server said.
    pub(crate) fn total(&self) -> Option<u64> {
        self.total
    }

    async fn connect(
        &mut self,
        url: &Url,
    ) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, ImportError> {
        let unreachable = |e: std::io::Error| ImportError::Unreachable {
            url: url.text(),
            why: e.to_string(),
        };
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((url.host.as_str(), url.port)),
        )
        .await
        .map_err(|_| {
            unreachable(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
            ))
        })?
        .map_err(unreachable)?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Io> = match (&self.tls, url.https) {
            (Some(tls), true) => {
                let name =
                    rustls::pki_types::ServerName::try_from(url.host.clone()).map_err(|e| {
                        ImportError::InvalidUrl {
                            url: url.text(),
                            why: e.to_string(),
                        }
                    })?;
                let tls_error = |e: std::io::Error| {
                    let mut why = e.to_string();
                    if why.contains("UnknownIssuer") {
                        why.push_str(
                            " (the CA that issued the server's certificate is not trusted)",
                        );
                    }
                    ImportError::Tls {
                        url: url.text(),
                        why,
                    }
                };
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(name, tcp))
                    .await
                    .map_err(|_| {
                        tls_error(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the TLS handshake did not finish",
                        ))
                    })?
                    .map_err(tls_error)?;
                Box::new(stream)
            }
            _ => Box::new(tcp),
        };
        // Reads of up to 4 MiB: fewer, larger frames for a fast stream.
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(4 << 20)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ImportError::Unreachable {
                url: url.text(),
                why: chain(&e),
            })?;
        if let Some(old) = self.connection.take() {
            old.abort();
        }
        self.connection = Some(tokio::spawn(async move {
            let _ = connection.await;
        }));
        Ok(sender)
    }

    async fn request(
        &mut self,
        url: &Url,
        from: Option<u64>,
    ) -> Result<http::Response<Incoming>, ImportError> {
        let mut sender = self.connect(url).await?;
        let mut request = Request::get(url.path.as_str())
            .header(header::HOST, url.authority.as_str())
            .header(header::USER_AGENT, "vmo-agent")
            .header(header::ACCEPT_ENCODING, "identity");
        if let Some((user, password)) = &self.src.basic_auth {
            if url.same_origin(&self.origin) {
                use base64::Engine;
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                request = request.header(header::AUTHORIZATION, format!("Basic {token}"));
            }
        }
        for (name, value) in &self.src.extra_headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(from) = from {
            request = request.header(header::RANGE, format!("bytes={from}-"));
            if let Some(v) = &self.validator {
                request = request.header(header::IF_RANGE, v.clone());
            }
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| ImportError::InvalidUrl {
                url: url.text(),
                why: e.to_string(),
            })?;
        tokio::time::timeout(RESPONSE_TIMEOUT, sender.send_request(request))
            .await
            .map_err(|_| ImportError::Unreachable {
                url: url.text(),
                why: format!("no response within {} s", RESPONSE_TIMEOUT.as_secs()),
            })?
            .map_err(|e| ImportError::Unreachable {
                url: url.text(),
                why: chain(&e),
            })
    }

    /// The next chunk of the body, resuming after a drop where possible; `None` at the end.
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>, ImportError> {
        loop {
            let Some(body) = self.body.as_mut() else {
                return Ok(None);
            };
            let why = match tokio::time::timeout(IDLE_TIMEOUT, body.frame()).await {
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => {
                        self.pos += data.len() as u64;
                        self.failures = 0;
                        return Ok(Some(data));
                    }
                    _ => continue,
                },
                Ok(None) if self.total.is_some_and(|t| self.pos < t) => {
                    "the body ended early".to_string()
                }
                Ok(None) => {
                    self.body = None;
                    return Ok(None);
                }
                Ok(Some(Err(e))) => format!("the connection broke ({})", chain(&e)),
                Err(_) => format!("no data arrived for {} s", IDLE_TIMEOUT.as_secs()),
            };
            self.body = None;
            self.resume(why).await?;
        }
    }

    fn interrupted(&self, why: String) -> ImportError {
        ImportError::Interrupted {
            what: format!("the download from {}", self.src.url),
            got: self.pos,
            expected: self.total,
            why,
        }
    }

    /// Continues the body from `self.pos` after it broke for `why`.
    async fn resume(&mut self, why: String) -> Result<(), ImportError> {
        if !self.resumable {
            return Err(self.interrupted(format!(
                "{why}, and the server does not accept byte ranges (Accept-Ranges) to resume"
            )));
        }
        let mut last = why.clone();
        while self.failures < MAX_RESUME_ATTEMPTS {
            tokio::time::sleep(FIRST_BACKOFF * 2u32.pow(self.failures)).await;
            self.failures += 1;
            tracing::info!(url = %self.src.url, from = self.pos, attempt = self.failures, why = %last, "resuming download");
            let url = self.url.clone();
            let response = match self.request(&url, Some(self.pos)).await {
                Ok(r) => r,
                Err(e) if e.is_retryable() => {
                    last = chain(&e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let status = response.status();
            if status == StatusCode::PARTIAL_CONTENT {
                let start = response
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if start != Some(self.pos) {
                    return Err(
                        self.interrupted(format!("{why}; the server resumed at the wrong offset"))
                    );
                }
                self.body = Some(response.into_body());
                return Ok(());
            }
            if status == StatusCode::OK {
                return Err(self.interrupted(format!(
                    "{why}; asked to resume, the server sent the whole file again (it changed, or ignores ranges)"
                )));
            }
            let e = status_error(&url, status);
            if !e.is_retryable() {
                return Err(self.interrupted(format!("{why}; resuming failed: {e}")));
            }
            last = e.to_string();
        }
        Err(self.interrupted(format!(
            "{why}; {MAX_RESUME_ATTEMPTS} attempts to resume failed, the last: {last}"
        )))
    }
}

fn status_error(url: &Url, status: StatusCode) -> ImportError {
    ImportError::HttpStatus {
        url: url.text(),
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("").to_string(),
    }
}

/// Trusts the system's CAs (when present) and `src.ca_pem`.
fn tls_connector(src: &HttpSource, url: &Url) -> Result<tokio_rustls::TlsConnector, ImportError> {
    let tls_error = |why: String| ImportError::Tls {
        url: url.text(),
        why,
    };
    let mut roots = rustls::RootCertStore::empty();
    if let Ok(system) = std::fs::read(SYSTEM_CAS) {
        let mut pem = system.as_slice();
        let certs: Vec<_> = rustls_pemfile::certs(&mut pem)
            .filter_map(Result::ok)
            .collect();
        roots.add_parsable_certificates(certs);
    }
    if let Some(pem) = &src.ca_pem {
        let mut any = false;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert =
                cert.map_err(|e| tls_error(format!("the CA certificate is unreadable: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| tls_error(format!("the CA certificate is unusable: {e}")))?;
            any = true;
        }
        if !any {
            return Err(tls_error("the CA bundle holds no PEM certificate".into()));
        }
    }
    if roots.is_empty() {
        return Err(tls_error(format!(
            "no CA to check the server's certificate by: {SYSTEM_CAS} is missing and no CA was given"
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("https://[::1]:8443/a/b.img?x=1").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.https), ("::1", 8443, true));
        assert_eq!(u.path, "/a/b.img?x=1");
        assert_eq!(
            u.join("c.img").unwrap().text(),
            "https://[::1]:8443/a/c.img"
        );
        assert_eq!(u.join("/d").unwrap().text(), "https://[::1]:8443/d");
        assert_eq!(
            u.join("../c.img").unwrap().text(),
            "https://[::1]:8443/c.img"
        );
        assert_eq!(
            u.join("./x/../y?q=1").unwrap().text(),
            "https://[::1]:8443/a/y?q=1"
        );
        assert_eq!(u.join("/p/../../q").unwrap().text(), "https://[::1]:8443/q");
        assert_eq!(u.join("http://other/e").unwrap().text(), "http://other/e");
        let plain = Url::parse("http://example.com").unwrap();
        assert_eq!((plain.port, plain.path.as_str()), (80, "/"));
        assert!(!plain.same_origin(&u));
        for bad in [
            "ftp://x/y",
            "http://user:pw@host/",
            "/just/a/path",
            "nonsense",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }
}
