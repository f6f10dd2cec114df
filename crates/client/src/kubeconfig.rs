//! Reading and writing standard kubeconfig files, so `vmo` and kubectl share one credential file.

use base64::Engine;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Failures reading a kubeconfig.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("reading kubeconfig {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kubeconfig {path} is not valid YAML")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("kubeconfig {path}: {what}")]
    Incomplete { path: PathBuf, what: String },
}

/// What a client needs from a kubeconfig's current context.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub server: String,
    /// PEM of the CA that signed the server certificate; `None` means the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    pub token: String,
    /// The context's default namespace.
    pub namespace: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct File {
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    users: Vec<Named<User>>,
    #[serde(default)]
    contexts: Vec<Named<Context>>,
    #[serde(default)]
    current_context: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Named<T> {
    name: String,
    #[serde(flatten)]
    item: T,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Cluster {
    cluster: ClusterInfo,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct ClusterInfo {
    #[serde(default)]
    server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    certificate_authority_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    certificate_authority: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct User {
    user: UserInfo,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct UserInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_file: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Context {
    context: ContextInfo,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ContextInfo {
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
}

/// Reads the current context's credentials from a kubeconfig file.
pub fn load(path: &Path) -> Result<Credentials, KubeconfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| KubeconfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let file: File = serde_yaml_ng::from_str(&text).map_err(|source| KubeconfigError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    let incomplete = |what: String| KubeconfigError::Incomplete {
        path: path.to_path_buf(),
        what,
    };
    let context_name = if file.current_context.is_empty() {
        file.contexts
            .first()
            .map(|c| c.name.clone())
            .unwrap_or_default()
    } else {
        file.current_context.clone()
    };
    let context = file
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .ok_or_else(|| incomplete(format!("context {context_name:?} not found")))?;
    let cluster = file
        .clusters
        .iter()
        .find(|c| c.name == context.item.context.cluster)
        .ok_or_else(|| {
            incomplete(format!(
                "cluster {:?} not found",
                context.item.context.cluster
            ))
        })?;
    let user = file
        .users
        .iter()
        .find(|u| u.name == context.item.context.user)
        .ok_or_else(|| incomplete(format!("user {:?} not found", context.item.context.user)))?;
    let info = &cluster.item.cluster;
    let ca_pem =
        match (
            &info.certificate_authority_data,
            &info.certificate_authority,
        ) {
            (Some(data), _) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(data.trim())
                    .map_err(|e| {
                        incomplete(format!("certificate-authority-data is not base64: {e}"))
                    })?,
            ),
            (None, Some(file)) => Some(std::fs::read(relative(path, file)).map_err(|source| {
                KubeconfigError::Read {
                    path: relative(path, file),
                    source,
                }
            })?),
            (None, None) => None,
        };
    let token = match (&user.item.user.token, &user.item.user.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(file)) => std::fs::read_to_string(relative(path, file))
            .map_err(|source| KubeconfigError::Read {
                path: relative(path, file),
                source,
            })?
            .trim()
            .to_string(),
        (None, None) => return Err(incomplete(format!("user {:?} has no token", user.name))),
    };
    if info.server.is_empty() {
        return Err(incomplete(format!(
            "cluster {:?} has no server",
            cluster.name
        )));
    }
    Ok(Credentials {
        server: info.server.clone(),
        ca_pem,
        token,
        namespace: context.item.context.namespace.clone(),
    })
}

fn relative(kubeconfig: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        kubeconfig.parent().unwrap_or(Path::new(".")).join(p)
    }
}

/// Renders a kubeconfig with one cluster, one token user and one context named `name`.
pub fn render(name: &str, server: &str, ca_pem: &[u8], token: &str) -> String {
    let file = File {
        clusters: vec![Named {
            name: name.into(),
            item: Cluster {
                cluster: ClusterInfo {
                    server: server.into(),
                    certificate_authority_data: Some(
                        base64::engine::general_purpose::STANDARD.encode(ca_pem),
                    ),
                    certificate_authority: None,
                },
            },
        }],
        users: vec![Named {
            name: format!("{name}-admin"),
            item: User {
                user: UserInfo {
                    token: Some(token.into()),
                    token_file: None,
                },
            },
        }],
        contexts: vec![Named {
            name: name.into(),
            item: Context {
                context: ContextInfo {
                    cluster: name.into(),
                    user: format!("{name}-admin"),
                    namespace: None,
                },
            },
        }],
        current_context: name.into(),
    };
    let body = serde_yaml_ng::to_string(&file).unwrap_or_default();
    format!("apiVersion: v1\nkind: Config\npreferences: {{}}\n{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_then_load() {
        let dir = std::env::temp_dir().join(format!("vmo-kc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            render("vmo", "https://127.0.0.1:6443", b"PEM", "tok"),
        )
        .unwrap();
        let creds = load(&path).unwrap();
        assert_eq!(creds.server, "https://127.0.0.1:6443");
        assert_eq!(creds.ca_pem.as_deref(), Some(&b"PEM"[..]));
        assert_eq!(creds.token, "tok");
        std::fs::write(&path, "clusters: [}").unwrap();
        assert!(matches!(load(&path), Err(KubeconfigError::Parse { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
