//! The host's links, changed through iproute2 (`ip`, `bridge`) and iptables: the same commands an
//! administrator would type to look at or repair what vmo did, and errors that quote them.
//! Every change is idempotent: asking for what already exists succeeds.

use std::path::Path;
use tokio::process::Command;

/// A command that failed, quoted with its error output.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{command}: {output}")]
pub struct LinkError {
    pub command: String,
    pub output: String,
}

/// Runs `program args`, returning its output or the quoted failure.
pub async fn run(program: &str, args: &[&str]) -> Result<String, LinkError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|e| LinkError {
            command: command.clone(),
            output: format!("cannot run {program}: {e}"),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LinkError {
            command,
            output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// `ip ARGS`.
pub async fn ip(args: &[&str]) -> Result<String, LinkError> {
    run("ip", args).await
}

/// True when the link exists.
pub fn exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// The ports of bridge `name`.
pub fn ports(bridge: &str) -> Vec<String> {
    std::fs::read_dir(Path::new("/sys/class/net").join(bridge).join("brif"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Links whose names start with `prefix`.
pub fn named_with(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Creates bridge `name` (up, with `mtu` if given) unless it exists. With `vlan_filtering`, the
/// bridge is VLAN-aware.
pub async fn ensure_bridge(name: &str, vlan_filtering: bool) -> Result<(), LinkError> {
    if !exists(name) {
        let mut args = vec!["link", "add", name, "type", "bridge"];
        if vlan_filtering {
            args.extend(["vlan_filtering", "1"]);
        }
        if let Err(e) = ip(&args).await {
            // Another agent on this host may have made it meanwhile.
            if !exists(name) {
                return Err(e);
            }
        }
    }
    ip(&["link", "set", name, "up"]).await?;
    Ok(())
}

/// Creates tap `name` on `bridge` (up, with `mtu`), replacing a left-over link of that name.
pub async fn ensure_tap(name: &str, bridge: &str, mtu: Option<u32>) -> Result<(), LinkError> {
    if !exists(name) {
        ip(&["tuntap", "add", "dev", name, "mode", "tap"]).await?;
    }
    ip(&["link", "set", name, "master", bridge]).await?;
    if let Some(mtu) = mtu {
        ip(&["link", "set", name, "mtu", &mtu.to_string()]).await?;
    }
    ip(&["link", "set", name, "up"]).await?;
    Ok(())
}

/// Deletes link `name` if it exists.
pub async fn delete(name: &str) -> Result<(), LinkError> {
    if !exists(name) {
        return Ok(());
    }
    match ip(&["link", "del", name]).await {
        Err(_) if !exists(name) => Ok(()),
        other => other.map(|_| ()),
    }
}

/// True when this kernel makes VLAN-aware bridges (the reference architecture's br0 with
/// `vlan_filtering`); probed by making and removing a throw-away bridge named `probe`.
pub async fn vlan_filtering_supported(probe: &str) -> bool {
    let _ = delete(probe).await;
    let made = ip(&[
        "link",
        "add",
        probe,
        "type",
        "bridge",
        "vlan_filtering",
        "1",
    ])
    .await
    .is_ok();
    let filtering = made
        && std::fs::read_to_string(format!("/sys/class/net/{probe}/bridge/vlan_filtering"))
            .is_ok_and(|v| v.trim() == "1");
    let _ = delete(probe).await;
    filtering
}

/// True when this process may change the host's links (root, or CAP_NET_ADMIN).
pub fn may_change_links() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("CapEff:"))
                .and_then(|l| u64::from_str_radix(l[7..].trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 12) != 0)
}
