//! Saying "I don't know": the three rejection rules, their thresholds as
//! `classifier.json` stores them, and the quantile that calibrates them.
//!
//! The rules are checked in a fixed order and the first that fires names
//! the reason (FINDINGS §6 of issue 14):
//!
//! 1. the model's own ImageNet softmax puts too little mass on its fruit
//!    classes (948–957) → `not_a_fruit`;
//! 2. the negatives class (photos of vegetables, cartons… given to
//!    `verger train --negatives`) outscores every fruit → `not_a_fruit`;
//! 3. the largest fruit probability is below the calibrated threshold →
//!    `uncertain`.

use serde::{Deserialize, Serialize};

/// The internal label of the negatives class; never returned as a label.
pub const NEGATIVE_CLASS: &str = "__negative__";

/// Why a photo got no label, as the API and `evaluation.json` say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Not one of the fruits the classifier knows, nor fruit at all.
    NotAFruit,
    /// Looks like fruit, but no label is likely enough.
    Uncertain,
}

/// Which rule rejected a photo (finer than [`RejectReason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectRule {
    FruitMass,
    Negatives,
    MaxSoftmax,
}

impl RejectRule {
    pub fn reason(self) -> RejectReason {
        match self {
            RejectRule::FruitMass | RejectRule::Negatives => RejectReason::NotAFruit,
            RejectRule::MaxSoftmax => RejectReason::Uncertain,
        }
    }
}

/// `classifier.json`'s `rejection`: every threshold and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rejection {
    pub operating_point: OperatingPoint,
    pub fruit_mass: FruitMassGate,
    /// `null` when trained without `--negatives` (the field must be there).
    #[serde(deserialize_with = "Option::deserialize")]
    pub negatives: Option<NegativesClass>,
    pub max_softmax: MaxSoftmax,
}

/// The operating point the max-softmax threshold was calibrated to, and
/// what it achieved on the calibration set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatingPoint {
    /// Fraction of known-fruit training photos to answer (out of fold).
    pub answer_fraction: f64,
    /// How the out-of-fold scores were made, in words.
    pub calibrated_on: String,
    pub folds: usize,
    /// Out-of-fold, all three rules on: fraction of fruit photos answered…
    pub oof_answered: f64,
    /// …and the fraction of those answered right.
    pub oof_accuracy_among_answered: f64,
    /// Out-of-fold closed-set top-1 (no rejection).
    pub oof_top1: f64,
}

/// Rule 1: the ImageNet fruit-mass gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FruitMassGate {
    pub imagenet_classes: Vec<usize>,
    /// Fraction of training fruit photos that pass the gate.
    pub pass_fraction: f64,
    /// Photos whose fruit mass is below this are `not_a_fruit`.
    pub threshold: f32,
}

/// Rule 2: the negatives class, one extra linear score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NegativesClass {
    /// Always [`NEGATIVE_CLASS`].
    pub class: String,
    /// The folder name that marked the negatives (`verger train --negatives`).
    pub folder: String,
    pub training_photos: usize,
    /// One weight per (standardised) feature dimension.
    pub weights: Vec<f32>,
    pub bias: f32,
}

/// Rule 3: the largest fruit probability must reach this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxSoftmax {
    pub threshold: f32,
}

impl Rejection {
    /// The first rule that rejects a photo, in the fixed order, or `None`
    /// to answer. `negative_wins`: the negatives score beats every fruit score.
    pub fn first_rule(
        &self,
        fruit_mass: f32,
        negative_wins: bool,
        max_probability: f32,
    ) -> Option<RejectRule> {
        first_rule(
            self.fruit_mass.threshold,
            negative_wins,
            self.max_softmax.threshold,
            fruit_mass,
            max_probability,
        )
    }
}

/// The rule order, on bare thresholds (calibration uses it before a
/// [`Rejection`] exists).
pub(crate) fn first_rule(
    fruit_mass_threshold: f32,
    negative_wins: bool,
    max_softmax_threshold: f32,
    fruit_mass: f32,
    max_probability: f32,
) -> Option<RejectRule> {
    if fruit_mass < fruit_mass_threshold {
        Some(RejectRule::FruitMass)
    } else if negative_wins {
        Some(RejectRule::Negatives)
    } else if max_probability < max_softmax_threshold {
        Some(RejectRule::MaxSoftmax)
    } else {
        None
    }
}

/// The largest value `t` such that at least `keep` of `values` are ≥ `t`:
/// the `⌊(1 − keep)·n⌋`-th smallest value. A threshold set this way keeps
/// (answers, passes) at least the fraction `keep` of the values it was
/// calibrated on. `values` may hold −∞ (already rejected by another rule).
pub fn keep_threshold(values: &[f32], keep: f64) -> f32 {
    assert!(!values.is_empty(), "a threshold needs values");
    assert!((0.0..=1.0).contains(&keep), "keep is a fraction");
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    // The epsilon keeps 1 − 0.9 = 0.0999… from rounding 10 of 100 down to 9.
    let index = ((1.0 - keep) * sorted.len() as f64 + 1e-9).floor() as usize;
    sorted[index.min(sorted.len() - 1)]
}
