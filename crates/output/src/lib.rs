//! The result a run leaves behind, and how it is committed.
//!
//! This crate owns the output layout under `--output`:
//!
//! ```text
//! features/part-*.parquet   path, label, features list<float32>(1280), pca list<float64>(k)
//! errors/part-*.parquet     path, label, stage, reason
//! inventory/part-*.parquet  path, size, last_modified_ms, e_tag of every input taken
//! pca_model.json            the fitted PCA (components, mean, explained variance, k, n)
//! run.json                  counts, parameters, timings, model sha256, engine, versions
//! _SUCCESS                  written last: its presence means the rest is complete
//! _staging/                 job.json and checkpoints (features, errors) until committed
//! ```
//!
//! It writes Parquet with `parquet`'s async Arrow writer straight to the
//! store, in bounded row groups so memory stays flat, and enforces the commit
//! protocol: an existing result is refused unless overwriting, an overwrite
//! removes `_SUCCESS` first and then every older file, and `_SUCCESS` comes
//! last. It knows nothing about images, the model or DataFusion.

mod incremental;
mod parts;
mod resume;

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::{filter, is_not_null, not};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use verger_store::{Location, StoreError};

pub use incremental::{Carried, FileVersion, carry_unchanged, read_inventory, read_named_columns};
pub use parts::{PartWriter, WrittenParts};
pub use resume::{
    DoneWork, JobIdentity, ResumePoint, clear_results, find_resume_point, job_file,
    staged_errors_dir, staged_features_dir,
};

/// The reason without its per-file details, for grouping ("corrupt or
/// truncated image: …" → "corrupt or truncated image").
pub fn reason_kind(reason: &str) -> &str {
    reason.split([':', '(']).next().unwrap_or(reason).trim()
}

/// Splits featurized rows `(path, label, result struct<features,
/// error_stage, error_reason>, size, last_modified_ms, e_tag, …)` into
/// staged features ([`staged_features_schema`]) and staged errors
/// ([`staged_errors_schema`]).
pub fn split_featurized(batch: &RecordBatch) -> Result<(RecordBatch, RecordBatch), ArrowError> {
    let result = batch.column(2).as_struct();
    let (path, label) = (batch.column(0), batch.column(1));
    let (size, modified, e_tag) = (batch.column(3), batch.column(4), batch.column(5));
    let (features, stage, reason) = (result.column(0), result.column(1), result.column(2));
    let ok_mask = is_not_null(features)?;
    let failed_mask = not(&ok_mask)?;
    let pick = |columns: &[&ArrayRef], mask: &BooleanArray| {
        columns
            .iter()
            .map(|column| filter(column, mask))
            .collect::<Result<Vec<_>, _>>()
    };
    let ok = RecordBatch::try_new(
        staged_features_schema(),
        pick(&[path, label, features, size, modified, e_tag], &ok_mask)?,
    )?;
    let failed = RecordBatch::try_new(
        staged_errors_schema(),
        pick(
            &[path, label, stage, reason, size, modified, e_tag],
            &failed_mask,
        )?,
    )?;
    Ok((ok, failed))
}

/// The first `schema.fields().len()` columns of `batch`, as `schema`
/// (e.g. staged errors → `errors/` rows).
pub fn leading_columns(batch: &RecordBatch, schema: SchemaRef) -> Result<RecordBatch, ArrowError> {
    let columns = batch.columns()[..schema.fields().len()].to_vec();
    RecordBatch::try_new(schema, columns)
}

pub const FEATURES_DIR: &str = "features";
pub const ERRORS_DIR: &str = "errors";
pub const INVENTORY_DIR: &str = "inventory";
pub const STAGING_DIR: &str = "_staging";
pub const PCA_MODEL_FILE: &str = "pca_model.json";
pub const RUN_FILE: &str = "run.json";
pub const SUCCESS_FILE: &str = "_SUCCESS";

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error(
        "output {location} already holds {objects} file(s) (e.g. {example}); \
         pass --overwrite to replace them, or choose another --output"
    )]
    NotEmpty {
        location: String,
        objects: usize,
        example: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write Parquet to {target}: {reason}")]
    Parquet { target: String, reason: String },
    #[error("cannot encode {file}: {reason}")]
    Encode { file: String, reason: String },
    #[error("cannot resume at {location}: {reason}")]
    Resume { location: String, reason: String },
}

/// `list<item: T>`, the layout pandas, Spark and DuckDB all read as arrays.
pub fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new_list_field(item, true)))
}

/// What identifies the version of an input file a row was made from.
fn identity_fields() -> [Field; 3] {
    [
        Field::new("size", DataType::UInt64, false),
        Field::new("last_modified_ms", DataType::Int64, false),
        Field::new("e_tag", DataType::Utf8, true),
    ]
}

/// Rows of the staging area: features before projection, with the
/// identity of the file they came from.
pub fn staged_features_schema() -> SchemaRef {
    let mut fields = vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("features", list_of(DataType::Float32), false),
    ];
    fields.extend(identity_fields());
    Arc::new(Schema::new(fields))
}

/// Staged failures: `errors/` rows plus the identity of the file.
pub fn staged_errors_schema() -> SchemaRef {
    let mut fields = errors_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect::<Vec<_>>();
    fields.extend(identity_fields());
    Arc::new(Schema::new(fields))
}

/// Rows of `inventory/`: every input file a run took, and which version of
/// it (what `--incremental` compares against).
pub fn inventory_schema() -> SchemaRef {
    let mut fields = vec![Field::new("path", DataType::Utf8, false)];
    fields.extend(identity_fields());
    Arc::new(Schema::new(fields))
}

/// Rows of `features/`: the final result.
pub fn features_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("features", list_of(DataType::Float32), false),
        Field::new("pca", list_of(DataType::Float64), false),
    ]))
}

/// Rows of `errors/`: one per input that could not be turned into features.
pub fn errors_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("stage", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
    ]))
}

/// The output location of one run, prepared for writing.
#[derive(Debug, Clone)]
pub struct OutputDir {
    location: Location,
}

impl OutputDir {
    /// Refuses a location that already holds anything unless `overwrite`; with
    /// it, removes `_SUCCESS` first (so no reader trusts a half-replaced
    /// result) and then every other object.
    pub async fn prepare(location: Location, overwrite: bool) -> Result<Self, OutputError> {
        let existing = location.list_keys("").await?;
        if !existing.is_empty() {
            if !overwrite {
                return Err(OutputError::NotEmpty {
                    location: location.display_root().to_string(),
                    objects: existing.len(),
                    example: location.display_key(&existing[0]),
                });
            }
            location.delete(&location.key(SUCCESS_FILE)).await?;
            let removed = location.delete_all("").await?;
            tracing::info!(
                removed,
                output = location.display_root(),
                "removed the previous result"
            );
        }
        Ok(OutputDir { location })
    }

    /// An output an interrupted run prepared (see [`find_resume_point`]).
    pub fn reopen(location: Location) -> Self {
        OutputDir { location }
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Writes a JSON document (pretty, so people can read it).
    pub async fn write_json<T: serde::Serialize>(
        &self,
        file: &str,
        value: &T,
    ) -> Result<(), OutputError> {
        let text = serde_json::to_vec_pretty(value).map_err(|e| OutputError::Encode {
            file: file.to_string(),
            reason: e.to_string(),
        })?;
        self.location.write(file, text).await?;
        Ok(())
    }

    pub async fn remove_staging(&self) -> Result<(), OutputError> {
        self.location.delete_all(STAGING_DIR).await?;
        Ok(())
    }

    /// The last write of a run.
    pub async fn commit(&self) -> Result<(), OutputError> {
        self.location.write(SUCCESS_FILE, Vec::<u8>::new()).await?;
        Ok(())
    }
}
