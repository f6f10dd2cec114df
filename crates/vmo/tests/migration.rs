//! Live migration with real QEMU (TCG) between three agents on one machine: a guest that dirties
//! memory and counts on its serial console moves round robin over three nodes without its counter
//! restarting, with its shared-pool disk; a migration whose target QEMU is killed mid-way leaves the
//! VM running on its source with nothing left on the target; deleting a migration cancels it.
//! One test runs each node as a host of its own (a network namespace with its own address), so
//! the migration crosses a real network between two addresses.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vmo_api::kinds::migration::MigrationState;
use vmo_api::{Object, Registry};
use vmo_testkit::objects::vmi;
use vmo_testkit::{
    console_log_until, process_alive as alive, test_guest, wait_for, Cluster, KeptDir,
};

const WAIT: Duration = Duration::from_secs(120);

fn kind(name: &str) -> vmo_api::KindInfo {
    *Registry::builtin().resolve(name).expect("kind")
}

fn vmo() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vmo"))
}

/// A VM whose guest counts on its console and dirties `dirty` MiB/s, with a disk in the shared pool.
fn manifest(name: &str, guest: &Path, pool: &Path, dirty: u32) -> String {
    let kernel = vmo_testkit::guest_kernel(guest);
    format!(
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  runStrategy: Always
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      evictionStrategy: LiveMigrate
      terminationGracePeriodSeconds: 5
      domain:
        memory:
          guest: 256Mi
        firmware:
          kernelBoot:
            kernelArgs: console=ttyS0 quiet no_timer_check vmo.netwait=0 vmo.tick=1 vmo.dirty={dirty} vmo.dirtybuf=48
            container:
              kernelPath: {k}
              initrdPath: {g}/initrd.img
        devices:
          disks:
            - name: data
              disk: {{bus: virtio}}
            - name: cloudinit
              disk: {{bus: virtio}}
      volumes:
        - name: data
          hostDisk:
            path: {pool}/{name}-data.img
            type: DiskOrCreate
            capacity: 64Mi
        - name: cloudinit
          cloudInitNoCloud:
            userData: |
              #!/bin/sh
              echo VMO-E2E-USERDATA {name}
"#,
        g = guest.display(),
        k = kernel.display(),
        pool = pool.display()
    )
}

/// Applies a VM manifest and waits until its instance runs.
async fn apply_and_run(cluster: &Cluster, manifest: &str, name: &str) -> Object {
    let (ok, out, err) = cluster
        .up
        .cli_with_input(&["apply", "-f", "-"], Some(manifest));
    assert!(ok, "{out}{err}");
    let client = cluster.client();
    wait_for(&format!("{name} running"), WAIT, || async {
        vmi(&client, name)
            .await
            .filter(|i| i.status()["phase"] == "Running")
    })
    .await
}

fn node_of(vmi: &Object) -> String {
    vmi.status()["nodeName"].as_str().unwrap_or("").to_string()
}

fn serial_log(cluster: &mut Cluster, node: &str, uid: &str) -> PathBuf {
    cluster.agent(node).run_dir(uid).join("serial.log")
}

/// The highest `tick N` in a console transcript.
fn last_tick(console: &str) -> u64 {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("VMO-GUEST: tick "))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

fn qemu_pid(run_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(run_dir.join("qemu.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Runs `vmo migrate` and checks the instance moved to a node other than `from` (to `to` if
/// given) with its guest still counting; returns the new node.
async fn migrate_and_check(
    cluster: &mut Cluster,
    name: &str,
    from: &str,
    to: Option<&str>,
    ticks_before: u64,
) -> (String, u64) {
    let client = cluster.client();
    let uid = vmi(&client, name).await.unwrap().metadata.uid;
    let source_run = cluster.agent(from).run_dir(&uid);
    let mut args = vec!["migrate", name, "--wait", "--timeout", "120"];
    if let Some(to) = to {
        args.extend(["--target-node", to]);
    }
    let (ok, out, err) = cluster.up.cli(&args);
    assert!(ok, "vmo migrate failed: {out}{err}\n{}", cluster.logs());
    assert!(out.contains("Succeeded"), "{out}");
    assert!(out.contains("downtime"), "{out}");
    let moved = vmi(&client, name).await.unwrap();
    let node = node_of(&moved);
    assert_ne!(node, from);
    if let Some(to) = to {
        assert_eq!(node, to);
    }
    assert_eq!(moved.metadata.uid, uid, "the same instance carries on");
    assert_eq!(moved.status()["phase"], "Running");
    let state = MigrationState::of(&moved).expect("migrationState");
    assert!(state.completed && !state.failed, "{state:?}");
    assert_eq!(
        (state.source_node.as_str(), state.target_node.as_str()),
        (from, node.as_str())
    );
    assert!(state.start_timestamp.is_some() && state.end_timestamp.is_some());
    assert!(state.transferred_bytes.unwrap_or(0) > 0, "{state:?}");
    // The guest carries on counting on the target: no reboot, no counter reset.
    let log = serial_log(cluster, &node, &uid);
    let want = format!("VMO-GUEST: tick {}", ticks_before + 3);
    let console = console_log_until(&log, &want, Duration::from_secs(60)).await;
    assert!(
        !console.contains("VMO-GUEST: booted"),
        "the guest rebooted: {console}"
    );
    let first_on_target = console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("VMO-GUEST: tick "))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .next()
        .unwrap_or(0);
    assert!(
        first_on_target > ticks_before.saturating_sub(1),
        "counter went back: {first_on_target} after {ticks_before}"
    );
    // The source let go of everything.
    wait_for("the source's run directory to go", WAIT, || async {
        (!source_run.exists()).then_some(())
    })
    .await;
    (node, last_tick(&console))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dirtying_guest_migrates_round_robin_over_three_nodes() {
    let Some(guest) = test_guest() else { return };
    let dir = KeptDir::new("vmo-migrate-");
    let mut cluster = Cluster::start(
        vmo(),
        dir.path(),
        &[
            ("node-a", "zone-a"),
            ("node-b", "zone-b"),
            ("node-c", "zone-c"),
        ],
    )
    .await;
    let client = cluster.client();
    let pool = cluster.shared_pool.clone();
    let running = apply_and_run(&cluster, &manifest("mover", &guest, &pool, 16), "mover").await;
    let uid = running.metadata.uid.clone();
    let mut node = node_of(&running);
    let log = serial_log(&mut cluster, &node, &uid);
    let console = console_log_until(&log, "VMO-GUEST: tick 3", Duration::from_secs(150)).await;
    assert!(
        console.contains("VMO-GUEST: dirtying 16 MiB/s"),
        "{console}"
    );
    let mut ticks = last_tick(&console);

    // Round robin: to each of the other two nodes by name, then wherever the scheduler says.
    let others: Vec<String> = ["node-a", "node-b", "node-c"]
        .iter()
        .filter(|n| **n != node)
        .map(|n| n.to_string())
        .collect();
    for to in &others {
        let (now, t) =
            migrate_and_check(&mut cluster, "mover", &node.clone(), Some(to), ticks).await;
        node = now;
        ticks = t;
    }
    let (now, ticks) = migrate_and_check(&mut cluster, "mover", &node.clone(), None, ticks).await;
    assert_ne!(now, node);

    // Back to back: a new migration created the moment the last one completes leaves from the
    // node the guest is arriving on, which must not lose it meanwhile.
    let mkind = *Registry::builtin().resolve("vmim").unwrap();
    let mut from = now;
    for _ in 0..2 {
        let body = serde_json::json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
            "metadata": {"generateName": "back-to-back-", "namespace": "default"},
            "spec": {"vmiName": "mover"},
        });
        let uid = client
            .create(&mkind, "default", &body)
            .await
            .unwrap()
            .metadata
            .uid;
        from = wait_for("a back-to-back migration", WAIT, || async {
            let i = vmi(&client, "mover").await?;
            let s = MigrationState::of(&i).filter(|s| s.migration_uid == uid)?;
            assert!(!s.failed, "{s:?}");
            (s.completed && node_of(&i) != from).then(|| node_of(&i))
        })
        .await;
    }
    let log = serial_log(&mut cluster, &from, &uid);
    let console = console_log_until(&log, &format!("VMO-GUEST: tick {}", ticks + 6), WAIT).await;
    assert!(!console.contains("VMO-GUEST: booted"), "{console}");
    let i = vmi(&client, "mover").await.unwrap();
    assert_eq!(
        (i.metadata.uid.as_str(), i.status()["phase"].as_str()),
        (uid.as_str(), Some("Running"))
    );

    // Users see it: migration objects Succeeded, events on the instance, the VM Running again.
    let (_, table, _) = cluster.up.cli(&["get", "vmim"]);
    assert_eq!(table.matches("Succeeded").count(), 5, "{table}");
    let (_, described, _) = cluster.up.cli(&["describe", "vmi", "mover"]);
    assert!(described.contains("Migrated"), "{described}");
    let vm = client
        .get(
            Registry::builtin().resolve("vm").unwrap(),
            "default",
            "mover",
        )
        .await
        .unwrap();
    assert_eq!(vm.status()["printableStatus"], "Running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dirtying_guest_migrates_between_hosts_with_their_own_addresses() {
    let Some(guest) = test_guest() else { return };
    let dir = KeptDir::new("vmo-migrate-netns-");
    let Some(mut cluster) = Cluster::start_in_namespaces(
        vmo(),
        dir.path(),
        &[("host-a", "zone-a"), ("host-b", "zone-b")],
    )
    .await
    else {
        return;
    };
    let client = cluster.client();
    let address = |cluster: &Cluster, name: &str| cluster.host(name).unwrap().address.clone();
    let (a, b) = (address(&cluster, "host-a"), address(&cluster, "host-b"));
    assert_ne!(a, b);

    // Each node shows its own host's address, and the server reaches each agent there.
    let (ok, nodes, err) = cluster.up.cli(&["get", "nodes", "-o", "wide"]);
    assert!(ok, "{err}");
    for (name, addr) in [("host-a", &a), ("host-b", &b)] {
        let line = nodes.lines().find(|l| l.starts_with(name)).unwrap_or("");
        assert!(line.contains(addr.as_str()), "{name} at {addr}:\n{nodes}");
        let health = client
            .get_text(&format!("/api/v1/nodes/{name}/proxy/healthz"))
            .await;
        assert!(
            health.is_ok(),
            "{name}'s agent through the server: {health:?}"
        );
    }

    // Its disk in the shared pool, and a node-local one that is copied to the target over NBD;
    // a NIC on the default network (each host's node bridge) and one on VLAN 30.
    let nad = "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: vlan30\nspec:\n  config: '{\"cniVersion\": \"0.3.1\", \"type\": \"bridge\", \"vlan\": 30}'\n";
    let (ok, out, err) = cluster.up.cli_with_input(&["apply", "-f", "-"], Some(nad));
    assert!(ok, "{out}{err}");
    let pool = cluster.shared_pool.clone();
    let vm = manifest("roamer", &guest, &pool, 16)
        .replace(
            "          disks:\n",
            "          interfaces:\n            - {name: default, masquerade: {}}\n            - {name: v30, bridge: {}}\n          disks:\n",
        )
        .replace(
            "      volumes:\n",
            "      networks:\n        - {name: default, pod: {}}\n        - {name: v30, multus: {networkName: vlan30}}\n      volumes:\n",
        )
        .replace(
            "          disks:\n",
            "          disks:\n            - name: scratch\n              disk: {bus: virtio}\n",
        )
        .replace(
            "      volumes:\n",
            "      volumes:\n        - name: scratch\n          emptyDisk:\n            capacity: 16Mi\n",
        );
    let running = apply_and_run(&cluster, &vm, "roamer").await;
    let uid = running.metadata.uid.clone();
    let macs_before: Vec<Value> = running.status()["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["mac"].clone())
        .collect();
    assert_eq!(macs_before.len(), 2, "{:?}", running.status());
    let source = node_of(&running);
    let target = if source == "host-a" {
        "host-b"
    } else {
        "host-a"
    };
    let log = serial_log(&mut cluster, &source, &uid);
    let console = console_log_until(&log, "VMO-GUEST: tick 3", Duration::from_secs(150)).await;
    assert!(
        console.contains("VMO-GUEST: dirtying 16 MiB/s"),
        "{console}"
    );
    let received_before = cluster.host(target).unwrap().received_bytes();

    let (node, _) = migrate_and_check(
        &mut cluster,
        "roamer",
        &source,
        Some(target),
        last_tick(&console),
    )
    .await;
    assert_eq!(node, target);
    // The NICs kept their MACs; the VLAN NIC's tap is on the target's VLAN 30 bridge now.
    let moved = vmi(&client, "roamer").await.unwrap();
    let macs_after: Vec<Value> = moved.status()["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["mac"].clone())
        .collect();
    assert_eq!(macs_after, macs_before);
    let netns = cluster.host(target).unwrap().netns.clone();
    let ports = std::process::Command::new("ip")
        .args(["-n", &netns, "-o", "link", "show", "master", "vmo-v30"])
        .output()
        .unwrap();
    let ports = String::from_utf8_lossy(&ports.stdout).to_string();
    assert!(
        ports.contains("vmo-x30") && ports.contains(" vt"),
        "{ports}"
    );

    // The source's QEMU sent the guest's memory and its local disk (the NBD port, marked 1) to
    // the target host's own address, over the network between the hosts: the target's interface
    // took in at least every byte of memory QEMU sent. (`transferredBytes` counts the disk at its
    // full 16 MiB; the mirror sends its never-written blocks as zero ranges, not bytes.)
    let state = MigrationState::of(&vmi(&client, "roamer").await.unwrap()).unwrap();
    assert_eq!(
        state.target_node_address.as_deref(),
        Some(address(&cluster, target).as_str()),
        "{state:?}"
    );
    let mut kinds: Vec<i64> = state
        .target_direct_migration_node_ports
        .values()
        .copied()
        .collect();
    kinds.sort();
    assert_eq!(kinds, [0, 1], "memory and disk ports: {state:?}");
    let memory = state
        .transferred_bytes
        .unwrap_or(0)
        .saturating_sub(16 << 20);
    assert!(memory > 0, "{state:?}");
    let received = cluster.host(target).unwrap().received_bytes() - received_before;
    assert!(
        received >= memory,
        "{target} received {received} bytes, QEMU sent {memory} bytes of memory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_cancelled_migration_leaves_the_vm_running_on_its_source() {
    let Some(guest) = test_guest() else { return };
    let dir = KeptDir::new("vmo-migrate-fail-");
    let mut cluster = Cluster::start(
        vmo(),
        dir.path(),
        &[("node-a", "zone-a"), ("node-b", "zone-b")],
    )
    .await;
    let client = cluster.client();
    // Slow migrations, so there is time to interfere: 4 MiB/s against 48 MiB of random pages.
    let settings = "apiVersion: vmo.io/v1alpha1\nkind: ClusterSettings\nmetadata:\n  name: cluster\nspec:\n  migrations:\n    bandwidthPerMigration: 4Mi\n";
    let (ok, out, err) = cluster
        .up
        .cli_with_input(&["apply", "-f", "-"], Some(settings));
    assert!(ok, "{out}{err}");
    let pool = cluster.shared_pool.clone();
    let running = apply_and_run(&cluster, &manifest("stay", &guest, &pool, 4), "stay").await;
    let uid = running.metadata.uid.clone();
    let source = node_of(&running);
    let target = if source == "node-a" {
        "node-b"
    } else {
        "node-a"
    };
    let source_log = serial_log(&mut cluster, &source, &uid);
    console_log_until(&source_log, "VMO-GUEST: tick 2", Duration::from_secs(150)).await;
    let source_pid = qemu_pid(&cluster.agent(&source).run_dir(&uid)).unwrap();
    let target_run = cluster.agent(target).run_dir(&uid);
    let mkind = *Registry::builtin().resolve("vmim").unwrap();

    // 1. The target QEMU is killed while memory is being copied.
    let (ok, out, err) = cluster.up.cli(&["migrate", "stay"]);
    assert!(ok, "{out}{err}");
    wait_for("the migration to be sending", WAIT, || async {
        let i = vmi(&client, "stay").await?;
        MigrationState::of(&i).filter(|s| s.start_timestamp.is_some() && s.active())
    })
    .await;
    let target_pid = qemu_pid(&target_run).expect("a target QEMU");
    let _ = std::process::Command::new("kill")
        .args(["-9", &target_pid.to_string()])
        .status();
    let failed = wait_for("the migration to fail", WAIT, || async {
        let i = vmi(&client, "stay").await?;
        MigrationState::of(&i).filter(|s| s.failed)
    })
    .await;
    assert!(failed.failure_reason.is_some(), "{failed:?}");
    let migrations = client
        .list(&mkind, Some("default"), "")
        .await
        .unwrap()
        .items;
    let m = wait_for("the migration object to say Failed", WAIT, || async {
        let m = client
            .get(&mkind, "default", &migrations[0].metadata.name)
            .await
            .ok()?;
        (m.status()["phase"] == "Failed").then_some(m)
    })
    .await;
    assert!(!m.status()["conditions"][0]["message"]
        .as_str()
        .unwrap_or("")
        .is_empty());
    let i = vmi(&client, "stay").await.unwrap();
    assert_eq!(node_of(&i), source, "still on its source");
    assert_eq!(i.status()["phase"], "Running");
    assert!(alive(source_pid), "the source QEMU runs on");
    let before = last_tick(&std::fs::read_to_string(&source_log).unwrap());
    console_log_until(
        &source_log,
        &format!("VMO-GUEST: tick {}", before + 2),
        Duration::from_secs(30),
    )
    .await;
    wait_for("nothing left on the target", WAIT, || async {
        (!target_run.exists()).then_some(())
    })
    .await;

    // 2. Deleting a migration while it runs cancels it.
    let (ok, out, err) = cluster.up.cli(&["migrate", "stay"]);
    assert!(ok, "{out}{err}");
    let name = out
        .split("(migration ")
        .nth(1)
        .unwrap()
        .trim()
        .trim_end_matches(')')
        .to_string();
    wait_for("the second migration to be sending", WAIT, || async {
        let i = vmi(&client, "stay").await?;
        MigrationState::of(&i).filter(|s| s.start_timestamp.is_some() && s.active())
    })
    .await;
    let (ok, out, err) = cluster.up.cli(&["delete", "vmim", &name]);
    assert!(ok, "{out}{err}");
    let cancelled = wait_for("the migration to be cancelled", WAIT, || async {
        let i = vmi(&client, "stay").await?;
        MigrationState::of(&i).filter(|s| s.failed)
    })
    .await;
    assert_eq!(
        cancelled.abort_status.as_deref(),
        Some("Succeeded"),
        "{cancelled:?}"
    );
    wait_for("the migration object to go", WAIT, || async {
        client
            .get(&mkind, "default", &name)
            .await
            .err()
            .filter(|e| e.is_not_found())
    })
    .await;
    let i = vmi(&client, "stay").await.unwrap();
    assert_eq!(node_of(&i), source);
    assert!(alive(source_pid));
    wait_for("nothing left on the target", WAIT, || async {
        (!target_run.exists()).then_some(())
    })
    .await;
    let leftover = std::process::Command::new("pgrep")
        .args(["-f", &uid])
        .output()
        .unwrap();
    let pids: Vec<String> = String::from_utf8_lossy(&leftover.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        pids,
        vec![source_pid.to_string()],
        "one QEMU for the instance"
    );
}

/// A VM whose writable disks are node-local: an `emptyDisk`, and with `claim` also a DataVolume
/// in the node's local pool (the default class); its guest writes a marker on each at boot and a
/// counter on the first every second.
fn local_disk_manifest(name: &str, guest: &Path, eviction: &str, claim: bool) -> String {
    let kernel = vmo_testkit::guest_kernel(guest);
    let (templates, disk, volume, write) = if claim {
        (
            format!("  dataVolumeTemplates:\n    - metadata:\n        name: {name}-data\n      spec:\n        source:\n          blank: {{}}\n        storage:\n          resources:\n            requests:\n              storage: 16Mi\n"),
            "            - name: data\n              disk: {bus: virtio}\n".to_string(),
            format!("        - name: data\n          dataVolume:\n            name: {name}-data\n"),
            format!("              echo \"VMO-CLAIM-DATA-{name}\" | dd of=/dev/vdb bs=512 seek=0 conv=fsync 2>/dev/null\n"),
        )
    } else {
        Default::default()
    };
    format!(
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  runStrategy: Always
{templates}  template:
    spec:
      evictionStrategy: {eviction}
      terminationGracePeriodSeconds: 5
      domain:
        memory:
          guest: 128Mi
        firmware:
          kernelBoot:
            kernelArgs: console=ttyS0 quiet no_timer_check vmo.netwait=0 vmo.tick=1
            container:
              kernelPath: {k}
              initrdPath: {g}/initrd.img
        devices:
          disks:
            - name: scratch
              disk: {{bus: virtio}}
{disk}            - name: cloudinit
              disk: {{bus: virtio}}
      volumes:
        - name: scratch
          emptyDisk:
            capacity: 32Mi
{volume}        - name: cloudinit
          cloudInitNoCloud:
            userData: |
              #!/bin/sh
              echo "VMO-LOCAL-DATA-{name}" | dd of=/dev/vda bs=512 seek=0 conv=fsync 2>/dev/null
{write}              (n=0; while :; do n=$((n + 1)); echo "disk-tick $n" | dd of=/dev/vda bs=512 seek=8 conv=fsync 2>/dev/null; sleep 1; done) &
              echo VMO-E2E-WROTE
"#,
        g = guest.display(),
        k = kernel.display()
    )
}

/// The first `len` bytes at `offset` of a qcow2 image another QEMU holds open.
fn read_image(image: &Path, offset: usize, len: usize) -> String {
    let raw = image.with_extension("check.raw");
    let ok = std::process::Command::new("qemu-img")
        .args(["convert", "-U", "-f", "qcow2", "-O", "raw"])
        .arg(image)
        .arg(&raw)
        .status()
        .unwrap()
        .success();
    assert!(ok, "qemu-img convert of {}", image.display());
    let bytes = std::fs::read(&raw).unwrap();
    let _ = std::fs::remove_file(&raw);
    String::from_utf8_lossy(&bytes[offset..offset + len]).to_string()
}

fn disk_tick(text: &str) -> u64 {
    text.split("disk-tick ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_on_a_local_disk_migrates_with_its_data() {
    let Some(guest) = test_guest() else { return };
    let dir = KeptDir::new("vmo-migrate-local-");
    let mut cluster = Cluster::start(
        vmo(),
        dir.path(),
        &[("node-a", "zone-a"), ("node-b", "zone-b")],
    )
    .await;
    let client = cluster.client();
    let running = apply_and_run(
        &cluster,
        &local_disk_manifest("local", &guest, "LiveMigrate", true),
        "local",
    )
    .await;
    let uid = running.metadata.uid.clone();
    let source = node_of(&running);
    let log = serial_log(&mut cluster, &source, &uid);
    let console = console_log_until(&log, "VMO-GUEST: tick 2", Duration::from_secs(150)).await;
    assert!(console.contains("VMO-E2E-WROTE"), "{console}");
    let source_disk = cluster.agent(&source).run_dir(&uid).join("scratch.qcow2");
    let pv_of_claim = || async {
        let pvc = client
            .get(&kind("pvc"), "default", "local-data")
            .await
            .expect("the VM's claim");
        let pv = pvc.spec()["volumeName"]
            .as_str()
            .expect("bound")
            .to_string();
        client.get(&kind("pv"), "", &pv).await.expect("its volume")
    };
    let pv_path = |pv: &Object| PathBuf::from(pv.spec()["local"]["path"].as_str().unwrap());
    let pv_node = |pv: &Object| {
        pv.spec()["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
            ["values"][0]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let before = pv_of_claim().await;
    assert_eq!(
        pv_node(&before),
        source,
        "the claim's volume is on the VM's node"
    );
    let source_claim_file = pv_path(&before);
    assert!(read_image(&source_claim_file, 0, 64).starts_with("VMO-CLAIM-DATA-local"));
    // A volume snapshot would be left behind in the source's file: the migration is refused,
    // saying so, and the VM keeps running where it is.
    let snapshot = serde_json::json!({"apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot", "metadata": {"name": "before-move", "namespace": "default"},
        "spec": {"source": {"persistentVolumeClaimName": "local-data"}}});
    client
        .create(&kind("volumesnapshot"), "default", &snapshot)
        .await
        .expect("volume snapshot");
    wait_for("the snapshot to be ready", WAIT, || async {
        client
            .get(&kind("volumesnapshot"), "default", "before-move")
            .await
            .ok()
            .filter(|s| s.status()["readyToUse"] == true)
    })
    .await;
    let (ok, out, err) = cluster
        .up
        .cli(&["migrate", "local", "--wait", "--timeout", "120"]);
    assert!(
        !ok && format!("{out}{err}").contains("volume snapshot"),
        "{out}{err}"
    );
    let still = vmi(&client, "local").await.unwrap();
    assert_eq!(node_of(&still), source);
    assert_eq!(still.status()["phase"], "Running");
    // Nothing of the refused attempt stays on the other node.
    let other = if source == "node-a" {
        "node-b"
    } else {
        "node-a"
    };
    let other_run_dir = cluster.agent(other).run_dir(&uid);
    wait_for(
        "the other node to drop the refused attempt",
        WAIT,
        || async { (!other_run_dir.exists()).then_some(()) },
    )
    .await;
    client
        .delete(
            &kind("volumesnapshot"),
            "default",
            "before-move",
            "Background",
        )
        .await
        .unwrap();
    wait_for("the snapshot to be removed", WAIT, || async {
        client
            .get(&kind("volumesnapshot"), "default", "before-move")
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let ticks_before = disk_tick(&read_image(&source_disk, 4096, 64));
    assert!(ticks_before > 0, "the guest writes its disk");

    let (node, _) = migrate_and_check(
        &mut cluster,
        "local",
        &source.clone(),
        None,
        last_tick(&console),
    )
    .await;
    // The copy on the target holds what was written before, and takes what is written after.
    let target_disk = cluster.agent(&node).run_dir(&uid).join("scratch.qcow2");
    assert!(
        read_image(&target_disk, 0, 64).starts_with("VMO-LOCAL-DATA-local"),
        "the marker written before the migration is on the target's disk"
    );
    let later = wait_for("the guest to write the target's disk", WAIT, || async {
        let t = disk_tick(&read_image(&target_disk, 4096, 64));
        (t > ticks_before + 2).then_some(t)
    })
    .await;
    assert!(later > ticks_before);
    // The claim's volume moved with it: the volume names the target and a file there holding the
    // data; the source's file is gone.
    let after = pv_of_claim().await;
    assert_eq!(pv_node(&after), node, "the volume follows the VM");
    let target_claim_file = pv_path(&after);
    assert!(target_claim_file.starts_with(&cluster.agent(&node).data_dir));
    assert!(
        read_image(&target_claim_file, 0, 64).starts_with("VMO-CLAIM-DATA-local"),
        "the claim's data is on the target"
    );
    assert!(!source_claim_file.exists(), "the source's copy is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_node_with_four_vms() {
    let Some(guest) = test_guest() else { return };
    let dir = KeptDir::new("vmo-drain-");
    let cluster = Cluster::start(
        vmo(),
        dir.path(),
        &[
            ("node-a", "zone-a"),
            ("node-b", "zone-b"),
            ("node-c", "zone-c"),
        ],
    )
    .await;
    let client = cluster.client();
    // Everything starts on node-a: the others are cordoned meanwhile.
    for n in ["node-b", "node-c"] {
        let (ok, out, err) = cluster.up.cli(&["node", "cordon", n]);
        assert!(ok && out.contains("cordoned"), "{out}{err}");
    }
    let vms = [
        ("mig-1", "LiveMigrate"),
        ("mig-2", "LiveMigrate"),
        ("mig-3", "LiveMigrateIfPossible"),
        ("stopper", "None"),
    ];
    for (name, eviction) in vms {
        let (ok, out, err) = cluster.up.cli_with_input(
            &["apply", "-f", "-"],
            Some(&local_disk_manifest(name, &guest, eviction, false)),
        );
        assert!(ok, "{out}{err}");
    }
    let mut uids = std::collections::HashMap::new();
    for (name, _) in vms {
        let i = wait_for(&format!("{name} running"), WAIT, || async {
            vmi(&client, name)
                .await
                .filter(|i| i.status()["phase"] == "Running")
        })
        .await;
        assert_eq!(node_of(&i), "node-a");
        uids.insert(name, i.metadata.uid);
    }

    // With nowhere to go, the dry run says which VMs cannot move and why; nothing changes.
    let (ok, out, err) = cluster.up.cli(&["node", "drain", "node-a", "--dry-run"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("CANNOT MOVE") && out.contains("unschedulable"),
        "{out}"
    );
    assert!(out.contains("shut down (evictionStrategy None)"), "{out}");
    let (ok, out, err) = cluster.up.cli(&["node", "drain", "node-a"]);
    assert!(!ok, "a drain that cannot finish does not start: {out}");
    assert!(
        err.contains("cannot be drained") && err.contains("mig-1"),
        "{err}"
    );
    let nodes_kind = *Registry::builtin().resolve("nodes").unwrap();
    let node_a = client.get(&nodes_kind, "", "node-a").await.unwrap();
    assert_ne!(
        node_a.spec()["unschedulable"],
        true,
        "node-a was left alone"
    );

    // With room elsewhere: the dry run plans a migration for each, then the drain does it.
    for n in ["node-b", "node-c"] {
        assert!(cluster.up.cli(&["node", "uncordon", n]).0);
    }
    let (ok, out, err) = cluster.up.cli(&["node", "drain", "node-a", "--dry-run"]);
    assert!(ok, "{out}{err}");
    assert_eq!(out.matches("live-migrate to node-").count(), 3, "{out}");
    let (ok, out, err) = cluster
        .up
        .cli(&["node", "drain", "node-a", "--timeout", "300"]);
    assert!(ok, "drain failed: {out}{err}\n{}", cluster.logs());
    assert!(out.contains("node/node-a drained"), "{out}");
    assert!(out.contains("stopper: shutting down"), "{out}");
    let node_a = client.get(&nodes_kind, "", "node-a").await.unwrap();
    assert_eq!(
        node_a.spec()["unschedulable"],
        true,
        "node-a stays cordoned"
    );
    for (name, _) in &vms[..3] {
        let i = vmi(&client, name).await.unwrap();
        assert_eq!(
            i.metadata.uid, uids[name],
            "{name} moved live, same instance"
        );
        assert_ne!(node_of(&i), "node-a");
        assert_eq!(i.status()["phase"], "Running");
    }
    // The VM with evictionStrategy None was shut down and, as runStrategy Always says, started
    // again elsewhere as a new instance.
    let restarted = wait_for("stopper restarted elsewhere", WAIT, || async {
        vmi(&client, "stopper")
            .await
            .filter(|i| i.metadata.uid != uids["stopper"] && i.status()["phase"] == "Running")
    })
    .await;
    assert_ne!(node_of(&restarted), "node-a");
}
