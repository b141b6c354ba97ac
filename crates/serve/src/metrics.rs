//! The service's Prometheus metrics, in a registry of its own (not the
//! process-global one), so two services in one process (the unit tests)
//! never share counters.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Every answered request, by route template, method and status code.
    pub requests: IntCounterVec,
    /// Time from the request's arrival to its response, by route template.
    pub latency: HistogramVec,
    /// Refused or failed identifications, by kind (`body_too_large`,
    /// `not_an_image`, `image_too_large`, `overloaded`, ...).
    pub errors: IntCounterVec,
    /// Images per inference call.
    pub batch_size: prometheus::Histogram,
    /// Time inside the model and the classifier per batch.
    pub inference_seconds: prometheus::Histogram,
    /// Time an image waited in the queue before its batch started.
    pub queue_wait_seconds: prometheus::Histogram,
    /// Images waiting for a batch right now.
    pub queue_depth: IntGauge,
    /// Bytes of the decode-memory budget reserved right now.
    pub decode_memory_reserved: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("verger_http_requests_total", "HTTP requests answered"),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "verger_http_request_duration_seconds",
                "Time from a request's arrival to its response",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "verger_http_errors_total",
                "Requests refused or failed, by kind (bad uploads, 404, 405, overload)",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let batch_size = prometheus::Histogram::with_opts(
            HistogramOpts::new("verger_inference_batch_size", "Images per inference call")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
        )
        .expect("valid metric");
        let inference_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "verger_inference_duration_seconds",
                "Time in the feature model and the classifier per batch",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect("valid metric");
        let queue_wait_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "verger_queue_wait_seconds",
                "Time an image waited before its batch started",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )
        .expect("valid metric");
        let queue_depth = IntGauge::new("verger_queue_depth", "Images waiting for a batch")
            .expect("valid metric");
        let decode_memory_reserved = IntGauge::new(
            "verger_decode_memory_reserved_bytes",
            "Bytes of the decode-memory budget reserved by decodes in progress",
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(errors.clone()),
            Box::new(batch_size.clone()),
            Box::new(inference_seconds.clone()),
            Box::new(queue_wait_seconds.clone()),
            Box::new(queue_depth.clone()),
            Box::new(decode_memory_reserved.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Metrics {
            registry,
            requests,
            latency,
            errors,
            batch_size,
            inference_seconds,
            queue_wait_seconds,
            queue_depth,
            decode_memory_reserved,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
