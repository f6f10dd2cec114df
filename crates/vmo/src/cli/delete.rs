//! `vmo delete KIND NAME...`, `vmo delete KIND -l SELECTOR`, `vmo delete -f FILE`.

use super::{kind_label, Context};
use clap::Args;
use serde_json::Value;
use std::path::PathBuf;
use vmo_api::KindInfo;

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Kind, then names.
    pub args: Vec<String>,
    /// Delete the objects in these manifests.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
    /// Delete every object of the kind matching this label selector.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// What happens to dependents: background (default), foreground, or orphan.
    #[arg(long, default_value = "background", value_parser = ["background", "foreground", "orphan"])]
    pub cascade: String,
    /// Succeed when the object does not exist.
    #[arg(long)]
    pub ignore_not_found: bool,
}

pub async fn run(ctx: &Context, args: DeleteArgs) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let namespace = ctx.namespace(&client);
    let mut targets: Vec<(KindInfo, String, String)> = Vec::new();
    if !args.files.is_empty() {
        for (source, obj) in super::apply::read_manifests(&args.files)? {
            let api_version = obj["apiVersion"].as_str().unwrap_or("");
            let kind_name = obj["kind"].as_str().unwrap_or("");
            let kind = ctx
                .registry
                .by_kind(api_version, kind_name)
                .copied()
                .ok_or_else(|| {
                    anyhow::anyhow!("{source}: no kind {kind_name:?} in {api_version:?} is served")
                })?;
            let ns = obj
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or(&namespace)
                .to_string();
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            targets.push((kind, ns, name));
        }
    } else {
        let Some((kind_name, names)) = args.args.split_first() else {
            anyhow::bail!("give a kind and names, a kind and -l SELECTOR, or -f FILE");
        };
        let kind = ctx.kind(kind_name)?;
        let ns = if kind.namespaced {
            namespace.clone()
        } else {
            String::new()
        };
        if let Some(selector) = &args.selector {
            let list = client
                .list(
                    &kind,
                    Some(&ns),
                    &format!("labelSelector={}", vmo_client::encode_query(selector)),
                )
                .await?;
            targets.extend(
                list.items
                    .into_iter()
                    .map(|o| (kind, ns.clone(), o.metadata.name)),
            );
            if targets.is_empty() {
                println!("No resources found");
            }
        } else if names.is_empty() {
            anyhow::bail!(
                "give the names of the {} to delete, or -l SELECTOR",
                kind.plural
            );
        } else {
            targets.extend(names.iter().map(|n| (kind, ns.clone(), n.clone())));
        }
    }
    let propagation = match args.cascade.as_str() {
        "foreground" => "Foreground",
        "orphan" => "Orphan",
        _ => "Background",
    };
    let mut failures = 0;
    for (kind, ns, name) in targets {
        match client.delete(&kind, &ns, &name, propagation).await {
            Ok(_) => println!("{} \"{name}\" deleted", kind_label(&kind)),
            Err(e) if e.is_not_found() && args.ignore_not_found => {}
            Err(e) => {
                super::print_error(&anyhow::Error::new(e));
                failures += 1;
            }
        }
    }
    if failures > 0 {
        anyhow::bail!("{failures} object(s) could not be deleted");
    }
    Ok(())
}
