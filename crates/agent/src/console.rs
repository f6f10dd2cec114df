//! The serial console relay. QEMU's serial socket takes one client at a time, so the agent holds that
//! connection for the VM's whole life: it appends the guest's output to `serial.log` in the run
//! directory (the console log an administrator reads after the fact, rotated at 1 MiB), fans it out
//! to an attached console session, and forwards the session's keystrokes to the guest.
//!
//! One interactive session at a time, as in KubeVirt: a new session takes the console over and the
//! previous one is told it was replaced.

use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

/// The console log is rotated to `serial.log.1` beyond this size.
const LOG_LIMIT: u64 = 1 << 20;

/// The relay of one VM's serial console.
#[derive(Debug)]
pub struct SerialHub {
    output: broadcast::Sender<Bytes>,
    input: mpsc::Sender<Bytes>,
    session: watch::Sender<u64>,
}

/// An attached console session.
#[derive(Debug)]
pub struct Session {
    /// The guest's output from the moment of attaching.
    pub output: broadcast::Receiver<Bytes>,
    /// Keystrokes for the guest.
    pub input: mpsc::Sender<Bytes>,
    /// Tells when a newer session took over.
    pub takeover: Takeover,
}

/// Which session holds the console.
#[derive(Debug)]
pub struct Takeover {
    id: u64,
    current: watch::Receiver<u64>,
}

impl Takeover {
    /// Completes when a newer session has taken the console over.
    pub async fn happened(&mut self) {
        while *self.current.borrow_and_update() == self.id {
            if self.current.changed().await.is_err() {
                // The relay is gone (the VM ended): the output side ends the session.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// The console log file of a run directory.
pub fn log_path(run_dir: &Path) -> PathBuf {
    run_dir.join("serial.log")
}

impl SerialHub {
    /// Connects to QEMU's serial socket and relays until QEMU closes it or the task is aborted.
    pub fn start(socket: PathBuf, log: PathBuf) -> (Arc<Self>, JoinHandle<()>) {
        let (output, _) = broadcast::channel(1024);
        let (input, input_rx) = mpsc::channel(64);
        let hub = Arc::new(Self {
            output: output.clone(),
            input,
            session: watch::Sender::new(0),
        });
        let task = tokio::spawn(relay(socket, log, output, input_rx));
        (hub, task)
    }

    /// Attaches a session, replacing any other.
    pub fn attach(&self) -> Session {
        let mut id = 0;
        self.session.send_modify(|s| {
            *s += 1;
            id = *s;
        });
        Session {
            output: self.output.subscribe(),
            input: self.input.clone(),
            takeover: Takeover {
                id,
                current: self.session.subscribe(),
            },
        }
    }
}

async fn relay(
    socket: PathBuf,
    log: PathBuf,
    output: broadcast::Sender<Bytes>,
    mut input: mpsc::Receiver<Bytes>,
) {
    // QEMU creates the socket before it answers QMP, so it exists by now; retry briefly anyway.
    let mut stream = None;
    for _ in 0..50 {
        match UnixStream::connect(&socket).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    let Some(stream) = stream else {
        tracing::warn!(socket = %socket.display(), "cannot attach to the serial console");
        return;
    };
    let (mut read, mut write) = stream.into_split();
    let mut log_file = LogFile::open(log).await;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            n = read.read(&mut buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let chunk = Bytes::copy_from_slice(&buf[..n]);
                    log_file.append(&chunk).await;
                    let _ = output.send(chunk);
                }
            },
            Some(keys) = input.recv() => {
                if write.write_all(&keys).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// `serial.log`, appended to and rotated once it passes [`LOG_LIMIT`].
struct LogFile {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    size: u64,
}

impl LogFile {
    async fn open(path: PathBuf) -> Self {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await;
        let size = match &file {
            Ok(f) => f.metadata().await.map(|m| m.len()).unwrap_or(0),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the console log");
                0
            }
        };
        Self {
            path,
            file: file.ok(),
            size,
        }
    }

    async fn append(&mut self, chunk: &[u8]) {
        if self.size >= LOG_LIMIT {
            let _ = tokio::fs::rename(&self.path, self.path.with_extension("log.1")).await;
            *self = Self::open(self.path.clone()).await;
        }
        if let Some(f) = &mut self.file {
            if f.write_all(chunk).await.is_ok() {
                self.size += chunk.len() as u64;
            }
        }
    }
}
