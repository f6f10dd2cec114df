//! A QMP (QEMU Machine Protocol) client over a unix socket: capability negotiation, commands with
//! ids and typed errors, and the asynchronous events QEMU sends (SHUTDOWN, STOP, RESUME, ...).
//!
//! One reader task owns the socket's read half: it routes `return`/`error` replies to the waiting
//! command by id and forwards events. When QEMU goes away, every pending command fails with
//! `Disconnected` and the event channel closes, which is how a VM's owner notices the exit.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

/// How long a command may take before it is given up.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest line accepted from QEMU (query results of big guests stay far below this).
const MAX_LINE: usize = 16 << 20;

/// QMP failures.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("connecting to QMP socket {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP handshake failed: {0}")]
    Handshake(String),
    #[error("QEMU answered {command} with {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("the QMP connection closed (QEMU exited or was killed)")]
    Disconnected,
    #[error("QEMU did not answer {command} within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    #[error("writing to QMP")]
    Io(#[source] std::io::Error),
}

/// An asynchronous QMP event.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    pub name: String,
    pub data: Value,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, (String, String)>>>>>;

/// A connected QMP session.
#[derive(Debug)]
pub struct Qmp {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    /// QEMU's version as the greeting reported it (`10.0.2`).
    pub version: String,
}

impl Qmp {
    /// Connects, reads the greeting and negotiates capabilities. Events arrive on the receiver.
    pub async fn connect(
        path: &Path,
    ) -> Result<(Self, mpsc::UnboundedReceiver<QmpEvent>), QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let (read, write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let mut line = String::new();
        tokio::time::timeout(COMMAND_TIMEOUT, reader.read_line(&mut line))
            .await
            .map_err(|_| QmpError::Handshake("no greeting from QEMU".into()))?
            .map_err(QmpError::Io)?;
        let greeting: Value = serde_json::from_str(&line)
            .map_err(|e| QmpError::Handshake(format!("unreadable greeting {line:?}: {e}")))?;
        let v = &greeting["QMP"]["version"]["qemu"];
        if v.is_null() {
            return Err(QmpError::Handshake(format!("not a QMP greeting: {line:?}")));
        }
        let version = format!("{}.{}.{}", v["major"], v["minor"], v["micro"]);
        let pending: Pending = Arc::default();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        tokio::spawn(read_loop(reader, pending.clone(), events_tx));
        let qmp = Self {
            writer: tokio::sync::Mutex::new(write),
            pending,
            next_id: AtomicU64::new(1),
            version,
        };
        qmp.execute("qmp_capabilities", None).await?;
        Ok((qmp, events_rx))
    }

    /// Runs a command and returns its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({"execute": command, "id": id});
        if let Some(args) = arguments {
            message["arguments"] = args;
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        let mut bytes = serde_json::to_vec(&message).expect("serializable");
        bytes.push(b'\n');
        {
            let mut writer = self.writer.lock().await;
            if let Err(e) = writer.write_all(&bytes).await {
                self.pending.lock().expect("pending lock").remove(&id);
                return Err(if e.kind() == std::io::ErrorKind::BrokenPipe {
                    QmpError::Disconnected
                } else {
                    QmpError::Io(e)
                });
            }
        }
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Err(_) => {
                self.pending.lock().expect("pending lock").remove(&id);
                Err(QmpError::Timeout {
                    command: command.to_string(),
                    timeout: COMMAND_TIMEOUT,
                })
            }
            Ok(Err(_)) => Err(QmpError::Disconnected),
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err((class, desc)))) => Err(QmpError::Command {
                command: command.to_string(),
                class,
                desc,
            }),
        }
    }

    /// `query-status`: the run state (`running`, `paused`, `shutdown`, `prelaunch`, ...).
    pub async fn status(&self) -> Result<String, QmpError> {
        let v = self.execute("query-status", None).await?;
        Ok(v["status"].as_str().unwrap_or("unknown").to_string())
    }
}

async fn read_loop(
    mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    pending: Pending,
    events: mpsc::UnboundedSender<QmpEvent>,
) {
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) if line.len() > MAX_LINE => break,
            Ok(_) => {}
        }
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            tracing::warn!(line = %line.trim(), "unreadable QMP message");
            continue;
        };
        if let Some(name) = message["event"].as_str() {
            let _ = events.send(QmpEvent {
                name: name.to_string(),
                data: message["data"].clone(),
            });
            continue;
        }
        let Some(id) = message["id"].as_u64() else {
            continue;
        };
        let Some(waiter) = pending.lock().expect("pending lock").remove(&id) else {
            continue;
        };
        let reply = match message.get("error") {
            Some(e) => Err((
                e["class"].as_str().unwrap_or("GenericError").to_string(),
                e["desc"].as_str().unwrap_or("").to_string(),
            )),
            None => Ok(message.get("return").cloned().unwrap_or(Value::Null)),
        };
        let _ = waiter.send(reply);
    }
    // Dropping the waiters fails every pending command with Disconnected.
    pending.lock().expect("pending lock").clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    /// A scripted peer speaking QMP's wire format, for the client's own logic.
    async fn fake_qemu(listener: UnixListener) {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        write
            .write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 0, \"major\": 10}, \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n")
            .await
            .unwrap();
        let mut lines = BufReader::new(read).lines();
        while let Some(line) = lines.next_line().await.unwrap() {
            let msg: Value = serde_json::from_str(&line).unwrap();
            let id = msg["id"].clone();
            let reply = match msg["execute"].as_str().unwrap() {
                "qmp_capabilities" => json!({"return": {}, "id": id}),
                "query-status" => {
                    json!({"return": {"status": "running", "running": true}, "id": id})
                }
                "stop" => {
                    let event = json!({"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}});
                    write
                        .write_all(format!("{event}\r\n").as_bytes())
                        .await
                        .unwrap();
                    json!({"return": {}, "id": id})
                }
                "quit" => return,
                other => {
                    json!({"error": {"class": "CommandNotFound", "desc": format!("The command {other} has not been found")}, "id": id})
                }
            };
            write
                .write_all(format!("{reply}\r\n").as_bytes())
                .await
                .unwrap();
        }
        let mut rest = Vec::new();
        let _ = write.flush().await;
        let _ = lines.into_inner().read_to_end(&mut rest).await;
    }

    #[tokio::test]
    async fn commands_errors_events_and_disconnects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(fake_qemu(listener));
        let (qmp, mut events) = Qmp::connect(&path).await.unwrap();
        assert_eq!(qmp.version, "10.0.2");
        assert_eq!(qmp.status().await.unwrap(), "running");
        match qmp.execute("no-such-command", None).await {
            Err(QmpError::Command { class, .. }) => assert_eq!(class, "CommandNotFound"),
            other => panic!("expected a command error, got {other:?}"),
        }
        qmp.execute("stop", None).await.unwrap();
        assert_eq!(events.recv().await.unwrap().name, "STOP");
        // QEMU going away fails the next command and closes the events.
        let quit = qmp.execute("quit", None).await;
        assert!(matches!(quit, Err(QmpError::Disconnected)), "{quit:?}");
        assert!(events.recv().await.is_none());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_peer_that_is_not_qemu_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                .await
                .unwrap();
        });
        assert!(matches!(
            Qmp::connect(&path).await,
            Err(QmpError::Handshake(_))
        ));
        assert!(matches!(
            Qmp::connect(&dir.path().join("missing.sock")).await,
            Err(QmpError::Connect { .. })
        ));
    }
}
