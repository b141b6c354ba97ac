//! Micro-batching: requests that arrive together share one inference call.
//!
//! Handlers put a decoded tensor on a bounded queue with a oneshot for the
//! answer. One batcher task takes the first waiting image, then keeps taking
//! more until the batch is full or `delay` has passed since that first one,
//! and runs the model and the classifier on the whole batch in a blocking
//! thread. While a batch is in the model, new requests queue up, so under
//! load batches fill without waiting and throughput grows with concurrency;
//! a lone request waits at most `delay`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::{Classify, Featurize, Identification};

/// The classes of one image, best first: (label index, probability).
pub type Ranking = Vec<(usize, f32)>;

/// Why a batch got no answer. Every image of the batch gets the same one.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InferenceError {
    #[error("the feature model failed: {0}")]
    Model(String),
    #[error("the classifier failed: {0}")]
    Classifier(String),
    #[error("the classifier returned {rankings} rankings for {images} images")]
    RankingCount { rankings: usize, images: usize },
    #[error("inference panicked: {0}")]
    Panicked(String),
}

pub struct Job {
    /// One 224×224 tensor per view of the photo, back to back: their
    /// features are averaged into the one vector the classifier scores.
    pub tensor: Vec<f32>,
    pub reply: oneshot::Sender<Result<Identification, InferenceError>>,
    pub queued: Instant,
}

#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Most images per inference call.
    pub max_batch: usize,
    /// Longest wait for company after the first image of a batch arrived.
    pub delay: Duration,
    /// Classes kept per image.
    pub top_k: usize,
}

/// Runs until every sender of `queue` is dropped.
pub async fn run(
    mut queue: mpsc::Receiver<Job>,
    model: Arc<dyn Featurize>,
    classifier: Arc<dyn Classify>,
    config: BatchConfig,
    metrics: Arc<Metrics>,
) {
    let max_batch = config.max_batch.max(1);
    while let Some(first) = queue.recv().await {
        let deadline = tokio::time::Instant::now() + config.delay;
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            // Already waiting: take it at once, without a timer.
            match queue.try_recv() {
                Ok(job) => {
                    jobs.push(job);
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(job)) => jobs.push(job),
                Ok(None) | Err(_) => break,
            }
        }
        metrics.queue_depth.sub(jobs.len() as i64);
        // A client that gave up (timeout, closed connection) costs no inference.
        jobs.retain(|job| !job.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let started = Instant::now();
        for job in &jobs {
            metrics
                .queue_wait_seconds
                .observe(started.duration_since(job.queued).as_secs_f64());
        }
        let n = jobs.len();
        let model = Arc::clone(&model);
        let classifier = Arc::clone(&classifier);
        let (tensors, replies): (Vec<_>, Vec<_>) =
            jobs.into_iter().map(|j| (j.tensor, j.reply)).unzip();
        let outcome = tokio::task::spawn_blocking(move || {
            infer(model.as_ref(), classifier.as_ref(), &tensors, config.top_k)
        })
        .await
        .unwrap_or_else(|panic| Err(InferenceError::Panicked(panic.to_string())));
        metrics.batch_size.observe(n as f64);
        metrics
            .inference_seconds
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(
            batch = n,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "batch"
        );
        match outcome {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            Err(reason) => {
                tracing::error!(batch = n, %reason, "inference failed");
                // Each waiting request logs it again under its own request id.
                for reply in replies {
                    let _ = reply.send(Err(reason.clone()));
                }
            }
        }
    }
}

fn infer(
    model: &dyn Featurize,
    classifier: &dyn Classify,
    tensors: &[Vec<f32>],
    top_k: usize,
) -> Result<Vec<Identification>, InferenceError> {
    let views: Vec<usize> = tensors
        .iter()
        .map(|t| t.len() / verger_image::TENSOR_LEN)
        .collect();
    let input: Vec<f32> = tensors.concat();
    let all = model
        .features(&input, views.iter().sum())
        .map_err(InferenceError::Model)?;
    let features = average_views(&all, &views);
    let answers = classifier
        .identify(&features, top_k)
        .map_err(InferenceError::Classifier)?;
    if answers.len() != tensors.len() {
        return Err(InferenceError::RankingCount {
            rankings: answers.len(),
            images: tensors.len(),
        });
    }
    Ok(answers)
}

/// One row per photo: the mean of its `views[i]` consecutive rows of `all`.
fn average_views(all: &[f32], views: &[usize]) -> Vec<f32> {
    let total: usize = views.iter().sum();
    if total == views.len() || total == 0 {
        return all.to_vec();
    }
    let dim = all.len() / total;
    let mut out = Vec::with_capacity(views.len() * dim);
    let mut rows = all.chunks_exact(dim);
    for &n in views {
        let mut sum = vec![0.0f32; dim];
        for row in rows.by_ref().take(n) {
            for (s, x) in sum.iter_mut().zip(row) {
                *s += x;
            }
        }
        out.extend(sum.iter().map(|s| s / n.max(1) as f32));
    }
    out
}

#[cfg(test)]
mod view_tests {
    #[test]
    fn views_of_one_photo_are_averaged_and_single_views_pass_through() {
        // Photo 1: two views (rows 1,2 and 3,4); photo 2: one view (5,6).
        let all = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(
            super::average_views(&all, &[2, 1]),
            vec![2.0, 3.0, 5.0, 6.0]
        );
        assert_eq!(super::average_views(&all, &[1, 1, 1]), all.to_vec());
    }
}
