//! The OVF descriptor of a VMware export, read into what vmo needs: the VirtualSystem's name,
//! vCPUs (`ResourceType` 3), memory (4, with its `AllocationUnits`), disks (17, through the
//! DiskSection's capacity and the References' file), NICs (10, with the network they connect
//! to and their MAC address) and firmware (`vmw:Config firmware=efi` or a `vmw:firmware`
//! attribute). Elements and attributes are matched by local name, whatever prefix the exporter
//! chose for the OVF, RASD and VMware namespaces.

use roxmltree::{Document, Node};

/// A disk of the virtual system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvfDisk {
    /// `ovf:diskId`.
    pub id: String,
    /// The archive member holding it (`ovf:href` of the referenced File).
    pub file: String,
    /// The virtual size in bytes.
    pub capacity: u64,
}

/// A network adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvfNic {
    /// The network it connects to (`rasd:Connection`).
    pub network: String,
    /// `rasd:Address`, when the exporter kept it.
    pub mac: Option<String>,
    /// `rasd:ResourceSubType` (VmxNet3, E1000...).
    pub model: Option<String>,
}

/// What the descriptor says about the virtual system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ovf {
    pub name: String,
    pub cpus: u32,
    pub cores_per_socket: Option<u32>,
    pub memory_bytes: u64,
    pub disks: Vec<OvfDisk>,
    pub nics: Vec<OvfNic>,
    pub efi: bool,
}

/// Why a descriptor cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OvfError {
    #[error("the OVF descriptor {file} does not parse: {why}")]
    Syntax { file: String, why: String },
    #[error("the OVF descriptor {file} has no <{element}> element{context}")]
    Missing {
        file: String,
        element: &'static str,
        context: String,
    },
    #[error("the OVF descriptor {file}: <{element}> {why}")]
    Invalid {
        file: String,
        element: String,
        why: String,
    },
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn children<'a, 'i>(node: Node<'a, 'i>, name: &'a str) -> impl Iterator<Item = Node<'a, 'i>> + 'a {
    node.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == name)
}

fn attr<'a>(node: Node<'a, '_>, name: &str) -> Option<&'a str> {
    node.attributes()
        .find(|a| a.name() == name)
        .map(|a| a.value())
}

fn child_text(node: Node, name: &str) -> Option<String> {
    child(node, name)
        .and_then(|c| c.text())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// The byte multiplier of an OVF allocation unit: `byte`, `byte * 2^20`, `byte * 10^6`,
/// `KiloBytes`, `MegaBytes`, `GigaBytes`.
pub fn unit_bytes(unit: &str) -> Option<u64> {
    let compact: String = unit
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    match compact.as_str() {
        "" | "byte" | "bytes" => return Some(1),
        "kilobytes" | "kb" => return Some(1 << 10),
        "megabytes" | "mb" => return Some(1 << 20),
        "gigabytes" | "gb" => return Some(1 << 30),
        "terabytes" | "tb" => return Some(1 << 40),
        _ => {}
    }
    let power = compact.strip_prefix("byte*")?;
    let (base, exp) = power.split_once('^')?;
    let (base, exp): (u64, u32) = (base.parse().ok()?, exp.parse().ok()?);
    base.checked_pow(exp)
}

/// Parses the descriptor `xml` (named `file` in messages).
pub fn parse(file: &str, xml: &str) -> Result<Ovf, OvfError> {
    let doc = Document::parse(xml).map_err(|e| OvfError::Syntax {
        file: file.into(),
        why: e.to_string(),
    })?;
    let invalid = |element: &str, why: String| OvfError::Invalid {
        file: file.into(),
        element: element.into(),
        why,
    };
    let missing = |element: &'static str, context: &str| OvfError::Missing {
        file: file.into(),
        element,
        context: context.into(),
    };
    let envelope = doc.root_element();
    if envelope.tag_name().name() != "Envelope" {
        return Err(invalid(
            envelope.tag_name().name(),
            "is the root element; an OVF descriptor's root is <Envelope>".into(),
        ));
    }
    let files: Vec<(String, String)> = child(envelope, "References")
        .map(|r| {
            children(r, "File")
                .filter_map(|f| Some((attr(f, "id")?.to_string(), attr(f, "href")?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let mut disk_section = Vec::new();
    if let Some(section) = child(envelope, "DiskSection") {
        for d in children(section, "Disk") {
            let id =
                attr(d, "diskId").ok_or_else(|| invalid("Disk", "has no ovf:diskId".into()))?;
            let capacity_text = attr(d, "capacity")
                .ok_or_else(|| invalid("Disk", format!("{id} has no ovf:capacity")))?;
            let units = attr(d, "capacityAllocationUnits").unwrap_or("byte");
            let multiplier = unit_bytes(units).ok_or_else(|| {
                invalid(
                    "Disk",
                    format!("{id} has an unknown ovf:capacityAllocationUnits {units:?}"),
                )
            })?;
            let capacity = capacity_text
                .trim()
                .parse::<u64>()
                .ok()
                .and_then(|c| c.checked_mul(multiplier))
                .ok_or_else(|| {
                    invalid(
                        "Disk",
                        format!("{id} has an unreadable ovf:capacity {capacity_text:?}"),
                    )
                })?;
            let file = match attr(d, "fileRef") {
                Some(r) => files
                    .iter()
                    .find(|(fid, _)| fid == r)
                    .map(|(_, href)| href.clone())
                    .ok_or_else(|| {
                        invalid(
                            "Disk",
                            format!("{id} names file {r:?}, which <References> does not list"),
                        )
                    })?,
                None => String::new(),
            };
            disk_section.push(OvfDisk {
                id: id.to_string(),
                file,
                capacity,
            });
        }
    }
    let system = envelope
        .descendants()
        .find(|n| n.is_element() && n.tag_name().name() == "VirtualSystem")
        .ok_or_else(|| missing("VirtualSystem", ""))?;
    let name = child_text(system, "Name")
        .or_else(|| attr(system, "id").map(str::to_string))
        .unwrap_or_default();
    let hardware = child(system, "VirtualHardwareSection")
        .ok_or_else(|| missing("VirtualHardwareSection", " in <VirtualSystem>"))?;
    let mut ovf = Ovf {
        name,
        cpus: 0,
        cores_per_socket: None,
        memory_bytes: 0,
        disks: Vec::new(),
        nics: Vec::new(),
        efi: false,
    };
    for node in hardware.descendants().filter(|n| n.is_element()) {
        let firmware_attr = node
            .attributes()
            .find(|a| a.name() == "firmware")
            .map(|a| a.value());
        let firmware_config = (node.tag_name().name() == "Config"
            && attr(node, "key") == Some("firmware"))
        .then(|| attr(node, "value"))
        .flatten();
        if let Some(fw) = firmware_attr.or(firmware_config) {
            ovf.efi = fw.eq_ignore_ascii_case("efi");
        }
    }
    for item in children(hardware, "Item").chain(children(hardware, "EthernetPortItem")) {
        let resource = child_text(item, "ResourceType").unwrap_or_default();
        let what =
            child_text(item, "ElementName").unwrap_or_else(|| format!("ResourceType {resource}"));
        let quantity = || -> Result<u64, OvfError> {
            let text = child_text(item, "VirtualQuantity").ok_or_else(|| {
                invalid(
                    "Item",
                    format!("{what:?} (ResourceType {resource}) has no <rasd:VirtualQuantity>"),
                )
            })?;
            text.parse::<u64>().map_err(|_| {
                invalid(
                    "rasd:VirtualQuantity",
                    format!("of {what:?} is not a number: {text:?}"),
                )
            })
        };
        match resource.as_str() {
            "3" => {
                ovf.cpus = u32::try_from(quantity()?).map_err(|_| {
                    invalid("rasd:VirtualQuantity", format!("of {what:?} is too large"))
                })?;
                ovf.cores_per_socket = children(item, "CoresPerSocket")
                    .next()
                    .and_then(|c| c.text())
                    .and_then(|t| t.trim().parse().ok());
            }
            "4" => {
                let units =
                    child_text(item, "AllocationUnits").unwrap_or_else(|| "byte * 2^20".into());
                let multiplier = unit_bytes(&units).ok_or_else(|| {
                    invalid(
                        "rasd:AllocationUnits",
                        format!("of {what:?} is unknown: {units:?}"),
                    )
                })?;
                ovf.memory_bytes = quantity()?.checked_mul(multiplier).ok_or_else(|| {
                    invalid("rasd:VirtualQuantity", format!("of {what:?} is too large"))
                })?;
            }
            "17" => {
                let host = child_text(item, "HostResource").ok_or_else(|| {
                    invalid(
                        "Item",
                        format!("{what:?} (a disk) has no <rasd:HostResource>"),
                    )
                })?;
                let id = host
                    .trim_start_matches("ovf:")
                    .trim_start_matches('/')
                    .trim_start_matches("disk/")
                    .to_string();
                let disk = disk_section.iter().find(|d| d.id == id).ok_or_else(|| {
                    invalid(
                        "rasd:HostResource",
                        format!(
                            "of {what:?} names {host:?}, which the <DiskSection> does not have"
                        ),
                    )
                })?;
                if disk.file.is_empty() {
                    return Err(invalid(
                        "Disk",
                        format!(
                            "{id} has no ovf:fileRef (an empty disk); vmo imports disks with data"
                        ),
                    ));
                }
                ovf.disks.push(disk.clone());
            }
            "10" => ovf.nics.push(OvfNic {
                network: child_text(item, "Connection").unwrap_or_default(),
                mac: child_text(item, "Address"),
                model: child_text(item, "ResourceSubType"),
            }),
            _ => {}
        }
    }
    if ovf.cpus == 0 {
        return Err(missing(
            "Item",
            " with ResourceType 3 (vCPUs) in <VirtualHardwareSection>",
        ));
    }
    if ovf.memory_bytes == 0 {
        return Err(missing(
            "Item",
            " with ResourceType 4 (memory) in <VirtualHardwareSection>",
        ));
    }
    if ovf.disks.is_empty() {
        return Err(missing(
            "Item",
            " with ResourceType 17 (a disk) in <VirtualHardwareSection>",
        ));
    }
    Ok(ovf)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const SAMPLE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
  xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References><File ovf:href="web-disk1.vmdk" ovf:id="file1" ovf:size="1000"/></References>
  <DiskSection><Info>disks</Info>
    <Disk ovf:capacity="2" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk1" ovf:fileRef="file1"/>
  </DiskSection>
  <NetworkSection><Network ovf:name="VM Network"/></NetworkSection>
  <VirtualSystem ovf:id="web01"><Name>Web 01</Name>
    <VirtualHardwareSection>
      <Item><rasd:ElementName>4 virtual CPU(s)</rasd:ElementName><rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>4</rasd:VirtualQuantity><vmw:CoresPerSocket ovf:required="false">2</vmw:CoresPerSocket></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>4096</rasd:VirtualQuantity></Item>
      <Item><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:Address>00:50:56:aa:bb:cc</rasd:Address><rasd:Connection>VM Network</rasd:Connection>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>"#;

    #[test]
    fn reads_a_vmware_descriptor() {
        let ovf = parse("web.ovf", SAMPLE).unwrap();
        assert_eq!(ovf.name, "Web 01");
        assert_eq!((ovf.cpus, ovf.cores_per_socket), (4, Some(2)));
        assert_eq!(ovf.memory_bytes, 4096 << 20);
        assert_eq!(
            ovf.disks,
            vec![OvfDisk {
                id: "vmdisk1".into(),
                file: "web-disk1.vmdk".into(),
                capacity: 2 << 30
            }]
        );
        assert_eq!(ovf.nics[0].network, "VM Network");
        assert_eq!(ovf.nics[0].mac.as_deref(), Some("00:50:56:aa:bb:cc"));
        assert!(ovf.efi);
    }

    #[test]
    fn errors_name_the_element() {
        let e = parse("a.ovf", "<Envelope><VirtualSystem>")
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not parse"), "{e}");
        let e = parse(
            "a.ovf",
            &SAMPLE.replace("ovf:/disk/vmdisk1", "ovf:/disk/nope"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("rasd:HostResource") && e.contains("nope"), "{e}");
        let e = parse(
            "a.ovf",
            &SAMPLE.replace("<rasd:VirtualQuantity>4096", "<rasd:VirtualQuantity>lots"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("<rasd:VirtualQuantity>") && e.contains("lots"),
            "{e}"
        );
        let e = parse("a.ovf", "<Envelope/>").unwrap_err().to_string();
        assert!(e.contains("no <VirtualSystem> element"), "{e}");
        assert_eq!(unit_bytes("byte * 10^6"), Some(1_000_000));
        assert_eq!(unit_bytes("MegaBytes"), Some(1 << 20));
    }
}
