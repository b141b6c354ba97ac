//! The feature extractor: MobileNetV2 without its classifier.
//!
//! This crate owns the network: finding the model file, checking what it is
//! (sha256), loading it **once** into an inference engine, and running batches
//! of already-normalised NCHW tensors through it to get 1280-d features.
//! Two engines sit behind the one [`FeatureEngine`] trait: ONNX Runtime
//! (through `ort`, loaded dynamically; the default, it is the faster) and
//! pure-Rust `tract` (the fallback when no ONNX Runtime library is present).
//!
//! Two sets of weights can be chosen by [`Precision`]: `fp32`, the shared
//! model (`shared/models/mobilenet_v2_1.0_224_features.onnx` beside the
//! project), and `int8`, the same network quantized with the TFLite file's
//! own scales (`models/mobilenet_v2_1.0_224_int8.onnx`, built by
//! `tools/quantize_int8.py`). Both take the same input and give the same
//! 1280-d `features` output; their features agree to a cosine of about 0.996.
//!
//! [`ImagenetHead`] is the network's own last layer (the `Gemm` from the
//! features to the 1000 ImageNet logits), read from the same file so that
//! "is this fruit at all?" can be asked of any feature vector.
//!
//! It knows nothing of image files, storage, PCA or DataFusion: it takes
//! tensors and gives vectors.

mod imagenet_head;
mod ort_engine;
mod tract_engine;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub use imagenet_head::{
    IMAGENET_CLASSES, IMAGENET_FRUIT_CLASSES, ImagenetHead, fruit_mass_of_logits,
};
pub use ort_engine::{OrtEngine, find_onnxruntime_library};
pub use tract_engine::TractEngine;

/// Length of one feature vector (MobileNetV2's penultimate layer).
pub const FEATURE_DIM: usize = 1280;
/// One image as the model takes it: 3 × 224 × 224 f32, NCHW planar.
pub const INPUT_LEN: usize = 3 * 224 * 224;
/// Images per inference call that the engines run fastest per image: on the
/// 2-core development machine ONNX Runtime does about 350 fp32 images/s at
/// batch 4 or 8 and 308 at 32, as activations of a small batch stay in
/// cache (`verger bench --batch-size N` prints the ceiling at N). The
/// pipeline infers in chunks of this size and tract is compiled for it.
pub const PREFERRED_BATCH: usize = 8;
/// The file name of the shared model, looked for in the usual places.
pub const DEFAULT_MODEL_FILE: &str = "mobilenet_v2_1.0_224_features.onnx";
/// The file name of the int8 model `tools/quantize_int8.py` builds (in the
/// project's git-ignored `models/` folder).
pub const INT8_MODEL_FILE: &str = "mobilenet_v2_1.0_224_int8.onnx";
/// sha256 of the shared fp32 model (`shared/models/README.md`).
pub const FP32_MODEL_SHA256: &str =
    "61a28d70298ef318cc53284e57bcd605e474f0a060a17478781df7cea2e270f3";
/// sha256 of the int8 model as `tools/quantize_int8.py` builds it with the
/// pinned `tools/requirements.txt` (the same bytes on every machine).
pub const INT8_MODEL_SHA256: &str =
    "2f7c54fbdb4a2af7db396bec647255d170ba7496d32deaae2f7310b6fd585077";

/// Which weights of MobileNetV2 turn images into features.
///
/// Both files take the same float input and give float features; `int8`
/// runs ONNX Runtime's 8-bit kernels (QDQ graph). The precision is part of
/// what a run's rows are: `run.json` and `classifier.json` record it beside
/// the model's sha256.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// The shared float model (the default).
    #[default]
    Fp32,
    /// The int8 model built by `tools/quantize_int8.py`.
    Int8,
}

impl Precision {
    /// `"fp32"` or `"int8"`, as flags and documents spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Int8 => "int8",
        }
    }

    /// The file name verger looks for when no `--model` is given.
    pub fn default_file(self) -> &'static str {
        match self {
            Precision::Fp32 => DEFAULT_MODEL_FILE,
            Precision::Int8 => INT8_MODEL_FILE,
        }
    }

    /// The precision of a model file verger knows by its sha256 (`None`
    /// for any other file: a `--model` of one's own is taken at its word).
    pub fn of_known_sha256(sha256: &str) -> Option<Precision> {
        if sha256.eq_ignore_ascii_case(FP32_MODEL_SHA256) {
            Some(Precision::Fp32)
        } else if sha256.eq_ignore_ascii_case(INT8_MODEL_SHA256) {
            Some(Precision::Int8)
        } else {
            None
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "int8" => Ok(Precision::Int8),
            other => Err(format!(
                "unknown precision {other:?} (expected fp32 or int8)"
            )),
        }
    }
}

static MODEL_LOADS: AtomicUsize = AtomicUsize::new(0);

/// How many times this process has loaded a model. A worker must load it
/// once for its lifetime, however many batches or tasks it runs.
pub fn model_loads() -> usize {
    MODEL_LOADS.load(Ordering::SeqCst)
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "model file not found: {tried}. The shared MobileNetV2 model lives in \
         shared/models/{DEFAULT_MODEL_FILE} beside the project; pass --model PATH or set VERGER_MODEL"
    )]
    NotFound { tried: String },
    #[error(
        "the int8 model is not built: {tried}. Build it with \
         `.venv/bin/pip install -r tools/requirements.txt && .venv/bin/python tools/quantize_int8.py` \
         (writes models/{INT8_MODEL_FILE}, see tools/README.md), or pass --model PATH"
    )]
    Int8NotBuilt { tried: String },
    #[error(
        "--precision {asked} does not match the model {path}: it is verger's {actual} model \
         (sha256 {sha_prefix}…); drop --model to use the {asked} model, or pass --precision {actual}"
    )]
    PrecisionMismatch {
        asked: Precision,
        actual: Precision,
        path: String,
        sha_prefix: String,
    },
    #[error("cannot read model {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error(
        "ONNX Runtime library not found ({tried}). Install it with `pip install onnxruntime` \
         (the wheel ships libonnxruntime.so) and set ORT_DYLIB_PATH to it, or use --engine tract"
    )]
    OrtLibraryMissing { tried: String },
    #[error("{engine} could not load model {path}: {reason}")]
    Load {
        engine: &'static str,
        path: String,
        reason: String,
    },
    #[error("{engine} inference failed: {reason}")]
    Inference {
        engine: &'static str,
        reason: String,
    },
}

/// An inference engine holding a loaded model.
pub trait FeatureEngine: Send {
    /// `"onnxruntime"` or `"tract"`.
    fn name(&self) -> &'static str;
    /// Runs `input` (`batch × INPUT_LEN` floats) and returns `batch × FEATURE_DIM` floats.
    fn features(&mut self, input: &[f32], batch: usize) -> Result<Vec<f32>, ModelError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// ONNX Runtime when its library can be found, tract otherwise.
    #[default]
    Auto,
    Ort,
    Tract,
}

impl std::str::FromStr for EngineChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(EngineChoice::Auto),
            "ort" | "onnxruntime" => Ok(EngineChoice::Ort),
            "tract" => Ok(EngineChoice::Tract),
            other => Err(format!(
                "unknown engine {other:?} (expected auto, ort or tract)"
            )),
        }
    }
}

/// What the model file is: where, its sha256 (recorded with every output
/// so features from different models are never mixed) and its precision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFile {
    pub path: PathBuf,
    pub sha256: String,
    pub precision: Precision,
}

impl ModelFile {
    /// Hashes the file at `path`, to be run at `precision`. A file verger
    /// knows (the shared fp32 model, the int8 model of
    /// `tools/quantize_int8.py`) must be of that precision; any other file
    /// is taken at the caller's word.
    pub fn open(path: &Path, precision: Precision) -> Result<Self, ModelError> {
        use sha2::Digest;
        let bytes = std::fs::read(path).map_err(|e| ModelError::Unreadable {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
        match Precision::of_known_sha256(&sha256) {
            Some(actual) if actual != precision => Err(ModelError::PrecisionMismatch {
                asked: precision,
                actual,
                path: path.display().to_string(),
                sha_prefix: sha256[..12].to_string(),
            }),
            _ => Ok(ModelFile {
                path: path.to_path_buf(),
                sha256,
                precision,
            }),
        }
    }

    /// [`resolve_model_path`], then [`ModelFile::open`].
    pub fn locate(explicit: Option<&Path>, precision: Precision) -> Result<Self, ModelError> {
        Self::open(&resolve_model_path(explicit, precision)?, precision)
    }
}

/// Finds the model: the explicit path (from `--model` or `VERGER_MODEL`),
/// else the file of `precision`, searched from the current folder and from
/// the executable's folder upwards: `shared/models/` + the shared fp32
/// model, or `models/` + the int8 model `tools/quantize_int8.py` builds.
pub fn resolve_model_path(
    explicit: Option<&Path>,
    precision: Precision,
) -> Result<PathBuf, ModelError> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(ModelError::NotFound {
                tried: path.display().to_string(),
            })
        };
    }
    find_default(precision, &search_starts())
}

/// The default file of `precision` under `starts` or their parents.
fn find_default(precision: Precision, starts: &[PathBuf]) -> Result<PathBuf, ModelError> {
    let folder = match precision {
        Precision::Fp32 => "shared/models",
        Precision::Int8 => "models",
    };
    let file = precision.default_file();
    let found = starts.iter().find_map(|start| {
        start.ancestors().find_map(|dir| {
            let candidate = dir.join(folder).join(file);
            candidate.is_file().then_some(candidate)
        })
    });
    if let Some(found) = found {
        return Ok(found);
    }
    let tried: Vec<String> = starts
        .iter()
        .map(|dir| dir.join(folder).join(file).display().to_string())
        .collect();
    let tried = format!(
        "no --model given; looked for {} and above",
        tried.join(", ")
    );
    Err(match precision {
        Precision::Fp32 => ModelError::NotFound { tried },
        Precision::Int8 => ModelError::Int8NotBuilt { tried },
    })
}

/// Where verger looks for what it was not told: the current folder and
/// the executable's folder.
fn search_starts() -> Vec<PathBuf> {
    [
        std::env::current_dir().ok(),
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The first hit of `probe` on the current folder, the executable's folder,
/// or any of their parents: how verger finds the project's `.venv` without
/// being told.
pub(crate) fn search_upwards(mut probe: impl FnMut(&Path) -> Option<PathBuf>) -> Option<PathBuf> {
    search_starts()
        .into_iter()
        .find_map(|start| start.ancestors().find_map(&mut probe))
}

/// Settings for loading an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub choice: EngineChoice,
    /// Threads inside one inference call.
    pub threads: usize,
    /// Explicit ONNX Runtime library; otherwise `ORT_DYLIB_PATH` and the usual places.
    pub ort_library: Option<PathBuf>,
    /// Batch size tract is compiled for (it pads short batches).
    pub batch_size: usize,
}

/// A model loaded once and shared by every task of the process.
///
/// Inference calls are serialised by a mutex: the engine already uses all the
/// threads it was given, so running two batches at once would only thrash;
/// meanwhile other tasks read and decode the next images.
pub struct SharedModel {
    engine: Mutex<Box<dyn FeatureEngine>>,
    engine_name: &'static str,
    file: ModelFile,
}

impl std::fmt::Debug for SharedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedModel")
            .field("engine", &self.engine_name)
            .field("file", &self.file)
            .finish()
    }
}

impl SharedModel {
    /// Loads `file` into the engine `config` asks for. The file was found
    /// and hashed by [`ModelFile::locate`] (or [`ModelFile::open`]).
    pub fn load(file: ModelFile, config: &EngineConfig) -> Result<Arc<Self>, ModelError> {
        let model_path = file.path.as_path();
        let started = std::time::Instant::now();
        let engine: Box<dyn FeatureEngine> = match config.choice {
            EngineChoice::Ort => Box::new(OrtEngine::load(model_path, config)?),
            EngineChoice::Tract => Box::new(TractEngine::load(model_path, config)?),
            EngineChoice::Auto => match OrtEngine::load(model_path, config) {
                Ok(engine) => Box::new(engine),
                Err(err @ ModelError::OrtLibraryMissing { .. }) => {
                    tracing::warn!("{err}; falling back to the slower tract engine");
                    Box::new(TractEngine::load(model_path, config)?)
                }
                Err(err) => return Err(err),
            },
        };
        let loads = MODEL_LOADS.fetch_add(1, Ordering::SeqCst) + 1;
        tracing::info!(
            engine = engine.name(),
            model = %file.path.display(),
            sha256 = %file.sha256,
            precision = %file.precision,
            pid = std::process::id(),
            loads_in_process = loads,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        Ok(Arc::new(SharedModel {
            engine_name: engine.name(),
            engine: Mutex::new(engine),
            file,
        }))
    }

    pub fn engine_name(&self) -> &'static str {
        self.engine_name
    }

    pub fn file(&self) -> &ModelFile {
        &self.file
    }

    /// Features of `batch` images laid out back to back in `input`.
    pub fn features(&self, input: &[f32], batch: usize) -> Result<Vec<f32>, ModelError> {
        self.features_timed(input, batch).0
    }

    /// Like [`SharedModel::features`], with the time spent inside the engine
    /// (waiting for another task's batch to finish is not counted).
    pub fn features_timed(
        &self,
        input: &[f32],
        batch: usize,
    ) -> (Result<Vec<f32>, ModelError>, std::time::Duration) {
        assert_eq!(
            input.len(),
            batch * INPUT_LEN,
            "input is not batch × INPUT_LEN"
        );
        if batch == 0 {
            return (Ok(Vec::new()), std::time::Duration::ZERO);
        }
        let mut engine = self
            .engine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let started = std::time::Instant::now();
        let output = engine.features(input, batch);
        (self.check_output(output, batch), started.elapsed())
    }

    fn check_output(
        &self,
        output: Result<Vec<f32>, ModelError>,
        batch: usize,
    ) -> Result<Vec<f32>, ModelError> {
        let output = output?;
        if output.len() != batch * FEATURE_DIM {
            return Err(ModelError::Inference {
                engine: self.engine_name,
                reason: format!(
                    "model returned {} values for a batch of {batch}, expected {}",
                    output.len(),
                    batch * FEATURE_DIM
                ),
            });
        }
        Ok(output)
    }
}

#[cfg(test)]
mod reference_tests;
