//! Fitting the classifier: standardisation, then a multinomial logistic
//! regression (softmax over one linear score per label) minimised by
//! full-batch L-BFGS with a backtracking line search, in f64.
//!
//! Why not `linfa-logistic`: its `MultiLogisticRegression` (tried first,
//! 0.8.1) stopped after its first iteration for some penalties (λ = 1e-3
//! and 0.1 on the sample: training accuracy 0.93, the same model a single
//! gradient step gives) and reports neither how many iterations it ran
//! nor why it stopped. Here the objective is ~40 lines, every iteration
//! is logged, and the result says whether it converged. Matrix products
//! go through `ndarray` (matrixmultiply).

use std::collections::VecDeque;
use std::time::Instant;

use ndarray::{Array1, Array2, Axis};

use crate::rejection::{NEGATIVE_CLASS, Rejection};
use crate::{Classifier, ClassifierError, FeatureTable, Standardize, TrainingInfo, in_split};

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
    /// Images with a folder of this name in their path are negatives: one
    /// extra class, never a label, that rejects what looks like it.
    pub negatives: Option<String>,
    /// The operating point: fraction of known-fruit training photos the
    /// calibrated classifier answers (scored out of fold).
    pub answer_fraction: f64,
    /// Fraction of training fruit photos the ImageNet fruit-mass gate passes.
    pub fruit_mass_pass: f64,
    /// Scene-grouped folds of the calibration.
    pub folds: usize,
    /// When the run has views (`verger run --views`): the views averaged
    /// into one photo's vector, at calibration, evaluation and serving
    /// (empty: all of the run's views).
    pub average_views: Vec<String>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            split: "Training".into(),
            regularisation: 1e-3,
            max_iterations: 300,
            knn_k: 5,
            negatives: None,
            answer_fraction: 0.90,
            fruit_mass_pass: 0.98,
            folds: 5,
            average_views: Vec::new(),
        }
    }
}

/// A dimension whose spread over the training images is below this is
/// treated as constant (std stored as 1, so it contributes nothing).
const MIN_STD: f64 = 1e-6;
/// Converged when the largest gradient component is below this.
const GRADIENT_TOLERANCE: f64 = 1e-5;
/// L-BFGS memory (pairs of steps and gradient changes kept).
const MEMORY: usize = 10;

/// Standardised training rows and their classes: the fruit labels
/// (sorted) first, then the negatives class when there is one.
pub(crate) struct TrainingRows {
    /// One row per photo, as the classifier will score it.
    pub z: Array2<f64>,
    /// Each photo's class.
    pub targets: Vec<usize>,
    pub fruit_labels: Vec<String>,
    /// Index of the negatives class (= fruit_labels.len()), if any rows have it.
    pub negative: Option<usize>,
    /// With views: the rows the regression is fitted on instead of `z`.
    pub views: Option<ViewFitRows>,
}

/// Standardised view rows (`verger run --views`) and each one's photo
/// (a row of [`TrainingRows::z`]).
pub(crate) struct ViewFitRows {
    pub z: Array2<f64>,
    pub photo: Vec<usize>,
}

/// Extra training rows: views of the photos of the table being trained on.
pub struct TrainingViews<'a> {
    /// One row per (photo, view).
    pub rows: &'a FeatureTable,
    /// Each row's photo, as a row index of the table.
    pub photo: Vec<usize>,
    /// The views averaged into each photo's row of the table (recorded in
    /// `classifier.json`, so that serving averages the same).
    pub averaged: Vec<String>,
}

impl TrainingRows {
    pub fn classes(&self) -> usize {
        self.fruit_labels.len() + usize::from(self.negative.is_some())
    }
}

/// Trains on every row of `table` (already restricted to the training
/// split and its negatives), then calibrates rejection; `fruit_mass` holds
/// each row's ImageNet fruit mass.
pub fn train(
    table: &FeatureTable,
    fruit_mass: &[f32],
    config: &TrainConfig,
) -> Result<Classifier, ClassifierError> {
    train_with_views(table, fruit_mass, None, config)
}

/// [`train`], fitted on `views` (every view of every photo) when given;
/// `table` then holds each photo's averaged views, which calibration
/// scores out of fold, exactly as serving will.
pub fn train_with_views(
    table: &FeatureTable,
    fruit_mass: &[f32],
    views: Option<&TrainingViews>,
    config: &TrainConfig,
) -> Result<Classifier, ClassifierError> {
    let started = Instant::now();
    check_config(table, fruit_mass, config)?;
    let classes_of = class_names(table, config);
    let standardize = standardization(views.map_or(table, |v| v.rows));
    let mut rows = training_rows(table, &classes_of, &standardize, config)?;
    if let Some(views) = views {
        if views.photo.len() != views.rows.len() || views.photo.iter().any(|&p| p >= table.len()) {
            return Err(ClassifierError::Shape(format!(
                "{} view rows with {} photo indices for {} photos",
                views.rows.len(),
                views.photo.len(),
                table.len()
            )));
        }
        rows.views = Some(ViewFitRows {
            z: standardized(views.rows, &standardize),
            photo: views.photo.clone(),
        });
    }
    tracing::info!(
        images = table.len(),
        labels = rows.fruit_labels.len(),
        negatives = rows
            .targets
            .iter()
            .filter(|&&t| Some(t) == rows.negative)
            .count(),
        dim = table.dim,
        "training multinomial logistic regression"
    );
    let all: Vec<usize> = (0..table.len()).collect();
    let fit = fit(&rows, &all, config);
    let rejection = crate::calibrate::calibrate(&rows, fruit_mass, config, &fit)?;
    let mut classifier = assemble(table, &rows, standardize, &fit, rejection, config)?;
    if let Some(views) = views {
        classifier.set_views(views.averaged.clone());
    }
    // What the saved (f32) classifier achieves on its own training fruit images.
    let fruit: Vec<usize> = (0..table.len())
        .filter(|&i| Some(rows.targets[i]) != rows.negative)
        .collect();
    let fruit_features: Vec<f32> = fruit.iter().flat_map(|&i| table.row(i)).copied().collect();
    let probabilities = classifier.probabilities(&fruit_features)?;
    let correct = probabilities
        .chunks_exact(rows.fruit_labels.len())
        .zip(&fruit)
        .filter(|(row, i)| crate::model::top_k_of(row, 1)[0].0 == rows.targets[**i])
        .count();
    let train_accuracy = correct as f64 / fruit.len() as f64;
    let seconds = started.elapsed().as_secs_f64();
    classifier.set_training_outcome(fit.loss, train_accuracy, seconds);
    tracing::info!(
        loss = fit.loss,
        train_accuracy,
        seconds,
        iterations = fit.iterations,
        "trained"
    );
    Ok(classifier)
}

fn check_config(
    table: &FeatureTable,
    fruit_mass: &[f32],
    config: &TrainConfig,
) -> Result<(), ClassifierError> {
    if table.is_empty() {
        return Err(ClassifierError::Training(format!(
            "{} has no images under a folder named {:?} (paths must look like …/{}/<label>/x.jpg; \
             see --train-split)",
            table.location, config.split, config.split
        )));
    }
    if fruit_mass.len() != table.len() {
        return Err(ClassifierError::Shape(format!(
            "{} fruit-mass values for {} rows",
            fruit_mass.len(),
            table.len()
        )));
    }
    if !(config.regularisation >= 0.0 && config.regularisation.is_finite()) {
        return Err(ClassifierError::Training(format!(
            "regularisation must be a finite number ≥ 0, not {}",
            config.regularisation
        )));
    }
    let fractions = [
        ("answer fraction", config.answer_fraction),
        ("fruit-mass pass fraction", config.fruit_mass_pass),
    ];
    if let Some((what, v)) = fractions.iter().find(|(_, v)| !(*v > 0.0 && *v <= 1.0)) {
        return Err(ClassifierError::Training(format!(
            "the {what} must be in (0, 1], not {v}"
        )));
    }
    if config.folds < 2 {
        return Err(ClassifierError::Training(format!(
            "calibration needs at least 2 folds, not {}",
            config.folds
        )));
    }
    Ok(())
}

/// Each row's class name: its label, or [`NEGATIVE_CLASS`] when its path
/// has the negatives folder.
fn class_names(table: &FeatureTable, config: &TrainConfig) -> Vec<String> {
    table
        .paths
        .iter()
        .zip(&table.labels)
        .map(|(path, label)| match &config.negatives {
            Some(folder) if in_split(path, folder) => NEGATIVE_CLASS.to_string(),
            _ => label.clone(),
        })
        .collect()
}

fn training_rows(
    table: &FeatureTable,
    classes_of: &[String],
    standardize: &Standardize,
    config: &TrainConfig,
) -> Result<TrainingRows, ClassifierError> {
    let mut fruit_labels: Vec<String> = classes_of
        .iter()
        .filter(|c| *c != NEGATIVE_CLASS)
        .cloned()
        .collect();
    fruit_labels.sort();
    fruit_labels.dedup();
    if fruit_labels.len() < 2 {
        return Err(ClassifierError::Training(format!(
            "the {:?} images of {} have {} fruit label(s) ({}); a classifier needs at least 2",
            config.split,
            table.location,
            fruit_labels.len(),
            fruit_labels.join(", ")
        )));
    }
    let has_negatives = classes_of.iter().any(|c| c == NEGATIVE_CLASS);
    if let (Some(folder), false) = (&config.negatives, has_negatives) {
        return Err(ClassifierError::Training(format!(
            "--negatives {folder}: no image of {} has a folder named {folder:?} in its path",
            table.location
        )));
    }
    let negative = has_negatives.then_some(fruit_labels.len());
    let targets = classes_of
        .iter()
        .map(|c| {
            fruit_labels
                .binary_search(c)
                .ok()
                .or(negative)
                .expect("a class")
        })
        .collect();
    Ok(TrainingRows {
        z: standardized(table, standardize),
        targets,
        fruit_labels,
        negative,
        views: None,
    })
}

/// Every row of `table`, standardised.
fn standardized(table: &FeatureTable, standardize: &Standardize) -> Array2<f64> {
    let mut z = Array2::<f64>::zeros((table.len(), table.dim));
    for (i, mut out) in z.rows_mut().into_iter().enumerate() {
        for (j, x) in table.row(i).iter().enumerate() {
            out[j] =
                (f64::from(*x) - f64::from(standardize.mean[j])) / f64::from(standardize.std[j]);
        }
    }
    z
}

/// Fits the regression on the photos `subset` of `rows` (on their view
/// rows, when there are views).
pub(crate) fn fit(rows: &TrainingRows, subset: &[usize], config: &TrainConfig) -> Fit {
    let (z, targets) = match &rows.views {
        None => (
            rows.z.select(Axis(0), subset),
            subset.iter().map(|&i| rows.targets[i]).collect(),
        ),
        Some(views) => {
            let mut chosen = vec![false; rows.targets.len()];
            for &i in subset {
                chosen[i] = true;
            }
            let picked: Vec<usize> = (0..views.photo.len())
                .filter(|&r| chosen[views.photo[r]])
                .collect();
            (
                views.z.select(Axis(0), &picked),
                picked
                    .iter()
                    .map(|&r| rows.targets[views.photo[r]])
                    .collect(),
            )
        }
    };
    let objective = Objective {
        z,
        targets,
        classes: rows.classes(),
        lambda: config.regularisation,
    };
    let mut fit = lbfgs(&objective, config.max_iterations as usize);
    let (weights, bias) = objective.unpack(&fit.theta);
    fit.weights = weights;
    fit.bias = bias;
    fit
}

fn assemble(
    table: &FeatureTable,
    rows: &TrainingRows,
    standardize: Standardize,
    fit: &Fit,
    rejection: Rejection,
    config: &TrainConfig,
) -> Result<Classifier, ClassifierError> {
    let k = rows.fruit_labels.len();
    let to_f32 =
        |row: ndarray::ArrayView1<f64>| row.iter().map(|&w| w as f32).collect::<Vec<f32>>();
    let weights: Vec<Vec<f32>> = fit.weights.rows().into_iter().take(k).map(to_f32).collect();
    let bias: Vec<f32> = fit.bias.iter().take(k).map(|&b| b as f32).collect();
    let optimiser = format!(
        "L-BFGS (memory {MEMORY}, backtracking line search): {} after {} iterations, \
         largest gradient component {:.2e}",
        if fit.converged {
            "converged"
        } else {
            "stopped"
        },
        fit.iterations,
        fit.gradient_max
    );
    if !fit.converged {
        tracing::warn!(
            iterations = fit.iterations,
            gradient = fit.gradient_max,
            "{optimiser}"
        );
    }
    let info = TrainingInfo {
        images: table.len(),
        split: config.split.clone(),
        features: table.location.clone(),
        regularisation: config.regularisation,
        iterations: fit.iterations,
        optimiser,
        final_loss: fit.loss,
        train_accuracy: 0.0,
        knn_k: config.knn_k,
        seconds: 0.0,
        trained_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        verger: env!("CARGO_PKG_VERSION").into(),
        view_rows: rows.views.as_ref().map_or(0, |v| v.photo.len()),
    };
    Classifier::new(
        rows.fruit_labels.clone(),
        table.model_sha256.clone(),
        standardize,
        weights,
        bias,
        info,
        rejection,
    )
    .map_err(ClassifierError::Training)
}

/// Mean softmax cross-entropy + λ/2 ‖W‖² over standardised rows `z`.
/// Parameters θ: W (classes × dim, row-major), then b (classes).
struct Objective {
    z: Array2<f64>,
    targets: Vec<usize>,
    classes: usize,
    lambda: f64,
}

impl Objective {
    fn len(&self) -> usize {
        self.classes * (self.z.ncols() + 1)
    }

    fn unpack(&self, theta: &[f64]) -> (Array2<f64>, Array1<f64>) {
        let dim = self.z.ncols();
        let split = self.classes * dim;
        let w = Array2::from_shape_vec((self.classes, dim), theta[..split].to_vec())
            .expect("θ holds W");
        (w, Array1::from(theta[split..].to_vec()))
    }

    /// The objective and its gradient at θ.
    fn value_and_gradient(&self, theta: &[f64]) -> (f64, Vec<f64>) {
        let n = self.z.nrows() as f64;
        let (w, b) = self.unpack(theta);
        // Scores n × classes, then softmax rows in place → probabilities.
        let mut p = self.z.dot(&w.t()) + &b;
        let mut loss = 0.0;
        for (mut row, &t) in p.rows_mut().into_iter().zip(&self.targets) {
            let max = row.fold(f64::NEG_INFINITY, |m, &s| m.max(s));
            row.mapv_inplace(|s| (s - max).exp());
            let sum = row.sum();
            loss -= (row[t] / sum).ln();
            row.mapv_inplace(|e| e / sum);
            row[t] -= 1.0; // p − onehot
        }
        let penalty: f64 = w.iter().map(|v| v * v).sum();
        let loss = loss / n + self.lambda / 2.0 * penalty;
        let grad_w = p.t().dot(&self.z) / n + &w * self.lambda;
        let grad_b = p.sum_axis(Axis(0)) / n;
        let mut gradient = grad_w.into_raw_vec_and_offset().0;
        gradient.extend(grad_b);
        (loss, gradient)
    }
}

pub(crate) struct Fit {
    theta: Vec<f64>,
    pub loss: f64,
    pub iterations: usize,
    gradient_max: f64,
    converged: bool,
    /// classes × dim.
    pub weights: Array2<f64>,
    pub bias: Array1<f64>,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// Minimises the (convex) objective from θ = 0: L-BFGS directions with an
/// Armijo backtracking line search; deterministic.
fn lbfgs(objective: &Objective, max_iterations: usize) -> Fit {
    let mut theta = vec![0.0; objective.len()];
    let (mut loss, mut gradient) = objective.value_and_gradient(&theta);
    let mut history: VecDeque<(Vec<f64>, Vec<f64>, f64)> = VecDeque::new();
    let mut iterations = 0;
    while iterations < max_iterations && max_abs(&gradient) > GRADIENT_TOLERANCE {
        // Two-loop recursion: direction = −H·g.
        let mut q = gradient.clone();
        let mut alphas = Vec::with_capacity(history.len());
        for (s, y, rho) in history.iter().rev() {
            let a = rho * dot(s, &q);
            q.iter_mut().zip(y).for_each(|(q, y)| *q -= a * y);
            alphas.push(a);
        }
        let scale = match history.back() {
            Some((s, y, _)) => dot(s, y) / dot(y, y),
            // First step: a unit-length move along the gradient.
            None => 1.0 / dot(&gradient, &gradient).sqrt().max(1e-12),
        };
        q.iter_mut().for_each(|q| *q *= scale);
        for ((s, y, rho), a) in history.iter().zip(alphas.iter().rev()) {
            let beta = rho * dot(y, &q);
            q.iter_mut().zip(s).for_each(|(q, s)| *q += (a - beta) * s);
        }
        let mut direction: Vec<f64> = q.iter().map(|q| -q).collect();
        let mut slope = dot(&gradient, &direction);
        if slope >= 0.0 {
            // Not a descent direction (numerical trouble): restart from steepest descent.
            history.clear();
            direction = gradient.iter().map(|g| -g).collect();
            slope = -dot(&gradient, &gradient);
        }
        // Backtracking until the Armijo condition holds.
        let mut step = 1.0;
        let accepted = loop {
            let candidate: Vec<f64> = theta
                .iter()
                .zip(&direction)
                .map(|(t, d)| t + step * d)
                .collect();
            let (new_loss, new_gradient) = objective.value_and_gradient(&candidate);
            if new_loss.is_finite() && new_loss <= loss + 1e-4 * step * slope {
                break Some((candidate, new_loss, new_gradient));
            }
            step *= 0.5;
            if step < 1e-10 {
                break None;
            }
        };
        iterations += 1;
        let Some((candidate, new_loss, new_gradient)) = accepted else {
            tracing::debug!(iterations, loss, "line search found no decrease; stopping");
            break;
        };
        let s: Vec<f64> = candidate.iter().zip(&theta).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = new_gradient
            .iter()
            .zip(&gradient)
            .map(|(a, b)| a - b)
            .collect();
        let sy = dot(&s, &y);
        if sy > 1e-12 {
            if history.len() == MEMORY {
                history.pop_front();
            }
            history.push_back((s, y, 1.0 / sy));
        }
        let improvement = loss - new_loss;
        (theta, loss, gradient) = (candidate, new_loss, new_gradient);
        tracing::debug!(
            iterations,
            loss,
            gradient = max_abs(&gradient),
            step,
            "L-BFGS"
        );
        if improvement <= 1e-12 * loss.abs().max(1.0) {
            break;
        }
    }
    let gradient_max = max_abs(&gradient);
    Fit {
        theta,
        loss,
        iterations,
        gradient_max,
        converged: gradient_max <= GRADIENT_TOLERANCE,
        weights: Array2::zeros((0, 0)),
        bias: Array1::zeros(0),
    }
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
