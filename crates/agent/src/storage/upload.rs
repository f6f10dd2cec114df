//! DataVolume `upload` sources: the volume waits in UploadReady; uploads arrive through the server
//! (the DataVolume's `upload` subresource) at this agent's endpoint and feed one upload session
//! per DataVolume, kept across requests, so a dropped connection resumes where it stopped.
//!
//! ```text
//!  provisioner (every few s while the claim is unbound): receive() -> DataVolume UploadReady,
//!      the volume's target registered here as ready for an upload
//!  PUT /uploads/NS/NAME?offset=O&size=S (from the server, body streamed)
//!      no session: O must be 0 -> session: channel ──► import_stream (runs once, its own task)
//!      session:    O must equal `received` (409 naming it otherwise); a newer request takes
//!                  over from an older one still attached (a connection not yet seen dead)
//!      each chunk of the body goes into the channel; `received` counts what went in
//!      received == S: the channel closes, the import finishes into the volume's final path, and
//!      this request answers with the result (or the import's error; the DataVolume Failed)
//!  GET /uploads/NS/NAME -> {received, size}: where a client resumes
//!  idle for IDLE_TIMEOUT: the session is dropped (its partial files removed with the import);
//!      the DataVolume stays UploadReady for a fresh upload from 0
//! ```
//!
//! Once the file is at its final path, the provisioner records the volume, binds the claim and
//! sets the DataVolume Succeeded. The sessions live in memory: an agent restart forgets them, and
//! the client starts again from 0 (the server's `GET` says `received: 0`).

use super::import::{self, Progress, Target};
use super::provision::{ProvisionError, Worker};
use super::Kinds;
use bytes::{Buf, Bytes};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{mpsc, watch};
use vmo_api::kinds::cdi::phase;
use vmo_api::Object;
use vmo_client::events::{EventType, Recorder};
use vmo_client::Client;

/// A session without any data arriving for this long is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// A ready registration the provisioner has not renewed for this long is stale (the DataVolume
/// is gone or no longer waits).
const READY_FRESH: Duration = Duration::from_secs(60);
/// Chunks buffered between the requests and the import.
const CHANNEL_CHUNKS: usize = 16;

/// Marks the DataVolume ready for its upload and registers where the upload goes; the upload
/// itself arrives at the endpoint (see the module doc).
pub(crate) async fn receive(
    w: &Worker,
    dv: &Object,
    path: &Path,
    format: &str,
    size: u64,
) -> Result<(), ProvisionError> {
    if dv.status()["phase"] == phase::FAILED {
        // A failed upload stays Failed with its message until the DataVolume is re-created.
        return Err(ProvisionError::Held);
    }
    Uploads::for_node(&w.config.node_name).ready(Ready {
        uid: dv.metadata.uid.clone(),
        dv: dv.clone(),
        target: super::importer::target(path, format, size),
        client: w.client.clone(),
        kinds: w.kinds,
        node: w.config.node_name.clone(),
        seen: Instant::now(),
    });
    if dv.status()["phase"] != phase::UPLOAD_READY {
        let status = json!({"phase": phase::UPLOAD_READY, "progress": "0.00%",
            "conditions": Worker::conditions(phase::UPLOAD_READY, false, "UploadReady", "waiting for the upload")});
        w.dv_status(&dv.metadata.namespace, &dv.metadata.name, status)
            .await;
    }
    Err(ProvisionError::Waiting("waiting for the upload".into()))
}

/// A DataVolume whose volume waits for an upload on this node.
#[derive(Clone)]
struct Ready {
    uid: String,
    dv: Object,
    target: Target,
    client: Client,
    kinds: Kinds,
    node: String,
    seen: Instant,
}

#[derive(Default)]
struct Slot {
    ready: Option<Ready>,
    session: Option<Arc<Session>>,
}

/// The upload sessions of one node, by `namespace/name`.
#[derive(Clone, Default)]
pub struct Uploads(Arc<Mutex<HashMap<String, Slot>>>);

impl std::fmt::Debug for Uploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Uploads")
    }
}

/// Where a request's body goes: it starts at `offset` of an image of `size` bytes, whose
/// `checksum` (`sha256:<hex>`, ...) the request that starts the upload may give.
#[derive(Debug, Clone, Default)]
pub struct At {
    pub offset: u64,
    pub size: u64,
    pub checksum: Option<String>,
}

/// One answer to a request: an HTTP code and a JSON body.
#[derive(Debug)]
pub struct Answer {
    pub code: u16,
    pub body: Value,
}

fn refuse(code: u16, reason: &str, message: impl Into<String>) -> Answer {
    Answer {
        code,
        body: json!({"reason": reason, "message": message.into()}),
    }
}

impl Uploads {
    /// The sessions of `node` (the endpoint and the storage worker start apart; both find the
    /// same registry by the node's name, also when several agents share a process in tests).
    pub fn for_node(node: &str) -> Uploads {
        static NODES: OnceLock<Mutex<HashMap<String, Uploads>>> = OnceLock::new();
        let nodes = NODES.get_or_init(Default::default);
        let mut nodes = nodes.lock().expect("uploads registry");
        nodes.entry(node.to_string()).or_default().clone()
    }

    fn ready(&self, ready: Ready) {
        let key = format!("{}/{}", ready.dv.metadata.namespace, ready.dv.metadata.name);
        let mut map = self.0.lock().expect("uploads");
        let slot = map.entry(key).or_default();
        if slot.session.as_ref().is_some_and(|s| s.uid != ready.uid) {
            // The DataVolume was re-created: the old session's data is not wanted.
            if let Some(old) = slot.session.take() {
                old.abort();
            }
        }
        slot.ready = Some(ready);
    }

    fn remove_session(&self, key: &str, session: &Arc<Session>) {
        let mut map = self.0.lock().expect("uploads");
        if let Some(slot) = map.get_mut(key) {
            if slot
                .session
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(s, session))
            {
                slot.session = None;
            }
        }
    }

    /// `GET`: how much of the upload is in.
    pub fn state(&self, ns: &str, name: &str, uid: &str) -> Answer {
        let map = self.0.lock().expect("uploads");
        let slot = map.get(&format!("{ns}/{name}"));
        let session = slot
            .and_then(|s| s.session.clone())
            .filter(|s| s.uid == uid);
        let complete = slot
            .and_then(|s| s.ready.as_ref())
            .is_some_and(|r| r.uid == uid && r.target.path.exists());
        let body = match session {
            Some(s) => {
                json!({"phase": phase::UPLOAD_READY, "received": s.received(), "size": s.size})
            }
            // Finished after its client went away; bound at the provisioner's next turn.
            None if complete => json!({"phase": "Complete", "received": Value::Null}),
            None => json!({"phase": phase::UPLOAD_READY, "received": 0, "size": Value::Null}),
        };
        Answer { code: 200, body }
    }

    /// `PUT`: feeds `body` (the image from `offset` on) into the DataVolume's session, starting
    /// one at offset 0; answers when the body ends, with the import's result if it was the last
    /// part.
    pub async fn put<B>(&self, ns: &str, name: &str, uid: &str, at: At, mut body: B) -> Answer
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        use http_body_util::BodyExt;
        let At {
            offset,
            size,
            checksum,
        } = at;
        let key = format!("{ns}/{name}");
        let session = {
            let mut map = self.0.lock().expect("uploads");
            let slot = map.entry(key.clone()).or_default();
            let Some(ready) = slot
                .ready
                .clone()
                .filter(|r| r.seen.elapsed() < READY_FRESH)
            else {
                return refuse(
                    409,
                    "Conflict",
                    format!("DataVolume {key} is not ready for an upload on this node yet; try again in a few seconds"),
                );
            };
            if ready.uid != uid {
                return refuse(
                    409,
                    "Conflict",
                    format!("DataVolume {key} was re-created; try again in a few seconds"),
                );
            }
            match slot.session.clone().filter(|s| !s.finished()) {
                Some(s) if s.size != size => {
                    return refuse(
                        409,
                        "Conflict",
                        format!(
                            "an upload of {} bytes into DataVolume {key} is in progress ({} bytes in); \
                             this request says the image has {size} bytes",
                            s.size,
                            s.received()
                        ),
                    )
                }
                Some(s) => s,
                None if ready.target.path.exists() => {
                    // A session that finished after its client went away: the image is in, and
                    // the provisioner binds it at its next turn.
                    return Answer {
                        code: 200,
                        body: json!({"phase": "Complete", "received": size, "size": size}),
                    };
                }
                None => {
                    if offset != 0 {
                        return refuse(
                            409,
                            "Conflict",
                            format!(
                                "no upload into DataVolume {key} is in progress: start at offset 0 \
                                 (this request starts at {offset}); expected offset 0"
                            ),
                        );
                    }
                    let s = Session::start(self.clone(), key.clone(), ready, size, checksum);
                    slot.session = Some(s.clone());
                    s
                }
            }
        };
        session.touch();
        // Take over from any older request still attached, then check where this one starts.
        let generation = session.generation.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let _feed = session.feed.lock().await;
            let received = session.received();
            if offset != received {
                return refuse(
                    409,
                    "Conflict",
                    format!(
                        "DataVolume {key} has {received} of {size} bytes; this request starts at \
                         {offset}: expected offset {received}"
                    ),
                );
            }
        }
        let mut pipeline_ended = false;
        loop {
            let frame = match body.frame().await {
                None => break,
                Some(Err(e)) => {
                    tracing::info!(dv = %key, received = session.received(), error = %e, "an upload request ended early; the next one resumes");
                    break;
                }
                Some(Ok(frame)) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            let mut feed = session.feed.lock().await;
            if session.generation.load(Ordering::SeqCst) != generation {
                return refuse(409, "Conflict", "a newer request for this upload took over");
            }
            let received = session.received();
            if received + data.len() as u64 > size {
                return refuse(
                    400,
                    "BadRequest",
                    format!(
                        "the body goes past the announced size of {size} bytes (at {received} + {})",
                        data.len()
                    ),
                );
            }
            let Some(tx) = feed.tx.clone() else {
                break;
            };
            let len = data.len() as u64;
            if tx.send(data).await.is_err() {
                pipeline_ended = true;
                break;
            }
            session.received.fetch_add(len, Ordering::SeqCst);
            session.touch();
            if received + len == size {
                feed.tx = None;
                break;
            }
        }
        let received = session.received();
        if received < size && !pipeline_ended && !session.finished() {
            return Answer {
                code: 200,
                body: json!({"phase": phase::UPLOAD_READY, "received": received, "size": size}),
            };
        }
        match session.outcome().await {
            Ok(format) => Answer {
                code: 200,
                body: json!({"phase": "Complete", "received": received, "size": size, "format": format}),
            },
            Err(message) => refuse(400, "BadRequest", message),
        }
    }
}

/// Where the bytes of the body go.
struct Feed {
    tx: Option<mpsc::Sender<Bytes>>,
}

/// One upload: the import running on the channel that requests feed.
struct Session {
    uid: String,
    size: u64,
    received: AtomicU64,
    generation: AtomicU64,
    feed: tokio::sync::Mutex<Feed>,
    /// On tokio's clock, so tests can let it run ahead.
    last_active: Mutex<tokio::time::Instant>,
    /// `Some(Ok(source format))` or `Some(Err(message))` once the import ended.
    result: watch::Receiver<Option<Result<String, String>>>,
    abort: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Session {
    fn start(
        uploads: Uploads,
        key: String,
        ready: Ready,
        size: u64,
        checksum: Option<String>,
    ) -> Arc<Session> {
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let (result_tx, result) = watch::channel(None);
        let session = Arc::new(Session {
            uid: ready.uid.clone(),
            size,
            received: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            feed: tokio::sync::Mutex::new(Feed { tx: Some(tx) }),
            last_active: Mutex::new(tokio::time::Instant::now()),
            result,
            abort: Mutex::new(None),
        });
        tracing::info!(dv = %key, size, "upload session started");
        let task = tokio::spawn(run(
            uploads,
            key,
            ready,
            session.clone(),
            (rx, checksum),
            result_tx,
        ));
        *session.abort.lock().expect("abort") = Some(task.abort_handle());
        session
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    fn touch(&self) {
        *self.last_active.lock().expect("activity") = tokio::time::Instant::now();
    }

    fn idle(&self) -> Duration {
        self.last_active.lock().expect("activity").elapsed()
    }

    fn finished(&self) -> bool {
        self.result.borrow().is_some()
    }

    fn abort(&self) {
        if let Some(handle) = self.abort.lock().expect("abort").take() {
            handle.abort();
        }
    }

    async fn outcome(&self) -> Result<String, String> {
        let mut result = self.result.clone();
        let outcome = match result.wait_for(Option::is_some).await {
            Ok(r) => r.clone().expect("is some"),
            Err(_) => Err("the upload session was dropped".into()),
        };
        outcome
    }
}

/// Runs the import of one session to its end, or drops it when idle.
async fn run(
    uploads: Uploads,
    key: String,
    ready: Ready,
    session: Arc<Session>,
    (rx, checksum): (mpsc::Receiver<Bytes>, Option<String>),
    result_tx: watch::Sender<Option<Result<String, String>>>,
) {
    let (ns, name) = (
        ready.dv.metadata.namespace.clone(),
        ready.dv.metadata.name.clone(),
    );
    let (progress, writer) = progress_writer(&ready);
    let reader = ChannelReader {
        rx,
        chunk: Bytes::new(),
    };
    let mut import = Box::pin(import::import_stream(
        reader,
        Some(session.size),
        &ready.target,
        checksum.as_deref(),
        progress,
    ));
    let outcome = loop {
        tokio::select! {
            r = &mut import => break Some(r),
            _ = tokio::time::sleep(Duration::from_secs(15)) => {
                if session.received() < session.size && session.idle() > IDLE_TIMEOUT {
                    break None;
                }
            }
        }
    };
    writer.abort();
    let status = |s: Value| {
        let (client, kind) = (ready.client.clone(), ready.kinds.data_volume);
        let (ns, name) = (ns.clone(), name.clone());
        async move {
            let _ = client
                .merge_patch(
                    &kind,
                    &ns,
                    &name,
                    Some("status"),
                    &json!({ "status": s }),
                    "vmo-agent",
                )
                .await;
        }
    };
    match outcome {
        None => {
            // Dropping the import removes its partial files.
            drop(import);
            tracing::info!(dv = %key, received = session.received(), "upload session idle too long; dropped");
            let _ = result_tx.send(Some(Err(format!(
                "the upload session was idle for {} s and was dropped; upload again from the start",
                IDLE_TIMEOUT.as_secs()
            ))));
            uploads.remove_session(&key, &session);
            status(json!({"progress": "0.00%"})).await;
        }
        Some(Ok(imported)) => {
            tracing::info!(dv = %key, format = imported.source_format, compression = ?imported.compression,
                bytes = imported.bytes_read, scratch = imported.scratch_used, "upload imported");
            let current = ready.client.get(&ready.kinds.data_volume, &ns, &name).await;
            if current.as_ref().is_err_and(|e| e.is_not_found())
                || current.is_ok_and(|dv| dv.metadata.uid != ready.uid)
            {
                // Deleted while the upload ran: nothing will bind the file; do not keep it.
                let _ = tokio::fs::remove_file(&ready.target.path).await;
                tracing::info!(dv = %key, "the DataVolume went away during its upload; its file is removed");
            }
            let _ = result_tx.send(Some(Ok(imported.source_format.clone())));
            uploads.remove_session(&key, &session);
        }
        Some(Err(e)) => {
            let message = format!("the upload failed: {e}");
            tracing::warn!(dv = %key, error = %message, "upload failed");
            status(json!({"phase": phase::FAILED,
                "conditions": Worker::conditions(phase::FAILED, false, "Failed", &message)}))
            .await;
            Recorder::new(
                ready.client.clone(),
                vmo_client::events::AGENT_COMPONENT,
                &ready.node,
            )
            .record(&ready.dv, EventType::Warning, "UploadFailed", &message)
            .await;
            let _ = result_tx.send(Some(Err(message)));
            uploads.remove_session(&key, &session);
        }
    }
}

/// Writes `status.progress` of the DataVolume (phase UploadReady), at most once a second.
fn progress_writer(ready: &Ready) -> (Progress, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = watch::channel(0.0f64);
    let progress = Progress::new(move |p| {
        let _ = tx.send(p);
    });
    let (client, kind) = (ready.client.clone(), ready.kinds.data_volume);
    let (ns, name) = (
        ready.dv.metadata.namespace.clone(),
        ready.dv.metadata.name.clone(),
    );
    let task = tokio::spawn(async move {
        let mut last = -1.0;
        while rx.changed().await.is_ok() {
            let p = *rx.borrow_and_update();
            if p - last >= 0.1 {
                last = p;
                let patch = json!({"status": {"progress": format!("{p:.2}%")}});
                let _ = client
                    .merge_patch(&kind, &ns, &name, Some("status"), &patch, "vmo-agent")
                    .await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    (progress, task)
}

/// The import's input: the chunks the requests put into the channel, to its close.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

impl AsyncRead for ChannelReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        while self.chunk.is_empty() {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(chunk)) => self.chunk = chunk,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = self.chunk.len().min(buf.remaining());
        buf.put_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use tokio::io::AsyncReadExt;

    /// A DataVolume ready for an upload into a raw file in `dir`; its status writes go nowhere.
    fn ready(dir: &Path, uid: &str, size: u64) -> Ready {
        let client = Client::new(vmo_client::Credentials {
            server: "https://127.0.0.1:9".into(),
            ca_pem: None,
            token: "t".into(),
            namespace: None,
        })
        .unwrap();
        let dv = Object::from_value(json!({"apiVersion": "cdi.kubevirt.io/v1beta1",
            "kind": "DataVolume", "metadata": {"name": "d", "namespace": "ns", "uid": uid}}))
        .unwrap();
        Ready {
            uid: uid.into(),
            dv,
            target: super::super::importer::target(&dir.join("vol.raw"), "raw", size),
            client,
            kinds: Kinds::new(),
            node: "n".into(),
            seen: Instant::now(),
        }
    }

    fn at(offset: u64, size: u64) -> At {
        At {
            offset,
            size,
            checksum: None,
        }
    }

    fn body(bytes: &[u8]) -> Full<Bytes> {
        Full::new(Bytes::copy_from_slice(bytes))
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_session_is_dropped_with_its_files_and_starts_again_from_0() {
        let dir = tempfile::tempdir().unwrap();
        let size = 1u64 << 20;
        let uploads = Uploads::default();
        uploads.ready(ready(dir.path(), "u1", size));
        let a = uploads
            .put("ns", "d", "u1", at(0, size), body(&vec![1u8; 200_000]))
            .await;
        assert_eq!(a.body["received"], 200_000);
        // Let the session sit: tokio's paused clock runs ahead to each timer.
        let session = uploads.0.lock().unwrap()["ns/d"].session.clone().unwrap();
        let outcome = session.outcome().await.unwrap_err();
        assert!(outcome.contains("idle"), "{outcome}");
        assert!(!dir.path().join("vol.raw.partial").exists());
        assert_eq!(uploads.state("ns", "d", "u1").body["received"], 0);
        // The DataVolume stays ready: a fresh upload starts from 0, not from 200000.
        uploads.ready(ready(dir.path(), "u1", size));
        let a = uploads
            .put("ns", "d", "u1", at(200_000, size), body(b"x"))
            .await;
        assert!(a.body["message"]
            .as_str()
            .unwrap()
            .contains("expected offset 0"));
        let a = uploads.put("ns", "d", "u1", at(0, size), body(b"x")).await;
        assert_eq!(a.body["received"], 1);
    }

    #[tokio::test]
    async fn a_wrong_checksum_fails_the_upload() {
        let dir = tempfile::tempdir().unwrap();
        let size = 1u64 << 16;
        let uploads = Uploads::default();
        uploads.ready(ready(dir.path(), "u1", size));
        let wrong = At {
            offset: 0,
            size,
            checksum: Some(format!("sha256:{}", "0".repeat(64))),
        };
        let a = uploads
            .put("ns", "d", "u1", wrong, body(&vec![3u8; size as usize]))
            .await;
        assert_eq!(a.code, 400);
        let message = a.body["message"].as_str().unwrap();
        assert!(message.contains("checksum mismatch"), "{message}");
        assert!(!dir.path().join("vol.raw").exists());
    }

    #[tokio::test]
    async fn an_upload_goes_on_from_what_was_received() {
        let dir = tempfile::tempdir().unwrap();
        let size = 1u64 << 20;
        let image: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let uploads = Uploads::default();
        let refused = uploads.put("ns", "d", "u1", at(0, size), body(b"x")).await;
        assert_eq!(refused.code, 409, "{:?}", refused.body);
        assert!(refused.body["message"]
            .as_str()
            .unwrap()
            .contains("not ready for an upload"));
        uploads.ready(ready(dir.path(), "u1", size));

        let a = uploads.put("ns", "d", "u1", at(7, size), body(b"x")).await;
        assert_eq!(a.code, 409);
        assert!(a.body["message"]
            .as_str()
            .unwrap()
            .contains("expected offset 0"));

        let a = uploads
            .put("ns", "d", "u1", at(0, size), body(&image[..300_000]))
            .await;
        assert_eq!(a.code, 200, "{:?}", a.body);
        assert_eq!(
            (a.body["phase"].as_str(), a.body["received"].as_u64()),
            (Some("UploadReady"), Some(300_000))
        );
        assert_eq!(uploads.state("ns", "d", "u1").body["received"], 300_000);
        assert_eq!(uploads.state("ns", "d", "other").body["received"], 0);

        let a = uploads
            .put("ns", "d", "u1", at(100, size), body(&image[100..]))
            .await;
        assert_eq!(a.code, 409);
        assert!(a.body["message"]
            .as_str()
            .unwrap()
            .contains("expected offset 300000"));
        let a = uploads
            .put(
                "ns",
                "d",
                "u1",
                at(300_000, size + 1),
                body(&image[300_000..]),
            )
            .await;
        assert_eq!(a.code, 409, "another size is refused: {:?}", a.body);
        let a = uploads
            .put("ns", "d", "u2", at(300_000, size), body(&image[300_000..]))
            .await;
        assert_eq!(a.code, 409, "another DataVolume's uid is refused");

        let a = uploads
            .put("ns", "d", "u1", at(300_000, size), body(&image[300_000..]))
            .await;
        assert_eq!(a.code, 200, "{:?}", a.body);
        assert_eq!(a.body["phase"], "Complete");
        assert_eq!(std::fs::read(dir.path().join("vol.raw")).unwrap(), image);
        assert!(!dir.path().join("vol.raw.partial").exists());
        // A client that lost the last answer and asks again learns that the image is in.
        assert_eq!(uploads.state("ns", "d", "u1").body["phase"], "Complete");
        let again = uploads
            .put("ns", "d", "u1", at(0, size), body(&image))
            .await;
        assert_eq!(again.body["phase"], "Complete");
        assert_eq!(std::fs::read(dir.path().join("vol.raw")).unwrap(), image);
    }

    #[tokio::test]
    async fn the_reader_yields_the_chunks_in_order_to_the_close() {
        let (tx, rx) = mpsc::channel(4);
        let mut reader = ChannelReader {
            rx,
            chunk: Bytes::new(),
        };
        tokio::spawn(async move {
            for part in [&b"ab"[..], b"", b"cde"] {
                tx.send(Bytes::copy_from_slice(part)).await.unwrap();
            }
        });
        let mut all = Vec::new();
        reader.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"abcde");
    }
}
