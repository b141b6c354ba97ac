//! `_staging/manifest.json`: which checkpoints a run trusts.
//!
//! A run that starts (fresh, resumed or incremental) takes a snapshot of the
//! checkpoints already under `_staging/` — an interrupted run's, or rows
//! carried by `--incremental` — and records them with its own attempt id.
//! From then on every reader of the staging area (what is done, phase 2 and
//! 3, the commit's tables) sees exactly those checkpoints plus the ones this
//! attempt writes (their names carry `-<attempt>-`).
//!
//! That is what makes a resume safe against a run that is not quite dead: a
//! killed cluster client's job can go on running on the executors and
//! writing checkpoints; those appear after the snapshot, are never read, and
//! go when the staging area is cleared. A task of the old attempt that
//! starts after the snapshot sees another attempt in the manifest and stops.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use verger_store::{Location, ObjectKey};

use crate::documents::read_json;
use crate::{OutputError, STAGED_ERRORS_DIR, STAGED_FEATURES_DIR, list_parquet};

/// `_staging/manifest.json`, relative to the output.
pub const MANIFEST_FILE: &str = "_staging/manifest.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagingManifest {
    /// The run attempt writing now.
    pub attempt: String,
    /// Checkpoints written before this attempt started, which it trusts
    /// (paths relative to the output).
    pub earlier: BTreeSet<String>,
}

/// Whether a checkpoint file name was written by `attempt`.
pub fn written_by(file_name: &str, attempt: &str) -> bool {
    file_name.contains(&format!("-{attempt}-"))
}

impl StagingManifest {
    /// Starts `attempt` at `location`: the checkpoints there now become the
    /// trusted earlier ones, and the manifest is written.
    pub async fn begin(location: &Location, attempt: &str) -> Result<Self, OutputError> {
        let mut earlier = BTreeSet::new();
        for dir in [STAGED_FEATURES_DIR, STAGED_ERRORS_DIR] {
            for key in list_parquet(location, dir).await? {
                if let Some(relative) = location.relative(&key) {
                    earlier.insert(relative);
                }
            }
        }
        let manifest = StagingManifest {
            attempt: attempt.to_string(),
            earlier,
        };
        crate::commit::write_json(location, MANIFEST_FILE, &manifest).await?;
        Ok(manifest)
    }

    /// The manifest of the attempt running at `location`.
    pub async fn read(location: &Location) -> Result<Self, OutputError> {
        read_json(location, MANIFEST_FILE).await
    }

    /// Refuses to go on when another attempt took over the output (a newer
    /// run resumed it): the caller is what is left of an interrupted run.
    pub fn check_current(&self, attempt: &str, location: &Location) -> Result<(), OutputError> {
        if self.attempt == attempt {
            return Ok(());
        }
        Err(OutputError::Resume {
            location: location.display_root().to_string(),
            reason: format!(
                "run attempt {attempt} was superseded by attempt {} (a newer run resumed \
                 this output); this task stops",
                self.attempt
            ),
        })
    }

    /// Whether the checkpoint at `relative` is one this attempt trusts.
    pub fn admits(&self, relative: &str) -> bool {
        self.earlier.contains(relative)
            || relative
                .rsplit('/')
                .next()
                .is_some_and(|name| written_by(name, &self.attempt))
    }

    /// The trusted checkpoints under `dir`, in name order.
    pub async fn parts(
        &self,
        location: &Location,
        dir: &str,
    ) -> Result<Vec<ObjectKey>, OutputError> {
        let mut keys = list_parquet(location, dir).await?;
        keys.retain(|key| location.relative(key).is_some_and(|r| self.admits(&r)));
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn checkpoints_written_after_the_snapshot_by_another_attempt_are_not_trusted() {
        let tmp = tempfile::tempdir().unwrap();
        let location = Location::parse(tmp.path().to_str().unwrap()).unwrap();
        for name in ["part-000-old1-0000", "slice-0001-old1-0000"] {
            location
                .write(
                    &format!("{STAGED_FEATURES_DIR}/{name}.parquet"),
                    b"x".to_vec(),
                )
                .await
                .unwrap();
        }
        let manifest = StagingManifest::begin(&location, "new2").await.unwrap();
        assert_eq!(manifest.earlier.len(), 2);
        // A late write of the interrupted run, and this attempt's own.
        for name in ["slice-0001-old1-0001", "slice-0001-new2-0000"] {
            location
                .write(
                    &format!("{STAGED_FEATURES_DIR}/{name}.parquet"),
                    b"x".to_vec(),
                )
                .await
                .unwrap();
        }
        let parts: Vec<String> = manifest
            .parts(&location, STAGED_FEATURES_DIR)
            .await
            .unwrap()
            .iter()
            .filter_map(|k| k.filename().map(str::to_string))
            .collect();
        assert_eq!(
            parts,
            [
                "part-000-old1-0000.parquet",
                "slice-0001-new2-0000.parquet",
                "slice-0001-old1-0000.parquet"
            ]
        );
        assert_eq!(StagingManifest::read(&location).await.unwrap(), manifest);
        assert!(manifest.check_current("new2", &location).is_ok());
        let err = manifest.check_current("old1", &location).unwrap_err();
        assert!(err.to_string().contains("superseded"), "{err}");
    }
}
