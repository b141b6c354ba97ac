//! The features are useful: a nearest-centroid classifier fitted on the
//! Training rows classifies the Test rows well.

use std::collections::BTreeMap;

use crate::sample::{FEATURE_DIM, sample_run};

const MIN_ACCURACY: f64 = 0.95;

fn unit(v: &[f32]) -> Vec<f64> {
    let n = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    v.iter().map(|&x| f64::from(x) / n).collect()
}

#[test]
fn nearest_centroid_on_features_classifies_test_split() {
    let s = sample_run();
    let split_of = |path: &str| {
        if path.contains("/Training/") {
            "Training"
        } else if path.contains("/Test/") {
            "Test"
        } else {
            panic!("row path outside Training/ and Test/: {path}")
        }
    };
    // Cosine nearest centroid: mean of L2-normalised Training vectors per label.
    let mut sums: BTreeMap<&str, (Vec<f64>, usize)> = BTreeMap::new();
    for r in s
        .run
        .features
        .iter()
        .filter(|r| split_of(&r.path) == "Training")
    {
        let e = sums
            .entry(&r.label)
            .or_insert_with(|| (vec![0.0; FEATURE_DIM], 0));
        for (a, b) in e.0.iter_mut().zip(unit(&r.features)) {
            *a += b;
        }
        e.1 += 1;
    }
    let centroids: Vec<(&str, Vec<f64>)> = sums
        .into_iter()
        .map(|(l, (s, c))| {
            let mean: Vec<f64> = s.iter().map(|x| x / c as f64).collect();
            let n = mean.iter().map(|x| x * x).sum::<f64>().sqrt();
            (l, mean.iter().map(|x| x / n).collect())
        })
        .collect();
    assert!(centroids.len() > 1);

    let (mut right, mut total) = (0usize, 0usize);
    let mut confusions: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in s
        .run
        .features
        .iter()
        .filter(|r| split_of(&r.path) == "Test")
    {
        let x = unit(&r.features);
        let best = centroids
            .iter()
            .map(|(l, c)| (l, c.iter().zip(&x).map(|(a, b)| a * b).sum::<f64>()))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap()
            .0;
        total += 1;
        if *best == r.label {
            right += 1;
        } else {
            *confusions
                .entry((r.label.clone(), best.to_string()))
                .or_default() += 1;
        }
    }
    assert!(total > 0, "no Test rows");
    let acc = right as f64 / total as f64;
    eprintln!("nearest-centroid accuracy {acc:.4} ({right}/{total}); confusions: {confusions:?}");
    assert!(
        acc >= MIN_ACCURACY,
        "accuracy {acc:.4} < {MIN_ACCURACY}; confusions (true, predicted): {confusions:?}"
    );
}
