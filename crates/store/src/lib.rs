//! Where images and results live.
//!
//! This crate owns every contact with storage: it turns a user's location
//! (`/some/folder` or `s3://bucket/prefix`) into an [`object_store`] client
//! configured from the standard AWS environment, lists images under it as a
//! stream, and reads and writes objects. The rest of verger never sees a
//! bucket, a credential or a filesystem call.
//!
//! It knows nothing about image content, the model, PCA or DataFusion.
//!
//! ```no_run
//! # async fn demo() -> Result<(), verger_store::StoreError> {
//! use futures::StreamExt;
//! let input = verger_store::Location::parse("s3://fruits/images/")?;
//! let filter = verger_store::NameFilter::new("*.jpg")?;
//! let mut images = verger_store::list_images(&input, &filter);
//! while let Some(image) = images.next().await {
//!     let image = image?;
//!     println!("{} -> {}", image.path, image.label);
//! }
//! # Ok(()) }
//! ```

mod listing;
mod location;

pub use listing::{ListedImage, NameFilter, list_images};
pub use location::{Deleted, Location, StoreKind};
pub use object_store;
pub use object_store::path::Path as ObjectKey;

/// A storage failure, always naming the location or object it concerns.
///
/// Messages never carry credentials: they are built from the location and the
/// store's own error, which `object_store` keeps free of secrets.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid location {location:?}: {reason}")]
    InvalidLocation { location: String, reason: String },
    #[error("input folder {0} does not exist or is not a folder")]
    MissingFolder(String),
    #[error("invalid --glob pattern {pattern:?}: {reason}")]
    InvalidGlob { pattern: String, reason: String },
    #[error("cannot read {target}: object not found (deleted after listing?)")]
    NotFound { target: String },
    #[error("cannot {action} {target}: {reason}")]
    Access {
        action: &'static str,
        target: String,
        reason: String,
    },
}

impl StoreError {
    pub(crate) fn access(
        action: &'static str,
        target: impl Into<String>,
        source: object_store::Error,
    ) -> Self {
        StoreError::Access {
            action,
            target: target.into(),
            reason: describe(&source),
        }
    }
}

/// A one-line, human reason for a store error, with a hint for the common
/// permanent failures (a user's first S3 run usually hits one of these).
pub fn describe(err: &object_store::Error) -> String {
    use object_store::Error as E;
    let text = err.to_string();
    let lower = text.to_ascii_lowercase();
    let hint = match err {
        E::NotFound { .. } => Some("object not found (deleted after listing?)"),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => Some(
            "access denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the instance role) and the bucket policy",
        ),
        _ if lower.contains("signaturedoesnotmatch")
            || lower.contains("invalidaccesskeyid")
            || lower.contains("accessdenied")
            || lower.contains("status code: 403") =>
        {
            Some(
                "access denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the instance role) and the bucket policy",
            )
        }
        _ if lower.contains("nosuchbucket") => Some("no such bucket"),
        _ => None,
    };
    match hint {
        Some(hint) => format!("{hint} ({})", one_line(&text)),
        None => one_line(&text),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
