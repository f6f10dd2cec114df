//! Live migration at the QMP level: the target QEMU listens (`-incoming defer`, then
//! `migrate-incoming` on a port the kernel picks), the source QEMU sends its state there directly
//! over TCP, and the source's owner task polls `query-migrate` and enforces the cluster's limits.
//!
//! Disks local to the node (`emptyDisk`, `containerDisk` overlays) go along: the target exports its
//! fresh copies over NBD, the source mirrors into them (`drive-mirror`) and starts the memory
//! migration once every mirror is in sync; with `pause-before-switchover` the source completes the
//! mirrors while the guest is stopped, then lets the switch-over happen, so no write is lost.
//! Disks in a shared pool (and read-only seeds, rebuilt from the spec) are opened by both QEMUs;
//! QEMU hands the write lock over at the switch-over.
//!
//! The [`Watchdog`] is pure: given the remaining bytes over time it says whether to go on, switch
//! to post-copy, or give up, so KubeVirt's `progressTimeout` and `completionTimeoutPerGiB` are
//! tested without QEMU.

use crate::qmp::{Qmp, QmpError};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use vmo_api::kinds::kubevirt::VmiSpec;
use vmo_api::kinds::migration::MigrationConfiguration;

/// QEMU's cap for "unlimited": `max-bandwidth` in bytes per second (1 TiB/s).
const UNLIMITED_BANDWIDTH: u64 = 1 << 40;

/// Migration failures at the QMP level.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("QEMU refused {command}: {source}")]
    Qmp {
        command: &'static str,
        #[source]
        source: QmpError,
    },
    #[error("the incoming QEMU did not say which port it listens on: {0}")]
    NoPort(Value),
    #[error("copying disk {drive} failed: {why}")]
    Mirror { drive: String, why: String },
}

/// QEMU drive ids of the writable disks that live on the node and must be copied to a target:
/// empty disks, container-disk overlays, and the volumes named in `local_claims` (claims in the
/// node's local pool).
pub fn local_disks(spec: &VmiSpec, local_claims: &[String]) -> Vec<String> {
    spec.domain
        .devices
        .disks
        .iter()
        .filter(|d| {
            let readonly =
                d.cdrom.is_some() || d.disk.as_ref().and_then(|t| t.readonly).unwrap_or(false);
            let local = spec.volumes.iter().any(|v| {
                v.name == d.name
                    && (v.empty_disk.is_some()
                        || v.extra.contains_key("containerDisk")
                        || local_claims.contains(&v.name))
            });
            local && !readonly
        })
        .map(|d| super::plan::drive_id(&d.name))
        .collect()
}

/// On the target: exports `drives` over NBD for the source to write into; returns the port.
pub async fn export_disks(
    qmp: &Qmp,
    pid: u32,
    host: &str,
    drives: &[String],
) -> Result<u16, MigrateError> {
    let before = crate::host::listening_ports(pid);
    run(
        qmp,
        "nbd-server-start",
        json!({"addr": {"type": "inet", "data": {"host": host, "port": "0"}}}),
    )
    .await?;
    let port = crate::host::listening_ports(pid)
        .into_iter()
        .find(|p| !before.contains(p))
        .ok_or_else(|| MigrateError::NoPort(json!("no new NBD listening socket")))?;
    let block = run(qmp, "query-block", json!({})).await.unwrap_or_default();
    for drive in drives {
        let node = block
            .as_array()
            .and_then(|b| b.iter().find(|d| d["device"] == drive.as_str()))
            .and_then(|d| d["inserted"]["node-name"].as_str())
            .ok_or_else(|| MigrateError::Mirror {
                drive: drive.clone(),
                why: "the target has no such drive".into(),
            })?;
        run(
            qmp,
            "block-export-add",
            json!({"type": "nbd", "id": format!("export-{drive}"), "node-name": node,
                   "name": drive, "writable": true}),
        )
        .await?;
    }
    Ok(port)
}

/// On the target, once the guest runs here: stops serving its disks.
pub async fn stop_exports(qmp: &Qmp) {
    let _ = qmp.execute("nbd-server-stop", None).await;
}

/// On the source: starts copying `drives` into the target's exports at `host:port`.
pub async fn start_mirrors(
    qmp: &Qmp,
    host: &str,
    port: u16,
    drives: &[String],
) -> Result<(), MigrateError> {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    for drive in drives {
        run(
            qmp,
            "drive-mirror",
            json!({"device": drive, "job-id": mirror_job(drive),
                   "target": format!("nbd://{host}:{port}/{drive}"), "format": "raw",
                   "sync": "full", "mode": "existing"}),
        )
        .await?;
    }
    Ok(())
}

fn mirror_job(drive: &str) -> String {
    format!("mirror-{drive}")
}

/// Where the disk copies stand: all in sync (and bytes copied), or still copying.
pub async fn mirrors_ready(qmp: &Qmp, drives: &[String]) -> Result<(bool, u64), MigrateError> {
    let jobs = run(qmp, "query-block-jobs", json!({})).await?;
    let mut ready = true;
    let mut copied = 0;
    for drive in drives {
        let job = jobs
            .as_array()
            .and_then(|j| j.iter().find(|j| j["device"] == mirror_job(drive).as_str()));
        let Some(job) = job else {
            return Err(MigrateError::Mirror {
                drive: drive.clone(),
                why: "the copy stopped (the target's NBD export went away?)".into(),
            });
        };
        ready &= job["ready"].as_bool().unwrap_or(false);
        copied += job["offset"].as_u64().unwrap_or(0);
    }
    Ok((ready, copied))
}

/// On the source, with the guest stopped before the switch-over: completes every copy (a ready
/// mirror's cancel flushes what is left and detaches) and waits until they are gone.
pub async fn finish_mirrors(qmp: &Qmp, drives: &[String]) -> Result<(), MigrateError> {
    for drive in drives {
        run(
            qmp,
            "block-job-cancel",
            json!({"device": mirror_job(drive)}),
        )
        .await?;
    }
    for _ in 0..600 {
        let jobs = run(qmp, "query-block-jobs", json!({})).await?;
        let left = jobs.as_array().is_some_and(|j| {
            j.iter()
                .any(|j| drives.iter().any(|d| j["device"] == mirror_job(d).as_str()))
        });
        if !left {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(MigrateError::Mirror {
        drive: drives.join(","),
        why: "the copies did not finish within 12 s".into(),
    })
}

/// On the source, after a failure: drops the copies; the guest's disks are untouched.
pub async fn abandon_mirrors(qmp: &Qmp, drives: &[String]) {
    for drive in drives {
        let _ = qmp
            .execute(
                "block-job-cancel",
                Some(json!({"device": mirror_job(drive), "force": true})),
            )
            .await;
    }
}

async fn run(qmp: &Qmp, command: &'static str, args: Value) -> Result<Value, MigrateError> {
    qmp.execute(command, Some(args))
        .await
        .map_err(|source| MigrateError::Qmp { command, source })
}

fn capabilities(config: &MigrationConfiguration, source: Option<bool>) -> Value {
    let mut caps = vec![json!({"capability": "postcopy-ram", "state": config.post_copy()})];
    if let Some(with_disks) = source {
        caps.push(json!({"capability": "auto-converge", "state": config.auto_converge()}));
        caps.push(json!({"capability": "pause-before-switchover", "state": with_disks}));
    }
    json!({ "capabilities": caps })
}

/// On the target: listen for the migration on `host` and return the port.
pub async fn listen(
    qmp: &Qmp,
    host: &str,
    config: &MigrationConfiguration,
) -> Result<u16, MigrateError> {
    run(qmp, "migrate-set-capabilities", capabilities(config, None)).await?;
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

/// On the source: start sending to `host:port` with the cluster's settings; `with_disks` stops
/// before the switch-over so disk copies can be completed.
pub async fn start(
    qmp: &Qmp,
    host: &str,
    port: u16,
    config: &MigrationConfiguration,
    with_disks: bool,
) -> Result<(), MigrateError> {
    run(
        qmp,
        "migrate-set-capabilities",
        capabilities(config, Some(with_disks)),
    )
    .await?;
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
    /// Memory is copied and the guest stopped: disk copies must be completed, then
    /// `migrate-continue`.
    PreSwitchover,
    /// Done: the guest runs on the target now.
    Completed {
        downtime_ms: u64,
        total_ms: u64,
        transferred: u64,
    },
    /// Failed or cancelled, with QEMU's reason.
    Failed(String),
}

/// Reads `query-migrate`'s answer.
pub fn progress_of(info: &Value) -> Progress {
    let ram = &info["ram"];
    match info["status"].as_str().unwrap_or("") {
        "completed" => Progress::Completed {
            downtime_ms: info["downtime"].as_u64().unwrap_or(0),
            total_ms: info["total-time"].as_u64().unwrap_or(0),
            transferred: ram["transferred"].as_u64().unwrap_or(0),
        },
        "failed" => Progress::Failed(
            info["error-desc"]
                .as_str()
                .unwrap_or("QEMU reported the migration failed")
                .to_string(),
        ),
        "cancelled" => Progress::Failed("cancelled".into()),
        "pre-switchover" => Progress::PreSwitchover,
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

    #[test]
    fn only_writable_node_local_disks_are_copied() {
        let spec: VmiSpec = serde_json::from_value(json!({
            "domain": {"devices": {"disks": [
                {"name": "scratch", "disk": {}}, {"name": "shared", "disk": {}},
                {"name": "image", "disk": {}}, {"name": "seed", "cdrom": {}},
                {"name": "ro", "disk": {"readonly": true}},
            ]}},
            "volumes": [
                {"name": "scratch", "emptyDisk": {"capacity": "1Gi"}},
                {"name": "shared", "hostDisk": {"path": "/pool/x.img", "type": "Disk"}},
                {"name": "image", "containerDisk": {"image": "/images/a.qcow2"}},
                {"name": "seed", "cloudInitNoCloud": {"userData": "x"}},
                {"name": "ro", "emptyDisk": {"capacity": "1Gi"}},
            ],
        }))
        .unwrap();
        assert_eq!(local_disks(&spec, &[]), ["ua-scratch", "ua-image"]);
    }

    fn config(v: Value) -> MigrationConfiguration {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn reads_query_migrate() {
        assert_eq!(
            progress_of(
                &json!({"status": "completed", "downtime": 39, "total-time": 700, "ram": {"transferred": 1000}})
            ),
            Progress::Completed {
                downtime_ms: 39,
                total_ms: 700,
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
            progress_of(&json!({"status": "pre-switchover"})),
            Progress::PreSwitchover
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
