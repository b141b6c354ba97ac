//! `featurize(root, key, options)`: a whole batch of images through read →
//! decode → resize → model, one output row per input row, failures included.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float32Builder, ListBuilder, StringBuilder, StructArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::{ScalarValue, exec_err};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use verger_image::views::{View, ViewSet};
use verger_image::{ImageError, PreprocessConfig, TENSOR_LEN};
use verger_model::{FEATURE_DIM, SharedModel};
use verger_output::FailureKind;
use verger_store::{Location, ObjectKey, StoreError};

use crate::StageMetrics;
use crate::metrics::record;

/// How many objects of one batch are fetched at once.
const READ_CONCURRENCY: usize = 16;

/// What a run asks of `featurize`, as the JSON literal of its third
/// argument: it travels in the plan, so an executor featurizes exactly as
/// the client asked (never with settings of its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturizeOptions {
    /// Images whose header claims more pixels are refused before decoding.
    pub max_pixels: u64,
    /// The sha256 of the model the run was started with: a process holding
    /// another model refuses to featurize (empty: no check).
    pub model_sha256: String,
    /// `--views`: also featurize these views of every photo (marked rows
    /// of `views/`, never mixed into `features/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub views: Option<ViewSet>,
}

impl FeaturizeOptions {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("options always serialise")
    }

    fn preprocess(&self) -> PreprocessConfig {
        PreprocessConfig {
            max_pixels: self.max_pixels,
            ..PreprocessConfig::default()
        }
    }
}

/// `struct<features: list<float32>, error_stage: utf8, error_kind: utf8,
/// error_reason: utf8, views: list<float32>>`: exactly one of `features`
/// and `error_*` is set on each row; `error_kind` is a [`FailureKind`];
/// `views` (every view's features back to back) only with `--views`.
pub fn featurize_result_type() -> DataType {
    DataType::Struct(result_fields())
}

fn result_fields() -> Fields {
    Fields::from(vec![
        Field::new(
            "features",
            DataType::List(Arc::new(Field::new_list_field(DataType::Float32, true))),
            true,
        ),
        Field::new("error_stage", DataType::Utf8, true),
        Field::new("error_kind", DataType::Utf8, true),
        Field::new("error_reason", DataType::Utf8, true),
        Field::new(
            "views",
            DataType::List(Arc::new(Field::new_list_field(DataType::Float32, true))),
            true,
        ),
    ])
}

/// Why one image has no features: its kind, and a reason for people.
pub type Failure = (FailureKind, String);

/// The failure kind of an image that could not be decoded.
pub fn image_failure(error: &ImageError) -> FailureKind {
    match error {
        ImageError::Empty => FailureKind::Empty,
        ImageError::UnknownFormat => FailureKind::NotAnImage,
        ImageError::Decode(_) => FailureKind::Corrupt,
        ImageError::TooLarge { .. } | ImageError::OverMemoryLimit { .. } => FailureKind::TooLarge,
        ImageError::Unsupported(_) => FailureKind::Unsupported,
    }
}

/// The failure kind and reason of an object that could not be read.
pub fn read_failure(error: StoreError) -> Failure {
    match error {
        StoreError::NotFound { .. } => (
            FailureKind::NotFound,
            "object not found (deleted after listing?)".to_string(),
        ),
        StoreError::Access { reason, .. } => (FailureKind::ReadFailed, reason),
        other => (FailureKind::ReadFailed, other.to_string()),
    }
}

/// What `featurize` needs in a process: the model (loaded once), the
/// stores it reads from, and the metrics it feeds.
#[derive(Debug)]
pub struct FeaturizeContext {
    pub model: Arc<SharedModel>,
    pub metrics: Arc<StageMetrics>,
    stores: Mutex<HashMap<String, Location>>,
}

impl FeaturizeContext {
    pub fn new(model: Arc<SharedModel>, metrics: Arc<StageMetrics>) -> Self {
        FeaturizeContext {
            model,
            metrics,
            stores: Mutex::new(HashMap::new()),
        }
    }

    /// Lets a caller hand over the location it already opened.
    pub fn add_location(&self, location: Location) {
        self.stores
            .lock()
            .expect("store cache lock")
            .insert(location.display_root().to_string(), location);
    }

    fn location(&self, root: &str) -> Result<Location> {
        let mut stores = self.stores.lock().expect("store cache lock");
        if let Some(location) = stores.get(root) {
            return Ok(location.clone());
        }
        let location = Location::parse(root).map_err(|e| DataFusionError::External(Box::new(e)))?;
        stores.insert(root.to_string(), location.clone());
        Ok(location)
    }

    /// Refuses options made for another model than the one loaded here.
    fn check_model(&self, options: &FeaturizeOptions) -> Result<()> {
        let here = &self.model.file().sha256;
        if !options.model_sha256.is_empty() && &options.model_sha256 != here {
            return exec_err!(
                "this process (pid {}) holds model {} ({}) but the run was started with model                  {}: every executor must load the same model file as the client's --model",
                std::process::id(),
                short(here),
                self.model.file().path.display(),
                short(&options.model_sha256)
            );
        }
        Ok(())
    }

    /// The plain-Rust heart of the function: bytes (or a read failure) in,
    /// features (or a failure) out, in the same order.
    ///
    /// Decoding and inference overlap: scoped threads decode the batch
    /// chunk by chunk (chunk `i` on thread `i % decoders`) while this one
    /// runs the model on the chunks in order. On large photos decoding is
    /// the bulk of the work, so a batch gets up to one decode thread per
    /// core that the process's other batches are not using
    /// ([`DecoderPermit`]): all of them when it is the only batch in flight
    /// (the last one of a run). With `views`, each photo is decoded once and
    /// every view goes through the model; its features are those of the
    /// first view (the whole photo).
    pub fn featurize_batch(
        &self,
        inputs: Vec<std::result::Result<bytes::Bytes, Failure>>,
        preprocess: &PreprocessConfig,
        views: Option<ViewSet>,
    ) -> Vec<std::result::Result<Featurized, Failure>> {
        let per_image = views.map_or(1, |v| v.views().len());
        let chunks = inputs.len().div_ceil((CHUNK_TENSORS / per_image).max(1));
        let permit = DecoderPermit::acquire(&DECODERS_RUNNING, chunks, cores());
        self.featurize_with_decoders(inputs, preprocess, views, permit.granted)
    }

    /// [`Self::featurize_batch`] with at most `decoders` decode threads.
    fn featurize_with_decoders(
        &self,
        inputs: Vec<std::result::Result<bytes::Bytes, Failure>>,
        preprocess: &PreprocessConfig,
        views: Option<ViewSet>,
        decoders: usize,
    ) -> Vec<std::result::Result<Featurized, Failure>> {
        let views = views.map_or_else(|| vec![View::WHOLE], ViewSet::views);
        let per_image = views.len();
        let images_per_chunk = (CHUNK_TENSORS / per_image).max(1);
        let chunk_count = inputs.len().div_ceil(images_per_chunk);
        let decoders = decoders.min(chunk_count).max(1);
        // Chunk `i` goes to decoder `i % decoders`, which is where it is
        // received from, so the results keep the input order.
        let mut assigned: Vec<Vec<Vec<_>>> = (0..decoders).map(|_| Vec::new()).collect();
        let mut inputs = inputs.into_iter().peekable();
        let mut index = 0;
        while inputs.peek().is_some() {
            assigned[index % decoders].push(inputs.by_ref().take(images_per_chunk).collect());
            index += 1;
        }
        let mut results = Vec::new();
        std::thread::scope(|scope| {
            let views = &views;
            let (receivers, recyclers): (Vec<_>, Vec<_>) = assigned
                .into_iter()
                .map(|chunks| {
                    // One decoded chunk per decoder waits while it decodes
                    // its next one.
                    let (sender, receiver) = std::sync::mpsc::sync_channel::<DecodedChunk>(1);
                    // Tensors the model is done with come back to be
                    // written over: no zero-filling and no fresh pages for
                    // every chunk.
                    let (recycler, recycled) = std::sync::mpsc::channel::<Vec<f32>>();
                    scope.spawn(move || {
                        for chunk in chunks {
                            let buffer = recycled.try_recv().unwrap_or_default();
                            if sender
                                .send(self.decode_chunk(chunk, preprocess, views, buffer))
                                .is_err()
                            {
                                return;
                            }
                        }
                    });
                    (receiver, recycler)
                })
                .unzip();
            for i in 0..chunk_count {
                // A decoder that panicked drops its sender; the scope then
                // re-raises its panic.
                let Ok(chunk) = receivers[i % decoders].recv() else {
                    break;
                };
                let (featurized, tensor) = self.infer_chunk(chunk, per_image);
                results.extend(featurized);
                // A decoder that has finished its chunks no longer listens.
                let _ = recyclers[i % decoders].send(tensor);
            }
        });
        results
    }

    /// Decodes `inputs` into `buffer` (a tensor the model is done with, or
    /// an empty one), written over in place: its old values are never read.
    fn decode_chunk(
        &self,
        inputs: Vec<std::result::Result<bytes::Bytes, Failure>>,
        preprocess: &PreprocessConfig,
        views: &[View],
        buffer: Vec<f32>,
    ) -> DecodedChunk {
        let started = Instant::now();
        let per_image = views.len() * TENSOR_LEN;
        let mut tensor = buffer;
        let needed = inputs.len() * per_image;
        if tensor.len() < needed {
            tensor.resize(needed, 0.0);
        }
        let mut outcomes = Vec::with_capacity(inputs.len());
        let mut slots = 0;
        for input in inputs {
            let outcome = input.and_then(|bytes| {
                let out = &mut tensor[slots * per_image..(slots + 1) * per_image];
                // One view (the whole photo) is exactly `preprocess_into`.
                // A failed image's partial writes are left in its slot, for
                // the next image (or the truncation below) to drop.
                match verger_image::views::preprocess_views_into(&bytes, preprocess, views, out) {
                    Ok(()) => {
                        slots += 1;
                        Ok(slots - 1)
                    }
                    Err(e) => Err((image_failure(&e), e.to_string())),
                }
            });
            outcomes.push(outcome);
        }
        tensor.truncate(slots * per_image);
        let decode_time = started.elapsed();
        record(&self.metrics, |m| {
            StageMetrics::add(&m.decode_ns, decode_time)
        });
        DecodedChunk {
            tensor,
            outcomes,
            images: slots,
        }
    }

    /// Runs the model on a decoded chunk; gives back each image's result and
    /// the chunk's tensor, for its decoder to write the next chunk into.
    fn infer_chunk(
        &self,
        chunk: DecodedChunk,
        per_image: usize,
    ) -> (Vec<std::result::Result<Featurized, Failure>>, Vec<f32>) {
        let (features, inference_time) = self
            .model
            .features_timed(&chunk.tensor, chunk.images * per_image);
        record(&self.metrics, |m| {
            StageMetrics::add(&m.infer_ns, inference_time);
            m.batches.fetch_add(1, Ordering::Relaxed);
        });
        let width = per_image * FEATURE_DIM;
        let featurized = chunk
            .outcomes
            .into_iter()
            .map(|outcome| {
                let slot = outcome?;
                match &features {
                    Ok(all) => {
                        let mine = &all[slot * width..(slot + 1) * width];
                        Ok(Featurized {
                            features: mine[..FEATURE_DIM].to_vec(),
                            views: (per_image > 1).then(|| mine.to_vec()),
                        })
                    }
                    Err(e) => Err((FailureKind::InferenceFailed, e.to_string())),
                }
            })
            .collect();
        (featurized, chunk.tensor)
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Decode threads running in this process, over all its batches.
static DECODERS_RUNNING: AtomicUsize = AtomicUsize::new(0);

/// The decode threads of one batch: always one, and more only while the
/// process runs fewer than one per core. Concurrent batches (one per
/// partition or task) then share the cores, and the decoded chunks waiting
/// in memory stay about one per core, while a batch running alone gets
/// every core. Inference runs on its own threads, whose idle ones sleep
/// rather than spin, so decoders and model share the cores.
struct DecoderPermit<'a> {
    running: &'a AtomicUsize,
    granted: usize,
}

impl<'a> DecoderPermit<'a> {
    fn acquire(running: &'a AtomicUsize, wanted: usize, cores: usize) -> Self {
        let mut granted = 1;
        // The closure always returns Some, so the update cannot fail.
        let _ = running.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
            granted = wanted.min(cores.saturating_sub(now)).max(1);
            Some(now + granted)
        });
        DecoderPermit { running, granted }
    }
}

impl Drop for DecoderPermit<'_> {
    fn drop(&mut self) {
        self.running.fetch_sub(self.granted, Ordering::AcqRel);
    }
}

/// Tensors per inference call inside one batch: the engines' fastest batch,
/// and small enough that decoding the next chunk overlaps the model's work
/// on this one.
const CHUNK_TENSORS: usize = verger_model::PREFERRED_BATCH;

/// One chunk of a batch, decoded: the tensors of the images that decoded,
/// and each image's slot among them (or why it failed).
struct DecodedChunk {
    tensor: Vec<f32>,
    outcomes: Vec<std::result::Result<usize, Failure>>,
    images: usize,
}

/// What `featurize` makes of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Featurized {
    /// The whole photo's features.
    pub features: Vec<f32>,
    /// With views: every view's features, back to back in the view set's
    /// order (the first is `features`).
    pub views: Option<Vec<f32>>,
}

fn short(sha: &str) -> &str {
    &sha[..12.min(sha.len())]
}

#[derive(Debug)]
pub struct FeaturizeUdf {
    signature: Signature,
    /// `None` in processes that only plan (a cluster client or scheduler):
    /// they need the function's name and types, never its model.
    context: Option<Arc<FeaturizeContext>>,
}

impl FeaturizeUdf {
    pub const NAME: &'static str = "featurize";

    fn signature() -> Signature {
        Signature::exact(
            vec![DataType::Utf8, DataType::Utf8, DataType::Utf8],
            Volatility::Volatile,
        )
    }

    pub fn new(context: Arc<FeaturizeContext>) -> Self {
        FeaturizeUdf {
            signature: Self::signature(),
            context: Some(context),
        }
    }

    /// The function as a planner sees it; calling it is an error.
    pub fn planning_only() -> Self {
        FeaturizeUdf {
            signature: Self::signature(),
            context: None,
        }
    }
}

impl PartialEq for FeaturizeUdf {
    fn eq(&self, other: &Self) -> bool {
        match (&self.context, &other.context) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}
impl Eq for FeaturizeUdf {}
impl Hash for FeaturizeUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Self::NAME.hash(state);
    }
}

/// The value of a constant string argument.
fn constant(arg: &ColumnarValue, what: &str) -> Result<String> {
    match arg {
        ColumnarValue::Scalar(ScalarValue::Utf8(Some(text))) => Ok(text.clone()),
        ColumnarValue::Array(array) if !array.is_empty() && array.is_valid(0) => {
            Ok(array.as_string::<i32>().value(0).to_string())
        }
        _ => exec_err!("featurize: {what} must be a non-null string"),
    }
}

impl ScalarUDFImpl for FeaturizeUdf {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(featurize_result_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let Some(context) = &self.context else {
            return exec_err!(
                "featurize was called in a process without a model: it runs on executors only"
            );
        };
        let [root, keys, options] = args.args.as_slice() else {
            return exec_err!("featurize(root, key, options) takes three arguments");
        };
        let root = constant(root, "the root location")?;
        let options: FeaturizeOptions = serde_json::from_str(&constant(options, "options")?)
            .map_err(|e| DataFusionError::Execution(format!("featurize options: {e}")))?;
        context.check_model(&options)?;
        let keys = keys.to_array(args.number_rows)?;
        let keys = keys.as_string::<i32>();
        let location = context.location(&root)?;

        let read_started = Instant::now();
        let reads = read_all(&location, keys)?;
        let read_time = read_started.elapsed();
        let read_bytes: usize = reads.iter().flatten().map(|b| b.len()).sum();
        record(&context.metrics, |m| {
            StageMetrics::add(&m.read_ns, read_time);
            m.read_bytes.fetch_add(read_bytes as u64, Ordering::Relaxed);
        });

        let results = context.featurize_batch(reads, &options.preprocess(), options.views);
        let failed = results.iter().filter(|r| r.is_err()).count() as u64;
        let featurized = results.len() as u64 - failed;
        record(&context.metrics, |m| {
            m.failed.fetch_add(failed, Ordering::Relaxed);
            m.featurized.fetch_add(featurized, Ordering::Relaxed);
        });
        Ok(ColumnarValue::Array(to_struct(results)))
    }
}

/// Fetches every key of the batch, concurrently. A failed read is a row
/// outcome, not a query failure: the store's client already retried it.
fn read_all(
    location: &Location,
    keys: &datafusion::arrow::array::StringArray,
) -> Result<Vec<std::result::Result<bytes::Bytes, Failure>>> {
    // The table holds keys in their stored (already encoded) form: parse,
    // never re-encode, or `%` and non-ASCII names would no longer match.
    let keys: Vec<std::result::Result<ObjectKey, Failure>> = keys
        .iter()
        .map(|k| {
            ObjectKey::parse(k.unwrap_or_default())
                .map_err(|e| (FailureKind::ReadFailed, format!("invalid object key: {e}")))
        })
        .collect();
    let fetch = async {
        futures::stream::iter(keys.iter().map(|key| async move {
            let key = key.as_ref().map_err(Clone::clone)?;
            location.read(key).await.map_err(read_failure)
        }))
        .buffered(READ_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
    };
    // DataFusion calls scalar functions synchronously from its async tasks;
    // `block_in_place` lets this worker wait on I/O without stalling the runtime.
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|e| DataFusionError::Execution(format!("featurize needs a tokio runtime: {e}")))?;
    Ok(tokio::task::block_in_place(|| handle.block_on(fetch)))
}

fn to_struct(results: Vec<std::result::Result<Featurized, Failure>>) -> ArrayRef {
    let mut features = ListBuilder::with_capacity(
        Float32Builder::with_capacity(results.len() * FEATURE_DIM),
        results.len(),
    );
    let mut views = ListBuilder::new(Float32Builder::new());
    let mut stages = StringBuilder::new();
    let mut kinds = StringBuilder::new();
    let mut reasons = StringBuilder::new();
    for result in &results {
        match result {
            Ok(featurized) => {
                features.values().append_slice(&featurized.features);
                features.append(true);
                match &featurized.views {
                    Some(all) => {
                        views.values().append_slice(all);
                        views.append(true);
                    }
                    None => views.append(false),
                }
                stages.append_null();
                kinds.append_null();
                reasons.append_null();
            }
            Err((kind, reason)) => {
                features.append(false);
                views.append(false);
                stages.append_value(kind.stage().as_str());
                kinds.append_value(kind.as_str());
                reasons.append_value(reason);
            }
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(features.finish()),
        Arc::new(stages.finish()),
        Arc::new(kinds.finish()),
        Arc::new(reasons.finish()),
        Arc::new(views.finish()),
    ];
    Arc::new(StructArray::new(result_fields(), columns, None))
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::ListArray;
    use datafusion::execution::FunctionRegistry;
    use datafusion::prelude::{SessionContext, col, lit};
    use verger_model::{EngineChoice, EngineConfig};
    use verger_store::NameFilter;

    use super::*;
    use crate::ImageTable;

    fn sample_image(label: &str) -> std::path::PathBuf {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/datasets/fruits360-sample/Training")
            .join(label);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| {
                panic!(
                    "the shared sample must sit beside the repo ({}): {e}",
                    dir.display()
                )
            })
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files.remove(0)
    }

    /// Listing and reading are separate moments: an object can vanish in
    /// between. It must become a `read` error row, and its neighbours features.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_object_deleted_after_listing_becomes_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        for (label, name) in [("Banana", "kept.jpg"), ("Lemon", "deleted.jpg")] {
            std::fs::create_dir_all(dir.path().join(label)).unwrap();
            std::fs::copy(sample_image(label), dir.path().join(label).join(name)).unwrap();
        }
        let location = Location::parse(dir.path().to_str().unwrap()).unwrap();
        let metrics = Arc::new(StageMetrics::default());
        let context = Arc::new(FeaturizeContext::new(load_model(), metrics.clone()));
        let ctx = SessionContext::new();
        crate::register_functions(&ctx, context);
        let table = ImageTable::new(
            location.clone(),
            NameFilter::new("*.jpg").unwrap(),
            8,
            metrics.clone(),
        );
        ctx.register_table("images", Arc::new(table.into_table().unwrap()))
            .unwrap();

        let listed = ctx.table("images").await.unwrap().collect().await.unwrap();
        assert_eq!(listed.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        std::fs::remove_file(dir.path().join("Lemon/deleted.jpg")).unwrap();

        ctx.register_batch(
            "listed",
            datafusion::arrow::compute::concat_batches(&listed[0].schema(), &listed).unwrap(),
        )
        .unwrap();
        let featurize = ctx.udf(FeaturizeUdf::NAME).unwrap();
        let out = ctx
            .table("listed")
            .await
            .unwrap()
            .select(vec![
                col("path"),
                featurize
                    .call(vec![
                        lit(location.display_root()),
                        col("key"),
                        lit(FeaturizeOptions {
                            max_pixels: 64_000_000,
                            model_sha256: String::new(),
                            views: None,
                        }
                        .to_json()),
                    ])
                    .alias("r"),
            ])
            .unwrap()
            .collect()
            .await
            .unwrap();
        let batch = datafusion::arrow::compute::concat_batches(&out[0].schema(), &out).unwrap();
        let paths = batch.column(0).as_string::<i32>();
        let result = batch.column(1).as_struct();
        let features = result
            .column(0)
            .as_any()
            .downcast_ref::<ListArray>()
            .unwrap();
        let stages = result.column(1).as_string::<i32>();
        let reasons = result.column(3).as_string::<i32>();
        for row in 0..batch.num_rows() {
            if paths.value(row).ends_with("deleted.jpg") {
                assert!(features.is_null(row));
                assert_eq!(stages.value(row), "read");
                assert_eq!(
                    result.column(2).as_string::<i32>().value(row),
                    FailureKind::NotFound.as_str()
                );
                assert!(
                    reasons.value(row).contains("not found"),
                    "{}",
                    reasons.value(row)
                );
            } else {
                assert!(stages.is_null(row), "{}", reasons.value(row));
                assert_eq!(features.value(row).len(), FEATURE_DIM);
            }
        }
        assert_eq!(metrics.failed.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.featurized.load(Ordering::Relaxed), 1);
    }

    fn load_model() -> Arc<SharedModel> {
        let model_file =
            verger_model::ModelFile::locate(None, verger_model::Precision::Fp32).unwrap();
        let config = EngineConfig {
            choice: EngineChoice::Auto,
            threads: 2,
            // Two sessions: concurrent batches in these tests share them.
            sessions: 2,
            ort_library: None,
            batch_size: 8,
        };
        SharedModel::load(model_file, &config).unwrap()
    }

    /// A recycled tensor's old values never reach the model: a buffer of
    /// NaNs, longer than the chunk, gives the tensor an empty one gives,
    /// with a failed image between two good ones.
    #[test]
    fn a_recycled_tensor_is_written_over_entirely() {
        let context = FeaturizeContext::new(load_model(), Arc::new(StageMetrics::default()));
        let photo: bytes::Bytes = std::fs::read(sample_image("Banana")).unwrap().into();
        let inputs = || {
            vec![
                Ok(photo.clone()),
                Ok(bytes::Bytes::from_static(b"not an image")),
                Ok(photo.clone()),
            ]
        };
        let preprocess = PreprocessConfig::default();
        let views = [View::WHOLE];
        let fresh = context.decode_chunk(inputs(), &preprocess, &views, Vec::new());
        let garbage = vec![f32::NAN; 5 * TENSOR_LEN];
        let reused = context.decode_chunk(inputs(), &preprocess, &views, garbage);
        assert_eq!(fresh.images, 2);
        assert_eq!(reused.images, 2);
        assert_eq!(reused.tensor.len(), 2 * TENSOR_LEN);
        assert!(reused.tensor.iter().all(|v| v.is_finite()));
        assert_eq!(fresh.tensor, reused.tensor);
    }

    /// Several decode threads, chunks handed out round-robin: every result
    /// must still land on its own input's row, failures included, with the
    /// features one decode thread gives.
    #[test]
    fn results_keep_input_order_whatever_the_decode_threads() {
        let context = FeaturizeContext::new(load_model(), Arc::new(StageMetrics::default()));
        let labels = ["Banana", "Lemon", "Kiwi", "Strawberry"];
        let photos: Vec<bytes::Bytes> = labels
            .iter()
            .map(|label| std::fs::read(sample_image(label)).unwrap().into())
            .collect();
        // 19 chunks of 2: a read failure and a non-image at odd places.
        let inputs = || -> Vec<std::result::Result<bytes::Bytes, Failure>> {
            (0..37)
                .map(|i| match i {
                    9 => Err((FailureKind::NotFound, "gone".to_string())),
                    22 => Ok(bytes::Bytes::from_static(b"not an image at all")),
                    _ => Ok(photos[i % photos.len()].clone()),
                })
                .collect()
        };
        let preprocess = PreprocessConfig::default();
        let one = context.featurize_with_decoders(inputs(), &preprocess, None, 1);
        let three = context.featurize_with_decoders(inputs(), &preprocess, None, 3);
        assert_eq!(one.len(), 37);
        assert_eq!(three.len(), 37);
        for (i, (a, b)) in one.iter().zip(&three).enumerate() {
            match (i, a, b) {
                (9, Err(a), Err(b)) => {
                    assert_eq!((a.0, b.0), (FailureKind::NotFound, FailureKind::NotFound))
                }
                (22, Err(a), Err(b)) => {
                    assert_eq!(
                        (a.0, b.0),
                        (FailureKind::NotAnImage, FailureKind::NotAnImage)
                    )
                }
                (_, Ok(a), Ok(b)) => {
                    assert!(max_diff(&a.features, &b.features) < 1e-4, "row {i}");
                    // Row i is photo i % 4: a row shifted by one would show
                    // another photo.
                    let own = &one[i % photos.len()].as_ref().unwrap().features;
                    assert!(max_diff(&b.features, own) < 1e-3, "row {i}");
                }
                _ => panic!("row {i}: one decoder gave {a:?}, three gave {b:?}"),
            }
        }
        // The photos differ, so the check above can fail.
        let features = |i: usize| &one[i].as_ref().unwrap().features;
        assert!(max_diff(features(0), features(1)) > 1e-2);
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn decode_threads_are_shared_between_concurrent_batches() {
        let running = AtomicUsize::new(0);
        let alone = DecoderPermit::acquire(&running, 4, 2);
        assert_eq!(alone.granted, 2, "a batch alone gets every core");
        let second = DecoderPermit::acquire(&running, 4, 2);
        assert_eq!(second.granted, 1, "a batch always gets one decoder");
        drop(alone);
        assert_eq!(running.load(Ordering::Relaxed), 1);
        let third = DecoderPermit::acquire(&running, 4, 2);
        assert_eq!(third.granted, 1);
        drop((second, third));
        assert_eq!(running.load(Ordering::Relaxed), 0);
        assert_eq!(DecoderPermit::acquire(&running, 1, 8).granted, 1);
    }
}
