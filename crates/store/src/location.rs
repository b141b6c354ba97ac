use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientConfigKey, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};

use crate::StoreError;

/// The default region: the company's data must stay in the EU.
const DEFAULT_REGION: &str = "eu-west-1";

/// TCP connect timeout (the AWS SDKs' "standard" default is 3.1 s); a
/// timed-out connect is retried like any transient fault.
const CONNECT_TIMEOUT: &str = "3s";
/// Whole-request timeout (object_store's default): an image or a part upload
/// takes far less, a request hung on a restarting server is cut and retried.
const REQUEST_TIMEOUT: &str = "30s";
/// Retries of one request before its error is reported (`VERGER_S3_MAX_RETRIES`).
const MAX_RETRIES: usize = 40;
/// Time after a request's first attempt past which it is no longer retried
/// (`VERGER_S3_RETRY_TIMEOUT`, seconds).
const RETRY_TIMEOUT_SECS: f64 = 120.0;

/// How the S3 client rides out transient faults.
///
/// object_store 0.13 retries 5xx (503 SlowDown included), 429 and 408
/// responses, connection failures (refused, reset, closed before the
/// response) and, for reads and idempotent writes, timeouts; it never retries
/// another 4xx, so a missing bucket (404) or refused credentials (403) still
/// fail at once. Its default is 10 retries with a decorrelated-jitter backoff
/// (`next = uniform(100 ms, 2 × previous)`), whose total is only about 1.5 to
/// 2.6 s: not enough to wait for a restarting server. Here the backoff grows
/// faster (× 4, capped at 5 s) and the retry count is high enough that the
/// time limit is what ends the retries: a request keeps trying for about
/// 30 s at the very least and 120 s at most.
fn retry_config() -> Result<RetryConfig, String> {
    let max_retries = match std::env::var("VERGER_S3_MAX_RETRIES") {
        Ok(v) => v
            .trim()
            .parse::<usize>()
            .map_err(|_| format!("VERGER_S3_MAX_RETRIES={v:?} is not a whole number"))?,
        Err(_) => MAX_RETRIES,
    };
    let retry_timeout = match std::env::var("VERGER_S3_RETRY_TIMEOUT") {
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(std::time::Duration::from_secs_f64)
            .ok_or_else(|| format!("VERGER_S3_RETRY_TIMEOUT={v:?} is not a number of seconds"))?,
        Err(_) => std::time::Duration::from_secs_f64(RETRY_TIMEOUT_SECS),
    };
    Ok(RetryConfig {
        backoff: BackoffConfig {
            init_backoff: std::time::Duration::from_millis(100),
            max_backoff: std::time::Duration::from_secs(5),
            base: 4.0,
        },
        max_retries,
        retry_timeout,
    })
}

/// Whether `err` is a transport failure (connection reset or timed out after
/// the request was sent) that object_store does not retry for a request it
/// does not know to be idempotent: its S3 delete is a bulk-delete POST.
/// Whole-object reads tried this many times for transport failures.
const READ_ATTEMPTS: u32 = 3;

/// A failure of the connection rather than an answer from the store.
fn transport_failure(err: &object_store::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(http) = e.downcast_ref::<HttpError>() {
            return !matches!(http.kind(), HttpErrorKind::Decode);
        }
        source = e.source();
    }
    false
}

fn interrupted(err: &object_store::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(http) = e.downcast_ref::<HttpError>() {
            return matches!(
                http.kind(),
                HttpErrorKind::Interrupted | HttpErrorKind::Timeout
            );
        }
        source = e.source();
    }
    false
}

/// Extra attempts of a delete interrupted in flight (deleting twice is harmless).
const DELETE_ATTEMPTS: u32 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    Local,
    S3 { bucket: String },
}

/// A folder-like place in a store: a client plus a prefix inside it.
#[derive(Debug, Clone)]
pub struct Location {
    store: Arc<dyn ObjectStore>,
    /// The same store when local: it alone knows how keys map to file names.
    local: Option<Arc<LocalFileSystem>>,
    prefix: Path,
    kind: StoreKind,
    /// How users see the root: an absolute folder or `s3://bucket/prefix`.
    display_root: String,
    /// The URL DataFusion registers the store under (`file:///` or `s3://bucket`).
    store_url: String,
}

impl Location {
    /// Parses `s3://bucket/prefix` or a local folder (created if missing when
    /// `create` is set, as an output folder is).
    pub fn parse(location: &str) -> Result<Self, StoreError> {
        Self::open(location, false)
    }

    /// Like [`Location::parse`], but creates a missing local folder.
    pub fn parse_for_output(location: &str) -> Result<Self, StoreError> {
        Self::open(location, true)
    }

    fn open(location: &str, create: bool) -> Result<Self, StoreError> {
        let invalid = |reason: &str| StoreError::InvalidLocation {
            location: location.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("missing bucket name, expected s3://bucket/prefix"));
            }
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if std::env::var_os("AWS_REGION").is_none()
                && std::env::var_os("AWS_DEFAULT_REGION").is_none()
            {
                builder = builder.with_region(DEFAULT_REGION);
            }
            // Per-key settings, so `from_env` keeps AWS_ALLOW_HTTP and friends
            // (`with_client_options` would replace them all).
            for (key, env, value) in [
                (
                    ClientConfigKey::ConnectTimeout,
                    "AWS_CONNECT_TIMEOUT",
                    CONNECT_TIMEOUT,
                ),
                (ClientConfigKey::Timeout, "AWS_TIMEOUT", REQUEST_TIMEOUT),
            ] {
                if std::env::var_os(env).is_none() {
                    builder = builder.with_config(AmazonS3ConfigKey::Client(key), value);
                }
            }
            builder = builder.with_retry(retry_config().map_err(|reason| invalid(&reason))?);
            let store = builder.build().map_err(|e| invalid(&crate::describe(&e)))?;
            let prefix = Path::parse(prefix.trim_end_matches('/'))
                .map_err(|e| invalid(&format!("bad prefix: {e}")))?;
            let display_root = if prefix.as_ref().is_empty() {
                format!("s3://{bucket}")
            } else {
                format!("s3://{bucket}/{prefix}")
            };
            return Ok(Location {
                store: Arc::new(store),
                local: None,
                prefix,
                kind: StoreKind::S3 {
                    bucket: bucket.to_string(),
                },
                display_root,
                store_url: format!("s3://{bucket}"),
            });
        }
        if location.contains("://") && !location.starts_with("file://") {
            return Err(invalid(
                "only local folders and s3://bucket/prefix are supported",
            ));
        }
        let folder = std::path::PathBuf::from(location.trim_start_matches("file://"));
        if create {
            std::fs::create_dir_all(&folder).map_err(|e| StoreError::Access {
                action: "create folder",
                target: folder.display().to_string(),
                reason: e.to_string(),
            })?;
        }
        if !folder.is_dir() {
            return Err(StoreError::MissingFolder(folder.display().to_string()));
        }
        let folder = std::fs::canonicalize(&folder).map_err(|e| StoreError::Access {
            action: "resolve folder",
            target: folder.display().to_string(),
            reason: e.to_string(),
        })?;
        let store = LocalFileSystem::new_with_prefix(&folder)
            .map_err(|e| StoreError::access("open folder", folder.display().to_string(), e))?;
        let store = Arc::new(store);
        Ok(Location {
            local: Some(store.clone()),
            store,
            prefix: Path::default(),
            kind: StoreKind::Local,
            display_root: folder.display().to_string(),
            store_url: "file:///".to_string(),
        })
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn kind(&self) -> &StoreKind {
        &self.kind
    }

    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// The root as the user wrote it, normalised (`/abs/folder` or `s3://bucket/prefix`).
    pub fn display_root(&self) -> &str {
        &self.display_root
    }

    /// The base URL under which DataFusion must register [`Location::store`].
    pub fn store_url(&self) -> &str {
        &self.store_url
    }

    /// A URL DataFusion can read, for a folder below this location.
    pub fn table_url(&self, relative: &str) -> String {
        let key = self.key(relative);
        match &self.kind {
            StoreKind::Local => format!("{}/{}/", self.display_root, relative.trim_matches('/')),
            StoreKind::S3 { bucket } => format!("s3://{bucket}/{key}/"),
        }
    }

    /// The object key of `relative` below this location's prefix.
    pub fn key(&self, relative: &str) -> Path {
        let mut key = self.prefix.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            key = key.clone().join(part);
        }
        key
    }

    /// How users see one object of this store: an absolute file path or an
    /// `s3://` URL. This is what the `path` column holds.
    pub fn display_key(&self, key: &Path) -> String {
        match (&self.kind, &self.local) {
            (StoreKind::Local, Some(local)) => match local.path_to_filesystem(key) {
                Ok(path) => path.display().to_string(),
                Err(_) => format!("{}/{key}", self.display_root),
            },
            _ => {
                let bucket = match &self.kind {
                    StoreKind::S3 { bucket } => bucket.as_str(),
                    StoreKind::Local => "",
                };
                format!("s3://{bucket}/{key}")
            }
        }
    }

    /// The file name and label (parent folder's name, or the root's name for
    /// a file directly under it) of an object below this location.
    pub fn name_and_label(&self, key: &Path, display: &str) -> Option<(String, String)> {
        match self.kind {
            StoreKind::Local => {
                let path = std::path::Path::new(display);
                let name = path.file_name()?.to_string_lossy().into_owned();
                let parent = path.parent()?;
                let label = if parent == std::path::Path::new(&self.display_root) {
                    self.root_name()
                } else {
                    parent.file_name()?.to_string_lossy().into_owned()
                };
                Some((name, label))
            }
            StoreKind::S3 { .. } => {
                let parts: Vec<String> = key
                    .prefix_match(&self.prefix)?
                    .map(|part| part.as_ref().to_string())
                    .collect();
                let (name, folders) = parts.split_last()?;
                let label = folders.last().cloned().unwrap_or_else(|| self.root_name());
                Some((name.clone(), label))
            }
        }
    }

    /// The name of the root folder itself: the label of files directly under it.
    pub fn root_name(&self) -> String {
        match &self.kind {
            StoreKind::Local => std::path::Path::new(&self.display_root)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| self.display_root.clone()),
            StoreKind::S3 { bucket } => self
                .prefix
                .parts()
                .next_back()
                .map(|p| p.as_ref().to_string())
                .unwrap_or_else(|| bucket.clone()),
        }
    }

    pub async fn read(&self, key: &Path) -> Result<bytes::Bytes, StoreError> {
        let mut attempt = 1;
        loop {
            let outcome = match self.store.get(key).await {
                Ok(result) => result.bytes().await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(bytes) => return Ok(bytes),
                // What object_store's own retries leave: a body cut off
                // mid-way, or a connection closed before any answer (hyper
                // reports "canceled", which it does not retry). A GET is
                // safe to repeat.
                Err(e) if attempt < READ_ATTEMPTS && transport_failure(&e) => {
                    tracing::debug!(key = %key, attempt, error = %e, "read failed, trying again");
                    tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(StoreError::access("read", self.display_key(key), e)),
            }
        }
    }

    pub async fn write(
        &self,
        relative: &str,
        data: impl Into<PutPayload>,
    ) -> Result<(), StoreError> {
        let key = self.key(relative);
        self.store
            .put(&key, data.into())
            .await
            .map(|_| ())
            .map_err(|e| StoreError::access("write", self.display_key(&key), e))
    }

    pub async fn exists(&self, relative: &str) -> Result<bool, StoreError> {
        let key = self.key(relative);
        match self.store.head(&key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(StoreError::access("check", self.display_key(&key), e)),
        }
    }

    /// Every object key under `relative` (the whole location when empty).
    pub async fn list_keys(&self, relative: &str) -> Result<Vec<Path>, StoreError> {
        use futures::TryStreamExt;
        let prefix = self.key(relative);
        let prefix = (!prefix.as_ref().is_empty()).then_some(prefix);
        self.store
            .list(prefix.as_ref())
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| StoreError::access("list", self.display_root.clone(), e))
    }

    pub async fn delete(&self, key: &Path) -> Result<(), StoreError> {
        let mut attempt = 1;
        loop {
            match self.store.delete(key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => return Ok(()),
                Err(e) if attempt < DELETE_ATTEMPTS && interrupted(&e) => {
                    tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(StoreError::access("delete", self.display_key(key), e)),
            }
        }
    }

    /// Deletes everything under `relative`, then (locally) the empty folders.
    pub async fn delete_all(&self, relative: &str) -> Result<usize, StoreError> {
        let keys = self.list_keys(relative).await?;
        for key in &keys {
            self.delete(key).await?;
        }
        if self.kind == StoreKind::Local {
            let dir = std::path::Path::new(&self.display_root).join(relative);
            remove_empty_dirs(&dir);
            if !relative.is_empty() {
                let _ = std::fs::remove_dir(&dir);
            }
        }
        Ok(keys.len())
    }
}

fn remove_empty_dirs(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_empty_dirs(&entry.path());
            // Only empty folders go; anything else stays and is reported by listing.
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_location_keeps_bucket_and_prefix() {
        let loc = Location::parse("s3://fruits/images/").unwrap();
        assert_eq!(
            loc.kind(),
            &StoreKind::S3 {
                bucket: "fruits".into()
            }
        );
        assert_eq!(loc.display_root(), "s3://fruits/images");
        assert_eq!(loc.key("Training/a.jpg").as_ref(), "images/Training/a.jpg");
        assert_eq!(loc.root_name(), "images");
        assert_eq!(
            loc.display_key(&loc.key("x/y.jpg")),
            "s3://fruits/images/x/y.jpg"
        );
    }

    #[test]
    fn missing_bucket_is_refused() {
        let err = Location::parse("s3://").unwrap_err().to_string();
        assert!(err.contains("missing bucket"), "{err}");
    }

    #[test]
    fn unknown_scheme_is_refused() {
        let err = Location::parse("gs://bucket/x").unwrap_err().to_string();
        assert!(err.contains("only local folders"), "{err}");
    }

    #[test]
    fn only_interrupted_transport_errors_retry_a_delete() {
        use object_store::client::{HttpError, HttpErrorKind};
        let http = |kind| object_store::Error::Generic {
            store: "S3",
            source: Box::new(HttpError::new(
                kind,
                std::io::Error::from(std::io::ErrorKind::ConnectionReset),
            )),
        };
        assert!(interrupted(&http(HttpErrorKind::Interrupted)));
        assert!(interrupted(&http(HttpErrorKind::Timeout)));
        // Connection failures were already retried by object_store itself.
        assert!(!interrupted(&http(HttpErrorKind::Connect)));
        let not_found = object_store::Error::NotFound {
            path: "x".into(),
            source: "gone".into(),
        };
        assert!(!interrupted(&not_found));
    }

    #[test]
    fn a_server_error_is_not_called_access_denied() {
        let err = object_store::Error::Generic {
            store: "S3",
            source: "Error performing GET http://127.0.0.1:40312/b/k in 1.403s - Server returned non-2xx status code: 503 Service Unavailable: SlowDown".into(),
        };
        let text = crate::describe(&err);
        assert!(!text.contains("access denied"), "{text}");
        let err = object_store::Error::Generic {
            store: "S3",
            source: "Error performing GET http://h/b in 0.1s - Server returned non-2xx status code: 403 Forbidden: ".into(),
        };
        assert!(crate::describe(&err).contains("access denied"));
    }

    #[test]
    fn missing_local_folder_is_named() {
        let err = Location::parse("/definitely/not/here")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/definitely/not/here"), "{err}");
    }
}
