//! What to launch for one VMI: a `LaunchPlan` built from the KubeVirt spec (pure, no I/O), and the
//! QEMU command line it turns into. Volumes arrive already resolved to files by `disks`.
//!
//! Devices follow KubeVirt's model on a q35 machine: virtio disks as virtio-blk-pci, sata disks and
//! cdroms on the q35 AHCI controller, scsi ones on one virtio-scsi controller; `bootOrder` becomes
//! QEMU's `bootindex`. QEMU itself listens on unix sockets for QMP, the serial console and VNC.

pub use crate::net::nics::{NicBackend, NicPlan};
use std::path::PathBuf;
use vmo_api::kinds::kubevirt::{Disk, VmiSpec};

/// The accelerator a VM runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// Firmware: SeaBIOS, or OVMF with a per-VM copy of its variable store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi { code: PathBuf, vars: PathBuf },
}

/// How a disk is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    Virtio,
    Sata,
    Scsi,
}

/// One disk, with its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    pub name: String,
    pub path: PathBuf,
    /// `raw` or `qcow2`.
    pub format: String,
    pub bus: Bus,
    pub cdrom: bool,
    pub readonly: bool,
    pub boot_order: Option<u32>,
    pub serial: Option<String>,
    /// `none`, `writethrough` or `writeback`.
    pub cache: String,
}

/// Everything QEMU needs for one VMI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    pub name: String,
    pub uuid: String,
    /// The SMBIOS system serial number (`firmware.serial`), if set.
    pub smbios_serial: Option<String>,
    pub accel: Accel,
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
    pub memory_mib: u64,
    pub firmware: Firmware,
    /// Direct kernel boot: kernel, initrd, command line.
    pub kernel: Option<(PathBuf, Option<PathBuf>, String)>,
    pub disks: Vec<DiskPlan>,
    /// NICs, in the spec's order (the guest sees them in this order).
    pub nics: Vec<NicPlan>,
    pub qmp_socket: PathBuf,
    pub serial_socket: PathBuf,
    pub vnc_socket: PathBuf,
    pub pidfile: PathBuf,
    /// Start paused, waiting for a live migration (`-incoming defer`).
    pub incoming: bool,
}

/// A spec that cannot be turned into a plan, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct PlanError {
    pub field: String,
    pub why: String,
}

fn err(field: &str, why: impl Into<String>) -> PlanError {
    PlanError {
        field: field.to_string(),
        why: why.into(),
    }
}

/// Guest memory in MiB: `domain.memory.guest`, else `resources.requests.memory`, rounded up.
pub fn memory_mib(spec: &VmiSpec) -> Result<u64, PlanError> {
    let bytes = spec
        .guest_memory_bytes()
        .map_err(|e| err(&e.path, e.detail))?;
    Ok(bytes.div_ceil(1 << 20))
}

fn bus_of(disk: &Disk) -> Result<(Bus, bool), PlanError> {
    let (target, cdrom) = match (&disk.disk, &disk.cdrom) {
        (_, Some(c)) => (Some(c), true),
        (Some(d), None) => (Some(d), false),
        (None, None) => (None, false),
    };
    let bus = match target.and_then(|t| t.bus.as_deref()) {
        None if cdrom => Bus::Sata,
        None | Some("virtio") => Bus::Virtio,
        Some("sata") => Bus::Sata,
        Some("scsi") => Bus::Scsi,
        Some(other) => {
            return Err(err(
                &format!("disk {}", disk.name),
                format!("bus {other:?} is not supported"),
            ))
        }
    };
    Ok((bus, cdrom))
}

impl DiskPlan {
    /// The plan for `disk`, backed by `path` in `format`.
    pub fn new(disk: &Disk, path: PathBuf, format: &str) -> Result<Self, PlanError> {
        let (bus, cdrom) = bus_of(disk)?;
        let readonly = cdrom
            || disk.disk.as_ref().and_then(|d| d.readonly).unwrap_or(false)
            || disk
                .cdrom
                .as_ref()
                .and_then(|d| d.readonly)
                .unwrap_or(false);
        Ok(Self {
            name: disk.name.clone(),
            path,
            format: format.to_string(),
            bus,
            cdrom,
            readonly,
            boot_order: disk.boot_order,
            serial: disk.serial.clone(),
            cache: disk.cache.clone().unwrap_or_else(|| "writeback".into()),
        })
    }
}

/// QEMU's option-value escaping: commas are doubled.
fn esc(s: &str) -> String {
    s.replace(',', ",,")
}

fn path_str(p: &std::path::Path) -> String {
    esc(&p.display().to_string())
}

impl LaunchPlan {
    /// The full `qemu-system-x86_64` argument list.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
        push(&[
            "-name",
            &format!("guest={},debug-threads=on", esc(&self.name)),
        ]);
        push(&["-uuid", &self.uuid]);
        if let Some(serial) = &self.smbios_serial {
            push(&["-smbios", &format!("type=1,serial={}", esc(serial))]);
        }
        push(&["-machine", "q35,usb=off,dump-guest-core=off"]);
        match self.accel {
            Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => push(&["-accel", "tcg,thread=multi", "-cpu", "max"]),
        }
        let vcpus = self.sockets * self.cores * self.threads;
        push(&[
            "-smp",
            &format!(
                "{vcpus},sockets={},cores={},threads={}",
                self.sockets, self.cores, self.threads
            ),
        ]);
        push(&["-m", &format!("{}M", self.memory_mib)]);
        if let Firmware::Uefi { code, vars } = &self.firmware {
            push(&[
                "-drive",
                &format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={}",
                    path_str(code)
                ),
            ]);
            push(&[
                "-drive",
                &format!("if=pflash,format=raw,unit=1,file={}", path_str(vars)),
            ]);
        }
        if let Some((kernel, initrd, cmdline)) = &self.kernel {
            push(&["-kernel", &kernel.display().to_string()]);
            if let Some(initrd) = initrd {
                push(&["-initrd", &initrd.display().to_string()]);
            }
            if !cmdline.is_empty() {
                push(&["-append", cmdline]);
            }
        }
        push(&[
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-vga",
            "none",
        ]);
        push(&[
            "-qmp",
            &format!("unix:{},server=on,wait=off", path_str(&self.qmp_socket)),
        ]);
        push(&[
            "-chardev",
            &format!(
                "socket,id=serial0,path={},server=on,wait=off",
                path_str(&self.serial_socket)
            ),
        ]);
        push(&["-serial", "chardev:serial0"]);
        push(&["-vnc", &format!("unix:{}", path_str(&self.vnc_socket))]);
        push(&["-device", "VGA"]);
        push(&["-pidfile", &self.pidfile.display().to_string()]);
        if self.incoming {
            push(&["-incoming", "defer"]);
        } else {
            // Paused until the agent has lowered QEMU's start-up priority to a guest's and sent
            // `cont` (process::launch): no guest code runs at the start-up priority.
            push(&["-S"]);
        }
        if self.disks.iter().any(|d| d.bus == Bus::Scsi) {
            push(&["-device", "virtio-scsi-pci,id=scsi0"]);
        }
        let mut sata_port = 0;
        let mut scsi_lun = 0;
        for d in &self.disks {
            let id = drive_id(&d.name);
            let mut drive = format!(
                "if=none,id={id},file={},format={},cache={},aio=threads,readonly={}",
                path_str(&d.path),
                d.format,
                d.cache,
                if d.readonly { "on" } else { "off" }
            );
            if d.cdrom {
                drive.push_str(",media=cdrom");
            }
            push(&["-drive", &drive]);
            let mut device = match (d.bus, d.cdrom) {
                (Bus::Virtio, _) => format!("virtio-blk-pci,drive={id},id=dev-{id}"),
                (Bus::Sata, cdrom) => {
                    let port = sata_port;
                    sata_port += 1;
                    format!(
                        "{},drive={id},id=dev-{id},bus=ide.{port}",
                        if cdrom { "ide-cd" } else { "ide-hd" }
                    )
                }
                (Bus::Scsi, cdrom) => {
                    let lun = scsi_lun;
                    scsi_lun += 1;
                    format!(
                        "{},drive={id},id=dev-{id},bus=scsi0.0,channel=0,scsi-id=0,lun={lun}",
                        if cdrom { "scsi-cd" } else { "scsi-hd" }
                    )
                }
            };
            if let Some(order) = d.boot_order {
                device.push_str(&format!(",bootindex={order}"));
            }
            if let Some(serial) = &d.serial {
                device.push_str(&format!(",serial={}", esc(serial)));
            }
            push(&["-device", &device]);
        }
        for nic in &self.nics {
            let id = &nic.name;
            let netdev = match &nic.backend {
                NicBackend::User => format!("user,id=net-{id}"),
                NicBackend::Tap(tap) => {
                    format!("tap,id=net-{id},ifname={tap},script=no,downscript=no")
                }
            };
            push(&["-netdev", &netdev]);
            let port = nic
                .port
                .as_ref()
                .map(|p| format!(",bus={p}"))
                .unwrap_or_default();
            push(&[
                "-device",
                &format!(
                    "{},netdev=net-{id},mac={},id=nic-{id}{port}",
                    nic.device, nic.mac
                ),
            ]);
        }
        // Empty PCIe root ports last (so the devices above keep their slots): NICs plugged into
        // the running guest go there.
        for k in 0..crate::net::nics::HOTPLUG_PORTS {
            push(&[
                "-device",
                &format!("pcie-root-port,id=hp{k},chassis={}", k + 1),
            ]);
        }
        a
    }
}

/// QEMU's id for a disk's drive: KubeVirt's user alias `ua-NAME` (metrics report NAME from it).
/// Volume names are DNS labels; anything else QEMU would refuse becomes `_`.
pub fn drive_id(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("ua-{safe}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> VmiSpec {
        serde_json::from_value(v).unwrap()
    }

    fn plan(disks: Vec<DiskPlan>) -> LaunchPlan {
        LaunchPlan {
            name: "default_vm1".into(),
            uuid: "6a1f0b8e-3b8c-4d4e-9b1a-0c2d3e4f5a6b".into(),
            smbios_serial: None,
            accel: Accel::Tcg,
            sockets: 1,
            cores: 2,
            threads: 1,
            memory_mib: 256,
            firmware: Firmware::Bios,
            kernel: None,
            disks,
            nics: vec![
                NicPlan {
                    name: "default".into(),
                    mac: "02:00:00:00:00:01".into(),
                    device: "virtio-net-pci".into(),
                    backend: NicBackend::User,
                    port: None,
                },
                NicPlan {
                    name: "vlan30".into(),
                    mac: "02:00:00:00:00:02".into(),
                    device: "e1000".into(),
                    backend: NicBackend::Tap("vt1234abcdef1".into()),
                    port: Some("hp1".into()),
                },
            ],
            qmp_socket: "/run/vm/qmp.sock".into(),
            serial_socket: "/run/vm/serial.sock".into(),
            vnc_socket: "/run/vm/vnc.sock".into(),
            pidfile: "/run/vm/qemu.pid".into(),
            incoming: false,
        }
    }

    #[test]
    fn the_firmware_serial_is_the_smbios_serial() {
        let mut p = plan(vec![]);
        assert!(!p.args().iter().any(|a| a == "-smbios"));
        p.smbios_serial = Some("S,1".into());
        let args = p.args().join(" ");
        assert!(args.contains("-smbios type=1,serial=S,,1"), "{args}");
    }

    #[test]
    fn memory_from_guest_or_requests() {
        assert_eq!(
            memory_mib(&spec(json!({"domain": {"memory": {"guest": "1Gi"}}}))).unwrap(),
            1024
        );
        assert_eq!(
            memory_mib(&spec(
                json!({"domain": {"resources": {"requests": {"memory": "1000M"}}}})
            ))
            .unwrap(),
            954
        );
        assert!(memory_mib(&spec(json!({"domain": {}}))).is_err());
    }

    #[test]
    fn devices_follow_buses_and_boot_order() {
        let disk = |v| serde_json::from_value::<Disk>(v).unwrap();
        let disks = vec![
            DiskPlan::new(
                &disk(json!({"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 1})),
                "/img/root,1.qcow2".into(),
                "qcow2",
            )
            .unwrap(),
            DiskPlan::new(
                &disk(json!({"name": "data", "disk": {"bus": "scsi"}, "serial": "D1"})),
                "/img/data.raw".into(),
                "raw",
            )
            .unwrap(),
            DiskPlan::new(
                &disk(json!({"name": "seed", "cdrom": {"bus": "sata"}})),
                "/img/seed.iso".into(),
                "raw",
            )
            .unwrap(),
        ];
        let args = plan(disks).args().join(" ");
        assert!(
            args.contains("file=/img/root,,1.qcow2,format=qcow2"),
            "{args}"
        );
        assert!(
            args.contains("virtio-blk-pci,drive=ua-root,id=dev-ua-root,bootindex=1"),
            "{args}"
        );
        assert!(args.contains("virtio-scsi-pci,id=scsi0"));
        assert!(args.contains("scsi-hd,drive=ua-data"));
        assert!(args.contains("serial=D1"));
        assert!(args.contains("ide-cd,drive=ua-seed,id=dev-ua-seed,bus=ide.0"));
        assert!(args.contains("readonly=on,media=cdrom"));
        assert!(args.contains("-smp 2,sockets=1,cores=2,threads=1"));
        assert!(args.contains("-accel tcg"));
        assert!(args.contains("-netdev user,id=net-default"));
        assert!(
            args.contains("virtio-net-pci,netdev=net-default,mac=02:00:00:00:00:01,id=nic-default")
        );
        assert!(
            args.contains("-netdev tap,id=net-vlan30,ifname=vt1234abcdef1,script=no,downscript=no")
        );
        assert!(
            args.contains("e1000,netdev=net-vlan30,mac=02:00:00:00:00:02,id=nic-vlan30,bus=hp1")
        );
        assert!(args.contains("pcie-root-port,id=hp3,chassis=4"));
        assert!(args.contains("-qmp unix:/run/vm/qmp.sock,server=on,wait=off"));
        // A new VM starts paused until the agent continues it; an incoming one waits for its state.
        assert!(args.split(' ').any(|a| a == "-S"), "{args}");
    }

    #[test]
    fn unsupported_buses_name_the_disk() {
        let d: Disk =
            serde_json::from_value(json!({"name": "x", "disk": {"bus": "floppy"}})).unwrap();
        let e = DiskPlan::new(&d, "/x".into(), "raw").unwrap_err();
        assert_eq!(e.field, "disk x");
    }
}
