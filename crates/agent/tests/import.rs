//! The import pipeline against real qemu-img and gzip/xz, with an HTTP(S) server
//! started by each test (hyper on 127.0.0.1, optional byte ranges, basic auth, a connection that
//! drops or stalls mid-body): every input format and compression lands in the volume with the
//! source's exact content and the claim's size, and each bad input fails with its own error and
//! leaves nothing in the pool directory.

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vmo_agent::storage::import::{
    self, HttpSource, ImportError, Imported, Method, Progress, Target, VolumeFormat,
};
use vmo_testkit::KeptDir;

const MIB: u64 = 1 << 20;
/// The source disk: 6 MiB, mostly zero, with data at a few offsets and in its last sector.
const DISK: u64 = 6 * MIB;
const CAPACITY: u64 = 16 * MIB;

// ---------------------------------------------------------------------------------------------
// Images

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u8 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 24) as u8
    }
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    (0..len).map(|_| rng.next()).collect()
}

/// The raw disk's bytes: 100 KiB of data at `k MiB + k * 4 KiB` for each MiB, a marker at the
/// start and in the last sector.
fn disk_bytes() -> Vec<u8> {
    let mut disk = vec![0u8; DISK as usize];
    for k in 0..(DISK / MIB) as usize {
        let at = k * MIB as usize + k * 4096;
        disk[at..at + 100 * 1024].copy_from_slice(&random_bytes(k as u64 + 1, 100 * 1024));
    }
    disk[..16].copy_from_slice(b"vmo import test!");
    let end = disk.len();
    disk[end - 512..end - 500].copy_from_slice(b"last sector!");
    disk
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Test images, made once per test in `dir/src`.
struct Images {
    dir: PathBuf,
    raw: PathBuf,
}

impl Images {
    fn new(root: &Path) -> Self {
        let dir = root.join("src");
        std::fs::create_dir_all(&dir).unwrap();
        let raw = dir.join("disk.raw");
        std::fs::write(&raw, disk_bytes()).unwrap();
        Self { dir, raw }
    }

    /// `qemu-img convert` of the raw disk to `format` with `-o options`.
    fn convert(&self, name: &str, format: &str, options: &[&str]) -> PathBuf {
        let out = self.dir.join(name);
        let mut cmd = Command::new("qemu-img");
        cmd.args(["convert", "-q", "-f", "raw", "-O", format]);
        for o in options {
            cmd.args(["-o", o]);
        }
        run(cmd.arg(&self.raw).arg(&out));
        out
    }

    /// `program -c file > file.ext`.
    fn compress(&self, file: &Path, program: &str, ext: &str) -> PathBuf {
        let out = PathBuf::from(format!("{}.{ext}", file.display()));
        let data = run(Command::new(program).arg("-c").arg(file)).stdout;
        std::fs::write(&out, data).unwrap();
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The HTTP server

#[derive(Clone, Default)]
struct Behaviour {
    /// Announce and honour `Range: bytes=N-`.
    ranges: bool,
    /// Require this user and password.
    auth: Option<(String, String)>,
    /// The first whole-file response sends this many bytes, then breaks the connection.
    drop_after: Option<usize>,
    /// Every response sends this many bytes, then nothing more (the connection stays open).
    stall_after: Option<usize>,
    /// Send no Content-Length: the body goes chunked.
    chunked: bool,
}

type Body = BoxBody<Bytes, std::io::Error>;

struct Server {
    base: String,
    /// The `Range` header of each request (None: none).
    ranges_seen: Arc<Mutex<Vec<Option<String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Serves the files of `dir` by name.
    async fn start(
        dir: &Path,
        behaviour: Behaviour,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        let mut files = HashMap::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            files.insert(name, Bytes::from(std::fs::read(entry.path()).unwrap()));
        }
        let files = Arc::new(files);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let ranges_seen = Arc::new(Mutex::new(Vec::new()));
        let seen = ranges_seen.clone();
        let dropped = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (files, behaviour, seen, dropped, tls) = (
                    files.clone(),
                    behaviour.clone(),
                    seen.clone(),
                    dropped.clone(),
                    tls.clone(),
                );
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let response = respond(req, &files, &behaviour, &seen, &dropped);
                        async move { Ok::<_, std::convert::Infallible>(response) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(config) => {
                            let Ok(stream) =
                                tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
                            else {
                                return;
                            };
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                        }
                    }
                });
            }
        });
        Self {
            base: format!("{scheme}://{addr}"),
            ranges_seen,
            task,
        }
    }

    fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }
}

fn full(status: StatusCode, text: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("www-authenticate", "Basic realm=\"test\"")
        .body(
            Full::new(Bytes::from_static(text.as_bytes()))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap()
}

/// `data`, in 64 KiB frames; after `cut` bytes either an error (the connection breaks, after a
/// moment so the bytes before it are on their way) or nothing more.
fn body(data: Bytes, cut: Option<usize>, then_fail: bool) -> Body {
    let frames: Vec<Bytes> = {
        let end = cut.unwrap_or(data.len()).min(data.len());
        (0..end)
            .step_by(64 << 10)
            .map(|at| data.slice(at..(at + (64 << 10)).min(end)))
            .collect()
    };
    let head = futures_util::stream::iter(frames.into_iter().map(|b| Ok(Frame::data(b))));
    match cut {
        None => BodyExt::boxed(StreamBody::new(head)),
        Some(_) if then_fail => {
            let fail = futures_util::stream::once(async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(std::io::Error::other("dropped by the test"))
            });
            BodyExt::boxed(StreamBody::new(head.chain(fail)))
        }
        Some(_) => BodyExt::boxed(StreamBody::new(head.chain(futures_util::stream::pending()))),
    }
}

fn respond(
    req: Request<Incoming>,
    files: &HashMap<String, Bytes>,
    b: &Behaviour,
    seen: &Mutex<Vec<Option<String>>>,
    dropped: &AtomicBool,
) -> Response<Body> {
    let range = req
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    seen.lock().unwrap().push(range.clone());
    if let Some((user, password)) = &b.auth {
        use base64::Engine;
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        if req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            != Some(&expected)
        {
            return full(StatusCode::UNAUTHORIZED, "who are you?");
        }
    }
    // `/r/NAME` redirects to `NAME`, relative to the request's path.
    if let Some(name) = req.uri().path().strip_prefix("/r/") {
        return Response::builder()
            .status(StatusCode::FOUND)
            .header("location", format!("../{name}"))
            .body(BodyExt::boxed(
                Full::new(Bytes::new()).map_err(|never| match never {}),
            ))
            .unwrap();
    }
    let Some(data) = files.get(req.uri().path().trim_start_matches('/')) else {
        return full(StatusCode::NOT_FOUND, "no such file");
    };
    let len = data.len();
    let start = range.filter(|_| b.ranges).and_then(|r| {
        r.strip_prefix("bytes=")?
            .strip_suffix('-')?
            .parse::<usize>()
            .ok()
    });
    let mut response = Response::builder();
    if b.ranges {
        response = response.header("accept-ranges", "bytes");
    }
    if let Some(start) = start {
        return response
            .status(StatusCode::PARTIAL_CONTENT)
            .header("content-length", len - start)
            .header("content-range", format!("bytes {start}-{}/{len}", len - 1))
            .body(body(data.slice(start..), b.stall_after, false))
            .unwrap();
    }
    let body = match (b.drop_after, b.stall_after) {
        (Some(n), _) if !dropped.swap(true, Ordering::SeqCst) => body(data.clone(), Some(n), true),
        (_, Some(n)) => body(data.clone(), Some(n), false),
        _ => body(data.clone(), None, false),
    };
    if !b.chunked {
        response = response.header("content-length", len);
    }
    response.status(StatusCode::OK).body(body).unwrap()
}

/// A CA, and a server configuration with a certificate it issued for 127.0.0.1 and localhost.
fn tls_pair() -> (Vec<u8>, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "import test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (ca.pem().into_bytes(), Arc::new(config))
}

// ---------------------------------------------------------------------------------------------
// Checks

struct Case {
    _root: KeptDir,
    images: Images,
    pool: PathBuf,
}

impl Case {
    fn new(name: &str) -> Self {
        let root = KeptDir::new(&format!("vmo-import-{name}-"));
        let images = Images::new(root.path());
        let pool = root.path().join("pool");
        std::fs::create_dir_all(&pool).unwrap();
        Self {
            _root: root,
            images,
            pool,
        }
    }

    fn target(&self, format: VolumeFormat) -> Target {
        Target {
            path: self.pool.join("disk"),
            format,
            capacity: CAPACITY,
        }
    }

    /// Nothing is left in the pool: no volume, no partial or scratch file, no socket.
    fn assert_pool_empty(&self) {
        let left: Vec<_> = std::fs::read_dir(&self.pool)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left in the pool: {left:?}");
    }

    /// The volume holds the source disk's bytes and is exactly the capacity.
    fn assert_volume(&self, target: &Target) {
        let fmt = target.format.as_str();
        let out = run(Command::new("qemu-img")
            .args(["info", "--output=json", "-f", fmt])
            .arg(&target.path));
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(info["virtual-size"], CAPACITY, "{info}");
        assert!(info["backing-filename"].is_null());
        if target.format == VolumeFormat::Qcow2 {
            // No error, no leak, no corruption in the image's tables.
            run(Command::new("qemu-img")
                .args(["check", "-q", "-f", "qcow2"])
                .arg(&target.path));
        }
        let compare = Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", fmt])
            .arg(&self.images.raw)
            .arg(&target.path)
            .output()
            .unwrap();
        assert!(
            compare.status.success(),
            "content differs: {}{}",
            String::from_utf8_lossy(&compare.stdout),
            String::from_utf8_lossy(&compare.stderr)
        );
        let left: Vec<_> = std::fs::read_dir(&self.pool)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec!["disk".to_string()], "only the volume remains");
    }
}

/// Progress reports collected.
fn recorder() -> (Progress, Arc<Mutex<Vec<f64>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    (Progress::new(move |p| s.lock().unwrap().push(p)), seen)
}

fn assert_progress(seen: &[f64]) {
    assert!(seen.len() >= 2, "some progress before the end: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "increasing: {seen:?}");
    assert_eq!(seen.last(), Some(&100.0));
    assert!(seen[..seen.len() - 1].iter().all(|p| *p < 100.0));
}

async fn import_file(case: &Case, file: &Path, format: VolumeFormat) -> Imported {
    let server = Server::start(&case.images.dir, Behaviour::default(), None).await;
    let name = file.file_name().unwrap().to_str().unwrap();
    let target = case.target(format);
    let (progress, seen) = recorder();
    let src = HttpSource {
        url: server.url(name),
        ..Default::default()
    };
    let imported = import::import_http(&src, &target, progress)
        .await
        .unwrap_or_else(|e| panic!("importing {name}: {e}"));
    case.assert_volume(&target);
    assert_progress(&seen.lock().unwrap());
    assert_eq!(imported.bytes_read, std::fs::metadata(file).unwrap().len());
    imported
}

async fn import_error(src: &HttpSource, case: &Case, format: VolumeFormat) -> ImportError {
    let target = case.target(format);
    let err = import::import_http(src, &target, Progress::none())
        .await
        .expect_err("the import must fail");
    eprintln!("{}: {err}", src.url);
    case.assert_pool_empty();
    err
}

// ---------------------------------------------------------------------------------------------
// Formats

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_streams_into_a_qcow2_volume() {
    let case = Case::new("raw-qcow2");
    let raw = case.images.raw.clone();
    let got = import_file(&case, &raw, VolumeFormat::Qcow2).await;
    assert_eq!(got.method, Method::Streamed);
    assert!(!got.scratch_used);
    assert_eq!(
        (got.source_format.as_str(), got.virtual_size),
        ("raw", DISK)
    );
    // Zero blocks are skipped: 6 chunks of 100 KiB data (2-3 clusters each) plus the ends.
    let out = run(Command::new("qemu-img")
        .args(["map", "--output=json", "-f", "qcow2"])
        .arg(case.pool.join("disk")));
    let map: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let data: u64 = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert!(data <= 2 * MIB, "{data} bytes allocated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_streams_into_a_raw_volume() {
    let case = Case::new("raw-raw");
    let raw = case.images.raw.clone();
    let got = import_file(&case, &raw, VolumeFormat::Raw).await;
    assert_eq!(got.method, Method::Streamed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qcow2_into_a_qcow2_volume_is_used_as_it_is() {
    let case = Case::new("qcow2");
    let img = case.images.convert("disk.qcow2", "qcow2", &[]);
    let got = import_file(&case, &img, VolumeFormat::Qcow2).await;
    assert_eq!((got.method, got.scratch_used), (Method::AsIs, false));
    assert_eq!(got.source_format, "qcow2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qcow2_with_compressed_clusters_and_into_raw_is_converted() {
    let case = Case::new("qcow2c");
    let compressed = case.images.dir.join("c.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-c", "-f", "raw", "-O", "qcow2"])
        .arg(&case.images.raw)
        .arg(&compressed));
    let got = import_file(&case, &compressed, VolumeFormat::Qcow2).await;
    assert_eq!((got.method, got.scratch_used), (Method::Converted, true));
    std::fs::remove_file(case.pool.join("disk")).unwrap();
    let got = import_file(&case, &compressed, VolumeFormat::Raw).await;
    assert_eq!(got.method, Method::Converted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmdk_vhdx_vdi_and_vhd_convert_through_scratch() {
    let case = Case::new("formats");
    let cases = [
        ("disk.vmdk", "vmdk", vec![], "vmdk"),
        ("so.vmdk", "vmdk", vec!["subformat=streamOptimized"], "vmdk"),
        ("disk.vhdx", "vhdx", vec![], "vhdx"),
        ("disk.vdi", "vdi", vec![], "vdi"),
        ("disk.vhd", "vpc", vec![], "vhd"),
    ];
    for (name, format, options, reported) in cases {
        let img = case.images.convert(name, format, &options);
        let got = import_file(&case, &img, VolumeFormat::Qcow2).await;
        assert_eq!(got.source_format, reported, "{name}");
        assert_eq!(
            (got.method, got.scratch_used),
            (Method::Converted, true),
            "{name}"
        );
        std::fs::remove_file(case.pool.join("disk")).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_vhd_streams_without_its_footer() {
    let case = Case::new("vhd-fixed");
    // qemu pads a fixed VHD to its CHS geometry; a disk of whole cylinders keeps sizes equal.
    let img = case
        .images
        .convert("fixed.vhd", "vpc", &["subformat=fixed", "force_size=on"]);
    let got = import_file(&case, &img, VolumeFormat::Qcow2).await;
    assert_eq!(got.method, Method::Streamed);
    assert_eq!(
        (got.source_format.as_str(), got.virtual_size),
        ("vhd", DISK)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_and_xz_decompress_while_streaming() {
    let case = Case::new("compressed");
    let raw = case.images.raw.clone();
    let gz = case.images.compress(&raw, "gzip", "gz");
    let got = import_file(&case, &gz, VolumeFormat::Qcow2).await;
    assert_eq!(got.compression.as_deref(), Some("gz"));
    assert_eq!(
        (got.source_format.as_str(), got.method),
        ("raw", Method::Streamed)
    );
    std::fs::remove_file(case.pool.join("disk")).unwrap();

    let qcow2 = case.images.convert("disk.qcow2", "qcow2", &[]);
    let xz = case.images.compress(&qcow2, "xz", "xz");
    let got = import_file(&case, &xz, VolumeFormat::Qcow2).await;
    assert_eq!(got.compression.as_deref(), Some("xz"));
    assert_eq!(
        (got.source_format.as_str(), got.method),
        ("qcow2", Method::AsIs)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_stream_imports_and_a_short_one_fails() {
    let case = Case::new("upload");
    let qcow2 = case.images.convert("disk.qcow2", "qcow2", &[]);
    let len = std::fs::metadata(&qcow2).unwrap().len();
    let target = case.target(VolumeFormat::Qcow2);
    let file = tokio::fs::File::open(&qcow2).await.unwrap();
    let got = import::import_stream(file, Some(len), &target, None, Progress::none())
        .await
        .unwrap();
    assert_eq!(got.bytes_read, len);
    case.assert_volume(&target);
    std::fs::remove_file(&target.path).unwrap();

    let data = std::fs::read(&qcow2).unwrap();
    let err = import::import_stream(
        &data[..len as usize / 2],
        Some(len),
        &target,
        None,
        Progress::none(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ImportError::Interrupted { .. }), "{err}");
    assert!(
        err.to_string().starts_with("the upload stopped after"),
        "{err}"
    );
    case.assert_pool_empty();
}

// ---------------------------------------------------------------------------------------------
// Sources

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_private_ca_and_basic_auth() {
    let case = Case::new("https");
    let (ca_pem, config) = tls_pair();
    let auth = ("importer".to_string(), "s3cret".to_string());
    let behaviour = Behaviour {
        auth: Some(auth.clone()),
        ..Default::default()
    };
    let server = Server::start(&case.images.dir, behaviour, Some(config)).await;
    let mut src = HttpSource {
        url: server.url("disk.raw"),
        ca_pem: Some(ca_pem),
        basic_auth: Some(auth),
        ..Default::default()
    };
    let target = case.target(VolumeFormat::Qcow2);
    import::import_http(&src, &target, Progress::none())
        .await
        .unwrap();
    case.assert_volume(&target);
    std::fs::remove_file(&target.path).unwrap();

    src.basic_auth = Some(("importer".into(), "wrong".into()));
    let err = import_error(&src, &case, VolumeFormat::Qcow2).await;
    assert!(
        matches!(err, ImportError::HttpStatus { status: 401, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("basic-auth"), "{err}");

    src.ca_pem = None;
    let err = import_error(&src, &case, VolumeFormat::Qcow2).await;
    assert!(matches!(err, ImportError::Tls { .. }), "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_without_a_length_imports() {
    let case = Case::new("chunked");
    let behaviour = Behaviour {
        chunked: true,
        ..Default::default()
    };
    let server = Server::start(&case.images.dir, behaviour, None).await;
    let src = HttpSource {
        url: server.url("disk.raw"),
        ..Default::default()
    };
    let target = case.target(VolumeFormat::Qcow2);
    let got = import::import_http(&src, &target, Progress::none())
        .await
        .unwrap();
    case.assert_volume(&target);
    assert_eq!(got.bytes_read, DISK);
}

/// A server that answers every connection with `response` and closes.
async fn answer_with(response: &'static [u8]) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/disk.raw", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut request = [0u8; 4096];
            let _ = tcp.read(&mut request).await;
            let _ = tcp.write_all(response).await;
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_responses_are_named() {
    let case = Case::new("invalid");
    let src = HttpSource {
        url: answer_with(b"SSH-2.0-OpenSSH_9.2\r\n").await,
        ..Default::default()
    };
    let err = import_error(&src, &case, VolumeFormat::Qcow2).await;
    assert!(matches!(err, ImportError::BadResponse { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(
        err.to_string().starts_with(&format!(
            "the server at {} sent an invalid HTTP response",
            src.url
        )),
        "{err}"
    );

    let src = HttpSource {
        url: answer_with(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nQFI\xfb\r\nzz\r\n",
        )
        .await,
        ..Default::default()
    };
    let err = import_error(&src, &case, VolumeFormat::Qcow2).await;
    assert!(
        matches!(err, ImportError::Interrupted { got: 4, .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("the server sent an invalid body (the chunk size \"zz\" is not valid)"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_names_status_and_url() {
    let case = Case::new("404");
    let server = Server::start(&case.images.dir, Behaviour::default(), None).await;
    let src = HttpSource {
        url: server.url("missing.qcow2"),
        ..Default::default()
    };
    let err = import_error(&src, &case, VolumeFormat::Qcow2).await;
    assert!(matches!(err, ImportError::HttpStatus { status: 404, .. }));
    assert!(!err.is_retryable());
    assert!(
        err.to_string()
            .starts_with(&format!("HTTP 404 Not Found from {}", src.url)),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_followed_and_an_empty_image_is_refused() {
    let case = Case::new("redirect");
    std::fs::write(case.images.dir.join("empty.img"), b"").unwrap();
    let server = Server::start(&case.images.dir, Behaviour::default(), None).await;
    let src = HttpSource {
        url: server.url("r/disk.raw"),
        ..Default::default()
    };
    let target = case.target(VolumeFormat::Raw);
    import::import_http(&src, &target, Progress::none())
        .await
        .unwrap();
    case.assert_volume(&target);
    std::fs::remove_file(&target.path).unwrap();

    let src = HttpSource {
        url: server.url("empty.img"),
        ..Default::default()
    };
    let err = import_error(&src, &case, VolumeFormat::Qcow2).await;
    assert!(err.to_string().contains("empty"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_port_is_reported_as_such() {
    let case = Case::new("unreachable");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let src = HttpSource {
        url: format!("http://127.0.0.1:{port}/disk.raw"),
        ..Default::default()
    };
    let err = import_error(&src, &case, VolumeFormat::Qcow2).await;
    assert!(matches!(err, ImportError::Unreachable { .. }), "{err}");
    assert!(err.is_retryable());
    let text = err.to_string();
    assert!(
        text.contains(&src.url) && text.contains("refused"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksums_are_verified() {
    let case = Case::new("checksum");
    let server = Server::start(&case.images.dir, Behaviour::default(), None).await;
    let sha256 = |path: &Path| {
        let out = run(Command::new("sha256sum").arg(path));
        String::from_utf8_lossy(&out.stdout)[..64].to_string()
    };
    let right = sha256(&case.images.raw);
    let mut src = HttpSource {
        url: server.url("disk.raw"),
        checksum: Some(format!("sha256:{right}")),
        ..Default::default()
    };
    let target = case.target(VolumeFormat::Qcow2);
    import::import_http(&src, &target, Progress::none())
        .await
        .unwrap();
    case.assert_volume(&target);
    std::fs::remove_file(&target.path).unwrap();

    let wrong = "0".repeat(64);
    src.checksum = Some(format!("sha256:{wrong}"));
    let err = import_error(&src, &case, VolumeFormat::Qcow2).await;
    assert!(matches!(err, ImportError::Checksum { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&wrong) && text.contains(&right), "{text}");

    src.checksum = Some("md5:abc".into());
    let err = import_error(&src, &case, VolumeFormat::Qcow2).await;
    assert!(matches!(err, ImportError::InvalidChecksum { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_resumes_with_range() {
    let case = Case::new("resume");
    let qcow2 = case.images.convert("disk.qcow2", "qcow2", &[]);
    let gz = case.images.compress(&case.images.raw, "gzip", "gz");
    for (file, method) in [
        (&case.images.raw, Method::Streamed),
        (&qcow2, Method::AsIs),
        (&gz, Method::Streamed),
    ] {
        let name = file.file_name().unwrap().to_str().unwrap();
        let len = std::fs::metadata(file).unwrap().len() as usize;
        let behaviour = Behaviour {
            ranges: true,
            drop_after: Some(len / 2),
            ..Default::default()
        };
        let server = Server::start(&case.images.dir, behaviour, None).await;
        let src = HttpSource {
            url: server.url(name),
            checksum: Some(format!(
                "sha256:{}",
                &String::from_utf8_lossy(&run(Command::new("sha256sum").arg(file)).stdout)[..64]
            )),
            ..Default::default()
        };
        let target = case.target(VolumeFormat::Qcow2);
        let (progress, seen) = recorder();
        let got = import::import_http(&src, &target, progress)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((got.method, got.bytes_read), (method, len as u64), "{name}");
        case.assert_volume(&target);
        assert_progress(&seen.lock().unwrap());
        let ranges = server.ranges_seen.lock().unwrap().clone();
        assert_eq!(
            ranges.len(),
            2,
            "{name}: one request, one resume: {ranges:?}"
        );
        let from: usize = ranges[1]
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
            .unwrap_or_else(|| panic!("{name}: resumed without Range: {ranges:?}"));
        assert!(from > 0 && from <= len / 2, "{name}: resumed from {from}");
        std::fs::remove_file(&target.path).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_download_without_ranges_fails_clearly() {
    let case = Case::new("truncated-download");
    let len = DISK as usize;
    let behaviour = Behaviour {
        drop_after: Some(len / 3),
        ..Default::default()
    };
    let server = Server::start(&case.images.dir, behaviour, None).await;
    let src = HttpSource {
        url: server.url("disk.raw"),
        ..Default::default()
    };
    let err = import_error(&src, &case, VolumeFormat::Qcow2).await;
    assert!(matches!(err, ImportError::Interrupted { .. }), "{err}");
    assert!(err.is_retryable());
    let text = err.to_string();
    assert!(
        text.contains(&format!("of {len} bytes")) && text.contains("byte ranges"),
        "{text}"
    );
}

/// The pids of the processes named `name` whose parent is `parent`.
fn children_named(parent: u32, name: &str) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-P", &parent.to_string(), "-x", name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// True while `pid` runs (a zombie no longer does).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|s| !s.trim_start().starts_with('Z'))
    })
}

/// Waits up to 10 s for `pids` to end.
fn assert_ended(pids: &[u32], what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| alive(*p)) {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A case serving `disk.raw.gz`, whose body stalls halfway.
async fn stalled_gzip(name: &str) -> (Case, Server) {
    let case = Case::new(name);
    let raw = case.images.raw.clone();
    case.images.compress(&raw, "gzip", "gz");
    let behaviour = Behaviour {
        stall_after: Some(
            std::fs::metadata(case.images.dir.join("disk.raw.gz"))
                .unwrap()
                .len() as usize
                / 2,
        ),
        ..Default::default()
    };
    let server = Server::start(&case.images.dir, behaviour, None).await;
    (case, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_import_leaves_no_file_and_no_process() {
    let (case, server) = stalled_gzip("cancel").await;
    let src = HttpSource {
        url: server.url("disk.raw.gz"),
        ..Default::default()
    };
    let target = case.target(VolumeFormat::Qcow2);
    let partial = case.pool.join("disk.partial");
    let mut import = Box::pin(import::import_http(&src, &target, Progress::none()));
    // Wait until the decompressor runs and the volume is being written, then drop the import.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let decompressors = loop {
        tokio::select! {
            r = &mut import => panic!("the import ended: {r:?}"),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        let running = children_named(std::process::id(), "gzip");
        if partial.exists() && !running.is_empty() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            break running;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the import never got going"
        );
    };
    drop(import);
    case.assert_pool_empty();
    assert_ended(&decompressors, "the decompressor outlived the import");
}

/// The importer half of [`a_killed_importer_leaves_no_process`]: that test runs itself again in a
/// child process with these variables set, and kills the child mid-import.
async fn import_until_killed(url: String, path: String) {
    let target = Target {
        path: path.into(),
        format: VolumeFormat::Qcow2,
        capacity: CAPACITY,
    };
    let src = HttpSource {
        url,
        ..Default::default()
    };
    let _ = import::import_http(&src, &target, Progress::none()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_importer_leaves_no_process() {
    if let (Ok(url), Ok(path)) = (
        std::env::var("VMO_IMPORT_HELPER_URL"),
        std::env::var("VMO_IMPORT_HELPER_TARGET"),
    ) {
        return import_until_killed(url, path).await;
    }
    let (case, server) = stalled_gzip("killed").await;
    let target = case.target(VolumeFormat::Qcow2);
    let mut importer = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_killed_importer_leaves_no_process",
            "--nocapture",
        ])
        .env("VMO_IMPORT_HELPER_URL", server.url("disk.raw.gz"))
        .env("VMO_IMPORT_HELPER_TARGET", &target.path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let partial = case.pool.join("disk.partial");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let decompressors = loop {
        let running = children_named(importer.id(), "gzip");
        if partial.exists() && !running.is_empty() {
            break running;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the import never got going"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    importer.kill().unwrap();
    importer.wait().unwrap();
    assert_ended(
        &decompressors,
        "the decompressor outlived the killed importer",
    );
    // The next import of the same volume clears what the killed one left, and succeeds.
    assert!(partial.exists(), "a killed importer cannot clean up");
    let healthy = Server::start(&case.images.dir, Behaviour::default(), None).await;
    let src = HttpSource {
        url: healthy.url("disk.raw.gz"),
        ..Default::default()
    };
    import::import_http(&src, &target, Progress::none())
        .await
        .unwrap();
    case.assert_volume(&target);
    assert!(!partial.exists());
}

// ---------------------------------------------------------------------------------------------
// Bad images

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_qcow2_is_corrupt() {
    let case = Case::new("truncated-qcow2");
    let qcow2 = case.images.convert("disk.qcow2", "qcow2", &[]);
    let data = std::fs::read(&qcow2).unwrap();
    std::fs::write(case.images.dir.join("cut.qcow2"), &data[..data.len() / 2]).unwrap();
    let server = Server::start(&case.images.dir, Behaviour::default(), None).await;
    for format in [VolumeFormat::Qcow2, VolumeFormat::Raw] {
        let src = HttpSource {
            url: server.url("cut.qcow2"),
            ..Default::default()
        };
        let err = import_error(&src, &case, format).await;
        assert!(matches!(err, ImportError::Corrupt { .. }), "{err}");
        assert!(
            err.to_string().starts_with("the qcow2 image is corrupt"),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_larger_than_the_capacity_is_refused() {
    let case = Case::new("too-large");
    // A qcow2 of 64 MiB virtual size: refused from its header, before the download.
    let big = case.images.dir.join("big.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&big)
        .arg("64M"));
    // Raw bigger than the capacity, plain (known length) and gzipped (unknown length).
    std::fs::write(
        case.images.dir.join("big.raw"),
        random_bytes(7, 20 * MIB as usize),
    )
    .unwrap();
    case.images
        .compress(&case.images.dir.join("big.raw"), "gzip", "gz");
    let vhdx = case.images.dir.join("big.vhdx");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "vhdx"])
        .arg(&vhdx)
        .arg("64M"));
    let server = Server::start(&case.images.dir, Behaviour::default(), None).await;
    for (name, exact) in [
        ("big.qcow2", true),
        ("big.raw", true),
        ("big.raw.gz", false),
        ("big.vhdx", true),
    ] {
        let src = HttpSource {
            url: server.url(name),
            ..Default::default()
        };
        let err = import_error(&src, &case, VolumeFormat::Qcow2).await;
        let ImportError::TooLarge {
            virtual_size,
            capacity,
            exact: got_exact,
        } = err
        else {
            panic!("{name}: {err}");
        };
        assert_eq!((capacity, got_exact), (CAPACITY, exact), "{name}");
        assert!(virtual_size > CAPACITY, "{name}");
        if name != "big.raw.gz" {
            let expected = if name.ends_with("raw") {
                20 * MIB
            } else {
                64 * MIB
            };
            assert_eq!(virtual_size, expected, "{name}");
        }
        assert!(err.to_string().contains("16.0 MiB"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmdk_descriptors_and_backing_files_are_refused() {
    let case = Case::new("unsupported");
    run(Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=monolithicFlat",
        ])
        .arg(case.images.dir.join("flat.vmdk"))
        .arg("1M"));
    let base = case.images.convert("base.qcow2", "qcow2", &[]);
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(case.images.dir.join("overlay.qcow2")));
    let server = Server::start(&case.images.dir, Behaviour::default(), None).await;
    for (name, says) in [
        ("flat.vmdk", "descriptor"),
        ("overlay.qcow2", "backing file"),
    ] {
        let src = HttpSource {
            url: server.url(name),
            ..Default::default()
        };
        let err = import_error(&src, &case, VolumeFormat::Qcow2).await;
        assert!(matches!(err, ImportError::Unsupported(_)), "{name}: {err}");
        assert!(err.to_string().contains(says), "{name}: {err}");
    }
}

/// A small file system, mounted for the test (skipped where mounting is not allowed).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Self> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // A child just killed may hold a file there for a moment.
        for _ in 0..50 {
            if Command::new("umount")
                .arg(&self.0)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_is_reported_as_no_space() {
    let case = Case::new("nospace");
    let Some(_mount) = Tmpfs::mount(&case.pool, "3m") else {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    };
    std::fs::write(
        case.images.dir.join("full.raw"),
        random_bytes(9, 8 * MIB as usize),
    )
    .unwrap();
    let full = case.images.dir.join("full.raw");
    case.images.compress(&full, "gzip", "gz");
    let vdi = case.images.dir.join("full.vdi");
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "vdi"])
        .arg(&full)
        .arg(&vdi));
    let server = Server::start(&case.images.dir, Behaviour::default(), None).await;
    for (name, format) in [
        ("full.raw", VolumeFormat::Qcow2),
        ("full.raw", VolumeFormat::Raw),
        ("full.raw.gz", VolumeFormat::Qcow2),
        ("full.vdi", VolumeFormat::Qcow2),
    ] {
        let src = HttpSource {
            url: server.url(name),
            ..Default::default()
        };
        let err = import_error(&src, &case, format).await;
        assert!(
            matches!(err, ImportError::NoSpace { .. }),
            "{name} into {format:?}: {err}"
        );
        assert!(
            err.to_string().contains("no space left on the pool"),
            "{err}"
        );
    }
}
