//! Recording core v1 Events about objects, as every component reports what it did and why; `vmo get
//! events` and `vmo describe` show them. Recording never fails the caller: a lost event is logged.

use crate::{Client, ClientError};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use vmo_api::meta::now_rfc3339;
use vmo_api::{Object, Registry};

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Normal or Warning, as Kubernetes types events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// Records events for one component (`virt-controller`-like names: `vmo-vm-controller`, `vmo-agent`).
#[derive(Debug, Clone)]
pub struct Recorder {
    client: Client,
    component: String,
    host: String,
}

impl Recorder {
    /// A recorder writing through `client` as `component` on `host`.
    pub fn new(client: Client, component: &str, host: &str) -> Self {
        Self {
            client,
            component: component.to_string(),
            host: host.to_string(),
        }
    }

    /// Records an event about `obj`.
    pub async fn record(&self, obj: &Object, kind: EventType, reason: &str, message: &str) {
        if let Err(e) = self.try_record(obj, kind, reason, message).await {
            tracing::debug!(object = %obj.display_name(), reason, error = %e, "could not record an event");
        }
    }

    async fn try_record(
        &self,
        obj: &Object,
        kind: EventType,
        reason: &str,
        message: &str,
    ) -> Result<(), ClientError> {
        let events = *Registry::builtin()
            .resolve("events")
            .expect("events are registered");
        let namespace = if obj.metadata.namespace.is_empty() {
            "default"
        } else {
            &obj.metadata.namespace
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let unique =
            nanos ^ (SEQUENCE.fetch_add(1, Ordering::Relaxed) << 48) ^ std::process::id() as u64;
        let now = now_rfc3339();
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": format!("{}.{unique:x}", obj.metadata.name), "namespace": namespace},
            "involvedObject": {
                "apiVersion": obj.api_version, "kind": obj.kind, "name": obj.metadata.name,
                "namespace": obj.metadata.namespace, "uid": obj.metadata.uid,
                "resourceVersion": obj.metadata.resource_version,
            },
            "reason": reason,
            "message": message,
            "type": match kind { EventType::Normal => "Normal", EventType::Warning => "Warning" },
            "source": {"component": self.component, "host": self.host},
            "reportingComponent": self.component,
            "reportingInstance": self.host,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        self.client
            .create(&events, namespace, &event)
            .await
            .map(|_| ())
    }
}
