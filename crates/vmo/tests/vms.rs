//! VirtualMachines end to end with real QEMU (TCG) under a real `vmo up`: a VM applied as YAML boots
//! the test guest with its cloud-init; kill -9 of `vmo up` leaves the guest running and the restarted
//! agent adopts it; a QEMU killed from outside is reported and replaced per runStrategy; Halted
//! stops the guest by ACPI; a VM whose disk is missing fails with the field named and backs off;
//! deleting a VM removes its instance and its QEMU. Consoles (`vmo console`, takeover, detach),
//! `vmo vnc`, the agent's metrics through the server, and a reboot inside the guest that keeps the
//! instance.

use std::path::{Path, PathBuf};
use std::time::Duration;
use vmo_api::{Object, Registry};
use vmo_client::Client;
use vmo_testkit::objects::vmi;
use vmo_testkit::{
    collect_output, console_log_until, process_alive as alive, test_guest, wait_for, KeptDir,
    VmoProcess,
};

const WAIT: Duration = Duration::from_secs(90);

fn vmo() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vmo"))
}

fn manifest(name: &str, guest: &Path, strategy: &str) -> String {
    let kernel = vmo_testkit::guest_kernel(guest);
    format!(
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  runStrategy: {strategy}
  template:
    spec:
      terminationGracePeriodSeconds: 20
      domain:
        memory:
          guest: 192Mi
        firmware:
          kernelBoot:
            kernelArgs: console=ttyS0 quiet no_timer_check vmo.netwait=0
            container:
              kernelPath: {k}
              initrdPath: {g}/initrd.img
        devices:
          disks:
            - name: cloudinit
              disk: {{bus: virtio}}
      volumes:
        - name: cloudinit
          cloudInitNoCloud:
            userData: |
              #!/bin/sh
              echo VMO-E2E-USERDATA {name}
"#,
        g = guest.display(),
        k = kernel.display()
    )
}

async fn vm(client: &Client, name: &str) -> Option<Object> {
    client
        .get(Registry::builtin().resolve("vm").unwrap(), "default", name)
        .await
        .ok()
}

fn printable(o: &Object) -> String {
    o.status()["printableStatus"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

async fn wait_printable(client: &Client, name: &str, want: &str) -> Object {
    wait_for(&format!("VM {name} {want}"), WAIT, || async {
        vm(client, name).await.filter(|v| printable(v) == want)
    })
    .await
}

fn run_dir(data: &Path, uid: &str) -> PathBuf {
    data.join("agent").join("vms").join(uid)
}

fn qemu_pid(data: &Path, uid: &str) -> u32 {
    std::fs::read_to_string(run_dir(data, uid).join("qemu.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_machine_lifecycle_with_real_qemu() {
    let Some(guest) = test_guest() else { return };
    let dir = KeptDir::new("vmo-vms-");
    let data = dir.path().join("data");
    let args = [
        "--accel",
        "tcg",
        "--heartbeat-interval",
        "1s",
        "--node-name",
        "node-a",
    ];
    let up = VmoProcess::start_with_args(vmo(), &data, &args).await;
    let client = up.client();

    // Apply: the VM starts, its instance runs on the node, the guest boots with its cloud-init.
    let (ok, out, err) = up.cli_with_input(
        &["apply", "-f", "-"],
        Some(&manifest("web", &guest, "Always")),
    );
    assert!(ok, "{out}{err}");
    wait_printable(&client, "web", "Running").await;
    let instance = vmi(&client, "web").await.unwrap();
    assert_eq!(instance.status()["phase"], "Running");
    assert_eq!(instance.status()["nodeName"], "node-a");
    let uid = instance.metadata.uid.clone();
    let console = console_log_until(
        &run_dir(&data, &uid).join("serial.log"),
        "VMO-GUEST: ready",
        Duration::from_secs(150),
    )
    .await;
    assert!(console.contains("VMO-E2E-USERDATA web"), "{console}");
    assert!(
        console.contains("cloud-init done hostname=web"),
        "{console}"
    );
    let described = wait_for("lifecycle events", WAIT, || async {
        let (_, out, _) = up.cli(&["describe", "vm", "web"]);
        (out.contains("SuccessfulCreate") && out.contains("Started")).then_some(out)
    })
    .await;
    assert!(described.contains("vmo-agent"), "{described}");
    let metrics = client.get_text("/metrics").await.unwrap();
    assert!(
        metrics.contains(r#"kubevirt_vmi_phase_count{phase="running",node="node-a"} 1"#),
        "{metrics}"
    );
    let (_, table, _) = up.cli(&["get", "vmi"]);
    assert!(
        table.contains("Running") && table.contains("node-a"),
        "{table}"
    );

    // kill -9 of `vmo up` (its agent inside) leaves the guest running; the restart adopts it.
    let pid = qemu_pid(&data, &uid);
    let mut up = up;
    assert!(!up.signal_and_wait("KILL"));
    assert!(alive(pid), "QEMU survives kill -9 of vmo up");
    let up = VmoProcess::start_with_args(vmo(), &data, &args).await;
    let client = up.client();
    wait_for("adoption", WAIT, || async {
        up.log().contains("adopted a running QEMU").then_some(())
    })
    .await;
    assert_eq!(
        vmi(&client, "web").await.unwrap().metadata.uid,
        uid,
        "the same instance carries on"
    );
    assert_eq!(printable(&vm(&client, "web").await.unwrap()), "Running");
    assert_eq!(qemu_pid(&data, &uid), pid);

    // QEMU killed from outside: reported, and replaced because the strategy is Always.
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
    let replaced = wait_for("a replacement instance", WAIT, || async {
        vmi(&client, "web")
            .await
            .filter(|i| i.metadata.uid != uid && i.status()["phase"] == "Running")
    })
    .await;
    let new_pid = qemu_pid(&data, &replaced.metadata.uid);
    assert_ne!(new_pid, pid);

    // Halted: ACPI power-down, the instance goes, QEMU exits.
    let (ok, _, err) = up.cli_with_input(
        &["apply", "-f", "-"],
        Some(&manifest("web", &guest, "Halted")),
    );
    assert!(ok, "{err}");
    wait_printable(&client, "web", "Stopped").await;
    wait_for("QEMU gone after Halted", WAIT, || async {
        (!alive(new_pid)).then_some(())
    })
    .await;
    wait_for("instance gone after Halted", WAIT, || async {
        vmi(&client, "web").await.is_none().then_some(())
    })
    .await;

    // virtctl's verbs: start, restart (a new instance), stop; refusals say why.
    let (ok, out, err) = up.cli(&["start", "web"]);
    assert!(ok && out.contains("scheduled to start"), "{out}{err}");
    let started = wait_for("started by vmo start", WAIT, || async {
        vmi(&client, "web")
            .await
            .filter(|i| i.status()["phase"] == "Running")
    })
    .await;
    let (ok, _, err) = up.cli(&["start", "web"]);
    assert!(!ok && err.contains("VM is already running"), "{err}");
    // Pause and unpause: the guest's vCPUs stop and resume; the VM says Paused meanwhile.
    let (ok, _, err) = up.cli(&["pause", "web"]);
    assert!(ok, "{err}");
    wait_printable(&client, "web", "Paused").await;
    let (ok, _, err) = up.cli(&["pause", "web"]);
    assert!(!ok && err.contains("already paused"), "{err}");
    let (ok, _, err) = up.cli(&["unpause", "web"]);
    assert!(ok, "{err}");
    wait_printable(&client, "web", "Running").await;
    let (ok, _, err) = up.cli(&["restart", "web", "--force"]);
    assert!(ok, "{err}");
    wait_for("a new instance after restart", WAIT, || async {
        vmi(&client, "web")
            .await
            .filter(|i| i.metadata.uid != started.metadata.uid && i.status()["phase"] == "Running")
    })
    .await;
    let (ok, _, err) = up.cli(&["stop", "web", "--grace-period", "1"]);
    assert!(ok, "{err}");
    wait_printable(&client, "web", "Stopped").await;
    assert_eq!(
        vm(&client, "web").await.unwrap().spec()["runStrategy"],
        "Halted"
    );
    let (ok, _, err) = up.cli(&["stop", "web"]);
    assert!(!ok && err.contains("VM is not running"), "{err}");

    // A VM whose disk does not exist: the instance fails naming the field, the VM backs off.
    let broken = manifest("broken", &guest, "Always").replace(
        "        - name: cloudinit\n          cloudInitNoCloud:",
        "        - name: cloudinit\n          hostDisk:\n            path: /nonexistent/disk.img\n            type: Disk\n          x-was-cloudInitNoCloud:",
    );
    let (ok, _, err) = up.cli_with_input(&["apply", "-f", "-"], Some(&broken));
    assert!(ok, "{err}");
    let failed = wait_for("the broken instance to fail", WAIT, || async {
        vmi(&client, "broken")
            .await
            .filter(|i| i.status()["phase"] == "Failed")
    })
    .await;
    let message = failed.status()["conditions"][0]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        message.contains("spec.volumes[0].hostDisk.path")
            && message.contains("/nonexistent/disk.img"),
        "{message}"
    );
    let backing_off = wait_printable(&client, "broken", "CrashLoopBackOff").await;
    assert!(backing_off.status()["startFailure"]["retryAfterTimestamp"].is_string());

    // `vmo stop` now owns runStrategy: applying another value is a conflict until forced.
    let (ok, _, err) = up.cli_with_input(
        &["apply", "-f", "-"],
        Some(&manifest("web", &guest, "Always")),
    );
    assert!(
        !ok && err.contains("conflict with \"vmo-lifecycle\": .spec.runStrategy"),
        "{err}"
    );
    let (ok, _, err) = up.cli_with_input(
        &["apply", "--force-conflicts", "-f", "-"],
        Some(&manifest("web", &guest, "Always")),
    );
    assert!(ok, "{err}");

    // Deleting a VM removes its instance (and its QEMU).
    let running = wait_for("web running again", WAIT, || async {
        vmi(&client, "web")
            .await
            .filter(|i| i.status()["phase"] == "Running")
    })
    .await;
    let last_pid = qemu_pid(&data, &running.metadata.uid);
    let (ok, _, err) = up.cli(&["delete", "vm", "web", "broken"]);
    assert!(ok, "{err}");
    wait_for("instances gone", WAIT, || async {
        (vmi(&client, "web").await.is_none() && vmi(&client, "broken").await.is_none())
            .then_some(())
    })
    .await;
    wait_for("QEMU gone after delete", WAIT, || async {
        (!alive(last_pid)).then_some(())
    })
    .await;
}

async fn wait_text(what: &str, seen: &std::sync::Arc<std::sync::Mutex<String>>, text: &str) {
    wait_for(what, WAIT, || async {
        seen.lock().unwrap().contains(text).then_some(())
    })
    .await
}

/// Waits for a child to exit (panicking after [`WAIT`]) and returns whether it succeeded.
async fn exited(child: &mut std::process::Child) -> bool {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        assert!(
            started.elapsed() < WAIT,
            "the command did not exit within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the first sample of `series` (name and labels as printed) in a metrics page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consoles_vnc_metrics_and_a_guest_reboot() {
    use std::io::Write;
    let Some(guest) = test_guest() else { return };
    let dir = KeptDir::new("vmo-consoles-");
    let data = dir.path().join("data");
    let args = ["--accel", "tcg", "--node-name", "node-c"];
    let up = VmoProcess::start_with_args(vmo(), &data, &args).await;
    let client = up.client();
    let (ok, out, err) = up.cli_with_input(
        &["apply", "-f", "-"],
        Some(&manifest("con", &guest, "Always")),
    );
    assert!(ok, "{out}{err}");
    wait_printable(&client, "con", "Running").await;
    let uid = vmi(&client, "con").await.unwrap().metadata.uid;
    // The agent keeps the console log while nobody is attached.
    console_log_until(
        &run_dir(&data, &uid).join("serial.log"),
        "VMO-GUEST: ready",
        Duration::from_secs(150),
    )
    .await;
    let console_path =
        "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/con/console";

    // Only authenticated users reach a console, and the agent admits only the server.
    let stranger = vmo_client::Client::new(vmo_client::Credentials {
        server: client.server().to_string(),
        ca_pem: client.ca_pem().map(<[u8]>::to_vec),
        token: "not-a-token".into(),
        namespace: None,
    })
    .unwrap();
    let refused = stranger.websocket(console_path).await.err().unwrap();
    assert_eq!(refused.code(), Some(401), "{refused}");
    let refused = stranger
        .get_text("/api/v1/nodes/node-c/proxy/metrics")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(401), "{refused}");
    let node = client
        .get(Registry::builtin().resolve("nodes").unwrap(), "", "node-c")
        .await
        .unwrap();
    let endpoint = &node.metadata.annotations["vmo.io/agent-endpoint"];
    let direct = std::process::Command::new("curl")
        .args(["-sk", "--max-time", "5", &format!("{endpoint}/metrics")])
        .output();
    match direct {
        Ok(o) => assert!(
            !o.status.success() && o.stdout.is_empty(),
            "the agent endpoint answered a client without a cluster certificate: {}",
            String::from_utf8_lossy(&o.stdout)
        ),
        Err(e) => eprintln!("curl is not available ({e}); skipped the direct agent check"),
    }

    // `vmo console`: keys reach the guest's shell and its answer comes back.
    let mut first = up.spawn_cli(&["console", "con"]);
    let first_out = collect_output(first.stdout.take().unwrap());
    let first_err = collect_output(first.stderr.take().unwrap());
    wait_text("console attached", &first_err, "Successfully connected").await;
    let mut keys = first.stdin.take().unwrap();
    keys.write_all(b"echo VMO-CONSOLE-$((6*7))\n").unwrap();
    wait_text("the guest's answer", &first_out, "VMO-CONSOLE-42").await;

    // A second session takes over; the first is told and ends.
    let mut second = up.spawn_cli(&["console", "con"]);
    let second_out = collect_output(second.stdout.take().unwrap());
    let second_err = collect_output(second.stderr.take().unwrap());
    wait_text(
        "second console attached",
        &second_err,
        "Successfully connected",
    )
    .await;
    wait_text(
        "takeover notice",
        &first_out,
        "another console session took over",
    )
    .await;
    assert!(exited(&mut first).await);
    let mut keys = second.stdin.take().unwrap();
    keys.write_all(b"echo VMO-SECOND-$((6*8))\n").unwrap();
    wait_text("the guest's answer", &second_out, "VMO-SECOND-48").await;
    // A reboot inside the guest keeps the instance and its QEMU; the console stays attached.
    let pid = qemu_pid(&data, &uid);
    // Guests yield the CPU to the control plane (vmo up runs at niceness 0 here): every QEMU
    // thread, vCPUs included, runs at the guests' niceness once started (it starts higher).
    let niceness = |stat: String| -> i32 {
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        fields[16].parse().unwrap()
    };
    let threads: Vec<(String, i32)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            Some((name.trim().to_string(), niceness(stat)))
        })
        .collect();
    assert!(
        threads.iter().any(|(name, _)| name.starts_with("CPU 0")),
        "QEMU names its vCPU threads: {threads:?}"
    );
    assert!(
        threads
            .iter()
            .all(|(_, n)| *n == vmo_agent::vm::process::GUEST_NICENESS),
        "every QEMU thread at the guests' niceness: {threads:?}"
    );
    keys.write_all(b"reboot -f\n").unwrap();
    let log = run_dir(&data, &uid).join("serial.log");
    wait_for(
        "the guest to boot again",
        Duration::from_secs(150),
        || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            (text.matches("VMO-GUEST: ready").count() >= 2).then_some(())
        },
    )
    .await;
    let after = vmi(&client, "con").await.unwrap();
    assert_eq!(after.metadata.uid, uid);
    assert_eq!(after.status()["phase"], "Running");
    assert_eq!(qemu_pid(&data, &uid), pid);
    wait_text(
        "the console across the reboot",
        &second_out,
        "VMO-GUEST: booted",
    )
    .await;
    // Ctrl+] detaches.
    keys.write_all(&[0x1d]).unwrap();
    assert!(exited(&mut second).await);
    wait_text("detach notice", &second_err, "[detached]").await;

    // `vmo vnc`: a local port that speaks RFB, QEMU's VNC server behind it.
    let mut vnc = up.spawn_cli(&["vnc", "con"]);
    let vnc_out = collect_output(vnc.stdout.take().unwrap());
    wait_text("vnc listening", &vnc_out, "listening on").await;
    let line = vnc_out.lock().unwrap().clone();
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap()
        .to_string();
    let mut viewer = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut greeting = [0u8; 12];
    tokio::time::timeout(
        WAIT,
        tokio::io::AsyncReadExt::read_exact(&mut viewer, &mut greeting),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(&greeting, b"RFB 003.008\n");
    let _ = vnc.kill();
    let _ = vnc.wait();

    // The agent's metrics, through the server, under KubeVirt's names.
    let page = client
        .get_text("/api/v1/nodes/node-c/proxy/metrics")
        .await
        .unwrap();
    let vm = r#"{node="node-c",namespace="default",name="con"}"#;
    let cpu = sample(&page, &format!("kubevirt_vmi_cpu_usage_seconds_total{vm}"));
    assert!(cpu.is_some_and(|c| c > 0.0), "{page}");
    let rss = sample(&page, &format!("kubevirt_vmi_memory_resident_bytes{vm}"));
    assert!(rss.is_some_and(|r| r > 1e6), "{page}");
    let disk = r#"{node="node-c",namespace="default",name="con",drive="cloudinit"}"#;
    let read = sample(
        &page,
        &format!("kubevirt_vmi_storage_read_traffic_bytes_total{disk}"),
    );
    assert!(
        read.is_some_and(|r| r > 0.0),
        "the guest read its seed: {page}"
    );
    assert!(
        sample(
            &page,
            &format!("kubevirt_vmi_storage_iops_read_total{disk}")
        )
        .is_some_and(|r| r > 0.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, r#"vmo_agent_running_vmis{node="node-c"}"#),
        Some(1.0),
        "{page}"
    );

    // No console for a VM that is not running: the server says why.
    let (ok, _, err) = up.cli(&["stop", "con", "--force"]);
    assert!(ok, "{err}");
    wait_printable(&client, "con", "Stopped").await;
    let (ok, _, err) = up.cli(&["console", "con", "--timeout", "0"]);
    assert!(!ok && err.contains("con"), "{err}");
}
