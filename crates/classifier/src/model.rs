//! [`Classifier`]: the trained model, its saved form and inference.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::rejection::{RejectRule, Rejection};
use crate::{ClassifierError, sha_prefix};

/// `format` of `classifier.json`.
pub const FORMAT: &str = "verger-classifier";
/// The `version` of `classifier.json` this build reads and writes.
pub const VERSION: u32 = 2;
/// The file a classifier directory holds.
pub const MODEL_FILE: &str = "classifier.json";

/// Per-dimension standardisation learned from the training images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standardize {
    pub mean: Vec<f32>,
    /// 1 where a dimension was constant over the training images.
    pub std: Vec<f32>,
}

/// How the classifier was trained (informative; inference does not use it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingInfo {
    /// Training images (rows).
    pub images: usize,
    /// The folder name that selected them (`…/<split>/<label>/x.jpg`).
    pub split: String,
    /// Where the features came from (`verger run` output).
    pub features: String,
    /// L2 penalty on the weights (λ/2 · ‖W‖², the loss is a mean over images).
    pub regularisation: f64,
    /// Optimiser iterations run.
    pub iterations: usize,
    /// Optimiser used.
    pub optimiser: String,
    /// Mean cross-entropy + penalty at the end.
    pub final_loss: f64,
    /// Top-1 accuracy on the training images themselves.
    pub train_accuracy: f64,
    /// Neighbours of the kNN baseline that `verger evaluate` runs alongside.
    pub knn_k: usize,
    pub seconds: f64,
    /// RFC 3339, UTC.
    pub trained_at: String,
    /// verger version that trained it.
    pub verger: String,
    /// Extra training rows from `verger run --views` (0: one row per image).
    #[serde(default)]
    pub view_rows: usize,
}

/// `classifier.json`, field for field.
#[derive(Serialize, Deserialize)]
struct ClassifierFile {
    format: String,
    version: u32,
    labels: Vec<String>,
    feature_model_sha256: String,
    feature_dim: usize,
    standardize: Standardize,
    weights: Vec<Vec<f32>>,
    bias: Vec<f32>,
    training: TrainingInfo,
    rejection: Rejection,
    /// The views whose features are averaged into one photo's vector
    /// (names as `verger run --views` writes them); absent: the whole photo.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    views: Vec<String>,
}

/// A trained multinomial logistic regression over feature vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct Classifier {
    labels: Vec<String>,
    feature_model_sha256: String,
    feature_dim: usize,
    standardize: Standardize,
    /// classes × feature_dim, row-major.
    weights: Vec<f32>,
    bias: Vec<f32>,
    training: TrainingInfo,
    rejection: Rejection,
    views: Vec<String>,
}

/// One photo's answer: its ranked fruit labels (always), and why it gets
/// no label, when it does not.
#[derive(Debug, Clone, PartialEq)]
pub struct Identification {
    /// (label index, probability over the fruit labels), best first.
    pub ranking: Vec<(usize, f32)>,
    pub rejected: Option<RejectRule>,
}

impl Classifier {
    /// Assembles a classifier, checking that every shape agrees (the
    /// reason for people when one does not).
    pub(crate) fn new(
        labels: Vec<String>,
        feature_model_sha256: String,
        standardize: Standardize,
        weights: Vec<Vec<f32>>,
        bias: Vec<f32>,
        training: TrainingInfo,
        rejection: Rejection,
    ) -> Result<Self, String> {
        let feature_dim = standardize.mean.len();
        let file = ClassifierFile {
            format: FORMAT.into(),
            version: VERSION,
            labels,
            feature_model_sha256,
            feature_dim,
            standardize,
            weights,
            bias,
            training,
            rejection,
            views: Vec::new(),
        };
        Self::from_file(file)
    }

    /// Reads `dir/classifier.json`.
    pub fn load(dir: &Path) -> Result<Classifier, ClassifierError> {
        let file = dir.join(MODEL_FILE);
        let text = std::fs::read(&file).map_err(|e| ClassifierError::Read {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        Self::from_json(&text).map_err(|reason| ClassifierError::Invalid { file, reason })
    }

    /// Parses the text of a `classifier.json` (the reason for people when
    /// it is not one; [`Classifier::load`] names the file).
    pub(crate) fn from_json(text: &[u8]) -> Result<Classifier, String> {
        // The header first, so that another format or version is named as
        // such rather than as a missing field.
        #[derive(Deserialize)]
        struct Header {
            format: Option<String>,
            version: Option<serde_json::Value>,
        }
        let header: Header = serde_json::from_slice(text).map_err(|e| format!("not JSON ({e})"))?;
        match header.format.as_deref() {
            Some(FORMAT) => {}
            Some(other) => return Err(format!("format is {other:?}, expected {FORMAT:?}")),
            None => return Err(format!("no \"format\" field (expected {FORMAT:?})")),
        }
        match header.version.as_ref().and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(VERSION) => {}
            Some(v) => {
                return Err(format!(
                    "version {v} is not supported (this verger reads version {VERSION}); \
                     train it again with this verger"
                ));
            }
            None => return Err("no numeric \"version\" field".into()),
        }
        let file: ClassifierFile = serde_json::from_slice(text).map_err(|e| e.to_string())?;
        Self::from_file(file)
    }

    fn from_file(file: ClassifierFile) -> Result<Self, String> {
        let classes = file.labels.len();
        let dim = file.feature_dim;
        if classes < 2 {
            return Err(format!("{classes} label(s); a classifier needs at least 2"));
        }
        if dim == 0 {
            return Err("feature_dim is 0".into());
        }
        if let Some(pair) = file.labels.windows(2).find(|w| w[0] >= w[1]) {
            return Err(format!(
                "labels are not sorted and unique ({:?} before {:?})",
                pair[0], pair[1]
            ));
        }
        if file.feature_model_sha256.len() != 64
            || !file
                .feature_model_sha256
                .bytes()
                .all(|b| b.is_ascii_hexdigit())
        {
            return Err(format!(
                "feature_model_sha256 {:?} is not 64 hex digits",
                file.feature_model_sha256
            ));
        }
        let lengths = [
            ("standardize.mean", file.standardize.mean.len(), dim),
            ("standardize.std", file.standardize.std.len(), dim),
            ("weights (rows)", file.weights.len(), classes),
            ("bias", file.bias.len(), classes),
        ];
        for (what, got, want) in lengths {
            if got != want {
                return Err(format!("{what} has {got} values, expected {want}"));
            }
        }
        if let Some((i, row)) = file
            .weights
            .iter()
            .enumerate()
            .find(|(_, r)| r.len() != dim)
        {
            return Err(format!(
                "weights row {i} ({}) has {} values, expected feature_dim = {dim}",
                file.labels[i],
                row.len()
            ));
        }
        if let Some(s) = file
            .standardize
            .std
            .iter()
            .find(|s| s.is_nan() || **s <= 0.0)
        {
            return Err(format!(
                "standardize.std holds {s}; every value must be > 0"
            ));
        }
        let finite = file.standardize.mean.iter().all(|v| v.is_finite())
            && file.weights.iter().flatten().all(|v| v.is_finite())
            && file.bias.iter().all(|v| v.is_finite());
        if !finite {
            return Err("non-finite numbers in mean, weights or bias".into());
        }
        check_rejection(&file.rejection, dim)?;
        Ok(Classifier {
            labels: file.labels,
            feature_model_sha256: file.feature_model_sha256.to_ascii_lowercase(),
            feature_dim: dim,
            standardize: file.standardize,
            weights: file.weights.concat(),
            bias: file.bias,
            training: file.training,
            rejection: file.rejection,
            views: file.views,
        })
    }

    /// Writes `dir/classifier.json` (creating `dir`).
    pub fn save(&self, dir: &Path) -> Result<(), ClassifierError> {
        let file = dir.join(MODEL_FILE);
        let failed = |e: &dyn std::fmt::Display| ClassifierError::Write {
            file: file.clone(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| failed(&e))?;
        std::fs::write(&file, self.to_json()).map_err(|e| failed(&e))
    }

    /// The text of `classifier.json`.
    pub fn to_json(&self) -> Vec<u8> {
        let file = ClassifierFile {
            format: FORMAT.into(),
            version: VERSION,
            labels: self.labels.clone(),
            feature_model_sha256: self.feature_model_sha256.clone(),
            feature_dim: self.feature_dim,
            standardize: self.standardize.clone(),
            weights: self
                .weights
                .chunks(self.feature_dim)
                .map(<[f32]>::to_vec)
                .collect(),
            bias: self.bias.clone(),
            training: self.training.clone(),
            rejection: self.rejection.clone(),
            views: self.views.clone(),
        };
        serde_json::to_vec(&file).expect("a classifier always serialises")
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    pub fn feature_model_sha256(&self) -> &str {
        &self.feature_model_sha256
    }

    pub fn feature_dim(&self) -> usize {
        self.feature_dim
    }

    pub fn training(&self) -> &TrainingInfo {
        &self.training
    }

    pub fn rejection(&self) -> &Rejection {
        &self.rejection
    }

    /// The views (names as `verger run --views` writes them) whose features
    /// are averaged into the vector this classifier scores; empty: the
    /// whole photo's features alone.
    pub fn views(&self) -> &[String] {
        &self.views
    }

    pub(crate) fn set_views(&mut self, views: Vec<String>) {
        self.views = views;
    }

    pub(crate) fn set_training_outcome(
        &mut self,
        final_loss: f64,
        train_accuracy: f64,
        seconds: f64,
    ) {
        self.training.final_loss = final_loss;
        self.training.train_accuracy = train_accuracy;
        self.training.seconds = seconds;
    }

    /// Refuses a feature model other than the one the classifier was trained on.
    pub fn check_feature_model(&self, sha256: &str) -> Result<(), ClassifierError> {
        if sha256.eq_ignore_ascii_case(&self.feature_model_sha256) {
            Ok(())
        } else {
            Err(ClassifierError::FeatureModelMismatch {
                expected: sha_prefix(&self.feature_model_sha256),
                found: sha_prefix(sha256),
            })
        }
    }

    /// Class probabilities for each row of `features` (n × feature_dim,
    /// row-major) → n × labels().len(), row-major.
    pub fn probabilities(&self, features: &[f32]) -> Result<Vec<f32>, ClassifierError> {
        let rows = self.rows(features)?;
        let classes = self.labels.len();
        let mut out = vec![0.0f32; rows * classes];
        let mut z = vec![0.0f32; self.feature_dim];
        for (row, probs) in features
            .chunks_exact(self.feature_dim)
            .zip(out.chunks_exact_mut(classes))
        {
            self.standardize_into(row, &mut z);
            for ((p, w), b) in probs
                .iter_mut()
                .zip(self.weights.chunks_exact(self.feature_dim))
                .zip(&self.bias)
            {
                *p = dot(w, &z) + b;
            }
            softmax_in_place(probs);
        }
        Ok(out)
    }

    /// Each row's ranking (top `k`) and the first rejection rule that
    /// fires, given the row's ImageNet fruit mass (`fruit_mass[i]`, from
    /// `verger_model::ImagenetHead`).
    pub fn identify(
        &self,
        features: &[f32],
        fruit_mass: &[f32],
        k: usize,
    ) -> Result<Vec<Identification>, ClassifierError> {
        let rows = self.rows(features)?;
        if fruit_mass.len() != rows {
            return Err(ClassifierError::Shape(format!(
                "{} fruit-mass values for {rows} rows",
                fruit_mass.len()
            )));
        }
        let probabilities = self.probabilities(features)?;
        let mut z = vec![0.0f32; self.feature_dim];
        let classes = self.labels.len();
        Ok(features
            .chunks_exact(self.feature_dim)
            .zip(probabilities.chunks_exact(classes))
            .zip(fruit_mass)
            .map(|((row, probs), &mass)| {
                self.standardize_into(row, &mut z);
                let ranking = top_k_of(probs, k.max(1));
                let rejected =
                    self.rejection
                        .first_rule(mass, self.negative_wins(&z), ranking[0].1);
                Identification { ranking, rejected }
            })
            .collect())
    }

    /// Whether the negatives score beats every fruit score (`z` standardised).
    fn negative_wins(&self, z: &[f32]) -> bool {
        let Some(negatives) = &self.rejection.negatives else {
            return false;
        };
        let negative = dot(&negatives.weights, z) + negatives.bias;
        self.weights
            .chunks_exact(self.feature_dim)
            .zip(&self.bias)
            .all(|(w, b)| dot(w, z) + b < negative)
    }

    /// Top `k` (label index, probability), best first, for each row.
    pub fn top_k(
        &self,
        features: &[f32],
        k: usize,
    ) -> Result<Vec<Vec<(usize, f32)>>, ClassifierError> {
        let probs = self.probabilities(features)?;
        Ok(probs
            .chunks_exact(self.labels.len())
            .map(|row| top_k_of(row, k))
            .collect())
    }

    fn rows(&self, features: &[f32]) -> Result<usize, ClassifierError> {
        if !features.len().is_multiple_of(self.feature_dim) {
            return Err(ClassifierError::Shape(format!(
                "{} values is not a whole number of {}-d rows",
                features.len(),
                self.feature_dim
            )));
        }
        if let Some(i) = features.iter().position(|v| !v.is_finite()) {
            return Err(ClassifierError::Shape(format!(
                "row {} holds a non-finite value ({})",
                i / self.feature_dim,
                features[i]
            )));
        }
        Ok(features.len() / self.feature_dim)
    }

    fn standardize_into(&self, row: &[f32], z: &mut [f32]) {
        for (((z, x), m), s) in z
            .iter_mut()
            .zip(row)
            .zip(&self.standardize.mean)
            .zip(&self.standardize.std)
        {
            *z = (x - m) / s;
        }
    }
}

/// Thresholds in range, the negatives row as wide as the features.
fn check_rejection(rejection: &Rejection, dim: usize) -> Result<(), String> {
    let point = &rejection.operating_point;
    if !(point.answer_fraction > 0.0 && point.answer_fraction <= 1.0) {
        return Err(format!(
            "rejection.operating_point.answer_fraction is {}, expected (0, 1]",
            point.answer_fraction
        ));
    }
    let thresholds = [
        (
            "rejection.fruit_mass.threshold",
            rejection.fruit_mass.threshold,
        ),
        (
            "rejection.max_softmax.threshold",
            rejection.max_softmax.threshold,
        ),
    ];
    if let Some((what, t)) = thresholds.iter().find(|(_, t)| !(0.0..=1.0).contains(t)) {
        return Err(format!("{what} is {t}, expected a probability in [0, 1]"));
    }
    if let Some(negatives) = &rejection.negatives {
        if negatives.weights.len() != dim {
            return Err(format!(
                "rejection.negatives.weights has {} values, expected feature_dim = {dim}",
                negatives.weights.len()
            ));
        }
        if !negatives.bias.is_finite() || negatives.weights.iter().any(|w| !w.is_finite()) {
            return Err("non-finite numbers in rejection.negatives".into());
        }
    }
    Ok(())
}

pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent sums: the compiler vectorises this, and it is
    // also a little more accurate than one running sum.
    let mut acc = [0.0f32; 8];
    let (a8, a_rest) = a.split_at(a.len() - a.len() % 8);
    let (b8, b_rest) = b.split_at(a8.len());
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Scores → probabilities, stable against large scores.
pub(crate) fn softmax_in_place(scores: &mut [f32]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    for s in scores.iter_mut() {
        *s /= sum;
    }
}

/// The `k` largest values with their indices, largest first (ties: lower index first).
pub(crate) fn top_k_of(values: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut ranked: Vec<(usize, f32)> = values.iter().copied().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(k);
    ranked
}
