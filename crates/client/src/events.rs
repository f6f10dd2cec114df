//! Recording core v1 Events about objects, as every component reports what it did and why; `vmo get
//! events` and `vmo describe` show them. Recording never fails or delays the caller: events are
//! written in order by a background task per recorder (as Kubernetes' event broadcaster does), so a
//! VM's start does not wait on an event's round trip; one that cannot be written is logged and
//! counted ([`dropped`], `vmo_events_dropped_total` on the server's and the agent's `/metrics`).

use crate::{Client, ClientError};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use vmo_api::meta::now_rfc3339;
use vmo_api::{Object, Registry};

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// The component every node agent records its events as (the kubelet's counterpart).
pub const AGENT_COMPONENT: &str = "vmo-agent";

/// The metric both `/metrics` pages count [`dropped`] events under, and its help text.
pub const DROPPED_METRIC: &str = "vmo_events_dropped_total";
pub const DROPPED_METRIC_HELP: &str = "Events not recorded: the queue was full, its writer had stopped, or the API server failed the write.";

/// Events this process could not record, by (component, host, why).
static DROPPED: Mutex<BTreeMap<(String, String, DropCause), u64>> = Mutex::new(BTreeMap::new());

/// Why an event was not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DropCause {
    /// Its recorder's queue was full (the API server slow or unreachable for long).
    QueueFull,
    /// Its recorder's writer task had ended (the runtime shutting down).
    WriterStopped,
    /// The API server refused or failed the write.
    WriteFailed,
}

impl DropCause {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            DropCause::QueueFull => "queue_full",
            DropCause::WriterStopped => "writer_stopped",
            DropCause::WriteFailed => "write_failed",
        }
    }
}

/// One count of events not recorded: the recorder's component and host, why, how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub component: String,
    pub host: String,
    pub cause: DropCause,
    pub count: u64,
}

/// Every event this process has not recorded so far, by component, host and cause.
pub fn dropped() -> Vec<Dropped> {
    let counts = DROPPED.lock().unwrap_or_else(|e| e.into_inner());
    counts
        .iter()
        .map(|((component, host, cause), count)| Dropped {
            component: component.clone(),
            host: host.clone(),
            cause: *cause,
            count: *count,
        })
        .collect()
}

/// Counts one event of `component` on `host` that was not recorded (recorders call this; so may a
/// component that gives up on an event before it reaches a recorder).
pub fn count_dropped(component: &str, host: &str, cause: DropCause) {
    let mut counts = DROPPED.lock().unwrap_or_else(|e| e.into_inner());
    *counts
        .entry((component.to_string(), host.to_string(), cause))
        .or_default() += 1;
}

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
        let (cause, why) = match self.queue.try_send((namespace, event)) {
            Ok(()) => return,
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                (DropCause::QueueFull, "too many are waiting to be written")
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                (DropCause::WriterStopped, "its writer has stopped")
            }
        };
        count_dropped(&self.component, &self.host, cause);
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
            let source = &event["source"];
            count_dropped(
                source["component"].as_str().unwrap_or(""),
                source["host"].as_str().unwrap_or(""),
                DropCause::WriteFailed,
            );
            tracing::debug!(object = about, reason, error = %e, "could not record an event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubeconfig::Credentials;

    fn client_of(server: String) -> Client {
        Client::new(Credentials {
            server,
            ca_pem: None,
            token: "t".into(),
            namespace: None,
        })
        .unwrap()
    }

    fn vm() -> Object {
        Object::from_value(
            json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "a", "namespace": "default", "uid": "u"}}),
        )
        .unwrap()
    }

    fn count(component: &str, cause: DropCause) -> u64 {
        dropped()
            .iter()
            .filter(|d| d.component == component && d.cause == cause)
            .map(|d| d.count)
            .sum()
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_the_overflow() {
        // A server that never answers: the writer waits on the first event, the rest queue up.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = format!("https://{}", listener.local_addr().unwrap());
        let recorder = Recorder::new(client_of(server), "test-full-queue", "h");
        for _ in 0..QUEUE + 10 {
            recorder
                .record(&vm(), EventType::Normal, "Tested", "m")
                .await;
        }
        // The writer took one off the queue (or not yet): 9 or 10 did not fit.
        let full = count("test-full-queue", DropCause::QueueFull);
        assert!((9..=10).contains(&full), "{full} counted as dropped");
        assert!(dropped()
            .iter()
            .any(|d| d.component == "test-full-queue" && d.host == "h"));
        drop(listener);
    }

    #[tokio::test]
    async fn a_failed_write_is_counted() {
        // A port nothing listens on: the write fails at once.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = format!("https://{}", free.local_addr().unwrap());
        drop(free);
        let recorder = Recorder::new(client_of(server), "test-failed-write", "");
        recorder
            .record(&vm(), EventType::Warning, "Tested", "m")
            .await;
        for _ in 0..500 {
            if count("test-failed-write", DropCause::WriteFailed) == 1 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the failed write was not counted: {:?}", dropped());
    }
}
