//! The client verbs: kubectl's (apply, get, describe, delete, api-resources, version) against the
//! vmo API. Errors from the server are printed as the server phrased them.

pub mod apply;
pub mod console;
pub mod delete;
pub mod describe;
pub mod get;
pub mod lifecycle;
pub mod migrate;
pub mod node;
pub mod output;
pub mod ova;
pub mod upload;

use anyhow::Context as _;
use std::path::PathBuf;
use vmo_api::{KindInfo, Registry};
use vmo_client::{Client, ClientError};

/// What every verb needs: how to reach the server and which namespace to use.
#[derive(Debug)]
pub struct Context {
    kubeconfig: Option<PathBuf>,
    namespace: Option<String>,
    pub registry: Registry,
}

impl Context {
    pub fn new(kubeconfig: Option<PathBuf>, namespace: Option<String>) -> Self {
        Self {
            kubeconfig,
            namespace,
            registry: Registry::builtin(),
        }
    }

    /// The kubeconfig in effect: `--kubeconfig`, `$KUBECONFIG`, or the default data dir's.
    pub fn kubeconfig_path(&self) -> PathBuf {
        if let Some(p) = &self.kubeconfig {
            return p.clone();
        }
        if let Some(p) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
            let first = std::env::split_paths(&p).next().unwrap_or_default();
            return first;
        }
        crate::paths::default_data_dir().join("kubeconfig")
    }

    /// A client for the server in the kubeconfig.
    pub fn client(&self) -> anyhow::Result<Client> {
        let path = self.kubeconfig_path();
        if !path.exists() {
            anyhow::bail!(
                "no kubeconfig at {}: start the control plane with `vmo up`, or pass --kubeconfig",
                path.display()
            );
        }
        Client::from_kubeconfig(&path)
            .with_context(|| format!("using kubeconfig {}", path.display()))
    }

    /// The namespace for namespaced objects.
    pub fn namespace(&self, client: &Client) -> String {
        self.namespace
            .clone()
            .or_else(|| client.default_namespace().map(str::to_string))
            .unwrap_or_else(|| "default".to_string())
    }

    /// Resolves a kind as typed by the user.
    pub fn kind(&self, name: &str) -> anyhow::Result<KindInfo> {
        self.registry.resolve(name).copied().ok_or_else(|| {
            anyhow::anyhow!(
                "the server doesn't have a resource type \"{name}\" (see `vmo api-resources`)"
            )
        })
    }
}

/// Prints an error chain; API errors as kubectl prints them.
pub fn print_error(e: &anyhow::Error) {
    if let Some(ClientError::Api(status)) = e.downcast_ref::<ClientError>() {
        eprintln!("Error from server ({}): {}", status.reason, status.message);
        return;
    }
    eprint!("error: {e}");
    for cause in e.chain().skip(1) {
        eprint!(": {cause}");
    }
    eprintln!();
}

/// `kind.group` as kubectl prints it in messages (`virtualmachine.kubevirt.io`).
pub fn kind_label(kind: &KindInfo) -> String {
    if kind.group.is_empty() {
        kind.singular.to_string()
    } else {
        format!("{}.{}", kind.singular, kind.group)
    }
}

/// `vmo api-resources`, from the server's discovery documents.
pub async fn api_resources(ctx: &Context) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let mut rows = vec![vec![
        "NAME".to_string(),
        "SHORTNAMES".into(),
        "APIVERSION".into(),
        "NAMESPACED".into(),
        "KIND".into(),
    ]];
    let mut group_versions = vec!["v1".to_string()];
    let groups = client.get_json("/apis").await?;
    for g in groups["groups"].as_array().into_iter().flatten() {
        if let Some(gv) = g["preferredVersion"]["groupVersion"].as_str() {
            group_versions.push(gv.to_string());
        }
    }
    for gv in group_versions {
        let path = if gv == "v1" {
            "/api/v1".to_string()
        } else {
            format!("/apis/{gv}")
        };
        let list = client.get_json(&path).await?;
        for r in list["resources"].as_array().into_iter().flatten() {
            let name = r["name"].as_str().unwrap_or("");
            if name.contains('/') {
                continue;
            }
            let shorts: Vec<&str> = r["shortNames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str())
                .collect();
            rows.push(vec![
                name.to_string(),
                shorts.join(","),
                gv.clone(),
                r["namespaced"].as_bool().unwrap_or(false).to_string(),
                r["kind"].as_str().unwrap_or("").to_string(),
            ]);
        }
    }
    print!("{}", output::render_rows(&rows));
    Ok(())
}

/// `vmo version`.
pub async fn version(ctx: &Context) -> anyhow::Result<()> {
    println!("Client Version: {}", env!("CARGO_PKG_VERSION"));
    let client = ctx.client()?;
    let v = client.get_json("/version").await?;
    println!(
        "Server Version: {} (Kubernetes API level {}.{})",
        v["vmoVersion"].as_str().unwrap_or("unknown"),
        v["major"].as_str().unwrap_or("?"),
        v["minor"].as_str().unwrap_or("?")
    );
    Ok(())
}
