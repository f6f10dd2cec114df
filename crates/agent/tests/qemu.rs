//! The runtime layer against real QEMU (TCG): the test guest boots by kernelBoot with a NoCloud seed
//! whose user-data runs, and from a BIOS disk through a copy-on-write overlay; ACPI power-down ends
//! QEMU; a restarted agent adopts a running QEMU; a second QEMU writing one disk is refused; the
//! accelerator probe's guest really runs. Needs qemu-system-x86_64 and the test guest
//! (scripts/guest/build.sh); without them the tests say so and stop, unless VMO_REQUIRE_QEMU is set.

use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vmo_agent::vm::disks::{self, Identity, Secrets};
use vmo_agent::vm::plan::{memory_mib, Accel, Firmware, LaunchPlan};
use vmo_agent::vm::process::{self, ProcessError};
use vmo_api::kinds::kubevirt::VmiSpec;

const QEMU: &str = "qemu-system-x86_64";
const BOOT_DEADLINE: Duration = Duration::from_secs(150);

fn guest() -> Option<PathBuf> {
    vmo_testkit::test_guest()
}

fn plan_for(spec: &VmiSpec, run_dir: &Path, name: &str, uuid: &str) -> LaunchPlan {
    let identity = Identity {
        instance_id: uuid.to_string(),
        hostname: name.to_string(),
    };
    let disks = disks::prepare(
        spec,
        run_dir,
        &identity,
        &Secrets::new(),
        &Default::default(),
    )
    .expect("disks");
    let kernel = spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.kernel_boot.as_ref())
        .map(|k| {
            let c = k.container.as_ref().unwrap();
            (
                PathBuf::from(c.kernel_path.clone().unwrap()),
                c.initrd_path.clone().map(PathBuf::from),
                k.kernel_args.clone().unwrap_or_default(),
            )
        });
    let (qmp_socket, serial_socket, vnc_socket, pidfile, _) = process::run_files(run_dir);
    LaunchPlan {
        name: name.into(),
        uuid: uuid.into(),
        smbios_serial: None,
        accel: Accel::Tcg,
        sockets: 1,
        cores: 1,
        threads: 1,
        memory_mib: memory_mib(spec).unwrap(),
        firmware: Firmware::Bios,
        kernel,
        disks,
        nics: vec![vmo_agent::vm::plan::NicPlan {
            name: "default".into(),
            mac: "02:00:00:aa:00:01".into(),
            device: "virtio-net-pci".into(),
            backend: vmo_agent::vm::plan::NicBackend::User,
            port: None,
        }],
        qmp_socket,
        serial_socket,
        vnc_socket,
        pidfile,
        incoming: false,
    }
}

async fn console_until(socket: &Path, marker: &str, deadline: Duration) -> String {
    vmo_testkit::console_until(socket, marker, deadline).await
}

fn kernel_boot_spec(guest: &Path) -> VmiSpec {
    serde_json::from_value(json!({
        "domain": {
            "memory": {"guest": "256Mi"},
            "firmware": {"kernelBoot": {
                "kernelArgs": "console=ttyS0 quiet no_timer_check",
                "container": {
                    "kernelPath": guest.join("vmlinuz").display().to_string(),
                    "initrdPath": guest.join("initrd.img").display().to_string()
                }
            }},
            "devices": {"disks": [
                {"name": "scratch", "disk": {"bus": "virtio"}},
                {"name": "cloudinit", "disk": {"bus": "virtio"}}
            ]}
        },
        "volumes": [
            {"name": "scratch", "emptyDisk": {"capacity": "64Mi"}},
            {"name": "cloudinit", "cloudInitNoCloud": {"userData": "#!/bin/sh\necho VMO-TEST-USERDATA-RAN\n"}}
        ]
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_boot_with_cloud_init_then_acpi_power_down_and_adoption() {
    let Some(guest) = guest() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spec = kernel_boot_spec(&guest);
    let plan = plan_for(
        &spec,
        dir.path(),
        "kb-guest",
        "11111111-2222-4333-8444-555555555555",
    );
    let started = Instant::now();
    let qemu = process::launch(QEMU, &plan).await.expect("launch");
    assert_eq!(qemu.qmp.status().await.unwrap(), "running");
    eprintln!("QEMU running after {:?}", started.elapsed());
    let console = console_until(&plan.serial_socket, "VMO-GUEST: ready", BOOT_DEADLINE).await;
    eprintln!("guest ready after {:?}", started.elapsed());
    assert!(console.contains("VMO-GUEST: booted"), "{console}");
    assert!(
        console.contains("VMO-TEST-USERDATA-RAN"),
        "user-data ran:\n{console}"
    );
    assert!(
        console.contains("cloud-init done hostname=kb-guest"),
        "{console}"
    );
    // The agent goes away (its QMP connection closes); QEMU keeps running and is adopted again.
    let pid = qemu.pid;
    drop(qemu);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        process::is_qemu(pid, &plan.uuid),
        "QEMU outlives its owner's connection"
    );
    let mut adopted = process::adopt(dir.path(), &plan.uuid).await.expect("adopt");
    assert_eq!(adopted.pid, pid);
    assert_eq!(adopted.qmp.status().await.unwrap(), "running");
    // ACPI power button: the guest shuts down and QEMU exits.
    adopted.qmp.execute("system_powerdown", None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut saw_shutdown = false;
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), adopted.events.recv()).await {
            Ok(Some(e)) if e.name == "SHUTDOWN" => saw_shutdown = true,
            Ok(None) => break,
            _ => {}
        }
    }
    assert!(saw_shutdown, "QEMU reported the guest's shutdown");
    let gone = Instant::now() + Duration::from_secs(10);
    while process::is_qemu(pid, &plan.uuid) && Instant::now() < gone {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !process::is_qemu(pid, &plan.uuid),
        "QEMU exited after the guest powered off"
    );
    assert!(matches!(
        process::adopt(dir.path(), &plan.uuid).await,
        Err(ProcessError::NotRunning(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bios_boot_from_an_overlay_and_a_disk_is_never_written_by_two_qemus() {
    let Some(guest) = guest() else { return };
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("shared.raw");
    let status = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(guest.join("disk.qcow2"))
        .arg(&image)
        .status()
        .unwrap();
    assert!(status.success());
    let spec = |name: &str| -> VmiSpec {
        serde_json::from_value(json!({
            "domain": {"memory": {"guest": "256Mi"},
                "devices": {"disks": [{"name": name, "disk": {"bus": "virtio"}, "bootOrder": 1}]}},
            "volumes": [{"name": name, "hostDisk": {"path": image.display().to_string(), "type": "Disk"}}]
        }))
        .unwrap()
    };
    let first_dir = dir.path().join("first");
    std::fs::create_dir_all(&first_dir).unwrap();
    let first = plan_for(
        &spec("root"),
        &first_dir,
        "bios-1",
        "aaaaaaaa-0000-4000-8000-000000000001",
    );
    let q1 = process::launch(QEMU, &first).await.expect("first launch");
    let console = console_until(&first.serial_socket, "VMO-GUEST: booted", BOOT_DEADLINE).await;
    assert!(console.contains("VMO-GUEST: booted"));
    // A second QEMU on the same disk is refused by QEMU's image locking, with its reason.
    let second_dir = dir.path().join("second");
    std::fs::create_dir_all(&second_dir).unwrap();
    let second = plan_for(
        &spec("root"),
        &second_dir,
        "bios-2",
        "aaaaaaaa-0000-4000-8000-000000000002",
    );
    match process::launch(QEMU, &second).await {
        Err(ProcessError::EarlyExit { log_tail }) => {
            assert!(log_tail.contains("lock"), "{log_tail}")
        }
        other => panic!("a second writer must be refused, got {other:?}"),
    }
    process::kill(q1.pid);
    // The same image through a discarded overlay (containerDisk) boots too, leaving the image alone.
    let overlay_dir = dir.path().join("overlay");
    std::fs::create_dir_all(&overlay_dir).unwrap();
    let overlay_spec: VmiSpec = serde_json::from_value(json!({
        "domain": {"memory": {"guest": "256Mi"},
            "devices": {"disks": [{"name": "root", "disk": {"bus": "sata"}, "bootOrder": 1}]}},
        "volumes": [{"name": "root", "containerDisk": {"image": guest.join("disk.qcow2").display().to_string()}}]
    }))
    .unwrap();
    let plan = plan_for(
        &overlay_spec,
        &overlay_dir,
        "overlay",
        "aaaaaaaa-0000-4000-8000-000000000003",
    );
    assert!(plan.disks[0].path.starts_with(&overlay_dir));
    let q3 = process::launch(QEMU, &plan).await.expect("overlay launch");
    console_until(&plan.serial_socket, "VMO-GUEST: booted", BOOT_DEADLINE).await;
    process::kill(q3.pid);
}

#[test]
fn missing_disks_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let spec: VmiSpec = serde_json::from_value(json!({
        "domain": {"memory": {"guest": "64Mi"}, "devices": {"disks": [{"name": "root"}]}},
        "volumes": [{"name": "root", "hostDisk": {"path": "/nonexistent/disk.img", "type": "Disk"}}]
    }))
    .unwrap();
    let identity = Identity {
        instance_id: "x".into(),
        hostname: "x".into(),
    };
    let e = disks::prepare(
        &spec,
        dir.path(),
        &identity,
        &Secrets::new(),
        &Default::default(),
    )
    .unwrap_err();
    assert_eq!(e.field, "spec.volumes[0].hostDisk.path");
    assert!(e.why.contains("/nonexistent/disk.img does not exist"));
}

#[test]
fn the_accelerator_probe_guest_runs_and_the_probe_decides_in_time() {
    if Command::new(QEMU).arg("--version").output().is_err() {
        if std::env::var_os("VMO_REQUIRE_QEMU").is_some() {
            panic!("VMO_REQUIRE_QEMU is set but qemu-system-x86_64 is not installed");
        }
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (accel, why) = process::probe_accelerator(QEMU, dir.path(), Duration::from_secs(3));
    eprintln!("accelerator: {accel:?} ({why})");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the probe respects its deadline"
    );
    assert!(!why.is_empty());
    if accel == Accel::Kvm {
        assert!(why.contains("ran"));
    }
    // The probe's QEMU is gone when the probe returns.
    let probe_image = dir.path().join("accel-probe.img").display().to_string();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&probe_image) && !c.starts_with("timeout"))
        .collect();
    assert!(left.is_empty(), "probe QEMU left running: {left:?}");
}
