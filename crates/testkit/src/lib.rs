//! Test harness: an in-process API server over a real store on a temp dir (`TestServer`), and a real
//! `vmo up` process (`VmoProcess`). Every wait is bounded; a failing test keeps its temp dir and logs
//! and prints where they are.

pub mod cluster;
pub mod files;
pub mod netns;
pub mod objects;
pub use cluster::{AgentProcess, Cluster};
pub use files::FileServer;
pub use netns::HostNetwork;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmo_api::{KindInfo, Registry};
use vmo_apiserver::{ApiServer, Authenticator, Pki, ServerSettings};
use vmo_client::{Client, Credentials};
use vmo_store::{RedbStore, Store};

/// Polls `check` until it returns `Some`, or fails after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A temp dir kept (and announced) when the test panics.
#[derive(Debug)]
pub struct KeptDir {
    dir: Option<tempfile::TempDir>,
}

impl KeptDir {
    pub fn new(prefix: &str) -> Self {
        Self {
            dir: Some(
                tempfile::Builder::new()
                    .prefix(prefix)
                    .tempdir()
                    .expect("temp dir"),
            ),
        }
    }
    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("dir present").path()
    }
}

impl Drop for KeptDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let path = dir.keep();
                eprintln!("test failed: kept {} for inspection", path.display());
            }
        }
    }
}

/// Settings tests use: quick bookmarks.
pub fn test_settings() -> ServerSettings {
    ServerSettings {
        bookmark_interval: Duration::from_millis(200),
        ..ServerSettings::default()
    }
}

/// An API server in this process, on a loopback port, over a redb store in a temp dir.
pub struct TestServer {
    pub client: Client,
    pub store: Arc<dyn Store>,
    pub server: Arc<ApiServer>,
    pub url: String,
    pub token: String,
    pub ca_pem: Vec<u8>,
    pub registry: Registry,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    controllers: Vec<tokio::task::JoinHandle<()>>,
    pub dir: KeptDir,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl TestServer {
    /// Starts a server without controllers.
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// Starts a server with the controllers (garbage collector, namespaces) running.
    pub async fn start_with_controllers() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(controllers: bool) -> Self {
        let dir = KeptDir::new("vmo-test-");
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(&dir.path().join("store.redb")).expect("store"));
        let pki = Pki::load_or_create(dir.path(), &["127.0.0.1".into(), "localhost".into()])
            .expect("pki");
        let token = "test-token-0123456789".to_string();
        let auth = Authenticator::new(vec![(token.clone(), "admin".into())]);
        let settings = ServerSettings {
            agent_proxy: Some(pki.proxy_identity().expect("proxy identity")),
            ..test_settings()
        };
        let server = ApiServer::new(store.clone(), auth, settings);
        server.bootstrap().await.expect("bootstrap");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("https://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            server
                .clone()
                .serve(listener, pki.server_config().expect("tls"), async {
                    let _ = stopped.await;
                }),
        );
        let ca_pem = std::fs::read(&pki.ca_cert).expect("ca");
        let client = Client::new(Credentials {
            server: url.clone(),
            ca_pem: Some(ca_pem.clone()),
            token: token.clone(),
            namespace: None,
        })
        .expect("client");
        let controllers = if controllers {
            vmo_controllers::start_all(client.clone(), Default::default())
        } else {
            Vec::new()
        };
        Self {
            client,
            store,
            server,
            url,
            token,
            ca_pem,
            registry: Registry::builtin(),
            stop: Some(stop),
            controllers,
            dir,
        }
    }

    /// A client with another token.
    pub fn client_with_token(&self, token: &str) -> Client {
        Client::new(Credentials {
            server: self.url.clone(),
            ca_pem: Some(self.ca_pem.clone()),
            token: token.into(),
            namespace: None,
        })
        .expect("client")
    }

    /// A kind by any of its names.
    pub fn kind(&self, name: &str) -> KindInfo {
        *self
            .registry
            .resolve(name)
            .unwrap_or_else(|| panic!("kind {name}"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for c in &self.controllers {
            c.abort();
        }
    }
}

/// A real `vmo up` process on a loopback port (or on another address, `start_listening`).
#[derive(Debug)]
pub struct VmoProcess {
    child: Option<Child>,
    pub binary: PathBuf,
    pub data_dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub log: PathBuf,
}

impl VmoProcess {
    /// Starts `binary up --data-dir DIR --listen 127.0.0.1:0` and waits until it answers.
    pub async fn start(binary: &Path, data_dir: &Path) -> Self {
        Self::start_with_args(binary, data_dir, &[]).await
    }

    /// Like `start`, with extra arguments for `vmo up`.
    pub async fn start_with_args(binary: &Path, data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_listening(binary, data_dir, "127.0.0.1:0", extra).await
    }

    /// Like `start_with_args`, serving the API on `listen` (`ADDRESS:0`: a free port there); the
    /// kubeconfig names that address.
    pub async fn start_listening(
        binary: &Path,
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
    ) -> Self {
        let log = data_dir.with_extension(format!("log.{}", std::process::id()));
        let kubeconfig = data_dir.join("kubeconfig");
        let _ = std::fs::remove_file(&kubeconfig);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        // Tests share the host's network namespace: VMs' default network is QEMU's user-mode
        // NAT unless a test asks otherwise (a node bridge per test would fight over the pod CIDR).
        let pod_network: &[&str] = if extra.contains(&"--pod-network") {
            &[]
        } else {
            &["--pod-network", "user"]
        };
        let child = Command::new(binary)
            .args(["up", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .args(pod_network)
            .env("VMO_LOG", "info")
            .stdout(Stdio::from(out.try_clone().expect("log")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("spawn vmo up");
        let mut process = Self {
            child: Some(child),
            binary: binary.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            kubeconfig,
            log,
        };
        process.wait_ready().await;
        process
    }

    async fn wait_ready(&mut self) {
        let kubeconfig = self.kubeconfig.clone();
        let log = self.log.clone();
        let child = self.child.as_mut().expect("child");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "vmo up exited early ({status}); log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if kubeconfig.exists() {
                if let Ok(client) = Client::from_kubeconfig(&kubeconfig) {
                    if client.get_json("/api/v1/namespaces/default").await.is_ok() {
                        return;
                    }
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "vmo up did not become ready in 30 s; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client for it.
    pub fn client(&self) -> Client {
        Client::from_kubeconfig(&self.kubeconfig).expect("client")
    }

    /// Waits (up to 30 s) until `vmo get events` lists an event with `reason`: events are written
    /// in the background, just after what they report.
    pub async fn wait_for_event(&self, reason: &str) {
        wait_for(
            &format!("the {reason} event"),
            Duration::from_secs(30),
            || async {
                let (_, events, _) = self.cli(&["get", "events"]);
                events.contains(reason).then_some(())
            },
        )
        .await;
    }

    /// Runs `vmo ARGS` against it; returns (exit success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        self.cli_with_input(args, None)
    }

    /// Runs `vmo ARGS` with standard input.
    pub fn cli_with_input(&self, args: &[&str], input: Option<&str>) -> (bool, String, String) {
        run_with_input(&self.binary, &self.kubeconfig, args, input)
    }

    /// Starts `vmo ARGS` against it with piped standard streams, for interactive verbs
    /// (`vmo console`, `vmo vnc`).
    pub fn spawn_cli(&self, args: &[&str]) -> Child {
        Command::new(&self.binary)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmo")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends a signal and waits for the exit; returns whether it exited successfully.
    pub fn signal_and_wait(&mut self, signal: &str) -> bool {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("vmo up did not exit within 20 s of SIG{signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for VmoProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The guests its agent started (they outlive `vmo up` by design).
        cluster::kill_qemus_under(&self.data_dir);
        if std::thread::panicking() {
            eprintln!("vmo up log kept at {}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Runs a command with `KUBECONFIG` set; returns (exit success, stdout, stderr).
pub fn run_with_input(
    program: &Path,
    kubeconfig: &Path,
    args: &[&str],
    input: Option<&str>,
) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    if let Some(text) = input {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A minimal valid VirtualMachine manifest (JSON) named `name`.
pub fn vm_manifest(name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "labels": {"app": "test"}},
        "spec": {
            "runStrategy": "Halted",
            "template": {"spec": {
                "domain": {
                    "cpu": {"cores": 1},
                    "memory": {"guest": "128Mi"},
                    "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}
                },
                "volumes": [{"name": "root", "emptyDisk": {"capacity": "1Gi"}}]
            }}
        }
    })
}

/// The test guest's directory (`VMO_TEST_GUEST`, else built by `scripts/guest/build.sh`), or `None`
/// with the reason printed when this machine cannot run guests. With `VMO_REQUIRE_QEMU` set (the
/// test script sets it) a missing QEMU or guest fails the test instead.
pub fn test_guest() -> Option<PathBuf> {
    let required = std::env::var_os("VMO_REQUIRE_QEMU").is_some();
    let skip = |why: String| {
        if required {
            panic!("VMO_REQUIRE_QEMU is set but {why}");
        }
        eprintln!("SKIPPED: {why}");
        None
    };
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        return skip(
            "qemu-system-x86_64 is not installed (scripts/install-qemu.sh installs it)".into(),
        );
    }
    if let Some(dir) = std::env::var_os("VMO_TEST_GUEST") {
        return Some(PathBuf::from(dir));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/guest/build.sh");
    let out = match Command::new("bash").arg(&script).output() {
        Ok(o) => o,
        Err(e) => return skip(format!("cannot run {}: {e}", script.display())),
    };
    if !out.status.success() {
        return skip(format!(
            "the test guest did not build: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let dir = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_string();
    Some(PathBuf::from(dir))
}

/// Collects a child's output stream on a thread, so a test can wait for text in it.
pub fn collect_output(
    stream: impl std::io::Read + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<String>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut stream = stream;
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut stream, &mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    seen
}

/// Reads a VM's serial console (a unix socket QEMU serves) until `marker`; returns what was read.
pub async fn console_until(socket: &Path, marker: &str, deadline: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let start = Instant::now();
    let mut stream = loop {
        match tokio::net::UnixStream::connect(socket).await {
            Ok(s) => break s,
            Err(_) if start.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("serial socket {}: {e}", socket.display()),
        }
    };
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains(marker) {
        let left = deadline.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) => panic!("console closed before {marker:?}; saw:\n{seen}"),
            Ok(Ok(n)) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Ok(Err(e)) => panic!("console read: {e}"),
            Err(_) => panic!("no {marker:?} within {deadline:?}; saw:\n{seen}"),
        }
    }
    seen
}

/// Waits until the agent's console log (`serial.log` in a VM's run directory) shows `marker`;
/// returns the log. Panics with what it saw after `deadline`.
pub async fn console_log_until(log: &Path, marker: &str, deadline: Duration) -> String {
    let start = Instant::now();
    loop {
        let seen = std::fs::read(log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if seen.contains(marker) {
            return seen;
        }
        if start.elapsed() > deadline {
            panic!(
                "no {marker:?} in {} within {deadline:?}; saw:\n{seen}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `p` quantile (0..=1) of sorted durations, nearest rank; zero for none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A process's resident memory in KiB, from `/proc/PID/status` (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// True while process `pid` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// The test guest's kernel for `-kernel`: the uncompressed `vmlinux` when the build made one (it
/// skips about 5 s of in-guest decompression under TCG), else `vmlinuz`.
pub fn guest_kernel(guest: &Path) -> PathBuf {
    let vmlinux = guest.join("vmlinux");
    if vmlinux.exists() {
        vmlinux
    } else {
        guest.join("vmlinuz")
    }
}
