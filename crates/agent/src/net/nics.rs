//! An instance's NICs on this node: what each one is attached to (QEMU's user-mode NAT or a tap
//! on a bridge), made before QEMU starts and removed when the instance is gone.

use super::{mac_of, Network, PodMode};
use serde_json::{json, Value};
use std::path::Path;
use vmo_api::kinds::kubevirt::VmiSpec;
use vmo_api::kinds::network::admit_attachment;
use vmo_api::kinds::settings::{ClusterSettingsSpec, CLUSTER_SETTINGS_NAME};
use vmo_api::{Object, Registry};
use vmo_client::Client;

/// One NIC as QEMU gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicPlan {
    /// The interface name in the spec (QEMU ids `net-NAME` and `nic-NAME`).
    pub name: String,
    pub mac: String,
    /// The QEMU device (`virtio-net-pci`, `e1000`, ...).
    pub device: String,
    pub backend: NicBackend,
    /// The hot-plug port it sits on (`hpN`), for a NIC plugged into the running guest; None: the
    /// machine's root bus, where NICs present at boot go.
    pub port: Option<String>,
}

/// The instance annotation naming the hot-plug port of each NIC plugged in while it ran (a
/// migration target builds the same machine from it).
pub const HOTPLUGGED_ANNOTATION: &str = "vmo.io/hotplugged-nics";

/// The hot-plug ports every machine has.
pub const HOTPLUG_PORTS: usize = 4;

/// NIC name -> hot-plug port, from the instance's annotation.
pub fn hotplugged(vmi: &Object) -> std::collections::BTreeMap<String, String> {
    vmi.metadata
        .annotations
        .get(HOTPLUGGED_ANNOTATION)
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default()
}

/// Where a NIC's frames go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NicBackend {
    /// QEMU's user-mode NAT.
    User,
    /// A tap on a host bridge.
    Tap(String),
}

/// Why NICs cannot be attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachError {
    /// Not yet: the instance waits (the node has no pod share yet, an attachment is missing).
    Wait { reason: String, message: String },
    /// Never with this spec or on this node; names the field.
    Refused { field: String, why: String },
}

/// KubeVirt's NIC models and the QEMU devices they are.
fn device_for(model: Option<&str>) -> Option<&'static str> {
    match model.unwrap_or("virtio") {
        "virtio" => Some("virtio-net-pci"),
        "e1000" => Some("e1000"),
        "e1000e" => Some("e1000e"),
        "rtl8139" => Some("rtl8139"),
        "ne2k_pci" => Some("ne2k_pci"),
        "pcnet" => Some("pcnet"),
        _ => None,
    }
}

impl Network {
    /// The prefix of every tap of instance `uid` on this node.
    fn tap_prefix(&self, uid: &str) -> String {
        format!(
            "vt{}{:06x}",
            self.tag,
            super::fnv(&[uid.as_bytes()]) & 0xff_ffff
        )
    }

    /// Attaches the instance's NICs (idempotent: an adopted or restarted instance finds its taps);
    /// interfaces marked absent are left out.
    pub async fn attach(
        &self,
        client: &Client,
        vmi: &Object,
        spec: &VmiSpec,
        run_dir: &Path,
    ) -> Result<Vec<NicPlan>, AttachError> {
        let ports = hotplugged(vmi);
        let mut settings = None;
        let mut plans = Vec::new();
        for (i, nic) in spec.domain.devices.interfaces.iter().enumerate() {
            if nic.extra.get("state").and_then(Value::as_str)
                == Some(vmo_api::kinds::hotplug::ABSENT)
            {
                continue;
            }
            let mut plan = self
                .attach_nic(client, vmi, spec, i, run_dir, &mut settings)
                .await?;
            plan.port = ports.get(&nic.name).cloned();
            plans.push(plan);
        }
        Ok(plans)
    }

    /// Attaches interface `i` of the instance; `settings` holds the cluster settings once read
    /// (read here on the first VLAN NIC that needs them).
    pub async fn attach_nic(
        &self,
        client: &Client,
        vmi: &Object,
        spec: &VmiSpec,
        i: usize,
        run_dir: &Path,
        settings: &mut Option<ClusterSettingsSpec>,
    ) -> Result<NicPlan, AttachError> {
        let nic = &spec.domain.devices.interfaces[i];
        let field = format!("spec.domain.devices.interfaces[{i}]");
        let refused = |why: String| AttachError::Refused {
            field: field.clone(),
            why,
        };
        let device = device_for(nic.model.as_deref()).ok_or_else(|| {
            refused(format!(
                "model {:?} is not supported (virtio, e1000, e1000e, rtl8139, ne2k_pci, pcnet)",
                nic.model.as_deref().unwrap_or("")
            ))
        })?;
        let Some(position) = spec.networks.iter().position(|n| n.name == nic.name) else {
            return Err(refused(format!("no network named {:?}", nic.name)));
        };
        let network = &spec.networks[position];
        let mac = mac_of(vmi, &nic.name, nic.mac_address.as_deref());
        let tap = self.tap_name(&vmi.metadata.uid, i);
        let backend = if network.pod.is_some() {
            if self.pod_mode == PodMode::User {
                NicBackend::User
            } else {
                if self.pod.share().is_none() {
                    return Err(AttachError::Wait {
                        reason: "NetworkNotReady".into(),
                        message: "this node has no share of the pod CIDR yet (the node address controller gives one)".into(),
                    });
                }
                self.pod
                    .reserve(run_dir, &mac, &vmi.metadata.name)
                    .map_err(&refused)?;
                super::links::ensure_tap(&tap, &self.pod.bridge, None)
                    .await
                    .map_err(|e| refused(e.to_string()))?;
                NicBackend::Tap(tap)
            }
        } else if let Some(multus) = &network.multus {
            if settings.is_none() {
                *settings = Some(cluster_settings(client).await);
            }
            let settings = settings.as_ref().expect("just read");
            let attachment = attachment(client, vmi, &multus.network_name).await?;
            let admitted =
                admit_attachment(&attachment, &vmi.metadata.namespace, &settings.network).map_err(
                    |why| AttachError::Refused {
                        field: format!("spec.networks[{position}].multus.networkName"),
                        why,
                    },
                )?;
            self.vlans
                .attach(&tap, &admitted, &settings.network)
                .await
                .map_err(|e| refused(e.to_string()))?;
            if admitted.macspoofchk {
                super::spoof::enforce(&tap, &mac)
                    .await
                    .map_err(|e| refused(e.to_string()))?;
            }
            NicBackend::Tap(tap)
        } else {
            return Err(refused("the network is neither pod nor multus".into()));
        };
        Ok(NicPlan {
            name: nic.name.clone(),
            mac,
            device: device.to_string(),
            backend,
            port: None,
        })
    }

    /// The tap of interface `i` of instance `uid` on this node.
    pub fn tap_name(&self, uid: &str, i: usize) -> String {
        format!("{}{i}", self.tap_prefix(uid))
    }

    /// Removes the taps and the default-network lease of instance `uid` (its run directory is
    /// `run_dir`), then any VLAN bridge left without taps.
    pub async fn detach(&self, uid: &str, run_dir: &Path) {
        if let Ok(text) = std::fs::read(run_dir.join("pod-address.json")) {
            if let Some(mac) = serde_json::from_slice::<Value>(&text)
                .ok()
                .and_then(|v| v["mac"].as_str().map(str::to_string))
            {
                self.pod.release(&mac);
            }
        }
        let prefix = self.tap_prefix(uid);
        for tap in super::links::named_with(&prefix) {
            super::spoof::release(&tap).await;
            if let Err(e) = super::links::delete(&tap).await {
                tracing::warn!(tap, error = %e, "could not remove a tap");
            }
        }
        self.vlans.prune().await;
    }

    /// The instance's tap-backed NICs on this node: (interface name, tap).
    pub fn taps_of(&self, vmi: &Object) -> Vec<(String, String)> {
        vmi.spec()["domain"]["devices"]["interfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, nic)| {
                let tap = self.tap_name(&vmi.metadata.uid, i);
                super::links::exists(&tap)
                    .then(|| (nic["name"].as_str().unwrap_or("").to_string(), tap))
            })
            .collect()
    }

    /// `status.interfaces` of the instance: name, MAC and (on the default network) its address.
    pub fn interfaces_status(&self, vmi: &Object, spec: &VmiSpec, run_dir: &Path) -> Vec<Value> {
        spec.domain
            .devices
            .interfaces
            .iter()
            .filter(|nic| {
                nic.extra.get("state").and_then(Value::as_str)
                    != Some(vmo_api::kinds::hotplug::ABSENT)
            })
            .map(|nic| {
                let mac = mac_of(vmi, &nic.name, nic.mac_address.as_deref());
                let mut status = json!({"name": nic.name, "mac": mac, "infoSource": "domain"});
                let on_pod = spec
                    .networks
                    .iter()
                    .any(|n| n.name == nic.name && n.pod.is_some());
                if on_pod {
                    if let Some(address) = self.pod.address_of(run_dir, &mac) {
                        status["ipAddress"] = json!(address.to_string());
                        status["ipAddresses"] = json!([address.to_string()]);
                    }
                }
                status
            })
            .collect()
    }
}

/// The cluster settings (defaults when there are none or they cannot be read).
async fn cluster_settings(client: &Client) -> ClusterSettingsSpec {
    let kind = *Registry::builtin()
        .resolve("clustersettings")
        .expect("cluster settings are registered");
    let found = client.get(&kind, "", CLUSTER_SETTINGS_NAME).await.ok();
    ClusterSettingsSpec::of(found.as_ref())
}

/// The attachment `name` (`ns/name`, or a name in the instance's namespace).
async fn attachment(client: &Client, vmi: &Object, name: &str) -> Result<Object, AttachError> {
    let kind = *Registry::builtin()
        .resolve("network-attachment-definitions")
        .expect("attachments are registered");
    let (namespace, short) = name
        .split_once('/')
        .unwrap_or((vmi.metadata.namespace.as_str(), name));
    match client.get(&kind, namespace, short).await {
        Ok(o) => Ok(o),
        Err(e) if e.is_not_found() => Err(AttachError::Wait {
            reason: "NetworkAttachmentNotFound".into(),
            message: format!("the NetworkAttachmentDefinition {namespace}/{short} does not exist"),
        }),
        Err(e) => Err(AttachError::Wait {
            reason: "NetworkAttachmentUnreadable".into(),
            message: format!("reading the NetworkAttachmentDefinition {namespace}/{short}: {e}"),
        }),
    }
}
