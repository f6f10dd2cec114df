//! The agent's `/metrics` in Prometheus text format, under KubeVirt's metric names so existing
//! dashboards and alerts work: per-VM CPU time and resident memory from `/proc` of the QEMU
//! process, block traffic and operations from QMP `query-blockstats`; plus the node's own figures.
//!
//! Network series (`kubevirt_vmi_network_*`) come from the counters of each NIC's tap (the guest's
//! receive is the tap's transmit); NICs on QEMU's user-mode NAT have no counters QEMU exposes and
//! get no network series.

use crate::runner::{VmHandle, Vms};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Linux's user-visible clock tick (`USER_HZ`), fixed at 100 on every architecture vmo runs on.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// Metric families being assembled: name -> (help, type, sample lines).
#[derive(Default)]
struct Families(BTreeMap<&'static str, (&'static str, &'static str, Vec<String>)>);

impl Families {
    fn add(
        &mut self,
        name: &'static str,
        kind: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let entry = self.0.entry(name).or_insert((help, kind, Vec::new()));
        entry
            .2
            .push(format!("{name}{{{}}} {value}", labels.join(",")));
    }

    fn render(self) -> String {
        let mut out = String::new();
        for (name, (help, kind, samples)) in self.0 {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for s in samples {
                let _ = writeln!(out, "{s}");
            }
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// CPU seconds (user + system, all threads) and resident bytes of a process.
fn process_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((ticks as f64 / CLOCK_TICKS_PER_SECOND, resident_bytes(pid)))
}

fn resident_bytes(pid: impl std::fmt::Display) -> u64 {
    crate::host::proc_kib_field(&format!("/proc/{pid}/status"), "VmRSS").unwrap_or(0)
}

/// The KubeVirt disk name behind a QEMU drive id (`ua-NAME`), as the launch plan names drives.
fn drive_name(stats: &Value) -> Option<String> {
    let device = stats["device"].as_str().filter(|d| !d.is_empty())?;
    Some(device.strip_prefix("ua-").unwrap_or(device).to_string())
}

async fn vm_samples(node: &str, vm: &VmHandle, out: &mut Families) {
    let labels = [
        ("node", node),
        ("namespace", vm.namespace.as_str()),
        ("name", vm.name.as_str()),
    ];
    if let Some((cpu, rss)) = process_usage(vm.pid) {
        out.add(
            "kubevirt_vmi_cpu_usage_seconds_total",
            "counter",
            "CPU time the VM's QEMU process used, in seconds.",
            &labels,
            cpu,
        );
        out.add(
            "kubevirt_vmi_memory_resident_bytes",
            "gauge",
            "Resident memory of the VM's QEMU process, in bytes.",
            &labels,
            rss as f64,
        );
    }
    for (interface, tap) in &vm.taps {
        let labels = [
            labels[0],
            labels[1],
            labels[2],
            ("interface", interface.as_str()),
        ];
        let counter = |field: &str| {
            std::fs::read_to_string(format!("/sys/class/net/{tap}/statistics/{field}"))
                .ok()
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        let series: [(&'static str, &'static str, &str); 8] = [
            (
                "kubevirt_vmi_network_receive_bytes_total",
                "Bytes the VM received on the interface.",
                "tx_bytes",
            ),
            (
                "kubevirt_vmi_network_transmit_bytes_total",
                "Bytes the VM sent on the interface.",
                "rx_bytes",
            ),
            (
                "kubevirt_vmi_network_receive_packets_total",
                "Packets the VM received on the interface.",
                "tx_packets",
            ),
            (
                "kubevirt_vmi_network_transmit_packets_total",
                "Packets the VM sent on the interface.",
                "rx_packets",
            ),
            (
                "kubevirt_vmi_network_receive_errors_total",
                "Receive errors on the interface.",
                "tx_errors",
            ),
            (
                "kubevirt_vmi_network_transmit_errors_total",
                "Transmit errors on the interface.",
                "rx_errors",
            ),
            (
                "kubevirt_vmi_network_receive_packets_dropped_total",
                "Packets dropped on their way to the VM.",
                "tx_dropped",
            ),
            (
                "kubevirt_vmi_network_transmit_packets_dropped_total",
                "Packets from the VM that were dropped.",
                "rx_dropped",
            ),
        ];
        for (name, help, field) in series {
            if let Some(value) = counter(field) {
                out.add(name, "counter", help, &labels, value);
            }
        }
    }
    let stats = vm.block_stats().await.unwrap_or(Value::Null);
    for dev in stats.as_array().into_iter().flatten() {
        let Some(drive) = drive_name(dev) else {
            continue;
        };
        let s = &dev["stats"];
        let labels = [labels[0], labels[1], labels[2], ("drive", drive.as_str())];
        let counter = |field: &str| s[field].as_f64().unwrap_or(0.0);
        let series: [(&'static str, &'static str, f64); 7] = [
            (
                "kubevirt_vmi_storage_read_traffic_bytes_total",
                "Bytes read from the disk.",
                counter("rd_bytes"),
            ),
            (
                "kubevirt_vmi_storage_write_traffic_bytes_total",
                "Bytes written to the disk.",
                counter("wr_bytes"),
            ),
            (
                "kubevirt_vmi_storage_iops_read_total",
                "Read operations on the disk.",
                counter("rd_operations"),
            ),
            (
                "kubevirt_vmi_storage_iops_write_total",
                "Write operations on the disk.",
                counter("wr_operations"),
            ),
            (
                "kubevirt_vmi_storage_flush_requests_total",
                "Flush requests on the disk.",
                counter("flush_operations"),
            ),
            (
                "kubevirt_vmi_storage_read_times_seconds_total",
                "Time spent reading from the disk, in seconds.",
                counter("rd_total_time_ns") / 1e9,
            ),
            (
                "kubevirt_vmi_storage_write_times_seconds_total",
                "Time spent writing to the disk, in seconds.",
                counter("wr_total_time_ns") / 1e9,
            ),
        ];
        for (name, help, value) in series {
            out.add(name, "counter", help, &labels, value);
        }
    }
}

/// The whole `/metrics` page for this node.
pub async fn render(node: &str, vms: &Vms, cpus: u64, memory_bytes: u64) -> String {
    let running: Vec<VmHandle> = vms
        .lock()
        .map(|v| v.values().cloned().collect())
        .unwrap_or_default();
    let mut out = Families::default();
    let node_label = [("node", node)];
    out.add(
        "vmo_agent_running_vmis",
        "gauge",
        "Instances whose QEMU this agent runs.",
        &node_label,
        running.len() as f64,
    );
    out.add(
        "vmo_agent_resident_memory_bytes",
        "gauge",
        "Resident memory of the agent process, in bytes.",
        &node_label,
        resident_bytes("self") as f64,
    );
    out.add(
        "vmo_node_cpus",
        "gauge",
        "CPUs of the node.",
        &node_label,
        cpus as f64,
    );
    out.add(
        "vmo_node_memory_bytes",
        "gauge",
        "Memory of the node, in bytes.",
        &node_label,
        memory_bytes as f64,
    );
    // This node's agent's events that were not recorded (the server reports its controllers').
    for d in vmo_client::events::dropped() {
        if d.component == vmo_client::events::AGENT_COMPONENT && d.host == node {
            out.add(
                vmo_client::events::DROPPED_METRIC,
                "counter",
                vmo_client::events::DROPPED_METRIC_HELP,
                &[
                    ("component", &d.component),
                    ("node", node),
                    ("cause", d.cause.label()),
                ],
                d.count as f64,
            );
        }
    }
    let samples = futures_util::future::join_all(running.iter().map(|vm| async {
        let mut f = Families::default();
        vm_samples(node, vm, &mut f).await;
        f
    }))
    .await;
    for f in samples {
        for (name, (help, kind, lines)) in f.0 {
            out.0
                .entry(name)
                .or_insert((help, kind, Vec::new()))
                .2
                .extend(lines);
        }
    }
    out.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_help_type_and_escaped_labels() {
        let mut f = Families::default();
        f.add("m_total", "counter", "Help.", &[("name", "a\"b")], 2.5);
        f.add("m_total", "counter", "Help.", &[("name", "c")], 1.0);
        let text = f.render();
        assert_eq!(
            text,
            "# HELP m_total Help.\n# TYPE m_total counter\nm_total{name=\"a\\\"b\"} 2.5\nm_total{name=\"c\"} 1\n"
        );
    }

    #[tokio::test]
    async fn a_node_reports_its_own_agents_events_not_recorded() {
        use vmo_client::events::{count_dropped, DropCause, AGENT_COMPONENT};
        count_dropped(AGENT_COMPONENT, "metrics-n1", DropCause::WriteFailed);
        count_dropped(AGENT_COMPONENT, "metrics-n2", DropCause::WriteFailed);
        count_dropped("vmo-x", "metrics-n1", DropCause::QueueFull);
        let text = render("metrics-n1", &Vms::default(), 2, 1 << 30).await;
        let mine = format!("vmo_events_dropped_total{{component=\"{AGENT_COMPONENT}\",node=\"metrics-n1\",cause=\"write_failed\"}} 1");
        assert!(text.contains(&mine), "{text}");
        assert!(
            !text.contains("metrics-n2") && !text.contains("vmo-x"),
            "{text}"
        );
    }

    #[test]
    fn own_process_usage_is_readable() {
        let (cpu, rss) = process_usage(std::process::id()).expect("own /proc entry");
        assert!(cpu >= 0.0);
        assert!(rss > 0);
    }

    #[test]
    fn drive_names_come_from_user_aliases() {
        assert_eq!(
            drive_name(&serde_json::json!({"device": "ua-rootdisk"})).as_deref(),
            Some("rootdisk")
        );
        assert_eq!(drive_name(&serde_json::json!({"device": ""})), None);
    }
}
