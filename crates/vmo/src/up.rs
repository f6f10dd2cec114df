//! `vmo up`: the all-in-one control plane. It takes the data directory's lock, opens the store,
//! creates TLS material and the admin token on first start, serves the API, starts the controllers,
//! writes a kubeconfig, and shuts down cleanly on Ctrl-C or SIGTERM.

use crate::datadir::{self, parse_duration};
use anyhow::Context as _;
use clap::Args;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use vmo_apiserver::{ApiServer, Authenticator, Pki, ServerSettings};
use vmo_store::{RedbStore, Store};

/// Revisions of watch history kept before compaction.
const HISTORY_REVISIONS: u64 = 100_000;

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Directory for the store, certificates, tokens and kubeconfig.
    #[arg(long, env = "VMO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to serve the API on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub node: crate::agent::NodeArgs,
    /// Run without the local node agent: a control plane only, whose scheduler places instances on
    /// the nodes that `vmo agent` or `vmo sim-agent` register (--node-name and the other node flags
    /// then describe no node and are ignored).
    #[arg(long)]
    pub no_agent: bool,
    /// How long after its last heartbeat a node is declared unreachable.
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    pub node_grace_period: std::time::Duration,
}

fn certificate_hosts(listen: &SocketAddr) -> Vec<String> {
    let mut hosts = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if !listen.ip().is_unspecified() {
        hosts.push(listen.ip().to_string());
    }
    if let Ok(name) = std::fs::read_to_string("/etc/hostname") {
        let name = name.trim();
        if !name.is_empty() {
            hosts.push(name.to_string());
        }
    }
    hosts.sort();
    hosts.dedup();
    hosts
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let dir = args.data_dir.unwrap_or_else(crate::paths::default_data_dir);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    let _lock = datadir::lock(&dir)?;
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open(&dir.join("store.redb")).context("opening the store")?);
    let pki = Pki::load_or_create(&dir, &certificate_hosts(&args.listen))
        .context("preparing TLS certificates")?;
    let (auth, admin_token) =
        Authenticator::load_or_create(&dir.join("tokens")).context("preparing API tokens")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let bound = listener.local_addr()?;
    let settings = ServerSettings {
        agent_proxy: Some(
            pki.proxy_identity()
                .context("loading the server's client certificate for agents")?,
        ),
        ..ServerSettings::default()
    };
    let server = ApiServer::new(store.clone(), auth, settings);
    server
        .bootstrap()
        .await
        .map_err(|s| anyhow::anyhow!("bootstrapping namespaces: {s}"))?;
    let tls = pki.server_config()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.clone().serve(listener, tls, async {
        let _ = stop_rx.await;
    }));
    let client_host = if bound.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        bound.ip()
    };
    let url = format!("https://{}", SocketAddr::new(client_host, bound.port()));
    let ca_pem = std::fs::read(&pki.ca_cert)?;
    let kubeconfig_path = dir.join("kubeconfig");
    let kubeconfig = vmo_client::kubeconfig::render("vmo", &url, &ca_pem, &admin_token);
    vmo_apiserver::pki::write_private(&kubeconfig_path, kubeconfig.as_bytes())?;
    let client = vmo_client::Client::from_kubeconfig(&kubeconfig_path)?;
    crate::extensions::register(&server, &client);
    let agent_config = (!args.no_agent).then(|| {
        args.node.config(
            dir.join("agent"),
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        )
    });
    let mut tasks = vmo_controllers::start_all(
        client.clone(),
        vmo_controllers::ControllerSettings {
            node_grace_period: args.node_grace_period,
        },
    );
    if let Some(config) = agent_config {
        println!("  local node:     {}", config.node_name);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = vmo_agent::run(client, config).await {
                tracing::error!(error = %e, "the local node agent stopped");
            }
        }));
    }
    let compactor = tokio::spawn(compact_forever(store.clone()));
    println!("vmo is up at {url}");
    println!("  data directory: {}", dir.display());
    println!("  kubeconfig:     {}", kubeconfig_path.display());
    println!("  web UI:         {url}/ui (sign in with the kubeconfig's token)");
    println!("Use it with:");
    println!("  export KUBECONFIG={}", kubeconfig_path.display());
    println!("  vmo get vms        # or: kubectl get vms");
    wait_for_stop_signal().await;
    println!("vmo is stopping");
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
    for task in tasks {
        task.abort();
    }
    compactor.abort();
    drop(server);
    drop(store);
    println!("vmo stopped");
    Ok(())
}

async fn wait_for_stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}

/// Keeps the most recent `HISTORY_REVISIONS` revisions of watch history.
async fn compact_forever(store: Arc<dyn Store>) {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        if let Ok(current) = store.revision().await {
            if current > HISTORY_REVISIONS {
                if let Err(e) = store.compact(current - HISTORY_REVISIONS).await {
                    tracing::warn!(error = %e, "compaction failed");
                }
            }
        }
    }
}
