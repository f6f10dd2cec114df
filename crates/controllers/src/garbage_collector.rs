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
use vmo_client::{Client, ClientError};

/// Runs the garbage collector until the task is dropped.
pub async fn run(client: Client, registry: Arc<Registry>) {
    let changed = Arc::new(Notify::new());
    let caches: Vec<(KindInfo, Cache)> = registry
        .all()
        .iter()
        .map(|k| {
            (
                *k,
                informer::start(client.clone(), *k, changed.clone(), relevant),
            )
        })
        .collect();
    loop {
        tokio::select! {
            _ = changed.notified() => tokio::time::sleep(Duration::from_millis(20)).await,
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
        if caches.iter().all(|(_, c)| c.synced()) {
            let failures = pass(&client, &registry, &caches).await;
            if failures > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                changed.notify_one();
            }
        }
    }
}

/// The collector wakes when anything disappears, a dependent appears, or a deletion starts. A
/// dependent's other updates (a lease renewal, an instance's status) do not wake it: with hundreds of
/// nodes they meant a pass per renewal; an owner reference edited later is seen by the periodic pass.
fn relevant(event: &str, o: &Object) -> bool {
    match event {
        "DELETED" => true,
        "ADDED" => involved(o),
        _ => o.metadata.deletion_timestamp.is_some(),
    }
}

/// Objects a pass looks at: dependents and objects being deleted.
fn involved(o: &Object) -> bool {
    !o.metadata.owner_references.is_empty() || o.metadata.deletion_timestamp.is_some()
}

fn has(o: &Object, finalizer: &str) -> bool {
    o.metadata.finalizers.iter().any(|f| f == finalizer)
}

/// Logs a failed step; 404 and 409 mean another writer got there first and the next pass decides.
fn record(failures: &mut usize, what: &str, obj: &Object, r: Result<Object, ClientError>) {
    match r {
        Ok(_) => {}
        Err(e) if e.is_not_found() || e.is_conflict() => {}
        Err(e) => {
            *failures += 1;
            tracing::warn!(object = %obj.display_name(), error = %e, "garbage collector could not {what}");
        }
    }
}

/// One level-triggered pass over the caches; returns how many steps failed (retried soon).
async fn pass(client: &Client, registry: &Registry, caches: &[(KindInfo, Cache)]) -> usize {
    let mut failures = 0;
    let all: Vec<(KindInfo, Object)> = caches
        .iter()
        .flat_map(|(k, c)| c.select(involved).into_iter().map(move |o| (*k, o)))
        .collect();
    let lookup = |uid: &str| caches.iter().find_map(|(_, c)| c.get_by_uid(uid));
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
            let exists = lookup(&owner.uid).is_some()
                || match owner_exists(client, registry, obj, owner).await {
                    Ok(found) => found,
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(object = %obj.display_name(), error = %e, "cannot check an owner");
                        true
                    }
                };
            if exists {
                all_gone = false;
                break;
            }
        }
        if all_gone {
            tracing::info!(object = %obj.display_name(), kind = kind.kind, "deleting dependent whose owners are gone");
            let r = client
                .delete_with_uid(
                    kind,
                    &obj.metadata.namespace,
                    &obj.metadata.name,
                    "Background",
                    Some(&obj.metadata.uid),
                )
                .await;
            record(&mut failures, "delete a dependent", obj, r);
        }
    }
    // Owners being deleted in the foreground or orphaning.
    for (kind, owner) in &all {
        if owner.metadata.deletion_timestamp.is_none() {
            continue;
        }
        let orphaning = has(owner, ORPHAN_FINALIZER);
        if !orphaning && !has(owner, FOREGROUND_FINALIZER) {
            continue;
        }
        let deps = dependents
            .get(owner.metadata.uid.as_str())
            .cloned()
            .unwrap_or_default();
        for (dep_kind, dep) in &deps {
            // A dependent another live owner still holds only loses this owner's reference.
            let other_live_owner = dep.metadata.owner_references.iter().any(|r| {
                r.uid != owner.metadata.uid
                    && lookup(&r.uid).is_some_and(|o| o.metadata.deletion_timestamp.is_none())
            });
            if orphaning || other_live_owner {
                let mut updated = dep.clone();
                updated
                    .metadata
                    .owner_references
                    .retain(|r| r.uid != owner.metadata.uid);
                let r = client.update(dep_kind, &updated, None).await;
                record(&mut failures, "remove an owner reference", dep, r);
            } else if dep.metadata.deletion_timestamp.is_none() {
                let r = client
                    .delete_with_uid(
                        dep_kind,
                        &dep.metadata.namespace,
                        &dep.metadata.name,
                        "Foreground",
                        Some(&dep.metadata.uid),
                    )
                    .await;
                record(&mut failures, "delete a dependent", dep, r);
            }
        }
        if deps.is_empty() {
            let finalizer = if orphaning {
                ORPHAN_FINALIZER
            } else {
                FOREGROUND_FINALIZER
            };
            let r = client.remove_finalizer(kind, owner, finalizer).await;
            record(&mut failures, "remove its finalizer", owner, r);
        }
    }
    failures
}

async fn owner_exists(
    client: &Client,
    registry: &Registry,
    dependent: &Object,
    owner: &vmo_api::meta::OwnerReference,
) -> Result<bool, ClientError> {
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
