//! Output directory handling: refusal without --overwrite, clean overwrite,
//! `_SUCCESS` marker.

use std::path::Path;

use crate::support::{RunDir, Verger, copy_sample_subset, tempdir, walk_files};

const LABELS: &[&str] = &["Apricot", "Avocado", "Peach"];

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    walk_files(dir)
        .into_iter()
        .map(|p| {
            (
                p.strip_prefix(dir).unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

#[test]
fn existing_output_is_refused_without_overwrite() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    copy_sample_subset(&input, "Test", LABELS, 3);
    let out = tmp.path().join("out");
    Verger::run(&input, &out).exec().assert_success();
    assert!(out.join("_SUCCESS").is_file());
    let before = snapshot(&out);

    let o = Verger::run(&input, &out).exec().assert_failure();
    assert!(
        o.combined().contains("--overwrite"),
        "refusal should mention --overwrite: {o:?}"
    );
    assert_eq!(
        snapshot(&out),
        before,
        "a refused run must not touch the existing output"
    );
}

#[test]
fn overwrite_replaces_the_previous_run_entirely() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    let first = copy_sample_subset(&input, "Test", LABELS, 3);
    let out = tmp.path().join("out");
    Verger::run(&input, &out).exec().assert_success();
    // Plant leftovers a previous (different) run could have left.
    std::fs::write(out.join("stale.txt"), "old").unwrap();
    let old_features = walk_files(&out.join("features"));
    assert!(!old_features.is_empty());
    std::fs::copy(&old_features[0], out.join("features/old.parquet")).unwrap();
    // Second run on a smaller input.
    std::fs::remove_file(&first[0]).unwrap();
    let n = first.len() - 1;

    let o = Verger::run(&input, &out)
        .arg("--overwrite")
        .exec()
        .assert_success();
    assert!(
        !out.join("stale.txt").exists(),
        "stale.txt survived --overwrite"
    );
    assert!(
        !out.join("features/old.parquet").exists(),
        "features/old.parquet survived --overwrite"
    );
    let run = RunDir::read(&out);
    assert_eq!(run.features.len(), n, "only the new run's rows: {o:?}");
    assert_eq!(run.counts(), (n as u64, n as u64, 0));
    assert!(
        run.feature(first[0].to_str().unwrap()).is_none(),
        "row of a deleted input survived"
    );
    assert!(
        out.join("_SUCCESS").is_file(),
        "_SUCCESS missing after overwrite"
    );
}

/// `--overwrite` removes the previous result only once the run can start:
/// a missing model must fail before anything is deleted.
#[test]
fn overwrite_with_a_missing_model_keeps_the_previous_result() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    copy_sample_subset(&input, "Test", LABELS, 2);
    let out = tmp.path().join("out");
    Verger::run(&input, &out).exec().assert_success();
    let before = snapshot(&out);

    let missing = tmp.path().join("no-such-model.onnx");
    let o = Verger::run_without_model(&input, &out)
        .arg("--overwrite")
        .arg("--model")
        .arg(&missing)
        .exec()
        .assert_failure();
    assert!(
        o.combined().contains("no-such-model.onnx"),
        "the error must name the missing model: {o:?}"
    );
    assert_eq!(snapshot(&out), before, "the previous result must survive");
}
