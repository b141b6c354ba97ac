use futures::stream::{BoxStream, StreamExt};
use globset::{GlobBuilder, GlobMatcher};
use object_store::path::Path;

use crate::{Location, StoreError};

/// Which files count as images: a glob on the file *name* only (not the folders).
#[derive(Debug, Clone)]
pub struct NameFilter {
    pattern: String,
    matcher: GlobMatcher,
}

impl NameFilter {
    /// `*.jpg`, `*.{jpg,jpeg,png}`, … matched case-insensitively, because
    /// cameras and phones write `.JPG` as often as `.jpg`.
    pub fn new(pattern: &str) -> Result<Self, StoreError> {
        let glob = GlobBuilder::new(pattern)
            .case_insensitive(true)
            .literal_separator(true)
            .build()
            .map_err(|e| StoreError::InvalidGlob {
                pattern: pattern.to_string(),
                reason: e.kind().to_string(),
            })?;
        Ok(NameFilter {
            pattern: pattern.to_string(),
            matcher: glob.compile_matcher(),
        })
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    pub fn matches(&self, file_name: &str) -> bool {
        self.matcher.is_match(file_name)
    }
}

/// One image found by listing, before anything reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedImage {
    /// What users see: an absolute file path or an `s3://` URL.
    pub path: String,
    /// The key inside the location's store.
    pub key: Path,
    /// The parent folder's name, exactly as written (spaces kept).
    pub label: String,
    pub size: u64,
    /// Milliseconds since the Unix epoch.
    pub last_modified_ms: i64,
    pub e_tag: Option<String>,
}

/// Streams every object under `location` whose file name passes `filter`.
///
/// Nothing is collected: a prefix with millions of objects flows through one
/// page at a time, in the store's order (lexicographic on S3).
pub fn list_images(
    location: &Location,
    filter: &NameFilter,
) -> BoxStream<'static, Result<ListedImage, StoreError>> {
    let prefix = location.prefix().clone();
    let listing_prefix = (!prefix.as_ref().is_empty()).then_some(prefix);
    let location = location.clone();
    let filter = filter.clone();
    location
        .store()
        .list(listing_prefix.as_ref())
        .filter_map(move |item| {
            let outcome = match item {
                Err(e) => Some(Err(StoreError::access(
                    "list",
                    location.display_root().to_string(),
                    e,
                ))),
                Ok(meta) => {
                    let path = location.display_key(&meta.location);
                    match location.name_and_label(&meta.location, &path) {
                        Some((name, label)) if filter.matches(&name) => Some(Ok(ListedImage {
                            path,
                            label,
                            key: meta.location,
                            size: meta.size,
                            last_modified_ms: meta.last_modified.timestamp_millis(),
                            e_tag: meta.e_tag,
                        })),
                        _ => None,
                    }
                }
            };
            futures::future::ready(outcome)
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ObjectKey;

    #[test]
    fn glob_matches_names_case_insensitively() {
        let filter = NameFilter::new("*.{jpg,png}").unwrap();
        assert!(filter.matches("r0_40.jpg"));
        assert!(filter.matches("IMG_1.JPG"));
        assert!(filter.matches("a b.png"));
        assert!(!filter.matches("notes.txt"));
        assert!(!filter.matches("jpg"));
    }

    #[test]
    fn bad_glob_is_a_clear_error() {
        let err = NameFilter::new("*.{jpg").unwrap_err().to_string();
        assert!(err.contains("--glob"), "{err}");
    }

    #[tokio::test]
    async fn lists_recursively_with_labels() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("Training/Apple Braeburn")).unwrap();
        std::fs::create_dir_all(root.join("Äpfel Grün")).unwrap();
        std::fs::write(root.join("Training/Apple Braeburn/r0_40.jpg"), b"x").unwrap();
        std::fs::write(root.join("Äpfel Grün/ñ 1.jpg"), b"xy").unwrap();
        std::fs::write(root.join("top.jpg"), b"xyz").unwrap();
        std::fs::write(root.join("Äpfel Grün/a#b%20c.jpg"), b"wxyz").unwrap();
        std::fs::write(root.join("Training/readme.txt"), b"no").unwrap();
        let location = Location::parse(root.to_str().unwrap()).unwrap();
        let filter = NameFilter::new("*.jpg").unwrap();
        let mut found: Vec<ListedImage> = list_images(&location, &filter)
            .map(|r| r.unwrap())
            .collect()
            .await;
        found.sort_by(|a, b| a.path.cmp(&b.path));
        let summary: Vec<(String, String, u64)> = found
            .iter()
            .map(|i| {
                let rel = i
                    .path
                    .strip_prefix(location.display_root())
                    .unwrap()
                    .to_string();
                (rel, i.label.clone(), i.size)
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    "/Training/Apple Braeburn/r0_40.jpg".into(),
                    "Apple Braeburn".into(),
                    1
                ),
                ("/top.jpg".into(), "root".into(), 3),
                ("/Äpfel Grün/a#b%20c.jpg".into(), "Äpfel Grün".into(), 4),
                ("/Äpfel Grün/ñ 1.jpg".into(), "Äpfel Grün".into(), 2),
            ]
        );
        for image in &found {
            assert!(
                std::path::Path::new(&image.path).is_file(),
                "{}",
                image.path
            );
            // The key survives a trip through a string column, as in the table.
            let key = ObjectKey::parse(image.key.as_ref()).unwrap();
            let bytes = location.read(&key).await.unwrap();
            assert_eq!(bytes.len() as u64, image.size, "{}", image.path);
        }
    }
}
