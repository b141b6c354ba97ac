//! The model's own ImageNet classifier, applied to 1280-d features.
//!
//! The ONNX graph ends in one `Gemm` from `features` to the 1000 ImageNet
//! `logits`. Reading that Gemm's weights once lets every stage that has
//! features (a run's `features/` table at training time, the averaged
//! views at serve time) get the logits without running the network again,
//! and because the head is linear, the logits of a mean of features are the
//! mean of their logits. Rejection uses it to ask "does ImageNet think
//! this is fruit?" ([`ImagenetHead::fruit_mass`]).

use std::path::Path;

use tract_onnx::pb::{self, tensor_proto::DataType};
use tract_onnx::prelude::Framework;

use crate::{FEATURE_DIM, ModelError};

/// ImageNet classes 948–957: Granny Smith, strawberry, orange, lemon, fig,
/// pineapple, banana, jackfruit, custard apple, pomegranate.
pub const IMAGENET_FRUIT_CLASSES: std::ops::RangeInclusive<usize> = 948..=957;
/// ImageNet-1k classes.
pub const IMAGENET_CLASSES: usize = 1000;

/// The final Gemm of the model: `logits = W · features + b`.
#[derive(Debug, Clone)]
pub struct ImagenetHead {
    /// IMAGENET_CLASSES × FEATURE_DIM, row-major.
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl ImagenetHead {
    /// Reads the Gemm that produces the `logits` output of `model_path`.
    pub fn from_onnx(model_path: &Path) -> Result<Self, ModelError> {
        let failed = |reason: String| ModelError::Load {
            engine: "onnx parser",
            path: model_path.display().to_string(),
            reason: format!("cannot read the ImageNet head: {reason}"),
        };
        let proto = tract_onnx::onnx()
            .proto_model_for_path(model_path)
            .map_err(|e| failed(format!("{e:#}")))?;
        let graph = proto.graph.ok_or_else(|| failed("no graph".into()))?;
        let gemm = graph
            .node
            .iter()
            .find(|n| n.op_type == "Gemm" && n.output.iter().any(|o| o == "logits"))
            .ok_or_else(|| failed("no Gemm node produces `logits`".into()))?;
        check_plain_gemm(gemm).map_err(failed)?;
        let initializer = |name: &str| {
            graph
                .initializer
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(|| failed(format!("no initializer {name:?}")))
        };
        let (Some(w_name), Some(b_name)) = (gemm.input.get(1), gemm.input.get(2)) else {
            return Err(failed("the Gemm has no weight and bias inputs".into()));
        };
        let weight = floats(initializer(w_name)?).map_err(failed)?;
        let bias = floats(initializer(b_name)?).map_err(failed)?;
        if weight.len() != IMAGENET_CLASSES * FEATURE_DIM || bias.len() != IMAGENET_CLASSES {
            return Err(failed(format!(
                "weight has {} values and bias {}, expected {}×{FEATURE_DIM} and {}",
                weight.len(),
                bias.len(),
                IMAGENET_CLASSES,
                IMAGENET_CLASSES
            )));
        }
        Ok(ImagenetHead { weight, bias })
    }

    /// The 1000 ImageNet logits of one feature vector.
    pub fn logits(&self, features: &[f32]) -> Vec<f32> {
        assert_eq!(features.len(), FEATURE_DIM, "one feature vector");
        self.weight
            .chunks_exact(FEATURE_DIM)
            .zip(&self.bias)
            .map(|(row, b)| row.iter().zip(features).map(|(w, x)| w * x).sum::<f32>() + b)
            .collect()
    }

    /// The softmax mass (over all 1000 classes) on the ImageNet fruit
    /// classes 948–957: near 0 for a dog, a car or a carton of milk.
    pub fn fruit_mass(&self, features: &[f32]) -> f32 {
        fruit_mass_of_logits(&self.logits(features))
    }
}

/// Σ softmax(logits)[948..=957], computed stably in f64.
pub fn fruit_mass_of_logits(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f64> = logits.iter().map(|l| f64::from(l - max).exp()).collect();
    let total: f64 = exp.iter().sum();
    let fruit: f64 = exp[IMAGENET_FRUIT_CLASSES].iter().sum();
    (fruit / total) as f32
}

/// Refuses a Gemm with a transposed input or scaling: the head is read as
/// `features · Wᵀ + b` with W stored classes × features (`transB = 1`).
fn check_plain_gemm(gemm: &pb::NodeProto) -> Result<(), String> {
    for attribute in &gemm.attribute {
        let plain = match attribute.name.as_str() {
            "alpha" | "beta" => attribute.f == 1.0,
            "transA" => attribute.i == 0,
            "transB" => attribute.i == 1,
            _ => true,
        };
        if !plain {
            return Err(format!("unexpected Gemm attribute {}", attribute.name));
        }
    }
    if !gemm.attribute.iter().any(|a| a.name == "transB") {
        return Err("the Gemm's weight is not stored transposed (transB = 1)".into());
    }
    Ok(())
}

fn floats(tensor: &pb::TensorProto) -> Result<Vec<f32>, String> {
    if tensor.data_type != DataType::Float as i32 {
        return Err(format!("{} is not float32", tensor.name));
    }
    if !tensor.float_data.is_empty() {
        return Ok(tensor.float_data.clone());
    }
    Ok(tensor
        .raw_data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}
