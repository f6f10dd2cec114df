//! The HTTPS front: TLS, authentication, routing, body limits, content negotiation (JSON, YAML in,
//! Table out), and the translation of resource requests into `ResourceService` calls.

use crate::auth::Authenticator;
use crate::routes::{self, ResourcePath, Route};
use crate::service::{DeleteOptions, ListOptions, Propagation, ResourceService, WriteOptions};
use crate::watch::{self, WatchRequest};
use crate::{discovery, openapi};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::Value;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use vmo_api::decode::MAX_BODY_BYTES;
use vmo_api::fieldset::Scope;
use vmo_api::patch::PatchKind;
use vmo_api::selector::{FieldSelector, LabelSelector};
use vmo_api::{KindInfo, Registry, Status};
use vmo_store::Store;

/// Response bodies: whole JSON documents, or a stream of watch events.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Most connections served at once; further clients wait in the listen backlog.
const MAX_CONNECTIONS: usize = 4096;
/// Time a client has to send a request's headers (slow or idle clients are dropped).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests (watches included) one HTTP/2 connection may have open at once, as kube-apiserver.
const MAX_STREAMS_PER_CONNECTION: u32 = 250;
/// How often an idle HTTP/2 connection is pinged, and how long the answer may take.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Tunables of the server.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Idle time between BOOKMARK events on a watch that asked for them.
    pub bookmark_interval: Duration,
    /// Longest a watch runs when the client gives no timeout.
    pub max_watch: Duration,
    /// The client identity for reaching agents (consoles, VNC, node metrics); without it those
    /// answer 503.
    pub agent_proxy: Option<crate::agent_proxy::ProxyIdentity>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bookmark_interval: Duration::from_secs(5),
            max_watch: Duration::from_secs(1800),
            agent_proxy: None,
        }
    }
}

/// The API server.
#[derive(Debug)]
pub struct ApiServer {
    service: ResourceService,
    auth: Authenticator,
    settings: ServerSettings,
    watch_lines: Arc<watch::LineCache>,
    metrics: crate::metrics::Metrics,
    extensions: std::sync::RwLock<Vec<Arc<dyn crate::extension::Extension>>>,
}

fn json_response(code: u16, value: &impl serde::Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)).boxed_unsync())
        .expect("valid response")
}

fn status_response(status: &Status) -> Response<Body> {
    json_response(status.code, status)
}

fn not_found_route() -> Status {
    Status::failure(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

impl ApiServer {
    /// A server over `store`, accepting `auth`'s tokens.
    pub fn new(store: Arc<dyn Store>, auth: Authenticator, settings: ServerSettings) -> Arc<Self> {
        Arc::new(Self {
            service: ResourceService::new(store, Arc::new(Registry::builtin())),
            auth,
            settings,
            watch_lines: Arc::default(),
            metrics: Default::default(),
            extensions: Default::default(),
        })
    }

    /// Serves `extension` from now on (see [`crate::extension`]).
    pub fn extend(&self, extension: Arc<dyn crate::extension::Extension>) {
        self.extensions
            .write()
            .expect("extensions lock")
            .push(extension);
    }

    async fn extension(
        &self,
        req: Request<Incoming>,
        path: ResourcePath,
    ) -> Result<Response<Body>, Status> {
        let (Some(name), Some(sub)) = (&path.name, &path.subresource) else {
            return Err(not_found_route());
        };
        let found = self
            .extensions
            .read()
            .expect("extensions lock")
            .iter()
            .find(|e| e.path() == (path.plural.as_str(), sub.as_str()))
            .cloned()
            .ok_or_else(not_found_route)?;
        let query = routes::query(req.uri().query());
        let method = req.method().clone();
        let bytes = read_body(req).await?;
        let body = if bytes.iter().all(u8::is_ascii_whitespace) {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .map_err(|e| Status::bad_request(format!("the body is not JSON: {e}")))?
        };
        let call = crate::extension::ExtensionCall {
            method,
            namespace: path.namespace.clone(),
            name: name.clone(),
            dry_run: query.get("dryRun").is_some_and(|v| v == "All"),
            body,
        };
        Ok(json_response(200, &found.call(call).await?))
    }

    /// The resource service, for in-process callers (bootstrap, tests).
    pub fn service(&self) -> &ResourceService {
        &self.service
    }

    /// Creates the namespaces every cluster has.
    pub async fn bootstrap(&self) -> Result<(), Status> {
        for ns in [
            "default",
            "vmo-system",
            vmo_api::kinds::coordination::NODE_LEASE_NAMESPACE,
        ] {
            self.service.ensure_namespace(ns).await?;
        }
        Ok(())
    }

    /// Serves HTTPS on `listener` until `shutdown` completes.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        shutdown: impl Future<Output = ()>,
    ) {
        let acceptor = TlsAcceptor::from(tls);
        let mut connections = tokio::task::JoinSet::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (tcp, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Typically out of file descriptors: back off instead of spinning.
                            tracing::warn!(error = %e, "accepting a connection failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, "too many connections; closing the new one");
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    let acceptor = acceptor.clone();
                    let server = self.clone();
                    connections.spawn(async move {
                        let _slot = slot;
                        let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                        let service = hyper::service::service_fn(move |req| {
                            let server = server.clone();
                            async move { Ok::<_, Infallible>(server.handle(req).await) }
                        });
                        // HTTP/2 (negotiated by ALPN) carries every watch of a browser tab on
                        // one connection; over HTTP/1.1 a browser's six connections per host are
                        // used up by six watches and the tab's next request waits for ever.
                        // WebSocket consoles stay on HTTP/1.1 upgrades.
                        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                        builder
                            .http1()
                            .timer(TokioTimer::new())
                            .header_read_timeout(HEADER_READ_TIMEOUT)
                            .keep_alive(true);
                        builder
                            .http2()
                            .timer(TokioTimer::new())
                            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
                            // A peer that stops answering pings is gone: free its streams.
                            .keep_alive_interval(Some(H2_PING_INTERVAL))
                            .keep_alive_timeout(H2_PING_TIMEOUT);
                        if let Err(e) = builder
                            .serve_connection_with_upgrades(TokioIo::new(tls), service)
                            .await
                        {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        connections.abort_all();
    }

    /// Handles one request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let watch = req
            .uri()
            .query()
            .is_some_and(|q| q.contains("watch=true") || q.contains("watch=1"));
        let response = self.route(req).await;
        let (resource, named) = match routes::parse(&path) {
            Route::Resource(p) => (p.plural, p.name.is_some()),
            _ => ("other".to_string(), true),
        };
        let verb = crate::metrics::verb(&method, named, watch);
        self.metrics.observe(
            verb,
            &resource,
            response.status().as_u16(),
            started.elapsed(),
        );
        tracing::debug!(%method, %path, status = response.status().as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "request");
        response
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Body> {
        let route = routes::parse(req.uri().path());
        match route {
            Route::Health => {
                return Response::new(Full::new(Bytes::from_static(b"ok")).boxed_unsync());
            }
            Route::Version => return json_response(200, &discovery::version()),
            Route::Ui(path) => return crate::ui::serve(&path),
            _ => {}
        }
        let authorization = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| crate::auth::websocket_bearer(req.headers()));
        if self.auth.authenticate(authorization.as_deref()).is_none() {
            return status_response(&Status::unauthorized());
        }
        let registry = self.service.registry();
        match route {
            Route::CoreVersions => json_response(200, &discovery::core_versions()),
            Route::Groups => json_response(200, &discovery::groups(registry)),
            Route::Group(g) => match discovery::group(registry, &g) {
                Some(doc) => json_response(200, &doc),
                None => status_response(&not_found_route()),
            },
            Route::Resources { group, version } => {
                match discovery::resources(registry, &group, &version) {
                    Some(doc) => json_response(200, &doc),
                    None => status_response(&not_found_route()),
                }
            }
            Route::OpenApiV3Root => json_response(200, &openapi::root(registry)),
            Route::Metrics => {
                let revision = self.service.store().revision().await.unwrap_or(0);
                let vmi_kind = *registry.resolve("vmi").expect("vmis are registered");
                let mut phases = std::collections::BTreeMap::new();
                if let Ok(page) = self
                    .service
                    .list(&vmi_kind, None, &ListOptions::default())
                    .await
                {
                    for vmi in page.items {
                        let phase = vmi.status()["phase"]
                            .as_str()
                            .unwrap_or("Pending")
                            .to_string();
                        let node = vmi.status()["nodeName"].as_str().unwrap_or("").to_string();
                        *phases.entry((phase, node)).or_insert(0u64) += 1;
                    }
                }
                Response::builder()
                    .status(200)
                    .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                    .body(
                        Full::new(Bytes::from(self.metrics.render(revision, &phases)))
                            .boxed_unsync(),
                    )
                    .expect("valid response")
            }
            Route::OpenApiV2 => {
                let protobuf = req
                    .headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|a| a.contains("protobuf"));
                let (body, content_type) = openapi::v2_document(protobuf);
                Response::builder()
                    .status(200)
                    .header(header::CONTENT_TYPE, content_type)
                    .body(Full::new(Bytes::from(body)).boxed_unsync())
                    .expect("valid response")
            }
            Route::OpenApiV3 { group_version } => {
                let (group, version) = match group_version.split('/').collect::<Vec<_>>().as_slice()
                {
                    ["api", v] => (String::new(), v.to_string()),
                    ["apis", g, v] => (g.to_string(), v.to_string()),
                    _ => return status_response(&not_found_route()),
                };
                match openapi::document(registry, &group, &version) {
                    Some(doc) => json_response(200, &doc),
                    None => status_response(&not_found_route()),
                }
            }
            Route::Resource(path) => match self.resource(req, path).await {
                Ok(resp) => resp,
                Err(status) => status_response(&status),
            },
            Route::NodeProxy { node, path } => match self.node_proxy(&node, &path).await {
                Ok(resp) => resp,
                Err(status) => status_response(&status),
            },
            Route::NotFound | Route::Health | Route::Version | Route::Ui(_) => {
                status_response(&not_found_route())
            }
        }
    }

    async fn resource(
        &self,
        req: Request<Incoming>,
        path: ResourcePath,
    ) -> Result<Response<Body>, Status> {
        if path.group == crate::extension::GROUP {
            return self.extension(req, path).await;
        }
        if path.group == "subresources.kubevirt.io" {
            if crate::console::is_stream(&path) {
                let proxy = self.settings.agent_proxy.as_ref();
                return crate::console::serve(&self.service, proxy, req, &path).await;
            }
            return self.lifecycle(req, path).await;
        }
        if crate::upload::is_upload(&path) {
            // Streams to the agent: no body limit, nothing buffered.
            let proxy = self.settings.agent_proxy.as_ref();
            return crate::upload::serve(&self.service, proxy, req, &path).await;
        }
        let kind = *self
            .service
            .registry()
            .by_resource(&path.group, &path.version, &path.plural)
            .ok_or_else(not_found_route)?;
        if !kind.namespaced && path.namespace.is_some() {
            return Err(not_found_route());
        }
        if kind.namespaced && path.namespace.is_none() && path.name.is_some() {
            return Err(not_found_route());
        }
        let query = routes::query(req.uri().query());
        let as_table = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("as=Table"));
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let method = req.method().clone();
        let namespace = path.namespace.clone().unwrap_or_default();
        let write = WriteOptions {
            dry_run: query.get("dryRun").is_some_and(|v| v == "All"),
            field_manager: query.get("fieldManager").cloned().unwrap_or_default(),
            force: query.get("force").is_some_and(|v| v == "true"),
        };
        let scope = match path.subresource.as_deref() {
            None => Scope::Main,
            Some("status") if kind.status_subresource => Scope::Status,
            Some("finalize") if kind.kind == "Namespace" && method == Method::PUT => {
                let body = read_json(req).await?;
                let name = path.name.as_deref().unwrap_or_default();
                let ns = self.service.finalize_namespace(name, body).await?;
                return Ok(json_response(200, &ns));
            }
            Some(_) => return Err(not_found_route()),
        };
        let svc = &self.service;
        match (method, path.name.as_deref()) {
            (Method::GET, None) if is_true(query.get("watch")) => {
                self.watch(kind, &path, &query, as_table).await
            }
            (Method::GET, None) => {
                let opts = list_options(&query)?;
                let page = svc.list(&kind, path.namespace.as_deref(), &opts).await?;
                if as_table {
                    return Ok(json_response(
                        200,
                        &vmo_api::table::table(
                            &kind,
                            &page.items,
                            &page.resource_version.to_string(),
                            &page.continue_token,
                        ),
                    ));
                }
                Ok(json_response(
                    200,
                    &serde_json::json!({
                        "apiVersion": kind.api_version(),
                        "kind": format!("{}List", kind.kind),
                        "metadata": {"resourceVersion": page.resource_version.to_string(), "continue": page.continue_token},
                        "items": page.items,
                    }),
                ))
            }
            (Method::GET, Some(name)) => {
                let obj = svc.get(&kind, &namespace, name).await?;
                if as_table {
                    return Ok(json_response(
                        200,
                        &vmo_api::table::table(
                            &kind,
                            std::slice::from_ref(&obj),
                            &obj.metadata.resource_version,
                            "",
                        ),
                    ));
                }
                Ok(json_response(200, &obj))
            }
            (Method::POST, None) if scope == Scope::Main => {
                let body = read_object(req, &content_type).await?;
                let obj = svc.create(&kind, &namespace, body, &write).await?;
                Ok(json_response(201, &obj))
            }
            (Method::PUT, Some(name)) => {
                let body = read_object(req, &content_type).await?;
                let obj = svc
                    .update(&kind, &namespace, name, body, scope, &write)
                    .await?;
                Ok(json_response(200, &obj))
            }
            (Method::PATCH, Some(name)) => {
                let patch_kind = PatchKind::from_content_type(&content_type)
                    .ok_or_else(|| Status::unsupported_media_type(&content_type))?;
                let body = read_body(req).await?;
                let obj = svc
                    .patch(&kind, &namespace, name, patch_kind, &body, scope, &write)
                    .await?;
                Ok(json_response(200, &obj))
            }
            (Method::DELETE, Some(name)) if scope == Scope::Main => {
                let body = read_body(req).await?;
                let opts = delete_options(&query, &body, write.dry_run)?;
                let obj = svc.delete(&kind, &namespace, name, &opts).await?;
                let code = if obj.metadata.deletion_timestamp.is_some() {
                    202
                } else {
                    200
                };
                Ok(json_response(code, &obj))
            }
            (Method::DELETE, None) if scope == Scope::Main => {
                let body = read_body(req).await?;
                let opts = delete_options(&query, &body, write.dry_run)?;
                let list = list_options(&query)?;
                let page = svc.list(&kind, path.namespace.as_deref(), &list).await?;
                let mut deleted = Vec::new();
                for obj in page.items {
                    match svc
                        .delete(&kind, &obj.metadata.namespace, &obj.metadata.name, &opts)
                        .await
                    {
                        Ok(o) => deleted.push(o),
                        Err(s) if s.code == 404 => {}
                        Err(s) => return Err(s),
                    }
                }
                Ok(json_response(
                    200,
                    &serde_json::json!({
                        "apiVersion": kind.api_version(),
                        "kind": format!("{}List", kind.kind),
                        "metadata": {},
                        "items": deleted,
                    }),
                ))
            }
            (m, _) => Err(Status::method_not_allowed(format!(
                "{m} is not supported on this path"
            ))),
        }
    }

    /// `GET /api/v1/nodes/NAME/proxy/metrics` (or `healthz`): the node agent's page, for
    /// Prometheus and admins who hold an API token but no agent client certificate.
    async fn node_proxy(&self, node: &str, path: &str) -> Result<Response<Body>, Status> {
        if !matches!(path, "metrics" | "healthz") {
            return Err(Status::not_found("nodes/proxy", path));
        }
        let node_kind = *self
            .service
            .registry()
            .resolve("nodes")
            .expect("nodes are registered");
        let node = self.service.get(&node_kind, "", node).await?;
        let proxy =
            self.settings.agent_proxy.as_ref().ok_or_else(|| {
                Status::unavailable("this server has no client identity for agents")
            })?;
        let (code, body) = proxy.get(&node, &format!("/{path}")).await?;
        Ok(Response::builder()
            .status(code)
            .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .body(Full::new(body).boxed_unsync())
            .expect("valid response"))
    }

    /// `PUT .../virtualmachines/NAME/{start,stop,restart}` with an optional `{"gracePeriod": N}`.
    async fn lifecycle(
        &self,
        req: Request<Incoming>,
        path: ResourcePath,
    ) -> Result<Response<Body>, Status> {
        let (Some(ns), Some(name), Some(sub)) = (&path.namespace, &path.name, &path.subresource)
        else {
            return Err(not_found_route());
        };
        let action = match (path.plural.as_str(), crate::lifecycle::Action::parse(sub)) {
            ("virtualmachines", Some(a)) => a,
            (
                "virtualmachineinstances",
                Some(a @ (crate::lifecycle::Action::Pause | crate::lifecycle::Action::Unpause)),
            ) => a,
            _ => return Err(not_found_route()),
        };
        if req.method() != Method::PUT {
            return Err(Status::method_not_allowed(format!(
                "{} is not supported on {sub}; use PUT",
                req.method()
            )));
        }
        let body = read_body(req).await?;
        let options: Value = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&body)
                .map_err(|e| Status::bad_request(format!("invalid {sub} options: {e}")))?
        };
        let grace = match options.get("gracePeriod") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_i64().filter(|g| *g >= 0).ok_or_else(|| {
                Status::bad_request("gracePeriod must be a whole number of seconds, 0 or more")
            })?),
        };
        self.service.vm_lifecycle(ns, name, action, grace).await?;
        Ok(json_response(202, &serde_json::json!({})))
    }

    async fn watch(
        &self,
        kind: KindInfo,
        path: &ResourcePath,
        query: &HashMap<String, String>,
        as_table: bool,
    ) -> Result<Response<Body>, Status> {
        let timeout = match query.get("timeoutSeconds") {
            Some(t) => Duration::from_secs(
                t.parse()
                    .map_err(|_| Status::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
            ),
            None => self.settings.max_watch,
        };
        let request = WatchRequest {
            namespace: path.namespace.clone(),
            list: list_options(query)?,
            resource_version: query.get("resourceVersion").cloned(),
            bookmarks: is_true(query.get("allowWatchBookmarks")),
            bookmark_interval: self.settings.bookmark_interval,
            timeout: timeout.min(self.settings.max_watch),
            as_table,
            lines: self.watch_lines.clone(),
        };
        let events = watch::open(&self.service, kind, request).await?;
        let body = StreamBody::new(events.map(|b| Ok::<_, Infallible>(Frame::data(b))));
        Ok(Response::builder()
            .status(200)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(BodyExt::boxed_unsync(body))
            .expect("valid response"))
    }
}

fn is_true(v: Option<&String>) -> bool {
    v.is_some_and(|v| v == "true" || v == "1")
}

fn list_options(query: &HashMap<String, String>) -> Result<ListOptions, Status> {
    let label_selector =
        LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))
            .map_err(|e| Status::bad_request(format!("invalid labelSelector: {e}")))?;
    let field_selector =
        FieldSelector::parse(query.get("fieldSelector").map(String::as_str).unwrap_or(""))
            .map_err(|e| Status::bad_request(format!("invalid fieldSelector: {e}")))?;
    let limit = match query.get("limit").filter(|l| !l.is_empty()) {
        Some(l) => match l.parse::<usize>() {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => return Err(Status::bad_request(format!("invalid limit {l:?}"))),
        },
        None => None,
    };
    Ok(ListOptions {
        label_selector,
        field_selector,
        limit,
        continue_token: query.get("continue").filter(|c| !c.is_empty()).cloned(),
    })
}

fn delete_options(
    query: &HashMap<String, String>,
    body: &[u8],
    dry_run: bool,
) -> Result<DeleteOptions, Status> {
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .map_err(|e| Status::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let policy = query
        .get("propagationPolicy")
        .cloned()
        .or_else(|| {
            body.get("propagationPolicy")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .or_else(
            || match body.get("orphanDependents").and_then(Value::as_bool) {
                Some(true) => Some("Orphan".into()),
                _ => None,
            },
        );
    let propagation = match policy.as_deref() {
        None | Some("") | Some("Background") => Propagation::Background,
        Some("Foreground") => Propagation::Foreground,
        Some("Orphan") => Propagation::Orphan,
        Some(other) => {
            return Err(Status::bad_request(format!(
                "invalid propagationPolicy {other:?}: use Background, Foreground or Orphan"
            )))
        }
    };
    let dry_run = dry_run
        || body
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == "All"));
    Ok(DeleteOptions {
        propagation,
        precondition_uid: body
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        precondition_resource_version: body
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string),
        dry_run,
    })
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Status> {
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > MAX_BODY_BYTES {
            return Err(Status::too_large(MAX_BODY_BYTES));
        }
    }
    match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(Status::too_large(MAX_BODY_BYTES))
        }
        Err(e) => Err(Status::bad_request(format!(
            "reading the request body: {e}"
        ))),
    }
}

async fn read_object(req: Request<Incoming>, content_type: &str) -> Result<Value, Status> {
    let media = content_type.split(';').next().unwrap_or("").trim();
    if !matches!(
        media,
        "" | "application/json" | "application/yaml" | "application/x-yaml" | "text/yaml" | "*/*"
    ) {
        return Err(Status::unsupported_media_type(content_type));
    }
    let body = read_body(req).await?;
    vmo_api::decode::decode_one(&body).map_err(|e| Status::bad_request(e.to_string()))
}

async fn read_json(req: Request<Incoming>) -> Result<Value, Status> {
    let body = read_body(req).await?;
    vmo_api::decode::decode_one(&body).map_err(|e| Status::bad_request(e.to_string()))
}
