//! What a run is asked to do: [`RunConfig`], filled by the CLI from flags
//! and environment, checked once before anything is read or written.

use std::path::PathBuf;

use anyhow::{Result, bail};
use verger_image::PreprocessConfig;
use verger_image::views::ViewSet;
use verger_model::{EngineChoice, EngineConfig, Precision};

use crate::progress::ProgressMode;

/// How a run treats what is already at `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// The output must be empty (or absent).
    #[default]
    Fresh,
    /// Replace an earlier verger result (`--overwrite`).
    Overwrite,
    /// Finish an interrupted run (`--resume`).
    Resume,
    /// Update a complete run after the input changed (`--incremental`).
    Incremental,
}

/// Where phase work runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Placement {
    /// In this process.
    #[default]
    Embedded,
    /// On a Ballista scheduler at `df://host:port`.
    Cluster(String),
}

/// Everything a run needs to know.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub input: String,
    pub output: String,
    pub glob: String,
    pub k: usize,
    pub center: bool,
    pub model: Option<PathBuf>,
    /// Which weights: the shared fp32 model or the int8 one. On a cluster the
    /// executors must hold the same file (checked by sha256).
    pub precision: Precision,
    /// `None`: ONNX Runtime when found, else tract. Executors choose their
    /// own, so it is refused with a cluster.
    pub engine: Option<EngineChoice>,
    pub ort_library: Option<PathBuf>,
    pub batch_size: usize,
    /// Inference threads in all (`None`: every core), one model session per
    /// partition sharing them.
    pub threads: Option<usize>,
    /// Parallel tasks (embedded) or slices (cluster).
    pub partitions: usize,
    pub start: Start,
    pub max_errors: Option<u64>,
    pub max_pixels: u64,
    pub progress: ProgressMode,
    pub placement: Placement,
    /// Featurized images per checkpoint file and task: what a kill can lose.
    pub checkpoint_every: usize,
    /// `--views`: also featurize these views of every photo, as the marked
    /// rows of `views/` (training rows for `verger train`).
    pub views: Option<ViewSet>,
}

/// Enough slices for a few executors to share the work evenly.
pub const DEFAULT_CLUSTER_SLICES: usize = 16;

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

impl RunConfig {
    /// Defaults for one machine: every core, batches of 32.
    pub fn new(input: impl Into<String>, output: impl Into<String>) -> Self {
        RunConfig {
            input: input.into(),
            output: output.into(),
            glob: "*.jpg".into(),
            k: 5,
            center: false,
            model: None,
            precision: Precision::Fp32,
            engine: None,
            ort_library: None,
            batch_size: 32,
            threads: None,
            partitions: cores(),
            start: Start::Fresh,
            max_errors: None,
            max_pixels: PreprocessConfig::default().max_pixels,
            progress: ProgressMode::Auto,
            placement: Placement::Embedded,
            checkpoint_every: 256,
            views: None,
        }
    }

    /// Refuses settings that cannot work, before anything is touched.
    ///
    /// On a cluster every flag either travels to the executors in the plan
    /// (glob, batch size, pixel limit, checkpoints, error budget, the model's
    /// sha256) or is refused here by name: the engine, its library and its
    /// threads belong to each `verger executor` process.
    pub fn validate(&self) -> Result<()> {
        if self.k == 0 {
            bail!("--k must be at least 1");
        }
        if self.batch_size == 0 || self.partitions == 0 || self.checkpoint_every == 0 {
            bail!("--batch-size, --partitions and --checkpoint-every must be at least 1");
        }
        if self.views.is_some() && self.start == Start::Incremental {
            // The carried-over rows of the earlier run have no views.
            bail!(
                "--views cannot go with --incremental: run the whole input again with --overwrite"
            );
        }
        if let Placement::Cluster(_) = self.placement {
            let executor_flags = [
                ("--engine", self.engine.is_some()),
                ("--ort-lib", self.ort_library.is_some()),
                ("--threads", self.threads.is_some()),
            ];
            let given: Vec<&str> = executor_flags
                .iter()
                .filter(|(_, set)| *set)
                .map(|(flag, _)| *flag)
                .collect();
            if !given.is_empty() {
                bail!(
                    "{} cannot go with --cluster: each executor uses its own (set them on \
                     `verger executor`)",
                    given.join(", ")
                );
            }
        }
        Ok(())
    }

    /// The engine settings of an embedded run.
    pub(crate) fn engine_config(&self) -> EngineConfig {
        let threads = self.threads.unwrap_or_else(cores);
        EngineConfig {
            choice: self.engine.unwrap_or_default(),
            threads,
            // Each partition infers its own batches.
            sessions: verger_model::sessions_for(threads, self.partitions),
            ort_library: self.ort_library.clone(),
            // `featurize` infers in chunks of at most PREFERRED_BATCH
            // tensors; tract pads every call to its compiled batch.
            batch_size: self.batch_size.min(verger_model::PREFERRED_BATCH),
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.placement, Placement::Cluster(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executor_settings_are_refused_by_name_with_a_cluster() {
        let mut config = RunConfig::new("in", "out");
        config.placement = Placement::Cluster("df://h:50050".into());
        config.validate().unwrap();
        config.threads = Some(4);
        config.engine = Some(EngineChoice::Tract);
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("--engine, --threads cannot go with --cluster"),
            "{err}"
        );
        config.placement = Placement::Embedded;
        config.validate().unwrap();
        assert_eq!(config.engine_config().threads, 4);
    }

    #[test]
    fn nonsense_sizes_are_refused() {
        let mut config = RunConfig::new("in", "out");
        config.k = 0;
        assert!(config.validate().unwrap_err().to_string().contains("--k"));
        let mut config = RunConfig::new("in", "out");
        config.checkpoint_every = 0;
        assert!(config.validate().is_err());
        let mut config = RunConfig::new("in", "out");
        config.views = Some(ViewSet::Training);
        config.validate().unwrap();
        config.start = Start::Incremental;
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("--views cannot go with --incremental"),
            "{err}"
        );
    }

    /// tract pads every call to its compiled batch, and `featurize` calls
    /// with at most PREFERRED_BATCH tensors: compiling for 32 would make
    /// tract do many times the work.
    #[test]
    fn the_engine_is_compiled_for_the_calls_featurize_makes() {
        let mut config = RunConfig::new("in", "out");
        config.batch_size = 32;
        assert_eq!(
            config.engine_config().batch_size,
            verger_model::PREFERRED_BATCH
        );
        config.batch_size = 1;
        assert_eq!(config.engine_config().batch_size, 1);
    }

    /// One session per partition, the threads shared among them; a single
    /// partition keeps every thread in one session.
    #[test]
    fn each_partition_gets_its_own_session() {
        let mut config = RunConfig::new("in", "out");
        config.threads = Some(4);
        config.partitions = 2;
        let engine = config.engine_config();
        assert_eq!((engine.sessions, engine.threads_per_session()), (2, 2));
        config.partitions = 1;
        let engine = config.engine_config();
        assert_eq!((engine.sessions, engine.threads_per_session()), (1, 4));
        config.partitions = 16;
        let engine = config.engine_config();
        assert_eq!((engine.sessions, engine.threads_per_session()), (4, 1));
    }
}
