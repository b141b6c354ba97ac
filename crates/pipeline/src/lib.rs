//! One run of the job, start to finish: the protocol, written once for
//! embedded and cluster runs.
//!
//! [`run`] checks the [`RunConfig`], opens the input and the output,
//! prepares the output ([`Start`]: fresh, overwrite, resume or incremental),
//! then runs the three phases on a backend and commits:
//!
//! 1. **featurize**: every listed image not done yet → checkpoints under
//!    `_staging/` (features and failures);
//! 2. **fit**: `pca_fit(features)` over the staged features → `pca_model.json`;
//! 3. **project**: staged features → `pca_project(...)` → `features/`;
//!
//! then `errors/` and `inventory/` from the checkpoints, `run.json` and
//! `_SUCCESS`. The backend (this process, or a Ballista cluster) only
//! decides where each phase executes; the invariant checks (features +
//! errors = listed, each slice once, no duplicate path) and the commit are
//! here, once. It never decodes an image or touches the model's internals.

mod backend;
mod config;
mod embedded;
mod on_cluster;
mod progress;
mod restart;
mod run;
mod tables;

pub use config::{DEFAULT_CLUSTER_SLICES, Placement, RunConfig, Start};
pub use progress::ProgressMode;
pub use run::run;
pub use verger_model::EngineChoice;
