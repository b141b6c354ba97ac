//! Scoring a classifier on held-out features: `evaluation.json`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::open_set::{OpenSet, open_set};
use crate::{Classifier, ClassifierError, FeatureTable, Knn, in_split};

/// `format` of `evaluation.json`.
pub const EVALUATION_FORMAT: &str = "verger-evaluation";
pub const EVALUATION_VERSION: u32 = 2;

/// The kNN baseline's score on the same images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnnBaseline {
    pub k: usize,
    pub top1: f64,
    /// Reference images (the classifier's training split of the same output).
    pub reference_images: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub label: String,
    /// Of the images predicted as this label, the fraction that are (0 when none is).
    pub precision: f64,
    /// Of the images of this label, the fraction predicted as it.
    pub recall: f64,
    /// Images of this label evaluated.
    pub support: u64,
}

/// `evaluation.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub format: String,
    pub version: u32,
    pub split: String,
    /// Images scored (those whose label the classifier knows).
    pub images: usize,
    pub top1: f64,
    pub top5: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub knn_baseline: Option<KnnBaseline>,
    /// The classifier's labels; `per_class` and both axes of `confusion` follow them.
    pub labels: Vec<String>,
    pub per_class: Vec<ClassMetrics>,
    /// Rows: true label index; columns: predicted label index.
    pub confusion: Vec<Vec<u64>>,
    /// Images of the split left out of the closed-set figures because the
    /// classifier has no such label (or they are under the `not_fruit` folder).
    pub skipped_unknown_labels: BTreeMap<String, u64>,
    /// With rejection on: answered, accuracy among answered, rejection of
    /// unknown photos, the risk–coverage curve.
    pub open_set: OpenSet,
    /// Photos worth looking at: the most frequent confusions and the
    /// rejections (documents before examples have none).
    #[serde(default)]
    pub examples: Examples,
    /// The `verger run` output the images came from.
    pub features: String,
    pub feature_model_sha256: String,
    pub evaluated_at: String,
}

/// Example photos of an evaluation, by path (the run's input).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Examples {
    /// Up to [`EXAMPLES_PER_PAIR`] photos of each of the
    /// [`CONFUSED_PAIRS`] most frequent confusions, most confident first.
    pub confused: Vec<Example>,
    /// Photos of known labels that got no label (up to [`REJECTED_EXAMPLES`]).
    pub rejected: Vec<Example>,
    /// Photos that should get no label but got one (up to [`REJECTED_EXAMPLES`]).
    pub wrongly_answered: Vec<Example>,
}

/// One photo and what the classifier made of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub path: String,
    /// Its true label (its folder).
    pub label: String,
    /// The best fruit label, whether or not it was given.
    pub predicted: String,
    pub confidence: f32,
    /// The rule that withheld the label, if one did.
    pub rejected_by: Option<crate::RejectRule>,
}

pub const CONFUSED_PAIRS: usize = 6;
pub const EXAMPLES_PER_PAIR: usize = 3;
pub const REJECTED_EXAMPLES: usize = 8;

/// Scores `classifier` on `test` (refused if made by another feature
/// model); the kNN baseline uses `reference` (the training images), when
/// given. `fruit_mass` holds each test row's ImageNet fruit mass; rows
/// under a folder named `not_fruit` count as photos that should get no label.
pub fn evaluate(
    classifier: &Classifier,
    test: &FeatureTable,
    split: &str,
    reference: Option<(&FeatureTable, usize)>,
    fruit_mass: &[f32],
    not_fruit: Option<&str>,
) -> Result<Evaluation, ClassifierError> {
    if fruit_mass.len() != test.len() {
        return Err(ClassifierError::Shape(format!(
            "{} fruit-mass values for {} rows",
            fruit_mass.len(),
            test.len()
        )));
    }
    classifier.check_feature_model(&test.model_sha256)?;
    if test.dim != classifier.feature_dim() && !test.is_empty() {
        return Err(ClassifierError::Shape(format!(
            "{} holds {}-d features, the classifier takes {}-d",
            test.location,
            test.dim,
            classifier.feature_dim()
        )));
    }
    let labels = classifier.labels();
    let index: HashMap<&str, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let mut skipped = BTreeMap::new();
    let (mut truth, mut rows, mut masses) = (Vec::new(), Vec::new(), Vec::new());
    let (mut unknown_rows, mut unknown_masses) = (Vec::new(), Vec::new());
    let (mut known_at, mut unknown_at) = (Vec::new(), Vec::new());
    for (i, label) in test.labels.iter().enumerate() {
        let outside = not_fruit.is_some_and(|folder| in_split(&test.paths[i], folder));
        match index.get(label.as_str()).filter(|_| !outside) {
            Some(&t) => {
                truth.push(t);
                known_at.push(i);
                rows.extend_from_slice(test.row(i));
                masses.push(fruit_mass[i]);
            }
            None => {
                *skipped.entry(label.clone()).or_insert(0) += 1;
                unknown_at.push(i);
                unknown_rows.extend_from_slice(test.row(i));
                unknown_masses.push(fruit_mass[i]);
            }
        }
    }
    if truth.is_empty() {
        return Err(ClassifierError::Features {
            location: test.location.clone(),
            reason: format!(
                "no {split}/ images of the classifier's labels to evaluate \
                 (paths must look like …/{split}/<label>/x.jpg)"
            ),
        });
    }
    if !skipped.is_empty() {
        tracing::warn!(
            ?skipped,
            "images of labels the classifier does not know are left out"
        );
    }
    let ranked = classifier.top_k(&rows, 5)?;
    let classes = labels.len();
    let mut confusion = vec![vec![0u64; classes]; classes];
    let mut top5_hits = 0usize;
    for (&t, ranking) in truth.iter().zip(&ranked) {
        confusion[t][ranking[0].0] += 1;
        top5_hits += usize::from(ranking.iter().any(|&(c, _)| c == t));
    }
    let n = truth.len();
    let correct: u64 = (0..classes).map(|c| confusion[c][c]).sum();
    let per_class = (0..classes)
        .map(|c| {
            let support: u64 = confusion[c].iter().sum();
            let predicted: u64 = confusion.iter().map(|row| row[c]).sum();
            let hit = confusion[c][c] as f64;
            ClassMetrics {
                label: labels[c].clone(),
                precision: if predicted > 0 {
                    hit / predicted as f64
                } else {
                    0.0
                },
                recall: if support > 0 {
                    hit / support as f64
                } else {
                    0.0
                },
                support,
            }
        })
        .collect();
    let knn_baseline = reference.and_then(|(reference, k)| {
        let (features, reference_labels): (Vec<f32>, Vec<usize>) = {
            let mut features = Vec::new();
            let mut ids = Vec::new();
            for (i, label) in reference.labels.iter().enumerate() {
                if let Some(&id) = index.get(label.as_str()) {
                    features.extend_from_slice(reference.row(i));
                    ids.push(id);
                }
            }
            (features, ids)
        };
        if reference_labels.is_empty() || reference.dim != classifier.feature_dim() {
            tracing::warn!("no reference images for the kNN baseline");
            return None;
        }
        let knn = Knn::new(k, reference.dim, classes, &features, &reference_labels);
        let hits = rows
            .chunks_exact(classifier.feature_dim())
            .zip(&truth)
            .filter(|(row, t)| knn.predict(row) == Some(**t))
            .count();
        Some(KnnBaseline {
            k: knn.k(),
            top1: hits as f64 / n as f64,
            reference_images: reference_labels.len(),
        })
    });
    let open_set = open_set(
        classifier,
        (rows.as_slice(), masses.as_slice(), truth.as_slice()),
        (unknown_rows.as_slice(), unknown_masses.as_slice()),
    )?;
    let example = |at: usize, identified: &crate::Identification| {
        let (best, confidence) = identified.ranking[0];
        Example {
            path: test.paths[at].clone(),
            label: test.labels[at].clone(),
            predicted: labels[best].clone(),
            confidence,
            rejected_by: identified.rejected,
        }
    };
    let known = classifier.identify(&rows, &masses, 1)?;
    let unknown = classifier.identify(&unknown_rows, &unknown_masses, 1)?;
    let examples = Examples {
        confused: confused_examples(&confusion, &truth, &known, |i, id| example(known_at[i], id)),
        rejected: known
            .iter()
            .enumerate()
            .filter(|(_, id)| id.rejected.is_some())
            .take(REJECTED_EXAMPLES)
            .map(|(i, id)| example(known_at[i], id))
            .collect(),
        wrongly_answered: unknown
            .iter()
            .enumerate()
            .filter(|(_, id)| id.rejected.is_none())
            .take(REJECTED_EXAMPLES)
            .map(|(i, id)| example(unknown_at[i], id))
            .collect(),
    };
    Ok(Evaluation {
        format: EVALUATION_FORMAT.into(),
        version: EVALUATION_VERSION,
        split: split.to_string(),
        images: n,
        top1: correct as f64 / n as f64,
        top5: top5_hits as f64 / n as f64,
        knn_baseline,
        labels: labels.to_vec(),
        per_class,
        confusion,
        skipped_unknown_labels: skipped,
        open_set,
        examples,
        features: test.location.clone(),
        feature_model_sha256: test.model_sha256.clone(),
        evaluated_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}

/// Photos of the most frequent confusions (true ≠ predicted), the most
/// confident mistakes of each pair first.
fn confused_examples(
    confusion: &[Vec<u64>],
    truth: &[usize],
    known: &[crate::Identification],
    example: impl Fn(usize, &crate::Identification) -> Example,
) -> Vec<Example> {
    let mut pairs: Vec<(u64, usize, usize)> = Vec::new();
    for (t, row) in confusion.iter().enumerate() {
        for (p, &count) in row.iter().enumerate() {
            if t != p && count > 0 {
                pairs.push((count, t, p));
            }
        }
    }
    pairs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut out = Vec::new();
    for &(_, t, p) in pairs.iter().take(CONFUSED_PAIRS) {
        let mut photos: Vec<usize> = (0..truth.len())
            .filter(|&i| truth[i] == t && known[i].ranking[0].0 == p)
            .collect();
        photos.sort_by(|&a, &b| known[b].ranking[0].1.total_cmp(&known[a].ranking[0].1));
        out.extend(
            photos
                .into_iter()
                .take(EXAMPLES_PER_PAIR)
                .map(|i| example(i, &known[i])),
        );
    }
    out
}

impl Evaluation {
    /// The text of `evaluation.json`.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("an evaluation always serialises")
    }

    /// Writes `evaluation.json` to `file` (creating its folder).
    pub fn save(&self, file: &std::path::Path) -> Result<(), ClassifierError> {
        let failed = |e: std::io::Error| ClassifierError::Write {
            file: file.to_path_buf(),
            reason: e.to_string(),
        };
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        std::fs::write(file, self.to_json()).map_err(failed)
    }

    /// A table for people: headline figures, per-class precision/recall,
    /// and the most frequent confusions.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let width = self
            .labels
            .iter()
            .map(|l| l.chars().count())
            .max()
            .unwrap_or(5)
            .max(5);
        let _ = writeln!(
            out,
            "{} images of {}/, {} labels",
            self.images,
            self.split,
            self.labels.len()
        );
        let _ = writeln!(out, "  top-1 accuracy  {:.4}", self.top1);
        let _ = writeln!(out, "  top-5 accuracy  {:.4}", self.top5);
        if let Some(knn) = &self.knn_baseline {
            let _ = writeln!(
                out,
                "  kNN baseline    {:.4}  (cosine, k = {}, {} reference images)",
                knn.top1, knn.k, knn.reference_images
            );
        }
        let open = &self.open_set;
        let _ = writeln!(
            out,
            "  with rejection: {:.4} answered, {:.4} right among answered (rejected: {:?})",
            open.answered, open.accuracy_among_answered, open.known_rejected_by
        );
        if let Some(rate) = &open.not_known {
            let _ = writeln!(
                out,
                "  photos of no known label: {} images, {:.4} rejected ({:?})",
                rate.images, rate.rejected, rate.by_reason
            );
        }
        for (label, count) in self.skipped_unknown_labels.iter().take(12) {
            let _ = writeln!(
                out,
                "  left out: {count} image(s) of {label:?}, a label the classifier does not know"
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "  {:<width$}  {:>9}  {:>6}  {:>7}",
            "label", "precision", "recall", "support"
        );
        for c in &self.per_class {
            let _ = writeln!(
                out,
                "  {:<width$}  {:>9.3}  {:>6.3}  {:>7}",
                c.label, c.precision, c.recall, c.support
            );
        }
        let mut mistakes: Vec<(u64, usize, usize)> = Vec::new();
        for (t, row) in self.confusion.iter().enumerate() {
            for (p, &count) in row.iter().enumerate() {
                if t != p && count > 0 {
                    mistakes.push((count, t, p));
                }
            }
        }
        mistakes.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let _ = writeln!(out);
        if mistakes.is_empty() {
            let _ = writeln!(out, "  no confusions");
        } else {
            let _ = writeln!(out, "  most frequent confusions (true → predicted):");
            for (count, t, p) in mistakes.iter().take(10) {
                let _ = writeln!(
                    out,
                    "    {count:>3} × {} → {}",
                    self.labels[*t], self.labels[*p]
                );
            }
        }
        out
    }
}
