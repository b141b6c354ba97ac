//! Writing results from inside a cluster task, under names that come from the
//! data (the slice and the run's attempt), so a task that runs twice writes
//! the same files twice instead of two sets of rows.
//!
//! [`PartWriteExec`] is the root of phase 1 and phase 3 plans. It drains its
//! input, writes Parquet through `verger-output` (phase 1: the same
//! [`StagingWriter`] checkpoints an embedded partition writes), and returns
//! one summary row per partition: only a [`TaskSummary`] travels back to the
//! client, never features.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type};
use datafusion::common::internal_err;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use verger_datafusion::StageMetrics;
use verger_output::{
    ErrorBudget, FEATURES_DIR, PartWriter, STAGED_ERRORS_DIR, STAGED_FEATURES_DIR, StagingSpec,
    StagingWriter, TaskSummary, features_schema,
};
use verger_store::Location;

use crate::plan_node::{external, one_input_plan};
use crate::slices::{SLICE_COLUMN, slice_prefix};

/// Which files a [`PartWriteExec`] writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartKind {
    /// Phase 1: `(path, label, result, size, last_modified_ms, e_tag, slice)`
    /// in; checkpoints `_staging/{features,errors}/slice-NNNN-<attempt>-*`.
    Staging(StagingSpec),
    /// Phase 3: `(path, label, features, pca, slice)` in; rows to
    /// `features/part-NNNN-*`.
    Features,
}

/// What a [`PartWriteExec`] needs; it travels in the plan as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartWriteSpec {
    /// The run's output location (`s3://…` or a folder), never credentials.
    pub output: String,
    pub kind: PartKind,
}

/// Who runs this process's tasks, as told in summary rows (set once by
/// `verger executor`; an in-process run leaves the defaults).
#[derive(Debug, Clone, Default)]
pub struct WorkerInfo {
    pub id: String,
    pub engine: String,
    pub model_sha256: String,
}

static WORKER: OnceLock<WorkerInfo> = OnceLock::new();

pub fn set_worker_info(info: WorkerInfo) {
    let _already_set = WORKER.set(info);
}

fn worker_info() -> WorkerInfo {
    WORKER.get().cloned().unwrap_or_default()
}

/// One row per task: its [`TaskSummary`] as JSON.
pub fn summary_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "summary",
        DataType::Utf8,
        false,
    )]))
}

/// The summaries of a job's result batches.
pub fn summaries(batches: &[RecordBatch]) -> Result<Vec<TaskSummary>> {
    let mut out = Vec::new();
    for batch in batches {
        let Some(column) = batch.column_by_name("summary") else {
            return internal_err!("a task returned no summary column");
        };
        for text in column.as_string::<i32>().iter().flatten() {
            out.push(TaskSummary::from_json(text).map_err(external)?);
        }
    }
    Ok(out)
}

/// Drains its input into Parquet parts named by slice; one summary row out
/// per partition.
#[derive(Debug)]
pub struct PartWriteExec {
    input: Arc<dyn ExecutionPlan>,
    spec: PartWriteSpec,
    properties: Arc<PlanProperties>,
}

impl PartWriteExec {
    pub fn try_new(input: Arc<dyn ExecutionPlan>, spec: PartWriteSpec) -> Result<Self> {
        let expected = match spec.kind {
            PartKind::Staging(_) => 7,
            PartKind::Features => 5,
        };
        let schema = input.schema();
        if schema.fields().len() != expected || schema.field(expected - 1).name() != SLICE_COLUMN {
            return internal_err!(
                "PartWriteExec({:?}) needs {expected} columns ending in `slice`, got {schema:?}",
                spec.kind
            );
        }
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(summary_schema()),
            input.output_partitioning().clone(),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Ok(PartWriteExec {
            input,
            spec,
            properties,
        })
    }

    pub fn spec(&self) -> &PartWriteSpec {
        &self.spec
    }
}

impl DisplayAs for PartWriteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let kind = match self.spec.kind {
            PartKind::Staging(_) => "staging",
            PartKind::Features => "features",
        };
        write!(f, "PartWriteExec: output={}, kind={kind}", self.spec.output)
    }
}

one_input_plan!(PartWriteExec);

impl PartWriteExec {
    /// Its `ExecutionPlan::execute`.
    fn stream(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let spec = self.spec.clone();
        let location =
            Location::parse(&spec.output).map_err(|e| DataFusionError::External(Box::new(e)))?;
        let metrics = Arc::new(StageMetrics::default());
        let work = verger_datafusion::with_task_metrics(
            metrics.clone(),
            write_all(input, location, spec.kind, metrics),
        );
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            summary_schema(),
            futures::stream::once(work),
        )))
    }
}

/// Drains a task's input into its slice's parts and summarises the task.
async fn write_all(
    mut input: SendableRecordBatchStream,
    location: Location,
    kind: PartKind,
    metrics: Arc<StageMetrics>,
) -> Result<RecordBatch> {
    let budget = match &kind {
        PartKind::Staging(spec) => ErrorBudget::new(spec.max_errors, spec.errors_before),
        PartKind::Features => ErrorBudget::default(),
    };
    let mut staging: BTreeMap<u32, StagingWriter> = BTreeMap::new();
    let mut features: BTreeMap<u32, PartWriter> = BTreeMap::new();
    let mut feature_rows = 0u64;
    while let Some(batch) = input.next().await {
        let batch = batch?;
        for (slice, part) in by_slice(&batch)? {
            match &kind {
                PartKind::Staging(spec) => {
                    let writer = match staging.entry(slice) {
                        std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
                        std::collections::btree_map::Entry::Vacant(entry) => {
                            tracing::info!("featurizing slice {slice}");
                            entry.insert(staging_writer(&location, slice, spec).await?)
                        }
                    };
                    writer.write(&part, &budget).await.map_err(external)?;
                }
                PartKind::Features => {
                    let writer = features.entry(slice).or_insert_with(|| {
                        tracing::info!("writing slice {slice}");
                        PartWriter::new(
                            &location,
                            FEATURES_DIR,
                            &format!("part-{slice:04}"),
                            features_schema(),
                        )
                    });
                    let columns = part.columns()[..4].to_vec();
                    let out = RecordBatch::try_new(features_schema(), columns)?;
                    writer.write(&out).await.map_err(external)?;
                    feature_rows += out.num_rows() as u64;
                }
            }
        }
    }
    let worker = worker_info();
    let stages = metrics.snapshot();
    let mut summary = TaskSummary {
        slice: metrics.slice.get().copied(),
        listed: stages.listed,
        skipped: metrics.skipped.load(Ordering::Relaxed),
        rows: feature_rows,
        stages,
        worker: worker.id,
        pid: std::process::id(),
        model_loads: verger_model::model_loads() as u64,
        engine: worker.engine,
        model_sha256: worker.model_sha256,
        ..TaskSummary::default()
    };
    for (_, writer) in staging {
        let (rows, errors, failures) = writer.finish().await.map_err(external)?;
        summary.rows += rows;
        summary.errors += errors;
        summary.failures.extend(failures);
    }
    for (_, writer) in features {
        writer.finish().await.map_err(external)?;
    }
    if matches!(kind, PartKind::Features) {
        summary.listed = summary.rows;
    }
    summary.failures =
        verger_output::FailureCount::tally(summary.failures.iter().map(|f| (f.kind, f.count)));
    Ok(RecordBatch::try_new(
        summary_schema(),
        vec![Arc::new(StringArray::from(vec![summary.to_json()]))],
    )?)
}

/// The rows of `batch` per slice (its last column). One seed per task
/// makes a batch one slice; split anyway should a task hold several.
fn by_slice(batch: &RecordBatch) -> Result<Vec<(u32, RecordBatch)>> {
    if batch.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let slices = batch
        .column(batch.num_columns() - 1)
        .as_primitive::<UInt32Type>();
    let mut distinct: Vec<u32> = slices.values().to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    if let [only] = distinct.as_slice() {
        return Ok(vec![(*only, batch.clone())]);
    }
    distinct
        .into_iter()
        .map(|slice| {
            let mask: datafusion::arrow::array::BooleanArray =
                slices.iter().map(|s| Some(s == Some(slice))).collect();
            Ok((
                slice,
                datafusion::arrow::compute::filter_record_batch(batch, &mask)?,
            ))
        })
        .collect()
}

/// A slice's checkpoint writers, after removing what an earlier try of the
/// same slice in the same run left (a task retried after an executor loss
/// writes the same names; a partial set from the first try must not mix in).
async fn staging_writer(
    location: &Location,
    slice: u32,
    spec: &StagingSpec,
) -> Result<StagingWriter> {
    let prefix = slice_prefix(slice, &spec.attempt);
    for dir in [STAGED_FEATURES_DIR, STAGED_ERRORS_DIR] {
        for key in location.list_keys(dir).await.map_err(external)? {
            if key.filename().is_some_and(|name| name.starts_with(&prefix)) {
                location.delete(&key).await.map_err(external)?;
            }
        }
    }
    Ok(StagingWriter::new(location, &prefix, spec.checkpoint_every))
}
