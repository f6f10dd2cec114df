//! Several nodes on one machine: a `vmo up --no-agent` control plane and one `vmo agent` process per
//! node, each with its own data directory, endpoint port and zone, all sharing one shared-pool
//! directory. Agents can be killed (`kill -9`) and started again. Dropping the cluster stops every
//! process, including the QEMUs its agents left running, so a failed test leaks nothing.
//!
//! By default everything shares 127.0.0.1. `Cluster::start_in_namespaces` gives each node a host
//! of its own instead: its agent (and so its QEMUs) runs in a network namespace with its own
//! address on a bridge ([`HostNetwork`]), and the control plane listens on the bridge's address,
//! so agents, migrations and disk copies reach each other only over that network.

use crate::netns::HostNetwork;
use crate::{wait_for, VmoProcess};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use vmo_api::kinds::core::node_condition;
use vmo_api::Registry;
use vmo_client::Client;

/// One `vmo agent` process.
#[derive(Debug)]
pub struct AgentProcess {
    pub name: String,
    pub zone: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// The address the agent listens on and advertises (its endpoint, incoming migrations).
    pub address: String,
    /// The network namespace it runs in (`start_in_namespaces`).
    pub netns: Option<String>,
    child: Option<Child>,
    binary: PathBuf,
    kubeconfig: PathBuf,
    extra: Vec<String>,
}

impl AgentProcess {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        // `ip netns exec` enters the namespace and executes the agent in its own place, so the
        // child is the agent itself.
        let mut command = match &self.netns {
            Some(netns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns]).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        let child = command
            .args(["agent", "--node-name", &self.name, "--zone", &self.zone])
            .args(["--heartbeat-interval", "1s", "--agent-listen"])
            .arg(format!("{}:0", self.address))
            .args(["--accel", "tcg", "--data-dir"])
            .arg(&self.data_dir)
            .args(&self.extra)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("VMO_LOG", "info")
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn vmo agent");
        self.child = Some(child);
    }

    /// `kill -9` of the agent (its QEMUs keep running).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the agent again on the same data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The run directory of an instance on this node.
    pub fn run_dir(&self, uid: &str) -> PathBuf {
        self.data_dir.join("vms").join(uid)
    }
}

/// A control plane and its agents.
#[derive(Debug)]
pub struct Cluster {
    pub up: VmoProcess,
    pub agents: Vec<AgentProcess>,
    /// The directory every node shares (`--shared-pool`).
    pub shared_pool: PathBuf,
    root: PathBuf,
    /// The hosts' network (`start_in_namespaces`); removed after every process has stopped.
    pub network: Option<HostNetwork>,
}

impl Cluster {
    /// Starts `vmo up --no-agent` and one agent per `(name, zone)` under `root`, all on
    /// 127.0.0.1, and waits until every node is Ready.
    pub async fn start(binary: &Path, root: &Path, nodes: &[(&str, &str)]) -> Self {
        Self::launch(binary, root, nodes, None, &[]).await
    }

    /// Like `start`, with every node a host of its own: each agent runs in its own network
    /// namespace and listens on that host's address (`10.77.N.11`, `.12`, ... in `nodes`' order),
    /// and `vmo up` listens on the bridge's (`10.77.N.1`), which its kubeconfig names. `None`,
    /// with `SKIPPED: needs root and network namespaces` printed, where namespaces cannot be made
    /// (see [`HostNetwork::create_or_skip`]).
    pub async fn start_in_namespaces(
        binary: &Path,
        root: &Path,
        nodes: &[(&str, &str)],
    ) -> Option<Self> {
        Self::start_in_namespaces_with(binary, root, nodes, &[]).await
    }

    /// `start_in_namespaces` with more flags for `vmo up` (`--node-grace-period 8s`, say).
    pub async fn start_in_namespaces_with(
        binary: &Path,
        root: &Path,
        nodes: &[(&str, &str)],
        up_args: &[&str],
    ) -> Option<Self> {
        let network = HostNetwork::create_or_skip(nodes.len())?;
        Some(Self::launch(binary, root, nodes, Some(network), up_args).await)
    }

    async fn launch(
        binary: &Path,
        root: &Path,
        nodes: &[(&str, &str)],
        network: Option<HostNetwork>,
        up_args: &[&str],
    ) -> Self {
        let shared_pool = root.join("shared");
        std::fs::create_dir_all(&shared_pool).expect("shared pool");
        let listen = match &network {
            Some(n) => format!("{}:0", n.gateway),
            None => "127.0.0.1:0".into(),
        };
        let mut args = vec!["--no-agent"];
        args.extend_from_slice(up_args);
        let up = VmoProcess::start_listening(binary, &root.join("control"), &listen, &args).await;
        let mut agents = Vec::new();
        for (i, (name, zone)) in nodes.iter().enumerate() {
            let host = network.as_ref().map(|n| n.host(i));
            let mut agent = AgentProcess {
                name: name.to_string(),
                zone: zone.to_string(),
                data_dir: root.join(name),
                log: root.join(format!("{name}.log")),
                address: host.map_or("127.0.0.1".into(), |h| h.address.clone()),
                netns: host.map(|h| h.netns.clone()),
                child: None,
                binary: binary.to_path_buf(),
                kubeconfig: up.kubeconfig.clone(),
                // Hosts of their own get the node-bridge default network; agents sharing one
                // host's namespace use QEMU's user-mode NAT (see `VmoProcess::start_listening`).
                extra: vec![
                    "--shared-pool".into(),
                    shared_pool.display().to_string(),
                    "--pod-network".into(),
                    if network.is_some() { "bridge" } else { "user" }.into(),
                ],
            };
            agent.spawn();
            agents.push(agent);
        }
        let cluster = Self {
            up,
            agents,
            shared_pool,
            root: root.to_path_buf(),
            network,
        };
        for (name, _) in nodes {
            cluster.wait_node_ready(name).await;
        }
        cluster
    }

    pub fn client(&self) -> Client {
        self.up.client()
    }

    /// The agent of node `name`.
    pub fn agent(&mut self, name: &str) -> &mut AgentProcess {
        self.agents
            .iter_mut()
            .find(|a| a.name == name)
            .expect("no such agent")
    }

    /// The host of node `name` (`start_in_namespaces`).
    pub fn host(&self, name: &str) -> Option<&crate::netns::NetHost> {
        let i = self.agents.iter().position(|a| a.name == name)?;
        self.network.as_ref().map(|n| n.host(i))
    }

    /// Waits until node `name` reports Ready.
    pub async fn wait_node_ready(&self, name: &str) {
        let client = self.client();
        let kind = *Registry::builtin().resolve("nodes").expect("nodes");
        wait_for(
            &format!("node {name} Ready"),
            Duration::from_secs(60),
            || async {
                let node = client.get(&kind, "", name).await.ok()?;
                (node_condition(&node, "Ready").as_deref() == Some("True")).then_some(())
            },
        )
        .await;
    }

    /// Every agent's log, for a failure message.
    pub fn logs(&self) -> String {
        self.agents
            .iter()
            .map(|a| {
                format!(
                    "--- {} ---\n{}",
                    a.name,
                    std::fs::read_to_string(&a.log).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for agent in &mut self.agents {
            agent.kill();
        }
        kill_qemus_under(&self.root);
        if std::thread::panicking() {
            eprintln!("agent logs kept under {}", self.root.display());
        }
    }
}

/// Kills every QEMU whose pidfile lies under `root` (and whose command line names its directory's
/// uid, so a recycled pid is left alone). QEMUs outlive their agent by design, so that a restarted
/// agent adopts them; a test's must not outlive the test.
pub fn kill_qemus_under(root: &Path) {
    let Ok(out) = Command::new("find")
        .arg(root)
        .args(["-name", "qemu.pid"])
        .output()
    else {
        return;
    };
    for pidfile in String::from_utf8_lossy(&out.stdout).lines() {
        let pidfile = Path::new(pidfile);
        let uid = pidfile
            .parent()
            .and_then(|d| d.file_name())
            .map(|u| u.to_string_lossy().to_string())
            .unwrap_or_default();
        let Some(pid) = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !uid.is_empty() && String::from_utf8_lossy(&cmdline).contains(&uid) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}
