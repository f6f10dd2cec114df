//! A list-then-watch cache of one kind, kept current from the API server. On a 410 (history
//! compacted) or a broken stream it lists again; it wakes its controller on every change.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use vmo_api::{KindInfo, Object};
use vmo_client::Client;

/// The cached objects of one kind, keyed by `namespace/name`.
#[derive(Debug, Clone, Default)]
pub struct Cache {
    objects: Arc<RwLock<HashMap<String, Object>>>,
    synced: Arc<std::sync::atomic::AtomicBool>,
}

impl Cache {
    /// A snapshot of every cached object.
    pub fn list(&self) -> Vec<Object> {
        self.objects
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// True once the first list has completed.
    pub fn synced(&self) -> bool {
        self.synced.load(std::sync::atomic::Ordering::Acquire)
    }
}

fn cache_key(o: &Object) -> String {
    format!("{}/{}", o.metadata.namespace, o.metadata.name)
}

/// Starts keeping `kind` cached; `changed` is notified after every change.
pub fn start(client: Client, kind: KindInfo, changed: Arc<Notify>) -> Cache {
    let cache = Cache::default();
    let task_cache = cache.clone();
    tokio::spawn(async move {
        loop {
            if let Err(e) = run(&client, &kind, &task_cache, &changed).await {
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
) -> Result<(), vmo_client::ClientError> {
    let list = client.list(kind, None, "").await?;
    {
        let mut objects = cache.objects.write().expect("cache lock");
        objects.clear();
        for o in list.items {
            objects.insert(cache_key(&o), o);
        }
    }
    cache
        .synced
        .store(true, std::sync::atomic::Ordering::Release);
    changed.notify_one();
    let mut rv = list.metadata.resource_version;
    let mut watch = client
        .watch(
            kind,
            None,
            &format!("resourceVersion={rv}&allowWatchBookmarks=true"),
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
        rv = obj.metadata.resource_version.clone();
        match event.event_type.as_str() {
            "ADDED" | "MODIFIED" => {
                cache
                    .objects
                    .write()
                    .expect("cache lock")
                    .insert(cache_key(&obj), obj);
            }
            "DELETED" => {
                cache
                    .objects
                    .write()
                    .expect("cache lock")
                    .remove(&cache_key(&obj));
            }
            _ => continue, // BOOKMARK
        }
        changed.notify_one();
    }
    let _ = rv;
    Ok(())
}
