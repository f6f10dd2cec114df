//! Watch streams: the store's events for one kind, filtered by selectors and turned into
//! Kubernetes watch events (one JSON object per line).
//!
//! Without a resourceVersion (or with "0") the stream starts with an ADDED event for every current
//! object, then continues from the list's revision, so nothing is missed between the two. With a
//! resourceVersion it continues after it; one older than the kept history answers 410 Gone.
//! An object that starts or stops matching the selectors arrives as ADDED or DELETED.

use crate::service::{decode, prefix, store_status, ListOptions, ResourceService};
use bytes::Bytes;
use futures_util::stream::{self, Stream};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use vmo_api::{KindInfo, Object, Status};
use vmo_store::{EventKind, Revision, Watch};

/// Encoded watch lines shared by every watcher of a kind: with many watchers, each event is decoded
/// and encoded once instead of once per watcher.
#[derive(Debug, Default)]
pub struct LineCache {
    inner: std::sync::Mutex<(HashMap<LineKey, Bytes>, VecDeque<LineKey>)>,
}

type LineKey = (Revision, String, &'static str, bool);

/// Lines kept; enough for every watcher to catch up on a burst of writes.
const LINE_CACHE_ENTRIES: usize = 4096;

impl LineCache {
    fn get_or_encode(&self, key: LineKey, encode: impl FnOnce() -> Option<Bytes>) -> Option<Bytes> {
        if let Some(found) = self.inner.lock().ok().and_then(|c| c.0.get(&key).cloned()) {
            return Some(found);
        }
        let bytes = encode()?;
        if let Ok(mut cache) = self.inner.lock() {
            if cache.0.insert(key.clone(), bytes.clone()).is_none() {
                cache.1.push_back(key);
            }
            while cache.1.len() > LINE_CACHE_ENTRIES {
                if let Some(old) = cache.1.pop_front() {
                    cache.0.remove(&old);
                }
            }
        }
        Some(bytes)
    }
}

/// What a client asked to watch.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    pub namespace: Option<String>,
    pub list: ListOptions,
    pub resource_version: Option<String>,
    pub bookmarks: bool,
    pub bookmark_interval: Duration,
    pub timeout: Duration,
    /// Send each object as a one-row Table (kubectl's `get --watch`).
    pub as_table: bool,
    /// Lines already encoded for other watchers.
    pub lines: Arc<LineCache>,
}

struct State {
    kind: KindInfo,
    req: WatchRequest,
    watch: Box<dyn Watch>,
    pending: VecDeque<Bytes>,
    last_revision: Revision,
    deadline: Instant,
    done: bool,
}

fn line(kind: &KindInfo, event_type: &str, obj: &Object, as_table: bool) -> Bytes {
    let object = if as_table {
        let mut t = vmo_api::table::table(
            kind,
            std::slice::from_ref(obj),
            &obj.metadata.resource_version,
            "",
        );
        t["rows"][0]["object"] = obj.to_value();
        t
    } else {
        obj.to_value()
    };
    let mut bytes =
        serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn error_line(status: &Status) -> Bytes {
    let mut bytes =
        serde_json::to_vec(&json!({"type": "ERROR", "object": status})).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// Opens a watch; errors that happen before the first event are returned as a status.
pub async fn open(
    service: &ResourceService,
    kind: KindInfo,
    req: WatchRequest,
) -> Result<impl Stream<Item = Bytes> + Send + 'static, Status> {
    service.check_field_selector(&kind, &req.list.field_selector)?;
    let store = service.store().clone();
    let prefix = prefix(&kind, req.namespace.as_deref());
    let mut pending = VecDeque::new();
    let start = match req.resource_version.as_deref() {
        None | Some("") | Some("0") => {
            let page = service
                .list(
                    &kind,
                    req.namespace.as_deref(),
                    &ListOptions {
                        label_selector: req.list.label_selector.clone(),
                        field_selector: req.list.field_selector.clone(),
                        limit: None,
                        continue_token: None,
                    },
                )
                .await?;
            for obj in &page.items {
                pending.push_back(line(&kind, "ADDED", obj, req.as_table));
            }
            page.resource_version
        }
        Some(rv) => rv.parse::<Revision>().map_err(|_| {
            Status::bad_request(format!("invalid resourceVersion {rv:?}: must be a number"))
        })?,
    };
    let watch = store
        .watch(&prefix, start)
        .await
        .map_err(|e| store_status(&kind, "", e))?;
    let state = State {
        deadline: Instant::now() + req.timeout,
        kind,
        req,
        watch,
        pending,
        last_revision: start,
        done: false,
    };
    Ok(stream::unfold(state, |mut s| async move {
        loop {
            if let Some(bytes) = s.pending.pop_front() {
                return Some((bytes, s));
            }
            if s.done {
                return None;
            }
            let bookmark_at = Instant::now() + s.req.bookmark_interval;
            tokio::select! {
                biased;
                next = s.watch.next() => match next {
                    Some(Ok(event)) => s.on_event(event),
                    Some(Err(e)) => {
                        s.pending.push_back(error_line(&store_status(&s.kind, "", e)));
                        s.done = true;
                    }
                    None => s.done = true,
                },
                _ = tokio::time::sleep_until(bookmark_at), if s.req.bookmarks => {
                    s.pending.push_back(s.bookmark());
                }
                _ = tokio::time::sleep_until(s.deadline) => s.done = true,
            }
        }
    }))
}

impl State {
    fn on_event(&mut self, event: vmo_store::Event) {
        self.last_revision = event.revision();
        let unfiltered = self.req.list.label_selector.is_empty()
            && self.req.list.field_selector.requirements.is_empty();
        let event_type = if unfiltered {
            match (event.kind, &event.prev) {
                (EventKind::Delete, _) => "DELETED",
                (EventKind::Put, None) => "ADDED",
                (EventKind::Put, Some(_)) => "MODIFIED",
            }
        } else {
            let matches = |kv: &vmo_store::KeyValue| {
                decode(kv).is_ok_and(|o| ResourceService::selected(&o, &self.req.list))
            };
            let previous_matched = event.prev.as_ref().is_some_and(matches);
            match event.kind {
                EventKind::Delete if previous_matched => "DELETED",
                EventKind::Delete => return,
                EventKind::Put => match (previous_matched, matches(&event.kv)) {
                    (true, true) => "MODIFIED",
                    (false, true) => "ADDED",
                    (true, false) => "DELETED",
                    (false, false) => return,
                },
            }
        };
        let key = (
            event.revision(),
            event.kv.key.clone(),
            event_type,
            self.req.as_table,
        );
        let (kind, as_table) = (&self.kind, self.req.as_table);
        let encoded = self.req.lines.get_or_encode(key, || {
            decode(&event.kv)
                .ok()
                .map(|o| line(kind, event_type, &o, as_table))
        });
        if let Some(bytes) = encoded {
            self.pending.push_back(bytes);
        }
    }

    fn bookmark(&self) -> Bytes {
        let object: Value = json!({
            "kind": self.kind.kind,
            "apiVersion": self.kind.api_version(),
            "metadata": {"resourceVersion": self.last_revision.max(self.watch.progress()).to_string()},
        });
        let mut bytes =
            serde_json::to_vec(&json!({"type": "BOOKMARK", "object": object})).unwrap_or_default();
        bytes.push(b'\n');
        Bytes::from(bytes)
    }
}
