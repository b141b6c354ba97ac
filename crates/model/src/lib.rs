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
use std::sync::{Arc, Condvar, Mutex};

pub use imagenet_head::{
    IMAGENET_CLASSES, IMAGENET_FRUIT_CLASSES, ImagenetHead, fruit_mass_of_logits,
};
pub use ort_engine::{OrtEngine, find_onnxruntime_library};
pub use tract_engine::TractEngine;

/// Length of one feature vector (MobileNetV2's penultimate layer).
pub const FEATURE_DIM: usize = 1280;
/// One image as the model takes it: 3 × 224 × 224 f32, NCHW planar.
pub const INPUT_LEN: usize = 3 * 224 * 224;
/// Images per inference call that the engines run fastest per image, with
/// one 1-thread session per core: the smaller the batch, the more of its
/// activations stay in the core's own cache. On the 2-core development
/// machine, two such ONNX Runtime sessions did 357–361 fp32 images/s at
/// batch 2 against 308 at 8 (366–372 at 1), and int8 681–706 at 2 against
/// 624–654 at 8 (647–661 at 1). `verger bench --batch-size N` prints the
/// ceiling at N (≤ this). The pipeline infers in chunks of this size and
/// tract is compiled for it.
pub const PREFERRED_BATCH: usize = 2;
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
    /// Inference threads in all, shared evenly by the sessions.
    pub threads: usize,
    /// Copies of the model that run calls side by side (see
    /// [`sessions_for`]); each call takes a free one.
    pub sessions: usize,
    /// Explicit ONNX Runtime library; otherwise `ORT_DYLIB_PATH` and the usual places.
    pub ort_library: Option<PathBuf>,
    /// Batch size tract is compiled for (it pads short batches).
    pub batch_size: usize,
}

impl EngineConfig {
    /// Threads inside one inference call.
    pub fn threads_per_session(&self) -> usize {
        (self.threads / self.sessions.max(1)).max(1)
    }
}

/// Sessions for `threads` inference threads when up to `concurrent_calls`
/// callers infer at once: one per caller, each with its share of threads.
///
/// Sessions of one thread each beat one session whose every operator is
/// split over all the threads: no thread waits for the slowest at the end
/// of each of the network's ~100 operators, which matters most when decode
/// threads share the cores. On the 2-core development machine ONNX Runtime
/// alone does 335 fp32 images/s as two 1-thread sessions against 318 as
/// one 2-thread session at batch 8, and 358–379 against 243–300 at batches
/// 1–2 (`tools/session_batches.py`; `verger bench` prints its ceiling with
/// the layout the run uses). A single caller (the service
/// answering one photo, a run with `--partitions 1`) keeps one session with
/// every thread, so that one call is as fast as it can be.
pub fn sessions_for(threads: usize, concurrent_calls: usize) -> usize {
    threads.min(concurrent_calls).max(1)
}

/// A model loaded once and shared by every task of the process.
///
/// It holds [`EngineConfig::sessions`] copies of the network (ONNX Runtime
/// sessions or tract plans), each with its share of the threads. A call
/// takes a free one and waits while all are busy: more calls at once than
/// sessions would only thrash the cores, and meanwhile other threads read
/// and decode the next images.
pub struct SharedModel {
    idle_engines: Mutex<Vec<Box<dyn FeatureEngine>>>,
    engine_returned: Condvar,
    sessions: usize,
    engine_name: &'static str,
    file: ModelFile,
}

impl std::fmt::Debug for SharedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedModel")
            .field("engine", &self.engine_name)
            .field("sessions", &self.sessions)
            .field("file", &self.file)
            .finish()
    }
}

impl SharedModel {
    /// Loads `file` into the engine `config` asks for, once per session
    /// (side by side, so start-up does not grow with them). The file was
    /// found and hashed by [`ModelFile::locate`] (or [`ModelFile::open`]).
    pub fn load(file: ModelFile, config: &EngineConfig) -> Result<Arc<Self>, ModelError> {
        let started = std::time::Instant::now();
        let sessions = config.sessions.max(1);
        let choice = resolve_choice(config);
        let loaded: Vec<Result<Box<dyn FeatureEngine>, ModelError>> = std::thread::scope(|scope| {
            let loading: Vec<_> = (0..sessions)
                .map(|_| scope.spawn(|| load_engine(&file.path, choice, config)))
                .collect();
            loading
                .into_iter()
                .map(|handle| handle.join().expect("a model-loading thread panicked"))
                .collect()
        });
        let engines = loaded.into_iter().collect::<Result<Vec<_>, _>>()?;
        let engine_name = engines[0].name();
        let loads = MODEL_LOADS.fetch_add(1, Ordering::SeqCst) + 1;
        tracing::info!(
            engine = engine_name,
            model = %file.path.display(),
            sha256 = %file.sha256,
            precision = %file.precision,
            sessions,
            threads_per_session = config.threads_per_session(),
            pid = std::process::id(),
            loads_in_process = loads,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        Ok(Arc::new(SharedModel {
            idle_engines: Mutex::new(engines),
            engine_returned: Condvar::new(),
            sessions,
            engine_name,
            file,
        }))
    }

    /// Copies of the network that can run at once.
    pub fn sessions(&self) -> usize {
        self.sessions
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
        let mut session = self.take_session();
        let started = std::time::Instant::now();
        let output = session.engine().features(input, batch);
        let elapsed = started.elapsed();
        drop(session);
        (self.check_output(output, batch), elapsed)
    }

    /// A free session, waiting while every one is busy.
    fn take_session(&self) -> Session<'_> {
        // An engine is only ever pushed and popped under the lock, so a
        // panic elsewhere cannot leave the list half-changed.
        let mut idle = self
            .idle_engines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        loop {
            if let Some(engine) = idle.pop() {
                return Session {
                    model: self,
                    engine: Some(engine),
                };
            }
            idle = self
                .engine_returned
                .wait(idle)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
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

/// One session taken from a [`SharedModel`]'s pool. It goes back when this
/// is dropped, a panic's unwinding included, so the other callers never
/// wait for a session that is gone.
struct Session<'a> {
    model: &'a SharedModel,
    engine: Option<Box<dyn FeatureEngine>>,
}

impl Session<'_> {
    fn engine(&mut self) -> &mut dyn FeatureEngine {
        self.engine.as_deref_mut().expect("held until dropped")
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.take() {
            self.model
                .idle_engines
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(engine);
            self.model.engine_returned.notify_one();
        }
    }
}

/// The engine to load every session with: `Auto` becomes ONNX Runtime when
/// its library is found, else tract (with one warning, not one per session).
fn resolve_choice(config: &EngineConfig) -> EngineChoice {
    match config.choice {
        EngineChoice::Auto => match find_onnxruntime_library(config.ort_library.as_deref()) {
            Ok(_) => EngineChoice::Ort,
            Err(err) => {
                tracing::warn!("{err}; falling back to the slower tract engine");
                EngineChoice::Tract
            }
        },
        chosen => chosen,
    }
}

/// One session of `choice` (already resolved from `Auto`).
fn load_engine(
    model_path: &Path,
    choice: EngineChoice,
    config: &EngineConfig,
) -> Result<Box<dyn FeatureEngine>, ModelError> {
    Ok(match choice {
        EngineChoice::Tract => Box::new(TractEngine::load(model_path, config)?),
        EngineChoice::Ort | EngineChoice::Auto => Box::new(OrtEngine::load(model_path, config)?),
    })
}

#[cfg(test)]
mod reference_tests;

#[cfg(test)]
mod session_pool_tests {
    use super::*;

    /// A stand-in engine (no network): each image's features are its first
    /// input value, repeated; a NaN there makes it panic.
    struct EchoEngine;

    impl FeatureEngine for EchoEngine {
        fn name(&self) -> &'static str {
            "echo stand-in"
        }

        fn features(&mut self, input: &[f32], batch: usize) -> Result<Vec<f32>, ModelError> {
            assert!(!input[0].is_nan(), "the stand-in engine was told to panic");
            Ok((0..batch)
                .flat_map(|i| std::iter::repeat_n(input[i * INPUT_LEN], FEATURE_DIM))
                .collect())
        }
    }

    fn pooled(sessions: usize) -> SharedModel {
        SharedModel {
            idle_engines: Mutex::new((0..sessions).map(|_| Box::new(EchoEngine) as _).collect()),
            engine_returned: Condvar::new(),
            sessions,
            engine_name: "echo stand-in",
            file: ModelFile {
                path: PathBuf::from("stand-in"),
                sha256: String::new(),
                precision: Precision::Fp32,
            },
        }
    }

    /// A call that panics inside the engine still gives its session back:
    /// with one session, the next call would otherwise wait forever.
    #[test]
    fn a_panicking_call_gives_its_session_back() {
        let model = Arc::new(pooled(1));
        let mut poison = vec![0f32; INPUT_LEN];
        poison[0] = f32::NAN;
        let panicked =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.features(&poison, 1)));
        assert!(panicked.is_err());
        let (sender, receiver) = std::sync::mpsc::channel();
        let caller = model.clone();
        std::thread::spawn(move || {
            let mut input = vec![0f32; INPUT_LEN];
            input[0] = 0.5;
            let _ = sender.send(caller.features(&input, 1));
        });
        let features = receiver
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the next call never got the session back")
            .unwrap();
        assert_eq!(features, vec![0.5; FEATURE_DIM]);
    }
}
