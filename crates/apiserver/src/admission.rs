//! Admission checks that read other objects, run after an object's own validation on create and
//! update: a VM's NICs may join only attachments it may use and VLANs the cluster allows, a VM's
//! instance type must exist, and the default network's range may not cover a node's address. An
//! attachment that does not exist yet is accepted (manifests may be applied in any order); the
//! instance then waits for it.

use crate::service::{ListOptions, ResourceService};
use vmo_api::kinds::kubevirt::{decode_at, VmiSpec};
use vmo_api::kinds::network::{admit_attachment, Cidr};
use vmo_api::kinds::settings::{ClusterSettingsSpec, CLUSTER_SETTINGS_NAME};
use vmo_api::status::{FieldError, Status};
use vmo_api::{KindInfo, Object};

impl ResourceService {
    /// Refuses `obj` when it conflicts with objects already stored.
    pub(crate) async fn admit(&self, kind: &KindInfo, obj: &Object) -> Result<(), Status> {
        let errors = match kind.kind {
            "VirtualMachine" => {
                let mut errors = self.admit_networks(obj, "spec.template.spec").await?;
                errors.extend(self.admit_instancetype(obj).await?);
                errors
            }
            "VirtualMachineInstance" => self.admit_networks(obj, "spec").await?,
            "ClusterSettings" => self.admit_settings(obj).await?,
            _ => Vec::new(),
        };
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Status::invalid(
                kind.kind,
                kind.group,
                &obj.metadata.name,
                &errors,
            ))
        }
    }

    async fn settings(&self) -> Result<ClusterSettingsSpec, Status> {
        let kind = self.kind("clustersettings");
        match self.get(&kind, "", CLUSTER_SETTINGS_NAME).await {
            Ok(o) => Ok(ClusterSettingsSpec::of(Some(&o))),
            Err(s) if s.code == 404 => Ok(ClusterSettingsSpec::default()),
            Err(s) => Err(s),
        }
    }

    async fn admit_networks(&self, obj: &Object, path: &str) -> Result<Vec<FieldError>, Status> {
        let pointer = format!("/{}", path.replace('.', "/"));
        let Some(spec) = obj.to_value().pointer(&pointer).cloned() else {
            return Ok(Vec::new());
        };
        let Ok(spec) = decode_at::<VmiSpec>(&spec, path) else {
            return Ok(Vec::new());
        };
        let mut errors = Vec::new();
        let mut settings = None;
        let nad_kind = self.kind("network-attachment-definitions");
        for (i, network) in spec.networks.iter().enumerate() {
            let Some(multus) = &network.multus else {
                continue;
            };
            let (namespace, name) = multus
                .network_name
                .split_once('/')
                .unwrap_or((obj.metadata.namespace.as_str(), &multus.network_name));
            let nad = match self.get(&nad_kind, namespace, name).await {
                Ok(n) => n,
                Err(s) if s.code == 404 => continue,
                Err(s) => return Err(s),
            };
            if settings.is_none() {
                settings = Some(self.settings().await?);
            }
            let settings = settings.as_ref().expect("just read");
            if let Err(why) = admit_attachment(&nad, &obj.metadata.namespace, &settings.network) {
                errors.push(FieldError::invalid(
                    format!("{path}.networks[{i}].multus.networkName"),
                    &multus.network_name,
                    why,
                ));
            }
        }
        Ok(errors)
    }

    /// A VM may only name an instance type that exists, as KubeVirt refuses it: its size would
    /// otherwise be unknown until it fails to start.
    async fn admit_instancetype(&self, obj: &Object) -> Result<Vec<FieldError>, Status> {
        let Some((kind, name)) = vmo_api::kinds::instancetype::reference(obj.spec()) else {
            return Ok(Vec::new());
        };
        let Some(info) = self
            .registry()
            .resolve(&format!("{}s", kind.to_lowercase()))
        else {
            return Ok(Vec::new()); // validation names the unknown kind
        };
        let namespace = if info.namespaced {
            obj.metadata.namespace.as_str()
        } else {
            ""
        };
        match self.get(info, namespace, name).await {
            Ok(_) => Ok(Vec::new()),
            Err(s) if s.code == 404 => Ok(vec![FieldError::invalid(
                "spec.instancetype.name",
                name,
                format!("no {kind} named {name:?} exists"),
            )]),
            Err(s) => Err(s),
        }
    }

    async fn admit_settings(&self, obj: &Object) -> Result<Vec<FieldError>, Status> {
        let spec = ClusterSettingsSpec::of(Some(obj));
        let pods: Cidr = spec.network.pod_cidr();
        let nodes = self
            .list(&self.kind("nodes"), None, &ListOptions::default())
            .await?;
        let mut errors = Vec::new();
        for node in nodes.items {
            let addresses = node.status()["addresses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for a in addresses.iter().filter(|a| a["type"] == "InternalIP") {
                let Some(ip) = a["address"].as_str().and_then(|t| t.parse().ok()) else {
                    continue;
                };
                if pods.contains(ip) {
                    errors.push(FieldError::invalid(
                        "spec.network.podCIDR",
                        pods.to_string(),
                        format!(
                            "covers the address {ip} of node {}: VMs would take the node network's addresses",
                            node.metadata.name
                        ),
                    ));
                }
            }
        }
        Ok(errors)
    }

    fn kind(&self, name: &str) -> KindInfo {
        *self.registry().resolve(name).expect("a built-in kind")
    }
}
