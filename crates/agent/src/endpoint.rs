//! The agent's HTTPS endpoint, which only the server reaches (client certificates from the cluster
//! CA, see `tls`): `/metrics`, `/healthz`, and the byte streams behind the console and VNC
//! subresources. A stream is an HTTP/1.1 upgrade to `vmo-stream`; after the `101` the connection
//! carries the raw serial or RFB bytes both ways, and the server turns them into websocket frames.
//!
//! ```text
//! GET /vmis/{uid}/console   serial console session (takes over an earlier one)
//! GET /vmis/{uid}/vnc       a connection to QEMU's VNC server
//! GET /metrics              Prometheus text
//! PUT /uploads/{ns}/{name}  an upload's bytes into a DataVolume's session (storage::upload)
//! GET /uploads/{ns}/{name}  how much of it is in
//! ```

use crate::runner::Vms;
use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use vmo_api::kinds::core::AGENT_STREAM_PROTOCOL as STREAM_PROTOCOL;

/// What the endpoint serves from.
#[derive(Debug)]
pub struct Endpoint {
    pub node_name: String,
    pub vms: Vms,
    pub cpus: u64,
    pub memory_bytes: u64,
}

fn text(code: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(body.into()))
        .expect("valid response")
}

impl Endpoint {
    /// Serves on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
        let acceptor = TlsAcceptor::from(tls);
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "agent endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, endpoint) = (acceptor.clone(), self.clone());
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "agent endpoint: TLS refused");
                        return;
                    }
                    Err(_) => return,
                };
                let service = hyper::service::service_fn(move |req| {
                    let endpoint = endpoint.clone();
                    async move { Ok::<_, Infallible>(endpoint.handle(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades()
                    .await;
            });
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match segments.as_slice() {
            ["healthz"] => text(StatusCode::OK, "ok"),
            ["metrics"] => {
                let page = crate::metrics::render(
                    &self.node_name,
                    &self.vms,
                    self.cpus,
                    self.memory_bytes,
                )
                .await;
                Response::builder()
                    .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                    .body(Full::new(Bytes::from(page)))
                    .expect("valid response")
            }
            ["vmis", uid, stream @ ("console" | "vnc")] => self.stream(req, uid, stream),
            ["uploads", ns, name] => self.upload(req, ns, name).await,
            _ => text(StatusCode::NOT_FOUND, "not found"),
        }
    }

    /// An upload into a DataVolume's volume (`PUT`, body streamed) or its state (`GET`).
    async fn upload(&self, req: Request<Incoming>, ns: &str, name: &str) -> Response<Full<Bytes>> {
        let uploads = crate::storage::upload::Uploads::for_node(&self.node_name);
        let uid = req
            .headers()
            .get("x-upload-uid")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let query: std::collections::HashMap<&str, u64> = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|p| p.split_once('='))
            .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
            .collect();
        let (offset, size) = (query.get("offset").copied(), query.get("size").copied());
        let answer = match (req.method().clone(), size) {
            (http::Method::GET, _) => uploads.state(ns, name, &uid),
            (http::Method::PUT, Some(size)) => {
                let checksum = req
                    .headers()
                    .get("x-upload-checksum")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let at = crate::storage::upload::At {
                    offset: offset.unwrap_or(0),
                    size,
                    checksum,
                };
                uploads.put(ns, name, &uid, at, req.into_body()).await
            }
            _ => crate::storage::upload::Answer {
                code: 400,
                body: serde_json::json!({"message": "PUT with ?offset=&size=, or GET"}),
            },
        };
        Response::builder()
            .status(answer.code)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(answer.body.to_string())))
            .expect("valid response")
    }

    fn stream(&self, mut req: Request<Incoming>, uid: &str, kind: &str) -> Response<Full<Bytes>> {
        let wants_upgrade = req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case(STREAM_PROTOCOL));
        if !wants_upgrade {
            return text(
                StatusCode::BAD_REQUEST,
                format!("{kind} needs `Upgrade: {STREAM_PROTOCOL}`"),
            );
        }
        let Some(vm) = self.vms.lock().ok().and_then(|vms| vms.get(uid).cloned()) else {
            return text(
                StatusCode::NOT_FOUND,
                format!("no running instance {uid} on this node"),
            );
        };
        let upgrade = hyper::upgrade::on(&mut req);
        let console = kind == "console";
        tokio::spawn(async move {
            let io = match upgrade.await {
                Ok(u) => TokioIo::new(u),
                Err(e) => {
                    tracing::debug!(error = %e, "agent endpoint: upgrade failed");
                    return;
                }
            };
            if console {
                let session = vm.serial.attach();
                // Hold no reference to the relay, so the session ends when the VM does.
                drop(vm);
                relay_console(io, session).await;
            } else {
                let socket = vm.run_dir.join("vnc.sock");
                match tokio::net::UnixStream::connect(&socket).await {
                    Ok(mut vnc) => {
                        let mut io = io;
                        let _ = tokio::io::copy_bidirectional(&mut io, &mut vnc).await;
                    }
                    Err(e) => {
                        tracing::warn!(vm = %vm.name, error = %e, "cannot reach QEMU's VNC server")
                    }
                }
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, STREAM_PROTOCOL)
            .body(Full::new(Bytes::new()))
            .expect("valid response")
    }
}

/// Pumps a console session over an upgraded connection until either side ends or a newer session
/// takes over.
async fn relay_console<S>(io: S, mut session: crate::console::Session)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut read, mut write) = tokio::io::split(io);
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            out = session.output.recv() => match out {
                Ok(bytes) => {
                    if write.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            n = read.read(&mut buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if session.input.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        return;
                    }
                }
            },
            _ = session.takeover.happened() => {
                let _ = write
                    .write_all(b"\r\n[vmo: another console session took over]\r\n")
                    .await;
                let _ = write.shutdown().await;
                return;
            }
        }
    }
}
