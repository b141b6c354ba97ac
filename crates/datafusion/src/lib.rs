//! The DataFusion glue: verger's stages as query-engine parts.
//!
//! - [`image_table`]: the listing of an input location as a streaming table
//!   `images(path, label, key, size, last_modified_ms, e_tag)`.
//! - [`featurize`]: the scalar function `featurize(root, key, options)` that
//!   reads, decodes, resizes and runs a whole batch of images through the
//!   model, returning `struct(features, error_stage, error_kind,
//!   error_reason)` per row.
//! - [`pca`]: the aggregate `pca_fit(features)` (mergeable count, sum and XᵀX,
//!   so partial fits combine across partitions or executors) and the scalar
//!   function `pca_project(features, model_json)`.
//! - [`phases`]: the phase queries built from those parts, written once for
//!   embedded and cluster runs.
//!
//! This layer stays thin: it converts between Arrow arrays and the plain
//! crates (`verger-store`, `verger-image`, `verger-model`, `verger-pca`,
//! `verger-output`) and holds no pipeline decisions (which phase runs when,
//! the commit protocol). Those crates must never depend on it.

pub mod featurize;
pub mod image_table;
pub mod metrics;
pub mod pca;
pub mod phases;

use std::sync::Arc;

use datafusion::error::Result;
use datafusion::execution::FunctionRegistry;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};

pub use featurize::{FeaturizeContext, FeaturizeOptions, FeaturizeUdf, featurize_result_type};
pub use image_table::{ImageTable, image_table_schema};
pub use metrics::{StageMetrics, StageTimes, with_task_metrics};
pub use pca::{PcaFitUdaf, PcaProjectUdf};

/// Registers verger's functions on a session (a client's, or an executor's).
pub fn register_functions(ctx: &SessionContext, featurize: Arc<FeaturizeContext>) {
    ctx.register_udf(ScalarUDF::from(FeaturizeUdf::new(featurize)));
    register_pca_functions(ctx);
}

/// Registers `pca_fit` and `pca_project` only (what phases 2 and 3 need).
pub fn register_pca_functions(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::from(PcaProjectUdf::new()));
    ctx.register_udaf(AggregateUDF::from(PcaFitUdaf::new()));
}

/// Registers the same functions for planning only (a process without the
/// model): names, signatures and types are identical, `featurize` cannot run.
pub fn register_planning_functions(registry: &mut dyn FunctionRegistry) -> Result<()> {
    registry.register_udf(Arc::new(ScalarUDF::from(FeaturizeUdf::planning_only())))?;
    registry.register_udf(Arc::new(ScalarUDF::from(PcaProjectUdf::new())))?;
    registry.register_udaf(Arc::new(AggregateUDF::from(PcaFitUdaf::new())))?;
    Ok(())
}
