//! Splitting a job into slices that Ballista can hand out as tasks.
//!
//! Ballista cuts a stage into one task per partition of its *leaf*, and it
//! only knows how to do that for leaves it owns. So the leaf of every verger
//! cluster plan is a tiny in-memory table of seeds, one row `(slice, of)` per
//! partition, and the real sources are interior operators that read their
//! slice number from the seed row, never from the partition index (after
//! Ballista narrows a task's plan, partition 0 of a task may be slice 5):
//!
//! - [`ImageListExec`]: lists the input and keeps the images whose path
//!   hashes to its slice, so each slice is the same set of images in every
//!   attempt, minus the ones the output's checkpoints already hold (an
//!   interrupted run, or rows carried by `--incremental`);
//! - [`StagedReadExec`]: reads back the staged features whose file name
//!   hashes to its slice (every staged file belongs to exactly one slice).

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type};
use datafusion::catalog::Session;
use datafusion::common::{internal_err, plan_err};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::expressions::Column;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
    SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use verger_output::{DoneWork, STAGED_FEATURES_DIR, StagingManifest, staged_features_schema};
use verger_store::{Location, NameFilter};

use crate::plan_node::{external, one_input_plan};

/// The column every sliced operator adds: which slice a row belongs to.
pub const SLICE_COLUMN: &str = "slice";

/// FNV-1a, 64 bits: a hash that is the same in every process and release,
/// which `std`'s hasher does not promise.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The slice a path (or a staged file's name) belongs to, out of `slices`.
pub fn slice_of(path: &str, slices: u32) -> u32 {
    (fnv1a(path.as_bytes()) % u64::from(slices.max(1))) as u32
}

fn seed_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(SLICE_COLUMN, DataType::UInt32, false),
        Field::new("of", DataType::UInt32, false),
    ]))
}

/// `slices` partitions of one row each: the leaf Ballista splits into tasks.
pub fn seeds(slices: u32) -> Result<Arc<dyn ExecutionPlan>> {
    seeds_for(&(0..slices.max(1)).collect::<Vec<_>>(), slices)
}

/// One partition per listed slice (of `slices`): what is left to do.
pub fn seeds_for(which: &[u32], slices: u32) -> Result<Arc<dyn ExecutionPlan>> {
    let schema = seed_schema();
    let partitions = which
        .iter()
        .map(|&slice| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(UInt32Array::from(vec![slice])),
                    Arc::new(UInt32Array::from(vec![slices.max(1)])),
                ],
            )
            .map(|batch| vec![batch])
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(MemorySourceConfig::try_new_exec(&partitions, schema, None)?)
}

/// The `(slice, of)` pairs of a stream of seed batches.
fn seed_rows(batch: &RecordBatch) -> Result<Vec<(u32, u32)>> {
    let (Some(slice), Some(of)) = (
        batch.column_by_name(SLICE_COLUMN),
        batch.column_by_name("of"),
    ) else {
        return internal_err!("a sliced operator's input must be the seeds");
    };
    let (slice, of) = (
        slice.as_primitive::<UInt32Type>(),
        of.as_primitive::<UInt32Type>(),
    );
    Ok((0..batch.num_rows())
        .map(|row| (slice.value(row), of.value(row)))
        .collect())
}

/// The `(slice, of)` of every seed row a task receives; the first is
/// recorded as the task's slice in its metrics.
fn task_slices(
    seeds: SendableRecordBatchStream,
) -> impl futures::Stream<Item = Result<(u32, u32)>> {
    seeds
        .map(|batch| batch.and_then(|b| seed_rows(&b)))
        .map_ok(|rows| futures::stream::iter(rows.into_iter().map(Ok::<_, DataFusionError>)))
        .try_flatten()
        .inspect_ok(|&(slice, _)| {
            verger_datafusion::metrics::record_in_task(|m| {
                let _first_seed_only = m.slice.set(slice);
            });
        })
}

fn with_slice_column(schema: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(SLICE_COLUMN, DataType::UInt32, false));
    Arc::new(Schema::new(fields))
}

fn append_slice(batch: RecordBatch, schema: &SchemaRef, slice: u32) -> Result<RecordBatch> {
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(UInt32Array::from(vec![slice; batch.num_rows()])));
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

fn properties_over(input: &Arc<dyn ExecutionPlan>, schema: SchemaRef) -> Arc<PlanProperties> {
    Arc::new(PlanProperties::new(
        EquivalenceProperties::new(schema),
        input.output_partitioning().clone(),
        EmissionType::Incremental,
        Boundedness::Bounded,
    ))
}

/// What an [`ImageListExec`] needs; it travels in the plan as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageListSpec {
    /// `s3://bucket/prefix` or an absolute folder: never credentials, each
    /// process opens it with its own environment.
    pub root: String,
    pub glob: String,
    pub batch_size: usize,
    /// The run's output: its checkpoints say which images are already done.
    pub output: String,
    /// This run's attempt id: a task of another attempt (an interrupted
    /// run's job still running) stops instead of listing.
    pub attempt: String,
}

/// Seeds in, `images` rows of the seed's slice out (plus `slice`).
#[derive(Debug)]
pub struct ImageListExec {
    input: Arc<dyn ExecutionPlan>,
    spec: ImageListSpec,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl ImageListExec {
    pub fn try_new(input: Arc<dyn ExecutionPlan>, spec: ImageListSpec) -> Result<Self> {
        NameFilter::new(&spec.glob).map_err(external)?;
        let schema = with_slice_column(&verger_datafusion::image_table_schema());
        let properties = properties_over(&input, schema.clone());
        Ok(ImageListExec {
            input,
            spec,
            schema,
            properties,
        })
    }

    pub fn spec(&self) -> &ImageListSpec {
        &self.spec
    }
}

impl DisplayAs for ImageListExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ImageListExec: root={}, glob={}, batch_size={}",
            self.spec.root, self.spec.glob, self.spec.batch_size
        )
    }
}

one_input_plan!(ImageListExec);

impl ImageListExec {
    /// Its `ExecutionPlan::execute`.
    fn stream(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let seeds = self.input.execute(partition, context)?;
        let spec = Arc::new(self.spec.clone());
        let schema = self.schema.clone();
        let input = Location::parse(&spec.root).map_err(external)?;
        let output = Location::parse(&spec.output).map_err(external)?;
        let filter = NameFilter::new(&spec.glob).map_err(external)?;
        let batches = task_slices(seeds)
            .map_ok(move |(slice, of)| {
                let (input, filter, schema, spec) =
                    (input.clone(), filter.clone(), schema.clone(), spec.clone());
                let output = output.clone();
                futures::stream::once(async move {
                    let manifest = StagingManifest::read(&output).await.map_err(external)?;
                    manifest
                        .check_current(&spec.attempt, &output)
                        .map_err(external)?;
                    let done = DoneWork::read_where(&output, &manifest, &|path| {
                        slice_of(path, of) == slice
                    })
                    .await
                    .map_err(external)?;
                    Ok::<_, DataFusionError>(slice_images(
                        input, filter, spec, schema, slice, of, done,
                    ))
                })
                .try_flatten()
            })
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            batches,
        )))
    }
}

/// The images of one slice not in `done`, in batches (the skipped ones
/// counted as listed and skipped in the task's metrics).
fn slice_images(
    input: Location,
    filter: NameFilter,
    spec: Arc<ImageListSpec>,
    schema: SchemaRef,
    slice: u32,
    of: u32,
    done: DoneWork,
) -> impl futures::Stream<Item = Result<RecordBatch>> {
    use std::sync::atomic::Ordering::Relaxed;
    verger_store::list_images(&input, &filter)
        .try_filter(move |image| {
            let keep = slice_of(&image.path, of) == slice && {
                let is_done = done.paths.contains(&image.path);
                if is_done {
                    verger_datafusion::metrics::record_in_task(|m| {
                        m.listed.fetch_add(1, Relaxed);
                        m.skipped.fetch_add(1, Relaxed);
                    });
                }
                !is_done
            };
            futures::future::ready(keep)
        })
        .chunks(spec.batch_size.max(1))
        .map(move |chunk| {
            let images = chunk
                .into_iter()
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(external)?;
            verger_datafusion::metrics::record_in_task(|m| {
                m.listed.fetch_add(images.len() as u64, Relaxed);
            });
            let batch = verger_datafusion::image_table::images_batch(&images)?;
            append_slice(batch, &schema, slice)
        })
}

/// What a [`StagedReadExec`] needs; it travels in the plan as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagedReadSpec {
    /// The run's output location (`s3://…` or a folder).
    pub output: String,
}

/// The file-name prefix of one slice's staged parts in one run attempt.
pub fn slice_prefix(slice: u32, attempt: &str) -> String {
    format!("slice-{slice:04}-{attempt}")
}

/// Seeds in, the staged rows of the files that hash to the seed's slice
/// out (plus `slice`).
#[derive(Debug)]
pub struct StagedReadExec {
    input: Arc<dyn ExecutionPlan>,
    spec: StagedReadSpec,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl StagedReadExec {
    pub fn try_new(input: Arc<dyn ExecutionPlan>, spec: StagedReadSpec) -> Result<Self> {
        let schema = with_slice_column(&staged_features_schema());
        let properties = properties_over(&input, schema.clone());
        Ok(StagedReadExec {
            input,
            spec,
            schema,
            properties,
        })
    }

    pub fn spec(&self) -> &StagedReadSpec {
        &self.spec
    }
}

impl DisplayAs for StagedReadExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "StagedReadExec: output={}", self.spec.output)
    }
}

one_input_plan!(StagedReadExec);

impl StagedReadExec {
    /// Its `ExecutionPlan::execute`.
    fn stream(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let seeds = self.input.execute(partition, context)?;
        let schema = self.schema.clone();
        let location = Location::parse(&self.spec.output).map_err(external)?;
        let batches = task_slices(seeds)
            .map_ok(move |(slice, of)| {
                let location = location.clone();
                let schema = schema.clone();
                futures::stream::once(staged_files(location.clone(), slice, of))
                    .map_ok(move |files| {
                        futures::stream::iter(files.into_iter().map(Ok::<_, DataFusionError>))
                            .map_ok({
                                let location = location.clone();
                                move |file| read_parquet(location.clone(), file)
                            })
                            .try_flatten()
                    })
                    .try_flatten()
                    .and_then({
                        let schema = schema.clone();
                        move |batch| futures::future::ready(append_slice(batch, &schema, slice))
                    })
            })
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            batches,
        )))
    }
}

/// The staged parts the run trusts that belong to one slice (by the hash of
/// their file name, whoever wrote them), in name order.
async fn staged_files(
    location: Location,
    slice: u32,
    of: u32,
) -> Result<Vec<object_store::path::Path>> {
    let manifest = StagingManifest::read(&location).await.map_err(external)?;
    let files = manifest
        .parts(&location, STAGED_FEATURES_DIR)
        .await
        .map_err(external)?;
    Ok(files
        .into_iter()
        .filter(|key| {
            key.filename()
                .is_some_and(|name| slice_of(name, of) == slice)
        })
        .collect())
}

/// Streams one staged part's batches, with the staged schema.
fn read_parquet(
    location: Location,
    key: object_store::path::Path,
) -> impl futures::Stream<Item = Result<RecordBatch>> {
    futures::stream::once(async move {
        let schema = staged_features_schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let stream = verger_output::read_columns(&location, &key, &names)
            .await
            .map_err(external)?;
        Ok::<_, DataFusionError>(stream.map(move |batch| {
            let batch = batch.map_err(external)?;
            Ok(RecordBatch::try_new(
                staged_features_schema(),
                batch.columns().to_vec(),
            )?)
        }))
    })
    .try_flatten()
}

/// A table that exists only on the client, to plan with DataFrames: its scan
/// is `seeds → <sliced source>`, and only that physical plan travels.
#[derive(Debug)]
pub struct SlicedTable {
    schema: SchemaRef,
    slices: u32,
    /// Only these slices (all when `None`).
    only: Option<Vec<u32>>,
    source: SlicedSource,
}

#[derive(Debug, Clone)]
enum SlicedSource {
    Images(ImageListSpec),
    Staged(StagedReadSpec),
}

impl SlicedTable {
    pub fn images(spec: ImageListSpec, slices: u32) -> Self {
        SlicedTable {
            schema: with_slice_column(&verger_datafusion::image_table_schema()),
            slices,
            only: None,
            source: SlicedSource::Images(spec),
        }
    }

    /// Restricts the table to some slices (the ones an interrupted run left).
    pub fn only(mut self, slices: Vec<u32>) -> Self {
        self.only = Some(slices);
        self
    }

    pub fn staged(spec: StagedReadSpec, slices: u32) -> Self {
        SlicedTable {
            schema: with_slice_column(&staged_features_schema()),
            slices,
            only: None,
            source: SlicedSource::Staged(spec),
        }
    }
}

#[async_trait::async_trait]
impl TableProvider for SlicedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !filters.is_empty() {
            return plan_err!("sliced tables take no filters");
        }
        let seeds = match &self.only {
            Some(which) => seeds_for(which, self.slices)?,
            None => seeds(self.slices)?,
        };
        let source: Arc<dyn ExecutionPlan> = match &self.source {
            SlicedSource::Images(spec) => Arc::new(ImageListExec::try_new(seeds, spec.clone())?),
            SlicedSource::Staged(spec) => Arc::new(StagedReadExec::try_new(seeds, spec.clone())?),
        };
        let Some(projection) = projection else {
            return Ok(source);
        };
        let schema = source.schema();
        let columns: Vec<(Arc<dyn PhysicalExpr>, String)> = projection
            .iter()
            .map(|&i| {
                let name = schema.field(i).name().clone();
                (
                    Arc::new(Column::new(&name, i)) as Arc<dyn PhysicalExpr>,
                    name,
                )
            })
            .collect();
        Ok(Arc::new(ProjectionExec::try_new(columns, source)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn every_key_lands_in_exactly_one_slice() {
        let slices = 8;
        let mut counts = vec![0; slices as usize];
        for i in 0..4000 {
            let slice = slice_of(
                &format!("s3://b/Training/apple_{}/r0_{i}.jpg", i % 24),
                slices,
            );
            counts[slice as usize] += 1;
        }
        assert_eq!(counts.iter().sum::<i32>(), 4000);
        // Roughly even: no slice gets less than half its share.
        assert!(counts.iter().all(|&c| c > 250), "{counts:?}");
    }
}
