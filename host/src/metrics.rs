//! Prometheus metrics (`GET /metrics`, text format 0.0.4).
//!
//! Call counters and duration histograms are kept here as calls finish; pool sizes and
//! instance churn are read from the engine's pools when scraped.

use dashmap::DashMap;
use newt_runtime::{EgressStats, PoolStats, StartKind};
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the duration buckets, in seconds.
const BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS) {
            if secs <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

/// What the server counts.
#[derive(Default)]
pub struct Metrics {
    calls: DashMap<(String, &'static str, &'static str), AtomicU64>,
    durations: [Histogram; 3],
}

fn start_index(start: StartKind) -> usize {
    match start {
        StartKind::Cold => 0,
        StartKind::Prewarmed => 1,
        StartKind::Warm => 2,
    }
}

const STARTS: [StartKind; 3] = [StartKind::Cold, StartKind::Prewarmed, StartKind::Warm];

impl Metrics {
    /// Counts a finished call; `start` is `None` when no instance was reached.
    pub fn record_call(
        &self,
        function: &str,
        status: &'static str,
        start: Option<StartKind>,
        took: Duration,
    ) {
        let start_label = start.map_or("none", StartKind::as_str);
        self.calls
            .entry((function.to_string(), status, start_label))
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
        if let Some(start) = start {
            self.durations[start_index(start)].observe(took);
        }
    }

    /// The text exposition, with the pools' current state.
    pub fn render(&self, pools: &[PoolStats]) -> String {
        let mut out = String::new();
        family(
            &mut out,
            "newt_calls_total",
            "counter",
            "Calls finished, by function, status and start kind.",
        );
        let mut calls: Vec<_> = self
            .calls
            .iter()
            .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
            .collect();
        calls.sort();
        for ((function, status, start), n) in calls {
            let _ = writeln!(
                out,
                "newt_calls_total{{function=\"{function}\",status=\"{status}\",start=\"{start}\"}} {n}"
            );
        }

        family(
            &mut out,
            "newt_call_duration_seconds",
            "histogram",
            "Call duration (queue + init + exec), by start kind.",
        );
        for start in STARTS {
            let h = &self.durations[start_index(start)];
            let label = start.as_str();
            for (bucket, bound) in h.buckets.iter().zip(BUCKETS) {
                let _ = writeln!(
                    out,
                    "newt_call_duration_seconds_bucket{{start=\"{label}\",le=\"{bound}\"}} {}",
                    bucket.load(Ordering::Relaxed)
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "newt_call_duration_seconds_bucket{{start=\"{label}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "newt_call_duration_seconds_sum{{start=\"{label}\"}} {}",
                h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "newt_call_duration_seconds_count{{start=\"{label}\"}} {count}"
            );
        }

        family(
            &mut out,
            "newt_pool_instances",
            "gauge",
            "Instances in each pool, by state.",
        );
        for pool in pools {
            for (state, n) in [
                ("idle", pool.idle),
                ("busy", pool.busy),
                ("starting", pool.starting),
            ] {
                let _ = writeln!(
                    out,
                    "newt_pool_instances{{function=\"{}\",runtime=\"{}\",state=\"{state}\"}} {n}",
                    pool.function, pool.runtime
                );
            }
        }
        family(
            &mut out,
            "newt_pool_waiting",
            "gauge",
            "Calls waiting for an instance.",
        );
        for pool in pools {
            let _ = writeln!(
                out,
                "newt_pool_waiting{{function=\"{}\"}} {}",
                pool.function, pool.waiting
            );
        }
        family(
            &mut out,
            "newt_instances_created_total",
            "counter",
            "Instances created, by function.",
        );
        for pool in pools {
            let _ = writeln!(
                out,
                "newt_instances_created_total{{function=\"{}\"}} {}",
                pool.function, pool.created
            );
        }
        family(
            &mut out,
            "newt_instances_destroyed_total",
            "counter",
            "Instances destroyed, by function and reason.",
        );
        for pool in pools {
            for (reason, n) in &pool.destroyed {
                let _ = writeln!(
                    out,
                    "newt_instances_destroyed_total{{function=\"{}\",reason=\"{reason}\"}} {n}",
                    pool.function
                );
            }
        }
        out
    }
}

/// Appends the store's figures: call records that could not be written (a full disk).
pub fn render_store(out: &mut String, records_lost: u64) {
    family(
        out,
        "newt_call_records_lost_total",
        "counter",
        "Call records not written because their commit failed (e.g. a full disk); the \
         calls ran and answered.",
    );
    let _ = writeln!(out, "newt_call_records_lost_total {records_lost}");
}

/// Appends what the egress proxies counted, per backend: connections to allowed
/// destinations, requests refused (not listed, a name resolving to a non-public
/// address, malformed), and allowed destinations that could not be reached.
pub fn render_egress(out: &mut String, backends: &[(&str, Arc<EgressStats>)]) {
    type Counter = fn(&EgressStats) -> &AtomicU64;
    let counters: [(&str, &str, Counter); 3] = [
        (
            "newt_egress_allowed_total",
            "Outbound connections a function's egress proxy made to an allowed destination.",
            |s| &s.allowed,
        ),
        (
            "newt_egress_denied_total",
            "Outbound requests a function's egress proxy refused.",
            |s| &s.denied,
        ),
        (
            "newt_egress_failed_total",
            "Allowed outbound destinations that could not be reached.",
            |s| &s.failed,
        ),
    ];
    for (name, help, counter) in counters {
        family(out, name, "counter", help);
        for (backend, stats) in backends {
            let _ = writeln!(
                out,
                "{name}{{backend=\"{backend}\"}} {}",
                counter(stats).load(Ordering::Relaxed)
            );
        }
    }
}

/// Writes the `# HELP` and `# TYPE` lines that open a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_in_text_format() {
        let m = Metrics::default();
        m.record_call(
            "dice",
            "done",
            Some(StartKind::Warm),
            Duration::from_micros(300),
        );
        m.record_call(
            "dice",
            "done",
            Some(StartKind::Warm),
            Duration::from_millis(20),
        );
        m.record_call(
            "dice",
            "failed",
            Some(StartKind::Cold),
            Duration::from_millis(2),
        );
        let text = m.render(&[]);
        assert!(
            text.contains(r#"newt_calls_total{function="dice",status="done",start="warm"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"newt_calls_total{function="dice",status="failed",start="cold"} 1"#)
        );
        assert!(text.contains(r#"newt_call_duration_seconds_bucket{start="warm",le="0.0005"} 1"#));
        assert!(text.contains(r#"newt_call_duration_seconds_bucket{start="warm",le="0.025"} 2"#));
        assert!(text.contains(r#"newt_call_duration_seconds_count{start="warm"} 2"#));
        assert!(text.contains(r#"newt_call_duration_seconds_count{start="prewarmed"} 0"#));
    }

    #[test]
    fn egress_counters_render_per_backend() {
        let stats = Arc::new(EgressStats::default());
        stats.allowed.store(3, Ordering::Relaxed);
        stats.denied.store(2, Ordering::Relaxed);
        let mut text = String::new();
        render_egress(&mut text, &[("docker", stats)]);
        assert!(
            text.contains("# TYPE newt_egress_denied_total counter\n"),
            "{text}"
        );
        assert!(text.contains("newt_egress_allowed_total{backend=\"docker\"} 3\n"));
        assert!(text.contains("newt_egress_denied_total{backend=\"docker\"} 2\n"));
        assert!(text.contains("newt_egress_failed_total{backend=\"docker\"} 0\n"));
    }
}
