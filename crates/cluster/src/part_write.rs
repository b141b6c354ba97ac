//! Writing results from inside a cluster task, under names that come from the
//! data (the slice), so a task that runs twice writes the same files twice
//! instead of two sets of rows.
//!
//! [`PartWriteExec`] is the root of phase 1 and phase 3 plans. It drains its
//! input, writes Parquet through `verger-output`'s [`PartWriter`], and
//! returns one summary row per partition: only counts and timings travel
//! back to the client, never features.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{
    Array, AsArray, RecordBatch, StringArray, UInt32Array, UInt32Builder, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type};
use datafusion::common::internal_err;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use verger_engine::StageMetrics;
use verger_output::{
    ERRORS_DIR, FEATURES_DIR, PartWriter, errors_schema, features_schema, staged_features_schema,
};
use verger_store::Location;

use crate::slices::{SLICE_COLUMN, slice_prefix, staging_dir};

/// Which files a [`PartWriteExec`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartKind {
    /// Phase 1: `(path, label, result, size, last_modified_ms, e_tag, slice)`
    /// in; featurized rows to
    /// `_staging/features/slice-NNNN-*`, failures to `errors/part-NNNN-*`.
    Staging,
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

/// One row per task: what it wrote, what failed, what it cost, who ran it.
pub fn summary_schema() -> SchemaRef {
    let count = |name: &str| Field::new(name, DataType::UInt64, false);
    Arc::new(Schema::new(vec![
        Field::new("slice", DataType::UInt32, true),
        count("listed"),
        count("rows"),
        count("errors"),
        Field::new("error_kinds", DataType::Utf8, false),
        count("read_ns"),
        count("decode_ns"),
        count("infer_ns"),
        count("read_bytes"),
        count("batches"),
        Field::new("worker", DataType::Utf8, false),
        Field::new("pid", DataType::UInt32, false),
        count("model_loads"),
        Field::new("engine", DataType::Utf8, false),
        Field::new("model_sha256", DataType::Utf8, false),
    ]))
}

/// A summary row, decoded on the client (and kept as a slice's completion
/// marker, `_staging/slices/slice-NNNN.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TaskSummary {
    pub slice: Option<u32>,
    pub listed: u64,
    pub rows: u64,
    pub errors: u64,
    pub error_kinds: HashMap<String, u64>,
    pub read_ns: u64,
    pub decode_ns: u64,
    pub infer_ns: u64,
    pub read_bytes: u64,
    pub batches: u64,
    pub worker: String,
    pub pid: u32,
    pub model_loads: u64,
    pub engine: String,
    pub model_sha256: String,
}

impl TaskSummary {
    pub fn from_batches(batches: &[RecordBatch]) -> Result<Vec<TaskSummary>> {
        let mut out = Vec::new();
        for batch in batches {
            let u64s = |name: &str| -> Result<&UInt64Array> {
                batch
                    .column_by_name(name)
                    .and_then(|c| c.as_primitive_opt())
                    .ok_or_else(|| DataFusionError::Internal(format!("summary lacks {name}")))
            };
            let strings = |name: &str| -> Result<&StringArray> {
                batch
                    .column_by_name(name)
                    .and_then(|c| c.as_string_opt())
                    .ok_or_else(|| DataFusionError::Internal(format!("summary lacks {name}")))
            };
            let slice = batch.column(0).as_primitive::<UInt32Type>();
            let pid: &UInt32Array = batch.column_by_name("pid").unwrap().as_primitive();
            for row in 0..batch.num_rows() {
                let kinds = strings("error_kinds")?.value(row);
                out.push(TaskSummary {
                    slice: slice.is_valid(row).then(|| slice.value(row)),
                    listed: u64s("listed")?.value(row),
                    rows: u64s("rows")?.value(row),
                    errors: u64s("errors")?.value(row),
                    error_kinds: serde_json::from_str(kinds)
                        .map_err(|e| DataFusionError::Internal(e.to_string()))?,
                    read_ns: u64s("read_ns")?.value(row),
                    decode_ns: u64s("decode_ns")?.value(row),
                    infer_ns: u64s("infer_ns")?.value(row),
                    read_bytes: u64s("read_bytes")?.value(row),
                    batches: u64s("batches")?.value(row),
                    worker: strings("worker")?.value(row).to_string(),
                    pid: pid.value(row),
                    model_loads: u64s("model_loads")?.value(row),
                    engine: strings("engine")?.value(row).to_string(),
                    model_sha256: strings("model_sha256")?.value(row).to_string(),
                });
            }
        }
        Ok(out)
    }
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
            PartKind::Staging => 7,
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
        write!(
            f,
            "PartWriteExec: output={}, kind={:?}",
            self.spec.output, self.spec.kind
        )
    }
}

#[allow(deprecated)] // `with_new_children` is still the one required method
impl ExecutionPlan for PartWriteExec {
    fn name(&self) -> &str {
        "PartWriteExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return internal_err!("PartWriteExec has one input");
        }
        Ok(Arc::new(PartWriteExec::try_new(
            children.remove(0),
            self.spec.clone(),
        )?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let spec = self.spec.clone();
        let location =
            Location::parse(&spec.output).map_err(|e| DataFusionError::External(Box::new(e)))?;
        let metrics = Arc::new(StageMetrics::default());
        let work = verger_engine::with_task_metrics(
            metrics.clone(),
            write_all(input, location, spec.kind, metrics),
        );
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            summary_schema(),
            futures::stream::once(work),
        )))
    }
}

/// The writers of one slice.
struct SliceWriters {
    rows: PartWriter,
    errors: Option<PartWriter>,
}

impl SliceWriters {
    fn new(location: &Location, kind: PartKind, slice: u32) -> Self {
        let part = format!("part-{slice:04}");
        match kind {
            PartKind::Staging => SliceWriters {
                rows: PartWriter::new(
                    location,
                    &staging_dir(),
                    &slice_prefix(slice),
                    staged_features_schema(),
                ),
                errors: Some(PartWriter::new(
                    location,
                    ERRORS_DIR,
                    &part,
                    errors_schema(),
                )),
            },
            PartKind::Features => SliceWriters {
                rows: PartWriter::new(location, FEATURES_DIR, &part, features_schema()),
                errors: None,
            },
        }
    }
}

async fn write_all(
    mut input: SendableRecordBatchStream,
    location: Location,
    kind: PartKind,
    metrics: Arc<StageMetrics>,
) -> Result<RecordBatch> {
    let external = |e: verger_output::OutputError| DataFusionError::External(Box::new(e));
    let mut writers: BTreeMap<u32, SliceWriters> = BTreeMap::new();
    let mut error_kinds: HashMap<String, u64> = HashMap::new();
    let (mut rows, mut errors) = (0u64, 0u64);
    while let Some(batch) = input.next().await {
        let batch = batch?;
        if batch.num_rows() == 0 {
            continue;
        }
        let slice_column = batch.num_columns() - 1;
        let slices = batch.column(slice_column).as_primitive::<UInt32Type>();
        // One seed per task, so a batch is one slice; split anyway when a
        // caller runs several seeds in one partition.
        let mut distinct: Vec<u32> = slices.values().to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        for slice in distinct {
            let part = if slices.values().iter().all(|&s| s == slice) {
                batch.clone()
            } else {
                let mask: datafusion::arrow::array::BooleanArray =
                    slices.iter().map(|s| Some(s == Some(slice))).collect();
                datafusion::arrow::compute::filter_record_batch(&batch, &mask)?
            };
            let writer = writers.entry(slice).or_insert_with(|| {
                let verb = match kind {
                    PartKind::Staging => "featurizing",
                    PartKind::Features => "writing",
                };
                tracing::info!("{verb} slice {slice}");
                SliceWriters::new(&location, kind, slice)
            });
            match kind {
                PartKind::Staging => {
                    let (ok, failed) = verger_output::split_featurized(&part)?;
                    writer.rows.write(&ok).await.map_err(external)?;
                    let failed = verger_output::leading_columns(&failed, errors_schema())?;
                    if let Some(errors_writer) = &mut writer.errors {
                        errors_writer.write(&failed).await.map_err(external)?;
                    }
                    rows += ok.num_rows() as u64;
                    errors += failed.num_rows() as u64;
                    for row in 0..failed.num_rows() {
                        let path = failed.column(0).as_string::<i32>().value(row);
                        let stage = failed.column(2).as_string::<i32>().value(row);
                        let reason = failed.column(3).as_string::<i32>().value(row);
                        tracing::warn!(path, stage, reason, "image skipped");
                        *error_kinds
                            .entry(format!("{stage}: {}", verger_output::reason_kind(reason)))
                            .or_default() += 1;
                    }
                }
                PartKind::Features => {
                    let columns = part.columns()[..4].to_vec();
                    let out = RecordBatch::try_new(features_schema(), columns)?;
                    writer.rows.write(&out).await.map_err(external)?;
                    rows += out.num_rows() as u64;
                }
            }
        }
    }
    let single_slice = writers.len() == 1;
    let mut slice_ids = UInt32Builder::new();
    match writers.keys().next() {
        Some(first) => slice_ids.append_value(*first),
        None => slice_ids.append_null(),
    }
    for (_, writer) in writers {
        writer.rows.finish().await.map_err(external)?;
        if let Some(errors_writer) = writer.errors {
            errors_writer.finish().await.map_err(external)?;
        }
    }
    let listed = match kind {
        PartKind::Staging => metrics.listed.load(Ordering::Relaxed),
        PartKind::Features => rows,
    };
    let times = metrics.snapshot();
    let worker = worker_info();
    let kinds = serde_json::to_string(&error_kinds)
        .map_err(|e| DataFusionError::Internal(e.to_string()))?;
    let one_u64 = |v: u64| Arc::new(UInt64Array::from(vec![v])) as _;
    let one_str = |v: &str| Arc::new(StringArray::from(vec![v.to_string()])) as _;
    let ns = |s: f64| (s * 1e9) as u64;
    let summary = RecordBatch::try_new(
        summary_schema(),
        vec![
            Arc::new(slice_ids.finish()),
            one_u64(listed),
            one_u64(rows),
            one_u64(errors),
            one_str(&kinds),
            one_u64(ns(times.read_s)),
            one_u64(ns(times.decode_resize_s)),
            one_u64(ns(times.inference_s)),
            one_u64(times.read_bytes),
            one_u64(times.batches),
            one_str(&worker.id),
            Arc::new(UInt32Array::from(vec![std::process::id()])),
            one_u64(verger_model::model_loads() as u64),
            one_str(&worker.engine),
            one_str(&worker.model_sha256),
        ],
    )?;
    // A slice's files are all closed now: mark it done, for `--resume`.
    if kind == PartKind::Staging
        && let [marker] = TaskSummary::from_batches(std::slice::from_ref(&summary))?.as_slice()
        && let Some(slice) = marker.slice
        && single_slice
    {
        let text =
            serde_json::to_vec(marker).map_err(|e| DataFusionError::Internal(e.to_string()))?;
        location
            .write(&slice_marker(slice), text)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
    }
    Ok(summary)
}

/// Where a finished phase-1 slice leaves its summary.
pub fn slice_marker(slice: u32) -> String {
    format!("{}/slice-{slice:04}.json", slice_markers_dir())
}

/// `_staging/slices`.
pub fn slice_markers_dir() -> String {
    format!("{}/slices", verger_output::STAGING_DIR)
}
