//! The listing of an input location as a streaming table.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::{Int64Builder, RecordBatch, StringBuilder, UInt64Builder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use futures::StreamExt;
use verger_store::{ListedImage, Location, NameFilter, list_images};

use crate::StageMetrics;

pub fn image_table_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("size", DataType::UInt64, false),
        Field::new("last_modified_ms", DataType::Int64, false),
        Field::new("e_tag", DataType::Utf8, true),
    ]))
}

/// `images`: every file under a location whose name matches the filter, one
/// row each, streamed in batches of `batch_size` (the inference batch, so a
/// batch of this table is a unit of work for `featurize`).
#[derive(Debug, Clone)]
pub struct ImageTable {
    location: Location,
    filter: NameFilter,
    batch_size: usize,
    metrics: Arc<StageMetrics>,
    /// Paths already done (by an interrupted run): listed, counted, not emitted.
    skip: Option<Arc<HashSet<String>>>,
}

impl ImageTable {
    pub fn new(
        location: Location,
        filter: NameFilter,
        batch_size: usize,
        metrics: Arc<StageMetrics>,
    ) -> Self {
        ImageTable {
            location,
            filter,
            batch_size: batch_size.max(1),
            metrics,
            skip: None,
        }
    }

    /// Leaves out the images whose path is in `done` (they are still counted
    /// as listed, and as skipped).
    pub fn skipping(mut self, done: Arc<HashSet<String>>) -> Self {
        self.skip = Some(done);
        self
    }

    pub fn into_table(self) -> datafusion::error::Result<StreamingTable> {
        StreamingTable::try_new(image_table_schema(), vec![Arc::new(self)])
    }
}

impl PartitionStream for ImageTable {
    fn schema(&self) -> &SchemaRef {
        static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
        SCHEMA.get_or_init(image_table_schema)
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let metrics = self.metrics.clone();
        let done_metrics = self.metrics.clone();
        let skip = self.skip.clone();
        let skip_metrics = self.metrics.clone();
        let batches = list_images(&self.location, &self.filter)
            .filter(move |image| {
                let done = match (&skip, image) {
                    (Some(skip), Ok(image)) => skip.contains(&image.path),
                    _ => false,
                };
                if done {
                    skip_metrics.listed.fetch_add(1, Ordering::Relaxed);
                    skip_metrics.skipped.fetch_add(1, Ordering::Relaxed);
                }
                futures::future::ready(!done)
            })
            .chunks(self.batch_size)
            .map(move |chunk| {
                let images: Vec<ListedImage> = chunk
                    .into_iter()
                    .collect::<Result<_, _>>()
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                metrics
                    .listed
                    .fetch_add(images.len() as u64, Ordering::Relaxed);
                images_batch(&images)
            });
        let finish = futures::stream::once(async move {
            done_metrics.listing_done.store(true, Ordering::Relaxed);
        })
        .filter_map(|()| futures::future::ready(None));
        Box::pin(RecordBatchStreamAdapter::new(
            image_table_schema(),
            batches.chain(finish),
        ))
    }
}

/// The rows of `images`, in the [`image_table_schema`].
pub fn images_batch(images: &[ListedImage]) -> datafusion::error::Result<RecordBatch> {
    let mut path = StringBuilder::new();
    let mut label = StringBuilder::new();
    let mut key = StringBuilder::new();
    let mut size = UInt64Builder::new();
    let mut modified = Int64Builder::new();
    let mut e_tag = StringBuilder::new();
    for image in images {
        path.append_value(&image.path);
        label.append_value(&image.label);
        key.append_value(image.key.as_ref());
        size.append_value(image.size);
        modified.append_value(image.last_modified_ms);
        e_tag.append_option(image.e_tag.as_deref());
    }
    Ok(RecordBatch::try_new(
        image_table_schema(),
        vec![
            Arc::new(path.finish()),
            Arc::new(label.finish()),
            Arc::new(key.finish()),
            Arc::new(size.finish()),
            Arc::new(modified.finish()),
            Arc::new(e_tag.finish()),
        ],
    )?)
}
