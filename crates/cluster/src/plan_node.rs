//! The DataFusion plumbing that verger's cluster operators share, written
//! once: [`one_input_plan!`] gives an operator its `ExecutionPlan` impl.
//!
//! An operator (`ImageListExec`, `StagedReadExec`, `PartWriteExec`) is a
//! struct with `input`, `spec` and `properties` fields, a
//! `try_new(input, spec)` that checks its input, and a `stream(partition,
//! context)` that is its whole behaviour. Everything else a plan node must
//! answer (its one child, rebuilding it over a new child, no expressions of
//! its own) is the same for all of them and lives here.

use datafusion::error::DataFusionError;

/// Ballista sends a task's error to the client as text built with `{:?}`:
/// an `Execution` error keeps verger's own message readable there.
pub(crate) fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::Execution(e.to_string())
}

/// Implements `ExecutionPlan` for a one-input operator (see the module
/// documentation for what the operator provides).
macro_rules! one_input_plan {
    ($exec:ident) => {
        #[allow(deprecated)] // `with_new_children` is still the one required method
        impl datafusion::physical_plan::ExecutionPlan for $exec {
            fn name(&self) -> &str {
                stringify!($exec)
            }

            fn properties(&self) -> &std::sync::Arc<datafusion::physical_plan::PlanProperties> {
                &self.properties
            }

            fn children(
                &self,
            ) -> Vec<&std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
                vec![&self.input]
            }

            fn apply_expressions(
                &self,
                _f: &mut dyn FnMut(
                    &std::sync::Arc<dyn datafusion::physical_expr::PhysicalExpr>,
                ) -> datafusion::error::Result<
                    datafusion::common::tree_node::TreeNodeRecursion,
                >,
            ) -> datafusion::error::Result<datafusion::common::tree_node::TreeNodeRecursion> {
                Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
            }

            fn with_new_children(
                self: std::sync::Arc<Self>,
                mut children: Vec<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>>,
            ) -> datafusion::error::Result<
                std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>,
            > {
                if children.len() != 1 {
                    return datafusion::common::internal_err!(concat!(
                        stringify!($exec),
                        " has one input"
                    ));
                }
                Ok(std::sync::Arc::new($exec::try_new(
                    children.remove(0),
                    self.spec.clone(),
                )?))
            }

            fn execute(
                &self,
                partition: usize,
                context: std::sync::Arc<datafusion::execution::TaskContext>,
            ) -> datafusion::error::Result<datafusion::physical_plan::SendableRecordBatchStream>
            {
                self.stream(partition, context)
            }
        }
    };
}

pub(crate) use one_input_plan;
