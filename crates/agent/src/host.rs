//! Facts about the host a node reports: CPUs, memory, kernel, OS, addresses, and the QEMU it has.

use std::process::Command;
use std::time::Duration;

/// What the agent learned about its host at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    pub cpus: u64,
    pub memory_bytes: u64,
    pub kernel_version: String,
    pub os_image: String,
    pub machine_id: String,
    pub architecture: String,
    pub hostname: String,
    pub internal_ip: Option<String>,
    /// `qemu-system-x86_64 --version`'s version, if QEMU is installed.
    pub qemu_version: Option<String>,
    /// Whether `/dev/kvm` exists (whether it runs guests is for the accelerator probe to say).
    pub kvm_device: bool,
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A `Key:   N kB` field of a `/proc` file (`/proc/meminfo`, `/proc/PID/status`), in bytes.
pub fn proc_kib_field(path: &str, key: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok().and_then(|text| {
        text.lines()
            .find(|l| {
                l.strip_prefix(key)
                    .is_some_and(|rest| rest.starts_with(':'))
            })
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<u64>().ok())
            .map(|kib| kib * 1024)
    })
}

/// Total memory from `/proc/meminfo`.
/// The TCP ports process `pid` listens on (IPv4 and IPv6), from its socket inodes and
/// `/proc/net/tcp*`. QEMU's NBD server reports no port over QMP when the kernel picks it.
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().to_string();
                    l.strip_prefix("socket:[")?
                        .strip_suffix(']')
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address, state (0A = LISTEN), inode
            if cols.len() > 9 && cols[3] == "0A" && inodes.contains(cols[9]) {
                if let Some(port) = cols[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                {
                    ports.push(port);
                }
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

pub fn memory_bytes() -> u64 {
    proc_kib_field("/proc/meminfo", "MemTotal").unwrap_or(0)
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into())
}

/// The first global IPv4 address, as `ip -o -4 addr show scope global` lists it.
fn internal_ip() -> Option<String> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    parse_first_address(&String::from_utf8_lossy(&out.stdout))
}

/// Picks the address from the first line of `ip -o -4 addr` (`2: eth0    inet 10.0.0.5/24 ...`).
fn parse_first_address(output: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        words.find(|w| *w == "inet")?;
        Some(words.next()?.split('/').next()?.to_string())
    })
}

/// Parses `QEMU emulator version 10.0.2 (Debian ...)` to `10.0.2`.
pub fn parse_qemu_version(output: &str) -> Option<String> {
    output
        .lines()
        .next()?
        .split("version ")
        .nth(1)?
        .split_whitespace()
        .next()
        .map(str::to_string)
}

fn qemu_version(binary: &str) -> Option<String> {
    let mut child = Command::new(binary)
        .arg("--version")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if child.try_wait().ok()?.is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().ok()?;
    parse_qemu_version(&String::from_utf8_lossy(&out.stdout))
}

impl HostFacts {
    /// Reads the facts of this host.
    pub fn gather(qemu_binary: &str) -> Self {
        let hostname = read_trimmed("/proc/sys/kernel/hostname");
        Self {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u64)
                .unwrap_or(1),
            memory_bytes: memory_bytes(),
            kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
            os_image: os_image(),
            machine_id: read_trimmed("/etc/machine-id"),
            architecture: match std::env::consts::ARCH {
                "x86_64" => "amd64".into(),
                "aarch64" => "arm64".into(),
                other => other.into(),
            },
            hostname,
            internal_ip: internal_ip(),
            qemu_version: qemu_version(qemu_binary),
            kvm_device: std::path::Path::new("/dev/kvm").exists(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_ports_a_process_listens_on() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listening_ports(std::process::id()).contains(&port));
        drop(listener);
        assert!(!listening_ports(std::process::id()).contains(&port));
    }

    #[test]
    fn qemu_version_lines() {
        assert_eq!(
            parse_qemu_version(
                "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2~bpo12+1)\nCopyright"
            ),
            Some("10.0.2".into())
        );
        assert_eq!(parse_qemu_version("garbage"), None);
    }

    #[test]
    fn addresses_from_ip_output() {
        let out = "2: eth0    inet 10.1.2.3/24 brd 10.1.2.255 scope global eth0\n3: br0    inet 10.9.9.9/16 scope global br0\n";
        assert_eq!(parse_first_address(out), Some("10.1.2.3".into()));
        assert_eq!(parse_first_address(""), None);
    }

    #[test]
    fn this_host_has_cpus_and_memory() {
        let facts = HostFacts::gather("/nonexistent/qemu");
        assert!(facts.cpus >= 1);
        assert!(facts.memory_bytes > 0);
        assert!(facts.qemu_version.is_none());
    }
}
