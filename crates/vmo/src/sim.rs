//! `vmo sim-agent`: simulated nodes (no QEMU) joining the control plane in the kubeconfig, for
//! scale tests and benchmarks. See `vmo_agent::sim`.

use crate::datadir::parse_duration;
use anyhow::Context as _;
use clap::Args;
use std::time::Duration;
use vmo_agent::sim::{SimAgents, SimConfig};

#[derive(Args, Debug)]
pub struct SimAgentArgs {
    /// How many nodes to simulate.
    #[arg(long, default_value_t = 10)]
    pub nodes: usize,
    /// Node i is named PREFIX + i.
    #[arg(long, default_value = "sim-")]
    pub name_prefix: String,
    /// Nodes are spread round-robin over this many zones (`zone-0`, `zone-1`, ...).
    #[arg(long, default_value_t = 3)]
    pub zones: usize,
    /// The nodes' machine pool (`vmo.io/machine-pool`).
    #[arg(long, default_value = "default")]
    pub pool: String,
    /// Cores per node.
    #[arg(long, default_value_t = 16)]
    pub cpus: u32,
    /// Memory per node (a quantity: 64Gi, 512Mi).
    #[arg(long, default_value = "64Gi")]
    pub memory: String,
    /// How often each node renews its heartbeat lease.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
}

pub async fn run(ctx: &crate::cli::Context, args: SimAgentArgs) -> anyhow::Result<()> {
    let memory = vmo_api::Quantity::parse(&args.memory)
        .ok()
        .and_then(|q| q.value_ceil())
        .and_then(|b| u64::try_from(b).ok())
        .filter(|b| *b > 0)
        .with_context(|| format!("--memory {:?} is not a memory size", args.memory))?;
    let mut config = SimConfig::new(args.nodes);
    config.name_prefix = args.name_prefix;
    config.zones = args.zones;
    config.pool = args.pool;
    config.cpus = args.cpus;
    config.memory_bytes = memory;
    config.heartbeat_interval = args.heartbeat_interval;
    config.lease_duration = (args.heartbeat_interval * 4).max(Duration::from_secs(1));
    let client = ctx.client()?;
    let sims = SimAgents::start(client.clone(), config)
        .await
        .context("starting the simulated nodes")?;
    let names = sims.node_names();
    println!(
        "vmo sim-agent: {} simulated nodes ({} .. {}) joined {}",
        names.len(),
        names.first().map(String::as_str).unwrap_or("-"),
        names.last().map(String::as_str).unwrap_or("-"),
        client.server()
    );
    tokio::signal::ctrl_c().await?;
    println!("vmo sim-agent stopping");
    Ok(())
}
