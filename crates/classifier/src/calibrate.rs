//! Calibrating rejection at training time (issue 14, FINDINGS §6):
//!
//! 1. the fruit-mass threshold passes `fruit_mass_pass` of the training
//!    fruit photos (it needs no classifier: the ImageNet head is fixed);
//! 2. the training fruit photos are cut into scene-grouped folds; for each
//!    fold a classifier is fitted on the other folds (and every negative)
//!    and scores the held-out photos, so every photo gets an honest,
//!    out-of-fold confidence;
//! 3. the max-softmax threshold answers `answer_fraction` of those photos,
//!    counting the ones rules 1–2 already reject as never answered.

use ndarray::{ArrayView2, Axis};

use crate::ClassifierError;
use crate::folds::scene_folds;
use crate::rejection::{
    FruitMassGate, MaxSoftmax, NEGATIVE_CLASS, NegativesClass, OperatingPoint, Rejection,
    first_rule, keep_threshold,
};
use crate::train::{Fit, TrainConfig, TrainingRows, fit};

/// One photo scored by a classifier that never saw it.
#[derive(Debug, Clone, Copy)]
struct OutOfFold {
    max_probability: f32,
    predicted: usize,
    negative_wins: bool,
}

pub(crate) fn calibrate(
    rows: &TrainingRows,
    fruit_mass: &[f32],
    config: &TrainConfig,
    full: &Fit,
) -> Result<Rejection, ClassifierError> {
    let fruit: Vec<usize> = (0..rows.targets.len())
        .filter(|&i| Some(rows.targets[i]) != rows.negative)
        .collect();
    let masses: Vec<f32> = fruit.iter().map(|&i| fruit_mass[i]).collect();
    let mass_threshold = keep_threshold(&masses, config.fruit_mass_pass);
    let oof = out_of_fold(rows, &fruit, config);
    // Rules 1–2 reject before the threshold is looked at: −∞ is never answered.
    let confidence: Vec<f32> = oof
        .iter()
        .zip(&masses)
        .map(
            |(o, &m)| match first_rule(mass_threshold, o.negative_wins, 0.0, m, 0.0) {
                Some(_) => f32::NEG_INFINITY,
                None => o.max_probability,
            },
        )
        .collect();
    // When the gates alone reject more than 1 − X, answer all they pass.
    let threshold = keep_threshold(&confidence, config.answer_fraction).max(0.0);
    let operating_point = operating_point(rows, &fruit, &oof, &confidence, threshold, config);
    tracing::info!(
        fruit_mass_threshold = mass_threshold,
        max_softmax_threshold = threshold,
        oof_answered = operating_point.oof_answered,
        oof_accuracy_among_answered = operating_point.oof_accuracy_among_answered,
        oof_top1 = operating_point.oof_top1,
        "rejection calibrated"
    );
    Ok(Rejection {
        operating_point,
        fruit_mass: FruitMassGate {
            imagenet_classes: verger_model::IMAGENET_FRUIT_CLASSES.collect(),
            pass_fraction: config.fruit_mass_pass,
            threshold: mass_threshold,
        },
        negatives: negatives_class(rows, config, full),
        max_softmax: MaxSoftmax { threshold },
    })
}

/// Every fruit photo (indices `fruit`) scored by the classifier fitted
/// without its fold.
fn out_of_fold(rows: &TrainingRows, fruit: &[usize], config: &TrainConfig) -> Vec<OutOfFold> {
    let vectors: Vec<Vec<f32>> = fruit
        .iter()
        .map(|&i| rows.z.row(i).iter().map(|&v| v as f32).collect())
        .collect();
    let labels: Vec<String> = fruit
        .iter()
        .map(|&i| rows.fruit_labels[rows.targets[i]].clone())
        .collect();
    let fold_of = scene_folds(&vectors, &labels, config.folds);
    let negatives: Vec<usize> = (0..rows.targets.len())
        .filter(|&i| Some(rows.targets[i]) == rows.negative)
        .collect();
    let mut scored = vec![None; fruit.len()];
    for fold in 0..config.folds {
        let (held, kept): (Vec<usize>, Vec<usize>) =
            (0..fruit.len()).partition(|&f| fold_of[f] == fold);
        if held.is_empty() {
            continue;
        }
        let mut subset: Vec<usize> = kept.iter().map(|&f| fruit[f]).collect();
        subset.extend(&negatives);
        let fitted = fit(rows, &subset, config);
        let held_rows: Vec<usize> = held.iter().map(|&f| fruit[f]).collect();
        let z = rows.z.select(Axis(0), &held_rows);
        for (f, score) in held.iter().zip(score(&fitted, z.view(), rows)) {
            scored[*f] = Some(score);
        }
        tracing::debug!(fold, held_out = held.len(), "calibration fold scored");
    }
    scored
        .into_iter()
        .map(|s| s.expect("every photo is in one fold"))
        .collect()
}

/// Fruit softmax (negatives score left out) and the negatives rule.
fn score(fit: &Fit, z: ArrayView2<f64>, rows: &TrainingRows) -> Vec<OutOfFold> {
    let k = rows.fruit_labels.len();
    let scores = z.dot(&fit.weights.t()) + &fit.bias;
    scores
        .rows()
        .into_iter()
        .map(|row| {
            let fruit = row.slice(ndarray::s![..k]);
            let (predicted, best) =
                fruit
                    .iter()
                    .enumerate()
                    .fold(
                        (0, f64::NEG_INFINITY),
                        |b, (i, &s)| if s > b.1 { (i, s) } else { b },
                    );
            let total: f64 = fruit.iter().map(|s| (s - best).exp()).sum();
            OutOfFold {
                max_probability: (1.0 / total) as f32,
                predicted,
                negative_wins: rows.negative.is_some_and(|n| row[n] > best),
            }
        })
        .collect()
}

fn operating_point(
    rows: &TrainingRows,
    fruit: &[usize],
    oof: &[OutOfFold],
    confidence: &[f32],
    threshold: f32,
    config: &TrainConfig,
) -> OperatingPoint {
    let right: Vec<bool> = fruit
        .iter()
        .zip(oof)
        .map(|(&i, o)| o.predicted == rows.targets[i])
        .collect();
    let answered: Vec<usize> = (0..fruit.len())
        .filter(|&f| confidence[f] >= threshold)
        .collect();
    let answered_right = answered.iter().filter(|&&f| right[f]).count();
    let fraction = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    OperatingPoint {
        answer_fraction: config.answer_fraction,
        calibrated_on: format!(
            "scene-grouped {}-fold out-of-fold scores of the {} {} fruit photos \
             (per label, complete-linkage clusters of cosine distance)",
            config.folds,
            fruit.len(),
            config.split
        ),
        folds: config.folds,
        oof_answered: fraction(answered.len(), fruit.len()),
        oof_accuracy_among_answered: fraction(answered_right, answered.len()),
        oof_top1: fraction(right.iter().filter(|r| **r).count(), fruit.len()),
    }
}

fn negatives_class(
    rows: &TrainingRows,
    config: &TrainConfig,
    full: &Fit,
) -> Option<NegativesClass> {
    let n = rows.negative?;
    Some(NegativesClass {
        class: NEGATIVE_CLASS.into(),
        folder: config.negatives.clone().unwrap_or_default(),
        training_photos: rows.targets.iter().filter(|&&t| t == n).count(),
        weights: full.weights.row(n).iter().map(|&w| w as f32).collect(),
        bias: full.bias[n] as f32,
    })
}
