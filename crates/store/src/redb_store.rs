//! The embedded backend: redb on local disk, ACID, fsync on every commit.
//!
//! Writes go through one writer thread that drains all queued transactions into a single redb write
//! transaction (group commit): each transaction still gets its own revision and its own precondition
//! check, but one fsync covers the batch. After the commit, the batch's events are recorded in the
//! history table (already part of the same transaction) and broadcast to watchers.
//!
//! A watcher subscribes to the broadcast *before* reading history, then skips what it already
//! delivered, so list + watch never misses or reorders an event. A watcher that lags behind the
//! broadcast re-reads the history table from where it was.

use crate::codec;
use crate::{
    Committed, Event, EventKind, KeyValue, ListResult, Op, Revision, Store, StoreError, Watch,
};
use async_trait::async_trait;
use redb::{Database, Durability, ReadableTable, TableDefinition};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use tokio::sync::{broadcast, oneshot};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";

/// Most transactions folded into one group commit.
const MAX_BATCH: usize = 512;
/// Batches buffered for watchers before a slow one must catch up from history.
const BROADCAST_CAPACITY: usize = 1024;
/// redb's page cache; the default (1 GiB) is far more than a control plane needs.
const CACHE_BYTES: usize = 64 << 20;

enum Request {
    Commit {
        ops: Vec<Op>,
        reply: oneshot::Sender<Result<Committed, StoreError>>,
    },
    Compact {
        revision: Revision,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

struct Inner {
    db: Arc<Database>,
    requests: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    events: broadcast::Sender<Arc<Vec<Event>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut requests) = self.requests.lock() {
            requests.take();
        }
        if let Some(handle) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = handle.join();
        }
    }
}

/// The redb-backed store.
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl RedbStore {
    /// Opens (or creates) the store file. Fails if another process has it open.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Backend(format!(
                    "{} is already open in another process",
                    path.display()
                )),
                other => StoreError::Backend(format!("opening {}: {other}", path.display())),
            })?;
        let txn = db.begin_write().map_err(backend)?;
        {
            txn.open_table(OBJECTS).map_err(backend)?;
            txn.open_table(HISTORY).map_err(backend)?;
            txn.open_table(META).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        let db = Arc::new(db);
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let (tx, rx) = mpsc::channel();
        let writer = {
            let db = db.clone();
            let events = events.clone();
            std::thread::Builder::new()
                .name("vmo-store-writer".into())
                .spawn(move || writer_loop(&db, rx, &events))
                .map_err(backend)?
        };
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                requests: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(writer)),
                events,
            }),
        })
    }

    fn send(&self, request: Request) -> Result<(), StoreError> {
        let guard = self.inner.requests.lock().map_err(backend)?;
        guard
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(request)
            .map_err(|_| StoreError::Closed)
    }

    fn read_meta(&self, key: &str) -> Result<Revision, StoreError> {
        let r = self.inner.db.begin_read().map_err(backend)?;
        let meta = r.open_table(META).map_err(backend)?;
        Ok(meta
            .get(key)
            .map_err(backend)?
            .map(|v| v.value())
            .unwrap_or(0))
    }
}

fn writer_loop(
    db: &Database,
    rx: mpsc::Receiver<Request>,
    events: &broadcast::Sender<Arc<Vec<Event>>>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut commits = Vec::new();
        for request in batch {
            match request {
                Request::Commit { ops, reply } => commits.push((ops, reply)),
                Request::Compact { revision, reply } => {
                    let _ = reply.send(compact(db, revision));
                }
            }
        }
        if commits.is_empty() {
            continue;
        }
        match commit_batch(db, &commits) {
            Ok((results, batch_events)) => {
                if !batch_events.is_empty() {
                    let _ = events.send(Arc::new(batch_events));
                }
                for ((_, reply), result) in commits.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed");
                for (_, reply) in commits {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

type Reply = oneshot::Sender<Result<Committed, StoreError>>;
/// Each transaction's result, and the events of those that committed.
type BatchOutcome = (Vec<Result<Committed, StoreError>>, Vec<Event>);

/// Applies every transaction of the batch in one redb write transaction with one fsync.
fn commit_batch(db: &Database, commits: &[(Vec<Op>, Reply)]) -> Result<BatchOutcome, StoreError> {
    let mut txn = db.begin_write().map_err(backend)?;
    txn.set_durability(Durability::Immediate);
    let mut results = Vec::with_capacity(commits.len());
    let mut all_events = Vec::new();
    {
        let mut objects = txn.open_table(OBJECTS).map_err(backend)?;
        let mut history = txn.open_table(HISTORY).map_err(backend)?;
        let mut meta = txn.open_table(META).map_err(backend)?;
        let mut revision = meta
            .get(META_REVISION)
            .map_err(backend)?
            .map(|v| v.value())
            .unwrap_or(0);
        for (ops, _) in commits {
            match check(&objects, ops) {
                Err(e) => results.push(Err(e)),
                Ok(previous) => {
                    revision += 1;
                    let mut events = Vec::with_capacity(ops.len());
                    for (op, prev) in ops.iter().zip(&previous) {
                        let event = match op {
                            Op::Create { key, value } | Op::Update { key, value, .. } => {
                                let create =
                                    prev.as_ref().map(|p| p.create_revision).unwrap_or(revision);
                                objects
                                    .insert(
                                        key.as_str(),
                                        codec::encode_value(create, revision, value).as_slice(),
                                    )
                                    .map_err(backend)?;
                                Event {
                                    kind: EventKind::Put,
                                    kv: KeyValue {
                                        key: key.clone(),
                                        value: Arc::from(value.as_slice()),
                                        create_revision: create,
                                        mod_revision: revision,
                                    },
                                    prev: prev.clone(),
                                }
                            }
                            Op::Delete { key, .. } => {
                                objects.remove(key.as_str()).map_err(backend)?;
                                let last = prev.clone().expect("checked: delete target exists");
                                Event {
                                    kind: EventKind::Delete,
                                    kv: KeyValue {
                                        mod_revision: revision,
                                        ..last.clone()
                                    },
                                    prev: Some(last),
                                }
                            }
                        };
                        events.push(event);
                    }
                    history
                        .insert(revision, codec::encode_events(&events).as_slice())
                        .map_err(backend)?;
                    all_events.extend(events);
                    results.push(Ok(Committed { revision, previous }));
                }
            }
        }
        meta.insert(META_REVISION, revision).map_err(backend)?;
    }
    txn.commit().map_err(backend)?;
    Ok((results, all_events))
}

/// Checks every precondition of one transaction; returns the values it will replace.
fn check(
    objects: &redb::Table<&str, &[u8]>,
    ops: &[Op],
) -> Result<Vec<Option<KeyValue>>, StoreError> {
    let mut seen = std::collections::HashSet::new();
    let mut previous = Vec::with_capacity(ops.len());
    for op in ops {
        let key = op.key();
        if !seen.insert(key) {
            return Err(StoreError::DuplicateKey { key: key.into() });
        }
        let current = objects
            .get(key)
            .map_err(backend)?
            .and_then(|v| codec::decode_value(key, v.value()));
        match (op, &current) {
            (Op::Create { .. }, Some(_)) => {
                return Err(StoreError::AlreadyExists { key: key.into() })
            }
            (Op::Update { .. } | Op::Delete { .. }, None) => {
                return Err(StoreError::NotFound { key: key.into() })
            }
            (
                Op::Update {
                    expected: Some(expected),
                    ..
                }
                | Op::Delete {
                    expected: Some(expected),
                    ..
                },
                Some(kv),
            ) if kv.mod_revision != *expected => {
                return Err(StoreError::Conflict {
                    key: key.into(),
                    expected: *expected,
                    actual: kv.mod_revision,
                })
            }
            _ => {}
        }
        previous.push(current);
    }
    Ok(previous)
}

fn compact(db: &Database, revision: Revision) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(backend)?;
    txn.set_durability(Durability::Immediate);
    {
        let mut meta = txn.open_table(META).map_err(backend)?;
        let current = meta
            .get(META_REVISION)
            .map_err(backend)?
            .map(|v| v.value())
            .unwrap_or(0);
        let compacted = meta
            .get(META_COMPACTED)
            .map_err(backend)?
            .map(|v| v.value())
            .unwrap_or(0);
        if revision > current {
            return Err(StoreError::Backend(format!(
                "cannot compact to revision {revision}: the store is at {current}"
            )));
        }
        if revision <= compacted {
            return Ok(());
        }
        let mut history = txn.open_table(HISTORY).map_err(backend)?;
        loop {
            let first = history.first().map_err(backend)?.map(|(k, _)| k.value());
            match first {
                Some(key) if key <= revision => {
                    history.remove(key).map_err(backend)?;
                }
                _ => break,
            }
        }
        meta.insert(META_COMPACTED, revision).map_err(backend)?;
    }
    txn.commit().map_err(backend)
}

/// Reads history records after `after` for keys under `prefix`, at one snapshot.
fn read_history(
    db: &Database,
    prefix: &str,
    after: Revision,
) -> Result<(Vec<Event>, Revision), StoreError> {
    let r = db.begin_read().map_err(backend)?;
    let meta = r.open_table(META).map_err(backend)?;
    let compacted = meta
        .get(META_COMPACTED)
        .map_err(backend)?
        .map(|v| v.value())
        .unwrap_or(0);
    let current = meta
        .get(META_REVISION)
        .map_err(backend)?
        .map(|v| v.value())
        .unwrap_or(0);
    if after < compacted {
        return Err(StoreError::Compacted {
            requested: after,
            compacted,
        });
    }
    let history = r.open_table(HISTORY).map_err(backend)?;
    let mut out = Vec::new();
    for entry in history.range(after + 1..).map_err(backend)? {
        let (rev, bytes) = entry.map_err(backend)?;
        let events = codec::decode_events(rev.value(), bytes.value()).ok_or_else(|| {
            StoreError::Backend(format!("history record {} is corrupt", rev.value()))
        })?;
        out.extend(events.into_iter().filter(|e| e.kv.key.starts_with(prefix)));
    }
    Ok((out, current))
}

#[async_trait]
impl Store for RedbStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let r = self.inner.db.begin_read().map_err(backend)?;
        let objects = r.open_table(OBJECTS).map_err(backend)?;
        let value = objects.get(key).map_err(backend)?;
        Ok(value.and_then(|v| codec::decode_value(key, v.value())))
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<ListResult, StoreError> {
        let r = self.inner.db.begin_read().map_err(backend)?;
        let meta = r.open_table(META).map_err(backend)?;
        let revision = meta
            .get(META_REVISION)
            .map_err(backend)?
            .map(|v| v.value())
            .unwrap_or(0);
        let objects = r.open_table(OBJECTS).map_err(backend)?;
        let start = match start_after {
            Some(s) if s >= prefix => s,
            _ => prefix,
        };
        let limit = limit.unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut more = false;
        for entry in objects.range(start..).map_err(backend)? {
            let (key, value) = entry.map_err(backend)?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            if Some(key) == start_after {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            if let Some(kv) = codec::decode_value(key, value.value()) {
                items.push(kv);
            }
        }
        Ok(ListResult {
            items,
            revision,
            more,
        })
    }

    async fn commit(&self, ops: Vec<Op>) -> Result<Committed, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Commit { ops, reply })?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<Box<dyn Watch>, StoreError> {
        let live = self.inner.events.subscribe();
        let (history, current) = read_history(&self.inner.db, prefix, after)?;
        if after > current {
            return Err(StoreError::FutureRevision {
                requested: after,
                current,
            });
        }
        let mut watch = RedbWatch {
            inner: self.inner.clone(),
            prefix: prefix.to_string(),
            live,
            backlog: VecDeque::new(),
            queued: after,
        };
        watch.enqueue(history.iter(), current);
        Ok(Box::new(watch))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Compact { revision, reply })?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        self.read_meta(META_REVISION)
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.read_meta(META_COMPACTED)
    }
}

struct RedbWatch {
    inner: Arc<Inner>,
    prefix: String,
    live: broadcast::Receiver<Arc<Vec<Event>>>,
    backlog: VecDeque<Event>,
    /// Highest revision already queued; whole revisions are queued at once, so a transaction's
    /// several events are never split and nothing is queued twice.
    queued: Revision,
}

impl RedbWatch {
    /// Queues the events under the prefix newer than what is queued, and records `seen_up_to` (the
    /// highest revision these events cover, matching or not) as progress.
    fn enqueue<'a>(&mut self, events: impl IntoIterator<Item = &'a Event>, seen_up_to: Revision) {
        let mut highest = self.queued;
        for event in events {
            if event.revision() > self.queued {
                highest = highest.max(event.revision());
                if event.kv.key.starts_with(&self.prefix) {
                    self.backlog.push_back(event.clone());
                }
            }
        }
        self.queued = highest.max(seen_up_to);
    }
}

#[async_trait]
impl Watch for RedbWatch {
    async fn next(&mut self) -> Option<Result<Event, StoreError>> {
        loop {
            if let Some(event) = self.backlog.pop_front() {
                return Some(Ok(event));
            }
            match self.live.recv().await {
                Ok(batch) => self.enqueue(batch.iter(), 0),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    match read_history(&self.inner.db, &self.prefix, self.queued) {
                        Ok((events, current)) => self.enqueue(events.iter(), current),
                        Err(e) => return Some(Err(e)),
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    fn progress(&self) -> Revision {
        match self.backlog.front() {
            Some(next) => next.revision() - 1,
            None => self.queued,
        }
    }
}
