//! The feature extractor: MobileNetV2 without its classifier.
//!
//! This crate owns the network: finding the model file, checking what it is
//! (sha256), loading it **once** into an inference engine, and running batches
//! of already-normalised NCHW tensors through it to get 1280-d features.
//! Two engines sit behind the one [`FeatureEngine`] trait: ONNX Runtime
//! (through `ort`, loaded dynamically; the default, it is the faster) and
//! pure-Rust `tract` (the fallback when no ONNX Runtime library is present).
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
/// The file name of the shared model, looked for in the usual places.
pub const DEFAULT_MODEL_FILE: &str = "mobilenet_v2_1.0_224_features.onnx";

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

/// What the model file is: where, and its sha256 (recorded with every output
/// so features from different models are never mixed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFile {
    pub path: PathBuf,
    pub sha256: String,
}

impl ModelFile {
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        use sha2::Digest;
        let bytes = std::fs::read(path).map_err(|e| ModelError::Unreadable {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(ModelFile {
            path: path.to_path_buf(),
            sha256: hex::encode(sha2::Sha256::digest(&bytes)),
        })
    }
}

/// Finds the model: the explicit path (from `--model` or `VERGER_MODEL`), else
/// the shared model beside the project, searched from the current folder and
/// from the executable's folder upwards.
pub fn resolve_model_path(explicit: Option<&Path>) -> Result<PathBuf, ModelError> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(ModelError::NotFound {
                tried: path.display().to_string(),
            })
        };
    }
    let found = search_upwards(|dir| {
        let candidate = dir.join("shared/models").join(DEFAULT_MODEL_FILE);
        candidate.is_file().then_some(candidate)
    });
    if let Some(found) = found {
        return Ok(found);
    }
    let tried: Vec<String> = std::env::current_dir()
        .into_iter()
        .map(|dir| {
            dir.join("shared/models")
                .join(DEFAULT_MODEL_FILE)
                .display()
                .to_string()
        })
        .collect();
    Err(ModelError::NotFound {
        tried: format!(
            "no --model given; looked for {} and above",
            tried.join(", ")
        ),
    })
}

/// The first hit of `probe` on the current folder, the executable's folder,
/// or any of their parents: how verger finds the shared model and the
/// project's `.venv` without being told.
pub(crate) fn search_upwards(mut probe: impl FnMut(&Path) -> Option<PathBuf>) -> Option<PathBuf> {
    let starts = [
        std::env::current_dir().ok(),
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf)),
    ];
    starts
        .into_iter()
        .flatten()
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
    pub fn load(model_path: &Path, config: &EngineConfig) -> Result<Arc<Self>, ModelError> {
        let file = ModelFile::open(model_path)?;
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
