//! Fitting the classifier: standardisation, then `linfa-logistic`'s
//! multinomial logistic regression (L-BFGS, L2 penalty).

use std::time::Instant;

use linfa::Dataset;
use linfa::traits::Fit;
use linfa_logistic::MultiLogisticRegression;
use ndarray::{Array1, Array2};

use crate::{Classifier, ClassifierError, FeatureTable, Standardize, TrainingInfo};

/// How to train.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// The folder name that marks training images (`…/<split>/<label>/x.jpg`).
    pub split: String,
    /// L2 penalty λ: the objective is the mean cross-entropy over the
    /// training images + λ/2 · ‖W‖² (bias not penalised).
    pub regularisation: f64,
    /// Upper bound on L-BFGS iterations.
    pub max_iterations: u64,
    /// Neighbours of the kNN baseline (recorded for `verger evaluate`).
    pub knn_k: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            split: "Training".into(),
            regularisation: 1e-3,
            max_iterations: 200,
            knn_k: 5,
        }
    }
}

/// A dimension whose spread over the training images is below this is
/// treated as constant (std stored as 1, so it contributes nothing).
const MIN_STD: f64 = 1e-6;

/// Trains on every row of `table` (already restricted to the training
/// split), labels sorted.
pub fn train(table: &FeatureTable, config: &TrainConfig) -> Result<Classifier, ClassifierError> {
    let started = Instant::now();
    if table.is_empty() {
        return Err(ClassifierError::Training(format!(
            "{} has no images under a folder named {:?} (paths must look like …/{}/<label>/x.jpg; \
             see --train-split)",
            table.location, config.split, config.split
        )));
    }
    let labels = table.distinct_labels();
    if labels.len() < 2 {
        return Err(ClassifierError::Training(format!(
            "the {:?} images of {} have {} label(s) ({}); a classifier needs at least 2",
            config.split,
            table.location,
            labels.len(),
            labels.join(", ")
        )));
    }
    if !(config.regularisation >= 0.0 && config.regularisation.is_finite()) {
        return Err(ClassifierError::Training(format!(
            "regularisation must be a finite number ≥ 0, not {}",
            config.regularisation
        )));
    }
    let (n, dim) = (table.len(), table.dim);
    let standardize = standardization(table);
    let mut z = Array2::<f64>::zeros((n, dim));
    for (i, mut out) in z.rows_mut().into_iter().enumerate() {
        for (j, x) in table.row(i).iter().enumerate() {
            out[j] =
                (f64::from(*x) - f64::from(standardize.mean[j])) / f64::from(standardize.std[j]);
        }
    }
    let targets: Array1<usize> = table
        .labels
        .iter()
        .map(|l| labels.binary_search(l).expect("label listed"))
        .collect();
    tracing::info!(
        images = n,
        labels = labels.len(),
        dim,
        "training multinomial logistic regression"
    );
    // linfa's objective is a sum over images + alpha/2 · ‖W‖²: alpha = n·λ
    // is the same minimiser as the mean with λ.
    let fitted = MultiLogisticRegression::default()
        .alpha(config.regularisation * n as f64)
        .max_iterations(config.max_iterations)
        .gradient_tolerance(1e-4)
        .fit(&Dataset::new(z, targets))
        .map_err(|e| ClassifierError::Training(format!("the optimiser failed: {e}")))?;
    // params: dim × classes, in the order of `classes()` (the sorted indices).
    let classes = fitted.classes().to_vec();
    if classes != (0..labels.len()).collect::<Vec<_>>() {
        return Err(ClassifierError::Training(format!(
            "the optimiser returned classes {classes:?} for {} labels",
            labels.len()
        )));
    }
    let params = fitted.params();
    let weights: Vec<Vec<f32>> = (0..labels.len())
        .map(|c| params.column(c).iter().map(|&w| w as f32).collect())
        .collect();
    let bias: Vec<f32> = fitted.intercept().iter().map(|&b| b as f32).collect();
    let info = TrainingInfo {
        images: n,
        split: config.split.clone(),
        features: table.location.clone(),
        regularisation: config.regularisation,
        iterations: config.max_iterations as usize,
        optimiser: "L-BFGS (linfa-logistic 0.8, gradient tolerance 1e-4)".into(),
        final_loss: 0.0,
        train_accuracy: 0.0,
        knn_k: config.knn_k,
        seconds: 0.0,
        trained_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        verger: env!("CARGO_PKG_VERSION").into(),
    };
    let l2: f64 = weights
        .iter()
        .flatten()
        .map(|&w| f64::from(w) * f64::from(w))
        .sum();
    let mut classifier = Classifier::new(
        labels,
        table.model_sha256.clone(),
        standardize,
        weights,
        bias,
        info,
    )
    .map_err(ClassifierError::Training)?;
    // What the result achieves on its own training images.
    let probabilities = classifier.probabilities(&table.features)?;
    let classes = classifier.labels().len();
    let (mut cross_entropy, mut correct) = (0.0f64, 0usize);
    for (row, &t) in probabilities
        .chunks_exact(classes)
        .zip(&targets_of(table, &classifier))
    {
        cross_entropy -= f64::from(row[t].max(f32::MIN_POSITIVE)).ln();
        let best = crate::model::top_k_of(row, 1)[0].0;
        correct += usize::from(best == t);
    }
    let final_loss = cross_entropy / n as f64 + config.regularisation / 2.0 * l2;
    let train_accuracy = correct as f64 / n as f64;
    let seconds = started.elapsed().as_secs_f64();
    classifier.set_training_outcome(final_loss, train_accuracy, seconds);
    tracing::info!(final_loss, train_accuracy, seconds, "trained");
    Ok(classifier)
}

fn targets_of(table: &FeatureTable, classifier: &Classifier) -> Vec<usize> {
    table
        .labels
        .iter()
        .map(|l| {
            classifier
                .labels()
                .binary_search(l)
                .expect("trained on these labels")
        })
        .collect()
}

/// Per-dimension mean and (population) standard deviation, in f64.
fn standardization(table: &FeatureTable) -> Standardize {
    let (n, dim) = (table.len() as f64, table.dim);
    let mut sum = vec![0.0f64; dim];
    let mut sum_sq = vec![0.0f64; dim];
    for i in 0..table.len() {
        for (j, &x) in table.row(i).iter().enumerate() {
            sum[j] += f64::from(x);
        }
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    for i in 0..table.len() {
        for (j, &x) in table.row(i).iter().enumerate() {
            let d = f64::from(x) - mean[j];
            sum_sq[j] += d * d;
        }
    }
    let std = sum_sq
        .iter()
        .map(|s| {
            let std = (s / n).sqrt();
            if std < MIN_STD { 1.0 } else { std as f32 }
        })
        .collect();
    Standardize {
        mean: mean.iter().map(|&m| m as f32).collect(),
        std,
    }
}
