//! A list-then-watch cache of one kind, kept current from the API server. On a 410 (history
//! compacted) or a broken stream it lists again. It wakes its controller only for changes the
//! controller declared relevant, so a busy kind does not make an idle controller spin.

use crate::Client;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use vmo_api::{KindInfo, Object};

/// Decides whether a change (`"ADDED"`, `"MODIFIED"`, `"DELETED"`) should wake the controller.
pub type Relevance = fn(&str, &Object) -> bool;

/// Every change is relevant.
pub fn every_change(_: &str, _: &Object) -> bool {
    true
}

#[derive(Debug, Default)]
struct Index {
    /// `namespace/name` -> object.
    objects: HashMap<String, Object>,
    /// uid -> `namespace/name`.
    uids: HashMap<String, String>,
}

impl Index {
    fn insert(&mut self, obj: Object) {
        let key = cache_key(&obj);
        if let Some(old) = self.objects.get(&key) {
            self.uids.remove(&old.metadata.uid);
        }
        self.uids.insert(obj.metadata.uid.clone(), key.clone());
        self.objects.insert(key, obj);
    }

    fn remove(&mut self, obj: &Object) {
        if let Some(old) = self.objects.remove(&cache_key(obj)) {
            self.uids.remove(&old.metadata.uid);
        }
    }
}

/// The cached objects of one kind.
#[derive(Debug, Clone, Default)]
pub struct Cache {
    index: Arc<RwLock<Index>>,
    synced: Arc<AtomicBool>,
}

impl Cache {
    /// A copy of every cached object.
    pub fn list(&self) -> Vec<Object> {
        self.select(|_| true)
    }

    /// Copies of the cached objects that pass `filter` (the others are not copied).
    pub fn select(&self, filter: impl Fn(&Object) -> bool) -> Vec<Object> {
        self.index
            .read()
            .map(|i| i.objects.values().filter(|o| filter(o)).cloned().collect())
            .unwrap_or_default()
    }

    /// Calls `f` with every cached object, copying none (the cache is read-locked meanwhile, so
    /// `f` should be quick and must not wait).
    pub fn visit(&self, mut f: impl FnMut(&Object)) {
        if let Ok(index) = self.index.read() {
            index.objects.values().for_each(&mut f);
        }
    }

    /// The cached object with this uid.
    pub fn get_by_uid(&self, uid: &str) -> Option<Object> {
        let index = self.index.read().ok()?;
        index
            .uids
            .get(uid)
            .and_then(|k| index.objects.get(k))
            .cloned()
    }

    /// True once the first list has completed.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}

fn cache_key(o: &Object) -> String {
    format!("{}/{}", o.metadata.namespace, o.metadata.name)
}

/// Starts keeping `kind` cached; `changed` is notified after each relevant change.
pub fn start(client: Client, kind: KindInfo, changed: Arc<Notify>, relevant: Relevance) -> Cache {
    let cache = Cache::default();
    let task_cache = cache.clone();
    tokio::spawn(async move {
        loop {
            if let Err(e) = run(&client, &kind, &task_cache, &changed, relevant).await {
                tracing::debug!(kind = kind.kind, error = %e, "informer restarting");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    cache
}

async fn run(
    client: &Client,
    kind: &KindInfo,
    cache: &Cache,
    changed: &Notify,
    relevant: Relevance,
) -> Result<(), crate::ClientError> {
    tracing::debug!(kind = kind.kind, "informer listing");
    let list = client.list(kind, None, "").await?;
    tracing::debug!(
        kind = kind.kind,
        items = list.items.len(),
        "informer listed"
    );
    {
        let mut index = cache.index.write().expect("cache lock");
        *index = Index::default();
        for o in list.items {
            index.insert(o);
        }
    }
    cache.synced.store(true, Ordering::Release);
    changed.notify_one();
    let mut watch = client
        .watch(
            kind,
            None,
            &format!(
                "resourceVersion={}&allowWatchBookmarks=true",
                list.metadata.resource_version
            ),
        )
        .await?;
    while let Some(event) = watch.next().await {
        let event = event?;
        if event.event_type == "ERROR" {
            return Ok(()); // typically 410: list again
        }
        let Ok(obj) = Object::from_value(event.object) else {
            continue;
        };
        let wake = match event.event_type.as_str() {
            "ADDED" | "MODIFIED" => {
                let wake = relevant(&event.event_type, &obj);
                cache.index.write().expect("cache lock").insert(obj);
                wake
            }
            "DELETED" => {
                let wake = relevant(&event.event_type, &obj);
                cache.index.write().expect("cache lock").remove(&obj);
                wake
            }
            _ => false, // BOOKMARK
        };
        if wake {
            changed.notify_one();
        }
    }
    Ok(())
}
