//! libvirt's `virsh start` as a third peer in the VM start benchmark, beside vmo and bare QEMU: libvirt
//! is what most VM platforms (and KubeVirt's virt-launcher) put between an API and QEMU, so its start
//! latency is the reference a VM platform is judged against.
//!
//! Each VM is a persistent domain defined from XML equivalent to the bench's vmo VM and bare QEMU
//! command line (q35, TCG, 128 MiB, 1 vCPU, `-cpu max`, the test guest's kernel + initrd + cmdline, the
//! serial console on a unix socket, VGA on a VNC unix socket, no network, no USB, no balloon). The
//! definitions happen before the clock starts; the timed part is `virsh start NAME` spawned -> the
//! domain running (when `virsh start` returns, confirmed by `virsh domstate`) and -> the guest's boot
//! marker on the serial console. QEMU runs as the bench's own user, like vmo's, with no relabelling of
//! the guest files. Every domain is destroyed and undefined afterwards, even when a start fails.
//!
//! Needs `virsh` and a libvirt daemon answering on `qemu:///system` (`scripts/install-libvirt.sh`
//! installs and starts both); without them the bench says why and skips libvirt.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};
use vmo_testkit::console_until;

/// The libvirt connection every `virsh` call uses.
const URI: &str = "qemu:///system";
/// Longest wait for a started domain to report `running`.
const RUNNING_DEADLINE: Duration = Duration::from_secs(120);
/// Longest wait for the boot marker, as for vmo and bare QEMU.
const MARKER_DEADLINE: Duration = Duration::from_secs(900);

/// Runs `virsh -c URI ARGS...`; its stdout, or a message naming the command and its stderr.
async fn virsh(args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new("virsh")
        .arg("-c")
        .arg(URI)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("virsh {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "virsh {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why libvirt cannot be measured here, or `Ok` when `virsh` exists and the daemon answers.
async fn available() -> Result<(), String> {
    match tokio::process::Command::new("virsh")
        .arg("--version")
        .output()
        .await
    {
        Err(e) => {
            return Err(format!(
                "virsh is not installed ({e}); scripts/install-libvirt.sh installs libvirt"
            ))
        }
        Ok(o) if !o.status.success() => return Err("`virsh --version` failed".into()),
        Ok(_) => {}
    }
    // Also opens the QEMU driver once, so that a first-connection capability probe is not timed.
    virsh(&["version"]).await.map(|_| ()).map_err(|e| {
        format!("the libvirt daemon does not answer ({e}); scripts/install-libvirt.sh starts it")
    })
}

/// `s` safe inside an XML text node or a single- or double-quoted attribute.
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// What one domain needs: its name and where its console and display sockets go.
struct Domain<'a> {
    name: &'a str,
    kernel: &'a Path,
    initrd: &'a Path,
    cmdline: &'a str,
    serial_socket: &'a Path,
    vnc_socket: &'a Path,
    /// The user and group QEMU runs as (`+UID:+GID`, numeric).
    owner: (u32, u32),
}

impl Domain<'_> {
    /// The domain XML: the same machine as `vmo_agent::vm::plan::LaunchPlan::args` builds for the bench.
    fn xml(&self) -> String {
        let e = |p: &Path| xml_escape(&p.display().to_string());
        format!(
            "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB' dumpCore='off'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='maximum'/>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <controller type='usb' model='none'/>
    <serial type='unix'>
      <source mode='bind' path='{serial}'/>
      <target port='0'/>
    </serial>
    <graphics type='vnc' socket='{vnc}'/>
    <video><model type='vga'/></video>
    <memballoon model='none'/>
  </devices>
  <seclabel type='static' model='dac' relabel='no'><label>+{uid}:+{gid}</label></seclabel>
</domain>
",
            name = xml_escape(self.name),
            kernel = e(self.kernel),
            initrd = e(self.initrd),
            cmdline = xml_escape(self.cmdline),
            serial = e(self.serial_socket),
            vnc = e(self.vnc_socket),
            uid = self.owner.0,
            gid = self.owner.1,
        )
    }
}

/// Stops and forgets a domain; errors (it is not running, it does not exist) do not matter.
async fn remove(name: &str) {
    let _ = virsh(&["destroy", name]).await;
    let _ = virsh(&["undefine", name]).await;
}

/// Starts one defined domain; (spawn -> running, spawn -> boot marker).
async fn start_one(
    name: String,
    serial_socket: std::path::PathBuf,
) -> Result<(Duration, Duration), String> {
    let spawned = Instant::now();
    virsh(&["start", &name]).await?;
    let mut running = spawned.elapsed();
    // `virsh start` returns once libvirt has resumed the vCPUs; the state check confirms it (and
    // only extends the time if the domain were not running yet).
    loop {
        let state = virsh(&["domstate", &name]).await?;
        if state.trim() == "running" {
            break;
        }
        if spawned.elapsed() > RUNNING_DEADLINE {
            return Err(format!("{name} is {:?}, not running", state.trim()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        running = spawned.elapsed();
    }
    console_until(&serial_socket, super::MARKER, MARKER_DEADLINE).await;
    Ok((running, spawned.elapsed()))
}

/// `count` VMs started with `virsh start` every `interval`: the sorted spawn -> running and spawn ->
/// boot marker durations, or why libvirt was not (or could not be) measured.
pub async fn virsh_start(
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    count: usize,
    interval: Duration,
) -> Result<(Vec<Duration>, Vec<Duration>), String> {
    available().await?;
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let meta =
        std::fs::metadata(dir.path()).map_err(|e| format!("{}: {e}", dir.path().display()))?;
    let owner = (meta.uid(), meta.gid());
    let names: Vec<String> = (0..count).map(|n| format!("vmo-bench-{n}")).collect();
    let result = async {
        // Define every domain before the clock starts (replacing leftovers of an interrupted run).
        let mut sockets = Vec::new();
        for name in &names {
            remove(name).await;
            let run_dir = dir.path().join(name);
            std::fs::create_dir_all(&run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;
            let serial_socket = run_dir.join("serial.sock");
            let domain = Domain {
                name,
                kernel,
                initrd,
                cmdline,
                serial_socket: &serial_socket,
                vnc_socket: &run_dir.join("vnc.sock"),
                owner,
            };
            let xml_file = run_dir.join("domain.xml");
            std::fs::write(&xml_file, domain.xml())
                .map_err(|e| format!("{}: {e}", xml_file.display()))?;
            virsh(&["define", &xml_file.display().to_string()]).await?;
            sockets.push(serial_socket);
        }
        let mut tasks = Vec::new();
        for (name, socket) in names.iter().zip(sockets) {
            tasks.push(tokio::spawn(start_one(name.clone(), socket)));
            tokio::time::sleep(interval).await;
        }
        let (mut running, mut marker) = (Vec::new(), Vec::new());
        let mut failure = None;
        for t in tasks {
            match t.await {
                Ok(Ok((r, m))) => {
                    running.push(r);
                    marker.push(m);
                }
                Ok(Err(e)) => failure = failure.or(Some(e)),
                Err(e) => failure = failure.or(Some(format!("a start task failed: {e}"))),
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        running.sort();
        marker.sort();
        Ok((running, marker))
    }
    .await;
    for name in &names {
        remove(name).await;
    }
    result
}
