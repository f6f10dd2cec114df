//! The garbage collector: deletes objects whose owners are all gone (background cascade), empties an
//! owner of its dependents before it goes (foreground cascade), and strips owner references from
//! dependents of an orphaning owner. Level-triggered: every pass reads the caches afresh.

use crate::informer::{self, Cache};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use vmo_api::meta::{FOREGROUND_FINALIZER, ORPHAN_FINALIZER};
use vmo_api::{KindInfo, Object, Registry};
use vmo_client::Client;

/// Runs the garbage collector until the task is dropped.
pub async fn run(client: Client, registry: Arc<Registry>) {
    let changed = Arc::new(Notify::new());
    let caches: Vec<(KindInfo, Cache)> = registry
        .all()
        .iter()
        .filter(|k| k.kind != "Event")
        .map(|k| (*k, informer::start(client.clone(), *k, changed.clone())))
        .collect();
    loop {
        tokio::select! {
            _ = changed.notified() => tokio::time::sleep(Duration::from_millis(20)).await,
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
        if caches.iter().all(|(_, c)| c.synced()) {
            if let Err(e) = pass(&client, &registry, &caches).await {
                tracing::warn!(error = %e, "garbage collection pass failed; will retry");
                tokio::time::sleep(Duration::from_secs(1)).await;
                changed.notify_one();
            }
        }
    }
}

fn has(o: &Object, finalizer: &str) -> bool {
    o.metadata.finalizers.iter().any(|f| f == finalizer)
}

async fn pass(
    client: &Client,
    registry: &Registry,
    caches: &[(KindInfo, Cache)],
) -> Result<(), vmo_client::ClientError> {
    let all: Vec<(KindInfo, Object)> = caches
        .iter()
        .flat_map(|(k, c)| c.list().into_iter().map(move |o| (*k, o)))
        .collect();
    let by_uid: HashMap<&str, &Object> = all
        .iter()
        .map(|(_, o)| (o.metadata.uid.as_str(), o))
        .collect();
    let mut dependents: HashMap<&str, Vec<&(KindInfo, Object)>> = HashMap::new();
    for entry in &all {
        for owner in &entry.1.metadata.owner_references {
            dependents
                .entry(owner.uid.as_str())
                .or_default()
                .push(entry);
        }
    }
    // Dependents whose owners are all gone.
    for (kind, obj) in &all {
        if obj.metadata.owner_references.is_empty() || obj.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let mut all_gone = true;
        for owner in &obj.metadata.owner_references {
            if by_uid.contains_key(owner.uid.as_str())
                || owner_exists(client, registry, obj, owner).await?
            {
                all_gone = false;
                break;
            }
        }
        if all_gone {
            tracing::info!(object = %obj.display_name(), kind = kind.kind, "deleting dependent whose owners are gone");
            ignore_not_found(
                client
                    .delete(
                        kind,
                        &obj.metadata.namespace,
                        &obj.metadata.name,
                        "Background",
                    )
                    .await,
            )?;
        }
    }
    // Owners being deleted in the foreground or orphaning.
    for (kind, owner) in &all {
        if owner.metadata.deletion_timestamp.is_none() {
            continue;
        }
        let deps = dependents
            .get(owner.metadata.uid.as_str())
            .cloned()
            .unwrap_or_default();
        if has(owner, ORPHAN_FINALIZER) {
            for (dep_kind, dep) in &deps {
                let mut updated = dep.clone();
                updated
                    .metadata
                    .owner_references
                    .retain(|r| r.uid != owner.metadata.uid);
                ignore_not_found(client.update(dep_kind, &updated, None).await)?;
            }
            if deps.is_empty() {
                remove_finalizer(client, kind, owner, ORPHAN_FINALIZER).await?;
            }
        } else if has(owner, FOREGROUND_FINALIZER) {
            for (dep_kind, dep) in &deps {
                if dep.metadata.deletion_timestamp.is_none() {
                    ignore_not_found(
                        client
                            .delete(
                                dep_kind,
                                &dep.metadata.namespace,
                                &dep.metadata.name,
                                "Foreground",
                            )
                            .await,
                    )?;
                }
            }
            if deps.is_empty() {
                remove_finalizer(client, kind, owner, FOREGROUND_FINALIZER).await?;
            }
        }
    }
    Ok(())
}

async fn owner_exists(
    client: &Client,
    registry: &Registry,
    dependent: &Object,
    owner: &vmo_api::meta::OwnerReference,
) -> Result<bool, vmo_client::ClientError> {
    let Some(kind) = registry.by_kind(&owner.api_version, &owner.kind) else {
        return Ok(false); // an owner of a kind vmo does not serve can never exist
    };
    let namespace = if kind.namespaced {
        dependent.metadata.namespace.as_str()
    } else {
        ""
    };
    match client.get(kind, namespace, &owner.name).await {
        Ok(found) => Ok(found.metadata.uid == owner.uid),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

async fn remove_finalizer(
    client: &Client,
    kind: &KindInfo,
    obj: &Object,
    finalizer: &str,
) -> Result<(), vmo_client::ClientError> {
    let mut updated = obj.clone();
    updated.metadata.finalizers.retain(|f| f != finalizer);
    ignore_not_found(client.update(kind, &updated, None).await)
}

fn ignore_not_found<T>(
    r: Result<T, vmo_client::ClientError>,
) -> Result<(), vmo_client::ClientError> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
        Err(e) => Err(e),
    }
}
