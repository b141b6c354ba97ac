//! `verger run --cluster`: the same three phases, each submitted to a
//! Ballista scheduler as one job, with the same commit protocol as an
//! embedded run. The client never loads the model or touches a feature
//! vector: executors write, the client reads summaries.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use verger_cluster::part_write::slice_markers_dir;
use verger_cluster::{Cluster, TaskSummary};
use verger_datafusion::StageTimes;
use verger_output::{
    ERRORS_DIR, JobIdentity, OutputDir, PCA_MODEL_FILE, PartWriter, RUN_FILE, SUCCESS_FILE,
    errors_schema, job_file,
};
use verger_store::Location;

use crate::report::{Counts, ModelInfo, Parameters, RunReport, Timings, Versions};
use crate::run::RunConfig;

/// What each executor did in a cluster run (in `run.json`).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct WorkerReport {
    /// Featurize tasks it ran (slices).
    pub featurize_tasks: u64,
    pub images: u64,
    /// How many times its process loaded the model (1 for a healthy executor).
    pub model_loads: u64,
    pub pid: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    pub scheduler: String,
    pub slices: u32,
    pub workers: BTreeMap<String, WorkerReport>,
}

pub(crate) async fn run_on_cluster(
    config: &RunConfig,
    cluster_url: &str,
    input: Location,
    started: Instant,
    started_at: String,
) -> Result<RunReport> {
    let cluster = Cluster::parse(cluster_url)?;
    cluster.check_reachable().await?;
    let output_location =
        Location::parse_for_output(&config.output).context("cannot open --output")?;
    let slices = config.partitions.max(1) as u32;
    // The client never loads the model: the executors report its sha256.
    let job = JobIdentity {
        input: input.display_root().to_string(),
        glob: config.glob.clone(),
        model_sha256: String::new(),
        max_pixels: config.max_pixels,
    };
    let (output, done) = match config.resume {
        true => match resume_point(&output_location, &job, slices).await? {
            Some(done) => (OutputDir::reopen(output_location.clone()), done),
            None => (
                OutputDir::prepare(output_location.clone(), false).await?,
                Vec::new(),
            ),
        },
        false => (
            OutputDir::prepare(output_location.clone(), config.overwrite).await?,
            Vec::new(),
        ),
    };
    if done.is_empty() {
        output.write_json(&job_file(), &job).await?;
    }
    let done_slices: Vec<u32> = done.iter().filter_map(|s| s.slice).collect();
    let todo: Vec<u32> = (0..slices).filter(|s| !done_slices.contains(s)).collect();
    let run_id = &uuid::Uuid::new_v4().to_string()[..8];
    let (input_root, output_root) = (input.display_root(), output_location.display_root());
    tracing::info!(
        scheduler = cluster.display(),
        slices,
        input = input_root,
        output = output_root,
        "submitting to the cluster"
    );

    // 1. featurize
    let phase = Instant::now();
    let resumed: u64 = done.iter().map(|s| s.listed).sum();
    if !done.is_empty() {
        tracing::info!(
            slices_done = done_slices.len(),
            images_done = resumed,
            "resuming: finished slices are not run again"
        );
    }
    let mut summaries = done;
    if !todo.is_empty() {
        let only = (todo.len() < slices as usize).then_some(todo);
        summaries.extend(
            while_waiting(
                "featurize",
                cluster.featurize(
                    input_root,
                    &config.glob,
                    config.batch_size,
                    output_root,
                    slices,
                    only,
                    &format!("verger {run_id} featurize"),
                ),
            )
            .await?,
        );
    }
    let featurize_s = phase.elapsed().as_secs_f64();
    check_one_summary_per_slice(&summaries, slices)?;
    let listed: u64 = summaries.iter().map(|s| s.listed).sum();
    let staged: u64 = summaries.iter().map(|s| s.rows).sum();
    let errors: u64 = summaries.iter().map(|s| s.errors).sum();
    if listed == 0 {
        output.remove_staging().await?;
        bail!(
            "no files matching {:?} under {input_root}: nothing to do (check --input and --glob)",
            config.glob
        );
    }
    if staged + errors != listed {
        bail!(
            "internal error: {listed} images listed but {staged} featurized + {errors} errors; \
             the output is incomplete and was not committed"
        );
    }
    if let Some(max) = config.max_errors
        && errors > max
    {
        bail!(
            "more than --max-errors {max} images failed ({errors}); stopping. \
             The failures are listed in {output_root}/{ERRORS_DIR}/"
        );
    }
    if errors == 0 {
        // Readers find `errors/` and its schema even when nothing failed.
        PartWriter::new(&output_location, ERRORS_DIR, "part-0000", errors_schema())
            .keep_empty()
            .finish()
            .await?;
    }
    if staged < 2 {
        bail!(
            "only {staged} of {listed} images could be featurized (see {output_root}/{ERRORS_DIR}/): \
             PCA needs at least 2"
        );
    }
    let model = one_model(&summaries)?;

    // 2. fit
    let phase = Instant::now();
    let stats = while_waiting(
        "fit",
        cluster.fit(output_root, slices, &format!("verger {run_id} pca-fit")),
    )
    .await?;
    let stats = verger_pca::PcaStats::from_bytes(&stats)?;
    if stats.count() != staged {
        bail!(
            "internal error: PCA was fitted on {} rows but {staged} were staged",
            stats.count()
        );
    }
    let pca = verger_pca::fit(&stats, config.k, config.center)?;
    output.write_json(PCA_MODEL_FILE, &pca).await?;
    let pca_fit_s = phase.elapsed().as_secs_f64();

    // 3. project and write
    let phase = Instant::now();
    let model_json = serde_json::to_string(&pca)?;
    let projected = while_waiting(
        "project",
        cluster.project(
            output_root,
            &model_json,
            slices,
            &format!("verger {run_id} project"),
        ),
    )
    .await?;
    let feature_rows: u64 = projected.iter().map(|s| s.rows).sum();
    output.remove_staging().await?;
    let project_write_s = phase.elapsed().as_secs_f64();

    let counts = Counts {
        listed,
        features: feature_rows,
        errors,
        resumed,
        unchanged: 0,
        removed: 0,
    };
    if counts.features + counts.errors != counts.listed {
        bail!("internal error: counts do not add up ({counts:?}); the output was not committed");
    }
    let mut error_kinds: HashMap<String, u64> = HashMap::new();
    for summary in &summaries {
        for (kind, count) in &summary.error_kinds {
            *error_kinds.entry(kind.clone()).or_default() += count;
        }
    }
    let mut error_summary: Vec<(String, u64)> = error_kinds.into_iter().collect();
    error_summary.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    error_summary.truncate(20);
    let ns = |v: u64| v as f64 / 1e9;
    let stages = StageTimes {
        listed,
        featurized: staged,
        failed: errors,
        batches: summaries.iter().map(|s| s.batches).sum(),
        read_bytes: summaries.iter().map(|s| s.read_bytes).sum(),
        list_s: 0.0,
        read_s: ns(summaries.iter().map(|s| s.read_ns).sum()),
        decode_resize_s: ns(summaries.iter().map(|s| s.decode_ns).sum()),
        inference_s: ns(summaries.iter().map(|s| s.infer_ns).sum()),
    };
    let report = RunReport {
        counts,
        parameters: Parameters::of(config, input_root, output_root),
        model,
        timings: Timings {
            model_load_s: 0.0,
            featurize_s,
            pca_fit_s,
            project_write_s,
            total_s: started.elapsed().as_secs_f64(),
            stages,
        },
        explained_variance: pca.explained_variance.clone(),
        error_summary,
        versions: Versions {
            verger: env!("CARGO_PKG_VERSION"),
            datafusion: datafusion::DATAFUSION_VERSION,
        },
        cluster: Some(ClusterReport {
            scheduler: cluster.display(),
            slices,
            workers: workers(&summaries),
        }),
        started_at,
        finished_at: chrono::Utc::now().to_rfc3339(),
    };
    output.write_json(RUN_FILE, &report).await?;
    output.commit().await?;
    output.remove_staging().await?;
    Ok(report)
}

/// Where an interrupted cluster run stopped: the summaries of its finished
/// slices (`None` when the output is empty: a fresh run).
async fn resume_point(
    output: &Location,
    job: &JobIdentity,
    slices: u32,
) -> Result<Option<Vec<TaskSummary>>> {
    let root = output.display_root();
    if output.list_keys("").await?.is_empty() {
        return Ok(None);
    }
    if output.exists(SUCCESS_FILE).await? {
        output.delete_all(verger_output::STAGING_DIR).await?;
        bail!("cannot resume at {root}: that run already completed (_SUCCESS is present)");
    }
    if !output.exists(&job_file()).await? {
        bail!("cannot resume at {root}: it is not an interrupted verger run; use --overwrite");
    }
    let previous: JobIdentity =
        serde_json::from_slice(&output.read(&output.key(&job_file())).await?)
            .with_context(|| format!("{root}/{} is unreadable", job_file()))?;
    if &previous != job {
        bail!(
            "cannot resume at {root}: it was started with other settings ({previous:?}); \
             resume with the same ones (and --cluster), or use --overwrite"
        );
    }
    // Phase 3 and the documents are redone; phase-1 files stay.
    output.delete_all(verger_output::FEATURES_DIR).await?;
    for file in [PCA_MODEL_FILE, RUN_FILE] {
        output.delete(&output.key(file)).await?;
    }
    let mut done = Vec::new();
    for key in output.list_keys(&slice_markers_dir()).await? {
        let summary: TaskSummary = serde_json::from_slice(&output.read(&key).await?)
            .with_context(|| format!("{} is unreadable", output.display_key(&key)))?;
        if summary.slice.is_some_and(|s| s < slices) {
            done.push(summary);
        }
    }
    if done.is_empty() {
        tracing::info!("resuming: no slice had finished");
    }
    Ok(Some(done))
}

/// Logs a line every 10 s while a phase runs on the cluster.
async fn while_waiting<T>(phase: &str, work: impl Future<Output = Result<T>>) -> Result<T> {
    let started = Instant::now();
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {
                tracing::info!(phase, elapsed_s = started.elapsed().as_secs(), "running on the cluster");
            }
        }
    }
}

/// A slice reported twice would mean rows counted twice.
fn check_one_summary_per_slice(summaries: &[TaskSummary], slices: u32) -> Result<()> {
    let mut seen = vec![false; slices as usize];
    for slice in summaries.iter().filter_map(|s| s.slice) {
        let Some(seen) = seen.get_mut(slice as usize) else {
            bail!("internal error: a task reported slice {slice} of {slices}");
        };
        if std::mem::replace(seen, true) {
            bail!("internal error: slice {slice} was reported twice; the output was not committed");
        }
    }
    Ok(())
}

/// Every executor must have run the same model, or the features would not
/// be comparable.
fn one_model(summaries: &[TaskSummary]) -> Result<ModelInfo> {
    let mut models: BTreeMap<&str, (&str, Vec<&str>)> = BTreeMap::new();
    for s in summaries.iter().filter(|s| s.listed > 0) {
        let entry = models
            .entry(s.model_sha256.as_str())
            .or_insert((s.engine.as_str(), vec![]));
        if !entry.1.contains(&s.worker.as_str()) {
            entry.1.push(s.worker.as_str());
        }
    }
    if models.len() > 1 {
        let detail: Vec<String> = models
            .iter()
            .map(|(sha, (_, workers))| {
                format!("{} on {}", &sha[..12.min(sha.len())], workers.join(", "))
            })
            .collect();
        bail!(
            "the executors run different models ({}); every executor must load the same file",
            detail.join("; ")
        );
    }
    let (sha256, (engine, _)) = models.into_iter().next().unwrap_or_default();
    Ok(ModelInfo {
        path: "(loaded by each executor)".into(),
        sha256: sha256.to_string(),
        engine: engine.to_string(),
    })
}

fn workers(summaries: &[TaskSummary]) -> BTreeMap<String, WorkerReport> {
    let mut workers: BTreeMap<String, WorkerReport> = BTreeMap::new();
    for s in summaries {
        let worker = workers.entry(s.worker.clone()).or_default();
        worker.featurize_tasks += 1;
        worker.images += s.listed;
        worker.model_loads = worker.model_loads.max(s.model_loads);
        worker.pid = s.pid;
    }
    workers
}
