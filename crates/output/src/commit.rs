//! Where a run writes, and how it commits.
//!
//! An output is either empty or made by verger. verger writes only the
//! names in [`VERGER_NAMES`], and deletes only those: an `--overwrite`
//! leaves anything else in place and names it. `_SUCCESS` is removed first
//! and written last, after every part it vouches for is durable.

use verger_store::Location;

use crate::{
    ERRORS_DIR, FEATURES_DIR, INVENTORY_DIR, JOB_FILE, OutputError, PCA_MODEL_FILE, RUN_FILE,
    STAGING_DIR, SUCCESS_FILE, VIEWS_DIR,
};

/// Every name verger writes at the top of an output; nothing else is ever
/// deleted.
pub const VERGER_NAMES: [&str; 8] = [
    FEATURES_DIR,
    VIEWS_DIR,
    ERRORS_DIR,
    INVENTORY_DIR,
    STAGING_DIR,
    PCA_MODEL_FILE,
    RUN_FILE,
    SUCCESS_FILE,
];

/// The files whose presence says "verger made this folder".
const VERGER_MARKS: [&str; 3] = [SUCCESS_FILE, RUN_FILE, JOB_FILE];

/// The output location of one run.
#[derive(Debug, Clone)]
pub struct OutputDir {
    location: Location,
}

/// What a commit made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// Local files `fsync`ed before `_SUCCESS` (0 on S3, where a completed
    /// PUT is durable).
    pub synced_files: usize,
}

impl OutputDir {
    /// Opens `--output` for a run over `input`. Refuses an output that
    /// overlaps the input (the same place, or one inside the other: an
    /// overwrite could delete photos) and an S3 bucket root; creates a
    /// missing local folder only once it is known to be safe.
    pub fn open_location(output: &str, input: &Location) -> Result<Location, OutputError> {
        let overlap = || OutputError::Overlap {
            input: input.display_root().to_string(),
            output: output.to_string(),
        };
        if input.overlaps_path(output)? {
            return Err(overlap());
        }
        let location = Location::parse_for_output(output)?;
        if location.is_bucket_root() {
            return Err(OutputError::BucketRoot {
                location: location.display_root().to_string(),
            });
        }
        if input.overlaps(&location) {
            return Err(overlap());
        }
        Ok(location)
    }

    /// Prepares a fresh run at `location`. An empty location is used as it
    /// is. One that holds a verger result is refused unless `overwrite`;
    /// with it, `_SUCCESS` goes first (no reader trusts a half-replaced
    /// result), then verger's own names, and whatever else is there stays
    /// and is named in a warning. One that holds anything verger did not
    /// make is refused, `overwrite` or not.
    pub async fn prepare(location: Location, overwrite: bool) -> Result<Self, OutputError> {
        let existing = location.list_keys("").await?;
        let Some(example) = existing.first() else {
            return Ok(OutputDir { location });
        };
        let example = location.display_key(example);
        let relative: Vec<String> = existing
            .iter()
            .filter_map(|key| location.relative(key))
            .collect();
        let made_by_verger = relative
            .iter()
            .any(|name| VERGER_MARKS.contains(&name.as_str()));
        if !made_by_verger {
            return Err(OutputError::NotVergerOutput {
                location: location.display_root().to_string(),
                objects: existing.len(),
                example,
            });
        }
        if let Some(link) = VERGER_NAMES.iter().find(|name| location.is_symlink(name)) {
            return Err(OutputError::Symlink {
                location: location.display_key(&location.key(link)),
            });
        }
        if !overwrite {
            return Err(OutputError::NotEmpty {
                location: location.display_root().to_string(),
                objects: existing.len(),
                example,
            });
        }
        let left = remove_verger_names(&location).await?;
        tracing::info!(
            output = location.display_root(),
            "removed the previous result"
        );
        if !left.is_empty() {
            let shown: Vec<&str> = left.iter().take(10).map(String::as_str).collect();
            tracing::warn!(
                output = location.display_root(),
                count = left.len(),
                "--overwrite left {} file(s) that verger did not write: {}{}",
                left.len(),
                shown.join(", "),
                if left.len() > shown.len() {
                    ", …"
                } else {
                    ""
                }
            );
        }
        Ok(OutputDir { location })
    }

    /// An output an interrupted run prepared (see [`crate::find_resume_point`]).
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
        write_json(&self.location, file, value).await
    }

    pub async fn remove_staging(&self) -> Result<(), OutputError> {
        self.location.delete_all(STAGING_DIR).await?;
        Ok(())
    }

    /// The last write of a run: makes the tables and documents durable,
    /// then writes `_SUCCESS` (and makes it durable too).
    pub async fn commit(&self) -> Result<Committed, OutputError> {
        let mut keys = Vec::new();
        for dir in [FEATURES_DIR, ERRORS_DIR, INVENTORY_DIR] {
            keys.extend(self.location.list_keys(dir).await?);
        }
        for file in [PCA_MODEL_FILE, RUN_FILE] {
            keys.push(self.location.key(file));
        }
        let synced_files = self.location.sync_local(&keys)?;
        self.location.write(SUCCESS_FILE, Vec::<u8>::new()).await?;
        self.location
            .sync_local(&[self.location.key(SUCCESS_FILE)])?;
        Ok(Committed { synced_files })
    }
}

/// Serialises `value` as pretty JSON to `file` of `location`.
pub(crate) async fn write_json<T: serde::Serialize>(
    location: &Location,
    file: &str,
    value: &T,
) -> Result<(), OutputError> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| OutputError::Encode {
        file: file.to_string(),
        reason: e.to_string(),
    })?;
    location.write(file, text).await?;
    Ok(())
}

/// Deletes `_SUCCESS` first, then every other name verger writes. Returns
/// what is left (paths users see): files verger did not write, and
/// symlinks it would not follow.
async fn remove_verger_names(location: &Location) -> Result<Vec<String>, OutputError> {
    location.delete(&location.key(SUCCESS_FILE)).await?;
    let mut left = Vec::new();
    for dir in [FEATURES_DIR, ERRORS_DIR, INVENTORY_DIR, STAGING_DIR] {
        left.extend(location.delete_all(dir).await?.left);
    }
    for file in [PCA_MODEL_FILE, RUN_FILE] {
        location.delete(&location.key(file)).await?;
    }
    for key in location.list_keys("").await? {
        let shown = location.display_key(&key);
        if !left.contains(&shown) {
            left.push(shown);
        }
    }
    Ok(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(dir: &std::path::Path) -> Location {
        Location::parse(dir.to_str().unwrap()).unwrap()
    }

    fn files(dir: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                if meta.is_dir() {
                    stack.push(path);
                } else {
                    out.push(path.strip_prefix(dir).unwrap().display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn an_output_inside_or_around_the_input_is_refused_before_anything_is_created() {
        let tmp = tempfile::tempdir().unwrap();
        let photos = tmp.path().join("photos");
        std::fs::create_dir_all(photos.join("Apple")).unwrap();
        std::fs::write(photos.join("Apple/a.jpg"), b"jpeg").unwrap();
        let input = local(&photos);
        for output in [
            photos.clone(),
            photos.join("out"),
            photos.join("Apple/new/deeper"),
            tmp.path().to_path_buf(),
            photos.join("x/../../photos"),
        ] {
            let err = OutputDir::open_location(output.to_str().unwrap(), &input).unwrap_err();
            assert!(
                matches!(err, OutputError::Overlap { .. }),
                "{output:?}: {err}"
            );
        }
        assert_eq!(files(&photos), vec!["Apple/a.jpg"], "nothing was created");
        let sibling = tmp.path().join("photos-out");
        let location = OutputDir::open_location(sibling.to_str().unwrap(), &input).unwrap();
        assert!(sibling.is_dir() && !location.is_bucket_root());
    }

    #[tokio::test]
    async fn a_bucket_root_and_an_overlapping_prefix_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let input = local(tmp.path());
        let err = OutputDir::open_location("s3://fruits", &input).unwrap_err();
        assert!(matches!(err, OutputError::BucketRoot { .. }), "{err}");
        let s3_input = Location::parse("s3://fruits/photos").unwrap();
        for output in [
            "s3://fruits/photos/out",
            "s3://fruits",
            "s3://fruits/photos/",
        ] {
            let err = OutputDir::open_location(output, &s3_input).unwrap_err();
            assert!(
                matches!(
                    err,
                    OutputError::Overlap { .. } | OutputError::BucketRoot { .. }
                ),
                "{output}: {err}"
            );
        }
        assert!(OutputDir::open_location("s3://fruits/results", &s3_input).is_ok());
    }

    #[tokio::test]
    async fn a_folder_verger_did_not_make_is_refused_even_with_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("thesis.pdf"), b"years of work").unwrap();
        std::fs::create_dir_all(tmp.path().join("features")).unwrap();
        std::fs::write(tmp.path().join("features/notes.txt"), b"mine").unwrap();
        for overwrite in [false, true] {
            let err = OutputDir::prepare(local(tmp.path()), overwrite)
                .await
                .unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, OutputError::NotVergerOutput { .. }), "{text}");
            assert!(text.contains("not made by verger"), "{text}");
        }
        assert_eq!(files(tmp.path()), vec!["features/notes.txt", "thesis.pdf"]);
    }

    #[tokio::test]
    async fn overwrite_deletes_only_verger_names_and_never_through_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let precious = tmp.path().join("precious");
        std::fs::create_dir_all(&precious).unwrap();
        std::fs::write(precious.join("photo.jpg"), b"keep").unwrap();
        let out = tmp.path().join("out");
        for file in [
            "_SUCCESS",
            "run.json",
            "pca_model.json",
            "features/part-000-0000.parquet",
            "errors/part-000-0000.parquet",
            "inventory/part-000-0000.parquet",
            "_staging/job.json",
            "notes.md",
            "plots/scree.png",
        ] {
            let path = out.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
        std::os::unix::fs::symlink(&precious, out.join("features/linked")).unwrap();
        let location = local(&out);
        // A top-level name of verger's that is a symlink: verger would write
        // through it, so the output is refused before anything is deleted.
        std::fs::rename(out.join("_staging"), tmp.path().join("staging-was")).unwrap();
        std::os::unix::fs::symlink(&precious, out.join("_staging")).unwrap();
        let err = OutputDir::prepare(location.clone(), true)
            .await
            .unwrap_err();
        assert!(matches!(err, OutputError::Symlink { .. }), "{err}");
        assert!(out.join("run.json").exists(), "nothing was deleted");
        std::fs::remove_file(out.join("_staging")).unwrap();
        std::fs::rename(tmp.path().join("staging-was"), out.join("_staging")).unwrap();

        let refused = OutputDir::prepare(location.clone(), false)
            .await
            .unwrap_err();
        assert!(matches!(refused, OutputError::NotEmpty { .. }), "{refused}");
        OutputDir::prepare(location, true).await.unwrap();
        assert_eq!(
            files(&out),
            vec!["features/linked", "notes.md", "plots/scree.png"],
            "only verger's files went"
        );
        assert_eq!(std::fs::read(precious.join("photo.jpg")).unwrap(), b"keep");
    }

    #[tokio::test]
    async fn commit_makes_every_part_durable_before_success() {
        let tmp = tempfile::tempdir().unwrap();
        let output = OutputDir::prepare(local(tmp.path()), false).await.unwrap();
        for file in [
            "features/part-000-0000.parquet",
            "features/part-001-0000.parquet",
            "errors/part-000-0000.parquet",
            "inventory/part-000-0000.parquet",
            "pca_model.json",
            "run.json",
        ] {
            output.location().write(file, b"x".to_vec()).await.unwrap();
        }
        let committed = output.commit().await.unwrap();
        assert_eq!(committed.synced_files, 6);
        assert!(tmp.path().join("_SUCCESS").is_file());
        // A part that vanished cannot be vouched for: no _SUCCESS then.
        let tmp = tempfile::tempdir().unwrap();
        let output = OutputDir::prepare(local(tmp.path()), false).await.unwrap();
        output
            .location()
            .write("features/p.parquet", b"x".to_vec())
            .await
            .unwrap();
        assert!(
            output.commit().await.is_err(),
            "pca_model.json and run.json are missing"
        );
        assert!(!tmp.path().join("_SUCCESS").exists());
    }
}
