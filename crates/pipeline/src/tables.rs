//! Tables written from DataFrames in this process: phase 3 of an embedded
//! run, and the commit's `errors/`, `inventory/` and (with `--views`)
//! `views/` of every run (the client of a cluster run writes those itself,
//! from the staged parts).

use std::sync::Arc;

use anyhow::{Context, Result};
use datafusion::arrow::array::AsArray;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::physical_plan::execute_stream_partitioned;
use datafusion::prelude::{DataFrame, ParquetReadOptions};
use futures::StreamExt;
use verger_datafusion::phases;
use verger_output::{
    ERRORS_DIR, FailureCount, FailureKind, INVENTORY_DIR, PartWriter, STAGED_ERRORS_DIR,
    STAGED_FEATURES_DIR, StagingManifest, VIEWS_DIR, errors_schema, explode_views,
    inventory_schema, views_schema,
};
use verger_store::{Location, StoreKind};

/// A DataFusion session for verger's queries over `output`'s store.
pub(crate) fn session(
    partitions: usize,
    batch_size: usize,
    output: &Location,
) -> Result<SessionContext> {
    // Plain Utf8 when reading staged Parquet back: the output schema is
    // Utf8, which every reader (Spark included) understands.
    let mut config = SessionConfig::new()
        .with_target_partitions(partitions.max(1))
        .with_batch_size(batch_size.max(1))
        .with_information_schema(false);
    config
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
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    // Local folders are read through DataFusion's own file:// store; an S3
    // output needs the client configured from the environment.
    if let StoreKind::S3 { .. } = output.kind() {
        let url = url::Url::parse(output.store_url())?;
        ctx.register_object_store(&url, output.store().clone());
    }
    Ok(ctx)
}

/// Executes `frame` with one writer per partition under `dir/`; returns rows.
pub(crate) async fn write_partitions(
    frame: DataFrame,
    output: &Location,
    dir: &str,
    schema: SchemaRef,
) -> Result<u64> {
    let cast = schema.clone();
    let as_schema = move |batch: RecordBatch| {
        Ok(RecordBatch::try_new(
            cast.clone(),
            batch.columns().to_vec(),
        )?)
    };
    write_partitions_mapped(frame, output, dir, schema, Arc::new(as_schema)).await
}

/// Turns one batch of a query into the rows of a table.
type BatchMap = Arc<dyn Fn(RecordBatch) -> Result<RecordBatch> + Send + Sync>;

/// [`write_partitions`], each batch turned into `schema`'s rows by `map`.
async fn write_partitions_mapped(
    frame: DataFrame,
    output: &Location,
    dir: &str,
    schema: SchemaRef,
    map: BatchMap,
) -> Result<u64> {
    let task_ctx = Arc::new(frame.task_ctx());
    let plan = frame.create_physical_plan().await?;
    let streams = execute_stream_partitioned(plan, task_ctx)?;
    let mut tasks = tokio::task::JoinSet::new();
    for (partition, mut stream) in streams.into_iter().enumerate() {
        let mut writer =
            PartWriter::new(output, dir, &format!("part-{partition:03}"), schema.clone());
        let map = map.clone();
        tasks.spawn(async move {
            while let Some(batch) = stream.next().await {
                writer.write(&map(batch?)?).await?;
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

/// What the commit wrote besides `features/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommitTables {
    pub errors: u64,
    pub inventory: u64,
    /// Rows of `views/` (0 without `--views`).
    pub views: u64,
    /// The rows of `errors/` per kind, most frequent first.
    pub failures: Vec<FailureCount>,
}

/// `errors/` from the staged failures (an empty part when there are none,
/// so readers always find the table) and `inventory/` from the identities
/// of everything staged (the checkpoints `manifest` trusts), and with
/// `--views` (`view_names` not empty) `views/` from the staged features.
pub(crate) async fn write_commit_tables(
    output: &Location,
    manifest: &StagingManifest,
    view_names: &[String],
) -> Result<CommitTables> {
    let ctx = session(2, 8192, output)?;
    let staged_errors = read_staged(&ctx, output, manifest, STAGED_ERRORS_DIR).await?;
    let staged_features = read_staged(&ctx, output, manifest, STAGED_FEATURES_DIR).await?;

    let mut writer = PartWriter::new(output, ERRORS_DIR, "part-000", errors_schema()).keep_empty();
    let mut kinds: Vec<(FailureKind, u64)> = Vec::new();
    if let Some(staged) = &staged_errors {
        let mut stream = phases::errors(staged.clone())?.execute_stream().await?;
        while let Some(batch) = stream.next().await {
            let batch = RecordBatch::try_new(errors_schema(), batch?.columns().to_vec())?;
            for kind in batch.column(3).as_string::<i32>().iter().flatten() {
                kinds.push((kind.parse().map_err(anyhow::Error::msg)?, 1));
            }
            writer.write(&batch).await?;
        }
    }
    let errors = writer.finish().await?.rows;

    let views = match (&staged_features, view_names.is_empty()) {
        (Some(staged), false) => {
            let names = view_names.to_vec();
            let explode = move |batch: RecordBatch| Ok(explode_views(&batch, &names)?);
            let frame = staged.clone().select_columns(&["path", "label", "views"])?;
            write_partitions_mapped(frame, output, VIEWS_DIR, views_schema(), Arc::new(explode))
                .await?
        }
        _ => 0,
    };

    let staged: Vec<DataFrame> = [staged_features, staged_errors]
        .into_iter()
        .flatten()
        .collect();
    let inventory = match phases::inventory(staged)? {
        Some(frame) => write_partitions(frame, output, INVENTORY_DIR, inventory_schema()).await?,
        None => 0,
    };
    Ok(CommitTables {
        errors,
        inventory,
        views,
        failures: FailureCount::tally(kinds),
    })
}

/// The checkpoints under `dir` that `manifest` trusts, as one table, or
/// `None` when there are none.
pub(crate) async fn read_staged(
    ctx: &SessionContext,
    output: &Location,
    manifest: &StagingManifest,
    dir: &str,
) -> Result<Option<DataFrame>> {
    let urls: Vec<String> = manifest
        .parts(output, dir)
        .await?
        .iter()
        .map(|key| output.display_key(key))
        .collect();
    if urls.is_empty() {
        return Ok(None);
    }
    let frame = ctx
        .read_parquet(urls, ParquetReadOptions::default())
        .await
        .with_context(|| format!("cannot read the checkpoints in {dir} back"))?;
    Ok(Some(frame))
}
