//! `vmo get KIND[,KIND] [NAME...]`: tables from the server's printer columns, or JSON/YAML/names;
//! `--watch` keeps printing rows as objects change.

use super::output::{self, Format};
use super::Context;
use anyhow::Context as _;
use clap::Args;
use http::Method;
use vmo_api::{KindInfo, Object};
use vmo_client::{encode_query, path, Client};

const TABLE_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io, application/json";

#[derive(Args, Debug)]
pub struct GetArgs {
    /// Kind (vm, vmi, ns, cm, ... or several separated by commas), then optional names.
    #[arg(required = true)]
    pub args: Vec<String>,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Label selector (`app=web,tier!=db`, `env in (a,b)`, `!x`).
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Field selector (`metadata.name=x`, `status.nodeName=n1`).
    #[arg(long)]
    pub field_selector: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
    /// After listing, keep printing changes.
    #[arg(short = 'w', long)]
    pub watch: bool,
}

fn selector_query(args: &GetArgs) -> String {
    let mut q = Vec::new();
    if let Some(l) = &args.selector {
        q.push(format!("labelSelector={}", encode_query(l)));
    }
    if let Some(f) = &args.field_selector {
        q.push(format!("fieldSelector={}", encode_query(f)));
    }
    q.join("&")
}

pub async fn run(ctx: &Context, args: GetArgs) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let kinds: Vec<KindInfo> = args.args[0]
        .split(',')
        .map(|k| ctx.kind(k))
        .collect::<Result<_, _>>()?;
    let names = &args.args[1..];
    if kinds.len() > 1 && !names.is_empty() {
        anyhow::bail!("names may only be given with a single kind");
    }
    let namespace = ctx.namespace(&client);
    for (i, kind) in kinds.iter().enumerate() {
        let ns = if kind.namespaced && !args.all_namespaces {
            Some(namespace.as_str())
        } else {
            None
        };
        if kinds.len() > 1 && matches!(args.output, Format::Table | Format::Wide) && i > 0 {
            println!();
        }
        show(&client, kind, ns, names, &args).await?;
    }
    Ok(())
}

async fn show(
    client: &Client,
    kind: &KindInfo,
    ns: Option<&str>,
    names: &[String],
    args: &GetArgs,
) -> anyhow::Result<()> {
    let query = selector_query(args);
    let with_namespace = kind.namespaced && ns.is_none();
    match args.output {
        Format::Table | Format::Wide => {
            let wide = args.output == Format::Wide;
            let mut tables = Vec::new();
            if names.is_empty() {
                let p = if query.is_empty() {
                    path(kind, ns, None, None)
                } else {
                    format!("{}?{query}", path(kind, ns, None, None))
                };
                tables.push(client.call(Method::GET, &p, None, TABLE_ACCEPT).await?);
            } else {
                for name in names {
                    tables.push(
                        client
                            .call(
                                Method::GET,
                                &path(kind, ns, Some(name), None),
                                None,
                                TABLE_ACCEPT,
                            )
                            .await?,
                    );
                }
            }
            let mut rows = Vec::new();
            for (i, t) in tables.iter().enumerate() {
                let mut r = output::table_rows(t, wide, with_namespace);
                if i > 0 {
                    r.remove(0);
                }
                rows.extend(r);
            }
            if rows.len() <= 1 && !args.watch {
                match ns {
                    Some(n) => eprintln!("No resources found in {n} namespace."),
                    None => eprintln!("No resources found"),
                }
            } else {
                print!("{}", output::render_rows(&rows));
            }
            if args.watch {
                let rv = tables
                    .first()
                    .and_then(|t| t["metadata"]["resourceVersion"].as_str())
                    .unwrap_or("")
                    .to_string();
                watch_rows(client, kind, ns, &query, &rv, wide, with_namespace).await?;
            }
        }
        Format::Json | Format::Yaml | Format::Name => {
            let mut objects: Vec<Object> = Vec::new();
            if names.is_empty() {
                objects = client.list(kind, ns, &query).await?.items;
                for o in &mut objects {
                    o.api_version = kind.api_version();
                    o.kind = kind.kind.to_string();
                }
            } else {
                for name in names {
                    objects.push(client.get(kind, ns.unwrap_or(""), name).await?);
                }
            }
            match args.output {
                Format::Name => objects
                    .iter()
                    .for_each(|o| println!("{}", output::name_of(kind, o))),
                f => print!(
                    "{}",
                    output::document(&objects, names.len() == 1, f == Format::Yaml)
                ),
            }
        }
    }
    Ok(())
}

async fn watch_rows(
    client: &Client,
    kind: &KindInfo,
    ns: Option<&str>,
    query: &str,
    resource_version: &str,
    wide: bool,
    with_namespace: bool,
) -> anyhow::Result<()> {
    let mut q = format!("resourceVersion={resource_version}");
    if !query.is_empty() {
        q = format!("{q}&{query}");
    }
    let p = format!("{}?watch=true&{q}", path(kind, ns, None, None));
    let response = client.send(Method::GET, &p, None, TABLE_ACCEPT).await?;
    if !response.status().is_success() {
        anyhow::bail!("the server refused the watch ({})", response.status());
    }
    let mut stream = vmo_client::WatchStream::from_response(response);
    while let Some(event) = stream.next().await {
        let event = event.context("reading the watch")?;
        if event.event_type == "BOOKMARK" {
            continue;
        }
        if event.event_type == "ERROR" {
            anyhow::bail!(
                "watch ended: {}",
                event.object["message"].as_str().unwrap_or("error")
            );
        }
        let mut rows = output::table_rows(&event.object, wide, with_namespace);
        if rows.len() > 1 {
            rows.remove(0);
            print!("{}", output::render_rows(&rows));
        }
    }
    Ok(())
}
