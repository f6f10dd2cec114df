//! Networks as the reference architecture configures them: Multus's `k8s.cni.cncf.io/v1`
//! NetworkAttachmentDefinition with a bridge-type CNI config (the VLAN a VM's NIC joins), and the
//! cluster's network settings: the default network's address range (the pod CIDR, 100.64.0.0/18
//! there), the service range, and the VMO pack's `vlanFiltering` values for the node bridge
//! (`bridgeIF`, `allowedVlans`, `allowVlansOnSelf`, `allowedVlansOnSelf`).
//!
//! A VM may use only attachments in its own namespace, unless an attachment is published to
//! others with the annotation [`PUBLISHED_TO_ANNOTATION`] (`*` or a list of namespaces).

use super::{no_prepare, no_update_validation, KindInfo, AGE_COLUMN, NAME_COLUMN};
use crate::object::Object;
use crate::status::FieldError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// Namespaces (comma-separated, or `*`) whose VMs may use an attachment besides its own.
pub const PUBLISHED_TO_ANNOTATION: &str = "vmo.io/published-to";
/// CNI plugin types vmo runs for attachments.
pub const CNI_TYPES: &[&str] = &["bridge", "cnv-bridge"];
/// On a Node: how its agent runs the default network, `bridge` (a node bridge with NAT and DHCP
/// from the node's `spec.podCIDR`) or `user` (QEMU's user-mode NAT, for agents without root).
pub const POD_NETWORK_ANNOTATION: &str = "vmo.io/pod-network";
/// On a Node: the VLAN datapath its agent chose, `vlan-aware-bridge` or `bridge-per-vlan`, or
/// `none` when it cannot run VLAN networks (no root).
pub const VLAN_DATAPATH_ANNOTATION: &str = "vmo.io/vlan-datapath";

pub(super) fn kinds() -> Vec<KindInfo> {
    vec![KindInfo {
        group: "k8s.cni.cncf.io",
        version: "v1",
        kind: "NetworkAttachmentDefinition",
        plural: "network-attachment-definitions",
        singular: "network-attachment-definition",
        short_names: &["net-attach-def", "nad"],
        categories: &[],
        namespaced: true,
        status_subresource: false,
        name_is_label: false,
        field_selectors: &[],
        columns: &[NAME_COLUMN, AGE_COLUMN],
        validate: validate_attachment,
        validate_update: no_update_validation,
        prepare: no_prepare,
    }]
}

/// A bridge-type CNI configuration (`spec.config`, a JSON string).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeConfig {
    #[serde(default)]
    pub cni_version: Option<String>,
    #[serde(default, rename = "type")]
    pub plugin: String,
    #[serde(default)]
    pub name: Option<String>,
    /// The node bridge (the reference architecture's `br0`).
    #[serde(default)]
    pub bridge: Option<String>,
    /// The VLAN the NIC joins, untagged on the VM's side; 0 or absent: none.
    #[serde(default)]
    pub vlan: Option<i64>,
    #[serde(default)]
    pub mtu: Option<i64>,
    /// Drop frames whose source MAC is not the NIC's.
    #[serde(default)]
    pub macspoofchk: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl BridgeConfig {
    /// The config of the attachment in `o`; an error says what is wrong with it.
    pub fn of(o: &Object) -> Result<Self, String> {
        let text = o.spec()["config"]
            .as_str()
            .ok_or("spec.config must be a JSON string")?;
        serde_json::from_str(text).map_err(|e| format!("not a JSON CNI config: {e}"))
    }
}

/// What a NIC joins through an attachment that a VM may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The VLAN (0: untagged).
    pub vlan: u16,
    pub mtu: Option<u32>,
    pub macspoofchk: bool,
}

/// What attachment `nad` gives a VM in `namespace` under the cluster's `settings`, or why the VM
/// may not use it (for a status condition or an admission error).
pub fn admit_attachment(
    nad: &Object,
    namespace: &str,
    settings: &NetworkSettings,
) -> Result<Attachment, String> {
    let name = format!("{}/{}", nad.metadata.namespace, nad.metadata.name);
    if !usable_from(nad, namespace) {
        return Err(format!(
            "the attachment {name} is not published to namespace {namespace} (annotation {PUBLISHED_TO_ANNOTATION})"
        ));
    }
    let config = BridgeConfig::of(nad).map_err(|why| format!("the attachment {name}: {why}"))?;
    let vlan = config.vlan.unwrap_or(0);
    let vlan = u16::try_from(vlan)
        .ok()
        .filter(|v| *v <= 4094)
        .ok_or_else(|| format!("the attachment {name} has VLAN {vlan}, outside 0-4094"))?;
    if vlan != 0 {
        if let Some(filtering) = &settings.vlan_filtering {
            let allowed = filtering.allowed();
            if !allowed.contains(vlan) {
                let shown = filtering.allowed_vlans.as_deref().unwrap_or("none");
                return Err(format!(
                    "the attachment {name} puts the NIC on VLAN {vlan}, outside the VLANs VMs may use ({shown}, ClusterSettings spec.network.vlanFiltering.allowedVlans)"
                ));
            }
        }
    }
    Ok(Attachment {
        vlan,
        mtu: config.mtu.and_then(|m| u32::try_from(m).ok()),
        macspoofchk: config.macspoofchk.unwrap_or(false),
    })
}

/// True when a VM in `namespace` may use the attachment `o`.
pub fn usable_from(o: &Object, namespace: &str) -> bool {
    o.metadata.namespace == namespace
        || o.metadata
            .annotations
            .get(PUBLISHED_TO_ANNOTATION)
            .is_some_and(|list| {
                list.split(',')
                    .map(str::trim)
                    .any(|n| n == "*" || n == namespace)
            })
}

/// A Linux interface name: 1-15 characters, no `/`, whitespace or `:`.
pub fn valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '/' && c != ':')
}

fn validate_attachment(o: &Object) -> Vec<FieldError> {
    let config = match BridgeConfig::of(o) {
        Ok(c) => c,
        Err(why) => {
            let shown = o.spec()["config"].as_str().unwrap_or("");
            return vec![FieldError::invalid("spec.config", shown, why)];
        }
    };
    let mut errors = Vec::new();
    if !CNI_TYPES.contains(&config.plugin.as_str()) {
        errors.push(FieldError::not_supported(
            "spec.config.type",
            &config.plugin,
            CNI_TYPES,
        ));
    }
    if let Some(bridge) = &config.bridge {
        if !valid_interface_name(bridge) {
            errors.push(FieldError::invalid(
                "spec.config.bridge",
                bridge,
                "an interface name: 1-15 characters, no '/', ':' or spaces",
            ));
        }
    }
    if let Some(vlan) = config.vlan {
        if !(0..=4094).contains(&vlan) {
            errors.push(FieldError::invalid(
                "spec.config.vlan",
                vlan.to_string(),
                "a VLAN ID is 1-4094 (0: untagged)",
            ));
        }
    }
    if let Some(mtu) = config.mtu {
        if !(576..=9216).contains(&mtu) {
            errors.push(FieldError::invalid(
                "spec.config.mtu",
                mtu.to_string(),
                "between 576 and 9216",
            ));
        }
    }
    if let Some(list) = o.metadata.annotations.get(PUBLISHED_TO_ANNOTATION) {
        let path = format!("metadata.annotations[{PUBLISHED_TO_ANNOTATION}]");
        for ns in list.split(',').map(str::trim).filter(|n| *n != "*") {
            errors.extend(crate::validation::dns1123_label(&path, ns));
        }
    }
    errors
}

/// A set of VLAN IDs written as the VMO pack writes them: `1,10,20,21-100`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VlanRanges(pub BTreeSet<u16>);

impl VlanRanges {
    /// Parses `text`; an error names the bad part.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut ids = BTreeSet::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (low, high) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let id = |s: &str| {
                s.parse::<u16>()
                    .ok()
                    .filter(|v| (1..=4094).contains(v))
                    .ok_or_else(|| format!("{part:?}: VLAN IDs are 1-4094"))
            };
            let (low, high) = (id(low)?, id(high)?);
            if low > high {
                return Err(format!("{part:?}: the range runs backwards"));
            }
            ids.extend(low..=high);
        }
        Ok(Self(ids))
    }

    /// True when `vlan` is in the set.
    pub fn contains(&self, vlan: u16) -> bool {
        self.0.contains(&vlan)
    }

    /// The IDs of `other` not in this set, written as ranges.
    pub fn missing_from(&self, other: &VlanRanges) -> String {
        let missing: Vec<u16> = other.0.difference(&self.0).copied().collect();
        let mut parts = Vec::new();
        let mut i = 0;
        while i < missing.len() {
            let start = missing[i];
            let mut end = start;
            while i + 1 < missing.len() && missing[i + 1] == end + 1 {
                i += 1;
                end = missing[i];
            }
            parts.push(if start == end {
                start.to_string()
            } else {
                format!("{start}-{end}")
            });
            i += 1;
        }
        parts.join(",")
    }
}

/// The VMO pack's `vlanFiltering` values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VlanFiltering {
    /// The node bridge VM NICs join (`bridgeIF`; default `br0`).
    #[serde(default, rename = "bridgeIF", skip_serializing_if = "Option::is_none")]
    pub bridge_if: Option<String>,
    /// VLANs VMs may use (`21-100`); absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_vlans: Option<String>,
    /// Whether the node itself uses VLANs on the bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_vlans_on_self: Option<bool>,
    /// VLANs the node itself uses; with allowVlansOnSelf it must include allowedVlans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_vlans_on_self: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl VlanFiltering {
    /// The bridge (default `br0`).
    pub fn bridge(&self) -> &str {
        self.bridge_if.as_deref().unwrap_or("br0")
    }
    /// The VLANs VMs may use (empty when unset or unreadable).
    pub fn allowed(&self) -> VlanRanges {
        self.allowed_vlans
            .as_deref()
            .and_then(|t| VlanRanges::parse(t).ok())
            .unwrap_or_default()
    }
}

/// `spec.network` of ClusterSettings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSettings {
    /// The default network's range (default 100.64.0.0/18, as in the reference architecture).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    /// The service range (default 100.64.64.0/18).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "serviceClusterIpRange"
    )]
    pub service_cidr: Option<String>,
    /// The size of each node's share of the pod CIDR (`spec.podCIDR` of a Node; default /24).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "nodeCIDRMaskSize"
    )]
    pub node_cidr_mask_size: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan_filtering: Option<VlanFiltering>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The default size of a node's share of the pod CIDR.
pub const DEFAULT_NODE_CIDR_MASK_SIZE: u8 = 24;

impl NetworkSettings {
    /// The pod CIDR (the default when unset or unreadable; validation refuses unreadable ones).
    pub fn pod_cidr(&self) -> Cidr {
        self.pod_cidr
            .as_deref()
            .and_then(|t| Cidr::parse(t).ok())
            .unwrap_or_else(|| Cidr::parse(DEFAULT_POD_CIDR).expect("the default parses"))
    }
    /// The prefix length of each node's share of the pod CIDR.
    pub fn node_cidr_mask_size(&self) -> u8 {
        self.node_cidr_mask_size
            .unwrap_or(DEFAULT_NODE_CIDR_MASK_SIZE)
    }
}

/// The reference architecture's pod CIDR.
pub const DEFAULT_POD_CIDR: &str = "100.64.0.0/18";
/// The reference architecture's service range.
pub const DEFAULT_SERVICE_CIDR: &str = "100.64.64.0/18";

/// The address and prefix length of `a.b.c.d/n` (n at most `max_prefix`); an error names the bad
/// part.
pub fn split_cidr(text: &str, max_prefix: u8) -> Result<(Ipv4Addr, u8), String> {
    let (addr, prefix) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not a.b.c.d/prefix"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= max_prefix)
        .ok_or_else(|| format!("/{prefix} is not a prefix of 0-{max_prefix}"))?;
    Ok((addr, prefix))
}

/// An IPv4 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`; the address must be the network's first.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (network, prefix) = split_cidr(text, 30)?;
        let cidr = Self { network, prefix };
        if u32::from(network) & !cidr.mask() != 0 {
            return Err(format!(
                "{text} has host bits set; the network is {}/{prefix}",
                Ipv4Addr::from(u32::from(network) & cidr.mask())
            ));
        }
        Ok(cidr)
    }

    /// The netmask as a number.
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    /// True when `addr` is in this network.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == u32::from(self.network)
    }

    /// The `index`th subnet of prefix length `prefix` inside this network, if there is one.
    pub fn subnet(&self, prefix: u8, index: u32) -> Option<Cidr> {
        if prefix < self.prefix || prefix > 30 {
            return None;
        }
        let count = 1u64 << (prefix - self.prefix);
        if u64::from(index) >= count {
            return None;
        }
        let step = 1u32 << (32 - prefix);
        Some(Cidr {
            network: Ipv4Addr::from(u32::from(self.network) + index * step),
            prefix,
        })
    }

    /// The `n`th address of the network (0 is the network address itself).
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u64 << (32 - self.prefix);
        (u64::from(n) < size).then(|| Ipv4Addr::from(u32::from(self.network) + n))
    }

    /// The number of addresses in the network.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    /// True when the two networks share an address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        let mask = self.mask() & other.mask();
        u32::from(self.network) & mask == u32::from(other.network) & mask
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Checks network settings at `path`, collecting every problem.
pub fn validate_network_settings(n: &NetworkSettings, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut cidr = |field: &str, value: &Option<String>, default: &str| {
        let text = value.as_deref().unwrap_or(default);
        match Cidr::parse(text) {
            Ok(c) => Some(c),
            Err(why) => {
                errors.push(FieldError::invalid(format!("{path}.{field}"), text, why));
                None
            }
        }
    };
    let pods = cidr("podCIDR", &n.pod_cidr, DEFAULT_POD_CIDR);
    let services = cidr(
        "serviceClusterIpRange",
        &n.service_cidr,
        DEFAULT_SERVICE_CIDR,
    );
    if let (Some(p), Some(s)) = (pods, services) {
        if p.overlaps(&s) {
            errors.push(FieldError::invalid(
                format!("{path}.podCIDR"),
                p.to_string(),
                format!("overlaps the service range {s}"),
            ));
        }
    }
    if let (Some(size), Some(p)) = (n.node_cidr_mask_size, pods) {
        if size < p.prefix || size > 28 {
            errors.push(FieldError::invalid(
                format!("{path}.nodeCIDRMaskSize"),
                size.to_string(),
                format!("a node's share must be a prefix of {}-28", p.prefix),
            ));
        }
    }
    if let Some(v) = &n.vlan_filtering {
        let p = format!("{path}.vlanFiltering");
        if !valid_interface_name(v.bridge()) {
            errors.push(FieldError::invalid(
                format!("{p}.bridgeIF"),
                v.bridge(),
                "an interface name: 1-15 characters, no '/', ':' or spaces",
            ));
        }
        let mut ranges = |field: &str, text: &Option<String>| match text.as_deref() {
            None => Some(VlanRanges::default()),
            Some(t) => match VlanRanges::parse(t) {
                Ok(r) => Some(r),
                Err(why) => {
                    errors.push(FieldError::invalid(format!("{p}.{field}"), t, why));
                    None
                }
            },
        };
        let vms = ranges("allowedVlans", &v.allowed_vlans);
        let own = ranges("allowedVlansOnSelf", &v.allowed_vlans_on_self);
        if let (Some(vms), Some(own), Some(true)) = (vms, own, v.allow_vlans_on_self) {
            let missing = own.missing_from(&vms);
            if !missing.is_empty() {
                errors.push(FieldError::invalid(
                    format!("{p}.allowedVlansOnSelf"),
                    v.allowed_vlans_on_self.clone().unwrap_or_default(),
                    format!(
                        "with allowVlansOnSelf it must include every VLAN in allowedVlans, or VMs on them are cut off from the bridge; missing: {missing}"
                    ),
                ));
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nad(config: Value, annotations: Value) -> Object {
        Object::from_value(json!({"apiVersion": "k8s.cni.cncf.io/v1",
            "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": "vlan30", "namespace": "vms", "annotations": annotations},
            "spec": {"config": config.to_string()}}))
        .expect("object")
    }

    #[test]
    fn bridge_attachments_are_checked_field_by_field() {
        let good = nad(
            json!({"cniVersion": "0.3.1", "type": "bridge", "bridge": "br0", "vlan": 30,
                   "mtu": 1500, "macspoofchk": true}),
            json!({}),
        );
        assert!(validate_attachment(&good).is_empty());
        assert_eq!(BridgeConfig::of(&good).unwrap().vlan, Some(30));
        let bad = nad(
            json!({"type": "macvlan", "bridge": "a-very-long-bridge-name", "vlan": 4095, "mtu": 100}),
            json!({PUBLISHED_TO_ANNOTATION: "Bad_NS"}),
        );
        let paths: Vec<String> = validate_attachment(&bad)
            .into_iter()
            .map(|e| e.path)
            .collect();
        for p in [
            "spec.config.type",
            "spec.config.bridge",
            "spec.config.vlan",
            "spec.config.mtu",
        ] {
            assert!(paths.iter().any(|x| x == p), "{p} in {paths:?}");
        }
        assert!(paths.iter().any(|p| p.starts_with("metadata.annotations")));
        let not_json = Object::from_value(json!({"apiVersion": "k8s.cni.cncf.io/v1",
            "kind": "NetworkAttachmentDefinition", "metadata": {"name": "x", "namespace": "vms"},
            "spec": {"config": "{not json"}}))
        .unwrap();
        assert_eq!(validate_attachment(&not_json)[0].path, "spec.config");
    }

    #[test]
    fn attachments_are_private_unless_published() {
        let private = nad(json!({"type": "bridge"}), json!({}));
        assert!(usable_from(&private, "vms") && !usable_from(&private, "other"));
        let some = nad(
            json!({"type": "bridge"}),
            json!({PUBLISHED_TO_ANNOTATION: "a, b"}),
        );
        assert!(usable_from(&some, "b") && !usable_from(&some, "c"));
        let all = nad(
            json!({"type": "bridge"}),
            json!({PUBLISHED_TO_ANNOTATION: "*"}),
        );
        assert!(usable_from(&all, "anything"));
    }

    #[test]
    fn vlan_ranges_parse_like_the_vmo_pack() {
        let r = VlanRanges::parse("1,10,20,21-100").unwrap();
        assert!(r.contains(1) && r.contains(21) && r.contains(100) && !r.contains(101));
        assert_eq!(r.0.len(), 83);
        assert!(VlanRanges::parse("0").is_err());
        assert!(VlanRanges::parse("4095").is_err());
        assert!(VlanRanges::parse("30-20")
            .unwrap_err()
            .contains("backwards"));
        assert!(VlanRanges::parse("x").is_err());
        let vms = VlanRanges::parse("21-100").unwrap();
        let own = VlanRanges::parse("10,20,21-50,60").unwrap();
        assert_eq!(own.missing_from(&vms), "51-59,61-100");
    }

    #[test]
    fn settings_refuse_overlaps_and_self_ranges_that_leave_vm_vlans_out() {
        let ok = NetworkSettings {
            vlan_filtering: Some(VlanFiltering {
                allowed_vlans: Some("21-100".into()),
                allow_vlans_on_self: Some(true),
                allowed_vlans_on_self: Some("1,10,20,21-100".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(validate_network_settings(&ok, "spec.network").is_empty());
        let mut short = ok.clone();
        short.vlan_filtering.as_mut().unwrap().allowed_vlans_on_self = Some("10,20,21-50".into());
        let e = validate_network_settings(&short, "spec.network");
        assert_eq!(e[0].path, "spec.network.vlanFiltering.allowedVlansOnSelf");
        assert!(e[0].to_string().contains("51-100"), "{}", e[0]);
        let overlap = NetworkSettings {
            pod_cidr: Some("100.64.0.0/16".into()),
            ..Default::default()
        };
        let e = validate_network_settings(&overlap, "spec.network");
        assert!(
            e[0].to_string()
                .contains("overlaps the service range 100.64.64.0/18"),
            "{}",
            e[0]
        );
        let host_bits = NetworkSettings {
            pod_cidr: Some("10.0.0.1/8".into()),
            ..Default::default()
        };
        assert!(validate_network_settings(&host_bits, "n")[0]
            .to_string()
            .contains("host bits"));
    }
}
