//! `run.json`: what a run did, for people and for the next tools.

use serde::Serialize;
use verger_datafusion::StageTimes;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Files under the input whose name matched the glob.
    pub listed: u64,
    /// Rows in `features/`.
    pub features: u64,
    /// Rows in `errors/`.
    pub errors: u64,
    /// Listed images an interrupted run had already done (`--resume`).
    pub resumed: u64,
    /// Listed images whose rows were reused from the earlier run because the
    /// file did not change (`--incremental`).
    pub unchanged: u64,
    /// Rows of the earlier run dropped because their file is gone (`--incremental`).
    pub removed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Parameters {
    pub input: String,
    pub output: String,
    pub glob: String,
    pub k: usize,
    pub center: bool,
    pub batch_size: usize,
    pub partitions: usize,
    pub threads: usize,
    pub max_pixels: u64,
    pub max_errors: Option<u64>,
}

impl Parameters {
    /// The run's settings as `run.json` records them (roots as users see them).
    pub(crate) fn of(config: &crate::RunConfig, input: &str, output: &str) -> Self {
        Parameters {
            input: input.to_string(),
            output: output.to_string(),
            glob: config.glob.clone(),
            k: config.k,
            center: config.center,
            batch_size: config.batch_size,
            partitions: config.partitions,
            threads: config.threads,
            max_pixels: config.max_pixels,
            max_errors: config.max_errors,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub path: String,
    pub sha256: String,
    pub engine: String,
}

/// Wall-clock seconds of each phase, plus the per-stage sums from the engine.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub model_load_s: f64,
    pub featurize_s: f64,
    pub pca_fit_s: f64,
    pub project_write_s: f64,
    pub total_s: f64,
    pub stages: StageTimes,
}

#[derive(Debug, Clone, Serialize)]
pub struct Versions {
    pub verger: &'static str,
    pub datafusion: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub counts: Counts,
    pub parameters: Parameters,
    pub model: ModelInfo,
    pub timings: Timings,
    /// Fraction of the total variance each PCA component explains.
    pub explained_variance: Vec<f64>,
    /// Failures per reason kind (`stage: reason`), most frequent first, at most 20.
    pub error_summary: Vec<(String, u64)>,
    pub versions: Versions,
    /// Set when the run went through a Ballista cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster_run::ClusterReport>,
    pub started_at: String,
    pub finished_at: String,
}

impl RunReport {
    /// The line printed at the end of a run.
    pub fn summary_line(&self) -> String {
        let rate = if self.timings.total_s > 0.0 {
            self.counts.listed as f64 / self.timings.total_s
        } else {
            0.0
        };
        let c = &self.counts;
        let resumed = match (c.resumed, c.unchanged, c.removed) {
            (0, 0, 0) => String::new(),
            (n, 0, 0) => format!(" ({n} already done before --resume, skipped)"),
            (_, unchanged, removed) => format!(
                " ({} computed, {unchanged} unchanged and reused, {removed} removed)",
                c.listed - unchanged - c.resumed
            ),
        };
        format!(
            "verger: {} images listed, {} featurized, {} errors{resumed} in {:.1}s ({:.1} images/s) -> {}",
            self.counts.listed,
            self.counts.features,
            self.counts.errors,
            self.timings.total_s,
            rate,
            self.parameters.output
        )
    }
}
