//! `--incremental`: bringing an earlier, complete output up to date with its
//! input without featurizing again what did not change.
//!
//! `inventory/` says which version of each input file the output was made
//! from. Rows of files whose version is unchanged are carried into the
//! staging area as if an interrupted run had made them; the old tables are
//! then cleared and the run continues exactly like `--resume`: new and
//! changed files are featurized, deleted ones simply are not there any more,
//! and the PCA is fitted again over everything.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray, UInt64Array,
};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Int64Type, SchemaRef, UInt64Type};
use futures::StreamExt;
use verger_store::{Location, ObjectKey};

use crate::documents::JobIdentity;
use crate::schema::{staged_errors_schema, staged_features_schema};
use crate::{
    ERRORS_DIR, FEATURES_DIR, INVENTORY_DIR, JOB_FILE, OutputError, PartWriter, STAGED_ERRORS_DIR,
    STAGED_FEATURES_DIR, SUCCESS_FILE, list_parquet, read_columns,
};
/// Which version of a file a row was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileVersion {
    pub size: u64,
    pub last_modified_ms: i64,
    pub e_tag: Option<String>,
}

impl FileVersion {
    /// Same size, and the same ETag when the store gives one (S3: a content
    /// hash), else the same modification time.
    pub fn unchanged(&self, now: &FileVersion) -> bool {
        self.size == now.size
            && match (&self.e_tag, &now.e_tag) {
                (Some(was), Some(is)) => was == is,
                _ => self.last_modified_ms == now.last_modified_ms,
            }
    }
}

/// `path → version` of every input file the earlier run took.
pub async fn read_inventory(
    location: &Location,
) -> Result<HashMap<String, FileVersion>, OutputError> {
    let mut inventory = HashMap::new();
    let files = list_parquet(location, INVENTORY_DIR).await?;
    if files.is_empty() {
        return Err(OutputError::Resume {
            location: location.display_root().to_string(),
            reason: format!(
                "it has no {INVENTORY_DIR}/ (it was made before --incremental existed): \
                 run once with --overwrite"
            ),
        });
    }
    for key in files {
        let columns = ["path", "size", "last_modified_ms", "e_tag"];
        let mut batches = read_columns(location, &key, &columns).await?;
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            let paths = batch.column(0).as_string::<i32>();
            let sizes = batch.column(1).as_primitive::<UInt64Type>();
            let modified = batch.column(2).as_primitive::<Int64Type>();
            let e_tags = batch.column(3).as_string::<i32>();
            for row in 0..batch.num_rows() {
                inventory.insert(
                    paths.value(row).to_string(),
                    FileVersion {
                        size: sizes.value(row),
                        last_modified_ms: modified.value(row),
                        e_tag: e_tags.is_valid(row).then(|| e_tags.value(row).to_string()),
                    },
                );
            }
        }
    }
    Ok(inventory)
}

/// What carrying the unchanged rows did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    pub features: u64,
    pub errors: u64,
}

/// Turns a complete output into an interrupted run holding only the rows of
/// `unchanged` files: `_SUCCESS` goes first, the job file is written, the
/// rows are copied into staging checkpoints, and the old tables are cleared
/// last (a kill at any point leaves something `--resume` can finish).
pub async fn carry_unchanged(
    location: &Location,
    job: &JobIdentity,
    unchanged: &HashMap<String, FileVersion>,
    checkpoint_every: usize,
) -> Result<Carried, OutputError> {
    location.delete(&location.key(SUCCESS_FILE)).await?;
    crate::commit::write_json(location, JOB_FILE, job).await?;
    // Earlier staging (a carry that was itself interrupted) is redone whole.
    location.delete_all(STAGED_FEATURES_DIR).await?;
    location.delete_all(STAGED_ERRORS_DIR).await?;
    let features = carry(
        location,
        FEATURES_DIR,
        STAGED_FEATURES_DIR,
        &["path", "label", "features"],
        staged_features_schema(),
        unchanged,
        checkpoint_every,
    )
    .await?;
    let errors = carry(
        location,
        ERRORS_DIR,
        STAGED_ERRORS_DIR,
        &["path", "label", "stage", "kind", "reason"],
        staged_errors_schema(),
        unchanged,
        checkpoint_every,
    )
    .await?;
    crate::clear_results(location).await?;
    Ok(Carried { features, errors })
}

/// Copies the rows of `from` whose path is in `unchanged` (leading columns
/// `columns`) to checkpoints under `to`, adding the file versions.
async fn carry(
    location: &Location,
    from: &str,
    to: &str,
    columns: &[&str],
    schema: SchemaRef,
    unchanged: &HashMap<String, FileVersion>,
    checkpoint_every: usize,
) -> Result<u64, OutputError> {
    let mut writer =
        PartWriter::new(location, to, "carried", schema.clone()).checkpoint_every(checkpoint_every);
    let mut seen: HashSet<String> = HashSet::new();
    for key in list_parquet(location, from).await? {
        let mut batches = read_columns(location, &key, columns).await?;
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            let paths = batch.column(0).as_string::<i32>();
            let keep: BooleanArray = paths
                .iter()
                .map(|p| {
                    Some(p.is_some_and(|p| unchanged.contains_key(p) && seen.insert(p.to_string())))
                })
                .collect();
            let kept = filter_record_batch(&batch, &keep).map_err(|e| arrow_error(&key, e))?;
            let paths = kept.column(0).as_string::<i32>();
            let versions: Vec<&FileVersion> = paths
                .iter()
                .map(|p| &unchanged[p.unwrap_or_default()])
                .collect();
            let mut all: Vec<ArrayRef> = kept.columns().to_vec();
            all.push(Arc::new(UInt64Array::from_iter_values(
                versions.iter().map(|v| v.size),
            )));
            all.push(Arc::new(Int64Array::from_iter_values(
                versions.iter().map(|v| v.last_modified_ms),
            )));
            all.push(Arc::new(StringArray::from_iter(
                versions.iter().map(|v| v.e_tag.clone()),
            )));
            // Columns a carried row never has (the staged `views` of a
            // --views run, which --incremental refuses) are null.
            for field in schema.fields().iter().skip(all.len()) {
                all.push(arrow::array::new_null_array(
                    field.data_type(),
                    kept.num_rows(),
                ));
            }
            let staged =
                RecordBatch::try_new(schema.clone(), all).map_err(|e| arrow_error(&key, e))?;
            writer.write(&staged).await?;
        }
    }
    Ok(writer.finish().await?.rows)
}

fn arrow_error(key: &ObjectKey, e: arrow::error::ArrowError) -> OutputError {
    OutputError::Parquet {
        target: key.to_string(),
        reason: e.to_string(),
    }
}
