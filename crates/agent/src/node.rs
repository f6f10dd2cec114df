//! Node registration and heartbeats: the Node object (labels, capacity, conditions) and the Lease
//! the node lifecycle controller watches to tell a live agent from a dead one.

use crate::{AgentConfig, HostFacts};
use serde_json::{json, Value};
use std::time::Duration;
use vmo_api::kinds::coordination::NODE_LEASE_NAMESPACE;
use vmo_api::kinds::core::{
    AGENT_CERT_ANNOTATION, AGENT_ENDPOINT_ANNOTATION, MACHINE_POOL_LABEL, SHARED_POOL_ANNOTATION,
    ZONE_LABEL,
};
use vmo_api::kinds::network::{POD_NETWORK_ANNOTATION, VLAN_DATAPATH_ANNOTATION};
use vmo_api::meta::{now_rfc3339, now_rfc3339_micros};
use vmo_api::{KindInfo, Object, Registry};
use vmo_client::{Client, ClientError};

/// Status is rewritten at least this often even when nothing changed (a readable heartbeat).
const STATUS_REFRESH: Duration = Duration::from_secs(60);

/// Where the server reaches this agent's endpoint, and the certificate it must present.
#[derive(Debug, Clone)]
pub(crate) struct AdvertisedEndpoint {
    pub url: String,
    pub port: u16,
    pub fingerprint: String,
}

pub(crate) struct Reporter {
    client: Client,
    config: AgentConfig,
    facts: HostFacts,
    node_kind: KindInfo,
    lease_kind: KindInfo,
    accel: crate::vm::plan::Accel,
    endpoint: AdvertisedEndpoint,
    /// The default network's and the VLAN networks' datapaths.
    datapaths: (&'static str, &'static str),
}

impl Reporter {
    pub(crate) fn new(
        client: Client,
        config: AgentConfig,
        facts: HostFacts,
        accel: crate::vm::plan::Accel,
        endpoint: AdvertisedEndpoint,
        network: &crate::net::Network,
    ) -> Self {
        let registry = Registry::builtin();
        Self {
            client,
            config,
            facts,
            node_kind: *registry.resolve("nodes").expect("nodes are registered"),
            lease_kind: *registry.resolve("leases").expect("leases are registered"),
            accel,
            endpoint,
            datapaths: (
                match network.pod_mode {
                    crate::net::PodMode::Bridge => "bridge",
                    crate::net::PodMode::User => "user",
                },
                network.vlan_datapath.name(),
            ),
        }
    }

    /// The agent's annotations; with `for_patch`, an absent shared pool is a `null` that removes
    /// the annotation a previous run set (a new Node must not carry nulls).
    fn annotations(&self, for_patch: bool) -> Value {
        let mut annotations = json!({
            AGENT_ENDPOINT_ANNOTATION: self.endpoint.url,
            AGENT_CERT_ANNOTATION: self.endpoint.fingerprint,
            POD_NETWORK_ANNOTATION: self.datapaths.0,
            VLAN_DATAPATH_ANNOTATION: self.datapaths.1,
        });
        match &self.config.shared_pool {
            Some(pool) => annotations[SHARED_POOL_ANNOTATION] = json!(pool.display().to_string()),
            None if for_patch => annotations[SHARED_POOL_ANNOTATION] = Value::Null,
            None => {}
        }
        annotations
    }

    fn labels(&self) -> Value {
        let mut labels = json!({
            "kubernetes.io/hostname": self.config.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": self.facts.architecture,
            ZONE_LABEL: self.config.zone,
            MACHINE_POOL_LABEL: self.config.pool,
            "vmo.io/kvm-device": if self.facts.kvm_device { "present" } else { "absent" },
            "vmo.io/accelerator": match self.accel {
                crate::vm::plan::Accel::Kvm => "kvm",
                crate::vm::plan::Accel::Tcg => "tcg",
            },
        });
        if let Some(v) = &self.facts.qemu_version {
            labels["vmo.io/qemu-version"] = json!(v);
        }
        labels
    }

    fn status(&self, previous: Option<&Object>) -> Value {
        let allocatable_memory = self
            .facts
            .memory_bytes
            .saturating_sub(self.config.reserved_memory_bytes);
        let now = now_rfc3339();
        let was_ready = previous.and_then(|n| vmo_api::kinds::core::node_condition(n, "Ready"));
        let transition = match (was_ready.as_deref(), previous) {
            (Some("True"), Some(n)) => n.status()["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                .and_then(|c| c["lastTransitionTime"].as_str())
                .unwrap_or(&now)
                .to_string(),
            _ => now.clone(),
        };
        let runtime = match &self.facts.qemu_version {
            Some(v) => format!("qemu://{v}"),
            None => "qemu://not-installed".into(),
        };
        let mut addresses = vec![json!({"type": "Hostname", "address": self.facts.hostname})];
        if let Some(ip) = &self.facts.internal_ip {
            addresses.push(json!({"type": "InternalIP", "address": ip}));
        }
        json!({
            "capacity": {
                "cpu": self.facts.cpus.to_string(),
                "memory": format!("{}Ki", self.facts.memory_bytes / 1024),
            },
            "allocatable": {
                "cpu": self.facts.cpus.to_string(),
                "memory": format!("{}Ki", allocatable_memory / 1024),
            },
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "AgentReady",
                "message": "vmo agent is posting ready status",
                "lastHeartbeatTime": now,
                "lastTransitionTime": transition,
            }],
            "addresses": addresses,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.endpoint.port}},
            "nodeInfo": {
                "machineID": self.facts.machine_id,
                "kernelVersion": self.facts.kernel_version,
                "osImage": self.facts.os_image,
                "operatingSystem": "linux",
                "architecture": self.facts.architecture,
                "kubeletVersion": format!("vmo-{}", env!("CARGO_PKG_VERSION")),
                "containerRuntimeVersion": runtime,
            },
        })
    }

    /// Creates the Node if needed, sets the agent's labels, and writes its status.
    async fn register(&self) -> Result<Object, ClientError> {
        let name = &self.config.node_name;
        let existing = match self.client.get(&self.node_kind, "", name).await {
            Ok(n) => Some(n),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        let node = match existing {
            Some(n) => {
                let patch = json!({"metadata": {"labels": self.labels(), "annotations": self.annotations(true)}});
                self.client
                    .patch(
                        &self.node_kind,
                        "",
                        name,
                        "application/merge-patch+json",
                        serde_json::to_vec(&patch).unwrap_or_default(),
                        "fieldManager=vmo-agent",
                    )
                    .await?;
                n
            }
            None => {
                let created = self
                    .client
                    .create(
                        &self.node_kind,
                        "",
                        &json!({
                            "apiVersion": "v1", "kind": "Node",
                            "metadata": {"name": name, "labels": self.labels(), "annotations": self.annotations(false)},
                            "spec": {},
                        }),
                    )
                    .await;
                match created {
                    Ok(n) => n,
                    Err(e) if e.is_conflict() => self.client.get(&self.node_kind, "", name).await?,
                    Err(e) => return Err(e),
                }
            }
        };
        self.write_status(Some(&node)).await
    }

    async fn write_status(&self, previous: Option<&Object>) -> Result<Object, ClientError> {
        let patch = json!({"status": self.status(previous)});
        self.client
            .merge_patch(
                &self.node_kind,
                "",
                &self.config.node_name,
                Some("status"),
                &patch,
                "vmo-agent",
            )
            .await
    }

    /// Renews (or creates) the heartbeat Lease.
    async fn renew_lease(&self, node: &Object) -> Result<(), ClientError> {
        renew_node_lease(
            &self.client,
            &self.lease_kind,
            &self.config.node_name,
            &node.metadata.uid,
            self.config.lease_duration,
            "vmo-agent",
        )
        .await
    }

    /// Registers, then heartbeats forever; every failure is logged and retried.
    pub(crate) async fn run(&self) {
        let mut node: Option<Object> = None;
        let mut last_status = tokio::time::Instant::now();
        loop {
            let step = async {
                let current = match &node {
                    // Read the Node again: the lifecycle controller may have marked it Unknown.
                    Some(_) => {
                        self.client
                            .get(&self.node_kind, "", &self.config.node_name)
                            .await?
                    }
                    None => self.register().await?,
                };
                self.renew_lease(&current).await?;
                let ready = vmo_api::kinds::core::node_condition(&current, "Ready");
                if ready.as_deref() != Some("True") || last_status.elapsed() >= STATUS_REFRESH {
                    let written = self.write_status(Some(&current)).await?;
                    last_status = tokio::time::Instant::now();
                    return Ok::<Object, ClientError>(written);
                }
                Ok(current)
            };
            match step.await {
                Ok(n) => node = Some(n),
                Err(e) => {
                    tracing::warn!(node = %self.config.node_name, error = %e, "node heartbeat failed; retrying");
                    node = None;
                }
            }
            tokio::time::sleep(self.config.heartbeat_interval).await;
        }
    }
}

/// Renews node `name`'s heartbeat Lease, or creates it owned by the Node (uid `node_uid`) so it
/// goes when the Node goes. The agent and the simulated agents heartbeat alike.
pub(crate) async fn renew_node_lease(
    client: &Client,
    lease_kind: &KindInfo,
    name: &str,
    node_uid: &str,
    duration: Duration,
    manager: &str,
) -> Result<(), ClientError> {
    let spec = json!({
        "holderIdentity": name,
        "leaseDurationSeconds": duration.as_secs().max(1),
        "renewTime": now_rfc3339_micros(),
    });
    let patch = json!({"spec": spec});
    match client
        .merge_patch(
            lease_kind,
            NODE_LEASE_NAMESPACE,
            name,
            None,
            &patch,
            manager,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => {
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {
                    "name": name, "namespace": NODE_LEASE_NAMESPACE,
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid}],
                },
                "spec": spec,
            });
            match client
                .create(lease_kind, NODE_LEASE_NAMESPACE, &lease)
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if e.is_conflict() => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}
