//! Reaching a node's agent: the server connects to the endpoint the agent advertises on its Node,
//! pins the agent's self-signed certificate by the SHA-256 fingerprint on the same Node (only an
//! authenticated writer of Nodes can change it), and presents its own proxy client certificate,
//! issued by the cluster CA, which is the only identity the agent admits.
//!
//! Consoles and VNC are raw byte streams after an HTTP/1.1 upgrade; metrics are a plain GET;
//! uploads are a request whose body streams through.

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use vmo_api::kinds::core::{
    AGENT_CERT_ANNOTATION, AGENT_ENDPOINT_ANNOTATION, AGENT_STREAM_PROTOCOL as STREAM_PROTOCOL,
};
use vmo_api::{Object, Status};

/// How long reaching an agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The server's client identity towards agents.
#[derive(Debug, Clone)]
pub struct ProxyIdentity {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
}

/// Accepts exactly the certificate with the published fingerprint.
#[derive(Debug)]
struct PinnedCertificate {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if vmo_api::secrets::cert_fingerprint(end_entity) == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the agent's certificate does not match the fingerprint on its Node".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn unavailable(node: &str, why: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("cannot reach the agent of node {node:?}: {why}"))
}

type AgentConnection<B> = hyper::client::conn::http1::SendRequest<B>;

impl ProxyIdentity {
    async fn connect<B>(&self, node: &Object) -> Result<AgentConnection<B>, Status>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let name = &node.metadata.name;
        let annotation = |key: &str| {
            node.metadata
                .annotations
                .get(key)
                .cloned()
                .ok_or_else(|| unavailable(name, format!("the Node has no {key} annotation")))
        };
        let url = annotation(AGENT_ENDPOINT_ANNOTATION)?;
        let pin = annotation(AGENT_CERT_ANNOTATION)?;
        let authority = url
            .strip_prefix("https://")
            .ok_or_else(|| unavailable(name, format!("endpoint {url:?} is not https")))?
            .to_string();
        let host = authority
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or(&authority)
            .to_string();
        let server_name = ServerName::try_from(host)
            .map_err(|e| unavailable(name, format!("endpoint {url:?}: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| unavailable(name, e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertificate {
                fingerprint: pin,
                provider,
            }))
            .with_client_auth_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|e| unavailable(name, e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connect = async {
            let tcp = TcpStream::connect(&authority)
                .await
                .map_err(|e| unavailable(name, format!("{url}: {e}")))?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(server_name, tcp)
                .await
                .map_err(|e| unavailable(name, format!("TLS with {url}: {e}")))?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| unavailable(name, e))?;
            tokio::spawn(async move {
                let _ = connection.with_upgrades().await;
            });
            Ok(sender)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| unavailable(name, format!("{url} did not answer within 5s")))?
    }

    fn request(path: &str, upgrade: bool) -> Request<Empty<Bytes>> {
        let mut builder = Request::get(path).header(header::HOST, "agent");
        if upgrade {
            builder = builder
                .header(header::CONNECTION, "Upgrade")
                .header(header::UPGRADE, STREAM_PROTOCOL);
        }
        builder.body(Empty::new()).expect("valid request")
    }

    /// Opens a raw stream (`/vmis/UID/console` or `/vnc`) on `node`'s agent.
    pub async fn open_stream(&self, node: &Object, path: &str) -> Result<Upgraded, Status> {
        let name = &node.metadata.name;
        let mut sender = self.connect::<Empty<Bytes>>(node).await?;
        let response = sender
            .send_request(Self::request(path, true))
            .await
            .map_err(|e| unavailable(name, e))?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let code = response.status().as_u16();
            let body = response.into_body().collect().await.map(|b| b.to_bytes());
            let why = String::from_utf8_lossy(&body.unwrap_or_default()).into_owned();
            return Err(Status::failure(
                if code == 404 { 404 } else { 502 },
                if code == 404 {
                    "NotFound"
                } else {
                    "BadGateway"
                },
                format!("agent of node {name:?}: {why}"),
            ));
        }
        hyper::upgrade::on(response)
            .await
            .map_err(|e| unavailable(name, e))
    }

    /// GETs `path` (such as `/metrics`) from `node`'s agent.
    pub async fn get(&self, node: &Object, path: &str) -> Result<(u16, Bytes), Status> {
        let name = &node.metadata.name;
        let mut sender = self.connect::<Empty<Bytes>>(node).await?;
        let response = tokio::time::timeout(
            Duration::from_secs(30),
            sender.send_request(Self::request(path, false)),
        )
        .await
        .map_err(|_| unavailable(name, "no answer within 30s"))?
        .map_err(|e| unavailable(name, e))?;
        let code = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unavailable(name, e))?
            .to_bytes();
        Ok((code, body))
    }

    /// Sends `request` to `node`'s agent with its body streamed through as it arrives (uploads:
    /// no size limit, nothing buffered whole), and returns the agent's answer.
    pub async fn send<B>(
        &self,
        node: &Object,
        request: Request<B>,
    ) -> Result<http::Response<hyper::body::Incoming>, Status>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let name = &node.metadata.name;
        let mut sender = self.connect::<B>(node).await?;
        sender
            .send_request(request)
            .await
            .map_err(|e| unavailable(name, e))
    }
}
