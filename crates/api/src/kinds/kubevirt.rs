//! `kubevirt.io/v1` VirtualMachine and VirtualMachineInstance: the KubeVirt schema as typed structs
//! (unknown fields kept in `extra` maps so nothing a user wrote is dropped) and their validation.
//!
//! Validation first decodes with path tracking (a wrong type names its field), then checks meaning:
//! quantities, enums, references between disks and volumes and between interfaces and networks. Every
//! semantic problem is collected, so one 422 names every bad field.

use super::{
    at, condition_status, no_prepare, no_update_validation, text_at, Column, KindInfo, AGE_COLUMN,
    NAME_COLUMN,
};
use crate::object::Object;
use crate::status::FieldError;
use crate::validation;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashSet};

/// The API group and version.
pub const API_VERSION: &str = "kubevirt.io/v1";

/// Largest inline cloud-init user or network data.
pub const CLOUD_INIT_MAX_BYTES: usize = 64 * 1024;

pub(super) fn kinds() -> Vec<KindInfo> {
    vec![
        KindInfo {
            group: "kubevirt.io",
            version: "v1",
            kind: "VirtualMachine",
            plural: "virtualmachines",
            singular: "virtualmachine",
            short_names: &["vm", "vms"],
            categories: &["all"],
            namespaced: true,
            status_subresource: true,
            name_is_label: false,
            field_selectors: &["status.printableStatus"],
            columns: &[
                NAME_COLUMN,
                AGE_COLUMN,
                Column {
                    name: "Status",
                    kind: "string",
                    priority: 0,
                    description: "Human readable status",
                    cell: |o| text_at(o, &["status", "printableStatus"]),
                },
                Column {
                    name: "Ready",
                    kind: "string",
                    priority: 0,
                    description: "Whether the VM's instance is ready",
                    cell: |o| condition_status(o, "Ready"),
                },
            ],
            validate: validate_vm,
            validate_update: no_update_validation,
            prepare: no_prepare,
        },
        KindInfo {
            group: "kubevirt.io",
            version: "v1",
            kind: "VirtualMachineInstance",
            plural: "virtualmachineinstances",
            singular: "virtualmachineinstance",
            short_names: &["vmi", "vmis"],
            categories: &["all"],
            namespaced: true,
            status_subresource: true,
            name_is_label: false,
            field_selectors: &["status.nodeName", "status.phase"],
            columns: &[
                NAME_COLUMN,
                AGE_COLUMN,
                Column {
                    name: "Phase",
                    kind: "string",
                    priority: 0,
                    description: "Lifecycle phase",
                    cell: |o| text_at(o, &["status", "phase"]),
                },
                Column {
                    name: "IP",
                    kind: "string",
                    priority: 0,
                    description: "IP address of the first interface",
                    cell: |o| {
                        at(o, &["status", "interfaces"])
                            .and_then(|i| i.get(0))
                            .and_then(|i| i.get("ipAddress"))
                            .cloned()
                            .unwrap_or(Value::String(String::new()))
                    },
                },
                Column {
                    name: "NodeName",
                    kind: "string",
                    priority: 0,
                    description: "Node the instance runs on",
                    cell: |o| text_at(o, &["status", "nodeName"]),
                },
                Column {
                    name: "Ready",
                    kind: "string",
                    priority: 0,
                    description: "Whether the instance is ready",
                    cell: |o| condition_status(o, "Ready"),
                },
                Column {
                    name: "Live-Migratable",
                    kind: "string",
                    priority: 1,
                    description: "Whether the instance can be live-migrated",
                    cell: |o| condition_status(o, "LiveMigratable"),
                },
                Column {
                    name: "Paused",
                    kind: "string",
                    priority: 1,
                    description: "Whether the instance is paused",
                    cell: |o| condition_status(o, "Paused"),
                },
            ],
            validate: validate_vmi,
            validate_update: no_update_validation,
            prepare: no_prepare,
        },
    ]
}

/// A quantity field as written: a string, or a plain number, kept as text and parsed in validation.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct QuantityText(pub String);

impl<'de> Deserialize<'de> for QuantityText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Self(s)),
            Value::Number(n) => Ok(Self(n.to_string())),
            other => Err(serde::de::Error::custom(format!(
                "expected a quantity string, found {}",
                crate::decode::type_name(&other)
            ))),
        }
    }
}

/// `spec` of a VirtualMachine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateSpec>,
    /// DataVolumes the VM owns: created with it (named by their metadata), deleted with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_volume_templates: Vec<DataVolumeTemplate>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One of a VirtualMachine's `dataVolumeTemplates`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeTemplate {
    #[serde(default)]
    pub metadata: DataVolumeTemplateMeta,
    #[serde(default)]
    pub spec: super::cdi::DataVolumeSpec,
}

/// Name, labels and annotations of a DataVolume made from a template.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeTemplateMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The VMI template inside a VirtualMachine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMeta>,
    #[serde(default)]
    pub spec: VmiSpec,
}

/// Labels and annotations a template gives its instances.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMeta {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `spec` of a VirtualMachineInstance (and of a VM's template).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmiSpec {
    #[serde(default)]
    pub domain: DomainSpec,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Network>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<super::affinity::Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eviction_strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl VmiSpec {
    /// The guest's memory in bytes, from `domain.memory.guest`, else
    /// `domain.resources.requests.memory`; an error names the field (under `spec.`) and why.
    pub fn guest_memory_bytes(&self) -> Result<u64, FieldError> {
        let domain = &self.domain;
        let (field, text) = match (
            domain.memory.as_ref().and_then(|m| m.guest.as_ref()),
            domain
                .resources
                .as_ref()
                .and_then(|r| r.requests.get("memory")),
        ) {
            (Some(g), _) => ("spec.domain.memory.guest", &g.0),
            (None, Some(r)) => ("spec.domain.resources.requests.memory", &r.0),
            (None, None) => {
                return Err(FieldError::required(
                    "spec.domain.memory.guest",
                    "no memory requested",
                ))
            }
        };
        crate::quantity::Quantity::parse(text)
            .ok()
            .and_then(|q| q.value_ceil())
            .filter(|b| *b > 0)
            .and_then(|b| u64::try_from(b).ok())
            .ok_or_else(|| {
                FieldError::invalid(field, text, format!("{text:?} is not a memory size"))
            })
    }
}

/// The virtual hardware.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    #[serde(default)]
    pub devices: Devices,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// CPU topology.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cpu {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sockets: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Guest memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<QuantityText>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Resource requests and limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, QuantityText>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, QuantityText>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Attached devices.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Devices {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<Disk>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A disk device, bound by name to a volume.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdrom: Option<DiskTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lun: Option<DiskTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_order: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Bus and flags of a disk, cdrom or lun.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A network interface, bound by name to a network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masquerade: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sriov: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_order: Option<u32>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Firmware: BIOS or UEFI, and direct kernel boot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Firmware {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootloader: Option<Bootloader>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_boot: Option<KernelBoot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Exactly one of `bios` or `efi`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bootloader {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bios: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efi: Option<Efi>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// UEFI options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Efi {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Direct kernel boot: KubeVirt takes kernel and initrd from a container image; vmo reads the same
/// `kernelPath` and `initrdPath` as paths on the node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KernelBoot {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_args: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<KernelBootContainer>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Where the kernel and initrd come from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KernelBootContainer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Machine type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub machine_type: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A volume: where a disk's data comes from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_disk: Option<HostDisk>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_disk: Option<EmptyDisk>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init_no_cloud: Option<CloudInitNoCloud>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<ClaimVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_volume: Option<DataVolumeVolumeSource>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Volume {
    /// The claim this volume's data lives in (`persistentVolumeClaim`, the claim a `dataVolume`
    /// owns, which has its name, or the claim an `ephemeral` overlay reads).
    pub fn claim_name(&self) -> Option<&str> {
        self.persistent_volume_claim
            .as_ref()
            .map(|c| c.claim_name.as_str())
            .or_else(|| self.data_volume.as_ref().map(|d| d.name.as_str()))
            .or_else(|| self.ephemeral.as_ref()?["persistentVolumeClaim"]["claimName"].as_str())
    }
}

/// `persistentVolumeClaim`: a claim in the VM's namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimVolumeSource {
    #[serde(default)]
    pub claim_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `dataVolume`: a DataVolume in the VM's namespace, used once it succeeded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeVolumeSource {
    #[serde(default)]
    pub name: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A disk image at a path on the node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostDisk {
    #[serde(default)]
    pub path: String,
    #[serde(default, rename = "type")]
    pub disk_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<QuantityText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A blank scratch disk that lives as long as the instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDisk {
    #[serde(default)]
    pub capacity: QuantityText,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A NoCloud cloud-init seed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudInitNoCloud {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data_secret_ref: Option<LocalObjectReference>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A reference to an object in the same namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LocalObjectReference {
    #[serde(default)]
    pub name: String,
}

/// A network a VM's interface connects to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multus: Option<MultusNetwork>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A secondary network by NetworkAttachmentDefinition name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MultusNetwork {
    #[serde(default)]
    pub network_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Permission to run on a tainted node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Toleration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<i64>,
}

/// The run strategy in effect for a VirtualMachine: `spec.runStrategy`, or the legacy
/// `spec.running` (true is Always, false or absent is Halted).
pub fn run_strategy(vm: &Object) -> String {
    let spec = vm.spec();
    if let Some(s) = spec["runStrategy"].as_str() {
        return s.to_string();
    }
    match spec["running"].as_bool() {
        Some(true) => "Always".into(),
        _ => "Halted".into(),
    }
}

/// Run strategies a VirtualMachine accepts.
pub const RUN_STRATEGIES: &[&str] = &["Always", "RerunOnFailure", "Manual", "Halted", "Once"];
/// Eviction strategies.
pub const EVICTION_STRATEGIES: &[&str] =
    &["None", "LiveMigrate", "LiveMigrateIfPossible", "External"];
const DISK_BUSES: &[&str] = &["virtio", "sata", "scsi", "usb"];
const CDROM_BUSES: &[&str] = &["sata", "scsi"];
const NIC_MODELS: &[&str] = &["virtio", "e1000", "e1000e", "rtl8139", "ne2k_pci", "pcnet"];
const VOLUME_SOURCES: &[&str] = &[
    "hostDisk",
    "emptyDisk",
    "ephemeral",
    "cloudInitNoCloud",
    "containerDisk",
    "cloudInitConfigDrive",
    "persistentVolumeClaim",
    "dataVolume",
    "configMap",
    "secret",
    "serviceAccount",
    "downwardAPI",
    "downwardMetrics",
    "sysprep",
    "memoryDump",
];

/// Decodes a typed value from part of an object, naming the field on a type error.
pub fn decode_at<T: serde::de::DeserializeOwned>(
    value: &Value,
    prefix: &str,
) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let path = if inner == "." || inner.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}.{inner}")
        };
        let found = e.inner().to_string();
        FieldError::invalid(path, "", found)
    })
}

fn validate_vm(o: &Object) -> Vec<FieldError> {
    let spec_value = o.body.get("spec").cloned().unwrap_or(Value::Null);
    if spec_value.is_null() {
        return vec![FieldError::required("spec", "")];
    }
    let spec: VirtualMachineSpec = match decode_at(&spec_value, "spec") {
        Ok(s) => s,
        Err(e) => return vec![e],
    };
    let mut errors = super::instancetype::validate_reference(&spec_value);
    if spec.running.is_some() && spec.run_strategy.is_some() {
        errors.push(FieldError::invalid(
            "spec.running",
            spec.running.unwrap_or_default().to_string(),
            "running and runStrategy are mutually exclusive",
        ));
    }
    if let Some(strategy) = &spec.run_strategy {
        if !RUN_STRATEGIES.contains(&strategy.as_str()) {
            errors.push(FieldError::not_supported(
                "spec.runStrategy",
                strategy,
                RUN_STRATEGIES,
            ));
        }
    }
    let mut template_names = HashSet::new();
    for (i, t) in spec.data_volume_templates.iter().enumerate() {
        let p = format!("spec.dataVolumeTemplates[{i}]");
        if t.metadata.name.is_empty() {
            errors.push(FieldError::required(format!("{p}.metadata.name"), ""));
        } else if !template_names.insert(t.metadata.name.as_str()) {
            errors.push(FieldError::duplicate(
                format!("{p}.metadata.name"),
                &t.metadata.name,
            ));
        } else {
            errors.extend(validation::dns1123_subdomain(
                &format!("{p}.metadata.name"),
                &t.metadata.name,
            ));
        }
        errors.extend(super::cdi::validate_data_volume_spec(
            &t.spec,
            &format!("{p}.spec"),
        ));
    }
    match &spec.template {
        None => errors.push(FieldError::required("spec.template", "")),
        Some(template) => {
            if let Some(meta) = &template.metadata {
                for (k, v) in &meta.labels {
                    let path = format!("spec.template.metadata.labels[{k}]");
                    errors.extend(validation::qualified_name(&path, k));
                    errors.extend(validation::label_value(&path, v));
                }
            }
            let mut instance = template.spec.clone();
            if super::instancetype::reference(&spec_value).is_some() {
                // The instance type supplies the memory: check the rest as the instance has it.
                let memory = instance.domain.memory.get_or_insert_with(Default::default);
                memory.guest.get_or_insert(QuantityText("1Mi".into()));
            }
            errors.extend(validate_vmi_spec(&instance, "spec.template.spec"));
        }
    }
    errors
}

fn validate_vmi(o: &Object) -> Vec<FieldError> {
    let spec_value = o.body.get("spec").cloned().unwrap_or(Value::Null);
    if spec_value.is_null() {
        return vec![FieldError::required("spec", "")];
    }
    match decode_at::<VmiSpec>(&spec_value, "spec") {
        Ok(spec) => validate_vmi_spec(&spec, "spec"),
        Err(e) => vec![e],
    }
}

/// Validates an instance spec at `path`, collecting every problem.
pub fn validate_vmi_spec(spec: &VmiSpec, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let domain = format!("{path}.domain");
    validate_memory_and_cpu(&spec.domain, &domain, &mut errors);
    let volume_names = validate_volumes(&spec.volumes, path, &mut errors);
    let mut boot_orders = HashSet::new();
    let mut disk_names = HashSet::new();
    for (i, disk) in spec.domain.devices.disks.iter().enumerate() {
        let p = format!("{domain}.devices.disks[{i}]");
        if disk.name.is_empty() {
            errors.push(FieldError::required(format!("{p}.name"), ""));
        } else if !disk_names.insert(disk.name.as_str()) {
            errors.push(FieldError::duplicate(format!("{p}.name"), &disk.name));
        } else if !volume_names.contains(disk.name.as_str()) {
            errors.push(FieldError::invalid(
                format!("{p}.name"),
                &disk.name,
                "no volume of that name in spec.volumes",
            ));
        }
        let targets = [&disk.disk, &disk.cdrom, &disk.lun]
            .iter()
            .filter(|t| t.is_some())
            .count();
        if targets > 1 {
            errors.push(FieldError::invalid(
                &p,
                &disk.name,
                "only one of disk, cdrom or lun may be set",
            ));
        }
        if let Some(bus) = disk.disk.as_ref().and_then(|t| t.bus.as_deref()) {
            if !DISK_BUSES.contains(&bus) {
                errors.push(FieldError::not_supported(
                    format!("{p}.disk.bus"),
                    bus,
                    DISK_BUSES,
                ));
            }
        }
        if let Some(bus) = disk.cdrom.as_ref().and_then(|t| t.bus.as_deref()) {
            if !CDROM_BUSES.contains(&bus) {
                errors.push(FieldError::not_supported(
                    format!("{p}.cdrom.bus"),
                    bus,
                    CDROM_BUSES,
                ));
            }
        }
        check_boot_order(
            disk.boot_order,
            &format!("{p}.bootOrder"),
            &mut boot_orders,
            &mut errors,
        );
    }
    let network_names = validate_networks(&spec.networks, path, &mut errors);
    let mut interface_names = HashSet::new();
    for (i, nic) in spec.domain.devices.interfaces.iter().enumerate() {
        let p = format!("{domain}.devices.interfaces[{i}]");
        if nic.name.is_empty() {
            errors.push(FieldError::required(format!("{p}.name"), ""));
        } else if !interface_names.insert(nic.name.as_str()) {
            errors.push(FieldError::duplicate(format!("{p}.name"), &nic.name));
        } else if !network_names.contains(nic.name.as_str()) {
            errors.push(FieldError::invalid(
                format!("{p}.name"),
                &nic.name,
                "no network of that name in spec.networks",
            ));
        }
        let bindings = [&nic.masquerade, &nic.bridge, &nic.sriov]
            .iter()
            .filter(|b| b.is_some())
            .count()
            + ["slirp", "passt", "binding"]
                .iter()
                .filter(|k| nic.extra.contains_key(**k))
                .count();
        if bindings > 1 {
            errors.push(FieldError::invalid(
                &p,
                &nic.name,
                "only one binding method (masquerade, bridge, sriov, ...) may be set",
            ));
        }
        if let Some(mac) = &nic.mac_address {
            if !is_mac(mac) {
                errors.push(FieldError::invalid(
                    format!("{p}.macAddress"),
                    mac,
                    "must be six colon-separated hex bytes, e.g. 02:00:00:00:00:01",
                ));
            }
        }
        if let Some(model) = &nic.model {
            if !NIC_MODELS.contains(&model.as_str()) {
                errors.push(FieldError::not_supported(
                    format!("{p}.model"),
                    model,
                    NIC_MODELS,
                ));
            }
        }
        check_boot_order(
            nic.boot_order,
            &format!("{p}.bootOrder"),
            &mut boot_orders,
            &mut errors,
        );
    }
    validate_firmware(&spec.domain, &domain, &mut errors);
    for (k, v) in &spec.node_selector {
        let p = format!("{path}.nodeSelector[{k}]");
        errors.extend(validation::qualified_name(&p, k));
        errors.extend(validation::label_value(&p, v));
    }
    for (i, t) in spec.tolerations.iter().enumerate() {
        validate_toleration(t, &format!("{path}.tolerations[{i}]"), &mut errors);
    }
    if let Some(strategy) = &spec.eviction_strategy {
        if !EVICTION_STRATEGIES.contains(&strategy.as_str()) {
            errors.push(FieldError::not_supported(
                format!("{path}.evictionStrategy"),
                strategy,
                EVICTION_STRATEGIES,
            ));
        }
    }
    if let Some(grace) = spec.termination_grace_period_seconds {
        if grace < 0 {
            errors.push(FieldError::invalid(
                format!("{path}.terminationGracePeriodSeconds"),
                grace.to_string(),
                "must be greater than or equal to 0",
            ));
        }
    }
    if let Some(affinity) = &spec.affinity {
        errors.extend(super::affinity::validate(
            affinity,
            &format!("{path}.affinity"),
        ));
    }
    if let Some(hostname) = &spec.hostname {
        errors.extend(validation::dns1123_label(
            &format!("{path}.hostname"),
            hostname,
        ));
    }
    errors
}

fn validate_memory_and_cpu(domain: &DomainSpec, path: &str, errors: &mut Vec<FieldError>) {
    let guest = domain.memory.as_ref().and_then(|m| m.guest.as_ref());
    let guest_q = guest
        .and_then(|g| validation::positive_quantity(&format!("{path}.memory.guest"), &g.0, errors));
    let mut request_memory = None;
    if let Some(resources) = &domain.resources {
        for (which, map) in [
            ("requests", &resources.requests),
            ("limits", &resources.limits),
        ] {
            for (name, q) in map {
                let p = format!("{path}.resources.{which}.{name}");
                match validation::quantity(&p, &q.0) {
                    Ok(parsed) if parsed.is_negative() => errors.push(FieldError::invalid(
                        p,
                        &q.0,
                        "must be greater than or equal to 0",
                    )),
                    Ok(parsed) => {
                        if which == "requests" && name == "memory" {
                            request_memory = Some(parsed);
                        }
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        if let (Some(request), Some(limit)) = (
            resources
                .requests
                .get("memory")
                .and_then(|q| crate::Quantity::parse(&q.0).ok()),
            resources
                .limits
                .get("memory")
                .and_then(|q| crate::Quantity::parse(&q.0).ok()),
        ) {
            if request > limit {
                errors.push(FieldError::invalid(
                    format!("{path}.resources.requests.memory"),
                    &resources.requests["memory"].0,
                    "must be less than or equal to the memory limit",
                ));
            }
        }
    }
    if guest.is_none() && request_memory.is_none() && !has_error_under(errors, path) {
        errors.push(FieldError::required(
            format!("{path}.memory.guest"),
            "set domain.memory.guest or domain.resources.requests.memory",
        ));
    }
    if let (Some(guest), Some(limit)) = (
        guest_q,
        domain
            .resources
            .as_ref()
            .and_then(|r| r.limits.get("memory"))
            .and_then(|q| crate::Quantity::parse(&q.0).ok()),
    ) {
        if guest > limit {
            errors.push(FieldError::invalid(
                format!("{path}.memory.guest"),
                guest.to_string(),
                "must be less than or equal to the memory limit",
            ));
        }
    }
    if let Some(cpu) = &domain.cpu {
        for (name, value) in [
            ("cores", cpu.cores),
            ("sockets", cpu.sockets),
            ("threads", cpu.threads),
        ] {
            if value == Some(0) {
                errors.push(FieldError::invalid(
                    format!("{path}.cpu.{name}"),
                    "0",
                    "must be greater than 0",
                ));
            }
        }
        let total = cpu.cores.unwrap_or(1) as u64
            * cpu.sockets.unwrap_or(1) as u64
            * cpu.threads.unwrap_or(1) as u64;
        if total > 512 {
            errors.push(FieldError::invalid(
                format!("{path}.cpu"),
                total.to_string(),
                "sockets x cores x threads may not exceed 512 vCPUs",
            ));
        }
    }
}

fn has_error_under(errors: &[FieldError], path: &str) -> bool {
    errors.iter().any(|e| e.path.starts_with(path))
}

fn validate_volumes<'a>(
    volumes: &'a [Volume],
    path: &str,
    errors: &mut Vec<FieldError>,
) -> HashSet<&'a str> {
    let mut names = HashSet::new();
    for (i, volume) in volumes.iter().enumerate() {
        let p = format!("{path}.volumes[{i}]");
        if volume.name.is_empty() {
            errors.push(FieldError::required(format!("{p}.name"), ""));
        } else if !names.insert(volume.name.as_str()) {
            errors.push(FieldError::duplicate(format!("{p}.name"), &volume.name));
        } else {
            errors.extend(validation::dns1123_label(
                &format!("{p}.name"),
                &volume.name,
            ));
        }
        let typed = [
            volume.host_disk.is_some(),
            volume.empty_disk.is_some(),
            volume.ephemeral.is_some(),
            volume.cloud_init_no_cloud.is_some(),
            volume.persistent_volume_claim.is_some(),
            volume.data_volume.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        let other = VOLUME_SOURCES
            .iter()
            .filter(|s| volume.extra.contains_key(**s))
            .count();
        match typed + other {
            1 => {}
            0 => errors.push(FieldError::required(
                &p,
                format!(
                    "a volume source is required, one of: {}",
                    VOLUME_SOURCES.join(", ")
                ),
            )),
            _ => errors.push(FieldError::invalid(
                &p,
                &volume.name,
                "only one volume source may be set",
            )),
        }
        if let Some(host) = &volume.host_disk {
            if !host.path.starts_with('/') {
                errors.push(FieldError::invalid(
                    format!("{p}.hostDisk.path"),
                    &host.path,
                    "must be an absolute path",
                ));
            }
            match host.disk_type.as_str() {
                "Disk" => {}
                "DiskOrCreate" => match &host.capacity {
                    Some(c) => {
                        validation::positive_quantity(
                            &format!("{p}.hostDisk.capacity"),
                            &c.0,
                            errors,
                        );
                    }
                    None => errors.push(FieldError::required(
                        format!("{p}.hostDisk.capacity"),
                        "capacity is required for type DiskOrCreate",
                    )),
                },
                "" => errors.push(FieldError::required(format!("{p}.hostDisk.type"), "")),
                other => errors.push(FieldError::not_supported(
                    format!("{p}.hostDisk.type"),
                    other,
                    &["Disk", "DiskOrCreate"],
                )),
            }
        }
        if let Some(empty) = &volume.empty_disk {
            validation::positive_quantity(
                &format!("{p}.emptyDisk.capacity"),
                &empty.capacity.0,
                errors,
            );
        }
        if let Some(ci) = &volume.cloud_init_no_cloud {
            validate_cloud_init(ci, &format!("{p}.cloudInitNoCloud"), errors);
        }
        if let Some(c) = &volume.persistent_volume_claim {
            if c.claim_name.is_empty() {
                errors.push(FieldError::required(
                    format!("{p}.persistentVolumeClaim.claimName"),
                    "",
                ));
            }
        }
        if let Some(d) = &volume.data_volume {
            if d.name.is_empty() {
                errors.push(FieldError::required(format!("{p}.dataVolume.name"), ""));
            }
        }
    }
    names
}

fn validate_cloud_init(ci: &CloudInitNoCloud, p: &str, errors: &mut Vec<FieldError>) {
    let user_sources = [
        ci.user_data.is_some(),
        ci.user_data_base64.is_some(),
        ci.secret_ref.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    let network_sources = [
        ci.network_data.is_some(),
        ci.network_data_base64.is_some(),
        ci.network_data_secret_ref.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if user_sources > 1 {
        errors.push(FieldError::invalid(
            p,
            "",
            "only one of userData, userDataBase64 or secretRef may be set",
        ));
    }
    if network_sources > 1 {
        errors.push(FieldError::invalid(
            p,
            "",
            "only one of networkData, networkDataBase64 or networkDataSecretRef may be set",
        ));
    }
    if user_sources + network_sources == 0 {
        errors.push(FieldError::required(
            p,
            "one of userData, userDataBase64, secretRef or network data is required",
        ));
    }
    for (field, value) in [
        ("userData", &ci.user_data),
        ("networkData", &ci.network_data),
    ] {
        if value
            .as_ref()
            .is_some_and(|v| v.len() > CLOUD_INIT_MAX_BYTES)
        {
            errors.push(FieldError::invalid(
                format!("{p}.{field}"),
                "<omitted>",
                format!("must be at most {CLOUD_INIT_MAX_BYTES} bytes"),
            ));
        }
    }
    for (field, value) in [
        ("userDataBase64", &ci.user_data_base64),
        ("networkDataBase64", &ci.network_data_base64),
    ] {
        if let Some(v) = value {
            match base64::engine::general_purpose::STANDARD.decode(v.trim()) {
                Ok(bytes) if bytes.len() > CLOUD_INIT_MAX_BYTES => {
                    errors.push(FieldError::invalid(
                        format!("{p}.{field}"),
                        "<omitted>",
                        format!("must decode to at most {CLOUD_INIT_MAX_BYTES} bytes"),
                    ))
                }
                Ok(_) => {}
                Err(e) => errors.push(FieldError::invalid(
                    format!("{p}.{field}"),
                    "<omitted>",
                    format!("is not valid base64: {e}"),
                )),
            }
        }
    }
    for (field, reference) in [
        ("secretRef", &ci.secret_ref),
        ("networkDataSecretRef", &ci.network_data_secret_ref),
    ] {
        if reference.as_ref().is_some_and(|r| r.name.is_empty()) {
            errors.push(FieldError::required(format!("{p}.{field}.name"), ""));
        }
    }
}

fn validate_networks<'a>(
    networks: &'a [Network],
    path: &str,
    errors: &mut Vec<FieldError>,
) -> HashSet<&'a str> {
    let mut names = HashSet::new();
    let mut pods = 0;
    for (i, net) in networks.iter().enumerate() {
        let p = format!("{path}.networks[{i}]");
        if net.name.is_empty() {
            errors.push(FieldError::required(format!("{p}.name"), ""));
        } else if !names.insert(net.name.as_str()) {
            errors.push(FieldError::duplicate(format!("{p}.name"), &net.name));
        }
        match (&net.pod, &net.multus) {
            (Some(_), Some(_)) => errors.push(FieldError::invalid(
                &p,
                &net.name,
                "only one of pod or multus may be set",
            )),
            (None, None) => {
                errors.push(FieldError::required(&p, "one of pod or multus is required"))
            }
            (Some(_), None) => pods += 1,
            (None, Some(m)) if m.network_name.is_empty() => {
                errors.push(FieldError::required(format!("{p}.multus.networkName"), ""))
            }
            (None, Some(_)) => {}
        }
    }
    if pods > 1 {
        errors.push(FieldError::invalid(
            format!("{path}.networks"),
            pods.to_string(),
            "more than one pod network is not allowed",
        ));
    }
    names
}

fn validate_firmware(domain: &DomainSpec, path: &str, errors: &mut Vec<FieldError>) {
    if let Some(fw) = &domain.firmware {
        if let Some(bl) = &fw.bootloader {
            if bl.bios.is_some() && bl.efi.is_some() {
                errors.push(FieldError::invalid(
                    format!("{path}.firmware.bootloader"),
                    "",
                    "only one of bios or efi may be set",
                ));
            }
        }
        if let Some(container) = fw.kernel_boot.as_ref().and_then(|k| k.container.as_ref()) {
            let p = format!("{path}.firmware.kernelBoot.container");
            if container.kernel_path.is_none() && container.initrd_path.is_none() {
                errors.push(FieldError::required(
                    format!("{p}.kernelPath"),
                    "at least one of kernelPath or initrdPath is required",
                ));
            }
            for (field, value) in [
                ("kernelPath", &container.kernel_path),
                ("initrdPath", &container.initrd_path),
            ] {
                if value.as_ref().is_some_and(|v| !v.starts_with('/')) {
                    errors.push(FieldError::invalid(
                        format!("{p}.{field}"),
                        value.as_deref().unwrap_or(""),
                        "must be an absolute path",
                    ));
                }
            }
        }
        if let Some(uuid) = &fw.uuid {
            if !is_uuid(uuid) {
                errors.push(FieldError::invalid(
                    format!("{path}.firmware.uuid"),
                    uuid,
                    "must be a UUID",
                ));
            }
        }
    }
    if let Some(machine) = domain
        .machine
        .as_ref()
        .and_then(|m| m.machine_type.as_deref())
    {
        if machine != "q35" && !machine.starts_with("pc-q35") {
            errors.push(FieldError::not_supported(
                format!("{path}.machine.type"),
                machine,
                &["q35", "pc-q35-*"],
            ));
        }
    }
}

fn validate_toleration(t: &Toleration, p: &str, errors: &mut Vec<FieldError>) {
    match t.operator.as_deref() {
        None | Some("Equal") => {}
        Some("Exists") => {
            if t.value.as_deref().is_some_and(|v| !v.is_empty()) {
                errors.push(FieldError::invalid(
                    format!("{p}.value"),
                    t.value.as_deref().unwrap_or(""),
                    "value must be empty when operator is Exists",
                ));
            }
        }
        Some(other) => errors.push(FieldError::not_supported(
            format!("{p}.operator"),
            other,
            &["Equal", "Exists"],
        )),
    }
    if let Some(effect) = t.effect.as_deref() {
        const EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute", ""];
        if !EFFECTS.contains(&effect) {
            errors.push(FieldError::not_supported(
                format!("{p}.effect"),
                effect,
                EFFECTS,
            ));
        }
    }
    if t.key.as_deref().unwrap_or("").is_empty() && t.operator.as_deref() != Some("Exists") {
        errors.push(FieldError::invalid(
            format!("{p}.operator"),
            t.operator.as_deref().unwrap_or("Equal"),
            "operator must be Exists when key is empty",
        ));
    }
}

fn check_boot_order(
    order: Option<u32>,
    path: &str,
    seen: &mut HashSet<u32>,
    errors: &mut Vec<FieldError>,
) {
    if let Some(order) = order {
        if order == 0 {
            errors.push(FieldError::invalid(path, "0", "must be greater than 0"));
        } else if !seen.insert(order) {
            errors.push(FieldError::duplicate(path, order.to_string()));
        }
    }
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vm(spec: Value) -> Object {
        Object::from_value(json!({
            "apiVersion": API_VERSION, "kind": "VirtualMachine",
            "metadata": {"name": "vm1", "namespace": "default"}, "spec": spec
        }))
        .unwrap()
    }

    fn good_template() -> Value {
        json!({"spec": {
            "domain": {"cpu": {"cores": 2}, "memory": {"guest": "256Mi"},
                "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}},
                                      {"name": "ci", "disk": {"bus": "virtio"}}],
                            "interfaces": [{"name": "default", "masquerade": {}}]}},
            "volumes": [{"name": "root", "hostDisk": {"path": "/var/lib/img.qcow2", "type": "Disk"}},
                        {"name": "ci", "cloudInitNoCloud": {"userData": "#cloud-config\n"}}],
            "networks": [{"name": "default", "pod": {}}],
            "evictionStrategy": "LiveMigrate",
            "terminationGracePeriodSeconds": 30
        }})
    }

    #[test]
    fn a_good_vm_passes() {
        let errors = validate_vm(&vm(
            json!({"runStrategy": "Always", "template": good_template()}),
        ));
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut t = good_template();
        t["spec"]["domain"]["memory"]["guest"] = json!("12QB");
        t["spec"]["domain"]["devices"]["disks"][0]["name"] = json!("missing");
        t["spec"]["domain"]["devices"]["interfaces"][0]["macAddress"] = json!("zz");
        t["spec"]["evictionStrategy"] = json!("Sometimes");
        let errors = validate_vm(&vm(
            json!({"runStrategy": "Bogus", "running": true, "template": t}),
        ));
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        for expected in [
            "spec.running",
            "spec.runStrategy",
            "spec.template.spec.domain.memory.guest",
            "spec.template.spec.domain.devices.disks[0].name",
            "spec.template.spec.domain.devices.interfaces[0].macAddress",
            "spec.template.spec.evictionStrategy",
        ] {
            assert!(
                paths.contains(&expected),
                "{expected} missing from {paths:?}"
            );
        }
        let memory = errors
            .iter()
            .find(|e| e.path.ends_with("memory.guest"))
            .unwrap();
        assert!(memory
            .to_string()
            .starts_with(r#"spec.template.spec.domain.memory.guest: Invalid value: "12QB""#));
    }

    #[test]
    fn type_errors_name_the_field() {
        let mut t = good_template();
        t["spec"]["domain"]["cpu"]["cores"] = json!("two");
        let errors = validate_vm(&vm(json!({"template": t})));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "spec.template.spec.domain.cpu.cores");
    }

    #[test]
    fn memory_is_required_and_volumes_need_a_source() {
        let mut t = good_template();
        t["spec"]["domain"]
            .as_object_mut()
            .unwrap()
            .remove("memory");
        t["spec"]["volumes"][0] = json!({"name": "root"});
        let errors = validate_vm(&vm(json!({"template": t})));
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert!(
            paths.contains(&"spec.template.spec.domain.memory.guest"),
            "{paths:?}"
        );
        assert!(
            paths.contains(&"spec.template.spec.volumes[0]"),
            "{paths:?}"
        );
    }

    #[test]
    fn unknown_fields_are_kept_by_the_types() {
        let mut t = good_template();
        t["spec"]["domain"]["futureFeature"] = json!({"on": true});
        let spec: TemplateSpec = serde_json::from_value(t.clone()).unwrap();
        assert_eq!(
            serde_json::to_value(&spec).unwrap()["spec"]["domain"]["futureFeature"]["on"],
            true
        );
    }
}
