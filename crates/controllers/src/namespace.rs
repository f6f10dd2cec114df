//! The namespace controller: a namespace being deleted is emptied of every namespaced object, then
//! its `kubernetes` finalizer is removed so it can go.

use crate::informer;
use http::Method;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use vmo_api::kinds::core::NAMESPACE_FINALIZER;
use vmo_api::{Object, Registry};
use vmo_client::{Client, ClientError};

/// Runs the namespace controller until the task is dropped.
pub async fn run(client: Client, registry: Arc<Registry>) {
    let changed = Arc::new(Notify::new());
    let ns_kind = *registry
        .resolve("namespaces")
        .expect("namespaces are registered");
    let namespaces = informer::start(
        client.clone(),
        ns_kind,
        changed.clone(),
        informer::every_change,
    );
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        for ns in namespaces.list() {
            if ns.metadata.deletion_timestamp.is_some() {
                if let Err(e) = empty(&client, &registry, &ns).await {
                    tracing::warn!(namespace = %ns.metadata.name, error = %e, "emptying namespace failed; will retry");
                }
            }
        }
    }
}

async fn empty(client: &Client, registry: &Registry, ns: &Object) -> Result<(), ClientError> {
    let name = &ns.metadata.name;
    let mut remaining = 0;
    for kind in registry.all().iter().filter(|k| k.namespaced) {
        let list = client.list(kind, Some(name), "").await?;
        for obj in list.items {
            remaining += 1;
            if obj.metadata.deletion_timestamp.is_none() {
                match client
                    .delete(kind, name, &obj.metadata.name, "Background")
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    let has_finalizer = ns
        .spec()
        .get("finalizers")
        .and_then(|f| f.as_array())
        .is_some_and(|f| f.iter().any(|x| x == NAMESPACE_FINALIZER));
    if remaining == 0 && has_finalizer {
        let body = serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name}, "spec": {"finalizers": []}
        });
        client
            .call(
                Method::PUT,
                &format!("/api/v1/namespaces/{name}/finalize"),
                Some((
                    "application/json",
                    serde_json::to_vec(&body).unwrap_or_default(),
                )),
                "application/json",
            )
            .await?;
    }
    Ok(())
}
