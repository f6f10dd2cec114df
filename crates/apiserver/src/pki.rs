//! The server's TLS identity: a private CA and a server certificate signed by it, created on first
//! start and kept in the data directory so clients that trusted the CA keep trusting the server.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Failures creating or loading certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("reading or writing {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating certificates")]
    Generate(#[source] rcgen::Error),
    #[error("{path} holds no usable PEM {what}")]
    BadPem { path: PathBuf, what: &'static str },
    #[error("building the TLS configuration")]
    Tls(#[source] rustls::Error),
}

/// PEM files of the CA and the server certificate.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The client certificate the server presents to agents when it proxies consoles and metrics.
    pub proxy_cert: PathBuf,
    pub proxy_key: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a file readable only by its owner.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    vmo_api::secrets::write_private(path, contents).map_err(io(path))
}

impl Pki {
    /// Loads the PKI from `dir/pki`, creating a CA and a server certificate for `hosts` on first use.
    /// The server certificate is re-issued (by the same CA) when a host is missing from it.
    pub fn load_or_create(dir: &Path, hosts: &[String]) -> Result<Self, PkiError> {
        let pki_dir = dir.join("pki");
        fs::create_dir_all(&pki_dir).map_err(io(&pki_dir))?;
        let pki = Self {
            ca_cert: pki_dir.join("ca.crt"),
            server_cert: pki_dir.join("server.crt"),
            server_key: pki_dir.join("server.key"),
            proxy_cert: pki_dir.join("proxy-client.crt"),
            proxy_key: pki_dir.join("proxy-client.key"),
        };
        let ca_key_path = pki_dir.join("ca.key");
        let hosts_path = pki_dir.join("server.hosts");
        if !pki.ca_cert.exists() || !ca_key_path.exists() {
            let key = KeyPair::generate().map_err(PkiError::Generate)?;
            let cert = ca_params()?.self_signed(&key).map_err(PkiError::Generate)?;
            write_private(&ca_key_path, key.serialize_pem().as_bytes())?;
            fs::write(&pki.ca_cert, cert.pem()).map_err(io(&pki.ca_cert))?;
            let _ = fs::remove_file(&pki.server_cert);
            let _ = fs::remove_file(&pki.proxy_cert);
        }
        if !pki.proxy_cert.exists() || !pki.proxy_key.exists() {
            let params = leaf_params(
                "vmo-apiserver-proxy",
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            )?;
            issue(&ca_key_path, params, &pki.proxy_cert, &pki.proxy_key)?;
        }
        let wanted = hosts.join("\n");
        let current = fs::read_to_string(&hosts_path).unwrap_or_default();
        let covered = hosts.iter().all(|h| current.lines().any(|l| l == h));
        if !pki.server_cert.exists() || !pki.server_key.exists() || !covered {
            let mut params = leaf_params("vmo-server", rcgen::ExtendedKeyUsagePurpose::ServerAuth)?;
            params.subject_alt_names = hosts
                .iter()
                .map(|h| match h.parse::<IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(
                        h.clone()
                            .try_into()
                            .unwrap_or_else(|_| "localhost".try_into().expect("valid")),
                    ),
                })
                .collect();
            issue(&ca_key_path, params, &pki.server_cert, &pki.server_key)?;
            fs::write(&hosts_path, wanted).map_err(io(&hosts_path))?;
        }
        Ok(pki)
    }

    /// The identity the server proxies to agents with.
    pub fn proxy_identity(&self) -> Result<crate::agent_proxy::ProxyIdentity, PkiError> {
        Ok(crate::agent_proxy::ProxyIdentity {
            certs: read_certs(&self.proxy_cert)?,
            key: std::sync::Arc::new(read_key(&self.proxy_key)?),
        })
    }

    /// The rustls server configuration (HTTP/2 preferred, HTTP/1.1 for older clients and upgrades).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let certs = read_certs(&self.server_cert)?;
        let key = read_key(&self.server_key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(PkiError::Tls)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(PkiError::Tls)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The CA as an issuer, rebuilt from its stored key: the same parameters and key give an issuer
/// identical to the stored CA certificate.
fn load_ca(ca_key_path: &Path) -> Result<(rcgen::Certificate, KeyPair), PkiError> {
    let ca_key_pem = fs::read_to_string(ca_key_path).map_err(io(ca_key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(PkiError::Generate)?;
    let ca = ca_params()?
        .self_signed(&ca_key)
        .map_err(PkiError::Generate)?;
    Ok((ca, ca_key))
}

/// A leaf certificate's parameters: its common name and what it may be used for.
fn leaf_params(
    common_name: &str,
    usage: rcgen::ExtendedKeyUsagePurpose,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(PkiError::Generate)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![usage];
    params.not_after = rcgen::date_time_ymd(2035, 1, 1);
    Ok(params)
}

/// Issues a certificate for `params` with a fresh key, signed by the stored CA, and writes both.
fn issue(
    ca_key_path: &Path,
    params: CertificateParams,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), PkiError> {
    let (ca, ca_key) = load_ca(ca_key_path)?;
    let key = KeyPair::generate().map_err(PkiError::Generate)?;
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .map_err(PkiError::Generate)?;
    write_private(key_path, key.serialize_pem().as_bytes())?;
    fs::write(cert_path, cert.pem()).map_err(io(cert_path))
}

/// The CA's parameters; fixed so the issuer can be rebuilt from the stored key.
fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(PkiError::Generate)?;
    params.distinguished_name.push(DnType::CommonName, "vmo-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    Ok(params)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let pem = fs::read(path).map_err(io(path))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(io(path))?;
    if certs.is_empty() {
        return Err(PkiError::BadPem {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    let pem = fs::read(path).map_err(io(path))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(io(path))?
        .ok_or(PkiError::BadPem {
            path: path.to_path_buf(),
            what: "private key",
        })
}
