//! The agent endpoint's TLS: a self-signed serving certificate kept in the data directory, whose
//! SHA-256 fingerprint the agent publishes on its Node so the server can pin it, and client
//! authentication that admits only certificates issued by the cluster CA (the server's proxy
//! identity). Consoles and metrics are therefore reachable only through the server, which checks
//! the user's token first.

use rcgen::{CertificateParams, DnType, KeyPair};
use rustls::pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Failures preparing the endpoint's TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading or writing {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating the agent certificate")]
    Generate(#[source] rcgen::Error),
    #[error("{0} holds no usable PEM")]
    BadPem(PathBuf),
    #[error("the kubeconfig carries no CA certificate to check the server's identity with")]
    NoCa,
    #[error("building the TLS configuration: {0}")]
    Config(String),
}

/// The agent's serving identity.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert: CertificateDer<'static>,
    pub key_pem: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Identity {
    /// Loads `dir/tls/agent.{crt,key}`, creating a self-signed pair on first use.
    pub fn load_or_create(dir: &Path, node_name: &str) -> Result<Self, TlsError> {
        let tls_dir = dir.join("tls");
        std::fs::create_dir_all(&tls_dir).map_err(io(&tls_dir))?;
        let (cert_path, key_path) = (tls_dir.join("agent.crt"), tls_dir.join("agent.key"));
        if !cert_path.exists() || !key_path.exists() {
            let key = KeyPair::generate().map_err(TlsError::Generate)?;
            let mut params =
                CertificateParams::new(vec![node_name.to_string()]).map_err(TlsError::Generate)?;
            params
                .distinguished_name
                .push(DnType::CommonName, format!("vmo-agent {node_name}"));
            params.not_after = rcgen::date_time_ymd(2035, 1, 1);
            let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
            vmo_api::secrets::write_private(&key_path, key.serialize_pem().as_bytes())
                .map_err(io(&key_path))?;
            std::fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
        }
        let cert_pem = std::fs::read(&cert_path).map_err(io(&cert_path))?;
        let cert = rustls_pemfile::certs(&mut cert_pem.as_slice())
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| TlsError::BadPem(cert_path.clone()))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        Ok(Self { cert, key_pem })
    }

    /// The serving configuration: HTTP/1.1, client certificates from `ca_pem` required.
    pub fn server_config(&self, ca_pem: &[u8]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut &*ca_pem) {
            let cert = cert.map_err(|e| TlsError::Config(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| TlsError::Config(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(TlsError::NoCa);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            provider.clone(),
        )
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
        let key = rustls_pemfile::private_key(&mut self.key_pem.as_bytes())
            .ok()
            .flatten()
            .ok_or_else(|| TlsError::Config("the agent key is unreadable".into()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}
