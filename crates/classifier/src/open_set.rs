//! The open-set half of `evaluation.json`: how often the classifier
//! answers, how often it is right when it does, what it says of photos
//! that are not its fruits, and the risk–coverage curve.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Classifier, ClassifierError, RejectReason, RejectRule};

/// `evaluation.json`'s `open_set`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenSet {
    /// Photos of known labels that got a label.
    pub answered: f64,
    /// Of those answered, the fraction right.
    pub accuracy_among_answered: f64,
    /// Photos of known labels rejected, by rule.
    pub known_rejected_by: BTreeMap<RejectRule, u64>,
    /// Photos that should get no label: known labels' photos are not
    /// counted here, only those of labels the classifier does not know
    /// (or of the `--not-fruit` folder).
    pub not_known: Option<RejectionRate>,
    /// Answered rate and accuracy among answered as the max-softmax
    /// threshold sweeps from 1 down to 0 (the other rules fixed).
    pub risk_coverage: Vec<CoveragePoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectionRate {
    pub images: usize,
    /// Fraction that got `label: null`.
    pub rejected: f64,
    pub by_reason: BTreeMap<RejectReason, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoveragePoint {
    pub max_softmax_threshold: f32,
    pub answered: f64,
    pub accuracy_among_answered: f64,
}

/// Points kept on the risk–coverage curve at most.
const CURVE_POINTS: usize = 50;

/// `known`: (feature row, fruit mass, true label index); `unknown`: rows
/// and fruit masses of photos that should get no label.
pub(crate) fn open_set(
    classifier: &Classifier,
    known: (&[f32], &[f32], &[usize]),
    unknown: (&[f32], &[f32]),
) -> Result<OpenSet, ClassifierError> {
    let (rows, masses, truth) = known;
    let answers = classifier.identify(rows, masses, 1)?;
    let mut known_rejected_by = BTreeMap::new();
    let mut answered = 0usize;
    let mut right = 0usize;
    for (answer, &t) in answers.iter().zip(truth) {
        match answer.rejected {
            Some(rule) => *known_rejected_by.entry(rule).or_insert(0) += 1,
            None => {
                answered += 1;
                right += usize::from(answer.ranking[0].0 == t);
            }
        }
    }
    let not_known = (!unknown.1.is_empty())
        .then(|| rejection_rate(classifier, unknown.0, unknown.1))
        .transpose()?;
    Ok(OpenSet {
        answered: ratio(answered, truth.len()),
        accuracy_among_answered: ratio(right, answered),
        known_rejected_by,
        not_known,
        risk_coverage: risk_coverage(&answers, truth),
    })
}

fn rejection_rate(
    classifier: &Classifier,
    rows: &[f32],
    masses: &[f32],
) -> Result<RejectionRate, ClassifierError> {
    let answers = classifier.identify(rows, masses, 1)?;
    let mut by_reason = BTreeMap::new();
    for rule in answers.iter().filter_map(|a| a.rejected) {
        *by_reason.entry(rule.reason()).or_insert(0) += 1;
    }
    let rejected: u64 = by_reason.values().sum();
    Ok(RejectionRate {
        images: answers.len(),
        rejected: ratio(rejected as usize, answers.len()),
        by_reason,
    })
}

/// Photos that pass the fixed rules (1–2) ranked by confidence; each
/// prefix is what one max-softmax threshold answers.
fn risk_coverage(answers: &[crate::Identification], truth: &[usize]) -> Vec<CoveragePoint> {
    let mut passing: Vec<(f32, bool)> = answers
        .iter()
        .zip(truth)
        .filter(|(a, _)| {
            !matches!(
                a.rejected,
                Some(RejectRule::FruitMass | RejectRule::Negatives)
            )
        })
        .map(|(a, &t)| (a.ranking[0].1, a.ranking[0].0 == t))
        .collect();
    passing.sort_by(|a, b| b.0.total_cmp(&a.0));
    let step = passing.len().div_ceil(CURVE_POINTS).max(1);
    let mut right = 0usize;
    let mut curve = Vec::new();
    for (i, &(confidence, hit)) in passing.iter().enumerate() {
        right += usize::from(hit);
        if (i + 1) % step == 0 || i + 1 == passing.len() {
            curve.push(CoveragePoint {
                max_softmax_threshold: confidence,
                answered: ratio(i + 1, truth.len()),
                accuracy_among_answered: ratio(right, i + 1),
            });
        }
    }
    curve
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}
