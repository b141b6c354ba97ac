//! PCA against numpy (tests/python/check_pca.py): eigenvalues, explained
//! variance, components up to sign, and the `pca` column, with and without
//! `--center`.

use std::path::Path;

use serde_json::Value;

use crate::sample::sample_run;
use crate::support::{RunDir, Verger, dataset_dir, max_abs_diff, python_json};

fn check_pca(out: &Path) -> Value {
    let verdict = python_json("check_pca.py", [out.as_os_str()]);
    eprintln!("check_pca {}: {verdict}", out.display());
    verdict
}

#[track_caller]
fn assert_verdict(verdict: &Value, k: usize, center: bool) {
    assert_eq!(
        verdict["ok"],
        Value::Bool(true),
        "PCA check failed: {verdict}"
    );
    assert_eq!(
        verdict["metrics"]["k"].as_u64(),
        Some(k as u64),
        "{verdict}"
    );
    assert_eq!(
        verdict["metrics"]["center"].as_bool(),
        Some(center),
        "{verdict}"
    );
}

#[test]
fn pca_matches_numpy_without_centring() {
    let s = sample_run();
    let k = s.run.k();
    assert_eq!(s.run.pca_model["center"].as_bool(), Some(false));
    let verdict = check_pca(&s.out);
    assert_verdict(&verdict, k, false);
    assert_eq!(
        verdict["metrics"]["n"].as_u64(),
        Some(s.run.features.len() as u64)
    );
    // Uncentred projections of non-negative features are far from zero on average.
    assert!(
        verdict["metrics"]["pca_column_mean_abs"].as_f64().unwrap() > 1e-3,
        "{verdict}"
    );
}

/// `--center --k 3` on the Test split, with an odd batch size (7, so the last
/// batch is partial): numpy agrees, and features do not depend on batching.
#[test]
fn pca_with_center_and_odd_batch_size() {
    let s = sample_run();
    let tmp = crate::support::tempdir();
    let out = tmp.path().join("out");
    let input = dataset_dir().join("Test");
    let o = Verger::run(&input, &out)
        .args(["--center", "--k", "3", "--batch-size", "7"])
        .exec()
        .assert_success();
    let run = RunDir::read(&out);
    let n = crate::support::walk_files(&input).len();
    assert_eq!(run.features.len(), n, "{o:?}");
    assert_eq!(run.k(), 3);
    assert_eq!(run.pca_model["center"].as_bool(), Some(true));
    let verdict = check_pca(&out);
    assert_verdict(&verdict, 3, true);
    // Centred projections average to ~0 over the fitted rows.
    for j in 0..3 {
        let mean: f64 = run.features.iter().map(|r| r.pca[j]).sum::<f64>() / n as f64;
        assert!(mean.abs() < 1e-6, "mean of centred pca[{j}] = {mean}");
    }
    // Same images, different batch composition → same features as the sample run.
    for r in &run.features {
        let base = s
            .run
            .feature(&r.path)
            .unwrap_or_else(|| panic!("{} not in sample run", r.path));
        let d = max_abs_diff(&r.features, &base.features);
        assert!(
            d <= 1e-5,
            "batch-size dependence: max abs diff {d} for {}",
            r.path
        );
    }
}
