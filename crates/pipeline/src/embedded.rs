//! The embedded backend: every phase runs in this process, its partitions
//! on this machine's cores, the model loaded once and shared by them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context, Result};
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::Partitioning;
use datafusion::physical_plan::execute_stream_partitioned;
use datafusion::prelude::DataFrame;
use futures::StreamExt;
use verger_datafusion::{FeaturizeContext, ImageTable, StageMetrics, phases};
use verger_model::{ModelFile, SharedModel};
use verger_output::{
    ErrorBudget, FEATURES_DIR, FeatureModel, STAGED_FEATURES_DIR, StagingManifest, StagingWriter,
    TaskSummary, features_schema,
};
use verger_pca::{PcaModel, PcaStats};
use verger_store::Location;

use crate::backend::Phase1;
use crate::config::RunConfig;
use crate::progress::{Progress, ProgressMode};
use crate::tables::{session, write_partitions};

pub(crate) struct Embedded {
    model: Arc<SharedModel>,
    metrics: Arc<StageMetrics>,
    partitions: usize,
    batch_size: usize,
    progress: ProgressMode,
    /// Seconds the model took to load.
    pub(crate) model_load_s: f64,
}

impl Embedded {
    /// Loads the model (once, for every partition of every phase).
    pub(crate) async fn start(config: &RunConfig, file: ModelFile) -> Result<Self> {
        let started = Instant::now();
        let engine = config.engine_config();
        let model = tokio::task::spawn_blocking(move || SharedModel::load(file, &engine)).await??;
        Ok(Embedded {
            model,
            metrics: Arc::new(StageMetrics::default()),
            partitions: config.partitions,
            batch_size: config.batch_size,
            progress: config.progress,
            model_load_s: started.elapsed().as_secs_f64(),
        })
    }

    pub(crate) fn model(&self) -> FeatureModel {
        FeatureModel {
            path: self.model.file().path.display().to_string(),
            sha256: self.model.file().sha256.clone(),
            engine: self.model.engine_name().to_string(),
            precision: self.model.file().precision.to_string(),
        }
    }

    /// Phase 1 over `partitions` tasks fed round-robin from one listing.
    /// Returns one summary for the process (listing is shared, so listed
    /// and skipped images are counted once for all partitions).
    pub(crate) async fn featurize(&self, phase: &Phase1<'_>) -> Result<TaskSummary> {
        let featurize = Arc::new(FeaturizeContext::new(
            self.model.clone(),
            self.metrics.clone(),
        ));
        featurize.add_location(phase.input.clone());
        let ctx = session(self.partitions, self.batch_size, phase.output)?;
        verger_datafusion::register_functions(&ctx, featurize);
        let mut table = ImageTable::new(
            phase.input.clone(),
            phase.filter.clone(),
            self.batch_size,
            self.metrics.clone(),
        );
        if !phase.done_paths.is_empty() {
            table = table.skipping(phase.done_paths.clone());
        }
        let images = ctx
            .read_table(Arc::new(table.into_table()?))?
            .repartition(Partitioning::RoundRobinBatch(self.partitions))?;
        let frame = phases::featurize(
            &ctx,
            images,
            phase.input.display_root(),
            &phase.options,
            &[],
        )?;

        let progress = Progress::start(self.progress, self.metrics.clone());
        let counter = tokio::spawn(count_images(
            phase.input.clone(),
            phase.filter.clone(),
            self.metrics.clone(),
        ));
        let staged = stage_partitions(frame, phase).await;
        counter.abort();
        progress.finish().await;
        let (rows, errors, failures) = staged?;
        let stages = self.metrics.snapshot();
        Ok(TaskSummary {
            slice: None,
            listed: stages.listed,
            skipped: self.metrics.skipped.load(Ordering::Relaxed),
            rows,
            errors,
            failures,
            stages,
            pid: std::process::id(),
            model_loads: verger_model::model_loads() as u64,
            engine: self.model.engine_name().to_string(),
            model_sha256: self.model.file().sha256.clone(),
            ..TaskSummary::default()
        })
    }

    /// Phase 2 over the staged features.
    pub(crate) async fn fit(
        &self,
        output: &Location,
        manifest: &StagingManifest,
    ) -> Result<PcaStats> {
        let ctx = session(self.partitions, self.batch_size, output)?;
        verger_datafusion::register_pca_functions(&ctx);
        let staged = read_staged_features(&ctx, output, manifest).await?;
        let batches = phases::fit(&ctx, staged)?.collect().await?;
        Ok(phases::stats_of(&batches)?)
    }

    /// Phase 3: the staged features with their projection, to `features/`.
    pub(crate) async fn project(
        &self,
        output: &Location,
        manifest: &StagingManifest,
        pca: &PcaModel,
    ) -> Result<u64> {
        let ctx = session(self.partitions, self.batch_size, output)?;
        verger_datafusion::register_pca_functions(&ctx);
        let staged = read_staged_features(&ctx, output, manifest).await?;
        let projected = phases::project(&ctx, staged, pca, &[])?;
        write_partitions(projected, output, FEATURES_DIR, features_schema()).await
    }
}

async fn read_staged_features(
    ctx: &SessionContext,
    output: &Location,
    manifest: &StagingManifest,
) -> Result<DataFrame> {
    crate::tables::read_staged(ctx, output, manifest, STAGED_FEATURES_DIR)
        .await?
        .context("no staged features to read back")
}

/// Drives one [`StagingWriter`] per partition of `frame`; the first failure
/// (a store error, or `--max-errors` exceeded) stops the others.
async fn stage_partitions(
    frame: DataFrame,
    phase: &Phase1<'_>,
) -> Result<(u64, u64, Vec<verger_output::FailureCount>)> {
    let task_ctx = Arc::new(frame.task_ctx());
    let plan = frame.create_physical_plan().await?;
    tracing::debug!(
        "featurize plan:\n{}",
        datafusion::physical_plan::displayable(plan.as_ref()).indent(true)
    );
    let streams = execute_stream_partitioned(plan, task_ctx)?;
    let budget = Arc::new(ErrorBudget::new(
        phase.staging.max_errors,
        phase.staging.errors_before,
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for (partition, mut stream) in streams.into_iter().enumerate() {
        let task = format!("part-{partition:03}-{}", phase.staging.attempt);
        let mut writer = StagingWriter::new(phase.output, &task, phase.staging.checkpoint_every);
        let budget = budget.clone();
        tasks.spawn(async move {
            while let Some(batch) = stream.next().await {
                writer.write(&batch?, &budget).await?;
            }
            anyhow::Ok(writer.finish().await?)
        });
    }
    let (mut rows, mut errors, mut failures) = (0, 0, Vec::new());
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            Ok((r, e, f)) => {
                rows += r;
                errors += e;
                failures.extend(f.into_iter().map(|f| (f.kind, f.count)));
            }
            Err(e) => {
                tasks.abort_all();
                return Err(e);
            }
        }
    }
    Ok((rows, errors, verger_output::FailureCount::tally(failures)))
}

/// Counts the input ahead of the work so progress can show a total and an
/// ETA: only keys are listed (cheap next to featurizing), nothing is kept.
async fn count_images(
    input: Location,
    filter: verger_store::NameFilter,
    metrics: Arc<StageMetrics>,
) {
    let started = Instant::now();
    let mut images = verger_store::list_images(&input, &filter);
    let mut count = 0;
    while let Some(Ok(_)) = images.next().await {
        count += 1;
    }
    metrics.expected.store(count, Ordering::Relaxed);
    // The listing that feeds the work waits on it; this one shows what
    // listing alone costs.
    StageMetrics::add(&metrics.list_ns, started.elapsed());
}
