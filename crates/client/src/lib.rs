//! The HTTPS client for vmo's API, used by the CLI, the controllers, the agent and the tests.
//!
//! It reads a kubeconfig, trusts the CA in it, sends the bearer token, keeps a small pool of
//! keep-alive HTTP/1.1 connections, and turns error responses back into the server's `Status`.

pub mod events;
pub mod informer;
pub mod kubeconfig;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use vmo_api::{KindInfo, Object, ObjectList, Status, WatchEvent};

pub use kubeconfig::Credentials;

/// A websocket to the server (consoles, VNC).
pub type WebSocket = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// Idle connections kept for reuse.
const POOL_SIZE: usize = 32;

/// Client failures. `Api` carries the server's own `Status`.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Kubeconfig(#[from] kubeconfig::KubeconfigError),
    #[error("invalid server URL {url:?}: {why}")]
    Url { url: String, why: String },
    #[error("invalid CA certificate")]
    Ca(#[source] std::io::Error),
    #[error("cannot reach the vmo server at {server}")]
    Connect {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with the vmo server at {server} failed")]
    Tls {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with the server failed")]
    Http(#[source] hyper::Error),
    #[error("{0}")]
    Api(Box<Status>),
    #[error("the server sent an unreadable response: {0}")]
    Decode(String),
}

impl ClientError {
    /// The HTTP code of an API error, if this is one.
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Api(s) => Some(s.code),
            _ => None,
        }
    }
    /// True for a 404.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }
    /// True for a 409.
    pub fn is_conflict(&self) -> bool {
        self.code() == Some(409)
    }
}

/// A connection to the vmo API server.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    authority: String,
    server_name: rustls::pki_types::ServerName<'static>,
    server: String,
    tls: TlsConnector,
    token: String,
    namespace: Option<String>,
    ca_pem: Option<Vec<u8>>,
    pool: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.inner.server)
            .finish()
    }
}

impl Client {
    /// A client from a kubeconfig file's current context.
    pub fn from_kubeconfig(path: &Path) -> Result<Self, ClientError> {
        Self::new(kubeconfig::load(path)?)
    }

    /// A client from credentials.
    pub fn new(creds: Credentials) -> Result<Self, ClientError> {
        let url = creds.server.trim_end_matches('/');
        let bad = |why: &str| ClientError::Url {
            url: creds.server.clone(),
            why: why.to_string(),
        };
        let authority = url
            .strip_prefix("https://")
            .ok_or_else(|| bad("vmo serves HTTPS only; the URL must start with https://"))?;
        if authority.contains('/') {
            return Err(bad("paths after host:port are not supported"));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:443")
        };
        let host = authority
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or(&authority)
            .to_string();
        let server_name =
            rustls::pki_types::ServerName::try_from(host).map_err(|e| bad(&e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        if let Some(pem) = &creds.ca_pem {
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                roots
                    .add(cert.map_err(ClientError::Ca)?)
                    .map_err(|e| ClientError::Ca(std::io::Error::other(e)))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Ca(std::io::Error::other(e)))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            inner: Arc::new(Inner {
                authority,
                server_name,
                server: url.to_string(),
                tls: TlsConnector::from(Arc::new(config)),
                token: creds.token,
                namespace: creds.namespace,
                ca_pem: creds.ca_pem,
                pool: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The server URL.
    pub fn server(&self) -> &str {
        &self.inner.server
    }

    /// The CA certificate (PEM) the client trusts the server by, if the kubeconfig has one.
    pub fn ca_pem(&self) -> Option<&[u8]> {
        self.inner.ca_pem.as_deref()
    }

    /// The kubeconfig context's default namespace.
    pub fn default_namespace(&self) -> Option<&str> {
        self.inner.namespace.as_deref()
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let tls = self.tls_stream().await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(ClientError::Http)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    async fn tls_stream(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ClientError> {
        let tcp = TcpStream::connect(&self.inner.authority)
            .await
            .map_err(|source| ClientError::Connect {
                server: self.inner.server.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        self.inner
            .tls
            .connect(self.inner.server_name.clone(), tcp)
            .await
            .map_err(|source| ClientError::Tls {
                server: self.inner.server.clone(),
                source,
            })
    }

    /// Opens a websocket on `path` (a console or VNC subresource) with the `plain.kubevirt.io`
    /// subprotocol, authenticated like every request. A refusal comes back as the server's Status.
    pub async fn websocket(&self, path: &str) -> Result<WebSocket, ClientError> {
        use tokio_tungstenite::tungstenite::{self, handshake::client::generate_key};
        let tls = self.tls_stream().await?;
        let request = Request::builder()
            .method(Method::GET)
            .uri(format!("wss://{}{path}", self.inner.authority))
            .header(header::HOST, &self.inner.authority)
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.inner.token),
            )
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", generate_key())
            .header("sec-websocket-protocol", "plain.kubevirt.io")
            .body(())
            .map_err(|e| ClientError::Url {
                url: path.to_string(),
                why: e.to_string(),
            })?;
        match tokio_tungstenite::client_async(request, tls).await {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::Error::Http(response)) => {
                let status = response.status();
                let body = response.into_body().unwrap_or_default();
                decode_answer(status, &body).and_then(|_| {
                    Err(ClientError::Decode(format!(
                        "the server answered {status} instead of switching to a websocket"
                    )))
                })
            }
            Err(e) => Err(ClientError::Decode(format!("websocket handshake: {e}"))),
        }
    }

    async fn sender(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        loop {
            let pooled = self.inner.pool.lock().ok().and_then(|mut p| p.pop());
            match pooled {
                Some(mut s) => {
                    if s.ready().await.is_ok() {
                        return Ok(s);
                    }
                }
                None => return self.connect().await,
            }
        }
    }

    fn give_back(&self, sender: SendRequest<Full<Bytes>>) {
        if let Ok(mut pool) = self.inner.pool.lock() {
            if pool.len() < POOL_SIZE {
                pool.push(sender);
            }
        }
    }

    /// A request to the server with this client's credentials and `accept`.
    fn request_head(
        &self,
        method: Method,
        path_and_query: &str,
        accept: &str,
    ) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(header::HOST, &self.inner.authority)
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.inner.token),
            )
            .header(header::ACCEPT, accept)
            .header(
                header::USER_AGENT,
                concat!("vmo/", env!("CARGO_PKG_VERSION")),
            )
    }

    /// Sends a request and returns the raw response (for streams).
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(&str, Vec<u8>)>,
        accept: &str,
    ) -> Result<http::Response<Incoming>, ClientError> {
        let mut builder = self.request_head(method, path_and_query, accept);
        let bytes = match body {
            Some((content_type, bytes)) => {
                builder = builder.header(header::CONTENT_TYPE, content_type);
                Bytes::from(bytes)
            }
            None => Bytes::new(),
        };
        let request = builder
            .body(Full::new(bytes))
            .map_err(|e| ClientError::Url {
                url: path_and_query.to_string(),
                why: e.to_string(),
            })?;
        // A pooled connection the server closed fails at once; retry such a request on a fresh one.
        let mut sender = self.sender().await?;
        let response = match sender.send_request(request.clone()).await {
            Ok(r) => r,
            Err(e) if e.is_canceled() || e.is_closed() || e.is_incomplete_message() => {
                sender = self.connect().await?;
                sender
                    .send_request(request)
                    .await
                    .map_err(ClientError::Http)?
            }
            Err(e) => return Err(ClientError::Http(e)),
        };
        let streaming = path_and_query.contains("watch=true");
        if !streaming {
            self.give_back(sender);
        }
        Ok(response)
    }

    /// Sends a request whose body is streamed (`body` of any length, never buffered whole) on a
    /// connection of its own, with `headers` added; returns the answer as it is. Uploads use it.
    pub async fn send_streaming<B>(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, String)],
        body: B,
    ) -> Result<http::Response<Incoming>, ClientError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut builder = self.request_head(method, path_and_query, "application/json");
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        let request = builder.body(body).map_err(|e| ClientError::Url {
            url: path_and_query.to_string(),
            why: e.to_string(),
        })?;
        let tls = self.tls_stream().await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(ClientError::Http)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        sender
            .send_request(request)
            .await
            .map_err(ClientError::Http)
    }

    /// Reads a response's whole (small) body and decodes it as `call` does.
    pub async fn decode_response(response: http::Response<Incoming>) -> Result<Value, ClientError> {
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(ClientError::Http)?
            .to_bytes();
        decode_answer(status, &bytes)
    }

    /// Sends a request and decodes the JSON answer; an error status becomes `ClientError::Api`.
    pub async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(&str, Vec<u8>)>,
        accept: &str,
    ) -> Result<Value, ClientError> {
        let (status, bytes) = self
            .send_and_read(method, path_and_query, body, accept)
            .await?;
        decode_answer(status, &bytes)
    }

    /// Sends a request and reads the whole answer.
    async fn send_and_read(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(&str, Vec<u8>)>,
        accept: &str,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let response = self.send(method, path_and_query, body, accept).await?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(ClientError::Http)?
            .to_bytes();
        Ok((status, bytes))
    }

    /// GET a path as text (`/metrics`); an error status becomes `ClientError::Api`.
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let (status, bytes) = self
            .send_and_read(Method::GET, path, None, "text/plain")
            .await?;
        if !status.is_success() {
            return decode_answer(status, &bytes).map(|_| String::new());
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// GET a path as JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, path, None, "application/json").await
    }

    /// Reads one object.
    pub async fn get(
        &self,
        kind: &KindInfo,
        namespace: &str,
        name: &str,
    ) -> Result<Object, ClientError> {
        into_object(
            self.get_json(&path(kind, Some(namespace), Some(name), None))
                .await?,
        )
    }

    /// Lists objects; `query` is appended as is (`labelSelector=...&limit=...`).
    pub async fn list(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        query: &str,
    ) -> Result<ObjectList, ClientError> {
        let p = with_query(path(kind, namespace, None, None), query);
        serde_json::from_value(self.get_json(&p).await?)
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Creates an object.
    pub async fn create(
        &self,
        kind: &KindInfo,
        namespace: &str,
        obj: &Value,
    ) -> Result<Object, ClientError> {
        let body = serde_json::to_vec(obj).unwrap_or_default();
        into_object(
            self.call(
                Method::POST,
                &path(kind, Some(namespace), None, None),
                Some(("application/json", body)),
                "application/json",
            )
            .await?,
        )
    }

    /// Removes `finalizer` from `obj`, conditional on the version read (a conflict means someone
    /// else wrote it meanwhile; the caller's next pass decides again).
    pub async fn remove_finalizer(
        &self,
        kind: &KindInfo,
        obj: &Object,
        finalizer: &str,
    ) -> Result<Object, ClientError> {
        let mut released = obj.clone();
        released.metadata.finalizers.retain(|f| f != finalizer);
        self.update(kind, &released, None).await
    }

    /// Replaces an object, or its status with `subresource` = `Some("status")`.
    pub async fn update(
        &self,
        kind: &KindInfo,
        obj: &Object,
        subresource: Option<&str>,
    ) -> Result<Object, ClientError> {
        let body = serde_json::to_vec(obj).unwrap_or_default();
        let p = path(
            kind,
            Some(&obj.metadata.namespace),
            Some(&obj.metadata.name),
            subresource,
        );
        into_object(
            self.call(
                Method::PUT,
                &p,
                Some(("application/json", body)),
                "application/json",
            )
            .await?,
        )
    }

    /// Patches an object; `content_type` picks the patch kind.
    pub async fn patch(
        &self,
        kind: &KindInfo,
        namespace: &str,
        name: &str,
        content_type: &str,
        body: Vec<u8>,
        query: &str,
    ) -> Result<Object, ClientError> {
        let p = with_query(path(kind, Some(namespace), Some(name), None), query);
        into_object(
            self.call(
                Method::PATCH,
                &p,
                Some((content_type, body)),
                "application/json",
            )
            .await?,
        )
    }

    /// JSON merge patch of an object, or of its `subresource` (`status`), as `manager`.
    pub async fn merge_patch(
        &self,
        kind: &KindInfo,
        namespace: &str,
        name: &str,
        subresource: Option<&str>,
        patch: &Value,
        manager: &str,
    ) -> Result<Object, ClientError> {
        let p = with_query(
            path(kind, Some(namespace), Some(name), subresource),
            &format!("fieldManager={}", encode_query(manager)),
        );
        let body = serde_json::to_vec(patch).unwrap_or_default();
        into_object(
            self.call(
                Method::PATCH,
                &p,
                Some(("application/merge-patch+json", body)),
                "application/json",
            )
            .await?,
        )
    }

    /// Server-side apply of a whole manifest as `manager`.
    pub async fn apply(
        &self,
        kind: &KindInfo,
        obj: &Value,
        manager: &str,
        force: bool,
    ) -> Result<Object, ClientError> {
        let namespace = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("");
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let query = format!("fieldManager={}&force={force}", encode_query(manager));
        self.patch(
            kind,
            namespace,
            name,
            "application/apply-patch+yaml",
            serde_json::to_vec(obj).unwrap_or_default(),
            &query,
        )
        .await
    }

    /// Deletes an object with a propagation policy (`Background`, `Foreground`, `Orphan`).
    pub async fn delete(
        &self,
        kind: &KindInfo,
        namespace: &str,
        name: &str,
        propagation: &str,
    ) -> Result<Object, ClientError> {
        self.delete_with_uid(kind, namespace, name, propagation, None)
            .await
    }

    /// Deletes an object only if it still has `uid` (not a namesake created since it was read).
    pub async fn delete_with_uid(
        &self,
        kind: &KindInfo,
        namespace: &str,
        name: &str,
        propagation: &str,
        uid: Option<&str>,
    ) -> Result<Object, ClientError> {
        let mut options = serde_json::json!({
            "kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation
        });
        if let Some(uid) = uid {
            options["preconditions"] = serde_json::json!({"uid": uid});
        }
        let body = serde_json::to_vec(&options).unwrap_or_default();
        into_object(
            self.call(
                Method::DELETE,
                &path(kind, Some(namespace), Some(name), None),
                Some(("application/json", body)),
                "application/json",
            )
            .await?,
        )
    }

    /// Starts a watch; `query` holds selectors and `resourceVersion`.
    pub async fn watch(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        query: &str,
    ) -> Result<WatchStream, ClientError> {
        let mut p = format!("{}?watch=true", path(kind, namespace, None, None));
        if !query.is_empty() {
            p = format!("{p}&{query}");
        }
        let response = self.send(Method::GET, &p, None, "application/json").await?;
        if !response.status().is_success() {
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(ClientError::Http)?
                .to_bytes();
            return Err(decode_answer(status, &bytes)
                .err()
                .unwrap_or(ClientError::Decode("watch refused".into())));
        }
        Ok(WatchStream {
            body: response.into_body(),
            buffer: Vec::new(),
        })
    }
}

fn decode_answer(status: StatusCode, bytes: &[u8]) -> Result<Value, ClientError> {
    if status.is_success() {
        return serde_json::from_slice(bytes).map_err(|e| ClientError::Decode(e.to_string()));
    }
    match serde_json::from_slice::<Status>(bytes) {
        Ok(s) if s.kind == "Status" => Err(ClientError::Api(Box::new(s))),
        _ => Err(ClientError::Api(Box::new(Status::failure(
            status.as_u16(),
            status.canonical_reason().unwrap_or("Error"),
            String::from_utf8_lossy(bytes).trim().to_string(),
        )))),
    }
}

fn into_object(v: Value) -> Result<Object, ClientError> {
    Object::from_value(v).map_err(|e| ClientError::Decode(e.to_string()))
}

/// Percent-encodes a query value.
pub fn encode_query(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Appends a query string (already encoded) to a path.
pub fn with_query(path: String, query: &str) -> String {
    if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    }
}

/// The URL path of a kind's collection or object.
pub fn path(
    kind: &KindInfo,
    namespace: Option<&str>,
    name: Option<&str>,
    subresource: Option<&str>,
) -> String {
    let mut p = if kind.group.is_empty() {
        format!("/api/{}", kind.version)
    } else {
        format!("/apis/{}/{}", kind.group, kind.version)
    };
    if kind.namespaced {
        if let Some(ns) = namespace.filter(|n| !n.is_empty()) {
            p.push_str(&format!("/namespaces/{ns}"));
        }
    }
    p.push('/');
    p.push_str(kind.plural);
    if let Some(name) = name {
        p.push('/');
        p.push_str(name);
        if let Some(sub) = subresource {
            p.push('/');
            p.push_str(sub);
        }
    }
    p
}

/// A stream of watch events.
#[derive(Debug)]
pub struct WatchStream {
    body: Incoming,
    buffer: Vec<u8>,
}

impl WatchStream {
    /// Reads watch events from a response already received (for custom `Accept` headers).
    pub fn from_response(response: http::Response<Incoming>) -> Self {
        Self {
            body: response.into_body(),
            buffer: Vec::new(),
        }
    }

    /// The next event; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, ClientError>> {
        loop {
            if let Some(pos) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=pos).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(
                    serde_json::from_slice(&line).map_err(|e| ClientError::Decode(e.to_string())),
                );
            }
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                Err(e) => return Some(Err(ClientError::Http(e))),
            }
        }
    }
}
