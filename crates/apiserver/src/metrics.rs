//! Control-plane metrics in Prometheus' text format at `/metrics`: requests by verb, resource and
//! code, request latency histograms, the store's revision, and KubeVirt's `kubevirt_vmi_phase_count`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Latency bucket bounds, in seconds.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// Request counters and latencies, updated by the HTTP front.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
}

impl Metrics {
    /// Records one finished request (watches count when their stream starts).
    pub fn observe(&self, verb: &str, resource: &str, code: u16, elapsed: Duration) {
        if let Ok(mut r) = self.requests.lock() {
            *r.entry((verb.to_string(), resource.to_string(), code))
                .or_default() += 1;
        }
        if let Ok(mut l) = self.latency.lock() {
            let h = l.entry(verb.to_string()).or_insert_with(|| Histogram {
                counts: vec![0; BUCKETS.len()],
                ..Default::default()
            });
            let secs = elapsed.as_secs_f64();
            for (i, bound) in BUCKETS.iter().enumerate() {
                if secs <= *bound {
                    h.counts[i] += 1;
                }
            }
            h.sum += secs;
            h.count += 1;
        }
    }

    /// Renders the request metrics, then `extra` lines (already formatted).
    pub fn render(&self, revision: u64, vmi_phases: &BTreeMap<(String, String), u64>) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP vmo_apiserver_requests_total API requests by verb, resource and HTTP code.\n",
        );
        out.push_str("# TYPE vmo_apiserver_requests_total counter\n");
        if let Ok(r) = self.requests.lock() {
            for ((verb, resource, code), n) in r.iter() {
                let _ = writeln!(out, "vmo_apiserver_requests_total{{verb=\"{verb}\",resource=\"{resource}\",code=\"{code}\"}} {n}");
            }
        }
        out.push_str("# HELP vmo_apiserver_request_duration_seconds Time to answer a request (to the first byte for watches).\n");
        out.push_str("# TYPE vmo_apiserver_request_duration_seconds histogram\n");
        if let Ok(l) = self.latency.lock() {
            for (verb, h) in l.iter() {
                for (bound, n) in BUCKETS.iter().zip(&h.counts) {
                    let _ = writeln!(out, "vmo_apiserver_request_duration_seconds_bucket{{verb=\"{verb}\",le=\"{bound}\"}} {n}");
                }
                let _ = writeln!(out, "vmo_apiserver_request_duration_seconds_bucket{{verb=\"{verb}\",le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(
                    out,
                    "vmo_apiserver_request_duration_seconds_sum{{verb=\"{verb}\"}} {}",
                    h.sum
                );
                let _ = writeln!(
                    out,
                    "vmo_apiserver_request_duration_seconds_count{{verb=\"{verb}\"}} {}",
                    h.count
                );
            }
        }
        out.push_str("# HELP vmo_store_revision The store's latest revision.\n# TYPE vmo_store_revision gauge\n");
        let _ = writeln!(out, "vmo_store_revision {revision}");
        out.push_str("# HELP kubevirt_vmi_phase_count VirtualMachineInstances by phase and node.\n# TYPE kubevirt_vmi_phase_count gauge\n");
        for ((phase, node), n) in vmi_phases {
            let _ = writeln!(
                out,
                "kubevirt_vmi_phase_count{{phase=\"{}\",node=\"{node}\"}} {n}",
                phase.to_lowercase()
            );
        }
        // Events the controllers in this process did not record (agents report their own).
        use vmo_client::events::{DROPPED_METRIC as NAME, DROPPED_METRIC_HELP as HELP};
        let _ = writeln!(out, "# HELP {NAME} {HELP}\n# TYPE {NAME} counter");
        for d in vmo_client::events::dropped() {
            if d.component != vmo_client::events::AGENT_COMPONENT {
                let _ = writeln!(
                    out,
                    "{NAME}{{component=\"{}\",cause=\"{}\"}} {}",
                    d.component,
                    d.cause.label(),
                    d.count
                );
            }
        }
        out
    }
}

/// The verb Kubernetes would log for a request.
pub fn verb(method: &http::Method, named: bool, watch: bool) -> &'static str {
    match (method.as_str(), named, watch) {
        ("GET", _, true) => "WATCH",
        ("GET", false, _) => "LIST",
        ("GET", true, _) => "GET",
        ("POST", _, _) => "CREATE",
        ("PUT", _, _) => "UPDATE",
        ("PATCH", _, _) => "PATCH",
        ("DELETE", false, _) => "DELETECOLLECTION",
        ("DELETE", true, _) => "DELETE",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.observe("CREATE", "virtualmachines", 201, Duration::from_millis(3));
        m.observe("CREATE", "virtualmachines", 201, Duration::from_millis(30));
        let mut phases = BTreeMap::new();
        phases.insert(("Running".to_string(), "n1".to_string()), 2);
        let text = m.render(42, &phases);
        assert!(text.contains("vmo_apiserver_requests_total{verb=\"CREATE\",resource=\"virtualmachines\",code=\"201\"} 2"));
        assert!(text.contains(
            "vmo_apiserver_request_duration_seconds_bucket{verb=\"CREATE\",le=\"0.005\"} 1"
        ));
        assert!(text.contains("vmo_apiserver_request_duration_seconds_count{verb=\"CREATE\"} 2"));
        assert!(text.contains("vmo_store_revision 42"));
        assert!(text.contains("kubevirt_vmi_phase_count{phase=\"running\",node=\"n1\"} 2"));
        assert!(text.contains("# TYPE vmo_events_dropped_total counter"));
    }

    #[test]
    fn counts_the_controllers_events_not_recorded_but_not_the_agents() {
        use vmo_client::events::{count_dropped, DropCause, AGENT_COMPONENT};
        count_dropped("vmo-test-controller", "", DropCause::WriteFailed);
        count_dropped(AGENT_COMPONENT, "n1", DropCause::QueueFull);
        let text = Metrics::default().render(1, &BTreeMap::new());
        assert!(text.contains("vmo_events_dropped_total{component=\"vmo-test-controller\",cause=\"write_failed\"} 1"), "{text}");
        assert!(
            !text.contains(&format!("component=\"{AGENT_COMPONENT}\"")),
            "{text}"
        );
    }
}
