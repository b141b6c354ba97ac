//! `verger run`: list → featurize → fit PCA → project → commit.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::common::ScalarValue;
use datafusion::execution::FunctionRegistry;
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::logical_expr::Partitioning;
use datafusion::physical_plan::execute_stream_partitioned;
use datafusion::prelude::{DataFrame, ParquetReadOptions, col, lit};
use futures::StreamExt;
use verger_datafusion::{FeaturizeContext, ImageTable, StageMetrics};
use verger_image::PreprocessConfig;
use verger_model::{EngineChoice, EngineConfig, SharedModel};
use verger_output::{DoneWork, FileVersion, JobIdentity, ResumePoint, find_resume_point, job_file};
use verger_output::{
    ERRORS_DIR, FEATURES_DIR, INVENTORY_DIR, OutputDir, PCA_MODEL_FILE, PartWriter, RUN_FILE,
    errors_schema, features_schema, inventory_schema, staged_errors_dir, staged_errors_schema,
    staged_features_dir, staged_features_schema,
};
use verger_store::{Location, NameFilter, StoreKind};

use crate::progress::{Progress, ProgressMode};
use crate::report::{Counts, ModelInfo, Parameters, RunReport, Timings, Versions};

/// Everything a run needs to know; the CLI fills it from flags and environment.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub input: String,
    pub output: String,
    pub glob: String,
    pub k: usize,
    pub center: bool,
    pub model: Option<PathBuf>,
    pub engine: EngineChoice,
    pub ort_library: Option<PathBuf>,
    pub batch_size: usize,
    /// Threads inside one inference call.
    pub threads: usize,
    /// Parallel tasks (DataFusion partitions) reading and decoding images.
    pub partitions: usize,
    pub overwrite: bool,
    pub max_errors: Option<u64>,
    pub max_pixels: u64,
    pub progress: ProgressMode,
    /// `df://host:port` of a Ballista scheduler; `None` runs in this process.
    pub cluster: Option<String>,
    /// Continue an interrupted run at `output` instead of starting over.
    pub resume: bool,
    /// Update the complete run at `output`: only new and changed images are
    /// featurized, deleted ones are dropped, the PCA is fitted again.
    pub incremental: bool,
    /// Featurized images per checkpoint file and task: what a kill can lose.
    pub checkpoint_every: usize,
}

impl RunConfig {
    /// Defaults for one machine: every core, batches of 32.
    pub fn new(input: impl Into<String>, output: impl Into<String>) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        RunConfig {
            input: input.into(),
            output: output.into(),
            glob: "*.jpg".into(),
            k: 5,
            center: false,
            model: None,
            engine: EngineChoice::Auto,
            ort_library: None,
            batch_size: 32,
            threads: cores,
            partitions: cores,
            overwrite: false,
            max_errors: None,
            max_pixels: PreprocessConfig::default().max_pixels,
            progress: ProgressMode::Auto,
            cluster: None,
            resume: false,
            incremental: false,
            checkpoint_every: 256,
        }
    }
}

/// Runs the whole job and returns its report (also written as `run.json`).
pub async fn run(config: &RunConfig) -> Result<RunReport> {
    let started = Instant::now();
    let started_at = chrono::Utc::now().to_rfc3339();
    if config.k == 0 {
        bail!("--k must be at least 1");
    }
    if config.resume && config.overwrite {
        bail!(
            "--resume keeps the work already done and --overwrite throws it away: pass one of them"
        );
    }
    if config.incremental && (config.resume || config.overwrite) {
        bail!(
            "--incremental updates a complete earlier run; it goes with neither --resume \
             (an interrupted --incremental run is finished with --resume alone) nor --overwrite"
        );
    }
    let filter = NameFilter::new(&config.glob)?;
    let input = Location::parse(&config.input).context("cannot open --input")?;
    // One listing request up front: an empty input or a store that refuses
    // us is reported before anything is loaded or written.
    let first = verger_store::list_images(&input, &filter)
        .next()
        .await
        .transpose()?;
    if first.is_none() {
        bail!(
            "no files matching {:?} under {}: nothing to do (check --input and --glob)",
            config.glob,
            input.display_root()
        );
    }
    if let Some(cluster) = &config.cluster {
        if config.incremental {
            bail!("--incremental is not supported with --cluster yet: run it embedded");
        }
        return crate::cluster_run::run_on_cluster(config, cluster, input, started, started_at)
            .await;
    }
    // The model before the output: a missing model must not cost an
    // --overwrite its previous result.
    let model_path = verger_model::resolve_model_path(config.model.as_deref())?;
    let load_started = Instant::now();
    let engine_config = EngineConfig {
        choice: config.engine,
        threads: config.threads,
        ort_library: config.ort_library.clone(),
        batch_size: config.batch_size,
    };
    let model = tokio::task::spawn_blocking(move || SharedModel::load(&model_path, &engine_config))
        .await??;
    let model_load_s = load_started.elapsed().as_secs_f64();

    let output_location =
        Location::parse_for_output(&config.output).context("cannot open --output")?;
    let job = JobIdentity {
        input: input.display_root().to_string(),
        glob: config.glob.clone(),
        model_sha256: model.file().sha256.clone(),
        max_pixels: config.max_pixels,
    };
    let mut changes = Changes::default();
    let resume_point = if config.incremental {
        let (done, found) =
            prepare_incremental(config, &input, &filter, &output_location, &job).await?;
        changes = found;
        ResumePoint::Interrupted(done)
    } else if config.resume {
        find_resume_point(&output_location, &job).await?
    } else {
        ResumePoint::Fresh
    };
    let (output, done) = match resume_point {
        ResumePoint::Fresh => {
            let output = OutputDir::prepare(output_location.clone(), config.overwrite).await?;
            output.write_json(&job_file(), &job).await?;
            (output, DoneWork::default())
        }
        ResumePoint::Interrupted(done) => {
            tracing::info!(
                done = done.paths.len(),
                checkpoints = done.checkpoints,
                "resuming: images already done are skipped"
            );
            (OutputDir::reopen(output_location.clone()), done)
        }
    };
    let (done_staged, done_errors) = (done.staged_rows, done.error_rows);

    let metrics = Arc::new(StageMetrics::default());
    let preprocess = PreprocessConfig {
        max_pixels: config.max_pixels,
        ..PreprocessConfig::default()
    };
    let featurize = Arc::new(FeaturizeContext::new(
        model.clone(),
        preprocess,
        metrics.clone(),
    ));
    featurize.add_location(input.clone());
    let ctx = session(config, &output_location)?;
    verger_datafusion::register_functions(&ctx, featurize);
    let mut table = ImageTable::new(
        input.clone(),
        filter.clone(),
        config.batch_size,
        metrics.clone(),
    );
    if !done.paths.is_empty() {
        table = table.skipping(Arc::new(done.paths));
    }
    ctx.register_table("images", Arc::new(table.into_table()?))?;

    // 1. featurize
    let phase = Instant::now();
    let progress = Progress::start(config.progress, metrics.clone());
    let counter = tokio::spawn(count_images(input.clone(), filter.clone(), metrics.clone()));
    let featurized = featurize_phase(&ctx, config, &input, &output, done_errors).await;
    counter.abort();
    progress.finish().await;
    let (new_staged, new_errors) = featurized?;
    let featurize_s = phase.elapsed().as_secs_f64();
    let listed = metrics.listed.load(Ordering::Relaxed);
    let skipped = metrics.skipped.load(Ordering::Relaxed);
    if done_staged + done_errors != skipped {
        bail!(
            "the input changed since the interrupted run: it had done {} images, \
             {skipped} of which are still listed. Rerun with --overwrite",
            done_staged + done_errors
        );
    }
    let (staged_rows, error_rows) = (done_staged + new_staged, done_errors + new_errors);
    if listed == 0 {
        output.remove_staging().await?;
        bail!(
            "no files matching {:?} under {}: nothing to do (check --input and --glob)",
            config.glob,
            input.display_root()
        );
    }
    if staged_rows + error_rows != listed {
        bail!(
            "internal error: {listed} images listed but {staged_rows} featurized + {error_rows} errors; \
             the output is incomplete and was not committed"
        );
    }
    if staged_rows < 2 {
        bail!(
            "only {staged_rows} of {listed} images could be featurized (see {}/{ERRORS_DIR}/): \
             PCA needs at least 2",
            output_location.display_root()
        );
    }

    // 2. fit
    let phase = Instant::now();
    let staged = ctx
        .read_parquet(
            output_location.table_url(&staged_features_dir()),
            ParquetReadOptions::default(),
        )
        .await
        .context("cannot read the staged features back")?;
    let stats = fit_stats(&ctx, staged.clone()).await?;
    let pca = verger_pca::fit(&stats, config.k, config.center)?;
    output.write_json(PCA_MODEL_FILE, &pca).await?;
    let pca_fit_s = phase.elapsed().as_secs_f64();

    // 3. project and write
    let phase = Instant::now();
    let model_json = serde_json::to_string(&pca)?;
    let projected = staged.clone().select(vec![
        col("path"),
        col("label"),
        col("features"),
        ctx.udf(verger_datafusion::PcaProjectUdf::NAME)?
            .call(vec![col("features"), lit(model_json)])
            .alias("pca"),
    ])?;
    let feature_rows =
        write_partitions(projected, &output_location, FEATURES_DIR, features_schema()).await?;
    let (written_errors, error_summary) = write_errors(&ctx, &output_location).await?;
    if written_errors != error_rows {
        bail!("internal error: {error_rows} failures were staged but {written_errors} written");
    }
    let identity = |frame: DataFrame| {
        frame.select(vec![
            col("path"),
            col("size"),
            col("last_modified_ms"),
            col("e_tag"),
        ])
    };
    let mut inventory = identity(staged.clone())?;
    if let Some(staged_errors) = read_staged(&ctx, &output_location, &staged_errors_dir()).await? {
        inventory = inventory.union(identity(staged_errors)?)?;
    }
    let inventory_rows = write_partitions(
        inventory,
        &output_location,
        INVENTORY_DIR,
        inventory_schema(),
    )
    .await?;
    if inventory_rows != listed {
        bail!("internal error: {listed} images listed but {inventory_rows} in the inventory");
    }
    let project_write_s = phase.elapsed().as_secs_f64();

    let counts = Counts {
        listed,
        features: feature_rows,
        errors: error_rows,
        resumed: if config.incremental { 0 } else { skipped },
        unchanged: if config.incremental { skipped } else { 0 },
        removed: changes.removed,
    };
    if counts.features + counts.errors != counts.listed {
        bail!("internal error: counts do not add up ({counts:?}); the output was not committed");
    }
    let report = RunReport {
        counts,
        parameters: Parameters::of(config, input.display_root(), output_location.display_root()),
        model: ModelInfo {
            path: model.file().path.display().to_string(),
            sha256: model.file().sha256.clone(),
            engine: model.engine_name().to_string(),
        },
        timings: Timings {
            model_load_s,
            featurize_s,
            pca_fit_s,
            project_write_s,
            total_s: started.elapsed().as_secs_f64(),
            stages: metrics.snapshot(),
        },
        explained_variance: pca.explained_variance.clone(),
        error_summary,
        versions: Versions {
            verger: env!("CARGO_PKG_VERSION"),
            datafusion: datafusion::DATAFUSION_VERSION,
        },
        cluster: None,
        started_at,
        finished_at: chrono::Utc::now().to_rfc3339(),
    };
    output.write_json(RUN_FILE, &report).await?;
    output.commit().await?;
    // After _SUCCESS, so a kill before it leaves the checkpoints to resume
    // from; a leftover `_staging/` is removed by the next --resume.
    output.remove_staging().await?;
    Ok(report)
}

/// What `--incremental` found, comparing the input with the earlier inventory.
#[derive(Debug, Default, Clone, Copy)]
struct Changes {
    unchanged: u64,
    changed: u64,
    new: u64,
    removed: u64,
}

/// Checks that `output` is a complete run of the same job, compares its
/// inventory with the input, and carries the rows of unchanged images into
/// staging; what is left is an interrupted run of the new input.
async fn prepare_incremental(
    config: &RunConfig,
    input: &Location,
    filter: &NameFilter,
    output: &Location,
    job: &JobIdentity,
) -> Result<(DoneWork, Changes)> {
    let root = output.display_root();
    if !output.exists(verger_output::SUCCESS_FILE).await? {
        bail!(
            "--incremental updates a complete earlier run, and {root} holds none (no _SUCCESS): \
             finish an interrupted run with --resume, or start one without --incremental"
        );
    }
    let report: serde_json::Value =
        serde_json::from_slice(&output.read(&output.key(RUN_FILE)).await?)
            .with_context(|| format!("{root}/{RUN_FILE} is unreadable"))?;
    let previous = JobIdentity {
        input: report["parameters"]["input"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        glob: report["parameters"]["glob"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        model_sha256: report["model"]["sha256"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        max_pixels: report["parameters"]["max_pixels"]
            .as_u64()
            .unwrap_or_default(),
    };
    if &previous != job {
        bail!(
            "--incremental needs the same input, glob, model and --max-pixels as the earlier run \
             at {root} (it had {previous:?}); run with --overwrite to start over"
        );
    }
    let inventory = verger_output::read_inventory(output).await?;
    let mut changes = Changes::default();
    let mut unchanged = HashMap::new();
    let mut seen = 0u64;
    let mut images = verger_store::list_images(input, filter);
    while let Some(image) = images.next().await {
        let image = image?;
        let now = FileVersion {
            size: image.size,
            last_modified_ms: image.last_modified_ms,
            e_tag: image.e_tag.clone(),
        };
        match inventory.get(&image.path) {
            Some(was) => {
                seen += 1;
                if was.unchanged(&now) {
                    unchanged.insert(image.path, now);
                } else {
                    changes.changed += 1;
                }
            }
            None => changes.new += 1,
        }
    }
    changes.unchanged = unchanged.len() as u64;
    changes.removed = inventory.len() as u64 - seen;
    let carried =
        verger_output::carry_unchanged(output, job, &unchanged, config.checkpoint_every).await?;
    tracing::info!(
        unchanged = changes.unchanged,
        changed = changes.changed,
        new = changes.new,
        removed = changes.removed,
        carried_features = carried.features,
        carried_errors = carried.errors,
        "incremental: only new and changed images will be featurized"
    );
    Ok((DoneWork::read(output).await?, changes))
}

/// Counts the input ahead of the work so progress can show a total and an
/// ETA: only keys are listed (cheap next to featurizing), nothing is kept.
async fn count_images(input: Location, filter: NameFilter, metrics: Arc<StageMetrics>) {
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

fn session(config: &RunConfig, output: &Location) -> Result<SessionContext> {
    // Plain Utf8 when reading staged Parquet back: the output schema is
    // Utf8, which every reader (Spark included) understands.
    let mut session_config = SessionConfig::new()
        .with_target_partitions(config.partitions.max(1))
        .with_batch_size(config.batch_size.max(1))
        .with_information_schema(false);
    session_config
        .options_mut()
        .execution
        .parquet
        .schema_force_view_types = false;
    // Staged checkpoints are many small files, each read once or twice:
    // DataFusion's footer and statistics caches (70 MiB by default) would
    // only grow with their number.
    let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
        .with_metadata_cache_limit(4 << 20)
        .with_file_statistics_cache_limit(2 << 20)
        .build_arc()?;
    let ctx = SessionContext::new_with_config_rt(session_config, runtime);
    // Local folders are read through DataFusion's own file:// store; an S3
    // output needs the client configured from the environment.
    if let StoreKind::S3 { .. } = output.kind() {
        let url = url::Url::parse(output.store_url())?;
        ctx.register_object_store(&url, output.store().clone());
    }
    Ok(ctx)
}

/// Phase 1: every listed image ends up in exactly one of `_staging/features`
/// or `errors/`. Returns (featurized rows, error rows, error summary).
async fn featurize_phase(
    ctx: &SessionContext,
    config: &RunConfig,
    input: &Location,
    output: &OutputDir,
    errors_before: u64,
) -> Result<(u64, u64)> {
    let featurize = ctx.udf(verger_datafusion::FeaturizeUdf::NAME)?;
    let frame = ctx
        .table("images")
        .await?
        .repartition(Partitioning::RoundRobinBatch(config.partitions.max(1)))?
        .select(vec![
            col("path"),
            col("label"),
            featurize
                .call(vec![
                    lit(ScalarValue::from(input.display_root())),
                    col("key"),
                ])
                .alias("result"),
            col("size"),
            col("last_modified_ms"),
            col("e_tag"),
        ])?;
    let plan = frame.create_physical_plan().await?;
    tracing::debug!(
        "featurize plan:\n{}",
        datafusion::physical_plan::displayable(plan.as_ref()).indent(true)
    );
    let streams = execute_stream_partitioned(plan, ctx.task_ctx())?;
    let errors_so_far = Arc::new(AtomicU64::new(errors_before));
    // Names unique to this attempt: a resumed run adds checkpoints beside
    // the interrupted run's, never over them.
    let attempt = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let checkpoint = config.checkpoint_every.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for (partition, mut stream) in streams.into_iter().enumerate() {
        let location = output.location().clone();
        let errors_so_far = errors_so_far.clone();
        let max_errors = config.max_errors;
        let attempt = attempt.clone();
        tasks.spawn(async move {
            let prefix = format!("part-{partition:03}-{attempt}");
            let mut staged = PartWriter::new(
                &location,
                &staged_features_dir(),
                &prefix,
                staged_features_schema(),
            )
            .checkpoint_every(checkpoint);
            let mut errors = PartWriter::new(
                &location,
                &staged_errors_dir(),
                &prefix,
                staged_errors_schema(),
            )
            .checkpoint_every(checkpoint);
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                let (ok, failed) = verger_output::split_featurized(&batch)?;
                staged.write(&ok).await?;
                errors.write(&failed).await?;
                for row in 0..failed.num_rows() {
                    let stage = failed.column(2).as_string::<i32>().value(row);
                    let reason = failed.column(3).as_string::<i32>().value(row);
                    tracing::warn!(
                        path = failed.column(0).as_string::<i32>().value(row),
                        stage,
                        reason,
                        "image skipped"
                    );
                }
                let total = errors_so_far.fetch_add(failed.num_rows() as u64, Ordering::SeqCst)
                    + failed.num_rows() as u64;
                if let Some(max) = max_errors
                    && total > max
                {
                    errors.finish().await?;
                    bail!(
                        "more than --max-errors {max} images failed ({total} so far); stopping. \
                         The failures are listed in {}/{ERRORS_DIR}/",
                        location.display_root()
                    );
                }
            }
            let staged = staged.finish().await?;
            let errors = errors.finish().await?;
            anyhow::Ok((staged.rows, errors.rows))
        });
    }
    let (mut staged_rows, mut error_rows) = (0, 0);
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            Ok((staged, errors)) => {
                staged_rows += staged;
                error_rows += errors;
            }
            Err(e) => {
                if first_error.is_none() {
                    first_error = Some(e);
                    tasks.abort_all();
                }
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok((staged_rows, error_rows))
}

/// The staged checkpoints under `dir`, or `None` when there are none.
async fn read_staged(
    ctx: &SessionContext,
    output: &Location,
    dir: &str,
) -> Result<Option<DataFrame>> {
    let any = output
        .list_keys(dir)
        .await?
        .iter()
        .any(|k| k.as_ref().ends_with(".parquet"));
    if !any {
        return Ok(None);
    }
    let frame = ctx
        .read_parquet(output.table_url(dir), ParquetReadOptions::default())
        .await
        .with_context(|| format!("cannot read the checkpoints in {dir} back"))?;
    Ok(Some(frame))
}

/// `errors/` from the staged failures (an empty part when there are none, so
/// readers always find the table), and the failures per reason kind, most
/// frequent first, at most 20.
async fn write_errors(
    ctx: &SessionContext,
    output: &Location,
) -> Result<(u64, Vec<(String, u64)>)> {
    let mut writer = PartWriter::new(output, ERRORS_DIR, "part-000", errors_schema()).keep_empty();
    let mut summary: HashMap<String, u64> = HashMap::new();
    if let Some(staged) = read_staged(ctx, output, &staged_errors_dir()).await? {
        let mut stream = staged.execute_stream().await?;
        while let Some(batch) = stream.next().await {
            let batch = verger_output::leading_columns(&batch?, errors_schema())?;
            for row in 0..batch.num_rows() {
                let stage = batch.column(2).as_string::<i32>().value(row);
                let reason = batch.column(3).as_string::<i32>().value(row);
                *summary
                    .entry(format!("{stage}: {}", verger_output::reason_kind(reason)))
                    .or_default() += 1;
            }
            writer.write(&batch).await?;
        }
    }
    let rows = writer.finish().await?.rows;
    let mut summary: Vec<(String, u64)> = summary.into_iter().collect();
    summary.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    summary.truncate(20);
    Ok((rows, summary))
}

async fn fit_stats(ctx: &SessionContext, staged: DataFrame) -> Result<verger_pca::PcaStats> {
    let pca_fit = ctx.udaf(verger_datafusion::PcaFitUdaf::NAME)?;
    let batches = staged
        .aggregate(
            vec![],
            vec![pca_fit.call(vec![col("features")]).alias("stats")],
        )?
        .collect()
        .await?;
    let bytes = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .map(|b| b.column(0).as_binary::<i32>().value(0).to_vec())
        .context("pca_fit returned no row")?;
    Ok(verger_pca::PcaStats::from_bytes(&bytes)?)
}

/// Executes `frame` with one writer per partition under `dir/`.
async fn write_partitions(
    frame: DataFrame,
    output: &Location,
    dir: &str,
    schema: datafusion::arrow::datatypes::SchemaRef,
) -> Result<u64> {
    let task_ctx = Arc::new(frame.task_ctx());
    let plan = frame.create_physical_plan().await?;
    let streams = execute_stream_partitioned(plan, task_ctx)?;
    let mut tasks = tokio::task::JoinSet::new();
    for (partition, mut stream) in streams.into_iter().enumerate() {
        let output = output.clone();
        let dir = dir.to_string();
        let schema = schema.clone();
        tasks.spawn(async move {
            let mut writer = PartWriter::new(
                &output,
                &dir,
                &format!("part-{partition:03}"),
                schema.clone(),
            );
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec())?;
                writer.write(&batch).await?;
            }
            anyhow::Ok(writer.finish().await?.rows)
        });
    }
    let mut rows = 0;
    while let Some(joined) = tasks.join_next().await {
        rows += joined??;
    }
    Ok(rows)
}
