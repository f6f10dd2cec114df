//! Importing disk images into volume files: the data path behind DataVolume `http` and `upload`
//! sources. CDI's users complain most about slow or stuck imports and scratch space running
//! out, so this writes raw images while they arrive, with no scratch copy, and is exact about
//! progress and about what went wrong.
//!
//! ```text
//!  HTTP(S) body / upload stream
//!    │ counted, hashed (checksum), progress; a dropped HTTP connection resumes with Range
//!    ▼
//!  gzip -dc / xz -dc (child process) when the stream is compressed
//!    │ first 64 KiB: the image format
//!    ├─ raw ──────────► qcow2 volume: <path>.partial written here as a qcow2 image, its data
//!    │                  clusters as they arrive (all-zero clusters skipped), tables last;
//!    │                  raw volume: written straight into <path>.partial (sparse)
//!    ├─ qcow2 into a qcow2 volume ─► written as <path>.partial, checked, used as it is
//!    │                  (converted like the others if it has compressed clusters)
//!    └─ vmdk, vhd, vhdx, vdi, qcow ─► <path>.scratch, then qemu-img convert into <path>.partial
//!  then: qemu-img check, grow to the claim's capacity, rename <path>.partial to <path>
//! ```
//!
//! A fixed VHD is raw data with a 512-byte footer: it streams like raw and the footer is left
//! out. The format is always named to qemu-img (never probed), images naming a backing or data
//! file are refused, and backing files are never opened.
//!
//! Failure leaves nothing behind: every error and a cancelled import (the future dropped)
//! remove `<path>.partial` and `<path>.scratch`, and kill the child processes,
//! so no half-written file is ever at `path`. Interruptions are handled inside one call instead:
//! when an HTTP connection drops and the server accepts byte ranges, the download continues
//! with `Range:` from the last byte received (up to [`MAX_RESUME_ATTEMPTS`] attempts in a row
//! with backoff), on every path (raw streaming, scratch and compressed alike, since the
//! stream goes on where it stopped); the checksum is over the whole stream. After an error that
//! [`ImportError::is_retryable`] accepts, the next import starts from the beginning.
//!
//! Volume files are written with `O_DIRECT` where the file system allows: the host does not read
//! them back, and page-cache writes cost several times the CPU on the machines measured
//! (docs/benchmarks.md, "Image import throughput").

mod detect;
mod finish;
mod http;
mod qcow2;
mod qemu;
mod source;
mod write;

use detect::Compression;
use source::{ProgressState, Source};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::AsyncRead;
use write::Written;

pub use http::MAX_RESUME_ATTEMPTS;

/// The format of the volume file an import produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeFormat {
    Qcow2,
    Raw,
}

impl VolumeFormat {
    /// qemu-img's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeFormat::Qcow2 => "qcow2",
            VolumeFormat::Raw => "raw",
        }
    }
}

/// The volume file to fill.
#[derive(Debug, Clone)]
pub struct Target {
    /// The final volume file. It is written as `<path>.partial` (with `<path>.scratch` beside it
    /// when the format needs one) and renamed to `path` only when everything succeeded. It must
    /// not exist yet.
    pub path: PathBuf,
    pub format: VolumeFormat,
    /// The claim's size in bytes: the image's virtual size must fit, and the volume is grown to
    /// exactly this.
    pub capacity: u64,
}

/// An image to download.
#[derive(Clone, Default)]
pub struct HttpSource {
    /// `http://` or `https://`.
    pub url: String,
    /// CA certificates (PEM) to trust for https, besides the system's
    /// (`/etc/ssl/certs/ca-certificates.crt`).
    pub ca_pem: Option<Vec<u8>>,
    /// User and password for basic authentication (sent only to the URL's own host, not after
    /// a redirect elsewhere).
    pub basic_auth: Option<(String, String)>,
    /// `sha256:<hex>` or `sha512:<hex>` (also sha1, sha384) of the bytes served, before
    /// decompression.
    pub checksum: Option<String>,
    /// More request headers.
    pub extra_headers: Vec<(String, String)>,
}

impl std::fmt::Debug for HttpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSource")
            .field("url", &self.url)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "(set)"))
            .field("basic_auth", &self.basic_auth.as_ref().map(|(u, _)| u))
            .field("checksum", &self.checksum)
            .field(
                "extra_headers",
                &self
                    .extra_headers
                    .iter()
                    .map(|(k, _)| k)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Receives the import's progress in percent, 0 to 100, increasing, 100 only on success.
///
/// While the source is read, the figure is the share of its bytes consumed (by
/// `Content-Length` or the upload's announced length; compressed sources count compressed
/// bytes). Where a conversion follows the download, the download covers 0-90% and qemu-img's
/// own progress the rest; for a qcow2 used as it is, 0-95%. Without a known length there are no
/// updates until the end.
#[derive(Clone)]
pub struct Progress(pub Arc<dyn Fn(f64) + Send + Sync>);

impl Progress {
    pub fn new(f: impl Fn(f64) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }
    /// Progress nobody listens to.
    pub fn none() -> Self {
        Self::new(|_| {})
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

/// How the volume was filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Raw data written into the volume while it arrived (as a qcow2 image for qcow2 volumes).
    Streamed,
    /// A qcow2 image stored as the volume itself, after `qemu-img check`.
    AsIs,
    /// Stored in a scratch file, then converted by `qemu-img convert`.
    Converted,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// raw, qcow2, qcow, vmdk, vhd, vhdx, vdi.
    pub source_format: String,
    /// gz or xz.
    pub compression: Option<String>,
    /// The image's own virtual size (the volume is `capacity` bytes).
    pub virtual_size: u64,
    /// Bytes read from the source (compressed bytes when compressed).
    pub bytes_read: u64,
    /// True when a scratch copy of the image was needed.
    pub scratch_used: bool,
    pub method: Method,
}

/// Why an import failed. Each message names the cause for the VM administrator, whole (no
/// `source()` chain to follow), so it can go into a condition as it is.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("invalid source URL {url:?}: {why}")]
    InvalidUrl { url: String, why: String },
    #[error("invalid request header {name:?}")]
    InvalidHeader { name: String },
    #[error(
        "invalid checksum {spec:?}: expected sha256:<hex> or sha512:<hex> (sha1 and sha384 work too)"
    )]
    InvalidChecksum { spec: String },
    #[error("invalid target: {0}")]
    InvalidTarget(String),
    #[error("cannot reach {url}: {why}")]
    Unreachable { url: String, why: String },
    #[error("HTTP {status} {reason} from {url}{}", status_hint(*status))]
    HttpStatus {
        url: String,
        status: u16,
        reason: String,
    },
    #[error("the server at {url} sent an invalid HTTP response: {why}")]
    BadResponse { url: String, why: String },
    #[error("TLS with {url} failed: {why}")]
    Tls { url: String, why: String },
    #[error("{what} stopped after {got} of {} bytes: {why}", expected.map_or("?".to_string(), |e| e.to_string()))]
    Interrupted {
        what: String,
        got: u64,
        expected: Option<u64>,
        why: String,
    },
    #[error("checksum mismatch for {what}: expected {expected}, got {got}")]
    Checksum {
        what: String,
        expected: String,
        got: String,
    },
    #[error("the {format} image is corrupt or truncated: {detail}")]
    Corrupt { format: String, detail: String },
    #[error(
        "the image's virtual size is {}{}, larger than the volume's capacity {}",
        if *exact { "" } else { "at least " },
        human(*virtual_size),
        human(*capacity)
    )]
    TooLarge {
        virtual_size: u64,
        capacity: u64,
        /// False when `virtual_size` is only a lower bound (a raw stream of unknown length is not
        /// read further than needed to know it does not fit).
        exact: bool,
    },
    #[error("no space left on the pool at {}: {detail}", dir.display())]
    NoSpace { dir: PathBuf, detail: String },
    #[error("unsupported image: {0}")]
    Unsupported(String),
    #[error("{tool} failed: {detail}")]
    Tool { tool: &'static str, detail: String },
    #[error("{what} {}: {error}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
}

impl ImportError {
    /// True when trying the same import again later may succeed (network trouble, a server
    /// error, an interrupted transfer); false when the input or the request is wrong.
    pub fn is_retryable(&self) -> bool {
        match self {
            ImportError::Unreachable { .. } | ImportError::Interrupted { .. } => true,
            ImportError::HttpStatus { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            _ => false,
        }
    }
}

fn status_hint(status: u16) -> &'static str {
    match status {
        401 => " (check the basic-auth credentials)",
        403 => " (the server refuses access)",
        404 => " (no image at that URL)",
        _ => "",
    }
}

/// `2.0 GiB (2147483648 bytes)`.
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size {
            return format!("{:.1} {unit} ({bytes} bytes)", bytes as f64 / size as f64);
        }
    }
    format!("{bytes} bytes")
}

/// Downloads `src` into `target`.
pub async fn import_http(
    src: &HttpSource,
    target: &Target,
    progress: Progress,
) -> Result<Imported, ImportError> {
    let checksum = src
        .checksum
        .as_deref()
        .map(source::Checksum::parse)
        .transpose()?;
    let files = Files::prepare(target)?;
    let download = http::Download::open(src).await?;
    let total = download.total();
    let state = ProgressState::new(progress);
    let what = format!("the download from {}", src.url);
    let source = Source::new(
        source::Input::Http(Box::new(download)),
        total,
        checksum,
        &state,
        what,
    );
    run(source, target, &files, &state).await
}

/// Imports an upload: `body` carries the image (`total_len` bytes when known) into `target`.
/// `checksum` is as in [`HttpSource::checksum`]. An upload that ends early fails with
/// [`ImportError::Interrupted`]; an uploader that resumes must feed one continuous `body`.
pub async fn import_stream<R>(
    mut body: R,
    total_len: Option<u64>,
    target: &Target,
    checksum: Option<&str>,
    progress: Progress,
) -> Result<Imported, ImportError>
where
    R: AsyncRead + Unpin + Send,
{
    let checksum = checksum.map(source::Checksum::parse).transpose()?;
    let files = Files::prepare(target)?;
    let state = ProgressState::new(progress);
    let source = Source::new(
        source::Input::Stream(&mut body),
        total_len,
        checksum,
        &state,
        "the upload".into(),
    );
    run(source, target, &files, &state).await
}

/// The files an import may create; all are removed when it ends, whatever the outcome (after
/// success `<path>.partial` has become `path`).
#[derive(Debug)]
pub(crate) struct Files {
    pub(crate) partial: PathBuf,
    pub(crate) scratch: PathBuf,
    pub(crate) dir: PathBuf,
}

impl Files {
    fn prepare(target: &Target) -> Result<Self, ImportError> {
        let path = &target.path;
        let name = path.file_name().ok_or_else(|| {
            ImportError::InvalidTarget(format!("{} names no file", path.display()))
        })?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if target.capacity == 0 {
            return Err(ImportError::InvalidTarget("the capacity is zero".into()));
        }
        if path.exists() {
            return Err(ImportError::InvalidTarget(format!(
                "{} exists already",
                path.display()
            )));
        }
        let with = |suffix: &str| {
            let mut n = name.to_os_string();
            n.push(suffix);
            dir.join(n)
        };
        let files = Self {
            partial: with(".partial"),
            scratch: with(".scratch"),
            dir,
        };
        // Leftovers of an import that was killed with the agent.
        files.remove();
        Ok(files)
    }

    fn remove(&self) {
        for p in [&self.partial, &self.scratch] {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Reads the source to its end through the right writer, checks length and checksum, then
/// finishes the volume.
async fn run(
    mut source: Source<'_>,
    target: &Target,
    files: &Files,
    progress: &ProgressState,
) -> Result<Imported, ImportError> {
    let head = source.head(8).await?;
    let compression = detect::compression(&head);
    let written = match compression {
        None => {
            let raw_len = source.total();
            let mut reader = write::Reader::Plain(&mut source);
            write::consume(&mut reader, target, files, progress, raw_len).await?
        }
        Some(c) => decompressed(c, &mut source, target, files, progress).await?,
    };
    let bytes_read = source.finish()?;
    let (format, virtual_size, method) = match written {
        Written::Raw {
            data_len,
            vhd_fixed,
        } => {
            finish::streamed(target, files).await?;
            let format = if vhd_fixed { "vhd" } else { "raw" };
            (format.to_string(), data_len, Method::Streamed)
        }
        Written::File { format } => {
            let (size, method) = finish::from_file(format, target, files, progress).await?;
            (format.name().to_string(), size, method)
        }
    };
    progress.done();
    Ok(Imported {
        source_format: format,
        compression: compression.map(|c| c.name().to_string()),
        virtual_size,
        bytes_read,
        scratch_used: method == Method::Converted,
        method,
    })
}

/// Runs the decompressor with the source feeding its input while the image is read from its
/// output. A source failure wins over the decompressor's complaint about its cut input; a
/// writer failure stops both.
async fn decompressed(
    c: Compression,
    source: &mut Source<'_>,
    target: &Target,
    files: &Files,
    progress: &ProgressState,
) -> Result<Written, ImportError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let program = c.program();
    let mut child = tokio::process::Command::new(program)
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ImportError::Tool {
            tool: program,
            detail: format!("cannot run {program}: {e}"),
        })?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let stderr_text = tokio::spawn(async move {
        let mut text = String::new();
        let _ = (&mut stderr).take(16 << 10).read_to_string(&mut text).await;
        text
    });
    // Ok(true): all input fed; Ok(false): the decompressor stopped taking input.
    let feed = async {
        while let Some(chunk) = source.next().await? {
            if stdin.write_all(&chunk).await.is_err() {
                return Ok(false);
            }
        }
        drop(stdin);
        Ok::<bool, ImportError>(true)
    };
    let consume = async {
        let mut reader = write::Reader::Decompressed {
            stdout: &mut stdout,
            program,
        };
        write::consume(&mut reader, target, files, progress, None).await
    };
    tokio::pin!(feed, consume);
    let (mut fed, mut written) = (None, None);
    while fed.is_none() || written.is_none() {
        tokio::select! {
            r = &mut feed, if fed.is_none() => {
                if let Err(e) = r {
                    return Err(e);
                }
                fed = Some(r);
            }
            r = &mut consume, if written.is_none() => {
                match r {
                    // The decompressor's own verdict explains a failed read better.
                    Err(ImportError::Tool { .. }) => {
                        let _ = child.start_kill();
                    }
                    Err(e) => return Err(e),
                    Ok(_) => {}
                }
                written = Some(r);
            }
        }
    }
    let status = child.wait().await.map_err(|e| ImportError::Tool {
        tool: program,
        detail: e.to_string(),
    })?;
    let text = stderr_text.await.unwrap_or_default();
    // gzip and xz exit 2 for warnings (trailing garbage ignored).
    let ok = matches!(status.code(), Some(0) | Some(2));
    if !ok || matches!(fed, Some(Ok(false))) {
        let detail = text.lines().next().unwrap_or("").trim().to_string();
        return Err(ImportError::Corrupt {
            format: c.name().to_string(),
            detail: if detail.is_empty() {
                format!("{program} stopped ({status})")
            } else {
                detail
            },
        });
    }
    written.expect("set")
}
