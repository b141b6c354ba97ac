//! The phase queries, defined once.
//!
//! An embedded run executes these DataFrames in its own process; a cluster
//! client plans the very same DataFrames over its sliced tables and hands
//! the physical plans to Ballista. Only where they execute differs.
//!
//! ```text
//! phase 1  images → featurize(root, key, options)        → staged features + failures
//! phase 2  staged features → pca_fit(features)           → merged PcaStats
//! phase 3  staged features → pca_project(features, pca)  → features/
//! commit   staged failures → errors/,  staged identities → inventory/
//! ```

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::FunctionRegistry;
use datafusion::prelude::{DataFrame, Expr, SessionContext, col, lit};
use verger_pca::{PcaModel, PcaStats};

use crate::{FeaturizeOptions, FeaturizeUdf, PcaFitUdaf, PcaProjectUdf};

fn columns(names: &[&str]) -> Vec<Expr> {
    names.iter().map(|name| col(*name)).collect()
}

/// Phase 1: every row of `images` (the `images` table's columns) with the
/// `result` of featurizing it, as `(path, label, result, size,
/// last_modified_ms, e_tag, keep…)`.
pub fn featurize(
    ctx: &SessionContext,
    images: DataFrame,
    root: &str,
    options: &FeaturizeOptions,
    keep: &[&str],
) -> Result<DataFrame> {
    let featurize = ctx.udf(FeaturizeUdf::NAME)?;
    let mut select = columns(&["path", "label"]);
    select.push(
        featurize
            .call(vec![
                lit(ScalarValue::from(root)),
                col("key"),
                lit(options.to_json()),
            ])
            .alias("result"),
    );
    select.extend(columns(&["size", "last_modified_ms", "e_tag"]));
    select.extend(columns(keep));
    images.select(select)
}

/// Phase 2: one row holding the merged [`PcaStats`] of every staged
/// feature vector (decode it with [`stats_of`]).
pub fn fit(ctx: &SessionContext, staged: DataFrame) -> Result<DataFrame> {
    let pca_fit = ctx.udaf(PcaFitUdaf::NAME)?;
    staged.aggregate(
        vec![],
        vec![pca_fit.call(vec![col("features")]).alias("stats")],
    )
}

/// The statistics phase 2 returned.
pub fn stats_of(batches: &[RecordBatch]) -> Result<PcaStats> {
    let bytes = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .map(|b| b.column(0).as_binary::<i32>().value(0).to_vec())
        .ok_or_else(|| DataFusionError::Internal("pca_fit returned no row".into()))?;
    PcaStats::from_bytes(&bytes).map_err(|e| DataFusionError::External(Box::new(e)))
}

/// Phase 3: staged rows with their projection, as `(path, label, features,
/// pca, keep…)` (the `features/` columns first).
pub fn project(
    ctx: &SessionContext,
    staged: DataFrame,
    pca: &PcaModel,
    keep: &[&str],
) -> Result<DataFrame> {
    let model_json = serde_json::to_string(pca)
        .map_err(|e| DataFusionError::Internal(format!("cannot encode the PCA model: {e}")))?;
    let project = ctx.udf(PcaProjectUdf::NAME)?;
    let mut select = columns(&["path", "label", "features"]);
    select.push(
        project
            .call(vec![col("features"), lit(model_json)])
            .alias("pca"),
    );
    select.extend(columns(keep));
    staged.select(select)
}

/// Commit: the `errors/` rows of the staged failures.
pub fn errors(staged_errors: DataFrame) -> Result<DataFrame> {
    staged_errors.select(columns(&["path", "label", "stage", "kind", "reason"]))
}

/// Commit: the `inventory/` rows of everything staged (featurized or not).
pub fn inventory(staged: Vec<DataFrame>) -> Result<Option<DataFrame>> {
    let identity = ["path", "size", "last_modified_ms", "e_tag"];
    let mut frames = staged
        .into_iter()
        .map(|frame| frame.select(columns(&identity)));
    let Some(first) = frames.next() else {
        return Ok(None);
    };
    frames
        .try_fold(first?, |all, next| all.union(next?))
        .map(Some)
}
