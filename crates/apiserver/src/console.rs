//! The console and VNC subresources at KubeVirt's paths
//! (`/apis/subresources.kubevirt.io/v1/namespaces/NS/virtualmachineinstances/NAME/{console,vnc}`):
//! a websocket towards the user (binary frames of raw bytes, subprotocol `plain.kubevirt.io` as
//! virtctl speaks it), a stream from the VM's agent behind it. The user's token was checked before
//! the request got here; everything that can fail (no such VM, not running, agent unreachable) is
//! answered as an ordinary API error before the connection switches protocols.

use crate::agent_proxy::ProxyIdentity;
use crate::routes::ResourcePath;
use crate::server::Body;
use crate::service::ResourceService;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use vmo_api::Status;

/// The websocket subprotocol KubeVirt's console and VNC use: binary frames, raw bytes.
pub const PLAIN_PROTOCOL: &str = "plain.kubevirt.io";

/// True for the streaming subresources this module serves.
pub fn is_stream(path: &ResourcePath) -> bool {
    path.plural == "virtualmachineinstances"
        && matches!(path.subresource.as_deref(), Some("console" | "vnc"))
}

fn header_has(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .unwrap_or("")
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    })
}

/// Serves a console or VNC request: checks, connects to the agent, then switches to a websocket.
pub async fn serve(
    service: &ResourceService,
    proxy: Option<&ProxyIdentity>,
    mut req: Request<Incoming>,
    path: &ResourcePath,
) -> Result<Response<Body>, Status> {
    let (Some(ns), Some(name), Some(sub)) = (&path.namespace, &path.name, &path.subresource) else {
        return Err(Status::not_found("virtualmachineinstances.kubevirt.io", ""));
    };
    if req.method() != Method::GET {
        return Err(Status::method_not_allowed(format!(
            "{} is not supported on {sub}; open a websocket with GET",
            req.method()
        )));
    }
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| k.as_bytes().to_vec());
    let (Some(key), true) = (key, header_has(&req, header::UPGRADE, "websocket")) else {
        return Err(Status::bad_request(format!(
            "{sub} is a websocket: send `Connection: Upgrade`, `Upgrade: websocket` and a \
             Sec-WebSocket-Key (vmo {sub} does this)"
        )));
    };
    let registry = service.registry();
    let vmi_kind = *registry.resolve("vmi").expect("vmis are registered");
    let node_kind = *registry.resolve("nodes").expect("nodes are registered");
    let vmi = service.get(&vmi_kind, ns, name).await?;
    let phase = vmi.status()["phase"].as_str().unwrap_or("Pending");
    if phase != "Running" {
        return Err(Status::bad_request(format!(
            "unable to connect to VirtualMachineInstance {ns}/{name}: its phase is {phase}, \
             not Running"
        )));
    }
    let node_name = vmi.status()["nodeName"].as_str().unwrap_or_default();
    let node = service.get(&node_kind, "", node_name).await?;
    let proxy = proxy.ok_or_else(|| {
        Status::unavailable(
            "this server has no client identity for agents; consoles are unavailable",
        )
    })?;
    let agent = proxy
        .open_stream(&node, &format!("/vmis/{}/{sub}", vmi.metadata.uid))
        .await?;
    let plain = header_has(
        &req,
        http::HeaderName::from_static("sec-websocket-protocol"),
        PLAIN_PROTOCOL,
    );
    let upgrade = hyper::upgrade::on(&mut req);
    let what = format!("{sub} of {ns}/{name}");
    tokio::spawn(async move {
        let client = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "{what}: websocket upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(client), Role::Server, None).await;
        pump(ws, TokioIo::new(agent)).await;
        tracing::debug!("{what}: session ended");
    });
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header("sec-websocket-accept", derive_accept_key(&key));
    if plain {
        response = response.header("sec-websocket-protocol", PLAIN_PROTOCOL);
    }
    Ok(response
        .body(Full::new(Bytes::new()).boxed_unsync())
        .expect("valid response"))
}

/// Copies a websocket's messages to a byte stream (an agent's, or a local VNC viewer's) and the
/// stream's bytes back as binary messages, until either side closes.
pub async fn pump<W, S>(ws: WebSocketStream<W>, stream: S)
where
    W: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut stream_rx, mut stream_tx) = tokio::io::split(stream);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            message = ws_rx.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    if stream_tx.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    if stream_tx.write_all(text.as_bytes()).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {} // ping and pong are answered by the websocket layer
            },
            n = stream_rx.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            },
        }
    }
    let _ = ws_tx.send(Message::Close(None)).await;
    let _ = stream_tx.shutdown().await;
}
