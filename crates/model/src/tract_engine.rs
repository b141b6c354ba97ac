use std::path::Path;

use tract_onnx::prelude::*;

use crate::{EngineConfig, FEATURE_DIM, FeatureEngine, INPUT_LEN, ModelError};

const ENGINE: &str = "tract";

type Plan = Arc<TypedRunnableModel>;

/// Pure-Rust inference with `tract`: no native library to install, slower
/// than ONNX Runtime on this model, so it is the fallback.
pub struct TractEngine {
    plan: Plan,
    /// tract is compiled for a fixed batch; shorter batches are zero-padded.
    batch_size: usize,
    executor: tract_linalg::multithread::Executor,
}

impl TractEngine {
    pub fn load(model_path: &Path, config: &EngineConfig) -> Result<Self, ModelError> {
        let batch_size = config.batch_size.max(1);
        let load_error = |reason: String| ModelError::Load {
            engine: ENGINE,
            path: model_path.display().to_string(),
            reason,
        };
        let mut model = tract_onnx::onnx()
            .model_for_path(model_path)
            .map_err(|e| load_error(format!("{e:#}")))?;
        let features_outlet = model
            .output_outlets()
            .map_err(|e| load_error(format!("{e:#}")))?
            .iter()
            .copied()
            .find(|outlet| model.outlet_label(*outlet) == Some("features"))
            .or_else(|| model.outputs.first().copied())
            .ok_or_else(|| load_error("model has no outputs".into()))?;
        model
            .select_output_outlets(&[features_outlet])
            .map_err(|e| load_error(format!("{e:#}")))?;
        let plan = model
            .with_input_fact(0, f32::fact([batch_size, 3, 224, 224]).into())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| load_error(format!("{e:#}")))?;
        let executor =
            tract_linalg::multithread::Executor::multithread(config.threads_per_session());
        Ok(TractEngine {
            plan,
            batch_size,
            executor,
        })
    }
}

impl FeatureEngine for TractEngine {
    fn name(&self) -> &'static str {
        ENGINE
    }

    fn features(&mut self, input: &[f32], batch: usize) -> Result<Vec<f32>, ModelError> {
        let failed = |reason: String| ModelError::Inference {
            engine: ENGINE,
            reason,
        };
        let mut out = Vec::with_capacity(batch * FEATURE_DIM);
        for chunk in input.chunks(self.batch_size * INPUT_LEN) {
            let images = chunk.len() / INPUT_LEN;
            let mut padded = vec![0f32; self.batch_size * INPUT_LEN];
            padded[..chunk.len()].copy_from_slice(chunk);
            let tensor = Tensor::from_shape(&[self.batch_size, 3, 224, 224], &padded)
                .map_err(|e| failed(format!("{e:#}")))?;
            let plan = self.plan.clone();
            let result =
                tract_linalg::multithread::multithread_tract_scope(self.executor.clone(), || {
                    plan.run(tvec!(tensor.into()))
                })
                .map_err(|e| failed(format!("{e:#}")))?;
            let values = result[0]
                .to_plain_array_view::<f32>()
                .map_err(|e| failed(format!("{e:#}")))?;
            out.extend(values.iter().take(images * FEATURE_DIM));
        }
        Ok(out)
    }
}
