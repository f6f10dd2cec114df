//! QEMU processes: launched in their own process group so they outlive the agent, found again
//! (adopted) from their run directory after an agent restart, and watched through QMP.
//!
//! A run directory holds `qemu.pid`, `qmp.sock`, `serial.sock`, `vnc.sock` and `qemu.log`. Launch
//! waits for the QMP socket; if QEMU exits first, its log's last lines become the error, so a missing
//! file or a disk another QEMU holds for writing is reported as QEMU phrased it. QEMU starts paused
//! at a raised priority and runs its guest at a lowered one (`STARTUP_NICENESS`).

use super::plan::{Accel, LaunchPlan};
use crate::qmp::{Qmp, QmpError, QmpEvent};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How much lower than the agent's QEMU's CPU priority is (`nice -n`) once its guest runs: the
/// lowest, so a node whose guests saturate its CPUs still gives the control plane, the agent and a
/// starting QEMU the CPU at once (weight 1024 against 15 per guest; at niceness 5, 50 booting guests
/// outweighed them 16 to 1 and each hop of a VM start queued for hundreds of milliseconds). Guests
/// share equally among themselves and lose only what the node's own services use.
///
/// A CPU control group for all guests would weigh them together without lowering each, but moving
/// a process into a cgroup v1 group takes a system-wide lock that waits for every thread in
/// `clone`/`exit`, including low-priority guest threads: starts became 5-10x slower under load.
pub const GUEST_NICENESS: i32 = 19;

/// QEMU's niceness while it starts, before its guest runs. A new QEMU's start-up is about 0.1 s of
/// CPU, and at a guest's priority it queued behind every guest already booting (seconds, with 50
/// TCG guests on 2 cores). QEMU starts paused (`-S`), is lowered to `GUEST_NICENESS` as soon as QMP
/// answers, and only then continued: no guest instruction runs at this priority. Without the
/// privilege to raise priority (not root), QEMU starts at the agent's own niceness.
pub const STARTUP_NICENESS: i32 = -10;

/// How long QEMU has to open its QMP socket.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// Launch and adoption failures.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("starting {binary}")]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU exited during start: {log_tail}")]
    EarlyExit { log_tail: String },
    #[error("QEMU did not open its QMP socket within {0:?}")]
    NoQmp(Duration),
    #[error("no running QEMU in {0}")]
    NotRunning(PathBuf),
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("preparing run directory {path}")]
    RunDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A QEMU process and its QMP session.
#[derive(Debug)]
pub struct QemuProcess {
    pub pid: u32,
    pub qmp: Qmp,
    pub events: mpsc::UnboundedReceiver<QmpEvent>,
    pub run_dir: PathBuf,
}

/// The files of a run directory.
pub fn run_files(run_dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf, PathBuf) {
    (
        run_dir.join("qmp.sock"),
        run_dir.join("serial.sock"),
        run_dir.join("vnc.sock"),
        run_dir.join("qemu.pid"),
        run_dir.join("qemu.log"),
    )
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    if tail.is_empty() {
        "no output".into()
    } else {
        tail
    }
}

/// True when `pid` is alive and its command line mentions `marker`.
pub fn is_qemu(pid: u32, marker: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(marker))
        .unwrap_or(false)
}

/// Starts QEMU for `plan`; returns once QMP answers. The process keeps running if the agent exits.
pub async fn launch(binary: &str, plan: &LaunchPlan) -> Result<QemuProcess, ProcessError> {
    let run_dir = plan
        .qmp_socket
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let (_, _, _, _, log) = run_files(&run_dir);
    for stale in [
        &plan.qmp_socket,
        &plan.serial_socket,
        &plan.vnc_socket,
        &plan.pidfile,
    ] {
        let _ = std::fs::remove_file(stale);
    }
    let log_file = std::fs::File::create(&log).map_err(|source| ProcessError::RunDir {
        path: run_dir.clone(),
        source,
    })?;
    // A running guest's QEMU is `GUEST_NICENESS` below the agent, so a node whose guests saturate
    // its CPUs still answers the API, renews its lease and starts the next VM promptly (as a
    // kubelet's reserved CPU does). Guests only yield to the control plane and to QEMUs starting;
    // among themselves they share as before.
    let mut child = Command::new(binary)
        .args(plan.args())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file.try_clone().map_err(|source| {
            ProcessError::RunDir {
                path: run_dir.clone(),
                source,
            }
        })?))
        .stderr(Stdio::from(log_file))
        .process_group(0)
        .spawn()
        .map_err(|source| ProcessError::Spawn {
            binary: binary.to_string(),
            source,
        })?;
    let pid = child.id();
    let spawned = Instant::now();
    // Its own process group (set before exec) covers every thread QEMU has or makes; the first
    // milliseconds at the agent's priority do not matter.
    set_group_priority(pid, STARTUP_NICENESS);
    // Reap the child when it exits so no zombie is left while the agent runs.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    let deadline = Instant::now() + START_DEADLINE;
    // Polled often at first (QEMU answers within ~100 ms on an idle host), then less: many QEMUs
    // starting on a busy host must not lose CPU to the agent's own polling.
    let mut pause = Duration::from_millis(5);
    loop {
        if !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid) {
            return Err(ProcessError::EarlyExit {
                log_tail: log_tail(&log),
            });
        }
        if plan.qmp_socket.exists() {
            let socket_seen = spawned.elapsed();
            match Qmp::connect(&plan.qmp_socket).await {
                Ok((qmp, mut events)) => {
                    tracing::debug!(
                        pid,
                        socket_ms = socket_seen.as_millis() as u64,
                        answered_ms = spawned.elapsed().as_millis() as u64,
                        "QEMU answered QMP"
                    );
                    if let Err(e) = finish_start(pid, &qmp, &mut events).await {
                        kill(pid);
                        return Err(e.into());
                    }
                    return Ok(QemuProcess {
                        pid,
                        qmp,
                        events,
                        run_dir,
                    });
                }
                Err(QmpError::Connect { .. }) => {}
                Err(e) => {
                    // QEMU opens QMP before its disks: a disk it cannot open ends it right here.
                    for _ in 0..100 {
                        if is_zombie(pid) || !Path::new(&format!("/proc/{pid}")).exists() {
                            return Err(ProcessError::EarlyExit {
                                log_tail: log_tail(&log),
                            });
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    // Alive but not answering QMP: do not leave it running unowned.
                    kill(pid);
                    return Err(e.into());
                }
            }
        }
        if Instant::now() > deadline {
            kill(pid);
            return Err(ProcessError::NoQmp(START_DEADLINE));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Sets the niceness of every thread in QEMU's process group (`pid`'s); threads created later
/// inherit it from their creator. Failure (no privilege to raise priority) leaves it as it was.
fn set_group_priority(pid: u32, niceness: i32) {
    // `None` would mean the agent's own group.
    let Some(group) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    if let Err(e) = rustix::process::setpriority_pgrp(Some(group), niceness) {
        tracing::debug!(pid, niceness, error = %e, "could not set QEMU's priority");
    }
}

/// Lowers every thread of QEMU to `GUEST_NICENESS`, twice, for a thread being created during the
/// first pass.
fn lower_to_guest_priority(pid: u32) {
    set_group_priority(pid, GUEST_NICENESS);
    set_group_priority(pid, GUEST_NICENESS);
}

/// Ends QEMU's start-up: guest priority, then `cont` for a new VM still in `prelaunch` (`-S`). An
/// incoming migration's QEMU (`inmigrate`) runs once its state has arrived; a QEMU adopted after an
/// agent restart may already run.
async fn finish_start(
    pid: u32,
    qmp: &Qmp,
    events: &mut mpsc::UnboundedReceiver<QmpEvent>,
) -> Result<(), QmpError> {
    lower_to_guest_priority(pid);
    if qmp.status().await? == "prelaunch" {
        qmp.execute("cont", None).await?;
        // QEMU sends the RESUME of this `cont` before its reply; it is no user's unpause.
        if let Ok(event) = events.try_recv() {
            if event.name != "RESUME" {
                tracing::debug!(pid, event = %event.name, "QMP event during start-up");
            }
        }
    }
    Ok(())
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Finds the QEMU of a run directory again (after an agent restart) and reconnects to it.
/// `marker` (the VM's uuid) must appear in its command line, so a recycled pid is not mistaken for it.
pub async fn adopt(run_dir: &Path, marker: &str) -> Result<QemuProcess, ProcessError> {
    let (qmp_socket, _, _, pidfile, _) = run_files(run_dir);
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| ProcessError::NotRunning(run_dir.to_path_buf()))?;
    if !is_qemu(pid, marker) || is_zombie(pid) {
        return Err(ProcessError::NotRunning(run_dir.to_path_buf()));
    }
    let (qmp, mut events) = Qmp::connect(&qmp_socket).await?;
    // The agent may have died while this QEMU was starting.
    finish_start(pid, &qmp, &mut events).await?;
    Ok(QemuProcess {
        pid,
        qmp,
        events,
        run_dir: run_dir.to_path_buf(),
    })
}

/// Sends SIGKILL to a process (the last resort after ACPI shutdown and `quit`).
pub fn kill(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

/// Kills a process and waits (up to 10 s) until it is gone, so what it held (memory, disk locks,
/// ports) is free when this returns.
pub async fn kill_and_wait(pid: u32) {
    let _ = tokio::task::spawn_blocking(move || kill(pid)).await;
    for _ in 0..500 {
        if is_zombie(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A 512-byte BIOS boot sector that writes `K` to the first serial port and halts.
fn probe_boot_sector() -> Vec<u8> {
    // mov dx,0x3f8 ; mov al,'K' ; out dx,al ; cli ; hlt ; jmp $-1
    let mut sector = vec![0xBA, 0xF8, 0x03, 0xB0, b'K', 0xEE, 0xFA, 0xF4, 0xEB, 0xFD];
    sector.resize(510, 0);
    sector.extend_from_slice(&[0x55, 0xAA]);
    sector
}

/// Decides the accelerator for `auto`: boots a one-sector guest under KVM with a deadline and
/// uses KVM only if the guest actually ran; otherwise TCG. Returns the choice and why.
pub fn probe_accelerator(binary: &str, work_dir: &Path, deadline: Duration) -> (Accel, String) {
    if !Path::new("/dev/kvm").exists() {
        return (Accel::Tcg, "/dev/kvm does not exist".into());
    }
    let image = work_dir.join("accel-probe.img");
    if let Err(e) = std::fs::write(&image, probe_boot_sector()) {
        return (Accel::Tcg, format!("cannot write the probe image: {e}"));
    }
    // Under `timeout`, so the probe dies at its deadline even if the agent is killed meanwhile.
    let child = Command::new("timeout")
        .args(["-s", "KILL", &format!("{}", deadline.as_secs_f64())])
        .arg(binary)
        .args([
            "-accel",
            "kvm",
            "-machine",
            "q35",
            "-m",
            "16",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
            "-drive",
        ])
        .arg(format!("format=raw,file={}", image.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (Accel::Tcg, format!("cannot run {binary}: {e}")),
    };
    let mut stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 64];
        let mut seen = Vec::new();
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.contains(&b'K') {
                let _ = tx.send(());
                break;
            }
        }
    });
    let ran = rx.recv_timeout(deadline).is_ok();
    // `timeout` passes SIGTERM on to QEMU; past the deadline it has killed QEMU already.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let output = child.wait_with_output().ok();
    let _ = std::fs::remove_file(&image);
    if ran {
        (Accel::Kvm, "a KVM probe guest ran".into())
    } else {
        let stderr = output
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
            .unwrap_or_default();
        let mut why = format!("a KVM probe guest did not run within {deadline:?}");
        if !stderr.is_empty() {
            why.push_str(&format!(" (QEMU said: {stderr})"));
        }
        (Accel::Tcg, why)
    }
}
