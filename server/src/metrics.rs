//! Counters and latency histograms, rendered in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BUCKETS_S: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS_S.len()],
    count: u64,
    sum_s: f64,
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub shards_repaired: AtomicU64,
    pub shards_moved: AtomicU64,
    pub unrepairable: AtomicU64,
    pub degraded_reads: AtomicU64,
    pub gc_collected: AtomicU64,
    pub scrub_shards_checked: AtomicU64,
    pub scrub_bytes: AtomicU64,
    pub scrub_corrupt: AtomicU64,
    pub scrub_passes: AtomicU64,
    pub gc_bytes_freed: AtomicU64,
    pub h3_requests: AtomicU64,
    pub h3_early_requests: AtomicU64,
    pub h3_early_deferred: AtomicU64,
    pub connections_refused: AtomicU64,
    pub connections_timed_out: AtomicU64,
    pub tls_handshakes_failed: AtomicU64,
    pub bodies_timed_out: AtomicU64,
    pub peer_connections_replaced: AtomicU64,
}

impl Metrics {
    pub fn observe(&self, op: &'static str, status: u16, elapsed: Duration) {
        *self
            .requests
            .lock()
            .expect("metrics")
            .entry((op, status))
            .or_default() += 1;
        let mut lat = self.latency.lock().expect("metrics");
        let h = lat.entry(op).or_default();
        let s = elapsed.as_secs_f64();
        for (i, b) in LATENCY_BUCKETS_S.iter().enumerate() {
            if s <= *b {
                h.buckets[i] += 1;
            }
        }
        h.count += 1;
        h.sum_s += s;
    }

    pub fn render(&self, extra: &[(&str, &str, f64)]) -> String {
        let mut o = String::new();
        o.push_str("# HELP ostore_requests_total Client requests by operation and status.\n# TYPE ostore_requests_total counter\n");
        for ((op, st), n) in self.requests.lock().expect("metrics").iter() {
            let _ = writeln!(
                o,
                "ostore_requests_total{{op=\"{op}\",status=\"{st}\"}} {n}"
            );
        }
        o.push_str("# HELP ostore_request_seconds Request latency by operation.\n# TYPE ostore_request_seconds histogram\n");
        for (op, h) in self.latency.lock().expect("metrics").iter() {
            for (i, b) in LATENCY_BUCKETS_S.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "ostore_request_seconds_bucket{{op=\"{op}\",le=\"{b}\"}} {}",
                    h.buckets[i]
                );
            }
            let _ = writeln!(
                o,
                "ostore_request_seconds_bucket{{op=\"{op}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(o, "ostore_request_seconds_sum{{op=\"{op}\"}} {}", h.sum_s);
            let _ = writeln!(o, "ostore_request_seconds_count{{op=\"{op}\"}} {}", h.count);
        }
        let counters = [
            (
                "ostore_bytes_in_total",
                "Object bytes received.",
                &self.bytes_in,
            ),
            (
                "ostore_bytes_out_total",
                "Object bytes sent.",
                &self.bytes_out,
            ),
            (
                "ostore_shards_repaired_total",
                "Shards rebuilt by repair.",
                &self.shards_repaired,
            ),
            (
                "ostore_shards_moved_total",
                "Shards copied to another drive (drain, rebalance, spreading out).",
                &self.shards_moved,
            ),
            (
                "ostore_unrepairable_total",
                "Contents found with fewer than K good shards.",
                &self.unrepairable,
            ),
            (
                "ostore_degraded_reads_total",
                "Reads that needed reconstruction.",
                &self.degraded_reads,
            ),
            (
                "ostore_scrub_shards_checked_total",
                "Shards read and verified end to end by scrub.",
                &self.scrub_shards_checked,
            ),
            (
                "ostore_scrub_bytes_total",
                "Shard bytes read by the continuous scrub.",
                &self.scrub_bytes,
            ),
            (
                "ostore_scrub_corrupt_total",
                "Shards the continuous scrub found missing or corrupt (each queued for repair).",
                &self.scrub_corrupt,
            ),
            (
                "ostore_scrub_passes_total",
                "Full passes of the continuous scrub over a drive.",
                &self.scrub_passes,
            ),
            (
                "ostore_http3_requests_total",
                "Requests served over HTTP/3.",
                &self.h3_requests,
            ),
            (
                "ostore_http3_early_requests_total",
                "HTTP/3 requests that arrived in 0-RTT (before the handshake completed).",
                &self.h3_early_requests,
            ),
            (
                "ostore_http3_early_deferred_total",
                "0-RTT requests other than GET and HEAD, held until the handshake completed.",
                &self.h3_early_deferred,
            ),
            (
                "ostore_panics_total",
                "Requests, connections and tasks that panicked (each failed alone; the node served on).",
                &crate::guard::PANICS,
            ),
            (
                "ostore_connections_refused_total",
                "HTTP/1.1 connections refused (503) because their executor held its most.",
                &self.connections_refused,
            ),
            (
                "ostore_connections_timed_out_total",
                "HTTP/1.1 connections closed for sending headers too slowly or for idling.",
                &self.connections_timed_out,
            ),
            (
                "ostore_tls_handshakes_failed_total",
                "TLS connections closed because their handshake failed (no or an untrusted certificate, a revoked one, no common protocol).",
                &self.tls_handshakes_failed,
            ),
            (
                "ostore_request_bodies_timed_out_total",
                "Requests failed (408) because their body stopped arriving.",
                &self.bodies_timed_out,
            ),
            (
                "ostore_peer_connections_replaced_total",
                "Connections to other nodes closed and made anew because nothing on them was answered for 2 s while an operation was past its deadline.",
                &self.peer_connections_replaced,
            ),
            (
                "ostore_gc_contents_total",
                "Unreferenced contents removed by garbage collection.",
                &self.gc_collected,
            ),
            (
                "ostore_gc_bytes_freed_total",
                "Shard-file bytes deleted by garbage collection.",
                &self.gc_bytes_freed,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        for (name, help, v) in extra {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        o
    }
}
