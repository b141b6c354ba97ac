//! Picking up an interrupted run where it stopped.
//!
//! A run writes `_staging/job.json` (what it was started with) before any
//! work, and its phase-1 results as small Parquet checkpoints: staged
//! features under `_staging/features/` and failures under `_staging/errors/`. Each
//! checkpoint becomes visible only once complete (a local rename, an S3
//! PUT or multipart completion), so after a kill every visible file is
//! whole, and the paths they hold are exactly the work that is done.

use std::collections::HashSet;

use arrow::array::AsArray;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use verger_store::Location;

use crate::{ERRORS_DIR, FEATURES_DIR, INVENTORY_DIR, OutputError, STAGING_DIR, SUCCESS_FILE};

/// `_staging/job.json`, relative to the output.
pub fn job_file() -> String {
    format!("{STAGING_DIR}/job.json")
}

/// What decides the content of a run's rows: a resume must match it, or
/// it would mix two different jobs in one output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobIdentity {
    pub input: String,
    pub glob: String,
    pub model_sha256: String,
    pub max_pixels: u64,
}

impl JobIdentity {
    /// The fields that differ, as `name: was → now`.
    fn differences(&self, now: &JobIdentity) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |name: &str, was: &str, is: &str| {
            if was != is {
                out.push(format!("{name}: {was} → {is}"));
            }
        };
        check("input", &self.input, &now.input);
        check("glob", &self.glob, &now.glob);
        check("model sha256", &self.model_sha256, &now.model_sha256);
        check(
            "max pixels",
            &self.max_pixels.to_string(),
            &now.max_pixels.to_string(),
        );
        out
    }
}

/// The work an interrupted run left behind.
#[derive(Debug, Default)]
pub struct DoneWork {
    /// Paths with a row in the staged features or in `errors/`.
    pub paths: HashSet<String>,
    pub staged_rows: u64,
    pub error_rows: u64,
    pub checkpoints: usize,
}

impl DoneWork {
    /// Reads the `path` column of every checkpoint. A path recorded twice
    /// would mean a duplicate row: that is refused, not hidden.
    pub async fn read(location: &Location) -> Result<Self, OutputError> {
        let mut done = DoneWork::default();
        for (dir, is_error) in [(staged_features_dir(), false), (staged_errors_dir(), true)] {
            let mut keys = location.list_keys(&dir).await?;
            keys.retain(|k| k.as_ref().ends_with(".parquet"));
            keys.sort();
            for key in keys {
                let rows = read_paths(location, &key, &mut done.paths).await?;
                done.checkpoints += 1;
                if is_error {
                    done.error_rows += rows;
                } else {
                    done.staged_rows += rows;
                }
            }
        }
        let rows = done.staged_rows + done.error_rows;
        if rows != done.paths.len() as u64 {
            return Err(OutputError::Resume {
                location: location.display_root().to_string(),
                reason: format!(
                    "the checkpoints hold {rows} rows for {} distinct images; \
                     rerun with --overwrite",
                    done.paths.len()
                ),
            });
        }
        Ok(done)
    }
}

async fn read_paths(
    location: &Location,
    key: &object_store::path::Path,
    paths: &mut HashSet<String>,
) -> Result<u64, OutputError> {
    let mut batches = crate::incremental::read_columns(location, key, &[0]).await?;
    let mut rows = 0;
    while let Some(batch) = batches.next().await {
        let batch = batch?;
        for path in batch.column(0).as_string::<i32>().iter().flatten() {
            paths.insert(path.to_string());
        }
        rows += batch.num_rows() as u64;
    }
    Ok(rows)
}

/// Removes what a run writes after its checkpoints (the final tables and
/// documents): they are rebuilt from the checkpoints.
pub async fn clear_results(location: &Location) -> Result<(), OutputError> {
    for dir in [FEATURES_DIR, ERRORS_DIR, INVENTORY_DIR] {
        location.delete_all(dir).await?;
    }
    for file in [crate::PCA_MODEL_FILE, crate::RUN_FILE] {
        location.delete(&location.key(file)).await?;
    }
    Ok(())
}

/// `_staging/features`: staged feature checkpoints.
pub fn staged_features_dir() -> String {
    format!("{STAGING_DIR}/{FEATURES_DIR}")
}

/// `_staging/errors`: staged failure checkpoints.
pub fn staged_errors_dir() -> String {
    format!("{STAGING_DIR}/{ERRORS_DIR}")
}

/// What `--resume` found at the output.
#[derive(Debug)]
pub enum ResumePoint {
    /// Nothing there yet: a fresh run.
    Fresh,
    /// An interrupted run of the same job, and what it finished.
    Interrupted(DoneWork),
}

/// Checks that `location` holds an interrupted run of `job` and clears what
/// the last phases wrote (they are redone from the checkpoints).
pub async fn find_resume_point(
    location: &Location,
    job: &JobIdentity,
) -> Result<ResumePoint, OutputError> {
    let refuse = |reason: String| OutputError::Resume {
        location: location.display_root().to_string(),
        reason,
    };
    if location.list_keys("").await?.is_empty() {
        return Ok(ResumePoint::Fresh);
    }
    if location.exists(SUCCESS_FILE).await? {
        // A kill between `_SUCCESS` and the clean-up leaves the checkpoints.
        location.delete_all(STAGING_DIR).await?;
        return Err(refuse(
            "that run already completed (_SUCCESS is present): nothing to resume; \
             use --overwrite to compute it again"
                .into(),
        ));
    }
    if !location.exists(&job_file()).await? {
        return Err(refuse(format!(
            "it holds files but no {}: it is not an interrupted verger run; \
             use --overwrite to replace it",
            job_file()
        )));
    }
    let text = location.read(&location.key(&job_file())).await?;
    let previous: JobIdentity = serde_json::from_slice(&text).map_err(|e| {
        refuse(format!(
            "{} is unreadable ({e}); use --overwrite",
            job_file()
        ))
    })?;
    let differences = previous.differences(job);
    if !differences.is_empty() {
        return Err(refuse(format!(
            "it was started with other settings ({}); resume with the same ones, \
             or use --overwrite",
            differences.join("; ")
        )));
    }
    clear_results(location).await?;
    Ok(ResumePoint::Interrupted(DoneWork::read(location).await?))
}
