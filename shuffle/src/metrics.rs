//! Process-wide shuffle counters, rendered as Prometheus text.
//!
//! Per-operator figures live in each plan's `MetricsSet` (shown by
//! `EXPLAIN ANALYZE`); these totals cover every writer and reader of the
//! process, for `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Counters and gauges of the shuffle tier in this process.
#[derive(Debug)]
pub struct ShuffleMetrics {
    /// Batches received by writers.
    pub batches_in: AtomicU64,
    /// Encoded bytes written (blocks).
    pub bytes_written: AtomicU64,
    /// Blocks written.
    pub blocks_written: AtomicU64,
    /// Objects created: data objects and indexes of finished attempts.
    pub objects_written: AtomicU64,
    /// Encoded bytes read by readers.
    pub bytes_read: AtomicU64,
    /// Batches produced by readers.
    pub batches_out: AtomicU64,
    /// Byte-range requests made by readers.
    pub range_reads: AtomicU64,
    /// Bytes buffered by writers, waiting to become blocks (gauge).
    pub buffered_bytes: AtomicU64,
    /// Writers running now (gauge).
    pub active_writers: AtomicU64,
    /// Reader streams open now (gauge).
    pub active_readers: AtomicU64,
    /// Store requests timed (range reads, index and data finishes).
    pub store_requests: AtomicU64,
    /// Their total latency, in microseconds.
    pub store_latency_micros: AtomicU64,
    /// Attempts written to the store directly because their shuffle worker
    /// could not be reached.
    pub worker_fallbacks: AtomicU64,
    /// Batches this process's live service sent to other processes.
    pub live_batches_served: AtomicU64,
    /// Rows it sent.
    pub live_rows_served: AtomicU64,
    /// Live channels it serves now (gauge).
    pub live_channels_open: AtomicU64,
}

static METRICS: ShuffleMetrics = ShuffleMetrics {
    batches_in: AtomicU64::new(0),
    bytes_written: AtomicU64::new(0),
    blocks_written: AtomicU64::new(0),
    objects_written: AtomicU64::new(0),
    bytes_read: AtomicU64::new(0),
    batches_out: AtomicU64::new(0),
    range_reads: AtomicU64::new(0),
    buffered_bytes: AtomicU64::new(0),
    active_writers: AtomicU64::new(0),
    active_readers: AtomicU64::new(0),
    store_requests: AtomicU64::new(0),
    store_latency_micros: AtomicU64::new(0),
    worker_fallbacks: AtomicU64::new(0),
    live_batches_served: AtomicU64::new(0),
    live_rows_served: AtomicU64::new(0),
    live_channels_open: AtomicU64::new(0),
};

/// The process's shuffle metrics.
pub fn shuffle_metrics() -> &'static ShuffleMetrics {
    &METRICS
}

impl ShuffleMetrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    /// Records one store request that started at `start`.
    pub(crate) fn store_request(&self, start: Instant) {
        Self::add(&self.store_requests, 1);
        Self::add(
            &self.store_latency_micros,
            start.elapsed().as_micros() as u64,
        );
    }

    /// Appends the metrics in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut metric = |name: &str, help: &str, kind: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        };
        let rows: [(&str, &str, &str, &AtomicU64); 15] = [
            (
                "sluice_shuffle_batches_in_total",
                "Batches received by shuffle writers.",
                "counter",
                &self.batches_in,
            ),
            (
                "sluice_shuffle_bytes_written_total",
                "Encoded bytes written to the shuffle store.",
                "counter",
                &self.bytes_written,
            ),
            (
                "sluice_shuffle_blocks_written_total",
                "Blocks written to the shuffle store.",
                "counter",
                &self.blocks_written,
            ),
            (
                "sluice_shuffle_objects_written_total",
                "Objects created in the shuffle store (data and indexes).",
                "counter",
                &self.objects_written,
            ),
            (
                "sluice_shuffle_bytes_read_total",
                "Encoded bytes read from the shuffle store.",
                "counter",
                &self.bytes_read,
            ),
            (
                "sluice_shuffle_batches_out_total",
                "Batches produced by shuffle readers.",
                "counter",
                &self.batches_out,
            ),
            (
                "sluice_shuffle_range_reads_total",
                "Byte-range reads from the shuffle store.",
                "counter",
                &self.range_reads,
            ),
            (
                "sluice_shuffle_buffered_bytes",
                "Bytes buffered by shuffle writers now.",
                "gauge",
                &self.buffered_bytes,
            ),
            (
                "sluice_shuffle_active_writers",
                "Shuffle writers running now.",
                "gauge",
                &self.active_writers,
            ),
            (
                "sluice_shuffle_active_readers",
                "Shuffle reader streams open now.",
                "gauge",
                &self.active_readers,
            ),
            (
                "sluice_shuffle_store_requests_total",
                "Timed shuffle store requests.",
                "counter",
                &self.store_requests,
            ),
            (
                "sluice_shuffle_worker_fallbacks_total",
                "Attempts written to the store directly: their shuffle worker was unreachable.",
                "counter",
                &self.worker_fallbacks,
            ),
            (
                "sluice_live_batches_served_total",
                "Batches of streaming jobs' live channels sent to other processes.",
                "counter",
                &self.live_batches_served,
            ),
            (
                "sluice_live_rows_served_total",
                "Rows of live channels sent to other processes.",
                "counter",
                &self.live_rows_served,
            ),
            (
                "sluice_live_channels_open",
                "Live channels read by other processes now.",
                "gauge",
                &self.live_channels_open,
            ),
        ];
        for (name, help, kind, v) in rows {
            metric(name, help, kind, get(v).to_string());
        }
        metric(
            "sluice_shuffle_store_latency_seconds_total",
            "Total latency of the timed shuffle store requests.",
            "counter",
            format!("{:.6}", get(&self.store_latency_micros) as f64 / 1e6),
        );
    }
}

/// Holds a gauge up while alive.
pub(crate) struct GaugeGuard(&'static AtomicU64);

impl GaugeGuard {
    pub(crate) fn new(gauge: &'static AtomicU64) -> Self {
        ShuffleMetrics::add(gauge, 1);
        Self(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        ShuffleMetrics::sub(self.0, 1);
    }
}
