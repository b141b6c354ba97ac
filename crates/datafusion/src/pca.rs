//! `pca_fit(features)` and `pca_project(features, model_json)`.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Builder, ListBuilder};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float32Type};
use datafusion::common::{ScalarValue, exec_err};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDFImpl, ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature,
    Volatility,
};
use verger_model::FEATURE_DIM;
use verger_pca::{PcaModel, PcaStats};

fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new_list_field(item, true)))
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// The aggregate that fits PCA: its state is [`PcaStats`] (count, sum and XᵀX
/// in f64), which merges exactly, so partial states from any number of
/// partitions or executors combine into the same fit. It returns the merged
/// statistics as bytes; the eigen-decomposition happens once, on the client.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PcaFitUdaf {
    signature: Signature,
}

impl PcaFitUdaf {
    pub const NAME: &'static str = "pca_fit";

    pub fn new() -> Self {
        PcaFitUdaf {
            signature: Signature::exact(vec![list_of(DataType::Float32)], Volatility::Immutable),
        }
    }
}

impl Default for PcaFitUdaf {
    fn default() -> Self {
        Self::new()
    }
}

impl AggregateUDFImpl for PcaFitUdaf {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Binary)
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(PcaAccumulator {
            stats: PcaStats::new(FEATURE_DIM),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}[stats]", args.name),
            DataType::Binary,
            true,
        ))])
    }
}

#[derive(Debug)]
struct PcaAccumulator {
    stats: PcaStats,
}

impl Accumulator for PcaAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let lists = values[0].as_list::<i32>();
        let dim = self.stats.dim();
        let offsets = lists.value_offsets();
        let flat = lists.values().as_primitive::<Float32Type>();
        let flat = flat.values();
        // Consecutive non-null rows of the right length are one contiguous
        // slice: feed them as a block so the update is a matrix product.
        let mut run_start: Option<usize> = None;
        let mut run_end = 0;
        for row in 0..lists.len() {
            let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
            if lists.is_null(row) {
                continue;
            }
            if end - start != dim {
                return exec_err!(
                    "pca_fit: a features row has {} values, expected {dim}",
                    end - start
                );
            }
            match run_start {
                Some(_) if start == run_end => run_end = end,
                Some(s) => {
                    self.stats.add_rows(&flat[s..run_end]);
                    run_start = Some(start);
                    run_end = end;
                }
                None => {
                    run_start = Some(start);
                    run_end = end;
                }
            }
        }
        if let Some(s) = run_start {
            self.stats.add_rows(&flat[s..run_end]);
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Binary(Some(self.stats.to_bytes())))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + (self.stats.dim() + 1) * self.stats.dim() * 8
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Binary(Some(self.stats.to_bytes()))])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let states = states[0].as_binary::<i32>();
        for state in states.iter().flatten() {
            let other = PcaStats::from_bytes(state).map_err(external)?;
            self.stats.merge(&other).map_err(external)?;
        }
        Ok(())
    }
}

/// `pca_project(features, model_json)`: the PCA projection of each row, with
/// the model travelling in the plan as a JSON literal (so any executor can run
/// it without shared state).
#[derive(Debug)]
pub struct PcaProjectUdf {
    signature: Signature,
    /// The last model parsed, keyed by its text's hash: parsing 1280×k numbers
    /// once per query, not once per batch.
    parsed: Mutex<Option<(u64, Arc<PcaModel>)>>,
}

impl PcaProjectUdf {
    pub const NAME: &'static str = "pca_project";

    pub fn new() -> Self {
        PcaProjectUdf {
            signature: Signature::exact(
                vec![list_of(DataType::Float32), DataType::Utf8],
                Volatility::Immutable,
            ),
            parsed: Mutex::new(None),
        }
    }

    fn model(&self, json: &str) -> Result<Arc<PcaModel>> {
        let mut hasher = std::hash::DefaultHasher::new();
        json.hash(&mut hasher);
        let key = hasher.finish();
        let mut parsed = self.parsed.lock().expect("pca model cache lock");
        if let Some((cached, model)) = parsed.as_ref()
            && *cached == key
        {
            return Ok(model.clone());
        }
        let model: Arc<PcaModel> = Arc::new(serde_json::from_str(json).map_err(external)?);
        *parsed = Some((key, model.clone()));
        Ok(model)
    }
}

impl Default for PcaProjectUdf {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for PcaProjectUdf {
    fn eq(&self, other: &Self) -> bool {
        self.signature == other.signature
    }
}
impl Eq for PcaProjectUdf {}
impl Hash for PcaProjectUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Self::NAME.hash(state);
    }
}

impl ScalarUDFImpl for PcaProjectUdf {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(list_of(DataType::Float64))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [features, model] = args.args.as_slice() else {
            return exec_err!("pca_project(features, model_json) takes two arguments");
        };
        let ColumnarValue::Scalar(ScalarValue::Utf8(Some(model))) = model else {
            return exec_err!("pca_project: the model must be a JSON string literal");
        };
        let model = self.model(model)?;
        let features = features.to_array(args.number_rows)?;
        let lists = features.as_list::<i32>();
        let mut out = ListBuilder::with_capacity(
            Float64Builder::with_capacity(lists.len() * model.k),
            lists.len(),
        );
        let mut projected = vec![0f64; model.k];
        for row in 0..lists.len() {
            if lists.is_null(row) {
                out.append(false);
                continue;
            }
            let values = lists.value(row);
            let values = values.as_primitive::<Float32Type>().values();
            if values.len() != model.dim {
                return exec_err!(
                    "pca_project: a features row has {} values, the model expects {}",
                    values.len(),
                    model.dim
                );
            }
            model.project_into(values, &mut projected);
            out.values().append_slice(&projected);
            out.append(true);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}
