//! The store behind the API: keys to versioned values, one global revision, and watch history.
//!
//! The `Store` trait is shaped after etcd's model (revisions, compare-and-swap on a key's
//! `mod_revision`, watch from a revision, compaction), so an etcd backend can implement it beside the
//! embedded redb one. Every backend must pass `conformance`.

mod codec;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod redb_store;

pub use redb_store::RedbStore;

use async_trait::async_trait;
use std::sync::Arc;

/// A global, strictly increasing revision. Every committed transaction gets the next one.
pub type Revision = u64;

/// A stored value with its revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Arc<[u8]>,
    /// Revision that created the key (kept across updates).
    pub create_revision: Revision,
    /// Revision of the last change to the key; the object's `resourceVersion`.
    pub mod_revision: Revision,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// A change. For `Delete`, `kv` holds the last value with `mod_revision` set to the deleting revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    /// The value before this change, if any.
    pub prev: Option<KeyValue>,
}

impl Event {
    /// The revision this event was committed at.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// One write in a transaction. Preconditions on `mod_revision` make writes optimistic.
#[derive(Debug, Clone)]
pub enum Op {
    /// Fails with `AlreadyExists` if the key exists.
    Create { key: String, value: Vec<u8> },
    /// Fails with `NotFound` if absent, `Conflict` if `expected` is given and differs.
    Update {
        key: String,
        value: Vec<u8>,
        expected: Option<Revision>,
    },
    /// Fails with `NotFound` if absent, `Conflict` if `expected` is given and differs.
    Delete {
        key: String,
        expected: Option<Revision>,
    },
}

impl Op {
    /// The key this op writes.
    pub fn key(&self) -> &str {
        match self {
            Op::Create { key, .. } | Op::Update { key, .. } | Op::Delete { key, .. } => key,
        }
    }
}

/// The result of a committed transaction.
#[derive(Debug, Clone)]
pub struct Committed {
    pub revision: Revision,
    /// For each op, the value it replaced or deleted.
    pub previous: Vec<Option<KeyValue>>,
}

/// A page of keys under a prefix, read at one revision.
#[derive(Debug, Clone)]
pub struct ListResult {
    pub items: Vec<KeyValue>,
    pub revision: Revision,
    /// More keys follow the last one returned.
    pub more: bool,
}

/// Store failures. Preconditions fail with typed variants so the API can answer 404/409/410.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    #[error("key {key} not found")]
    NotFound { key: String },
    #[error("key {key} was modified at revision {actual}, expected {expected}")]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },
    #[error("revision {requested} has been compacted; the oldest kept is {compacted}")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("revision {requested} is newer than the store's latest, {current}")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    #[error("a transaction may write each key once; {key} appears twice")]
    DuplicateKey { key: String },
    #[error("the store is closed")]
    Closed,
    #[error("storage backend failed: {0}")]
    Backend(String),
}

/// The storage contract every backend implements.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// Lists keys under `prefix` in key order, after `start_after`, at most `limit` of them.
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<ListResult, StoreError>;
    /// Commits all ops atomically at one new revision, or none of them.
    async fn commit(&self, ops: Vec<Op>) -> Result<Committed, StoreError>;
    /// Streams every change under `prefix` with a revision greater than `after`, in order.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<Box<dyn Watch>, StoreError>;
    /// Forgets history at and below `revision`; watches from there answer `Compacted`.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;
    /// The latest committed revision.
    async fn revision(&self) -> Result<Revision, StoreError>;
    /// The oldest revision a watch may start after.
    async fn compacted_revision(&self) -> Result<Revision, StoreError>;
}

/// A stream of events. `None` means the store closed; an error (such as `Compacted` after falling too
/// far behind) ends the stream.
#[async_trait]
pub trait Watch: Send {
    async fn next(&mut self) -> Option<Result<Event, StoreError>>;
    /// The revision up to which every change has been seen (delivered, or filtered out as not under
    /// the prefix): what a bookmark may report once the delivered events are consumed.
    fn progress(&self) -> Revision;
}
