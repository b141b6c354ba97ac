//! The result a run leaves behind: its layout, its formats, and how it is
//! committed and restarted.
//!
//! This crate owns everything under `--output`:
//!
//! ```text
//! features/part-*.parquet   path, label, features list<float32>(1280), pca list<float64>(k)
//! errors/part-*.parquet     path, label, stage, kind, reason
//! inventory/part-*.parquet  path, size, last_modified_ms, e_tag of every input taken
//! views/part-*.parquet      path, label, view, features (only with --views: one row per view)
//! pca_model.json            the fitted PCA (verger_pca::PcaModel)
//! run.json                  RunRecord: counts, job, parameters, timings, model, versions
//! _SUCCESS                  written last: its presence means the rest is complete
//! _staging/                 job.json (JobIdentity) and the phase-1 checkpoints
//! ```
//!
//! - [`schema`]: the Arrow schemas of every table, and [`FailureKind`], the
//!   typed reason an image ended up in `errors/`;
//! - [`documents`]: the JSON documents as `Serialize + Deserialize` structs,
//!   read back through the same types (an unknown or missing field is an
//!   error naming the file);
//! - [`parts`]: Parquet part writers (bounded row groups, straight to the
//!   store, closed every N rows as checkpoints) and the one reader of parts;
//! - [`staging`]: a phase-1 task's checkpoint writers, the same for an
//!   embedded partition and a cluster slice;
//! - [`commit`]: [`OutputDir`], which refuses what verger did not make,
//!   deletes only verger's own names, and makes `_SUCCESS` the last, durable
//!   write;
//! - [`manifest`]: which checkpoints a run trusts (those it found when it
//!   started, and its own), so nothing a not-quite-dead earlier run writes
//!   can slip in;
//! - [`resume`] and [`incremental`]: what it takes to restart, from the
//!   checkpoints of an interrupted run or the inventory of a complete one.
//!
//! It knows nothing about images, the model or DataFusion.

pub mod commit;
pub mod documents;
pub mod incremental;
pub mod manifest;
pub mod parts;
pub mod resume;
pub mod schema;
pub mod staging;

pub use commit::{Committed, OutputDir, VERGER_NAMES};
pub use documents::{
    ClusterRecord, Counts, FailureCount, FeatureModel, JobIdentity, Parameters, RunRecord,
    StageTimes, TaskSummary, Timings, Versions, WorkerRecord, read_json,
};
pub use incremental::{Carried, FileVersion, carry_unchanged, read_inventory};
pub use manifest::{MANIFEST_FILE, StagingManifest, written_by};
pub use parts::{PartWriter, WrittenParts, list_parquet, read_columns};
pub use resume::{DoneWork, ResumePoint, clear_results, find_resume_point};
pub use schema::{
    FailureKind, Stage, errors_schema, explode_views, features_schema, inventory_schema, list_of,
    staged_errors_schema, staged_features_schema, views_schema,
};
pub use staging::{ErrorBudget, StagingSpec, StagingWriter, split_featurized};

use verger_store::StoreError;

pub const FEATURES_DIR: &str = "features";
pub const ERRORS_DIR: &str = "errors";
pub const INVENTORY_DIR: &str = "inventory";
/// `views/`: with `--views`, one row per (photo, view), marked by `view`.
pub const VIEWS_DIR: &str = "views";
pub const STAGING_DIR: &str = "_staging";
pub const PCA_MODEL_FILE: &str = "pca_model.json";
pub const RUN_FILE: &str = "run.json";
pub const SUCCESS_FILE: &str = "_SUCCESS";

/// `_staging/job.json`: what an unfinished run was started with.
pub const JOB_FILE: &str = "_staging/job.json";
/// `_staging/features`: staged feature checkpoints.
pub const STAGED_FEATURES_DIR: &str = "_staging/features";
/// `_staging/errors`: staged failure checkpoints.
pub const STAGED_ERRORS_DIR: &str = "_staging/errors";

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error(
        "output {location} already holds a verger result ({objects} file(s), e.g. {example}); \
         pass --overwrite to replace it, or choose another --output"
    )]
    NotEmpty {
        location: String,
        objects: usize,
        example: String,
    },
    #[error(
        "output {location} is not empty and was not made by verger (it holds {objects} file(s), \
         e.g. {example}, but no _SUCCESS, run.json or _staging/job.json); verger only writes \
         into an empty folder or over its own results, even with --overwrite: choose another \
         --output"
    )]
    NotVergerOutput {
        location: String,
        objects: usize,
        example: String,
    },
    #[error(
        "--input {input} and --output {output} overlap (one is inside the other): an overwrite \
         could delete the photos; choose an --output outside the input"
    )]
    Overlap { input: String, output: String },
    #[error(
        "--output {location} is a whole bucket: give a prefix (s3://bucket/results) so that \
         verger's files, and any --overwrite, stay inside it"
    )]
    BucketRoot { location: String },
    #[error(
        "{location} is a symlink: verger would write through it to another folder; \
         remove the link (or choose another --output)"
    )]
    Symlink { location: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write Parquet to {target}: {reason}")]
    Parquet { target: String, reason: String },
    #[error("cannot encode {file}: {reason}")]
    Encode { file: String, reason: String },
    #[error("{file} is not a document this verger can read: {reason}")]
    Document { file: String, reason: String },
    #[error(
        "more than --max-errors {max} images failed ({total} so far); stopping. The failures \
         so far are in {staged}/; nothing was committed (fix or remove those inputs and rerun \
         with --resume, or raise --max-errors)"
    )]
    TooManyErrors {
        max: u64,
        total: u64,
        staged: String,
    },
    #[error("cannot resume at {location}: {reason}")]
    Resume { location: String, reason: String },
}
