//! `vmo`: the one binary. `vmo up` runs the control plane; every other verb is a client of it.

mod agent;
mod cli;
mod datadir;
mod extensions;
mod paths;
mod sim;
mod up;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "vmo",
    version,
    about = "vmo: virtual machines for teams leaving VMware",
    propagate_version = true
)]
struct Args {
    /// Kubeconfig to use (default: $KUBECONFIG, then the default data dir's kubeconfig).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// Namespace for namespaced objects (default: the kubeconfig context's, then `default`).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the all-in-one control plane: API server, controllers, embedded store and a local node agent.
    Up(up::UpArgs),
    /// Run a node agent that joins the control plane in the kubeconfig.
    Agent(agent::AgentArgs),
    /// Simulate many nodes (no QEMU) joining the control plane in the kubeconfig, for scale tests.
    SimAgent(sim::SimAgentArgs),
    /// Create or update objects from files, a directory, or `-` (standard input).
    Apply(cli::apply::ApplyArgs),
    /// List objects, or show some by name.
    Get(cli::get::GetArgs),
    /// Show an object in detail, with its events.
    Describe(cli::describe::DescribeArgs),
    /// Delete objects by name, by label, or from files.
    Delete(cli::delete::DeleteArgs),
    /// Start a VirtualMachine.
    Start(cli::lifecycle::StartArgs),
    /// Attach this terminal to a VM's serial console (Ctrl+] detaches).
    Console(cli::console::ConsoleArgs),
    /// Serve a VM's VNC display on a local port for any VNC viewer.
    Vnc(cli::console::VncArgs),
    /// Stop a VirtualMachine: ACPI power button, then, after the grace period, kill.
    Stop(cli::lifecycle::StopArgs),
    /// Restart a VirtualMachine with a new instance.
    Restart(cli::lifecycle::StopArgs),
    /// Pause a running VirtualMachine's guest (its vCPUs stop; memory stays).
    Pause(cli::lifecycle::StartArgs),
    /// Resume a paused VirtualMachine's guest.
    Unpause(cli::lifecycle::StartArgs),
    /// Live-migrate a VirtualMachine to another node without stopping it.
    Migrate(cli::migrate::MigrateArgs),
    /// Node maintenance: cordon, uncordon, drain (with --dry-run).
    Node(cli::node::NodeArgs),
    /// Upload a disk image into a DataVolume (created unless it exists), resuming after interruptions.
    ImageUpload(cli::upload::ImageUploadArgs),
    /// Import a VMware export: `vmo import ova FILE.ova` creates a VirtualMachine with its disks.
    Import(cli::ova::ImportArgs),
    /// List the kinds the server serves.
    ApiResources,
    /// Show the client and server versions.
    Version,
}

/// Logs go to stderr at the level in `VMO_LOG` (error, warn, info, debug, trace); `vmo up` logs at
/// info by default, client verbs only warnings.
fn init_logging(is_server: bool) {
    let level = std::env::var("VMO_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(if is_server {
            tracing::Level::INFO
        } else {
            tracing::Level::WARN
        });
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: a log file (`vmo up 2>log`) stays plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(matches!(args.command, Command::Up(_) | Command::Agent(_)));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let ctx = cli::Context::new(args.kubeconfig, args.namespace);
        match args.command {
            Command::Up(a) => up::run(a).await,
            Command::Agent(a) => agent::run(&ctx, a).await,
            Command::SimAgent(a) => sim::run(&ctx, a).await,
            Command::Apply(a) => cli::apply::run(&ctx, a).await,
            Command::Get(a) => cli::get::run(&ctx, a).await,
            Command::Describe(a) => cli::describe::run(&ctx, a).await,
            Command::Delete(a) => cli::delete::run(&ctx, a).await,
            Command::Start(a) => cli::lifecycle::start(&ctx, a).await,
            Command::Console(a) => cli::console::console(&ctx, a).await,
            Command::Vnc(a) => cli::console::vnc(&ctx, a).await,
            Command::Stop(a) => cli::lifecycle::stop(&ctx, a).await,
            Command::Restart(a) => cli::lifecycle::restart(&ctx, a).await,
            Command::Pause(a) => cli::lifecycle::pause(&ctx, a).await,
            Command::Unpause(a) => cli::lifecycle::unpause(&ctx, a).await,
            Command::Migrate(a) => cli::migrate::run(&ctx, a).await,
            Command::Node(a) => cli::node::run(&ctx, a).await,
            Command::ImageUpload(a) => cli::upload::run(&ctx, a).await,
            Command::Import(a) => cli::ova::run(&ctx, a).await,
            Command::ApiResources => cli::api_resources(&ctx).await,
            Command::Version => cli::version(&ctx).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            cli::print_error(&e);
            ExitCode::FAILURE
        }
    }
}
