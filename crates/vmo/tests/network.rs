//! Networks with real traffic between real guests, each node a host of its own (a network
//! namespace): VLAN networks on per-VLAN bridges joined across hosts by VXLAN, the default network
//! (a node bridge, DHCP, NAT) reaching a server outside the hosts, and the VLAN policy refusing an
//! attachment outside the allowed range. Skips (saying so) without root and network namespaces.

use serde_json::{json, Value};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vmo_api::kinds::network::Cidr;
use vmo_api::{Object, Registry};
use vmo_client::Client;
use vmo_testkit::objects::vmi;
use vmo_testkit::{console_log_until, test_guest, wait_for, Cluster, KeptDir};

const WAIT: Duration = Duration::from_secs(180);

fn vmo() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vmo"))
}

fn attachment(name: &str, vlan: u16) -> String {
    format!(
        r#"apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata:
  name: {name}
spec:
  config: '{{"cniVersion": "0.3.1", "type": "bridge", "bridge": "br0", "vlan": {vlan}, "macspoofchk": true}}'
"#
    )
}

/// A VM on `node` with one NIC: on the default network (`network: None`) or on attachment
/// `network`; its user-data `script` runs once the guest is up.
fn vm(name: &str, node: &str, guest: &Path, network: Option<&str>, script: &str) -> String {
    let kernel = vmo_testkit::guest_kernel(guest);
    let (binding, source) = match network {
        None => ("masquerade: {}", "pod: {}".to_string()),
        Some(n) => ("bridge: {}", format!("multus: {{networkName: {n}}}")),
    };
    let script: String = script
        .lines()
        .map(|l| format!("              {l}\n"))
        .collect();
    format!(
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  runStrategy: Always
  template:
    spec:
      nodeSelector: {{kubernetes.io/hostname: {node}}}
      terminationGracePeriodSeconds: 0
      domain:
        memory:
          guest: 128Mi
        firmware:
          kernelBoot:
            kernelArgs: console=ttyS0 quiet no_timer_check vmo.netwait=20
            container:
              kernelPath: {k}
              initrdPath: {g}/initrd.img
        devices:
          disks:
            - name: cloudinit
              disk: {{bus: virtio}}
          interfaces:
            - name: net
              {binding}
      networks:
        - name: net
          {source}
      volumes:
        - name: cloudinit
          cloudInitNoCloud:
            userData: |
              #!/bin/sh
{script}"#,
        k = kernel.display(),
        g = guest.display(),
    )
}

/// User-data giving eth0 a static address (no DHCP on a VLAN).
fn static_address(address: &str) -> String {
    format!("killall udhcpc\nip -4 addr flush dev eth0\nip addr add {address} dev eth0\nip link set eth0 up\n")
}

async fn running(client: &Client, name: &str) -> Object {
    wait_for(&format!("{name} running"), WAIT, || async {
        vmi(client, name)
            .await
            .filter(|i| i.status()["phase"] == "Running")
    })
    .await
}

fn apply(cluster: &Cluster, manifest: &str) -> (bool, String) {
    let (ok, out, err) = cluster
        .up
        .cli_with_input(&["apply", "-f", "-"], Some(manifest));
    (ok, format!("{out}{err}"))
}

/// Waits for `marker` on the console of VM `name` and returns the console so far.
async fn console(cluster: &mut Cluster, name: &str, marker: &str) -> String {
    let client = cluster.client();
    let vmi = running(&client, name).await;
    let node = vmi.status()["nodeName"].as_str().unwrap_or("").to_string();
    let log = cluster
        .agent(&node)
        .run_dir(&vmi.metadata.uid)
        .join("serial.log");
    console_log_until(&log, marker, WAIT).await
}

/// A one-line HTTP server: answers every request with `hello from outside` and records each
/// client's address.
async fn outside_server(address: &str) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind((address, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = peers.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            seen.lock().unwrap().push(peer.ip().to_string());
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let body = "hello from outside";
                let reply = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    (port, peers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vlans_isolate_and_span_hosts_and_the_default_network_reaches_outside() {
    let Some(guest) = test_guest() else { return };
    let dir = KeptDir::new("vmo-network-");
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

    // The VMO pack's VLAN policy: VMs may use VLANs 21-35.
    let settings = "apiVersion: vmo.io/v1alpha1\nkind: ClusterSettings\nmetadata:\n  name: cluster\nspec:\n  network:\n    vlanFiltering:\n      bridgeIF: br0\n      allowedVlans: 21-35\n";
    let (ok, out) = apply(&cluster, settings);
    assert!(ok, "{out}");
    // A default-network range covering the nodes' own network is refused.
    let (ok, out) = apply(
        &cluster,
        &settings.replace("  network:\n", "  network:\n    podCIDR: 10.77.0.0/16\n"),
    );
    assert!(
        !ok && out.contains("spec.network.podCIDR") && out.contains("of node host-"),
        "{out}"
    );
    for (name, vlan) in [("vlan30", 30), ("vlan31", 31), ("vlan40", 40)] {
        let (ok, out) = apply(&cluster, &attachment(name, vlan));
        assert!(ok, "{out}");
    }

    // Both nodes report the datapath this kernel allows, and get a share of the pod CIDR.
    for node in ["host-a", "host-b"] {
        let (ok, yaml, err) = cluster.up.cli(&["get", "node", node, "-o", "yaml"]);
        assert!(ok, "{err}");
        assert!(
            yaml.contains("vmo.io/vlan-datapath: bridge-per-vlan")
                || yaml.contains("vmo.io/vlan-datapath: vlan-aware-bridge"),
            "{yaml}"
        );
        assert!(yaml.contains("vmo.io/pod-network: bridge"), "{yaml}");
    }
    let node_kind = *Registry::builtin().resolve("nodes").unwrap();
    let share_of = |name: &'static str| {
        let client = client.clone();
        async move {
            wait_for(&format!("{name}'s pod CIDR share"), WAIT, || async {
                let node = client.get(&node_kind, "", name).await.ok()?;
                Cidr::parse(node.spec()["podCIDR"].as_str()?).ok()
            })
            .await
        }
    };
    let (share_a, share_b) = (share_of("host-a").await, share_of("host-b").await);
    assert_ne!(share_a, share_b);
    let pods = Cidr::parse("100.64.0.0/18").unwrap();
    assert!(pods.contains(share_a.network) && pods.contains(share_b.network));

    // A VLAN outside the allowed range is refused, naming the field and the policy.
    let (ok, out) = apply(
        &cluster,
        &vm("forty", "host-a", &guest, Some("vlan40"), "true"),
    );
    assert!(!ok, "a VM on VLAN 40 was accepted: {out}");
    assert!(
        out.contains("networks[0].multus.networkName")
            && out.contains("VLAN 40")
            && out.contains("21-35"),
        "{out}"
    );

    // Another namespace may use default/vlan30 only once it is published there.
    let (ok, out) = apply(
        &cluster,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-b\n",
    );
    assert!(ok, "{out}");
    let elsewhere = vm(
        "elsewhere",
        "host-a",
        &guest,
        Some("default/vlan30"),
        "true",
    )
    .replace(
        "metadata:\n  name: elsewhere\n",
        "metadata:\n  name: elsewhere\n  namespace: team-b\n",
    );
    let (ok, out) = apply(&cluster, &elsewhere);
    assert!(
        !ok && out.contains("not published to namespace team-b"),
        "{out}"
    );
    let published = attachment("vlan30", 30).replace(
        "  name: vlan30\n",
        "  name: vlan30\n  annotations: {vmo.io/published-to: team-b}\n",
    );
    let (ok, out) = apply(&cluster, &published);
    assert!(ok, "{out}");
    let (ok, out) = apply(
        &cluster,
        &elsewhere.replace("runStrategy: Always", "runStrategy: Halted"),
    );
    assert!(
        ok,
        "published to team-b, the attachment is usable there: {out}"
    );

    // Two VMs on VLAN 30 on different hosts, and one on VLAN 31 with an address in the same
    // subnet, next to the server; one VM on the default network.
    let gateway = cluster.network.as_ref().unwrap().gateway.clone();
    let (port, outside_peers) = outside_server(&gateway).await;
    let server = format!(
        "{}(while :; do echo pong-from-server | nc -l -p 7000; done) </dev/null >/dev/null 2>&1 &\necho VMO-GUEST: server listening\n",
        static_address("10.30.0.1/24")
    );
    let probe = |from: &str| {
        format!(
            "{}ok=no\nfor i in $(seq 90); do ping -c 1 -W 1 10.30.0.1 >/dev/null 2>&1 && ok=yes && break; sleep 1; done\necho VMO-GUEST: ping {from} $ok\nreply=$(nc -w 3 10.30.0.1 7000 </dev/null)\necho \"VMO-GUEST: tcp {from} [$reply]\"\n",
            static_address(&format!("10.30.0.{}/24", if from == "vlan30" { 2 } else { 3 }))
        )
    };
    // macspoofchk: with another source MAC the client's frames go nowhere; with its own they do.
    let spoofing = "orig=$(cat /sys/class/net/eth0/address)\nip link set eth0 down\nip link set eth0 address 02:de:ad:be:ef:01\nip link set eth0 promisc on\nip link set eth0 up\nif ping -c 3 -W 1 10.30.0.1 >/dev/null 2>&1; then s=yes; else s=no; fi\necho VMO-GUEST: spoofed ping $s\nip link set eth0 down\nip link set eth0 address $orig\nip link set eth0 promisc off\nip link set eth0 up\nok=no\nfor i in $(seq 30); do ping -c 1 -W 1 10.30.0.1 >/dev/null 2>&1 && ok=yes && break; done\necho VMO-GUEST: own-mac ping $ok\n";
    let nat = format!(
        "reply=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {gateway} {port} | tail -n 1)\necho \"VMO-GUEST: outside [$reply]\"\n"
    );
    for manifest in [
        vm("server", "host-a", &guest, Some("vlan30"), &server),
        vm(
            "client",
            "host-b",
            &guest,
            Some("vlan30"),
            &format!("{}{spoofing}", probe("vlan30")),
        ),
        // VLAN 31 fails quickly: 90 pings would take 90 s, so it tries 5.
        vm(
            "outsider",
            "host-a",
            &guest,
            Some("vlan31"),
            &probe("vlan31").replace("seq 90", "seq 5"),
        ),
        vm("natty", "host-b", &guest, None, &nat),
    ] {
        let (ok, out) = apply(&cluster, &manifest);
        assert!(ok, "{out}");
    }

    console(&mut cluster, "server", "VMO-GUEST: server listening").await;
    let seen = console(&mut cluster, "client", "VMO-GUEST: tcp vlan30").await;
    assert!(seen.contains("VMO-GUEST: ping vlan30 yes"), "{seen}");
    assert!(
        seen.contains("VMO-GUEST: tcp vlan30 [pong-from-server]"),
        "{seen}"
    );
    // What the client sent and received shows in its NIC's metrics on host-b.
    let metrics = client
        .get_text("/api/v1/nodes/host-b/proxy/metrics")
        .await
        .expect("host-b's metrics");
    for series in [
        "kubevirt_vmi_network_transmit_bytes_total",
        "kubevirt_vmi_network_receive_bytes_total",
        "kubevirt_vmi_network_transmit_packets_total",
    ] {
        let value: f64 = metrics
            .lines()
            .find(|l| {
                l.starts_with(series)
                    && l.contains("name=\"client\"")
                    && l.contains("interface=\"net\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} for the client's NIC:\n{metrics}"));
        assert!(value > 0.0, "{series} is {value}");
    }
    let seen = console(&mut cluster, "client", "VMO-GUEST: own-mac ping").await;
    assert!(seen.contains("VMO-GUEST: spoofed ping no"), "{seen}");
    assert!(seen.contains("VMO-GUEST: own-mac ping yes"), "{seen}");

    // Hotplug: a NIC on VLAN 31 added to the running client shows up in the guest with its MAC,
    // and goes away again when marked absent.
    let vm_kind = *Registry::builtin().resolve("virtualmachines").unwrap();
    let vm_object = client.get(&vm_kind, "default", "client").await.unwrap();
    let mut nics = vm_object.spec()["template"]["spec"]["domain"]["devices"]["interfaces"].clone();
    let mut nets = vm_object.spec()["template"]["spec"]["networks"].clone();
    nics.as_array_mut()
        .unwrap()
        .push(json!({"name": "extra", "bridge": {}}));
    nets.as_array_mut()
        .unwrap()
        .push(json!({"name": "extra", "multus": {"networkName": "vlan31"}}));
    let set_nics = |nics: Value, nets: Value| {
        let client = client.clone();
        async move {
            let patch = json!({"spec": {"template": {"spec": {"domain": {"devices": {"interfaces": nics}}, "networks": nets}}}});
            client
                .merge_patch(&vm_kind, "default", "client", None, &patch, "test")
                .await
                .expect("patch the VM's NICs");
        }
    };
    set_nics(nics.clone(), nets.clone()).await;
    let with_extra = wait_for("the extra NIC in the client's status", WAIT, || async {
        let i = vmi(&client, "client").await?;
        let list = i.status()["interfaces"].as_array()?.clone();
        list.iter().find(|n| n["name"] == "extra").cloned()
    })
    .await;
    let extra_mac = with_extra["mac"].as_str().unwrap().to_string();
    let seen = console(&mut cluster, "client", "VMO-GUEST: nic added eth1").await;
    assert!(
        seen.contains(&format!("VMO-GUEST: nic added eth1 {extra_mac}")),
        "{seen}"
    );
    nics.as_array_mut().unwrap()[1]["state"] = json!("absent");
    set_nics(nics, nets).await;
    let seen = console(&mut cluster, "client", "VMO-GUEST: nic removed eth1").await;
    assert!(seen.contains("VMO-GUEST: nic removed eth1"), "{seen}");
    wait_for(
        "the extra NIC gone from the client's status",
        WAIT,
        || async {
            let i = vmi(&client, "client").await?;
            let list = i.status()["interfaces"].as_array()?.clone();
            (!list.iter().any(|n| n["name"] == "extra")).then_some(())
        },
    )
    .await;

    let seen = console(&mut cluster, "outsider", "VMO-GUEST: tcp vlan31").await;
    assert!(seen.contains("VMO-GUEST: ping vlan31 no"), "{seen}");
    assert!(seen.contains("VMO-GUEST: tcp vlan31 []"), "{seen}");

    // The default network: an address from host-b's share by DHCP, the same in the VMI's status,
    // and the outside server reached through NAT (it sees host-b's address).
    let seen = console(&mut cluster, "natty", "VMO-GUEST: outside").await;
    assert!(
        seen.contains("VMO-GUEST: outside [hello from outside]"),
        "{seen}"
    );
    let natty = vmi(&client, "natty").await.unwrap();
    let address = natty.status()["interfaces"][0]["ipAddress"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let parsed = address.parse().expect("an address in the VMI's status");
    assert!(share_b.contains(parsed), "{address} not in {share_b}");
    assert!(
        seen.contains(&format!("VMO-GUEST: net eth0 {address}")),
        "{seen}"
    );
    let host_b = cluster.host("host-b").unwrap().address.clone();
    assert!(
        outside_peers.lock().unwrap().contains(&host_b),
        "{:?} should include host-b ({host_b})",
        outside_peers.lock().unwrap()
    );

    // The MAC is the VM's, not the instance's: a restart keeps it.
    let mac = natty.status()["interfaces"][0]["mac"]
        .as_str()
        .unwrap()
        .to_string();

    // kill -9 of host-b's agent: the reservation survives, so a VM started afterwards gets
    // another address, and the first keeps its own.
    cluster.agent("host-b").kill();
    cluster.agent("host-b").restart();
    cluster.wait_node_ready("host-b").await;
    let (ok, out) = apply(&cluster, &vm("natty2", "host-b", &guest, None, &nat));
    assert!(ok, "{out}");
    let seen = console(&mut cluster, "natty2", "VMO-GUEST: outside").await;
    assert!(
        seen.contains("VMO-GUEST: outside [hello from outside]"),
        "{seen}"
    );
    let second = vmi(&client, "natty2").await.unwrap().status()["interfaces"][0]["ipAddress"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        !second.is_empty() && second != address,
        "{second} vs {address}"
    );
    let again = vmi(&client, "natty").await.unwrap();
    assert_eq!(
        again.status()["interfaces"][0]["ipAddress"],
        address.as_str()
    );

    let (ok, out, err) = cluster.up.cli(&["restart", "natty"]);
    assert!(ok, "{out}{err}");
    let restarted = wait_for("natty restarted", WAIT, || async {
        vmi(&client, "natty")
            .await
            .filter(|i| i.metadata.uid != natty.metadata.uid && i.status()["phase"] == "Running")
    })
    .await;
    assert_eq!(restarted.status()["interfaces"][0]["mac"], mac.as_str());

    // Deleting the VLAN VMs removes their taps and, on host-a, the VLAN bridges.
    for name in ["server", "outsider", "client"] {
        let (ok, out, err) = cluster.up.cli(&["delete", "vm", name]);
        assert!(ok, "{out}{err}");
    }
    let netns = cluster.host("host-a").unwrap().netns.clone();
    wait_for("host-a's VLAN bridges removed", WAIT, || async {
        let out = std::process::Command::new("ip")
            .args(["-n", &netns, "-o", "link", "show"])
            .output()
            .ok()?;
        let links = String::from_utf8_lossy(&out.stdout).to_string();
        (!links.contains("vmo-v30") && !links.contains("vmo-v31") && !links.contains("vmo-x30"))
            .then_some(())
    })
    .await;
}

/// Connects to `address` and returns the first line the server sends, or None.
async fn first_line(address: String) -> Option<String> {
    let connect = tokio::net::TcpStream::connect(address);
    let mut stream = tokio::time::timeout(Duration::from_secs(2), connect)
        .await
        .ok()?
        .ok()?;
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).trim().to_string();
    (!text.is_empty()).then_some(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_balancer_address_forwards_to_a_vm_and_moves_when_its_node_dies() {
    let Some(guest) = test_guest() else { return };
    let dir = KeptDir::new("vmo-loadbalancer-");
    let Some(mut cluster) = Cluster::start_in_namespaces_with(
        vmo(),
        dir.path(),
        &[("host-a", "zone-a"), ("host-b", "zone-b")],
        &["--node-grace-period", "6s"],
    )
    .await
    else {
        return;
    };
    let client = cluster.client();
    let gateway = cluster.network.as_ref().unwrap().gateway.clone();
    let subnet = gateway.rsplit_once('.').unwrap().0.to_string();

    // A pool on the hosts' own network, announced on it.
    let pool = format!(
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: lan\nspec:\n  addresses: [\"{subnet}.200-{subnet}.210\"]\n  avoidBuggyIPs: true\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata:\n  name: lan\nspec:\n  ipAddressPools: [lan]\n"
    );
    let (ok, out) = apply(&cluster, &pool);
    assert!(ok, "{out}");
    let service = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  type: LoadBalancer\n  selector: {app: web}\n  ports:\n    - {port: 80, targetPort: 8080}\n";
    let (ok, out) = apply(&cluster, service);
    assert!(ok, "{out}");
    let service_kind = *Registry::builtin().resolve("services").unwrap();
    let announced = |not: Option<String>| {
        let client = client.clone();
        async move {
            wait_for(
                "the Service's address and announcing node",
                WAIT,
                || async {
                    let svc = client.get(&service_kind, "default", "web").await.ok()?;
                    let ip = svc.status()["loadBalancer"]["ingress"][0]["ip"]
                        .as_str()?
                        .to_string();
                    let node = svc
                        .metadata
                        .annotations
                        .get("vmo.io/announcing-node")?
                        .clone();
                    (Some(&node) != not.as_ref()).then_some((ip, node, svc))
                },
            )
            .await
        }
    };
    let (ip, announcer, svc) = announced(None).await;
    assert_eq!(ip, format!("{subnet}.200"));
    let node_port = svc.spec()["ports"][0]["nodePort"]
        .as_u64()
        .expect("a node port");
    let (ok, table, err) = cluster.up.cli(&["get", "svc", "web", "-o", "wide"]);
    assert!(
        ok && table.contains(&ip) && table.contains(&announcer),
        "{table}{err}"
    );

    // The VM runs on the other node, so the address's traffic crosses from one host to the other.
    let other = if announcer == "host-a" {
        "host-b"
    } else {
        "host-a"
    };
    let server = "(while :; do echo hello-from-web | nc -l -p 8080; done) </dev/null >/dev/null 2>&1 &\necho VMO-GUEST: web listening\n";
    let manifest = vm("web", other, &guest, None, server).replace(
        "  template:\n    spec:\n",
        "  template:\n    metadata:\n      labels: {app: web}\n    spec:\n",
    );
    let (ok, out) = apply(&cluster, &manifest);
    assert!(ok, "{out}");
    console(&mut cluster, "web", "VMO-GUEST: web listening").await;
    let reply = wait_for(&format!("{ip}:80 answering"), WAIT, || {
        first_line(format!("{ip}:80"))
    })
    .await;
    assert_eq!(reply, "hello-from-web");
    // The node port answers on both hosts.
    for host in ["host-a", "host-b"] {
        let address = format!("{}:{node_port}", cluster.host(host).unwrap().address);
        let reply = wait_for(&format!("{address} answering"), WAIT, || {
            first_line(address.clone())
        })
        .await;
        assert_eq!(reply, "hello-from-web");
    }

    // The announcing node dies (its agent and its network): the other node takes the address over
    // and says so by gratuitous ARP, and the address answers again.
    let host = cluster.host(&announcer).unwrap();
    let (netns, interface) = (host.netns.clone(), host.interface.clone());
    cluster.agent(&announcer).kill();
    let down = std::process::Command::new("ip")
        .args(["-n", &netns, "link", "set", &interface, "down"])
        .status()
        .unwrap();
    assert!(down.success());
    let (moved_ip, new_announcer, _) = announced(Some(announcer.clone())).await;
    assert_eq!(moved_ip, ip);
    assert_eq!(new_announcer, other);
    let reply = wait_for(&format!("{ip}:80 answering from {other}"), WAIT, || {
        first_line(format!("{ip}:80"))
    })
    .await;
    assert_eq!(reply, "hello-from-web");
}
