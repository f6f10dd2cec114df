//! Network benchmarks with real guests on hosts that are network namespaces:
//!
//! 1. TCP throughput between two VMs on one VLAN, on one node and across two nodes, through vmo
//!    (NetworkAttachmentDefinition, per-VLAN bridge, VXLAN between hosts) and side by side through
//!    the same QEMU networking set up by hand (a bridge and taps made with `ip`, a VXLAN tunnel
//!    with a static flood entry, the same QEMU command line, guest and user-data).
//! 2. The connection latency a LoadBalancer address adds: TCP connect to first byte from outside
//!    the hosts, through the address (announcing node, DNAT, masquerade, other node, VM) and
//!    straight to the VM's default-network address (routed to its node).
//!
//! The guest measures its own transfers (`/proc/uptime`, 10 ms resolution) of 64 MiB, three
//! times; the median is reported. Needs root (network namespaces); says so and exits otherwise.
//! Run: `cargo bench -p vmo-vmo --bench network`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use vmo_agent::vm::plan::{Accel, Bus, DiskPlan, Firmware, LaunchPlan, NicBackend, NicPlan};
use vmo_agent::vm::process;
use vmo_api::Registry;
use vmo_testkit::{console_log_until, console_until, test_guest, wait_for, Cluster, KeptDir};

const WAIT: Duration = Duration::from_secs(300);
const KERNEL_ARGS: &str = "console=ttyS0 quiet no_timer_check vmo.netwait=0";
const RUNS: usize = 5;
const MIB_PER_RUN: u64 = 16;

fn vmo() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vmo"))
}

fn static_address(address: &str) -> String {
    format!("killall udhcpc\nip -4 addr flush dev eth0\nip addr add {address} dev eth0\nip link set eth0 up\n")
}

fn receiver_script() -> String {
    format!(
        "{}printf '#!/bin/sh\\nn=$(( $(cat /run/n 2>/dev/null || echo 0) + 1 )); echo $n >/run/n\\necho \"VMO-GUEST: got $n $(wc -c) bytes\" >/dev/console\\n' >/run/count\nchmod +x /run/count\nnc -ll -p 5001 -e /run/count </dev/null >/dev/null 2>&1 &\necho VMO-GUEST: receiver ready\n",
        static_address("10.50.0.1/24")
    )
}

fn sender_script() -> String {
    format!(
        "{}for i in $(seq 120); do ping -c 1 -W 1 10.50.0.1 >/dev/null 2>&1 && break; sleep 1; done\nsleep 1\nfor run in $(seq {RUNS}); do\n  t0=$(cut -d' ' -f1 /proc/uptime)\n  dd if=/dev/zero bs=64k count={} 2>/dev/null | nc 10.50.0.1 5001\n  t1=$(cut -d' ' -f1 /proc/uptime)\n  echo \"VMO-GUEST: xfer $t0 $t1\"\ndone\necho VMO-GUEST: xfer done\n",
        static_address("10.50.0.2/24"),
        MIB_PER_RUN * 16
    )
}

/// Checks the receiver got every byte of every run.
fn check_received(console: &str) {
    let expected = format!("{} bytes", MIB_PER_RUN << 20);
    for run in 1..=RUNS {
        let line = format!("VMO-GUEST: got {run} {expected}");
        assert!(console.contains(&line), "{line} in:\n{console}");
    }
}

/// MiB/s of each `xfer T0 T1` line, median.
fn median_throughput(console: &str) -> f64 {
    let mut rates: Vec<f64> = console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("VMO-GUEST: xfer "))
        .filter_map(|rest| {
            let mut w = rest.split_whitespace();
            let (a, b): (f64, f64) = (w.next()?.parse().ok()?, w.next()?.parse().ok()?);
            Some(MIB_PER_RUN as f64 / (b - a).max(0.01))
        })
        .collect();
    assert_eq!(rates.len(), RUNS, "transfers in:\n{console}");
    rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
    rates[RUNS / 2]
}

fn user_data_vm(
    name: &str,
    node: &str,
    guest: &Path,
    network: &str,
    labels: &str,
    script: &str,
) -> String {
    let kernel = vmo_testkit::guest_kernel(guest);
    let (binding, source) = if network == "pod" {
        ("masquerade: {}", "pod: {}".to_string())
    } else {
        ("bridge: {}", format!("multus: {{networkName: {network}}}"))
    };
    let script: String = script
        .lines()
        .map(|l| format!("              {l}\n"))
        .collect();
    format!(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata:\n  name: {name}\nspec:\n  runStrategy: Always\n  template:\n    metadata:\n      labels: {{{labels}}}\n    spec:\n      nodeSelector: {{kubernetes.io/hostname: {node}}}\n      terminationGracePeriodSeconds: 0\n      domain:\n        memory:\n          guest: 128Mi\n        firmware:\n          kernelBoot:\n            kernelArgs: {KERNEL_ARGS}\n            container:\n              kernelPath: {k}\n              initrdPath: {g}/initrd.img\n        devices:\n          disks:\n            - name: cloudinit\n              disk: {{bus: virtio}}\n          interfaces:\n            - name: net\n              {binding}\n      networks:\n        - name: net\n          {source}\n      volumes:\n        - name: cloudinit\n          cloudInitNoCloud:\n            userData: |\n              #!/bin/sh\n{script}",
        k = kernel.display(),
        g = guest.display(),
    )
}

async fn console_of(cluster: &mut Cluster, name: &str, marker: &str) -> String {
    let client = cluster.client();
    let kind = *Registry::builtin().resolve("vmi").unwrap();
    let vmi = wait_for(&format!("{name} running"), WAIT, || async {
        client
            .get(&kind, "default", name)
            .await
            .ok()
            .filter(|i| i.status()["phase"] == "Running")
    })
    .await;
    let node = vmi.status()["nodeName"].as_str().unwrap().to_string();
    let log = cluster
        .agent(&node)
        .run_dir(&vmi.metadata.uid)
        .join("serial.log");
    console_log_until(&log, marker, WAIT).await
}

fn apply(cluster: &Cluster, manifest: &str) {
    let (ok, out, err) = cluster
        .up
        .cli_with_input(&["apply", "-f", "-"], Some(manifest));
    assert!(ok, "{out}{err}");
}

fn delete(cluster: &Cluster, names: &[&str]) {
    for name in names {
        let (ok, out, err) = cluster.up.cli(&["delete", "vm", name]);
        assert!(ok, "{out}{err}");
    }
}

/// vmo: receiver on host-a, sender on `sender_node`; the sender's median MiB/s.
async fn through_vmo(cluster: &mut Cluster, guest: &Path, sender_node: &str) -> f64 {
    apply(
        cluster,
        &user_data_vm(
            "receiver",
            "host-a",
            guest,
            "vlan50",
            "app: rx",
            &receiver_script(),
        ),
    );
    apply(
        cluster,
        &user_data_vm(
            "sender",
            sender_node,
            guest,
            "vlan50",
            "app: tx",
            &sender_script(),
        ),
    );
    console_of(cluster, "receiver", "VMO-GUEST: receiver ready").await;
    let console = console_of(cluster, "sender", "VMO-GUEST: xfer done").await;
    check_received(
        &console_of(
            cluster,
            "receiver",
            &format!("VMO-GUEST: got {RUNS} {} bytes", MIB_PER_RUN << 20),
        )
        .await,
    );
    delete(cluster, &["receiver", "sender"]);
    median_throughput(&console)
}

fn sh(netns: &str, args: &[&str]) {
    let status = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "{netns}: {args:?}");
}

/// A NoCloud seed with `script` as user-data, made with genisoimage.
fn seed(dir: &Path, name: &str, script: &str) -> PathBuf {
    let src = dir.join(format!("{name}-seed"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("meta-data"),
        format!("instance-id: {name}\nlocal-hostname: {name}\n"),
    )
    .unwrap();
    std::fs::write(src.join("user-data"), format!("#!/bin/sh\n{script}")).unwrap();
    let iso = dir.join(format!("{name}-seed.iso"));
    let out = Command::new("genisoimage")
        .args(["-quiet", "-output"])
        .arg(&iso)
        .args(["-volid", "cidata", "-joliet", "-rock"])
        .arg(&src)
        .status()
        .unwrap();
    assert!(out.success());
    iso
}

/// One QEMU like vmo's (same plan type, same guest), on `tap`, in `netns`.
fn bare_vm(
    dir: &Path,
    guest: &Path,
    name: &str,
    netns: &str,
    tap: &str,
    mac: &str,
    script: &str,
) -> (Child, PathBuf) {
    let run_dir = dir.join(name);
    std::fs::create_dir_all(&run_dir).unwrap();
    let (qmp_socket, serial_socket, vnc_socket, pidfile, _) = process::run_files(&run_dir);
    let plan = LaunchPlan {
        name: name.into(),
        uuid: format!("00000000-0000-4000-8000-0000000000{:02}", name.len()),
        smbios_serial: None,
        accel: Accel::Tcg,
        sockets: 1,
        cores: 1,
        threads: 1,
        memory_mib: 128,
        firmware: Firmware::Bios,
        kernel: Some((
            vmo_testkit::guest_kernel(guest),
            Some(guest.join("initrd.img")),
            KERNEL_ARGS.into(),
        )),
        disks: vec![DiskPlan {
            name: "cloudinit".into(),
            path: seed(dir, name, script),
            format: "raw".into(),
            bus: Bus::Virtio,
            cdrom: false,
            readonly: false,
            boot_order: None,
            serial: None,
            cache: "writeback".into(),
        }],
        nics: vec![NicPlan {
            name: "net".into(),
            mac: mac.into(),
            device: "virtio-net-pci".into(),
            backend: NicBackend::Tap(tap.into()),
            port: None,
        }],
        qmp_socket,
        serial_socket: serial_socket.clone(),
        vnc_socket,
        pidfile,
        incoming: false,
    };
    // The agent runs QEMU `nice`d below itself; so does this.
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "nice",
            "-n",
            &process::GUEST_NICENESS.to_string(),
            "qemu-system-x86_64",
        ])
        .args(plan.args())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (child, serial_socket)
}

/// The same two guests on a bridge and taps made by hand (and a VXLAN tunnel across hosts).
async fn by_hand(cluster: &Cluster, guest: &Path, dir: &Path, cross: bool) -> f64 {
    let a = cluster.host("host-a").unwrap();
    let b = cluster.host("host-b").unwrap();
    let hosts = if cross { vec![a, b] } else { vec![a] };
    for (i, h) in hosts.iter().enumerate() {
        sh(&h.netns, &["ip", "link", "add", "hbr50", "type", "bridge"]);
        sh(&h.netns, &["ip", "link", "set", "hbr50", "up"]);
        if cross {
            let peer = &hosts[1 - i].address;
            sh(
                &h.netns,
                &[
                    "ip", "link", "add", "hvx50", "type", "vxlan", "id", "50", "local", &h.address,
                    "dstport", "4790",
                ],
            );
            sh(
                &h.netns,
                &[
                    "ip", "link", "set", "hvx50", "mtu", "1500", "master", "hbr50", "up",
                ],
            );
            sh(
                &h.netns,
                &[
                    "bridge",
                    "fdb",
                    "append",
                    "00:00:00:00:00:00",
                    "dev",
                    "hvx50",
                    "dst",
                    peer,
                ],
            );
        }
    }
    let sender_host = if cross { b } else { a };
    for (h, tap) in [(a, "htap1"), (sender_host, "htap2")] {
        sh(
            &h.netns,
            &["ip", "tuntap", "add", "dev", tap, "mode", "tap"],
        );
        sh(
            &h.netns,
            &["ip", "link", "set", tap, "master", "hbr50", "up"],
        );
    }
    let (mut rx, rx_console) = bare_vm(
        dir,
        guest,
        "rx",
        &a.netns,
        "htap1",
        "02:50:00:00:00:01",
        &receiver_script(),
    );
    let (mut tx, tx_console) = bare_vm(
        dir,
        guest,
        "tx",
        &sender_host.netns,
        "htap2",
        "02:50:00:00:00:02",
        &sender_script(),
    );
    console_until(&rx_console, "VMO-GUEST: receiver ready", WAIT).await;
    let received = tokio::spawn(async move {
        console_until(
            &rx_console,
            &format!("VMO-GUEST: got {RUNS} {} bytes", MIB_PER_RUN << 20),
            WAIT,
        )
        .await
    });
    let console = console_until(&tx_console, "VMO-GUEST: xfer done", WAIT).await;
    check_received(&received.await.unwrap());
    for child in [&mut rx, &mut tx] {
        let _ = child.kill();
        let _ = child.wait();
    }
    for h in &hosts {
        for link in ["htap1", "htap2", "hvx50", "hbr50"] {
            let _ = Command::new("ip")
                .args(["-n", &h.netns, "link", "del", link])
                .status();
        }
    }
    median_throughput(&console)
}

/// Connect-to-first-byte times to `address`, `n` times, sorted.
async fn connect_times(address: &str, n: usize) -> Vec<Duration> {
    let mut times = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let mut buf = [0u8; 64];
        let read = stream.read(&mut buf).await.expect("read");
        assert!(read > 0);
        times.push(start.elapsed());
    }
    times.sort();
    times
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn load_balancer_latency(cluster: &mut Cluster, guest: &Path) {
    let gateway = cluster.network.as_ref().unwrap().gateway.clone();
    let subnet = gateway.rsplit_once('.').unwrap().0.to_string();
    apply(cluster, &format!(
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: lan\nspec:\n  addresses: [\"{subnet}.200-{subnet}.210\"]\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata:\n  name: lan\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  type: LoadBalancer\n  selector: {{app: web}}\n  ports:\n    - {{port: 80, targetPort: 8080}}\n"
    ));
    let client = cluster.client();
    let service_kind = *Registry::builtin().resolve("services").unwrap();
    let (ip, announcer) = wait_for("the Service's address", WAIT, || async {
        let svc = client.get(&service_kind, "default", "web").await.ok()?;
        let ip = svc.status()["loadBalancer"]["ingress"][0]["ip"]
            .as_str()?
            .to_string();
        Some((
            ip,
            svc.metadata
                .annotations
                .get("vmo.io/announcing-node")?
                .clone(),
        ))
    })
    .await;
    let other = if announcer == "host-a" {
        "host-b"
    } else {
        "host-a"
    };
    let server = "nc -ll -p 8080 -e /bin/echo hello </dev/null >/dev/null 2>&1 &\necho VMO-GUEST: web listening\n";
    apply(
        cluster,
        &user_data_vm("web", other, guest, "pod", "app: web", server),
    );
    console_of(cluster, "web", "VMO-GUEST: web listening").await;
    let kind = *Registry::builtin().resolve("vmi").unwrap();
    let vmi = client.get(&kind, "default", "web").await.unwrap();
    let vm_ip = vmi.status()["interfaces"][0]["ipAddress"]
        .as_str()
        .unwrap()
        .to_string();
    // The direct path: the VM's node routes its share.
    let node_kind = *Registry::builtin().resolve("nodes").unwrap();
    let node = client.get(&node_kind, "", other).await.unwrap();
    let share = node.spec()["podCIDR"].as_str().unwrap().to_string();
    let via = cluster.host(other).unwrap().address.clone();
    let _ = Command::new("ip")
        .args(["route", "replace", &share, "via", &via])
        .status();
    let lb = format!("{ip}:80");
    let direct = format!("{vm_ip}:8080");
    wait_for("the address answering", WAIT, || async {
        tokio::net::TcpStream::connect(&lb).await.ok().map(|_| ())
    })
    .await;
    // Warm up both paths, then alternate rounds so load drifts hit both alike.
    let _ = connect_times(&lb, 5).await;
    let _ = connect_times(&direct, 5).await;
    let (mut through, mut straight) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        through.extend(connect_times(&lb, 20).await);
        straight.extend(connect_times(&direct, 20).await);
    }
    let _ = Command::new("ip")
        .args(["route", "del", &share, "via", &via])
        .status();
    through.sort();
    straight.sort();
    let p = |v: &[Duration], q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    println!(
        "| path (connect to first byte, {} connections each) | P50 | P95 |",
        through.len()
    );
    println!("|---|---|---|");
    println!(
        "| straight to the VM ({vm_ip}, routed to {other}) | {} | {} |",
        ms(p(&straight, 0.5)),
        ms(p(&straight, 0.95))
    );
    println!(
        "| LoadBalancer address ({ip}, announced by {announcer}, VM on {other}) | {} | {} |",
        ms(p(&through, 0.5)),
        ms(p(&through, 0.95))
    );
    println!(
        "| added by the load-balancer path | {} | {} |",
        ms(p(&through, 0.5).saturating_sub(p(&straight, 0.5))),
        ms(p(&through, 0.95).saturating_sub(p(&straight, 0.95)))
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let Some(guest) = test_guest() else { return };
        let dir = KeptDir::new("vmo-bench-network-");
        let Some(mut cluster) = Cluster::start_in_namespaces(
            &vmo(),
            dir.path(),
            &[("host-a", "zone-a"), ("host-b", "zone-b")],
        )
        .await
        else {
            return;
        };
        apply(&cluster, "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: vlan50\nspec:\n  config: '{\"cniVersion\": \"0.3.1\", \"type\": \"bridge\", \"bridge\": \"br0\", \"vlan\": 50}'\n");
        let bare_dir = dir.path().join("by-hand");
        println!("TCP throughput, VM to VM on VLAN 50 ({RUNS} x {MIB_PER_RUN} MiB, median; TCG guests):\n");
        println!("| path | vmo | by hand | vmo / by hand |");
        println!("|---|---|---|---|");
        for (label, node, cross) in [("one node", "host-a", false), ("across nodes (VXLAN)", "host-b", true)] {
            let ours = through_vmo(&mut cluster, &guest, node).await;
            // Let the deleted VMs' QEMUs go before the next pair starts.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let theirs = by_hand(&cluster, &guest, &bare_dir, cross).await;
            println!("| {label} | {ours:.1} MiB/s | {theirs:.1} MiB/s | {:.2}x |", ours / theirs);
        }
        println!();
        load_balancer_latency(&mut cluster, &guest).await;
    });
}
