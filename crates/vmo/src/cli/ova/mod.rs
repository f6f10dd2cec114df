//! `vmo import ova FILE.ova`: a VMware export becomes a VirtualMachine.
//!
//! ```text
//!  FILE.ova (tar) ─ headers read in order ─► the .ovf descriptor ─► name, vCPUs, memory, disks,
//!                                             NICs and their networks, firmware
//!  each disk: an upload DataVolume sized from the OVF capacity ◄─ its VMDK streamed straight
//!             from the archive at its offset (no extraction), converted by the agent's import
//!  then: a VirtualMachine using them (runStrategy Halted unless --start, bootOrder 1 on the
//!        first disk), owning its DataVolumes
//! ```
//!
//! NICs connected to a network named in `--network OVFNAME=ns/nad` get that
//! NetworkAttachmentDefinition (bridge binding); the first other NIC gets the pod network
//! (masquerade), and further ones are left out with a warning. The OVF network names are kept in
//! the annotation `vmo.io/ovf-networks`. A manifest (`.mf`) is honoured: the descriptor is checked
//! against it here, each disk by the server's import as it streams. A rerun after an
//! interruption continues: existing DataVolumes of the import are reused and their uploads resume.

pub mod ovf;
pub mod tar;

use super::upload::{self, ByteRange};
use super::Context;
use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use vmo_api::Registry;

/// The annotation naming each interface's OVF network.
pub const NETWORKS_ANNOTATION: &str = "vmo.io/ovf-networks";

#[derive(Args, Debug)]
pub struct ImportArgs {
    #[command(subcommand)]
    pub command: ImportCommand,
}

#[derive(Subcommand, Debug)]
pub enum ImportCommand {
    /// Import a VMware OVA (OVF descriptor + VMDK disks) as a VirtualMachine.
    Ova(OvaArgs),
}

#[derive(Args, Debug)]
pub struct OvaArgs {
    /// The .ova file.
    pub file: PathBuf,
    /// The VirtualMachine's name (default: the OVF's VirtualSystem name, made a valid name).
    #[arg(long)]
    pub name: Option<String>,
    /// The StorageClass of the disks (default: the cluster's default class).
    #[arg(long)]
    pub storage_class: Option<String>,
    /// Start the VM once imported (default: it stays Halted).
    #[arg(long)]
    pub start: bool,
    /// Map an OVF network to a NetworkAttachmentDefinition: `--network "VM Network=ns/nad"`.
    #[arg(long = "network", value_name = "OVFNAME=NS/NAD")]
    pub networks: Vec<String>,
    /// The disks' bus: virtio (fastest; the guest needs virtio drivers), sata or scsi (for guests
    /// without them, such as Windows as VMware left it).
    #[arg(long, default_value = "virtio", value_parser = ["virtio", "sata", "scsi"])]
    pub disk_bus: String,
    /// Give up waiting for a disk after this many seconds.
    #[arg(long, default_value_t = 1800)]
    pub timeout: u64,
}

pub async fn run(ctx: &Context, args: ImportArgs) -> anyhow::Result<()> {
    match args.command {
        ImportCommand::Ova(a) => import_ova(ctx, a).await,
    }
}

/// The digests an OVA's manifest (`.mf`) lists, by file: `sha256:<hex>` (sha1, sha384, sha512).
pub fn manifest(name: &str, text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut digests = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let parsed = line.split_once('=').and_then(|(left, hex)| {
            let (algo, rest) = left.trim().split_once('(')?;
            let file = rest.strip_suffix(')')?;
            let algo = algo.trim().to_ascii_lowercase();
            matches!(algo.as_str(), "sha1" | "sha256" | "sha384" | "sha512").then(|| {
                (
                    file.to_string(),
                    format!("{algo}:{}", hex.trim().to_ascii_lowercase()),
                )
            })
        });
        let Some((file, digest)) = parsed else {
            bail!(
                "line {} of the manifest {name} is not `SHA256(FILE)= DIGEST`: {line:?}",
                n + 1
            );
        };
        digests.insert(file, digest);
    }
    Ok(digests)
}

/// Checks `bytes` against `sha256:<hex>` (or sha1, sha384, sha512).
fn digest_matches(spec: &str, bytes: &[u8]) -> Option<(bool, String)> {
    use ring::digest;
    let (algo, hex) = spec.split_once(':')?;
    let algorithm = match algo {
        "sha1" => &digest::SHA1_FOR_LEGACY_USE_ONLY,
        "sha256" => &digest::SHA256,
        "sha384" => &digest::SHA384,
        "sha512" => &digest::SHA512,
        _ => return None,
    };
    let got: String = digest::digest(algorithm, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some((got == hex, got))
}

/// A DNS-1123 label from a VMware name (`Web 01` -> `web-01`).
pub fn vm_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out: String = out.trim_matches('-').chars().take(50).collect();
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() {
        "imported-vm".into()
    } else {
        out
    }
}

/// The VirtualMachine for `ovf`, its disks in DataVolumes `NAME-disk0..`; NICs mapped with
/// `networks` (OVF network -> `ns/nad`). Returns it with the warnings for NICs left out.
pub fn virtual_machine(
    ovf: &ovf::Ovf,
    name: &str,
    ns: &str,
    start: bool,
    networks: &BTreeMap<String, String>,
    disk_bus: &str,
) -> (Value, Vec<String>) {
    let mut disks = Vec::new();
    let mut volumes = Vec::new();
    for (i, _) in ovf.disks.iter().enumerate() {
        let mut disk = json!({"name": format!("disk{i}"), "disk": {"bus": disk_bus}});
        if i == 0 {
            disk["bootOrder"] = json!(1);
        }
        disks.push(disk);
        volumes.push(
            json!({"name": format!("disk{i}"), "dataVolume": {"name": format!("{name}-disk{i}")}}),
        );
    }
    let (mut interfaces, mut nets, mut warnings) = (Vec::new(), Vec::new(), Vec::new());
    let mut names = serde_json::Map::new();
    let mut pod_used = false;
    for (i, nic) in ovf.nics.iter().enumerate() {
        let iface_name = format!("nic{i}");
        let (mut iface, net) = match networks.get(&nic.network) {
            Some(nad) => (
                json!({"name": iface_name, "bridge": {}}),
                json!({"name": iface_name, "multus": {"networkName": nad}}),
            ),
            None if !pod_used => {
                pod_used = true;
                (
                    json!({"name": iface_name, "masquerade": {}}),
                    json!({"name": iface_name, "pod": {}}),
                )
            }
            None => {
                warnings.push(format!(
                    "NIC {i} (network {:?}) is left out: only one NIC can use the pod network; map it with --network \"{}=NS/NAD\"",
                    nic.network, nic.network
                ));
                continue;
            }
        };
        if let Some(mac) = &nic.mac {
            iface["macAddress"] = json!(mac.to_ascii_lowercase());
        }
        names.insert(iface_name, json!(nic.network));
        interfaces.push(iface);
        nets.push(net);
    }
    let mut cpu = json!({"cores": ovf.cpus});
    if let Some(cps) = ovf
        .cores_per_socket
        .filter(|c| *c > 0 && ovf.cpus.is_multiple_of(*c))
    {
        cpu = json!({"sockets": ovf.cpus / cps, "cores": cps});
    }
    let mut domain = json!({
        "cpu": cpu,
        "memory": {"guest": format!("{}Mi", ovf.memory_bytes.div_ceil(1 << 20))},
        "devices": {"disks": disks, "interfaces": interfaces},
    });
    if ovf.efi {
        domain["firmware"] = json!({"bootloader": {"efi": {"secureBoot": false}}});
    }
    let mut annotations = json!({"vmo.io/imported-from": "ova"});
    if !names.is_empty() {
        annotations[NETWORKS_ANNOTATION] = json!(Value::Object(names).to_string());
    }
    let vm = json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations},
        "spec": {
            "runStrategy": if start { "Always" } else { "Halted" },
            "template": {"spec": {"domain": domain, "networks": nets, "volumes": volumes}},
        },
    });
    (vm, warnings)
}

async fn import_ova(ctx: &Context, args: OvaArgs) -> anyhow::Result<()> {
    let mut networks = BTreeMap::new();
    for m in &args.networks {
        let (ovf_name, nad) = m
            .rsplit_once('=')
            .filter(|(o, n)| !o.is_empty() && !n.is_empty())
            .ok_or_else(|| {
                anyhow::anyhow!("--network {m:?}: use OVFNAME=NAMESPACE/NAD (or OVFNAME=NAD)")
            })?;
        networks.insert(ovf_name.to_string(), nad.to_string());
    }
    let members = tar::members(&args.file)?;
    let shown = args.file.display().to_string();
    let descriptor = members
        .iter()
        .find(|m| m.name.to_ascii_lowercase().ends_with(".ovf"))
        .ok_or_else(|| {
            let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
            anyhow::anyhow!(
                "{shown} has no OVF descriptor (.ovf) among its files ({}): it is not an OVA",
                names.join(", ")
            )
        })?;
    if descriptor.len > 16 << 20 {
        bail!(
            "the OVF descriptor {} is {} bytes; descriptors are small XML files",
            descriptor.name,
            descriptor.len
        );
    }
    let xml = {
        use std::io::{Read, Seek};
        let mut f = std::fs::File::open(&args.file)?;
        f.seek(std::io::SeekFrom::Start(descriptor.start))?;
        let mut bytes = vec![0u8; descriptor.len as usize];
        f.read_exact(&mut bytes)?;
        String::from_utf8(bytes)
            .with_context(|| format!("the OVF descriptor {} is not UTF-8 text", descriptor.name))?
    };
    let digests = match members
        .iter()
        .find(|m| m.name.to_ascii_lowercase().ends_with(".mf"))
    {
        Some(mf) if mf.len < 1 << 20 => {
            use std::io::{Read, Seek};
            let mut f = std::fs::File::open(&args.file)?;
            f.seek(std::io::SeekFrom::Start(mf.start))?;
            let mut text = String::new();
            f.take(mf.len).read_to_string(&mut text)?;
            manifest(&mf.name, &text)?
        }
        _ => BTreeMap::new(),
    };
    if let Some(spec) = digests.get(&descriptor.name) {
        if let Some((false, got)) = digest_matches(spec, xml.as_bytes()) {
            bail!(
                "the OVF descriptor {} does not match the manifest: expected {spec}, got {got}",
                descriptor.name
            );
        }
    }
    let ovf = ovf::parse(&descriptor.name, &xml)?;
    let mut ranges = Vec::new();
    for disk in &ovf.disks {
        let member = members
            .iter()
            .find(|m| m.name == disk.file)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the OVF's disk {} is the file {:?}, which is not in {shown}",
                    disk.id,
                    disk.file
                )
            })?;
        ranges.push(member.clone());
    }
    let client = ctx.client()?;
    let ns = ctx.namespace(&client);
    let name = args.name.clone().unwrap_or_else(|| vm_name(&ovf.name));
    let registry = Registry::builtin();
    let vm_kind = *registry.resolve("vm").expect("registered");
    if client.get(&vm_kind, &ns, &name).await.is_ok() {
        bail!("VirtualMachine {ns}/{name} exists already; choose another with --name");
    }
    let (vm, warnings) = virtual_machine(&ovf, &name, &ns, args.start, &networks, &args.disk_bus);
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    eprintln!(
        "{shown}: VirtualSystem {:?}: {} vCPUs, {} MiB, {} disk(s), {} NIC(s){}",
        ovf.name,
        ovf.cpus,
        ovf.memory_bytes >> 20,
        ovf.disks.len(),
        ovf.nics.len(),
        if ovf.efi { ", UEFI" } else { "" }
    );
    let dv_kind = upload::dv_kind();
    let timeout = Duration::from_secs(args.timeout);
    for (i, (disk, member)) in ovf.disks.iter().zip(&ranges).enumerate() {
        let dv_name = format!("{name}-disk{i}");
        match client.get(&dv_kind, &ns, &dv_name).await {
            Ok(_) => eprintln!("DataVolume {ns}/{dv_name} exists; continuing its upload"),
            Err(e) if e.is_not_found() => {
                let mut dv = upload::upload_data_volume(
                    &dv_name,
                    &ns,
                    disk.capacity,
                    args.storage_class.as_deref(),
                    None,
                );
                dv["metadata"]["labels"] = json!({"vmo.io/imported-vm": name});
                client.create(&dv_kind, &ns, &dv).await?;
            }
            Err(e) => return Err(e.into()),
        }
        let range = ByteRange {
            path: args.file.clone(),
            start: member.start,
            len: member.len,
            label: format!("{} (disk {i} of {shown})", member.name),
            checksum: digests.get(&member.name).cloned(),
        };
        upload::upload_range(&client, &ns, &dv_name, &range, None, timeout).await?;
        upload::wait_succeeded(&client, &ns, &dv_name, timeout).await?;
    }
    let created = client.create(&vm_kind, &ns, &vm).await?;
    for i in 0..ovf.disks.len() {
        let owner = json!({"metadata": {"ownerReferences": [{"apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine", "name": name, "uid": created.metadata.uid,
            "controller": true, "blockOwnerDeletion": true}]}});
        if let Err(e) = client
            .merge_patch(
                &dv_kind,
                &ns,
                &format!("{name}-disk{i}"),
                None,
                &owner,
                "vmo-import",
            )
            .await
        {
            eprintln!("warning: DataVolume {name}-disk{i} is not owned by the VM: {e}");
        }
    }
    println!(
        "virtualmachine.kubevirt.io/{name} imported ({}){}",
        if args.start {
            "starting"
        } else {
            "Halted; `vmo start` starts it"
        },
        if warnings.is_empty() {
            ""
        } else {
            " with warnings"
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_manifests() {
        let m = manifest(
            "a.mf",
            "SHA256(web.ovf)= ABCD\nSHA1(web-disk1.vmdk)=12ef\n\n",
        )
        .unwrap();
        assert_eq!(m["web.ovf"], "sha256:abcd");
        assert_eq!(m["web-disk1.vmdk"], "sha1:12ef");
        let e = manifest("a.mf", "MD5(x)= 00").unwrap_err().to_string();
        assert!(e.contains("line 1 of the manifest a.mf"), "{e}");
        let sha = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(digest_matches(sha, b"abc").map(|d| d.0), Some(true));
        assert_eq!(digest_matches(sha, b"abd").map(|d| d.0), Some(false));
    }

    #[test]
    fn maps_the_ovf_to_a_virtual_machine() {
        let ovf = ovf::Ovf {
            name: "Web 01".into(),
            cpus: 4,
            cores_per_socket: Some(2),
            memory_bytes: 4096 << 20,
            disks: vec![
                ovf::OvfDisk {
                    id: "a".into(),
                    file: "a.vmdk".into(),
                    capacity: 1 << 30,
                },
                ovf::OvfDisk {
                    id: "b".into(),
                    file: "b.vmdk".into(),
                    capacity: 1 << 30,
                },
            ],
            nics: vec![
                ovf::OvfNic {
                    network: "VM Network".into(),
                    mac: Some("00:50:56:AA:BB:CC".into()),
                    model: None,
                },
                ovf::OvfNic {
                    network: "Storage".into(),
                    mac: None,
                    model: None,
                },
                ovf::OvfNic {
                    network: "Backup".into(),
                    mac: None,
                    model: None,
                },
            ],
            efi: true,
        };
        let nets = BTreeMap::from([("Storage".to_string(), "infra/storage".to_string())]);
        let (vm, warnings) =
            virtual_machine(&ovf, &vm_name(&ovf.name), "default", false, &nets, "sata");
        assert_eq!(vm["metadata"]["name"], "web-01");
        let spec = &vm["spec"]["template"]["spec"];
        assert_eq!(vm["spec"]["runStrategy"], "Halted");
        assert_eq!(spec["domain"]["cpu"], json!({"sockets": 2, "cores": 2}));
        assert_eq!(spec["domain"]["memory"]["guest"], "4096Mi");
        assert_eq!(spec["domain"]["devices"]["disks"][0]["bootOrder"], 1);
        assert_eq!(spec["domain"]["devices"]["disks"][0]["disk"]["bus"], "sata");
        assert!(spec["domain"]["devices"]["disks"][1]["bootOrder"].is_null());
        assert_eq!(spec["volumes"][1]["dataVolume"]["name"], "web-01-disk1");
        assert_eq!(
            spec["domain"]["devices"]["interfaces"][0]["macAddress"],
            "00:50:56:aa:bb:cc"
        );
        assert_eq!(spec["networks"][0]["pod"], json!({}));
        assert_eq!(
            spec["networks"][1]["multus"]["networkName"],
            "infra/storage"
        );
        assert_eq!(spec["networks"].as_array().unwrap().len(), 2);
        assert!(warnings[0].contains("Backup"), "{warnings:?}");
        assert!(spec["domain"]["firmware"]["bootloader"]["efi"].is_object());
        let kind = Registry::builtin().resolve("vm").copied().unwrap();
        let errors = (kind.validate)(&vmo_api::Object::from_value(vm).unwrap());
        assert!(errors.is_empty(), "{errors:?}");
    }
}
