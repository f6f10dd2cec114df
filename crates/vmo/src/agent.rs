//! `vmo agent`: a node agent joining a control plane given by a kubeconfig. `vmo up` runs one too.

use crate::datadir::{self, parse_duration};
use anyhow::Context as _;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use vmo_agent::AgentConfig;

/// Flags describing a node, shared by `vmo agent` and `vmo up`.
#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// The Node's name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The node's zone (`topology.kubernetes.io/zone`).
    #[arg(long, default_value = "default")]
    pub zone: String,
    /// The node's machine pool (`vmo.io/machine-pool`).
    #[arg(long, default_value = "default")]
    pub pool: String,
    /// How often the agent renews its heartbeat lease.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// Accelerator for VMs: auto boot-probes KVM and uses it only if a guest really runs.
    #[arg(long, default_value = "auto", value_parser = ["auto", "kvm", "tcg"])]
    pub accel: String,
    /// Address of the agent endpoint the server proxies consoles and metrics to (`vmo agent`:
    /// 0.0.0.0:10250; `vmo up`: 127.0.0.1 on a free port). Port 0 picks a free port.
    #[arg(long)]
    pub agent_listen: Option<std::net::SocketAddr>,
    /// A directory this node shares with others at the same path (NFS, a SAN filesystem): disks
    /// inside it live-migrate without copying.
    #[arg(long)]
    pub shared_pool: Option<PathBuf>,
    /// Where this node keeps the volumes of node-local storage classes (default: `pool` in the
    /// data directory).
    #[arg(long)]
    pub local_pool: Option<PathBuf>,
    /// How VMs' default network runs: `bridge` (a node bridge with NAT, addresses from the
    /// node's share of the pod CIDR by DHCP; needs root), `user` (QEMU's user-mode NAT), or
    /// `auto` (bridge when the agent may change links).
    #[arg(long, default_value = "auto", value_parser = ["auto", "bridge", "user"])]
    pub pod_network: String,
}

impl NodeArgs {
    /// The agent configuration these flags describe; `default_listen` unless `--agent-listen`.
    pub fn config(&self, data_dir: PathBuf, default_listen: std::net::SocketAddr) -> AgentConfig {
        let name = self
            .node_name
            .clone()
            .unwrap_or_else(vmo_agent::default_node_name);
        let mut config = AgentConfig::new(&name, data_dir);
        config.zone = self.zone.clone();
        config.pool = self.pool.clone();
        config.heartbeat_interval = self.heartbeat_interval;
        config.listen = self.agent_listen.unwrap_or(default_listen);
        config.shared_pool = self.shared_pool.clone();
        if let Some(pool) = &self.local_pool {
            config.local_pool = pool.clone();
        }
        config.lease_duration = (self.heartbeat_interval * 4).max(Duration::from_secs(1));
        config.pod_network = match self.pod_network.as_str() {
            "bridge" => vmo_agent::net::PodNetworkChoice::Bridge,
            "user" => vmo_agent::net::PodNetworkChoice::User,
            _ => vmo_agent::net::PodNetworkChoice::Auto,
        };
        config.accel = match self.accel.as_str() {
            "kvm" => vmo_agent::AccelChoice::Kvm,
            "tcg" => vmo_agent::AccelChoice::Tcg,
            _ => vmo_agent::AccelChoice::Auto,
        };
        config
    }
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Directory for this agent's state (its VMs' files, later).
    #[arg(long)]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub node: NodeArgs,
}

pub async fn run(ctx: &crate::cli::Context, args: AgentArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
    let _lock = datadir::lock(&args.data_dir)?;
    let client = ctx.client()?;
    let config = args.node.config(
        args.data_dir.clone(),
        std::net::SocketAddr::from(([0, 0, 0, 0], vmo_agent::DEFAULT_PORT)),
    );
    println!("vmo agent {} joining {}", config.node_name, client.server());
    tokio::select! {
        result = vmo_agent::run(client, config) => result.context("the node agent stopped")?,
        _ = tokio::signal::ctrl_c() => println!("vmo agent stopping"),
    }
    Ok(())
}
