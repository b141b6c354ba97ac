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
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(StoreError::NotFound {
                        target: self.display_key(key),
                    });
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

    /// Deletes one object. Locally, a file reached through a symlinked
    /// folder (its real path is outside this location) is left alone.
    pub async fn delete(&self, key: &Path) -> Result<(), StoreError> {
        if let Some(local) = &self.local {
            let Some(file) = self.local_file_inside(local, key)? else {
                tracing::warn!(
                    file = %self.display_key(key),
                    "not deleted: it lies outside the folder (reached through a symlink)"
                );
                return Ok(());
            };
            return match std::fs::remove_file(&file) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(StoreError::Access {
                    action: "delete",
                    target: file.display().to_string(),
                    reason: e.to_string(),
                }),
            };
        }
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

    /// The file behind `key` when it really lies inside this (local)
    /// location: `None` when a symlinked folder on the way leads elsewhere.
    fn local_file_inside(
        &self,
        local: &LocalFileSystem,
        key: &Path,
    ) -> Result<Option<std::path::PathBuf>, StoreError> {
        let file = local
            .path_to_filesystem(key)
            .map_err(|e| StoreError::access("resolve", self.display_key(key), e))?;
        let Some(parent) = file.parent() else {
            return Ok(None);
        };
        match std::fs::canonicalize(parent) {
            Ok(parent) if parent.starts_with(&self.display_root) => Ok(Some(file)),
            Ok(_) => Ok(None),
            // A folder that does not exist holds nothing to delete.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(file)),
            Err(e) => Err(StoreError::Access {
                action: "resolve",
                target: parent.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// Deletes everything under `relative` (which must not be empty: a
    /// location is never wiped whole).
    ///
    /// On S3 the keys go out in bulk-delete requests (up to 1,000 keys
    /// each). Locally the folder is walked without following symlinks: a
    /// symlink (to a file or a folder) is never followed nor removed, and is
    /// reported in [`Deleted::left`], so nothing outside the folder can be
    /// reached; emptied folders are removed.
    pub async fn delete_all(&self, relative: &str) -> Result<Deleted, StoreError> {
        let relative = relative.trim_matches('/');
        if relative.is_empty() {
            return Err(StoreError::InvalidLocation {
                location: self.display_root.clone(),
                reason: "refusing to delete a whole location".into(),
            });
        }
        if self.local.is_some() {
            let dir = std::path::Path::new(&self.display_root).join(relative);
            let mut deleted = Deleted::default();
            remove_tree_local(std::path::Path::new(&self.display_root), &dir, &mut deleted)?;
            return Ok(deleted);
        }
        let keys = self.list_keys(relative).await?;
        let removed = keys.len();
        for chunk in keys.chunks(BULK_DELETE_KEYS) {
            self.delete_bulk(chunk).await?;
        }
        Ok(Deleted {
            removed,
            left: Vec::new(),
        })
    }

    /// One bulk-delete request, repeated when the connection broke under it
    /// (object_store does not retry the POST; deleting twice is harmless).
    async fn delete_bulk(&self, keys: &[Path]) -> Result<(), StoreError> {
        use futures::StreamExt;
        let mut attempt = 1;
        loop {
            let input = futures::stream::iter(keys.to_vec()).map(Ok).boxed();
            let outcomes: Vec<object_store::Result<Path>> =
                self.store.delete_stream(input).collect().await;
            let failure = outcomes
                .into_iter()
                .filter_map(Result::err)
                .find(|e| !matches!(e, object_store::Error::NotFound { .. }));
            match failure {
                None => return Ok(()),
                Some(e) if attempt < DELETE_ATTEMPTS && interrupted(&e) => {
                    tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
                    attempt += 1;
                }
                Some(e) => return Err(StoreError::access("delete", self.display_root.clone(), e)),
            }
        }
    }

    /// Makes the given objects durable before anything that vouches for them
    /// is written. Locally: `fsync` of each file and of every folder on the
    /// way up to the root (a rename or a new file is only durable once its
    /// folder is). On S3 a completed PUT is already durable: nothing to do.
    /// Returns how many files were synced.
    pub fn sync_local(&self, keys: &[Path]) -> Result<usize, StoreError> {
        let Some(local) = &self.local else {
            return Ok(0);
        };
        let root = std::path::Path::new(&self.display_root);
        let mut folders = std::collections::BTreeSet::new();
        for key in keys {
            let file = local
                .path_to_filesystem(key)
                .map_err(|e| StoreError::access("resolve", self.display_key(key), e))?;
            fsync(&file)?;
            let mut folder = file.parent();
            while let Some(dir) = folder {
                folders.insert(dir.to_path_buf());
                if dir == root {
                    break;
                }
                folder = dir.parent();
            }
        }
        // Deepest first, so a folder is synced after the entries it gained.
        for folder in folders.iter().rev() {
            fsync(folder)?;
        }
        Ok(keys.len())
    }

    /// Whether the two locations share any object: the same place, or one
    /// inside the other (local folders compared after resolving symlinks, S3
    /// prefixes compared segment by segment within one bucket).
    pub fn overlaps(&self, other: &Location) -> bool {
        match (&self.kind, &other.kind) {
            (StoreKind::Local, StoreKind::Local) => {
                let (a, b) = (
                    std::path::Path::new(&self.display_root),
                    std::path::Path::new(&other.display_root),
                );
                a.starts_with(b) || b.starts_with(a)
            }
            (StoreKind::S3 { bucket: a }, StoreKind::S3 { bucket: b }) if a == b => {
                let (x, y): (Vec<_>, Vec<_>) = (
                    self.prefix.parts().collect(),
                    other.prefix.parts().collect(),
                );
                x.starts_with(&y) || y.starts_with(&x)
            }
            _ => false,
        }
    }

    /// Like [`Location::overlaps`], for a location given as text that may
    /// not exist yet (nothing is created): a local path is resolved through
    /// its longest existing ancestor, so symlinks and `..` count.
    pub fn overlaps_path(&self, other: &str) -> Result<bool, StoreError> {
        if other.starts_with("s3://") || self.local.is_none() {
            return match Location::parse(other) {
                Ok(other) => Ok(self.overlaps(&other)),
                // A local folder that does not exist yet cannot be an S3 prefix.
                Err(StoreError::MissingFolder(_)) => Ok(false),
                Err(e) => Err(e),
            };
        }
        let resolved = resolve_local(std::path::Path::new(other.trim_start_matches("file://")))
            .map_err(|e| StoreError::Access {
                action: "resolve folder",
                target: other.to_string(),
                reason: e.to_string(),
            })?;
        let root = std::path::Path::new(&self.display_root);
        Ok(resolved.starts_with(root) || root.starts_with(&resolved))
    }

    /// A key relative to this location (`features/part-000-0000.parquet`),
    /// or `None` for a key outside it.
    pub fn relative(&self, key: &Path) -> Option<String> {
        let parts: Vec<String> = key
            .prefix_match(&self.prefix)?
            .map(|part| part.as_ref().to_string())
            .collect();
        Some(parts.join("/"))
    }

    /// Whether `relative` is a symlink in a local folder (never on S3):
    /// writing through it would leave the location.
    pub fn is_symlink(&self, relative: &str) -> bool {
        self.local.is_some()
            && std::fs::symlink_metadata(std::path::Path::new(&self.display_root).join(relative))
                .is_ok_and(|meta| meta.file_type().is_symlink())
    }

    /// An S3 location at the root of its bucket (`s3://bucket`).
    pub fn is_bucket_root(&self) -> bool {
        matches!(self.kind, StoreKind::S3 { .. }) && self.prefix.as_ref().is_empty()
    }
}

/// The absolute path a local folder would have: `..` folded, symlinks
/// resolved along the longest part that exists (nothing is created).
fn resolve_local(path: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    use std::path::Component;
    let absolute = std::path::absolute(path)?;
    let mut lexical = std::path::PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            other => lexical.push(other),
        }
    }
    let mut existing = lexical.as_path();
    let mut rest = Vec::new();
    loop {
        match std::fs::canonicalize(existing) {
            Ok(resolved) => {
                let mut out = resolved;
                out.extend(rest.iter().rev());
                return Ok(out);
            }
            Err(_) => match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_os_string());
                    existing = parent;
                }
                _ => return Ok(lexical),
            },
        }
    }
}

/// Keys per S3 bulk-delete request (the API's maximum).
const BULK_DELETE_KEYS: usize = 1000;

/// What [`Location::delete_all`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Deleted {
    pub removed: usize,
    /// What was left in place because deleting it could reach outside the
    /// location (symlinks), as paths users see.
    pub left: Vec<String>,
}

fn fsync(path: &std::path::Path) -> Result<(), StoreError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::Access {
            action: "sync",
            target: path.display().to_string(),
            reason: e.to_string(),
        })
}

/// Removes the regular files under `dir` and then the emptied folders,
/// never following a symlink: `lstat` tells a link from what it points to.
fn remove_tree_local(
    root: &std::path::Path,
    dir: &std::path::Path,
    deleted: &mut Deleted,
) -> Result<(), StoreError> {
    let access =
        |action: &'static str, path: &std::path::Path, e: std::io::Error| StoreError::Access {
            action,
            target: path.display().to_string(),
            reason: e.to_string(),
        };
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(access("inspect", dir, e)),
    };
    if meta.file_type().is_symlink() {
        deleted.left.push(dir.display().to_string());
        return Ok(());
    }
    if meta.is_file() {
        std::fs::remove_file(dir).map_err(|e| access("delete", dir, e))?;
        deleted.removed += 1;
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| access("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| access("list", dir, e))?;
        remove_tree_local(root, &entry.path(), deleted)?;
    }
    // Only an emptied folder goes (and never the root itself).
    if dir != root {
        let _not_empty = std::fs::remove_dir(dir);
    }
    Ok(())
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
    fn overlapping_locations_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let photos = dir.path().join("photos");
        std::fs::create_dir_all(photos.join("out")).unwrap();
        std::fs::create_dir_all(dir.path().join("photos-out")).unwrap();
        let at = |p: &std::path::Path| Location::parse(p.to_str().unwrap()).unwrap();
        let input = at(&photos);
        assert!(input.overlaps(&at(&photos)), "the same folder");
        assert!(
            input.overlaps(&at(&photos.join("out"))),
            "output inside input"
        );
        assert!(
            at(&photos.join("out")).overlaps(&input),
            "input inside output"
        );
        assert!(input.overlaps(&at(dir.path())), "output is a parent");
        assert!(
            !input.overlaps(&at(&dir.path().join("photos-out"))),
            "a sibling whose name starts the same is not inside"
        );
        // A symlink to the input is the input.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&photos, &link).unwrap();
        assert!(input.overlaps(&at(&link)));

        let s3 = |url: &str| Location::parse(url).unwrap();
        assert!(s3("s3://b/images").overlaps(&s3("s3://b/images/out")));
        assert!(s3("s3://b/images/out/").overlaps(&s3("s3://b/images")));
        assert!(s3("s3://b").overlaps(&s3("s3://b/images")));
        assert!(!s3("s3://b/images").overlaps(&s3("s3://b/images-out")));
        assert!(!s3("s3://b/images").overlaps(&s3("s3://c/images")));
        assert!(!s3("s3://b/x").overlaps(&input));
        assert!(s3("s3://b").is_bucket_root() && s3("s3://b/").is_bucket_root());
        assert!(!s3("s3://b/x").is_bucket_root() && !input.is_bucket_root());
    }

    #[tokio::test]
    async fn local_delete_all_never_follows_a_symlink_out() {
        let dir = tempfile::tempdir().unwrap();
        let precious = dir.path().join("precious");
        std::fs::create_dir_all(&precious).unwrap();
        std::fs::write(precious.join("photo.jpg"), b"keep").unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir_all(out.join("features/sub")).unwrap();
        std::fs::write(out.join("features/part-0.parquet"), b"x").unwrap();
        std::fs::write(out.join("features/sub/part-1.parquet"), b"y").unwrap();
        std::os::unix::fs::symlink(&precious, out.join("features/linked")).unwrap();
        std::os::unix::fs::symlink(precious.join("photo.jpg"), out.join("features/one.jpg"))
            .unwrap();
        std::os::unix::fs::symlink(&precious, out.join("_staging")).unwrap();
        let location = Location::parse(out.to_str().unwrap()).unwrap();

        let deleted = location.delete_all("features").await.unwrap();
        assert_eq!(deleted.removed, 2, "{deleted:?}");
        assert_eq!(deleted.left.len(), 2, "{deleted:?}");
        let deleted = location.delete_all("_staging").await.unwrap();
        assert_eq!(deleted.removed, 0);
        location
            .delete(&location.key("_staging/photo.jpg"))
            .await
            .unwrap();
        assert_eq!(std::fs::read(precious.join("photo.jpg")).unwrap(), b"keep");
        assert!(!out.join("features/part-0.parquet").exists());
        assert!(!out.join("features/sub").exists(), "emptied folders go");
        assert!(
            location.delete_all("").await.is_err(),
            "never the whole location"
        );
        assert!(location.delete_all("/").await.is_err());
    }

    #[tokio::test]
    async fn sync_local_reaches_every_file_and_reports_them() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::parse(dir.path().to_str().unwrap()).unwrap();
        location
            .write("a/b/part.parquet", b"x".to_vec())
            .await
            .unwrap();
        location.write("run.json", b"{}".to_vec()).await.unwrap();
        let keys = [location.key("a/b/part.parquet"), location.key("run.json")];
        assert_eq!(location.sync_local(&keys).unwrap(), 2);
        let missing = [location.key("a/missing.parquet")];
        assert!(
            location.sync_local(&missing).is_err(),
            "a missing part is an error"
        );
        let s3 = Location::parse("s3://b/x").unwrap();
        assert_eq!(s3.sync_local(&keys).unwrap(), 0);
    }

    #[test]
    fn missing_local_folder_is_named() {
        let err = Location::parse("/definitely/not/here")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/definitely/not/here"), "{err}");
    }
}
