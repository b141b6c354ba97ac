use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use crate::{EngineConfig, FEATURE_DIM, FeatureEngine, ModelError};

const ENGINE: &str = "onnxruntime";

/// ONNX Runtime, loaded from a shared library at run time (`ort`'s
/// `load-dynamic`): nothing is downloaded at build time, and the library comes
/// from the `onnxruntime` wheel on PyPI.
pub struct OrtEngine {
    session: Session,
}

/// The ONNX Runtime library: `explicit`, else `ORT_DYLIB_PATH`, else a
/// `.venv` made by the project's setup script (searched from the current
/// folder and the executable's folder upwards).
pub fn find_onnxruntime_library(explicit: Option<&Path>) -> Result<PathBuf, ModelError> {
    if let Some(path) = explicit {
        return existing(path);
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        return existing(Path::new(&path));
    }
    if let Some(found) = crate::search_upwards(|dir| venv_library(&dir.join(".venv"))) {
        return Ok(found);
    }
    Err(ModelError::OrtLibraryMissing {
        tried: "no ORT_DYLIB_PATH, no .venv with onnxruntime found".into(),
    })
}

fn existing(path: &Path) -> Result<PathBuf, ModelError> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(ModelError::OrtLibraryMissing {
            tried: path.display().to_string(),
        })
    }
}

fn venv_library(venv: &Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    for python in lib.flatten() {
        let capi = python.path().join("site-packages/onnxruntime/capi");
        let Ok(files) = std::fs::read_dir(&capi) else {
            continue;
        };
        for file in files.flatten() {
            let name = file.file_name();
            if name.to_string_lossy().starts_with("libonnxruntime.so") {
                return Some(file.path());
            }
        }
    }
    None
}

/// ONNX Runtime's environment is process-wide and may be initialised once.
static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

fn init_environment(library: &Path) -> Result<&'static ort::environment::Environment, ModelError> {
    let env = ENVIRONMENT.get_or_init(|| {
        let builder = ort::init_from(library).map_err(|e| e.to_string())?;
        builder
            .with_name("verger")
            .build()
            .map_err(|e| e.to_string())
    });
    env.as_ref().map_err(|reason| ModelError::Load {
        engine: ENGINE,
        path: library.display().to_string(),
        reason: reason.clone(),
    })
}

impl OrtEngine {
    pub fn load(model_path: &Path, config: &EngineConfig) -> Result<Self, ModelError> {
        let library = find_onnxruntime_library(config.ort_library.as_deref())?;
        let environment = init_environment(&library)?;
        let load_error = |reason: String| ModelError::Load {
            engine: ENGINE,
            path: model_path.display().to_string(),
            reason,
        };
        let session = Session::builder(environment)
            .map_err(|e| load_error(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| load_error(e.to_string()))?
            .with_intra_threads(config.threads_per_session())
            .map_err(|e| load_error(e.to_string()))?
            .with_inter_threads(1)
            .map_err(|e| load_error(e.to_string()))?
            // Idle inference threads sleep instead of spinning: in a run,
            // decoding threads need those cores between inference calls.
            .with_intra_op_spinning(false)
            .map_err(|e| load_error(e.to_string()))?
            .commit_from_file(model_path)
            .map_err(|e| load_error(e.to_string()))?;
        let has_features = session.outputs().iter().any(|o| o.name() == "features");
        if !has_features {
            return Err(load_error(
                "the model has no output named `features` (expected the shared MobileNetV2 features model)"
                    .into(),
            ));
        }
        Ok(OrtEngine { session })
    }
}

impl FeatureEngine for OrtEngine {
    fn name(&self) -> &'static str {
        ENGINE
    }

    fn features(&mut self, input: &[f32], batch: usize) -> Result<Vec<f32>, ModelError> {
        let failed = |reason: String| ModelError::Inference {
            engine: ENGINE,
            reason,
        };
        let tensor = TensorRef::from_array_view(([batch, 3, 224, 224], input))
            .map_err(|e| failed(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs!["input" => tensor])
            .map_err(|e| failed(e.to_string()))?;
        let (shape, values) = outputs["features"]
            .try_extract_tensor::<f32>()
            .map_err(|e| failed(e.to_string()))?;
        if shape.len() != 2 || shape[1] as usize != FEATURE_DIM {
            return Err(failed(format!("unexpected features shape {shape:?}")));
        }
        Ok(values.to_vec())
    }
}
