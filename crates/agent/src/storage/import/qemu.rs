//! The QEMU tools an import drives: `qemu-img` (create, info, check, convert, resize) and
//! `qemu-storage-daemon` exporting a qcow2 volume over NBD while a raw stream is written into it.
//! Every child is killed when its handle is dropped, so a cancelled import leaves no process.
//!
//! Images from outside are named with their format and with `backing: null` (formats that can
//! have one), so qemu-img neither probes a format nor opens a file an image names.

use super::detect::Format;
use super::source::ProgressState;
use super::{ImportError, VolumeFormat};
use serde_json::{json, Value};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::task::JoinHandle;

/// The export name the daemon serves the volume under.
pub(crate) const EXPORT: &str = "volume";
const DAEMON_START: Duration = Duration::from_secs(30);
const DAEMON_STOP: Duration = Duration::from_secs(120);

/// The first lines qemu-img wrote to stderr, for a message.
fn stderr_text(output: &Output) -> String {
    stderr_lines(output, 3)
}

fn stderr_lines(output: &Output, keep: usize) -> String {
    let text = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim().trim_start_matches("qemu-img: "))
        .filter(|l| !l.is_empty())
        .collect();
    let mut detail = lines
        .iter()
        .take(keep)
        .copied()
        .collect::<Vec<_>>()
        .join("; ");
    if lines.len() > keep {
        detail.push_str(&format!(" (and {} more like it)", lines.len() - keep));
    }
    if detail.is_empty() {
        detail = format!("exited with {}", output.status);
    }
    detail
}

fn no_space(detail: &str) -> bool {
    detail.contains("No space left on device")
}

async fn qemu_img(args: Vec<OsString>) -> Result<Output, ImportError> {
    Command::new("qemu-img")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| ImportError::Tool {
            tool: "qemu-img",
            detail: format!("cannot run qemu-img: {e}"),
        })
}

/// The failure of a qemu-img run on our own volume.
fn failed(output: &Output, dir: &Path) -> ImportError {
    let detail = stderr_text(output);
    if no_space(&detail) {
        ImportError::NoSpace {
            dir: dir.to_path_buf(),
            detail,
        }
    } else {
        ImportError::Tool {
            tool: "qemu-img",
            detail,
        }
    }
}

fn args<const N: usize>(items: [&dyn AsRef<std::ffi::OsStr>; N]) -> Vec<OsString> {
    items.iter().map(|a| a.as_ref().to_os_string()).collect()
}

/// Creates an empty volume file of `size` bytes.
pub(crate) async fn create(
    path: &Path,
    format: VolumeFormat,
    size: u64,
    dir: &Path,
) -> Result<(), ImportError> {
    sized("create", path, format, size, dir).await
}

/// Grows a volume file to `size` bytes.
pub(crate) async fn resize(
    path: &Path,
    format: VolumeFormat,
    size: u64,
    dir: &Path,
) -> Result<(), ImportError> {
    sized("resize", path, format, size, dir).await
}

/// `qemu-img VERB -q -f FORMAT PATH SIZE`.
async fn sized(
    verb: &str,
    path: &Path,
    format: VolumeFormat,
    size: u64,
    dir: &Path,
) -> Result<(), ImportError> {
    let size = size.to_string();
    let out = qemu_img(args([&verb, &"-q", &"-f", &format.as_str(), &path, &size])).await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(failed(&out, dir))
    }
}

/// How qemu-img is to open an image from outside: its format named, no backing file.
pub(crate) fn untrusted(format: Format, path: &Path) -> String {
    let mut spec = json!({
        "driver": format.driver(),
        "file": {"driver": "file", "filename": path.to_string_lossy()},
    });
    if format.has_backing() {
        spec["backing"] = Value::Null;
    }
    format!("json:{spec}")
}

/// Our own volume file.
pub(crate) fn own(format: VolumeFormat, path: &Path) -> String {
    let spec = json!({
        "driver": format.as_str(),
        "file": {"driver": "file", "filename": path.to_string_lossy()},
    });
    format!("json:{spec}")
}

/// What `qemu-img info` says about an image.
#[derive(Debug, Default)]
pub(crate) struct Info {
    pub(crate) virtual_size: u64,
    pub(crate) backing_file: Option<String>,
    pub(crate) data_file: Option<String>,
    pub(crate) encrypted: bool,
    pub(crate) marked_corrupt: bool,
    /// VMDK extent files.
    pub(crate) extents: Vec<String>,
}

/// `qemu-img info` of `spec`; an image it cannot open is corrupt.
pub(crate) async fn info(spec: &str, format: &str) -> Result<Info, ImportError> {
    let out = qemu_img(args([&"info", &"--output=json", &spec])).await?;
    if !out.status.success() {
        return Err(ImportError::Corrupt {
            format: format.to_string(),
            detail: stderr_text(&out),
        });
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| ImportError::Tool {
        tool: "qemu-img",
        detail: format!("unreadable `qemu-img info` output: {e}"),
    })?;
    let data = &v["format-specific"]["data"];
    let text = |v: &Value| v.as_str().map(str::to_string);
    Ok(Info {
        virtual_size: v["virtual-size"].as_u64().unwrap_or(0),
        backing_file: text(&v["backing-filename"]).or_else(|| text(&v["full-backing-filename"])),
        data_file: text(&data["data-file"]),
        encrypted: v["encrypted"].as_bool().unwrap_or(false) || data.get("encrypt").is_some(),
        marked_corrupt: data["corrupt"].as_bool().unwrap_or(false),
        extents: data["extents"]
            .as_array()
            .map(|e| e.iter().filter_map(|x| text(&x["filename"])).collect())
            .unwrap_or_default(),
    })
}

/// The outcome of `qemu-img check`.
#[derive(Debug)]
pub(crate) enum Checked {
    Clean {
        compressed_clusters: u64,
    },
    /// The format has no consistency check (vpc).
    NotSupported,
}

/// `qemu-img check` of `spec`: corruption (and an image it cannot check) is an error; leaked
/// clusters only waste space and pass.
pub(crate) async fn check(spec: &str, format: &str) -> Result<Checked, ImportError> {
    let out = qemu_img(args([&"check", &"--output=json", &spec])).await?;
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    match out.status.code() {
        Some(0) | Some(3) => Ok(Checked::Clean {
            compressed_clusters: report["compressed-clusters"].as_u64().unwrap_or(0),
        }),
        Some(63) => Ok(Checked::NotSupported),
        _ => {
            let mut detail = stderr_lines(&out, 1);
            if let Some(n) = report["corruptions"].as_u64().filter(|n| *n > 0) {
                detail = format!("qemu-img check found {n} corruptions: {detail}");
            }
            Err(ImportError::Corrupt {
                format: format.to_string(),
                detail,
            })
        }
    }
}

/// `qemu-img convert` of the image `spec` into a new `out` file, reporting its progress.
pub(crate) async fn convert(
    spec: &str,
    format: &str,
    out: &Path,
    out_format: VolumeFormat,
    dir: &Path,
    progress: &ProgressState,
) -> Result<(), ImportError> {
    let mut child = Command::new("qemu-img")
        .args(args([
            &"convert",
            &"-p",
            &"-O",
            &out_format.as_str(),
            &spec,
            &out,
        ]))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ImportError::Tool {
            tool: "qemu-img",
            detail: format!("cannot run qemu-img: {e}"),
        })?;
    let mut stderr = child.stderr.take().expect("piped");
    let errors = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf).await;
        buf
    });
    // `-p` prints `    (12.34/100%)` lines ended by carriage returns.
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = Vec::new();
    while stdout.read_until(b'\r', &mut line).await.unwrap_or(0) > 0 {
        let text = String::from_utf8_lossy(&line);
        if let Some(pct) = text
            .trim()
            .trim_start_matches('(')
            .split('/')
            .next()
            .and_then(|p| p.parse::<f64>().ok())
        {
            progress.after_download(pct);
        }
        line.clear();
    }
    let status = child.wait().await.map_err(|e| ImportError::Tool {
        tool: "qemu-img",
        detail: e.to_string(),
    })?;
    let output = Output {
        status,
        stdout: Vec::new(),
        stderr: errors.await.unwrap_or_default(),
    };
    if status.success() {
        return Ok(());
    }
    let detail = stderr_text(&output);
    Err(if no_space(&detail) {
        ImportError::NoSpace {
            dir: dir.to_path_buf(),
            detail,
        }
    } else if detail.contains("reading") {
        ImportError::Corrupt {
            format: format.to_string(),
            detail,
        }
    } else {
        ImportError::Tool {
            tool: "qemu-img",
            detail,
        }
    })
}

/// `qemu-storage-daemon`, under `setpriv --pdeathsig KILL` where util-linux has it: dropping the
/// handle kills the daemon, but an agent that is killed itself drops nothing, and the daemon would
/// live on holding a deleted partial file (it does not stop when its monitor's input closes).
/// The signal comes when the thread that started it ends: a runtime thread, which lives as long
/// as the agent.
async fn daemon_command() -> Command {
    static SETPRIV: tokio::sync::OnceCell<bool> = tokio::sync::OnceCell::const_new();
    let setpriv = *SETPRIV
        .get_or_init(|| async {
            Command::new("setpriv")
                .args(["--pdeathsig", "KILL", "--", "true"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .is_ok_and(|s| s.success())
        })
        .await;
    if setpriv {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--", "qemu-storage-daemon"]);
        cmd
    } else {
        Command::new("qemu-storage-daemon")
    }
}

/// A `qemu-storage-daemon` exporting one qcow2 volume file over NBD on a unix socket.
pub(crate) struct Daemon {
    child: Child,
    monitor: ChildStdin,
    errors: JoinHandle<String>,
    socket: PathBuf,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("socket", &self.socket)
            .finish()
    }
}

fn daemon_error(detail: String) -> ImportError {
    ImportError::Tool {
        tool: "qemu-storage-daemon",
        detail,
    }
}

impl Daemon {
    /// Starts the daemon and waits until it serves.
    ///
    /// The daemon writes with `O_DIRECT` (Linux AIO), bypassing the host's page cache: the volume
    /// is not read back by the host, and on the machines measured the page-cache copy cost the
    /// daemon three times the CPU (see docs/benchmarks-import.md). File systems without
    /// `O_DIRECT` (tmpfs) get buffered writes.
    pub(crate) async fn serve(image: &Path, socket: &Path) -> Result<Self, ImportError> {
        match Self::start(image, socket, true).await {
            Err(ImportError::Tool { detail, .. }) if detail.contains("O_DIRECT") => {
                tracing::debug!(%detail, "no O_DIRECT for the volume; buffered writes");
                Self::start(image, socket, false).await
            }
            other => other,
        }
    }

    async fn start(image: &Path, socket: &Path, direct: bool) -> Result<Self, ImportError> {
        let _ = std::fs::remove_file(socket);
        let mut file =
            json!({"driver": "file", "node-name": "file0", "filename": image.to_string_lossy()});
        if direct {
            file["cache"] = json!({"direct": true});
            file["aio"] = json!("native");
        }
        let qcow2 = json!({"driver": "qcow2", "node-name": "vol0", "file": "file0"});
        let server = json!({"addr": {"type": "unix", "path": socket.to_string_lossy()}});
        let export = json!({"type": "nbd", "id": "export0", "node-name": "vol0", "name": EXPORT, "writable": true});
        // Options take effect in order: the monitor comes last, so its greeting means that the
        // export is served.
        let mut child = daemon_command()
            .await
            .arg("--blockdev")
            .arg(file.to_string())
            .arg("--blockdev")
            .arg(qcow2.to_string())
            .arg("--nbd-server")
            .arg(server.to_string())
            .arg("--export")
            .arg(export.to_string())
            .args(["--chardev", "stdio,id=qmp0", "--monitor", "chardev=qmp0"])
            // Its buffer for each request comes from the heap, not a fresh mapping to fault in
            // and zero every time (glibc maps allocations from 128 KiB up by default).
            .env(
                "GLIBC_TUNABLES",
                "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=134217728",
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| daemon_error(format!("cannot run qemu-storage-daemon: {e}")))?;
        let monitor = child.stdin.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let errors = tokio::spawn(async move {
            let mut text = String::new();
            let _ = (&mut stderr).take(16 << 10).read_to_string(&mut text).await;
            text
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut greeting = String::new();
        let read = tokio::time::timeout(DAEMON_START, stdout.read_line(&mut greeting)).await;
        if !matches!(read, Ok(Ok(n)) if n > 0) || !greeting.contains("QMP") {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let text = errors.await.unwrap_or_default();
            return Err(daemon_error(if text.trim().is_empty() {
                format!("it did not start within {} s", DAEMON_START.as_secs())
            } else {
                text.trim().to_string()
            }));
        }
        // Events and replies are not needed; keep the pipe from filling.
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut stdout, &mut tokio::io::sink()).await;
        });
        Ok(Self {
            child,
            monitor,
            errors,
            socket: socket.to_path_buf(),
        })
    }

    /// Stops the daemon cleanly (QMP `quit`: it closes the image properly) and removes the socket.
    pub(crate) async fn quit(mut self) -> Result<(), ImportError> {
        let _ = self
            .monitor
            .write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n")
            .await;
        let status = tokio::time::timeout(DAEMON_STOP, self.child.wait()).await;
        let _ = std::fs::remove_file(&self.socket);
        match status {
            Ok(Ok(s)) if s.success() => Ok(()),
            Ok(Ok(s)) => {
                let text = (&mut self.errors).await.unwrap_or_default();
                Err(daemon_error(format!("exited with {s}: {}", text.trim())))
            }
            _ => Err(daemon_error(format!(
                "did not stop within {} s",
                DAEMON_STOP.as_secs()
            ))),
        }
    }
}
