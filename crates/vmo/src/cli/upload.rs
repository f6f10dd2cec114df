//! `vmo image-upload dv NAME --image-path FILE`: uploads a disk image into an upload DataVolume,
//! as `virtctl image-upload` does: creates the DataVolume unless it exists (or `--no-create`),
//! waits until it is UploadReady, streams the file to the DataVolume's `upload` subresource with
//! a progress bar, and resumes after a dropped connection from what the server says it received
//! (a rerun of the same command after a kill resumes too). `vmo import ova` uploads its disks
//! through [`upload_range`].

use super::Context;
use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use clap::Args;
use http::Method;
use hyper::body::Frame;
use serde_json::{json, Value};
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use vmo_api::quantity::Quantity;
use vmo_api::{Object, Registry};
use vmo_client::{Client, ClientError};

/// The annotation that provisions a DataVolume at once rather than for its first VM.
const IMMEDIATE: &str = "cdi.kubevirt.io/storage.bind.immediate.requested";
/// Attempts in a row after a dropped connection before giving up.
const ATTEMPTS: u32 = 5;

#[derive(Args, Debug)]
pub struct ImageUploadArgs {
    /// What to upload into: `dv` (a DataVolume; `datavolume` works too).
    pub kind: String,
    /// The DataVolume's name.
    pub name: String,
    /// The image file (qcow2, raw, vmdk, vhd, vhdx, vdi; gz or xz compressed too).
    #[arg(long)]
    pub image_path: PathBuf,
    /// The volume's size when the DataVolume is created (default: the image's virtual size).
    #[arg(long)]
    pub size: Option<String>,
    /// The StorageClass of a created DataVolume (default: the cluster's default class).
    #[arg(long)]
    pub storage_class: Option<String>,
    /// The access mode of a created DataVolume (ReadWriteOnce, ReadWriteMany).
    #[arg(long)]
    pub access_mode: Option<String>,
    /// Use the existing DataVolume; fail if there is none.
    #[arg(long)]
    pub no_create: bool,
    /// `sha256:<hex>` (or sha1, sha512) of the image file: the upload fails if what arrived differs.
    #[arg(long)]
    pub checksum: Option<String>,
    /// Send at most this many bytes per second (`10Mi`); default: as fast as it goes.
    #[arg(long)]
    pub limit_rate: Option<String>,
    /// Give up waiting for the DataVolume after this many seconds.
    #[arg(long, alias = "wait-secs", default_value_t = 600)]
    pub timeout: u64,
    /// Accepted for virtctl's command lines; vmo trusts the kubeconfig's CA and needs no
    /// upload proxy, and its upload DataVolumes are bound at once anyway.
    #[arg(long, hide = true)]
    pub insecure: bool,
    #[arg(long, hide = true)]
    pub force_bind: bool,
}

/// A stretch of a local file to upload: a whole image, or a disk inside an OVA.
#[derive(Debug, Clone)]
pub struct ByteRange {
    pub path: PathBuf,
    pub start: u64,
    pub len: u64,
    /// How it is named in messages.
    pub label: String,
    /// `sha256:<hex>` (or sha1, sha512) of the range, checked by the server's import.
    pub checksum: Option<String>,
}

pub fn dv_kind() -> vmo_api::KindInfo {
    *Registry::builtin()
        .resolve("datavolumes")
        .expect("registered")
}

fn upload_path(ns: &str, name: &str) -> String {
    format!("/apis/cdi.kubevirt.io/v1beta1/namespaces/{ns}/datavolumes/{name}/upload")
}

/// Parses a size like `10Gi` into bytes.
pub fn bytes_of(text: &str) -> anyhow::Result<u64> {
    let q = Quantity::parse(text).map_err(|e| anyhow!("invalid size {text:?}: {e}"))?;
    q.value_ceil()
        .filter(|v| *v > 0)
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| anyhow!("invalid size {text:?}: must be more than 0 bytes"))
}

/// The virtual size an image file says it has (qcow2 and sparse vmdk headers), else its length.
fn image_virtual_size(path: &Path, len: u64) -> u64 {
    use std::io::Read;
    let mut head = [0u8; 32];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head));
    if read.is_ok() {
        if &head[..4] == b"QFI\xfb" {
            return u64::from_be_bytes(head[24..32].try_into().expect("8 bytes"));
        }
        if &head[..4] == b"KDMV" {
            return u64::from_le_bytes(head[12..20].try_into().expect("8 bytes")) * 512;
        }
    }
    len
}

/// Rounds up to whole MiB.
fn round_mib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20) * (1 << 20)
}

/// An upload DataVolume's manifest.
pub fn upload_data_volume(
    name: &str,
    ns: &str,
    size: u64,
    storage_class: Option<&str>,
    access_mode: Option<&str>,
) -> Value {
    let mut storage =
        json!({"resources": {"requests": {"storage": format!("{}Mi", round_mib(size) >> 20)}}});
    if let Some(c) = storage_class {
        storage["storageClassName"] = json!(c);
    }
    if let Some(m) = access_mode {
        storage["accessModes"] = json!([m]);
    }
    json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
           "metadata": {"name": name, "namespace": ns, "annotations": {IMMEDIATE: "true"}},
           "spec": {"source": {"upload": {}}, "storage": storage}})
}

/// `vmo image-upload`.
pub async fn run(ctx: &Context, args: ImageUploadArgs) -> anyhow::Result<()> {
    if !matches!(args.kind.as_str(), "dv" | "datavolume" | "datavolumes") {
        bail!(
            "image-upload uploads into a DataVolume: `vmo image-upload dv NAME --image-path FILE` (got {:?})",
            args.kind
        );
    }
    let client = ctx.client()?;
    let ns = ctx.namespace(&client);
    let name = &args.name;
    let len = std::fs::metadata(&args.image_path)
        .with_context(|| format!("reading {}", args.image_path.display()))?
        .len();
    if len == 0 {
        bail!("{} is empty", args.image_path.display());
    }
    let kind = dv_kind();
    match client.get(&kind, &ns, name).await {
        Ok(_) => {}
        Err(e) if e.is_not_found() && !args.no_create => {
            let size = match &args.size {
                Some(s) => bytes_of(s)?,
                None => image_virtual_size(&args.image_path, len),
            };
            let dv = upload_data_volume(
                name,
                &ns,
                size,
                args.storage_class.as_deref(),
                args.access_mode.as_deref(),
            );
            client.create(&kind, &ns, &dv).await?;
            eprintln!("DataVolume {ns}/{name} created");
        }
        Err(e) if e.is_not_found() => {
            bail!("DataVolume {ns}/{name} not found (--no-create uses an existing one)")
        }
        Err(e) => return Err(e.into()),
    }
    let range = ByteRange {
        path: args.image_path.clone(),
        start: 0,
        len,
        label: args.image_path.display().to_string(),
        checksum: args.checksum.clone(),
    };
    let rate = args.limit_rate.as_deref().map(bytes_of).transpose()?;
    let timeout = Duration::from_secs(args.timeout);
    upload_range(&client, &ns, name, &range, rate, timeout).await?;
    wait_succeeded(&client, &ns, name, timeout).await?;
    eprintln!("DataVolume {ns}/{name} Succeeded: the image is in and its volume bound");
    Ok(())
}

/// The server's state of an upload: `(phase, received, message)`.
async fn state(client: &Client, ns: &str, name: &str) -> anyhow::Result<(String, u64, String)> {
    let v = client.get_json(&upload_path(ns, name)).await?;
    Ok((
        v["phase"].as_str().unwrap_or("").to_string(),
        v["received"].as_u64().unwrap_or(0),
        v["message"].as_str().unwrap_or("").to_string(),
    ))
}

/// Waits until the DataVolume takes uploads; returns how much it has, or `None` when it is
/// complete already.
async fn wait_ready(
    client: &Client,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<Option<u64>> {
    let deadline = Instant::now() + timeout;
    let mut said = false;
    loop {
        let (phase, received, message) = state(client, ns, name).await?;
        match phase.as_str() {
            "UploadReady" => return Ok(Some(received)),
            "Succeeded" | "Complete" => return Ok(None),
            "Failed" => bail!("DataVolume {ns}/{name} failed: {message}"),
            _ => {}
        }
        if !said {
            eprintln!("Waiting for DataVolume {ns}/{name} to be UploadReady (now {phase})");
            said = true;
        }
        if Instant::now() > deadline {
            bail!(
                "DataVolume {ns}/{name} is still {phase} after {}s",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits for the DataVolume to be Succeeded (its claim bound).
pub async fn wait_succeeded(
    client: &Client,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<Object> {
    let deadline = Instant::now() + timeout;
    loop {
        let dv = client.get(&dv_kind(), ns, name).await?;
        match dv.status()["phase"].as_str().unwrap_or("") {
            "Succeeded" => return Ok(dv),
            "Failed" => {
                let why = dv.status()["conditions"]
                    .as_array()
                    .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                    .and_then(|c| c["message"].as_str())
                    .unwrap_or("")
                    .to_string();
                bail!("DataVolume {ns}/{name} failed: {why}");
            }
            _ => {}
        }
        if Instant::now() > deadline {
            bail!(
                "DataVolume {ns}/{name} did not succeed within {}s",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Uploads `range` into the upload DataVolume `ns/name` (which must exist), resuming where the
/// server's session is and after dropped connections.
pub async fn upload_range(
    client: &Client,
    ns: &str,
    name: &str,
    range: &ByteRange,
    rate: Option<u64>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let Some(mut offset) = wait_ready(client, ns, name, timeout).await? else {
        eprintln!("DataVolume {ns}/{name} has its image already");
        return Ok(());
    };
    let size = range.len;
    if offset > 0 {
        eprintln!(
            "Resuming the upload of {} at byte {offset} of {size} (the server has that much)",
            range.label
        );
    } else {
        eprintln!(
            "Uploading {} ({size} bytes) into DataVolume {ns}/{name}",
            range.label
        );
    }
    let sent = Arc::new(AtomicU64::new(offset));
    let bar = Progress::start(sent.clone(), size);
    let mut failures = 0;
    let result = loop {
        sent.store(offset, Ordering::SeqCst);
        let outcome = send_once(client, ns, name, range, offset, rate, sent.clone()).await;
        match outcome {
            Ok(answer) if answer["phase"] == "Complete" => break Ok(()),
            Ok(answer) => {
                // The body ended before the end (the connection was cut in a way the server saw
                // as a short body): go on from what it has.
                offset = answer["received"].as_u64().unwrap_or(offset);
                failures += 1;
            }
            Err(e) => {
                let retry = match e.downcast_ref::<ClientError>() {
                    Some(ClientError::Api(s)) => {
                        s.code == 503
                            || (s.code == 409
                                && ["expected offset", "try again", "took over"]
                                    .iter()
                                    .any(|w| s.message.contains(w)))
                    }
                    Some(_) => true,
                    None => e.downcast_ref::<std::io::Error>().is_none(),
                };
                failures += 1;
                if !retry || failures >= ATTEMPTS {
                    break Err(e);
                }
                bar.note(&format!(
                    "the upload was interrupted ({}); resuming",
                    one_line(&e)
                ));
                tokio::time::sleep(Duration::from_secs(failures as u64)).await;
                match wait_ready(client, ns, name, timeout).await {
                    Ok(Some(received)) => offset = received,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
                bar.note(&format!("resuming at byte {offset} of {size}"));
            }
        }
        if failures >= ATTEMPTS {
            break Err(anyhow!(
                "the upload did not complete after {ATTEMPTS} attempts"
            ));
        }
    };
    bar.finish(result.is_ok());
    result
}

fn one_line(e: &anyhow::Error) -> String {
    let mut s = e.to_string();
    for cause in e.chain().skip(1) {
        s.push_str(": ");
        s.push_str(&cause.to_string());
    }
    s
}

/// One PUT of the range from `offset` to its end.
async fn send_once(
    client: &Client,
    ns: &str,
    name: &str,
    range: &ByteRange,
    offset: u64,
    rate: Option<u64>,
    sent: Arc<AtomicU64>,
) -> anyhow::Result<Value> {
    let mut file = tokio::fs::File::open(&range.path)
        .await
        .with_context(|| format!("opening {}", range.path.display()))?;
    file.seek(std::io::SeekFrom::Start(range.start + offset))
        .await
        .with_context(|| format!("reading {}", range.path.display()))?;
    let remaining = range.len - offset;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    let reader = tokio::spawn(async move {
        let mut file = file.take(remaining);
        let started = Instant::now();
        let mut done = 0u64;
        loop {
            let mut buf = vec![0u8; 256 << 10];
            let n = match file.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            buf.truncate(n);
            if tx.send(Ok(Frame::data(Bytes::from(buf)))).await.is_err() {
                return;
            }
            done += n as u64;
            sent.fetch_add(n as u64, Ordering::SeqCst);
            if let Some(rate) = rate {
                let due = Duration::from_secs_f64(done as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let body = http_body_util::StreamBody::new(stream);
    let mut headers = vec![
        ("x-upload-offset", offset.to_string()),
        ("x-upload-size", range.len.to_string()),
        ("content-length", remaining.to_string()),
        ("content-type", "application/octet-stream".to_string()),
    ];
    if let Some(checksum) = &range.checksum {
        headers.push(("x-upload-checksum", checksum.clone()));
    }
    let response = client
        .send_streaming(Method::PUT, &upload_path(ns, name), &headers, body)
        .await;
    reader.abort();
    Ok(Client::decode_response(response?).await?)
}

/// The progress bar on stderr: redrawn in place on a terminal, a plain line every few seconds
/// otherwise.
struct Progress {
    task: tokio::task::JoinHandle<()>,
    sent: Arc<AtomicU64>,
    size: u64,
    started: Instant,
    first: u64,
    tty: bool,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

impl Progress {
    fn start(sent: Arc<AtomicU64>, size: u64) -> Self {
        let tty = std::io::stderr().is_terminal();
        let first = sent.load(Ordering::SeqCst);
        let started = Instant::now();
        let (s, every) = (
            sent.clone(),
            Duration::from_millis(if tty { 250 } else { 2000 }),
        );
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                eprint!(
                    "{}",
                    Self::line(s.load(Ordering::SeqCst), size, first, started, tty)
                );
            }
        });
        Self {
            task,
            sent,
            size,
            started,
            first,
            tty,
        }
    }

    fn line(now: u64, size: u64, first: u64, started: Instant, tty: bool) -> String {
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let speed = mib(now.saturating_sub(first)) / secs;
        let percent = if size == 0 {
            100.0
        } else {
            now as f64 * 100.0 / size as f64
        };
        let width = 30usize;
        let filled = ((percent / 100.0) * width as f64) as usize;
        let bar: String = (0..width)
            .map(|i| if i < filled { '#' } else { '.' })
            .collect();
        let text = format!(
            "[{bar}] {:.1}/{:.1} MiB {percent:5.1}% {speed:.1} MiB/s",
            mib(now),
            mib(size)
        );
        if tty {
            format!("\r{text}\x1b[K")
        } else {
            format!("{text}\n")
        }
    }

    fn note(&self, text: &str) {
        if self.tty {
            eprintln!("\r{text}\x1b[K");
        } else {
            eprintln!("{text}");
        }
    }

    fn finish(self, ok: bool) {
        self.task.abort();
        let now = self.sent.load(Ordering::SeqCst);
        eprint!(
            "{}",
            Self::line(now, self.size, self.first, self.started, self.tty)
        );
        if self.tty {
            eprintln!();
        }
        if ok {
            eprintln!("Upload complete; the image is being checked and stored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_manifests() {
        assert_eq!(bytes_of("10Gi").unwrap(), 10 << 30);
        assert!(bytes_of("0").is_err());
        let dv = upload_data_volume("d", "ns", (64 << 20) + 1, Some("shared"), None);
        assert_eq!(
            dv["spec"]["storage"]["resources"]["requests"]["storage"],
            "65Mi"
        );
        assert_eq!(dv["spec"]["storage"]["storageClassName"], "shared");
        assert_eq!(dv["spec"]["source"], json!({"upload": {}}));
    }
}
