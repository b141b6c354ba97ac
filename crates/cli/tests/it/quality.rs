//! The features are useful for telling fruit apart: classifiers fitted on the
//! Training rows of the shared sample run, scored on its Test rows.
//!
//! Thresholds: nearest-centroid (cosine) reaches about 0.925 on this sample
//! with verger's features and exactly the same with the independent Python
//! reference (Pillow + onnxruntime), so the 0.95 first asked for is not
//! reachable by that classifier with this model; it must stay above 0.90.
//! 1-nearest-neighbour (cosine) reaches about 0.98 and must stay above 0.95.
//! Chance level is 1/24.

use std::collections::BTreeMap;

use crate::sample::{FEATURE_DIM, sample_run};
use crate::support::FeatureRow;

const MIN_CENTROID_ACCURACY: f64 = 0.90;
const MIN_1NN_ACCURACY: f64 = 0.95;

fn unit(v: &[f32]) -> Vec<f64> {
    let n = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    assert!(n > 0.0, "zero feature vector");
    v.iter().map(|&x| f64::from(x) / n).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// (Training rows, Test rows) of the sample run, by the split folder in `path`.
fn split() -> (Vec<&'static FeatureRow>, Vec<&'static FeatureRow>) {
    let s = sample_run();
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for r in &s.run.features {
        if r.path.contains("/Training/") {
            train.push(r);
        } else if r.path.contains("/Test/") {
            test.push(r);
        } else {
            panic!("row path outside Training/ and Test/: {}", r.path);
        }
    }
    assert!(!train.is_empty() && !test.is_empty());
    (train, test)
}

/// Accuracy of `predict` on the Test rows; also prints the confusions.
fn score(name: &str, test: &[&FeatureRow], predict: impl Fn(&[f64]) -> String) -> f64 {
    let mut right = 0usize;
    let mut confusions: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in test {
        let got = predict(&unit(&r.features));
        if got == r.label {
            right += 1;
        } else {
            *confusions.entry((r.label.clone(), got)).or_default() += 1;
        }
    }
    let acc = right as f64 / test.len() as f64;
    eprintln!(
        "{name}: accuracy {acc:.4} ({right}/{}); confusions (true, predicted): {confusions:?}",
        test.len()
    );
    acc
}

#[test]
fn nearest_centroid_on_features_classifies_test_split() {
    let (train, test) = split();
    // Cosine nearest centroid: mean of L2-normalised Training vectors per label.
    let mut sums: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for r in &train {
        let e = sums
            .entry(&r.label)
            .or_insert_with(|| vec![0.0; FEATURE_DIM]);
        for (a, b) in e.iter_mut().zip(unit(&r.features)) {
            *a += b;
        }
    }
    assert!(sums.len() > 1);
    let centroids: Vec<(&str, Vec<f64>)> = sums
        .into_iter()
        .map(|(l, s)| {
            let n = dot(&s, &s).sqrt();
            (l, s.iter().map(|x| x / n).collect())
        })
        .collect();
    let acc = score("nearest centroid (cosine)", &test, |x| {
        let best = centroids
            .iter()
            .max_by(|a, b| dot(&a.1, x).total_cmp(&dot(&b.1, x)))
            .unwrap();
        best.0.to_string()
    });
    assert!(
        acc >= MIN_CENTROID_ACCURACY,
        "nearest-centroid accuracy {acc:.4} < {MIN_CENTROID_ACCURACY}"
    );
}

#[test]
fn nearest_neighbour_on_features_classifies_test_split() {
    let (train, test) = split();
    let train: Vec<(&str, Vec<f64>)> = train
        .iter()
        .map(|r| (r.label.as_str(), unit(&r.features)))
        .collect();
    let acc = score("1-nearest neighbour (cosine)", &test, |x| {
        let best = train
            .iter()
            .max_by(|a, b| dot(&a.1, x).total_cmp(&dot(&b.1, x)))
            .unwrap();
        best.0.to_string()
    });
    assert!(
        acc >= MIN_1NN_ACCURACY,
        "1-NN accuracy {acc:.4} < {MIN_1NN_ACCURACY}"
    );
}
