//! The node agent: one per host. It registers its Node (capacity, allocatable, labels, conditions,
//! host and QEMU versions), keeps a heartbeat Lease, runs the VMs bound to it, and serves the
//! endpoint the server proxies consoles and metrics through.
//!
//! Everything goes through the API like any client, so several agents run side by side on one
//! machine with their own names and data directories, which multi-node tests rely on.

pub mod console;
pub mod endpoint;
pub mod host;
pub mod metrics;
mod migration;
pub mod net;
mod node;
pub mod qmp;
pub mod runner;
pub mod sim;
pub mod storage;
pub mod tls;
pub mod vm;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use vmo_client::Client;

pub use host::HostFacts;

/// How an agent identifies itself and how often it reports.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    pub data_dir: PathBuf,
    /// `topology.kubernetes.io/zone`.
    pub zone: String,
    /// `vmo.io/machine-pool`.
    pub pool: String,
    /// Renewal period of the heartbeat Lease.
    pub heartbeat_interval: Duration,
    /// How long the Lease is valid without renewal.
    pub lease_duration: Duration,
    /// Memory kept back from VMs for the host and the agent.
    pub reserved_memory_bytes: u64,
    /// The QEMU binary to run and report.
    pub qemu_binary: String,
    /// Which accelerator VMs use.
    pub accel: AccelChoice,
    /// Where the agent endpoint listens (port 0: any free port; the Node says which).
    pub listen: SocketAddr,
    /// The shared storage pool this node mounts (the same path on every node that has it), if any.
    pub shared_pool: Option<PathBuf>,
    /// Where volumes of node-local classes live.
    pub local_pool: PathBuf,
    /// How the default network runs (`--pod-network`).
    pub pod_network: net::PodNetworkChoice,
}

/// The accelerator setting: `auto` boot-probes KVM and falls back to TCG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

impl AgentConfig {
    /// Defaults for a node named `node_name` with data in `data_dir`.
    pub fn new(node_name: &str, data_dir: PathBuf) -> Self {
        Self {
            node_name: node_name.to_string(),
            data_dir: data_dir.clone(),
            zone: "default".into(),
            pool: "default".into(),
            heartbeat_interval: Duration::from_secs(10),
            lease_duration: Duration::from_secs(40),
            reserved_memory_bytes: 512 << 20,
            qemu_binary: "qemu-system-x86_64".into(),
            accel: AccelChoice::Auto,
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            shared_pool: None,
            local_pool: data_dir.join("pool"),
            pod_network: net::PodNetworkChoice::Auto,
        }
    }
}

/// The agent endpoint's default port (the kubelet's, which it stands in for).
pub const DEFAULT_PORT: u16 = 10250;

/// Failures that stop the agent from starting at all.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid node name {name:?}: {why}")]
    NodeName { name: String, why: String },
    #[error("listening on {addr} for the agent endpoint")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("creating the agent data directory {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The default node name: the host name, lower-cased.
pub fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Runs the agent until the task is dropped: registers the Node, then renews its Lease and keeps
/// its status current. API errors are logged and retried; only bad configuration returns.
pub async fn run(client: Client, config: AgentConfig) -> Result<(), AgentError> {
    let errors = vmo_api::validation::dns1123_subdomain("node name", &config.node_name);
    if let Some(e) = errors.first() {
        return Err(AgentError::NodeName {
            name: config.node_name.clone(),
            why: e.detail.clone(),
        });
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|source| AgentError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let mut facts = tokio::task::spawn_blocking({
        let qemu = config.qemu_binary.clone();
        move || HostFacts::gather(&qemu)
    })
    .await
    .unwrap_or_else(|_| HostFacts::gather("/nonexistent"));
    tracing::info!(node = %config.node_name, cpus = facts.cpus, memory = facts.memory_bytes, qemu = ?facts.qemu_version, "agent starting");
    let accel = match config.accel {
        AccelChoice::Kvm => vm::plan::Accel::Kvm,
        AccelChoice::Tcg => vm::plan::Accel::Tcg,
        AccelChoice::Auto => {
            let (binary, dir) = (config.qemu_binary.clone(), config.data_dir.clone());
            let (accel, why) = tokio::task::spawn_blocking(move || {
                vm::process::probe_accelerator(&binary, &dir, std::time::Duration::from_secs(3))
            })
            .await
            .unwrap_or((vm::plan::Accel::Tcg, "the probe failed".into()));
            tracing::info!(?accel, why, "accelerator chosen");
            accel
        }
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: config.listen,
            source,
        })?;
    let identity = tls::Identity::load_or_create(&config.data_dir, &config.node_name)?;
    let server_tls = identity.server_config(client.ca_pem().ok_or(tls::TlsError::NoCa)?)?;
    let bound = listener.local_addr().unwrap_or(config.listen);
    let host = if bound.ip().is_unspecified() {
        facts
            .internal_ip
            .clone()
            .unwrap_or_else(|| "127.0.0.1".into())
    } else {
        bound.ip().to_string()
    };
    // Listening on one given address (a host with several, `--agent-listen 10.0.0.5:10250`), that
    // address is the node's: the endpoint, the migrations it receives and the Node's InternalIP
    // all name it, not whichever address the host lists first.
    if !bound.ip().is_unspecified() && !bound.ip().is_loopback() {
        facts.internal_ip = Some(host.clone());
    }
    let advertised = node::AdvertisedEndpoint {
        url: format!(
            "https://{}",
            SocketAddr::new(host.parse().unwrap_or(bound.ip()), bound.port())
        ),
        port: bound.port(),
        fingerprint: vmo_api::secrets::cert_fingerprint(&identity.cert),
    };
    tracing::info!(endpoint = %advertised.url, "agent endpoint listening");
    let vms = runner::Vms::default();
    let endpoint = std::sync::Arc::new(endpoint::Endpoint {
        node_name: config.node_name.clone(),
        vms: vms.clone(),
        cpus: facts.cpus,
        memory_bytes: facts.memory_bytes,
    });
    let network = net::Network::detect(
        config.pod_network,
        &config.node_name,
        config.data_dir.clone(),
        facts.internal_ip.as_deref(),
    )
    .await;
    let reporter = node::Reporter::new(
        client.clone(),
        config.clone(),
        facts,
        accel,
        advertised,
        &network,
    );
    tokio::join!(
        reporter.run(),
        storage::provision::run(client.clone(), config.clone(), vms.clone()),
        storage::snapshot::run(client.clone(), config.clone(), vms.clone()),
        net::peers::run(client.clone(), network.clone(), config.node_name.clone()),
        net::services::run(client.clone(), network.clone(), config.node_name.clone()),
        runner::run(client, config, accel, vms, host, network),
        endpoint.serve(listener, server_tls),
    );
    Ok(())
}
