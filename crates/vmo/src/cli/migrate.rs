//! `vmo migrate VM`: creates a VirtualMachineInstanceMigration for the VM's instance, as `virtctl
//! migrate` does, optionally pinned to a target node, and with `--wait` follows it to the end.

use super::Context;
use anyhow::{bail, Context as _};
use clap::Args;
use std::time::Duration;
use vmo_api::kinds::migration::{phase, MigrationState};
use vmo_api::{Object, Registry};
use vmo_client::Client;

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The VirtualMachine (or VirtualMachineInstance) to move.
    pub name: String,
    /// The node to move it to (default: the scheduler's choice).
    #[arg(long)]
    pub target_node: Option<String>,
    /// Wait until the migration ends and report how it went.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this many seconds (the migration goes on).
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

/// Waits for migration `name` to end; returns its last state, or an error if it failed.
pub async fn wait_for_migration(
    client: &Client,
    ns: &str,
    name: &str,
    timeout: Duration,
    mut on_change: impl FnMut(&str, &Object),
) -> anyhow::Result<Object> {
    let registry = Registry::builtin();
    let kind = registry.resolve("vmim").expect("migrations are registered");
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let m = client.get(kind, ns, name).await?;
        let current = m.status()["phase"]
            .as_str()
            .unwrap_or("Pending")
            .to_string();
        if current != last {
            on_change(&current, &m);
            last = current.clone();
        }
        match current.as_str() {
            phase::SUCCEEDED => return Ok(m),
            phase::FAILED => bail!("{}", migration_message(&m)),
            _ => {}
        }
        if tokio::time::Instant::now() > deadline {
            bail!("migration {name} is still {current} after {}s (it goes on; `vmo get vmim {name}` follows it)", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The message of a migration's condition, else its phase.
pub fn migration_message(m: &Object) -> String {
    m.status()["conditions"][0]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| {
            format!(
                "phase {}",
                m.status()["phase"].as_str().unwrap_or("Pending")
            )
        })
}

pub async fn run(ctx: &Context, args: MigrateArgs) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let ns = ctx.namespace(&client);
    let m = vmo_controllers::migration::request_migration(
        &client,
        &ns,
        &args.name,
        args.target_node.as_deref(),
    )
    .await
    .with_context(|| format!("migrating VM {}", args.name))?;
    let name = m.metadata.name.clone();
    println!(
        "VM {} was scheduled to migrate (migration {name})",
        args.name
    );
    if !args.wait {
        return Ok(());
    }
    let done = wait_for_migration(
        &client,
        &ns,
        &name,
        Duration::from_secs(args.timeout),
        |phase, m| println!("{phase}: {}", migration_message(m)),
    )
    .await?;
    if let Some(state) = done
        .status()
        .get("migrationState")
        .and_then(|s| serde_json::from_value::<MigrationState>(s.clone()).ok())
    {
        println!(
            "moved from {} to {}: downtime {} ms, {} MiB sent",
            state.source_node,
            state.target_node,
            state.downtime_milliseconds.unwrap_or(0),
            state.transferred_bytes.unwrap_or(0) >> 20
        );
    }
    Ok(())
}
