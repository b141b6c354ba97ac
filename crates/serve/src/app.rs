//! The routes, the request limits and the JSON answers.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::batcher::{self, Job};
use crate::fruit_info::{FruitInfo, FruitTable};
use crate::metrics::Metrics;
use crate::{Limits, ServedModel, Service};

const PAGE: &str = include_str!("../page/index.html");

/// The routes `/metrics` names; any other path is counted as `other` so a
/// scan of random URLs cannot blow up the number of series.
const ROUTES: [&str; 4] = ["/", "/v1/identify", "/healthz", "/metrics"];

/// Every error kind, listed at zero from the start.
const ERROR_KINDS: [&str; 13] = [
    "body_too_large",
    "read_timeout",
    "bad_body",
    "empty_body",
    "no_image_field",
    "not_an_image",
    "unsupported_image",
    "corrupt_image",
    "image_too_large",
    "overloaded",
    "inference",
    "not_found",
    "method_not_allowed",
];

struct AppState {
    queue: mpsc::Sender<Job>,
    decoders: Arc<Semaphore>,
    limits: Limits,
    labels: Vec<String>,
    /// The info card of each label, by label index.
    cards: Vec<Option<FruitInfo>>,
    model: ServedModel,
    metrics: Arc<Metrics>,
}

/// Builds the router and starts the batcher task (it ends with the router).
pub fn router(service: Service) -> Router {
    let metrics = Arc::new(Metrics::new());
    for kind in ERROR_KINDS {
        metrics.errors.with_label_values(&[kind]);
    }
    let (queue, receiver) = mpsc::channel(service.limits.queue_capacity.max(1));
    tokio::spawn(batcher::run(
        receiver,
        service.model,
        Arc::clone(&service.classifier),
        service.batch,
        Arc::clone(&metrics),
    ));
    let labels = service.classifier.labels().to_vec();
    let table = FruitTable::embedded();
    let cards: Vec<Option<FruitInfo>> = labels.iter().map(|l| table.lookup(l).cloned()).collect();
    let without: Vec<&str> = labels
        .iter()
        .zip(&cards)
        .filter(|(_, card)| card.is_none())
        .map(|(label, _)| label.as_str())
        .collect();
    if !without.is_empty() {
        tracing::info!(labels = ?without, "labels without a fruit-information row (info = null)");
    }
    let state = Arc::new(AppState {
        queue,
        decoders: Arc::new(Semaphore::new(service.limits.decoders.max(1))),
        limits: service.limits.clone(),
        labels,
        cards,
        model: service.info,
        metrics,
    });
    Router::new()
        .route("/", get(page))
        .route("/v1/identify", post(identify))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Multipart reads at most this much (raw bodies are counted by hand).
        .layer(DefaultBodyLimit::max(service.limits.max_body))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), track))
        .with_state(state)
}

/// Counts and times every request, whatever answered it.
async fn track(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = ROUTES
        .iter()
        .find(|r| **r == request.uri().path())
        .copied()
        .unwrap_or("other");
    let method = match *request.method() {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        _ => "other",
    };
    let response = next.run(request).await;
    let m = &state.metrics;
    m.requests
        .with_label_values(&[route, method, response.status().as_str()])
        .inc();
    m.latency
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn page() -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))],
        Html(PAGE),
    )
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(serde_json::json!({
        "status": "ok",
        "engine": state.model.engine,
        "model_sha256": state.model.model_sha256,
        "labels": state.model.labels,
        "queue_depth": state.metrics.queue_depth.get(),
    }))
    .into_response()
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let err = ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no route {}; try POST /v1/identify, GET /, GET /healthz or GET /metrics",
            request.uri().path()
        ),
    );
    state.metrics.errors.with_label_values(&[err.kind]).inc();
    err.into_response()
}

async fn method_not_allowed(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let path = request.uri().path();
    let allow = if path == "/v1/identify" {
        "POST"
    } else {
        "GET, HEAD"
    };
    let err = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} {path} is not allowed; use {allow}", request.method()),
    );
    state.metrics.errors.with_label_values(&[err.kind]).inc();
    let mut response = err.into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// One class and its probability.
#[derive(Debug, Serialize)]
struct Scored {
    label: String,
    confidence: f32,
}

/// The answer of `POST /v1/identify`. `label` is `null` when the photo
/// is rejected, and `rejected` says why; `top5` is always there, ranked.
#[derive(Debug, Serialize)]
struct Answer {
    label: Option<String>,
    /// The best fruit's probability (answered or not).
    confidence: f32,
    rejected: Option<crate::RejectReason>,
    /// Which rule rejected it: `fruit_mass`, `negatives` or `max_softmax`.
    rejected_by: Option<crate::RejectRule>,
    top5: Vec<Scored>,
    info: Option<FruitInfo>,
}

async fn identify(State(state): State<Arc<AppState>>, request: Request) -> Response {
    match identify_inner(&state, request).await {
        Ok(answer) => axum::Json(answer).into_response(),
        Err(err) => {
            state.metrics.errors.with_label_values(&[err.kind]).inc();
            if err.status.is_server_error() {
                tracing::warn!(kind = err.kind, message = %err.message, "identify failed");
            } else {
                tracing::debug!(kind = err.kind, message = %err.message, "identify refused");
            }
            err.into_response()
        }
    }
}

async fn identify_inner(state: &AppState, request: Request) -> Result<Answer, ApiError> {
    let limits = &state.limits;
    let bytes = tokio::time::timeout(limits.read_timeout, read_image(request, limits.max_body))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "read_timeout",
                format!(
                    "the image did not arrive within {} s",
                    limits.read_timeout.as_secs()
                ),
            )
        })??;
    if bytes.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty_body",
            "no image in the request: send the photo as the request body, or as a \
             multipart/form-data field named \"image\"",
        ));
    }
    let tensor = decode(state, bytes).await?;

    let (reply, answer) = oneshot::channel();
    state.metrics.queue_depth.inc();
    let job = Job {
        tensor,
        reply,
        queued: Instant::now(),
    };
    if let Err(err) = state.queue.try_send(job) {
        state.metrics.queue_depth.dec();
        let message = match err {
            mpsc::error::TrySendError::Full(_) => {
                "too many images are waiting for the model; retry shortly"
            }
            mpsc::error::TrySendError::Closed(_) => "the service is shutting down",
        };
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            message,
        ));
    }
    let identified = match tokio::time::timeout(limits.inference_timeout, answer).await {
        Ok(Ok(Ok(identified))) => identified,
        Ok(Ok(Err(reason))) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "inference",
                format!("the model failed on this batch: {reason}"),
            ));
        }
        Ok(Err(_)) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "inference",
                "the model stopped before answering",
            ));
        }
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!(
                    "no answer from the model within {} s; retry shortly",
                    limits.inference_timeout.as_secs()
                ),
            ));
        }
    };
    answer_from(state, &identified)
}

fn answer_from(state: &AppState, identified: &crate::Identification) -> Result<Answer, ApiError> {
    let ranking = &identified.ranking;
    let top5 = ranking
        .iter()
        .map(|&(index, confidence)| {
            let label = state.labels.get(index).ok_or_else(no_ranking)?.clone();
            Ok(Scored { label, confidence })
        })
        .collect::<Result<Vec<Scored>, ApiError>>()?;
    let (Some(&(best, _)), Some(first)) = (ranking.first(), top5.first()) else {
        return Err(no_ranking());
    };
    let rejected_by = identified.rejected;
    if let Some(rule) = rejected_by {
        tracing::debug!(?rule, best = %first.label, "photo rejected");
    }
    Ok(Answer {
        label: rejected_by.is_none().then(|| first.label.clone()),
        confidence: first.confidence,
        rejected: rejected_by.map(crate::RejectRule::reason),
        rejected_by,
        info: rejected_by
            .is_none()
            .then(|| state.cards.get(best).cloned().flatten())
            .flatten(),
        top5,
    })
}

fn no_ranking() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "inference",
        "the classifier returned no label, or one it does not know",
    )
}

/// The image's bytes: the raw body, or the multipart field named `image`
/// (or `file`, or the first file).
async fn read_image(request: Request, max_body: usize) -> Result<Bytes, ApiError> {
    let declared = content_length(request.headers());
    if declared.is_some_and(|n| n > max_body) {
        // Read (and drop) what was sent, so that the client gets the 413
        // rather than a connection reset in the middle of its upload; past
        // twice the limit, the connection is simply closed.
        if declared.is_some_and(|n| n <= max_body.saturating_mul(2)) {
            let _ = read_body(request.into_body(), max_body).await;
        }
        return Err(body_too_large(max_body));
    }
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        });
    if !multipart {
        return read_body(request.into_body(), max_body).await;
    }
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|rejection| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("malformed multipart/form-data: {}", rejection.body_text()),
            )
        })?;
    let mut first_file = None;
    while let Some(field) = form.next_field().await.map_err(multipart_error)? {
        let named = matches!(field.name(), Some("image" | "file" | "photo"));
        let is_file = field.file_name().is_some();
        if named || (is_file && first_file.is_none()) {
            let bytes = field.bytes().await.map_err(multipart_error)?;
            if named {
                return Ok(bytes);
            }
            first_file = Some(bytes);
        }
    }
    first_file.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "no_image_field",
            "the multipart form has no field named \"image\" and no file",
        )
    })
}

fn multipart_error(err: axum::extract::multipart::MultipartError) -> ApiError {
    if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the upload is too large: {}", err.body_text()),
        )
    } else {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("malformed multipart/form-data: {}", err.body_text()),
        )
    }
}

/// The whole body if it is at most `max` bytes; otherwise reads on to
/// `2 × max` (dropping it) and answers 413.
async fn read_body(mut body: Body, max: usize) -> Result<Bytes, ApiError> {
    let mut kept = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("the request body could not be read: {e}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total <= max {
            kept.extend_from_slice(&data);
        } else if total > max.saturating_mul(2) {
            break;
        }
    }
    if total > max {
        return Err(body_too_large(max));
    }
    Ok(Bytes::from(kept))
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn body_too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!(
            "the upload is over the limit of {} bytes ({:.1} MiB)",
            max,
            max as f64 / (1024.0 * 1024.0)
        ),
    )
}

/// Decodes in a blocking thread, at most `decoders` at once.
async fn decode(state: &AppState, bytes: Bytes) -> Result<Vec<f32>, ApiError> {
    let permit = Arc::clone(&state.decoders)
        .acquire_owned()
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "shutting down",
            )
        })?;
    let config = verger_image::PreprocessConfig {
        max_pixels: state.limits.max_pixels,
        ..verger_image::PreprocessConfig::default()
    };
    let decoded = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        verger_image::preprocess(&bytes, &config)
    })
    .await
    .map_err(|panic| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "corrupt_image",
            format!("the decoder failed: {panic}"),
        )
    })?;
    decoded.map_err(image_error)
}

fn image_error(err: verger_image::ImageError) -> ApiError {
    use verger_image::ImageError as E;
    let (status, kind) = match &err {
        E::Empty => (StatusCode::BAD_REQUEST, "empty_body"),
        E::UnknownFormat => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "not_an_image"),
        E::Unsupported(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_image"),
        E::Decode(_) => (StatusCode::BAD_REQUEST, "corrupt_image"),
        E::TooLarge { .. } | E::OverMemoryLimit { .. } => {
            (StatusCode::PAYLOAD_TOO_LARGE, "image_too_large")
        }
    };
    ApiError::new(status, kind, err.to_string())
}

/// An error answer: `{"error": "<message for a person>", "kind": "<tag>"}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        debug_assert!(
            ERROR_KINDS.contains(&kind),
            "{kind} missing from ERROR_KINDS"
        );
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(serde_json::json!({ "error": self.message, "kind": self.kind })),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests;
