//! Counters and stage timings shared by the table and functions of one process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Live counters: the progress display reads them while the query runs.
#[derive(Debug, Default)]
pub struct StageMetrics {
    pub listed: AtomicU64,
    pub listing_done: std::sync::atomic::AtomicBool,
    /// Images the input holds, from a count-only listing running ahead of
    /// the work (0 until it finishes); only the progress display uses it.
    pub expected: AtomicU64,
    pub featurized: AtomicU64,
    pub failed: AtomicU64,
    /// Time of a listing on its own (the pipeline's count-ahead listing).
    pub list_ns: AtomicU64,
    pub read_ns: AtomicU64,
    pub read_bytes: AtomicU64,
    pub decode_ns: AtomicU64,
    pub infer_ns: AtomicU64,
    pub batches: AtomicU64,
}

/// A snapshot of [`StageMetrics`] for reports (`run.json`, the benchmark).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct StageTimes {
    pub listed: u64,
    pub featurized: u64,
    pub failed: u64,
    pub batches: u64,
    pub read_bytes: u64,
    /// Seconds spent in each stage, summed over all tasks (so they can exceed
    /// wall time when stages run in parallel).
    pub list_s: f64,
    pub read_s: f64,
    pub decode_resize_s: f64,
    pub inference_s: f64,
}

impl StageMetrics {
    pub fn add(counter: &AtomicU64, elapsed: Duration) {
        counter.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StageTimes {
        let secs = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64 / 1e9;
        StageTimes {
            listed: self.listed.load(Ordering::Relaxed),
            featurized: self.featurized.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            list_s: secs(&self.list_ns),
            read_s: secs(&self.read_ns),
            decode_resize_s: secs(&self.decode_ns),
            inference_s: secs(&self.infer_ns),
        }
    }
}
