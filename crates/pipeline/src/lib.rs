//! One run of the job, start to finish, and the benchmark around it.
//!
//! [`run`] wires the stages together as three DataFusion queries over the
//! engine's table and functions, in one direction:
//!
//! 1. **featurize**: `images` → `featurize(root, key)` → features to
//!    `_staging/`, failures straight to `errors/`;
//! 2. **fit**: `pca_fit(features)` over the staged features → `pca_model.json`;
//! 3. **project**: staged features → `pca_project(...)` → `features/`;
//!
//! then `run.json` and `_SUCCESS`. It owns the run's configuration, the
//! progress display and the report; it never decodes an image or touches the
//! model's internals itself.

pub mod bench;
mod cluster_run;
mod progress;
mod report;
mod run;

pub use cluster_run::{ClusterReport, WorkerReport};
pub use progress::ProgressMode;
pub use report::{Counts, RunReport};
pub use run::{RunConfig, run};
pub use verger_model::{EngineChoice, EngineConfig};
