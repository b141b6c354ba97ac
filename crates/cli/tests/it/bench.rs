//! `verger bench`: the command that measures every figure in the README.

use crate::support::{Verger, dataset_dir, model_path, python, tempdir};

/// Two rounds on a few images, with the Python peer: each row folds both
/// runs in (fastest kept, slowest beside it) and its ratios are computed
/// against a measured ceiling.
#[test]
fn bench_repeats_each_row_and_keeps_the_fastest_run() {
    let tmp = tempdir();
    let json = tmp.path().join("bench.json");
    let out = Verger::new()
        .args(["bench", "--images", "24", "--repeat", "2", "--peer"])
        .args(["--ceiling-batches", "1", "--batch-size", "8"])
        .arg("--dataset")
        .arg(dataset_dir())
        .arg("--model")
        .arg(model_path())
        .arg("--work-dir")
        .arg(tmp.path())
        .arg("--json")
        .arg(&json)
        .env("VERGER_PYTHON", python())
        .exec()
        .assert_success();
    let rows: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("bench --json")).unwrap();
    let rows = rows.as_array().expect("a list of rows");
    let modes: Vec<&str> = rows.iter().map(|r| r["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["embedded", "peer"], "{}", out.stdout);
    for row in rows {
        let number = |key: &str| row[key].as_f64().unwrap_or_else(|| panic!("{key}: {row}"));
        assert_eq!(row["runs"], 2, "{row}");
        assert_eq!(row["images"], 24, "{row}");
        assert_eq!(row["errors"], 0, "{row}");
        let (fastest, slowest) = (
            number("end_to_end_images_per_s"),
            number("slowest_images_per_s"),
        );
        assert!(0.0 < slowest && slowest <= fastest, "{row}");
        assert!((fastest * number("wall_s") - 24.0).abs() < 1e-6, "{row}");
        let ratio = number("ratio");
        assert!(ratio.is_finite() && ratio > 0.0, "{row}");
        assert!(number("peak_rss_mib") > 10.0, "{row}");
    }
    assert!(
        out.stdout.contains("| 2 ("),
        "the table shows the runs: {}",
        out.stdout
    );
    assert_eq!(
        out.stderr.matches("model-only ceiling again").count(),
        2,
        "the ceiling is measured again after each round: {}",
        out.stderr
    );
}
