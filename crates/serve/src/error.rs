//! Error answers. The client gets a fixed message per kind, the kind and the
//! request id; the detail (which limit, which decoder error, which model
//! failure) goes to the log under the same request id, never to the client.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Every error kind with its message for the client, listed at zero in
/// `/metrics` from the start.
pub const ERROR_KINDS: [(&str, &str); 15] = [
    ("body_too_large", "the upload is over the size limit"),
    ("read_timeout", "the upload did not arrive in time"),
    ("bad_body", "the request body could not be read"),
    (
        "empty_body",
        "no image in the request: send the photo as the request body, or as a \
         multipart/form-data field named \"image\"",
    ),
    (
        "no_image_field",
        "the multipart form has no field named \"image\" and no file",
    ),
    (
        "unsupported_content_type",
        "send the photo as image/*, application/octet-stream or multipart/form-data",
    ),
    ("not_an_image", "not a JPEG or PNG image"),
    (
        "unsupported_image",
        "this variant of JPEG or PNG is not supported",
    ),
    ("corrupt_image", "the image is corrupt or truncated"),
    ("image_too_large", "the image is too large to decode"),
    ("overloaded", "the service is busy; retry shortly"),
    ("inference", "the model could not answer this request"),
    ("not_found", "no such route"),
    (
        "method_not_allowed",
        "this method is not allowed on this route",
    ),
    ("internal", "internal error"),
];

/// A refused or failed request: what the client is told (`status`, `kind`)
/// and what only the log is told (`detail`).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub detail: String,
    /// Seconds for a `Retry-After` header (on 503s).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Self {
        debug_assert!(
            ERROR_KINDS.iter().any(|(k, _)| *k == kind),
            "{kind} missing from ERROR_KINDS"
        );
        ApiError {
            status,
            kind,
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

/// The JSON body of an error answer.
pub fn error_body(kind: &str, request_id: Option<&str>) -> Body {
    let message = ERROR_KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or("error", |(_, m)| m);
    let mut json = serde_json::json!({ "error": message, "kind": kind });
    if let Some(id) = request_id {
        json["request_id"] = id.into();
    }
    Body::from(json.to_string())
}

impl IntoResponse for ApiError {
    /// The body without a request id; the tracking middleware, which knows
    /// the id, logs the detail (carried as a response extension) and puts
    /// the id in the body.
    fn into_response(self) -> Response {
        let mut response = Response::new(error_body(self.kind, None));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response.extensions_mut().insert(self);
        response
    }
}
