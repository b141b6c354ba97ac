//! Counters and stage timings shared by the table and functions of one process.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use verger_output::StageTimes;

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
    /// Listed images passed over because an interrupted run already did them.
    pub skipped: AtomicU64,
    /// Time of a listing on its own (the pipeline's count-ahead listing).
    pub list_ns: AtomicU64,
    pub read_ns: AtomicU64,
    pub read_bytes: AtomicU64,
    pub decode_ns: AtomicU64,
    pub infer_ns: AtomicU64,
    pub batches: AtomicU64,
    /// The slice a cluster task works on, set by its sliced source as soon
    /// as it starts (so even a slice with no images reports which it was).
    pub slice: std::sync::OnceLock<u32>,
}

tokio::task_local! {
    /// The counters of the task being run, when its driver set them (a
    /// cluster task reports its own share; the process counters mix tasks).
    static TASK_METRICS: Arc<StageMetrics>;
}

/// Runs `work` with `metrics` as its task's counters: `featurize` calls made
/// while polling it are counted there as well as in the process counters.
pub async fn with_task_metrics<F: Future>(metrics: Arc<StageMetrics>, work: F) -> F::Output {
    TASK_METRICS.scope(metrics, work).await
}

/// Applies `update` to the process counters and, inside
/// [`with_task_metrics`], to the task's.
pub(crate) fn record(process: &StageMetrics, update: impl Fn(&StageMetrics)) {
    update(process);
    record_in_task(update);
}

/// Applies `update` to the task's counters only (outside
/// [`with_task_metrics`] it does nothing).
pub fn record_in_task(update: impl Fn(&StageMetrics)) {
    let _outside_a_task = TASK_METRICS.try_with(|task| update(task));
}

impl StageMetrics {
    pub fn add(counter: &AtomicU64, elapsed: Duration) {
        counter.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The counters as a report of stage times (`run.json`, the benchmark).
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
