//! The HTTP(S) side of an import: one GET, following redirects, whose body is read straight into
//! the import's buffer; when the connection drops, stalls or ends short of `Content-Length`, and
//! the server announced `Accept-Ranges: bytes`, the download continues from the last byte
//! received (`Range:` with `If-Range:`, so a file that changed meanwhile is not spliced), with
//! backoff.
//!
//! HTTP/1.1 only, one request per connection, over tokio and rustls (ring); the protocol itself
//! is in [`wire`], and why it is not hyper's client is said there; how the socket is read, in
//! [`conn`].

mod conn;
mod url;
mod wire;

use super::{HttpSource, ImportError};
use conn::Conn;
use http::header::{self, HeaderName, HeaderValue};
use http::StatusCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use url::Url;
use wire::{Body, Response};

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

/// A download in progress.
pub(crate) struct Download<'a> {
    src: &'a HttpSource,
    origin: Url,
    url: Url,
    tls: Option<tokio_rustls::TlsConnector>,
    body: Option<Body>,
    pos: u64,
    total: Option<u64>,
    resumable: bool,
    validator: Option<HeaderValue>,
    failures: u32,
}

impl<'a> Download<'a> {
    /// Sends the request and checks the response status; the body is read by [`Self::read`].
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
            pos: 0,
            total: None,
            resumable: false,
            validator: None,
            failures: 0,
        };
        for _ in 0..=MAX_REDIRECTS {
            let url = download.url.clone();
            let response = download.request(&url, None).await?;
            let status = response.status;
            if status.is_redirection() {
                if let Some(location) = response
                    .headers
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
            let headers = &response.headers;
            download.total = response.body.length();
            download.resumable = headers
                .get(header::ACCEPT_RANGES)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|u| u.trim().eq_ignore_ascii_case("bytes")));
            download.validator = headers
                .get(header::ETAG)
                .filter(|e| !e.as_bytes().starts_with(b"W/"))
                .or_else(|| headers.get(header::LAST_MODIFIED))
                .cloned();
            download.body = Some(response.body);
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

    /// A TCP connection to `url`, with TLS for https.
    async fn connect(&mut self, url: &Url) -> Result<Conn, ImportError> {
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
        let (Some(tls), true) = (&self.tls, url.https) else {
            return Ok(Conn::tcp(tcp));
        };
        let name = rustls::pki_types::ServerName::try_from(url.host.clone()).map_err(|e| {
            ImportError::InvalidUrl {
                url: url.text(),
                why: e.to_string(),
            }
        })?;
        let tls_error = |e: std::io::Error| {
            let mut why = e.to_string();
            if why.contains("UnknownIssuer") {
                why.push_str(" (the CA that issued the server's certificate is not trusted)");
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
        Ok(Conn::Stream(Box::new(stream)))
    }

    /// The request head for `url`, from byte `from` on if given.
    fn request_head(&self, url: &Url, from: Option<u64>) -> Vec<u8> {
        let mut head = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: vmo-agent\r\nAccept-Encoding: identity\r\nConnection: close\r\n",
            url.path, url.authority
        )
        .into_bytes();
        let mut field = |name: &str, value: &[u8]| {
            head.extend_from_slice(name.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value);
            head.extend_from_slice(b"\r\n");
        };
        if let Some((user, password)) = &self.src.basic_auth {
            if url.same_origin(&self.origin) {
                use base64::Engine;
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                field("Authorization", format!("Basic {token}").as_bytes());
            }
        }
        // Names and values were checked in `open`.
        for (name, value) in &self.src.extra_headers {
            field(name, value.as_bytes());
        }
        if let Some(from) = from {
            field("Range", format!("bytes={from}-").as_bytes());
            if let Some(v) = &self.validator {
                field("If-Range", v.as_bytes());
            }
        }
        head.extend_from_slice(b"\r\n");
        head
    }

    async fn request(&mut self, url: &Url, from: Option<u64>) -> Result<Response, ImportError> {
        let stream = self.connect(url).await?;
        let head = self.request_head(url, from);
        tokio::time::timeout(RESPONSE_TIMEOUT, wire::exchange(stream, &head))
            .await
            .map_err(|_| ImportError::Unreachable {
                url: url.text(),
                why: format!("no response within {} s", RESPONSE_TIMEOUT.as_secs()),
            })?
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::InvalidData => ImportError::BadResponse {
                    url: url.text(),
                    why: e.to_string(),
                },
                _ => ImportError::Unreachable {
                    url: url.text(),
                    why: e.to_string(),
                },
            })
    }

    /// Reads the next bytes of the body into `out`, resuming after a drop where possible; 0 at
    /// the end.
    pub(crate) async fn read(&mut self, out: &mut [u8]) -> Result<usize, ImportError> {
        loop {
            let Some(body) = self.body.as_mut() else {
                return Ok(0);
            };
            let why = match tokio::time::timeout(IDLE_TIMEOUT, body.read(out)).await {
                Ok(Ok(0)) if self.total.is_some_and(|t| self.pos < t) => {
                    "the body ended early".to_string()
                }
                Ok(Ok(0)) => {
                    self.body = None;
                    return Ok(0);
                }
                Ok(Ok(n)) => {
                    self.pos += n as u64;
                    self.failures = 0;
                    return Ok(n);
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                    format!("the server sent an invalid body ({e})")
                }
                Ok(Err(e)) => format!("the connection broke ({e})"),
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
                    last = e.to_string();
                    continue;
                }
                Err(e) => return Err(e),
            };
            let status = response.status;
            if status == StatusCode::PARTIAL_CONTENT {
                let start = response
                    .headers
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
                self.body = Some(response.body);
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
