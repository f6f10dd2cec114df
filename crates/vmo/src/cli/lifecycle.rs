//! `vmo start|stop|restart VM`: KubeVirt's lifecycle subresources, as virtctl offers them.

use super::Context;
use clap::Args;
use http::Method;

#[derive(Args, Debug)]
pub struct StartArgs {
    /// The VirtualMachine.
    pub name: String,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// The VirtualMachine.
    pub name: String,
    /// Seconds the guest has to shut down after the ACPI power button (default: the VM's
    /// terminationGracePeriodSeconds).
    #[arg(long)]
    pub grace_period: Option<i64>,
    /// Stop at once: with no --grace-period, the guest gets 0 seconds.
    #[arg(long)]
    pub force: bool,
}

async fn act(ctx: &Context, name: &str, action: &str, grace: Option<i64>) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let ns = ctx.namespace(&client);
    let path = format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}/{action}"
    );
    let body = match grace {
        Some(g) => serde_json::json!({"gracePeriod": g}),
        None => serde_json::json!({}),
    };
    client
        .call(
            Method::PUT,
            &path,
            Some(("application/json", serde_json::to_vec(&body)?)),
            "application/json",
        )
        .await?;
    println!("VM {name} was scheduled to {action}");
    Ok(())
}

pub async fn start(ctx: &Context, args: StartArgs) -> anyhow::Result<()> {
    act(ctx, &args.name, "start", None).await
}

pub async fn stop(ctx: &Context, args: StopArgs) -> anyhow::Result<()> {
    let grace = args.grace_period.or(args.force.then_some(0));
    act(ctx, &args.name, "stop", grace).await
}

pub async fn restart(ctx: &Context, args: StopArgs) -> anyhow::Result<()> {
    let grace = args.grace_period.or(args.force.then_some(0));
    act(ctx, &args.name, "restart", grace).await
}

pub async fn pause(ctx: &Context, args: StartArgs) -> anyhow::Result<()> {
    act(ctx, &args.name, "pause", None).await
}

pub async fn unpause(ctx: &Context, args: StartArgs) -> anyhow::Result<()> {
    act(ctx, &args.name, "unpause", None).await
}
