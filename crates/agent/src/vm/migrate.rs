//! Live migration at the QMP level: the target QEMU listens (`-incoming defer`, then
//! `migrate-incoming` on a port the kernel picks), the source QEMU sends its state there directly
//! over TCP, and the source's owner task polls `query-migrate` and enforces the cluster's limits.
//!
//! The [`Watchdog`] is pure: given the remaining bytes over time it says whether to go on, switch
//! to post-copy, or give up, so KubeVirt's `progressTimeout` and `completionTimeoutPerGiB` are
//! tested without QEMU.

use crate::qmp::{Qmp, QmpError};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use vmo_api::kinds::migration::MigrationConfiguration;

/// QEMU's cap for "unlimited": `max-bandwidth` in bytes per second (1 TiB/s).
const UNLIMITED_BANDWIDTH: u64 = 1 << 40;

/// Migration failures at the QMP level.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("QEMU refused {command}")]
    Qmp {
        command: &'static str,
        #[source]
        source: QmpError,
    },
    #[error("the incoming QEMU did not say which port it listens on: {0}")]
    NoPort(Value),
}

async fn run(qmp: &Qmp, command: &'static str, args: Value) -> Result<Value, MigrateError> {
    qmp.execute(command, Some(args))
        .await
        .map_err(|source| MigrateError::Qmp { command, source })
}

fn capabilities(config: &MigrationConfiguration, source: bool) -> Value {
    let mut caps = vec![json!({"capability": "postcopy-ram", "state": config.post_copy()})];
    if source {
        caps.push(json!({"capability": "auto-converge", "state": config.auto_converge()}));
    }
    json!({ "capabilities": caps })
}

/// On the target: listen for the migration on `host` and return the port.
pub async fn listen(
    qmp: &Qmp,
    host: &str,
    config: &MigrationConfiguration,
) -> Result<u16, MigrateError> {
    run(qmp, "migrate-set-capabilities", capabilities(config, false)).await?;
    run(
        qmp,
        "migrate-incoming",
        json!({"uri": format!("tcp:{host}:0")}),
    )
    .await?;
    let info = qmp
        .execute("query-migrate", None)
        .await
        .map_err(|source| MigrateError::Qmp {
            command: "query-migrate",
            source,
        })?;
    info["socket-address"]
        .as_array()
        .and_then(|a| a.first())
        .and_then(|a| a["port"].as_str())
        .and_then(|p| p.parse().ok())
        .ok_or(MigrateError::NoPort(info))
}

/// On the source: start sending to `host:port` with the cluster's settings.
pub async fn start(
    qmp: &Qmp,
    host: &str,
    port: u16,
    config: &MigrationConfiguration,
) -> Result<(), MigrateError> {
    run(qmp, "migrate-set-capabilities", capabilities(config, true)).await?;
    let bandwidth = config
        .bandwidth_bytes_per_second()
        .unwrap_or(UNLIMITED_BANDWIDTH);
    run(
        qmp,
        "migrate-set-parameters",
        json!({"max-bandwidth": bandwidth}),
    )
    .await?;
    let uri = if host.contains(':') {
        format!("tcp:[{host}]:{port}")
    } else {
        format!("tcp:{host}:{port}")
    };
    run(qmp, "migrate", json!({ "uri": uri })).await?;
    Ok(())
}

/// Where an outgoing migration stands, from `query-migrate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Still copying; bytes of memory left.
    Active { remaining: u64 },
    /// Done: the guest runs on the target now.
    Completed { downtime_ms: u64, transferred: u64 },
    /// Failed or cancelled, with QEMU's reason.
    Failed(String),
}

/// Reads `query-migrate`'s answer.
pub fn progress_of(info: &Value) -> Progress {
    let ram = &info["ram"];
    match info["status"].as_str().unwrap_or("") {
        "completed" => Progress::Completed {
            downtime_ms: info["downtime"].as_u64().unwrap_or(0),
            transferred: ram["transferred"].as_u64().unwrap_or(0),
        },
        "failed" => Progress::Failed(
            info["error-desc"]
                .as_str()
                .unwrap_or("QEMU reported the migration failed")
                .to_string(),
        ),
        "cancelled" => Progress::Failed("cancelled".into()),
        // "none" before the first `migrate` is not expected here; treat it like setup.
        _ => Progress::Active {
            remaining: ram["remaining"].as_u64().unwrap_or(u64::MAX),
        },
    }
}

/// Asks QEMU where the migration stands.
pub async fn progress(qmp: &Qmp) -> Result<Progress, MigrateError> {
    let info = qmp
        .execute("query-migrate", None)
        .await
        .map_err(|source| MigrateError::Qmp {
            command: "query-migrate",
            source,
        })?;
    Ok(progress_of(&info))
}

/// What the watchdog says to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// The completion timeout passed and post-copy is allowed: switch to it.
    StartPostCopy,
    /// Give up, with the reason users see.
    Abort(String),
}

/// KubeVirt's migration timeouts for one migration.
#[derive(Debug, Clone)]
pub struct Watchdog {
    started: Instant,
    completion_limit: Duration,
    progress_limit: Duration,
    post_copy: bool,
    least_remaining: u64,
    last_progress: Instant,
    switched: bool,
}

impl Watchdog {
    /// Starts timing a migration of a guest with `memory_bytes` of memory.
    pub fn new(config: &MigrationConfiguration, memory_bytes: u64, now: Instant) -> Self {
        let gib = memory_bytes.div_ceil(1 << 30).max(1) as u32;
        Self {
            started: now,
            completion_limit: config.completion_timeout_per_gib() * gib,
            progress_limit: config.progress_timeout(),
            post_copy: config.post_copy(),
            least_remaining: u64::MAX,
            last_progress: now,
            switched: false,
        }
    }

    /// Judges the migration with `remaining` bytes left at `now`.
    pub fn check(&mut self, remaining: u64, now: Instant) -> Verdict {
        if remaining < self.least_remaining {
            self.least_remaining = remaining;
            self.last_progress = now;
        }
        if self.switched {
            // Post-copy cannot be abandoned without losing the guest: let it finish.
            return Verdict::Continue;
        }
        if now.duration_since(self.last_progress) > self.progress_limit {
            return Verdict::Abort(format!(
                "no progress for {}s (progressTimeout); {} MiB were left",
                self.progress_limit.as_secs(),
                remaining >> 20
            ));
        }
        if now.duration_since(self.started) > self.completion_limit {
            if self.post_copy {
                self.switched = true;
                return Verdict::StartPostCopy;
            }
            return Verdict::Abort(format!(
                "not completed within {}s (completionTimeoutPerGiB); {} MiB were left",
                self.completion_limit.as_secs(),
                remaining >> 20
            ));
        }
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(v: Value) -> MigrationConfiguration {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn reads_query_migrate() {
        assert_eq!(
            progress_of(
                &json!({"status": "completed", "downtime": 39, "ram": {"transferred": 1000}})
            ),
            Progress::Completed {
                downtime_ms: 39,
                transferred: 1000
            }
        );
        assert_eq!(
            progress_of(&json!({"status": "failed", "error-desc": "Connection reset"})),
            Progress::Failed("Connection reset".into())
        );
        assert_eq!(
            progress_of(&json!({"status": "active", "ram": {"remaining": 5}})),
            Progress::Active { remaining: 5 }
        );
        assert_eq!(
            progress_of(&json!({"status": "setup"})),
            Progress::Active {
                remaining: u64::MAX
            }
        );
    }

    #[test]
    fn no_progress_aborts_after_the_progress_timeout() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(&config(json!({"progressTimeout": 10})), 1 << 30, t0);
        assert_eq!(w.check(100, t0), Verdict::Continue);
        assert_eq!(w.check(90, t0 + Duration::from_secs(8)), Verdict::Continue);
        // Stuck at 90 from t0+8 s: fine until t0+18 s.
        assert_eq!(w.check(95, t0 + Duration::from_secs(17)), Verdict::Continue);
        assert!(
            matches!(w.check(95, t0 + Duration::from_secs(19)), Verdict::Abort(r) if r.contains("progressTimeout"))
        );
    }

    #[test]
    fn the_completion_timeout_scales_with_memory_and_may_switch_to_post_copy() {
        let t0 = Instant::now();
        let c = config(json!({"completionTimeoutPerGiB": 5}));
        let mut w = Watchdog::new(&c, 3 << 30, t0);
        let mut remaining = 1000;
        let mut at = |secs, w: &mut Watchdog| {
            remaining -= 1;
            w.check(remaining, t0 + Duration::from_secs(secs))
        };
        assert_eq!(at(14, &mut w), Verdict::Continue);
        assert!(
            matches!(at(16, &mut w), Verdict::Abort(r) if r.contains("completionTimeoutPerGiB"))
        );

        let c = config(json!({"completionTimeoutPerGiB": 5, "allowPostCopy": true}));
        let mut w = Watchdog::new(&c, 1 << 30, t0);
        assert_eq!(at(6, &mut w), Verdict::StartPostCopy);
        assert_eq!(at(600, &mut w), Verdict::Continue);
    }
}
