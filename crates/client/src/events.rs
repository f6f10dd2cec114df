//! Recording core v1 Events about objects, as every component reports what it did and why; `vmo get
//! events` and `vmo describe` show them. Recording never fails or delays the caller: events are
//! written in order by a background task per recorder (as Kubernetes' event broadcaster does), so a
//! VM's start does not wait on an event's round trip; one that cannot be written is logged.

use crate::{Client, ClientError};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use vmo_api::meta::now_rfc3339;
use vmo_api::{Object, Registry};

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Events waiting to be written, per recorder; beyond this (the API server unreachable for long)
/// new ones are dropped and logged rather than held without bound.
const QUEUE: usize = 1024;

/// Normal or Warning, as Kubernetes types events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// Records events for one component (`virt-controller`-like names: `vmo-vm-controller`, `vmo-agent`).
#[derive(Debug, Clone)]
pub struct Recorder {
    queue: tokio::sync::mpsc::Sender<(String, Value)>,
    component: String,
    host: String,
}

impl Recorder {
    /// A recorder writing through `client` as `component` on `host`, and its writer task (which
    /// ends when the last clone of the recorder is dropped, after writing what is queued). Must be
    /// called inside a Tokio runtime.
    pub fn new(client: Client, component: &str, host: &str) -> Self {
        let (queue, pending) = tokio::sync::mpsc::channel(QUEUE);
        tokio::spawn(write_events(client, pending));
        Self {
            queue,
            component: component.to_string(),
            host: host.to_string(),
        }
    }

    /// Queues an event about `obj`, stamped now.
    pub async fn record(&self, obj: &Object, kind: EventType, reason: &str, message: &str) {
        let (namespace, event) = self.event(obj, kind, reason, message);
        let why = match self.queue.try_send((namespace, event)) {
            Ok(()) => return,
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                "too many are waiting to be written"
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => "its writer has stopped",
        };
        tracing::warn!(object = %obj.display_name(), reason, "event dropped: {why}");
    }

    fn event(&self, obj: &Object, kind: EventType, reason: &str, message: &str) -> (String, Value) {
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
        (namespace.to_string(), event)
    }
}

/// Writes queued events in order until every recorder clone is gone.
async fn write_events(client: Client, mut pending: tokio::sync::mpsc::Receiver<(String, Value)>) {
    let events = *Registry::builtin()
        .resolve("events")
        .expect("events are registered");
    while let Some((namespace, event)) = pending.recv().await {
        let written: Result<_, ClientError> = client.create(&events, &namespace, &event).await;
        if let Err(e) = written {
            let about = event["involvedObject"]["name"].as_str().unwrap_or("");
            let reason = event["reason"].as_str().unwrap_or("");
            tracing::debug!(object = about, reason, error = %e, "could not record an event");
        }
    }
}
