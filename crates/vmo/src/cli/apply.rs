//! `vmo apply -f FILE|DIR|-`: server-side apply of every object in the manifests, creating or
//! updating each and saying which. One object's error does not stop the others; the exit code does.

use super::{kind_label, Context};
use anyhow::Context as _;
use clap::Args;
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The field manager `vmo apply` applies as.
pub const FIELD_MANAGER: &str = "vmo";

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// Manifest file, directory (its .yaml, .yml and .json files), or `-` for standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Take over fields other managers own.
    #[arg(long)]
    pub force_conflicts: bool,
    /// Validate on the server without saving.
    #[arg(long)]
    pub dry_run: bool,
}

/// Reads every object from the given files, directories or stdin, in order.
pub fn read_manifests(paths: &[PathBuf]) -> anyhow::Result<Vec<(String, Value)>> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            let mut buf = Vec::new();
            std::io::stdin()
                .take(vmo_api::decode::MAX_BODY_BYTES as u64 + 1)
                .read_to_end(&mut buf)?;
            push_documents("<stdin>", &buf, &mut out)?;
        } else if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading directory {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    matches!(
                        f.extension().and_then(|e| e.to_str()),
                        Some("yaml" | "yml" | "json")
                    )
                })
                .collect();
            files.sort();
            for f in files {
                read_file(&f, &mut out)?;
            }
        } else {
            read_file(p, &mut out)?;
        }
    }
    Ok(out)
}

fn read_file(p: &Path, out: &mut Vec<(String, Value)>) -> anyhow::Result<()> {
    let meta = std::fs::metadata(p).with_context(|| format!("reading {}", p.display()))?;
    if meta.len() > vmo_api::decode::MAX_BODY_BYTES as u64 {
        anyhow::bail!(
            "{} is {} bytes, over the limit of {} bytes",
            p.display(),
            meta.len(),
            vmo_api::decode::MAX_BODY_BYTES
        );
    }
    let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    push_documents(&p.display().to_string(), &bytes, out)
}

fn push_documents(
    source: &str,
    bytes: &[u8],
    out: &mut Vec<(String, Value)>,
) -> anyhow::Result<()> {
    let docs =
        vmo_api::decode::decode_documents(bytes).with_context(|| format!("parsing {source}"))?;
    out.extend(docs.into_iter().map(|d| (source.to_string(), d)));
    Ok(())
}

pub async fn run(ctx: &Context, args: ApplyArgs) -> anyhow::Result<()> {
    let manifests = read_manifests(&args.files)?;
    if manifests.is_empty() {
        anyhow::bail!("no objects passed to apply");
    }
    let client = ctx.client()?;
    let default_ns = ctx.namespace(&client);
    let mut failures = 0;
    for (source, mut obj) in manifests {
        let api_version = obj["apiVersion"].as_str().unwrap_or("").to_string();
        let kind_name = obj["kind"].as_str().unwrap_or("").to_string();
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let Some(kind) = ctx.registry.by_kind(&api_version, &kind_name).copied() else {
            eprintln!("error: {source}: no kind {kind_name:?} in apiVersion {api_version:?} is served (see `vmo api-resources`)");
            failures += 1;
            continue;
        };
        if name.is_empty() {
            eprintln!("error: {source}: {kind_name} has no metadata.name; apply needs a name");
            failures += 1;
            continue;
        }
        let ns = if kind.namespaced {
            let ns = obj
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or(&default_ns)
                .to_string();
            obj["metadata"]["namespace"] = Value::String(ns.clone());
            ns
        } else {
            String::new()
        };
        let before = match client.get(&kind, &ns, &name).await {
            Ok(o) => Some(o),
            Err(e) if e.is_not_found() => None,
            Err(e) => {
                eprintln!("error: {source}: {kind_name} {name}: {e}");
                failures += 1;
                continue;
            }
        };
        let mut query = format!(
            "fieldManager={FIELD_MANAGER}&force={}",
            args.force_conflicts
        );
        if args.dry_run {
            query.push_str("&dryRun=All");
        }
        let body = serde_json::to_vec(&obj).unwrap_or_default();
        match client
            .patch(
                &kind,
                &ns,
                &name,
                "application/apply-patch+yaml",
                body,
                &query,
            )
            .await
        {
            Ok(applied) => {
                let verb = match before {
                    None => "created",
                    Some(b) if !changed_by_apply(&b, &applied) => "unchanged",
                    Some(_) => "configured",
                };
                let suffix = if args.dry_run {
                    " (server dry run)"
                } else {
                    ""
                };
                println!("{}/{name} {verb}{suffix}", kind_label(&kind));
            }
            Err(e) => {
                super::print_error(&anyhow::Error::new(e));
                failures += 1;
            }
        }
    }
    if failures > 0 {
        anyhow::bail!("{failures} object(s) could not be applied");
    }
    Ok(())
}

/// Whether an apply changed the object: a new resourceVersion alone does not say so, since a
/// controller may have written the status between our read and our apply.
fn changed_by_apply(before: &vmo_api::Object, after: &vmo_api::Object) -> bool {
    if before.metadata.resource_version == after.metadata.resource_version {
        return false;
    }
    let content = |o: &vmo_api::Object| {
        let mut o = o.clone();
        o.metadata.resource_version.clear();
        o.metadata.managed_fields.clear();
        o.body.remove("status");
        o
    };
    content(before) != content(after)
}
