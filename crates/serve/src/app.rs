//! The routes, the request limits and the JSON answers.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::batcher::{self, Job};
use crate::budget::{BudgetError, DecodeBudget};
use crate::error::{ApiError, ERROR_KINDS, error_body};
use crate::fruit_info::{FruitInfo, FruitTable};
use crate::metrics::Metrics;
use crate::page::{API_CSP, page};
use crate::{Limits, ServedModel, Service};

/// The routes `/metrics` names; any other path is counted as `other` so a
/// scan of random URLs cannot blow up the number of series.
const ROUTES: [&str; 4] = ["/", "/v1/identify", "/healthz", "/metrics"];

struct AppState {
    queue: mpsc::Sender<Job>,
    budget: DecodeBudget,
    limits: Limits,
    labels: Vec<String>,
    /// The info card of each label, by label index.
    cards: Vec<Option<FruitInfo>>,
    model: ServedModel,
    metrics: Arc<Metrics>,
    /// Views averaged per photo (empty: the whole photo).
    views: Arc<Vec<verger_image::views::View>>,
}

/// The public routes, and the admin ones when they listen apart.
pub struct Routers {
    pub public: Router,
    /// `/healthz` and `/metrics`, when `--admin-bind` moves them off `public`.
    pub admin: Option<Router>,
}

/// Builds the routers and starts the batcher task (it ends with the routers).
pub fn routers(service: Service, split_admin: bool) -> Routers {
    let limits = service.limits.clone();
    let state = Arc::new(start_state(service));
    let admin_routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text));
    let mut public = Router::new()
        .route("/", get(page))
        .route("/v1/identify", post(identify));
    let admin = if split_admin {
        Some(with_common_layers(admin_routes, &state))
    } else {
        public = public.merge(admin_routes);
        None
    };
    // Multipart reads at most this much (raw bodies are counted by hand).
    let public = public
        .layer(DefaultBodyLimit::max(limits.max_body))
        // At most `max_in_flight` requests handled at once across every
        // connection; one more is answered 503 at once rather than queued
        // (a queued request would hold its body).
        .layer(
            tower::ServiceBuilder::new()
                .layer(HandleErrorLayer::new(too_many_in_flight))
                .load_shed()
                .layer(GlobalConcurrencyLimitLayer::new(
                    limits.max_in_flight.max(1),
                )),
        );
    Routers {
        public: with_common_layers(public, &state),
        admin,
    }
}

fn start_state(service: Service) -> AppState {
    let metrics = Arc::new(Metrics::new());
    for (kind, _) in ERROR_KINDS {
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
    AppState {
        queue,
        budget: DecodeBudget::new(
            service.limits.decode_memory,
            service.limits.decoders,
            service.limits.decode_wait,
        ),
        limits: service.limits.clone(),
        labels,
        cards,
        model: service.info,
        metrics,
        views: Arc::new(service.views),
    }
}

/// The fallbacks and the request counting, on either router.
fn with_common_layers(router: Router<Arc<AppState>>, state: &Arc<AppState>) -> Router {
    let default_header =
        |name, value| SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value));
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(Arc::clone(state), track))
        // The page sets its own policy; every other answer loads nothing.
        .layer(default_header(header::CONTENT_SECURITY_POLICY, API_CSP))
        .layer(default_header(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(default_header(header::REFERRER_POLICY, "no-referrer"))
        // For browsers without CSP frame-ancestors.
        .layer(default_header(header::X_FRAME_OPTIONS, "DENY"))
        .with_state(Arc::clone(state))
}

/// Answers a request over the in-flight limit (the load shedder's error).
async fn too_many_in_flight(_: tower::BoxError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "too many requests in flight",
    )
    .retry_after(1)
}

/// A request's id: in the log lines about it, and in its error answers
/// and `X-Request-Id` header, so a client's report can be found in the log.
#[derive(Debug, Clone)]
pub struct RequestId(String);

/// Gives every request an id, counts and times it whatever answered it, and
/// turns an [`ApiError`] answer into its client-facing body, its detail
/// going to the log.
async fn track(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
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
    let id = RequestId(uuid::Uuid::new_v4().simple().to_string());
    request.extensions_mut().insert(id.clone());
    let mut response = next.run(request).await;
    if let Some(err) = response.extensions_mut().remove::<ApiError>() {
        report_error(&state, &id, route, &err);
        *response.body_mut() = error_body(err.kind, Some(&id.0));
    }
    if let Ok(value) = HeaderValue::from_str(&id.0) {
        response.headers_mut().insert("x-request-id", value);
    }
    let m = &state.metrics;
    m.requests
        .with_label_values(&[route, method, response.status().as_str()])
        .inc();
    m.latency
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    response
}

fn report_error(state: &AppState, id: &RequestId, route: &str, err: &ApiError) {
    state.metrics.errors.with_label_values(&[err.kind]).inc();
    let (request_id, kind, detail) = (id.0.as_str(), err.kind, err.detail.as_str());
    if err.status.is_server_error() {
        tracing::warn!(request_id, route, kind, detail, "request failed");
    } else {
        tracing::debug!(request_id, route, kind, detail, "request refused");
    }
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
    state
        .metrics
        .decode_memory_reserved
        .set(i64::try_from(state.budget.reserved_bytes()).unwrap_or(i64::MAX));
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// The path is logged, never echoed: an answer that repeats what a stranger
/// sent is a reflection to get wrong.
async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route {} {}", request.method(), request.uri().path()),
    )
}

async fn method_not_allowed(request: Request) -> Response {
    let path = request.uri().path();
    let allow = if path == "/v1/identify" {
        "POST"
    } else {
        "GET, HEAD"
    };
    let err = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} {path}", request.method()),
    );
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
        Err(err) => err.into_response(),
    }
}

async fn identify_inner(state: &AppState, request: Request) -> Result<Answer, ApiError> {
    let limits = &state.limits;
    check_content_type(request.headers())?;
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
        return Err(
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message).retry_after(1),
        );
    }
    let identified = match tokio::time::timeout(limits.inference_timeout, answer).await {
        Ok(Ok(Ok(identified))) => identified,
        Ok(Ok(Err(reason))) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "inference",
                reason.to_string(),
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
                    "no answer from the model within {} s",
                    limits.inference_timeout.as_secs()
                ),
            )
            .retry_after(1));
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

/// A cross-site form can POST `text/plain` without asking the server first
/// (no CORS preflight), which would make a visitor's browser run the model;
/// only the types a photo upload uses are accepted (a missing one neither:
/// a `fetch` of a Blob without a type sends none, also without preflight).
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let essence = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let accepted = essence.starts_with("image/")
        || essence == "application/octet-stream"
        || essence == "multipart/form-data";
    if accepted {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_content_type",
            format!("Content-Type {essence:?}"),
        ))
    }
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

/// Decodes in a blocking thread once the image's decode memory (read from
/// its header) and a decoder are reserved.
async fn decode(state: &AppState, bytes: Bytes) -> Result<Vec<f32>, ApiError> {
    let config = verger_image::PreprocessConfig {
        max_pixels: state.limits.max_pixels,
        // An image whose header does not tell its size may take this much.
        max_alloc_bytes: state.budget.total_bytes().min(512 * 1024 * 1024),
        ..verger_image::PreprocessConfig::default()
    };
    let need = verger_image::decode_need(&bytes, &config).map_err(image_error)?;
    match decode_within(state, bytes.clone(), config.clone(), need.bytes).await? {
        // libjpeg-turbo declined a JPEG, and the full decoder it fell back
        // to needs more than the scaled decode reserved: reserve that, retry.
        Err(verger_image::ImageError::OverMemoryLimit { .. })
            if need.bytes < need.full_decode_bytes =>
        {
            let full = verger_image::PreprocessConfig {
                scaled_jpeg_decode: false,
                ..config
            };
            decode_within(state, bytes, full, need.full_decode_bytes).await?
        }
        decoded => decoded,
    }
    .map_err(image_error)
}

/// One decode holding `need` bytes of the budget, and no more: the decoder
/// refuses to allocate past the reservation.
async fn decode_within(
    state: &AppState,
    bytes: Bytes,
    config: verger_image::PreprocessConfig,
    need: u64,
) -> Result<Result<Vec<f32>, verger_image::ImageError>, ApiError> {
    let reservation = state.budget.reserve(need).await.map_err(budget_error)?;
    let config = verger_image::PreprocessConfig {
        max_alloc_bytes: need,
        ..config
    };
    let views = Arc::clone(&state.views);
    tokio::task::spawn_blocking(move || {
        let _reservation = reservation;
        if views.is_empty() {
            return verger_image::preprocess(&bytes, &config);
        }
        let mut tensors = vec![0.0; views.len() * verger_image::TENSOR_LEN];
        verger_image::views::preprocess_views_into(&bytes, &config, &views, &mut tensors)
            .map(|()| tensors)
    })
    .await
    .map_err(|panic| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the decoder thread failed: {panic}"),
        )
    })
}

fn budget_error(err: BudgetError) -> ApiError {
    match err {
        BudgetError::OverBudget { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "image_too_large",
            err.to_string(),
        ),
        BudgetError::Busy { .. } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            err.to_string(),
        )
        .retry_after(1),
    }
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

#[cfg(test)]
mod tests;
