//! `--incremental`: after the input changed, only new and changed images are
//! featurized, rows of deleted ones are dropped, and the result equals a full
//! run over the new input.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::{RunDir, RunOutput, Verger, copy_sample_subset, max_abs_diff, tempdir};

const LABELS: &[&str] = &["Kiwi", "Lemon", "Mango", "Banana", "Plum", "Pear"];

/// Images featurized by this run itself (not carried over).
fn computed(run: &RunDir) -> u64 {
    let stages = &run.run_json["timings"]["stages"];
    stages["featurized"].as_u64().unwrap() + stages["failed"].as_u64().unwrap()
}

fn counts(run: &RunDir, key: &str) -> u64 {
    run.run_json["counts"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("run.json counts.{key}: {}", run.run_json))
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Same rows, features and PCA as a full run (components up to sign).
fn assert_same_result(got: &RunDir, want: &RunDir) {
    let mut a: Vec<(&str, &str)> = got
        .features
        .iter()
        .map(|r| (r.path.as_str(), r.label.as_str()))
        .collect();
    let mut b: Vec<(&str, &str)> = want
        .features
        .iter()
        .map(|r| (r.path.as_str(), r.label.as_str()))
        .collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "features rows (sorted, duplicates would show)");
    assert_eq!(got.counts(), want.counts());
    let (x, y) = (&got.pca_model, &want.pca_model);
    for (p, q) in numbers(&x["explained_variance"])
        .iter()
        .zip(numbers(&y["explained_variance"]))
    {
        assert!((p - q).abs() <= 1e-9, "explained variance {p} vs {q}");
    }
    let signs: Vec<f64> = x["components"]
        .as_array()
        .unwrap()
        .iter()
        .zip(y["components"].as_array().unwrap())
        .map(|(c, d)| {
            let (c, d) = (numbers(c), numbers(d));
            let dot: f64 = c.iter().zip(&d).map(|(u, v)| u * v).sum();
            for (u, v) in c.iter().zip(&d) {
                assert!((u - dot.signum() * v).abs() <= 1e-6, "component {u} vs {v}");
            }
            dot.signum()
        })
        .collect();
    for row in &got.features {
        let other = want.feature(&row.path).unwrap();
        assert!(
            max_abs_diff(&row.features, &other.features) <= 1e-5,
            "{}",
            row.path
        );
        for ((p, q), sign) in row.pca.iter().zip(&other.pca).zip(&signs) {
            assert!(
                (p - sign * q).abs() <= 1e-6 * q.abs().max(1.0),
                "{}: pca {p} vs {q}",
                row.path
            );
        }
    }
}

fn run(input: &Path, out: &Path, extra: &[&str]) -> (RunOutput, RunDir) {
    let o = Verger::run(input, out).args(extra).exec().assert_success();
    let dir = RunDir::read(out);
    (o, dir)
}

#[test]
fn incremental_featurizes_only_new_and_changed_images() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    let mut images = copy_sample_subset(&input, "Training", LABELS, 20);
    let out = tmp.path().join("out");
    let (_, first) = run(&input, &out, &[]);
    assert_eq!(first.counts(), (120, 120, 0));
    assert!(out.join("inventory").is_dir());

    // 20 new photos, 5 deleted.
    let extra = tmp.path().join("extra");
    for new in copy_sample_subset(&extra, "Test", &["Kiwi", "Lemon"], 10) {
        let label = new.parent().unwrap().file_name().unwrap();
        let to = input.join(label).join(format!(
            "new_{}",
            new.file_name().unwrap().to_str().unwrap()
        ));
        std::fs::rename(&new, &to).unwrap();
    }
    images.sort();
    let deleted: Vec<PathBuf> = images.iter().step_by(24).take(5).cloned().collect();
    for gone in &deleted {
        std::fs::remove_file(gone).unwrap();
    }

    let (o, updated) = run(&input, &out, &["--incremental"]);
    assert_eq!(
        computed(&updated),
        20,
        "exactly the new images are featurized: {o:?}"
    );
    assert_eq!(counts(&updated, "unchanged"), 115);
    assert_eq!(counts(&updated, "removed"), 5);
    assert_eq!(updated.counts(), (135, 135, 0));
    assert!(
        o.stdout
            .contains("20 computed, 115 unchanged and reused, 5 removed"),
        "{o:?}"
    );
    for gone in &deleted {
        assert!(
            updated.feature(gone.to_str().unwrap()).is_none(),
            "{} still there",
            gone.display()
        );
    }
    let (_, full) = run(&input, &tmp.path().join("full"), &[]);
    assert_same_result(&updated, &full);

    // One photo replaced by another (a different size): only it is redone.
    let changed = images.iter().find(|p| !deleted.contains(p)).unwrap();
    let other = images.iter().rev().find(|p| !deleted.contains(p)).unwrap();
    assert_ne!(
        std::fs::metadata(changed).unwrap().len(),
        std::fs::metadata(other).unwrap().len()
    );
    std::fs::copy(other, changed).unwrap();
    let (_, again) = run(&input, &out, &["--incremental"]);
    assert_eq!(computed(&again), 1);
    assert_eq!(counts(&again, "unchanged"), 134);
    let refreshed = again.feature(changed.to_str().unwrap()).unwrap();
    let copy = again.feature(other.to_str().unwrap()).unwrap();
    assert!(
        max_abs_diff(&refreshed.features, &copy.features) <= 1e-5,
        "the changed file was not featurized again"
    );
    let (_, full) = run(&input, &tmp.path().join("full2"), &["--overwrite"]);
    assert_same_result(&again, &full);
}

#[test]
fn incremental_needs_a_complete_earlier_run_of_the_same_job() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    copy_sample_subset(&input, "Test", &["Kiwi"], 5);
    let out = tmp.path().join("out");
    let none = Verger::run(&input, &out)
        .arg("--incremental")
        .exec()
        .assert_failure();
    assert!(none.stderr.contains("no _SUCCESS"), "{none:?}");
    run(&input, &out, &[]);
    let other_glob = Verger::run(&input, &out)
        .args(["--incremental", "--glob", "*.{jpg,jpeg}"])
        .exec()
        .assert_failure();
    assert!(
        other_glob.stderr.contains("same job") && other_glob.stderr.contains("glob: *.jpg"),
        "{other_glob:?}"
    );
    // The refused runs left the earlier result intact.
    assert!(out.join("_SUCCESS").is_file());
    assert_eq!(RunDir::read(&out).counts(), (5, 5, 0));
}
