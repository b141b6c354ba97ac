//! `verger serve`: the HTTP service behind the app. A photo comes in, the
//! fruit's name, the classifier's confidence, its top 5 and an information
//! card go out.
//!
//! This crate owns the service: loading the feature model and the classifier
//! once (and refusing a classifier trained on another feature model), the
//! HTTP routes (`POST /v1/identify`, the web page at `/`, `/healthz`,
//! `/metrics`), the limits that keep one bad request from hurting the others
//! (body size, pixel count, timeouts, a bounded queue), micro-batching of
//! concurrent requests into one inference call, and the fruit-information
//! table. (Its load-test client, `verger bench-serve`, is in `verger-bench`.)
//!
//! It must not touch DataFusion, Ballista or storage, and never trains: the
//! classifier comes ready-made from `verger train` (`verger-classifier`), the
//! pixels are `verger-image`'s and the network `verger-model`'s.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let config = verger_serve::ServeConfig::new("model/".into());
//! let service = verger_serve::Service::load(&config)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! service.serve(listener, std::future::pending()).await?;
//! # Ok(()) }
//! ```

mod app;
mod batcher;
mod budget;
mod error;
pub mod fruit_info;
mod metrics;
mod page;
mod server;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
pub use batcher::{BatchConfig, InferenceError, Ranking};
pub use verger_classifier::{Identification, RejectReason, RejectRule};
pub use verger_model::{EngineChoice, EngineConfig};

/// Images → feature vectors (the MobileNetV2 model, or a stand-in in tests).
pub trait Featurize: Send + Sync {
    /// `batch` tensors laid back to back → `batch × dim` features.
    fn features(&self, input: &[f32], batch: usize) -> Result<Vec<f32>, String>;
}

impl Featurize for verger_model::SharedModel {
    fn features(&self, input: &[f32], batch: usize) -> Result<Vec<f32>, String> {
        verger_model::SharedModel::features(self, input, batch).map_err(|e| e.to_string())
    }
}

/// Feature vectors → ranked labels and, when the photo is not one of the
/// labels, why (the trained classifier, or a stand-in).
pub trait Classify: Send + Sync {
    fn labels(&self) -> &[String];
    /// For each of the `n` feature rows, its `k` most probable labels and
    /// the rejection rule that fired, if one did.
    fn identify(&self, features: &[f32], k: usize) -> Result<Vec<Identification>, String>;
}

/// The trained classifier with the feature model's ImageNet head, which
/// gives each photo's fruit mass for the first rejection rule.
pub struct RejectingClassifier {
    pub classifier: verger_classifier::Classifier,
    pub head: verger_model::ImagenetHead,
}

impl Classify for RejectingClassifier {
    fn labels(&self) -> &[String] {
        self.classifier.labels()
    }
    fn identify(&self, features: &[f32], k: usize) -> Result<Vec<Identification>, String> {
        let dim = self.classifier.feature_dim();
        if dim != verger_model::FEATURE_DIM || !features.len().is_multiple_of(dim) {
            return Err(format!(
                "{} values are not rows of {dim} features",
                features.len()
            ));
        }
        let masses: Vec<f32> = features
            .chunks_exact(dim)
            .map(|row| self.head.fruit_mass(row))
            .collect();
        self.classifier
            .identify(features, &masses, k)
            .map_err(|e| e.to_string())
    }
}

/// Everything `verger serve` is told.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Folder holding `classifier.json` (from `verger train`).
    pub classifier_dir: PathBuf,
    /// The ONNX feature model; `None` = the shared model found beside the project.
    pub model: Option<PathBuf>,
    /// Which weights; the classifier must have been trained on features of
    /// the same file.
    pub precision: verger_model::Precision,
    pub engine: EngineConfig,
    pub limits: Limits,
    pub batch: BatchConfig,
}

impl ServeConfig {
    /// The defaults of `verger serve --classifier DIR`.
    pub fn new(classifier_dir: PathBuf) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let batch = BatchConfig {
            max_batch: 32,
            delay: Duration::from_millis(5),
            top_k: 5,
        };
        ServeConfig {
            classifier_dir,
            model: None,
            precision: verger_model::Precision::Fp32,
            engine: EngineConfig {
                choice: EngineChoice::Auto,
                threads: cores,
                // One session with every thread: a lone photo is answered
                // as fast as the cores allow, and concurrent requests are
                // batched together anyway.
                sessions: 1,
                ort_library: None,
                batch_size: batch.max_batch,
            },
            limits: Limits::default(),
            batch,
        }
    }
}

/// What keeps one request from hurting the others.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body, bytes (413 above).
    pub max_body: usize,
    /// Largest image, pixels, checked from the header before decoding.
    pub max_pixels: u64,
    /// Longest time to receive a body (408 after).
    pub read_timeout: Duration,
    /// Longest wait for a decoded image's answer from the model (503 after).
    pub inference_timeout: Duration,
    /// Images waiting for the model at most; more are refused with 503.
    pub queue_capacity: usize,
    /// Images decoded at once (each in a blocking thread).
    pub decoders: usize,
    /// Memory all decodes in progress may take together, bytes: each
    /// reserves its image's need (from the header) before decoding.
    pub decode_memory: u64,
    /// Longest wait for room in the decode budget and a decoder (503 after).
    pub decode_wait: Duration,
    /// Longest time to receive a request head, counted from the moment the
    /// connection waits for one (so also the idle keep-alive timeout); the
    /// connection is closed after it.
    pub header_timeout: Duration,
    /// Connections open at once at most; more wait in the accept backlog.
    pub max_connections: usize,
    /// Requests being handled at once at most; more get 503 at once.
    pub max_in_flight: usize,
    /// After SIGTERM, how long requests in flight get to finish.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Limits {
            max_body: 10 * 1024 * 1024,
            max_pixels: 64_000_000,
            read_timeout: Duration::from_secs(30),
            inference_timeout: Duration::from_secs(30),
            queue_capacity: 256,
            decoders: cores,
            decode_memory: 512 * 1024 * 1024,
            decode_wait: Duration::from_secs(5),
            header_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_in_flight: 128,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// What `/healthz` says about the loaded models.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServedModel {
    pub engine: String,
    pub model_sha256: String,
    pub labels: usize,
}

/// A loaded service, ready to listen.
pub struct Service {
    model: Arc<dyn Featurize>,
    classifier: Arc<dyn Classify>,
    info: ServedModel,
    limits: Limits,
    batch: BatchConfig,
    /// The views whose features are averaged per photo, as the classifier
    /// was trained (empty: the whole photo alone).
    views: Vec<verger_image::views::View>,
}

impl Service {
    /// Loads the classifier, checks that it was trained on this feature
    /// model (by sha256, before the model is loaded), then loads the model
    /// once for the life of the service.
    pub fn load(config: &ServeConfig) -> anyhow::Result<Service> {
        let classifier =
            verger_classifier::Classifier::load(&config.classifier_dir).with_context(|| {
                format!(
                    "cannot load the classifier from {} (make one with `verger train`)",
                    config.classifier_dir.display()
                )
            })?;
        let file = verger_model::ModelFile::locate(config.model.as_deref(), config.precision)?;
        check_same_feature_model(
            &config.classifier_dir,
            classifier.feature_model_sha256(),
            &file.path,
            &file.sha256,
        )?;
        let views = verger_image::views::views_named(classifier.views())
            .map_err(anyhow::Error::msg)
            .with_context(|| {
                format!(
                    "the classifier in {} names views this verger does not know",
                    config.classifier_dir.display()
                )
            })?;
        let head = verger_model::ImagenetHead::from_onnx(&file.path)?;
        let model_sha256 = file.sha256.clone();
        let model = verger_model::SharedModel::load(file, &config.engine)?;
        let info = ServedModel {
            engine: model.engine_name().to_string(),
            model_sha256,
            labels: classifier.labels().len(),
        };
        Ok(Service::from_parts(
            model,
            Arc::new(RejectingClassifier { classifier, head }),
            info,
            config.limits.clone(),
            config.batch,
        )
        .with_views(views))
    }

    /// A service over any model and classifier (tests use stand-ins).
    pub fn from_parts(
        model: Arc<dyn Featurize>,
        classifier: Arc<dyn Classify>,
        info: ServedModel,
        limits: Limits,
        batch: BatchConfig,
    ) -> Service {
        Service {
            model,
            classifier,
            info,
            limits,
            batch,
            views: Vec::new(),
        }
    }

    /// Averages the features of `views` of each photo (a classifier
    /// trained on `verger run --views` rows expects it).
    pub fn with_views(mut self, views: Vec<verger_image::views::View>) -> Service {
        self.views = views;
        self
    }

    /// Serves every route on `listener` until `shutdown` completes, then
    /// finishes the requests in flight.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        self.serve_split(listener, None, shutdown).await
    }

    /// Like [`Service::serve`], with `/healthz` and `/metrics` on `admin`
    /// instead (when given), so that only the operator's network sees them.
    pub async fn serve_split(
        self,
        listener: tokio::net::TcpListener,
        admin: Option<tokio::net::TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = listener.local_addr().context("listener address")?;
        let limits = self.limits.clone();
        let routers = app::routers(self, admin.is_some());
        // One signal, heard by each listener's accept loop.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(true);
        });
        let admin_task = match (admin, routers.admin) {
            (Some(admin), Some(router)) => {
                let admin_addr = admin.local_addr().context("admin listener address")?;
                tracing::info!(url = %format!("http://{admin_addr}"), "admin routes (/healthz, /metrics) listening");
                let limits = limits.clone();
                let stopped = stopped.clone();
                Some(tokio::spawn(async move {
                    server::serve(admin, router, &limits, stopped).await;
                }))
            }
            _ => None,
        };
        tracing::info!(url = %format!("http://{addr}"), "verger serve listening");
        server::serve(listener, routers.public, &limits, stopped).await;
        if let Some(task) = admin_task {
            task.await.context("the admin listener's task failed")?;
        }
        Ok(())
    }
}

/// The classifier's weights only mean something for the features of the
/// model it was trained on.
fn check_same_feature_model(
    classifier_dir: &Path,
    trained_on: &str,
    model_path: &Path,
    model_sha256: &str,
) -> anyhow::Result<()> {
    if trained_on.eq_ignore_ascii_case(model_sha256) {
        return Ok(());
    }
    let prefix = |s: &str| s.chars().take(12).collect::<String>();
    anyhow::bail!(
        "the classifier in {} was trained on features of the model with sha256 {}…, \
         but the feature model {} has sha256 {}…; serve it with the model it was trained on \
         (--model), or train a new one with `verger train` on features from this model",
        classifier_dir.display(),
        prefix(trained_on),
        model_path.display(),
        prefix(model_sha256),
    )
}

/// Completes on Ctrl-C or SIGTERM (how systemd and container runtimes stop a service).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing the requests in flight");
}
