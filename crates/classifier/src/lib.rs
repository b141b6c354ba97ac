//! The fruit classifier: which label a 1280-d MobileNetV2 feature vector
//! belongs to.
//!
//! This crate owns three things:
//!
//! - **the classifier**: a multinomial logistic regression (softmax over
//!   one linear score per label) on standardised features, trained by
//!   [`train`] and applied by [`Classifier::probabilities`] /
//!   [`Classifier::top_k`]; a cosine k-nearest-neighbour [`Knn`] is the
//!   baseline it is measured against;
//! - **its saved form**, `classifier.json` (below), and the rule that a
//!   classifier only runs on features made by the feature model it was
//!   trained on ([`Classifier::check_feature_model`]);
//! - **rejection** ("I don't know"): the rules, their calibration at
//!   training time on scene-grouped out-of-fold scores, and
//!   [`Classifier::identify`], which ranks and rejects;
//! - **its evaluation** ([`evaluate()`]): top-1/top-5 accuracy, per-class
//!   precision and recall, the confusion matrix, and with rejection on the
//!   answered rate, accuracy among answered and the risk–coverage curve, as
//!   `evaluation.json`.
//!
//! It reads a `verger run` output (`features/*.parquet` and `run.json`,
//! locally or on S3) through `verger-store` and plain Parquet
//! ([`read_features`]). It must not know DataFusion, Ballista or HTTP: the
//! pipeline makes the features, the service (`verger serve`) calls
//! [`Classifier`], and both stay outside.
//!
//! # `classifier.json`, format `verger-classifier` version 2
//!
//! ```json
//! {
//!   "format": "verger-classifier",
//!   "version": 2,
//!   "labels": ["Apple Braeburn", "..."],
//!   "feature_model_sha256": "61a28d70…",
//!   "feature_dim": 1280,
//!   "standardize": {"mean": [1280 floats], "std": [1280 floats]},
//!   "weights": [[1280 floats], "... one row per label"],
//!   "bias": [one float per label],
//!   "training": {"images": 1440, "split": "Training", "regularisation": 0.001, "iterations": 200, "trained_at": "…", "…": "…"},
//!   "rejection": {
//!     "operating_point": {"answer_fraction": 0.9, "calibrated_on": "scene-grouped 5-fold …", "folds": 5,
//!                         "oof_answered": 0.9, "oof_accuracy_among_answered": 0.89, "oof_top1": 0.85},
//!     "fruit_mass": {"imagenet_classes": [948, "…", 957], "pass_fraction": 0.98, "threshold": 0.027},
//!     "negatives": {"class": "__negative__", "folder": "other", "training_photos": 499,
//!                   "weights": [1280 floats], "bias": 0.1} or null,
//!     "max_softmax": {"threshold": 0.45}
//!   }
//! }
//! ```
//!
//! For a feature row `x`, `z = (x − mean) / std` (element-wise; `std` is 1
//! where a dimension was constant in training), the score of label `i` is
//! `weights[i] · z + bias[i]`, and the probabilities are the softmax of the
//! scores. `labels` are sorted, and index the rows of `weights`, `bias` and
//! every output. The negatives class is one more score, kept under
//! `rejection.negatives` so that it is never a label. A photo gets no label
//! when ([`Rejection::first_rule`], in this order) its ImageNet fruit mass
//! is below `fruit_mass.threshold`, or the negatives score beats every
//! label's, or its largest probability is below `max_softmax.threshold`.
//! Loading refuses another `format`, another `version`, a missing field,
//! and shapes that do not agree with `labels` and `feature_dim`.

mod calibrate;
mod evaluate;
mod features;
mod folds;
mod knn;
mod model;
mod open_set;
mod rejection;
mod train;

use std::path::PathBuf;

pub use evaluate::{
    ClassMetrics, EVALUATION_FORMAT, EVALUATION_VERSION, Evaluation, Example, Examples,
    KnnBaseline, evaluate,
};
pub use features::{
    FeatureTable, ViewRows, feature_model_sha256, in_split, read_features, read_views,
};
pub use folds::scene_folds;
pub use knn::Knn;
pub use model::{
    Classifier, FORMAT, Identification, MODEL_FILE, Standardize, TrainingInfo, VERSION,
};
pub use open_set::{CoveragePoint, OpenSet, RejectionRate};
pub use rejection::{
    FruitMassGate, MaxSoftmax, NEGATIVE_CLASS, NegativesClass, OperatingPoint, RejectReason,
    RejectRule, Rejection, keep_threshold,
};
pub use train::{TrainConfig, TrainingViews, train, train_with_views};

#[derive(Debug, thiserror::Error)]
pub enum ClassifierError {
    #[error("cannot read {file}: {reason}")]
    Read { file: PathBuf, reason: String },
    #[error("cannot write {file}: {reason}")]
    Write { file: PathBuf, reason: String },
    #[error("{file} is not a usable classifier: {reason}")]
    Invalid { file: PathBuf, reason: String },
    #[error(
        "the features were made by feature model sha256 {found}…, but this classifier was \
         trained on features of {expected}…; train a classifier on features from this model \
         (verger train) or use features made by the classifier's model"
    )]
    FeatureModelMismatch {
        /// First 12 hex digits of the classifier's feature model.
        expected: String,
        /// First 12 hex digits of the model that made the features.
        found: String,
    },
    #[error("features have the wrong shape: {0}")]
    Shape(String),
    #[error("cannot train: {0}")]
    Training(String),
    #[error("cannot read the features of {location}: {reason}")]
    Features { location: String, reason: String },
    #[error(transparent)]
    Store(#[from] verger_store::StoreError),
}

/// Reads the `config.split` images (and the `config.negatives` ones) of
/// the `verger run` output at `features` and trains on them; `head` (the
/// feature model's ImageNet layer) gives each photo's fruit mass.
pub async fn train_on_output(
    features: &verger_store::Location,
    config: &TrainConfig,
    head: &verger_model::ImagenetHead,
) -> Result<Classifier, ClassifierError> {
    let split = config.split.as_str();
    let negatives = config.negatives.as_deref();
    let keep = |path: &str| in_split(path, split) || negatives.is_some_and(|n| in_split(path, n));
    if let Some(views) = read_views(features, &keep).await? {
        let averaged = match config.average_views.is_empty() {
            true => views.names.clone(),
            false => config.average_views.clone(),
        };
        let table = views.averaged(&averaged)?;
        tracing::info!(
            images = table.len(),
            view_rows = views.rows.len(),
            averaged = averaged.len(),
            split,
            ?negatives,
            "training on views"
        );
        let fruit_mass = fruit_masses(&table, head)?;
        let training = TrainingViews {
            rows: &views.rows,
            photo: views.photo_of_rows(),
            averaged,
        };
        return train_with_views(&table, &fruit_mass, Some(&training), config);
    }
    let table = read_features(features, &keep).await?;
    tracing::info!(
        images = table.len(),
        split,
        ?negatives,
        "training images read"
    );
    let fruit_mass = fruit_masses(&table, head)?;
    train(&table, &fruit_mass, config)
}

/// The rows `classifier` scores for the photos of `features` that `keep`
/// accepts: each photo's features, or the mean of the views it was trained
/// to average (which the run must have).
pub async fn read_photos_for(
    classifier: &Classifier,
    features: &verger_store::Location,
    keep: &(dyn Fn(&str) -> bool + Sync),
) -> Result<FeatureTable, ClassifierError> {
    if classifier.views().is_empty() {
        return read_features(features, keep).await;
    }
    match read_views(features, keep).await? {
        Some(views) => views.averaged(classifier.views()),
        None => Err(ClassifierError::Features {
            location: features.display_root().to_string(),
            reason: format!(
                "the classifier averages {} views of each photo, but this run has no views/: \
                 make it with `verger run --views serving` (or training)",
                classifier.views().len()
            ),
        }),
    }
}

/// Every row's ImageNet fruit mass.
pub fn fruit_masses(
    table: &FeatureTable,
    head: &verger_model::ImagenetHead,
) -> Result<Vec<f32>, ClassifierError> {
    if table.dim != verger_model::FEATURE_DIM && !table.is_empty() {
        return Err(ClassifierError::Shape(format!(
            "{} holds {}-d features; the ImageNet head takes {}",
            table.location,
            table.dim,
            verger_model::FEATURE_DIM
        )));
    }
    Ok((0..table.len())
        .map(|i| head.fruit_mass(table.row(i)))
        .collect())
}

/// Scores `classifier` on the `test_split` images of the `verger run`
/// output at `features`, after checking that its feature model is the
/// classifier's; the kNN baseline (`knn_k` neighbours) takes the
/// classifier's training split of the same output as reference.
pub async fn evaluate_on_output(
    classifier: &Classifier,
    features: &verger_store::Location,
    test_split: &str,
    knn_k: usize,
    head: &verger_model::ImagenetHead,
    not_fruit: Option<&str>,
) -> Result<Evaluation, ClassifierError> {
    classifier.check_feature_model(&feature_model_sha256(features).await?)?;
    let train_split = classifier.training().split.clone();
    let table = read_photos_for(classifier, features, &|path| {
        in_split(path, test_split)
            || in_split(path, &train_split)
            || not_fruit.is_some_and(|n| in_split(path, n))
    })
    .await?;
    let test = table
        .keep(|path| in_split(path, test_split) || not_fruit.is_some_and(|n| in_split(path, n)));
    // The kNN baseline's reference: the training fruit photos, never negatives.
    let negatives = classifier
        .rejection()
        .negatives
        .as_ref()
        .map(|n| n.folder.clone());
    let reference = table.keep(|path| {
        in_split(path, &train_split) && !negatives.as_ref().is_some_and(|n| in_split(path, n))
    });
    let reference =
        (!reference.is_empty() && train_split != test_split).then_some((&reference, knn_k));
    let fruit_mass = fruit_masses(&test, head)?;
    evaluate(
        classifier,
        &test,
        test_split,
        reference,
        &fruit_mass,
        not_fruit,
    )
}

/// The first 12 hex digits of a sha256, as messages show it.
pub fn sha_prefix(sha256: &str) -> String {
    sha256.chars().take(12).collect()
}

#[cfg(test)]
mod tests;
