//! `vmo node cordon|uncordon|drain N`: maintenance of a host, as `kubectl cordon/drain` and
//! vSphere's maintenance mode do it.
//!
//! Drain cordons the node, then empties it VM by VM as each instance's eviction strategy says:
//! `LiveMigrate` moves it by live migration (the migration controller keeps to the cluster's
//! parallel limits), `LiveMigrateIfPossible` too, or shuts it down when it cannot move, `None`
//! shuts it down (a VM whose run strategy says so starts again elsewhere), `External` is left to
//! whoever handles it. `--dry-run` says what would happen to each VM, and which cannot be moved
//! and why, before anything is touched; a drain with an immovable `LiveMigrate` VM refuses to
//! start.

use super::migrate::migration_message;
use super::Context;
use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use std::collections::BTreeMap;
use std::time::Duration;
use vmo_api::kinds::migration::phase;
use vmo_api::{Object, Registry};
use vmo_client::Client;
use vmo_controllers::drain::{
    evict, load, on_node, plan_drain, set_unschedulable, ClusterView, Eviction, Plan,
};

#[derive(Args, Debug)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub command: NodeCommand,
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Mark a node unschedulable: nothing new is placed there; its VMs keep running.
    Cordon { name: String },
    /// Make a cordoned node schedulable again.
    Uncordon { name: String },
    /// Cordon a node and move or stop every VM on it, as each VM's eviction strategy says.
    Drain(DrainArgs),
}

#[derive(Args, Debug)]
pub struct DrainArgs {
    pub name: String,
    /// Only report what would happen to each VM, and which cannot be moved and why.
    #[arg(long)]
    pub dry_run: bool,
    /// Give up waiting after this many seconds (what was started goes on).
    #[arg(long, default_value_t = 1800)]
    pub timeout: u64,
}

fn describe(e: &Eviction) -> String {
    let what = match &e.plan {
        Plan::Migrate { target } => format!("live-migrate to {target}"),
        Plan::Stop { why } => format!("shut down ({why})"),
        Plan::Leave { why } => format!("leave running ({why})"),
        Plan::Blocked { why } => format!("CANNOT MOVE: {why}"),
    };
    format!("  {:<40} {:<22} {what}", e.vmi.display_name(), e.strategy)
}

pub async fn run(ctx: &Context, args: NodeArgs) -> anyhow::Result<()> {
    let client = ctx.client()?;
    match args.command {
        NodeCommand::Cordon { name } => {
            set_unschedulable(&client, &name, true)
                .await
                .with_context(|| format!("node {name}"))?;
            println!("node/{name} cordoned");
        }
        NodeCommand::Uncordon { name } => {
            set_unschedulable(&client, &name, false)
                .await
                .with_context(|| format!("node {name}"))?;
            println!("node/{name} uncordoned");
        }
        NodeCommand::Drain(a) => drain(&client, a).await?,
    }
    Ok(())
}

async fn drain(client: &Client, args: DrainArgs) -> anyhow::Result<()> {
    let ClusterView {
        nodes,
        vmis,
        settings,
        volumes,
    } = load(client).await?;
    let node = &args.name;
    if !nodes.iter().any(|n| n.metadata.name == *node) {
        bail!("node {node} not found");
    }
    let plan = plan_drain(node, &nodes, &vmis, &settings, &volumes);
    let blocked: Vec<&Eviction> = plan
        .iter()
        .filter(|e| matches!(e.plan, Plan::Blocked { .. }))
        .collect();
    if args.dry_run {
        println!("draining node/{node} would (dry run, nothing changed):");
        println!("  {:<40} {:<22} ACTION", "VM", "EVICTION STRATEGY");
        for e in &plan {
            println!("{}", describe(e));
        }
        if plan.is_empty() {
            println!("  (no VMs run on {node})");
        }
        if !blocked.is_empty() {
            println!(
                "{} VM(s) cannot be moved; the drain would stop before touching anything",
                blocked.len()
            );
        }
        return Ok(());
    }
    if !blocked.is_empty() {
        let list: Vec<String> = blocked.iter().map(|e| describe(e)).collect();
        bail!(
            "node {node} cannot be drained; nothing was changed:\n{}",
            list.join("\n")
        );
    }
    set_unschedulable(client, node, true)
        .await
        .with_context(|| format!("node {node}"))?;
    println!("node/{node} cordoned");
    let registry = Registry::builtin();
    let migration_kind = *registry.resolve("vmim").expect("registered");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    let mut migrations = Vec::new();
    let mut handled: BTreeMap<String, bool> = BTreeMap::new(); // uid -> left running on purpose
    let mut reported: BTreeMap<String, String> = BTreeMap::new();
    let mut todo = plan;
    loop {
        for e in todo.drain(..) {
            handled.insert(
                e.vmi.metadata.uid.clone(),
                matches!(e.plan, Plan::Leave { .. }),
            );
            if let Plan::Blocked { .. } = e.plan {
                bail!(
                    "node {node} stays cordoned; a VM placed there meanwhile cannot move:\n{}",
                    describe(&e)
                );
            }
            let migration = evict(client, &e).await?;
            match (&e.plan, migration) {
                (Plan::Migrate { .. }, Some(m)) => {
                    println!("{}: migrating (migration {m})", e.vmi.display_name());
                    let ns = e.vmi.metadata.namespace.clone();
                    migrations.push((ns, m, e.vmi.display_name()));
                }
                (Plan::Stop { why }, _) => {
                    println!("{}: shutting down ({why})", e.vmi.display_name());
                }
                (Plan::Leave { why }, _) => {
                    println!("{}: left running ({why})", e.vmi.display_name())
                }
                _ => {}
            }
        }
        for (ns, m, vm) in &migrations {
            let Ok(obj) = client.get(&migration_kind, ns, m).await else {
                continue;
            };
            let p = obj.status()["phase"]
                .as_str()
                .unwrap_or("Pending")
                .to_string();
            if reported.get(m) != Some(&p) {
                println!("{vm}: migration {p}: {}", migration_message(&obj));
                reported.insert(m.clone(), p);
            }
        }
        let failed: Vec<&str> = reported
            .iter()
            .filter(|(_, p)| *p == phase::FAILED)
            .map(|(m, _)| m.as_str())
            .collect();
        if !failed.is_empty() {
            bail!(
                "node {node} stays cordoned; migration(s) failed: {}",
                failed.join(", ")
            );
        }
        let view = load(client).await?;
        // A VM placed here just before the cordon took effect is drained like the others.
        todo = plan_drain(node, &view.nodes, &view.vmis, &view.settings, &view.volumes)
            .into_iter()
            .filter(|e| !handled.contains_key(&e.vmi.metadata.uid))
            .collect();
        if !todo.is_empty() {
            continue;
        }
        let left: Vec<&Object> = view
            .vmis
            .iter()
            .filter(|v| on_node(v, node) && handled.get(&v.metadata.uid) != Some(&true))
            .collect();
        if left.is_empty() {
            println!("node/{node} drained");
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            let names: Vec<String> = left.iter().map(|v| v.display_name()).collect();
            bail!(
                "node {node} still runs {} after {}s: {}",
                names.len(),
                args.timeout,
                names.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
