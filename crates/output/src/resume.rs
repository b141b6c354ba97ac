//! Picking up an interrupted run where it stopped: the one resume protocol,
//! for embedded and cluster runs alike.
//!
//! A run writes `_staging/job.json` (what it was started with) before any
//! work, and its phase-1 results as small Parquet checkpoints: staged
//! features under `_staging/features/` and failures under `_staging/errors/`.
//! Each checkpoint becomes visible only once complete (a local rename, an S3
//! PUT or multipart completion), so after a kill every visible file is
//! whole, and the paths they hold are exactly the work that is done.
//!
//! [`find_resume_point`] checks that an output is an interrupted run of the
//! same job and clears what the later phases wrote; [`DoneWork`] is what the
//! checkpoints the new attempt trusts hold (see [`crate::StagingManifest`]).
//! Phase 1 then lists the input as usual and skips the done paths (a
//! cluster slice reads the done paths of its own slice with
//! [`DoneWork::read_where`]).

use std::collections::HashSet;

use arrow::array::AsArray;
use futures::StreamExt;
use verger_store::Location;

use crate::documents::{JobIdentity, decode_json};
use crate::manifest::StagingManifest;
use crate::{
    ERRORS_DIR, FEATURES_DIR, INVENTORY_DIR, JOB_FILE, OutputError, PCA_MODEL_FILE, RUN_FILE,
    STAGED_ERRORS_DIR, STAGED_FEATURES_DIR, STAGING_DIR, SUCCESS_FILE, list_parquet, read_columns,
};

/// The work an interrupted run left behind.
#[derive(Debug, Default)]
pub struct DoneWork {
    /// Paths with a row in the staged features or the staged errors.
    pub paths: HashSet<String>,
    pub staged_rows: u64,
    pub error_rows: u64,
    pub checkpoints: usize,
}

impl DoneWork {
    /// Reads the `path` column of every checkpoint `manifest` trusts from
    /// before its attempt. A path recorded twice would mean a duplicate row:
    /// that is refused, not hidden.
    pub async fn read(
        location: &Location,
        manifest: &StagingManifest,
    ) -> Result<Self, OutputError> {
        Self::read_where(location, manifest, &|_| true).await
    }

    /// Like [`DoneWork::read`], only the paths that pass `path` (a cluster
    /// slice's own share).
    pub async fn read_where(
        location: &Location,
        manifest: &StagingManifest,
        path: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Self, OutputError> {
        let mut done = DoneWork::default();
        for (dir, is_error) in [(STAGED_FEATURES_DIR, false), (STAGED_ERRORS_DIR, true)] {
            for key in list_parquet(location, dir).await? {
                if !location
                    .relative(&key)
                    .is_some_and(|r| manifest.earlier.contains(&r))
                {
                    continue;
                }
                let mut batches = read_columns(location, &key, &["path"]).await?;
                let mut rows = 0;
                while let Some(batch) = batches.next().await {
                    for p in batch?.column(0).as_string::<i32>().iter().flatten() {
                        if path(p) {
                            rows += 1;
                            done.paths.insert(p.to_string());
                        }
                    }
                }
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

    pub fn rows(&self) -> u64 {
        self.staged_rows + self.error_rows
    }
}

/// Removes what a run writes after its checkpoints (the final tables and
/// documents): they are rebuilt from the checkpoints.
pub async fn clear_results(location: &Location) -> Result<(), OutputError> {
    for dir in [FEATURES_DIR, ERRORS_DIR, INVENTORY_DIR] {
        location.delete_all(dir).await?;
    }
    for file in [PCA_MODEL_FILE, RUN_FILE] {
        location.delete(&location.key(file)).await?;
    }
    Ok(())
}

/// What `--resume` found at the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumePoint {
    /// Nothing there yet: a fresh run.
    Fresh,
    /// An interrupted run of the same job (its checkpoints stay).
    Interrupted,
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
    if !location.exists(JOB_FILE).await? {
        return Err(refuse(format!(
            "it holds files but no {JOB_FILE}: it is not an interrupted verger run"
        )));
    }
    let key = location.key(JOB_FILE);
    let previous: JobIdentity =
        decode_json(&location.read(&key).await?, &location.display_key(&key))
            .map_err(|e| refuse(format!("{e}; use --overwrite")))?;
    let differences = previous.differences(job);
    if !differences.is_empty() {
        return Err(refuse(format!(
            "it was started with other settings ({}); resume with the same ones, \
             or use --overwrite",
            differences.join("; ")
        )));
    }
    clear_results(location).await?;
    Ok(ResumePoint::Interrupted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::FailureKind;
    use crate::staging::{ErrorBudget, StagingWriter};

    fn job() -> JobIdentity {
        JobIdentity {
            input: "/in".into(),
            glob: "*.jpg".into(),
            model_sha256: "abc".into(),
            max_pixels: 100,
            views: Vec::new(),
        }
    }

    async fn stage(location: &Location, task: &str, rows: &[(&str, Option<FailureKind>)]) {
        let mut writer = StagingWriter::new(location, task, 2);
        let batch = crate::staging::tests::featurized(rows);
        writer.write(&batch, &ErrorBudget::default()).await.unwrap();
        writer.finish().await.unwrap();
    }

    #[tokio::test]
    async fn an_empty_output_is_a_fresh_start() {
        let tmp = tempfile::tempdir().unwrap();
        let location = Location::parse(tmp.path().to_str().unwrap()).unwrap();
        let point = find_resume_point(&location, &job()).await.unwrap();
        assert_eq!(point, ResumePoint::Fresh);
    }

    #[tokio::test]
    async fn a_resume_reads_the_done_paths_and_clears_later_phases() {
        let tmp = tempfile::tempdir().unwrap();
        let location = Location::parse(tmp.path().to_str().unwrap()).unwrap();
        crate::commit::write_json(&location, JOB_FILE, &job())
            .await
            .unwrap();
        stage(
            &location,
            "part-000-a",
            &[("x/1", None), ("x/2", None), ("x/3", None)],
        )
        .await;
        stage(
            &location,
            "slice-0001-a",
            &[("x/4", Some(FailureKind::Empty))],
        )
        .await;
        location
            .write("features/part-000-0000.parquet", b"half".to_vec())
            .await
            .unwrap();
        location.write("run.json", b"{}".to_vec()).await.unwrap();

        let point = find_resume_point(&location, &job()).await.unwrap();
        assert_eq!(point, ResumePoint::Interrupted);
        let manifest = StagingManifest::begin(&location, "b").await.unwrap();
        // Written after the snapshot by a run not quite dead: not trusted.
        stage(&location, "part-009-a", &[("x/9", None)]).await;
        let done = DoneWork::read(&location, &manifest).await.unwrap();
        assert_eq!((done.staged_rows, done.error_rows, done.rows()), (3, 1, 4));
        assert_eq!(
            done.checkpoints, 3,
            "3 rows in parts of 2, plus 1 error part"
        );
        assert!(done.paths.contains("x/4"));
        assert!(!tmp.path().join("features").exists(), "phase 3 is redone");
        assert!(!tmp.path().join("run.json").exists());

        assert!(!done.paths.contains("x/9"));
        let odd = DoneWork::read_where(&location, &manifest, &|p| p.ends_with('3'))
            .await
            .unwrap();
        assert_eq!(odd.paths.len(), 1);
    }

    #[tokio::test]
    async fn a_resume_with_other_settings_names_the_difference() {
        let tmp = tempfile::tempdir().unwrap();
        let location = Location::parse(tmp.path().to_str().unwrap()).unwrap();
        crate::commit::write_json(&location, JOB_FILE, &job())
            .await
            .unwrap();
        let mut other = job();
        other.glob = "*.png".into();
        let err = find_resume_point(&location, &other)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("glob: *.jpg → *.png"), "{err}");
    }

    #[tokio::test]
    async fn a_completed_or_foreign_output_is_not_resumed() {
        let tmp = tempfile::tempdir().unwrap();
        let location = Location::parse(tmp.path().to_str().unwrap()).unwrap();
        location.write("notes.txt", b"mine".to_vec()).await.unwrap();
        let err = find_resume_point(&location, &job())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an interrupted verger run"), "{err}");

        location
            .write(SUCCESS_FILE, Vec::<u8>::new())
            .await
            .unwrap();
        stage(&location, "part-000-a", &[("x/1", None)]).await;
        let err = find_resume_point(&location, &job())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("already completed"), "{err}");
        assert!(
            !tmp.path().join("_staging").exists(),
            "leftover staging is cleared"
        );
    }

    #[tokio::test]
    async fn a_path_held_twice_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let location = Location::parse(tmp.path().to_str().unwrap()).unwrap();
        stage(&location, "part-000-a", &[("x/1", None)]).await;
        stage(
            &location,
            "part-001-b",
            &[("x/1", Some(FailureKind::Corrupt))],
        )
        .await;
        let manifest = StagingManifest::begin(&location, "c").await.unwrap();
        let err = DoneWork::read(&location, &manifest)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("2 rows for 1 distinct images"), "{err}");
    }
}
