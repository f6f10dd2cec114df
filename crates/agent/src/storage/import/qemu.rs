//! The QEMU tool an import drives: `qemu-img` (info, check, convert, resize). Every child is
//! killed when its handle is dropped, so a cancelled import leaves no process.
//!
//! Images from outside are named with their format and with `backing: null` (formats that can
//! have one), so qemu-img neither probes a format nor opens a file an image names.

use super::detect::Format;
use super::source::ProgressState;
use super::{ImportError, VolumeFormat};
use crate::storage::files::output_cache;
use serde_json::{json, Value};
use std::ffi::OsString;
use std::path::Path;
use std::process::{Output, Stdio};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

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
///
/// The output is written with `O_DIRECT` where the file system allows, as the streaming path
/// writes volumes (see [`output_cache`]).
pub(crate) async fn convert(
    spec: &str,
    format: &str,
    out: &Path,
    out_format: VolumeFormat,
    dir: &Path,
    progress: &ProgressState,
) -> Result<(), ImportError> {
    let cache = output_cache(out);
    let mut child = Command::new("qemu-img")
        .args(args([
            &"convert",
            &"-p",
            &"-t",
            &cache,
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
