//! Model lookup and other command-line behaviour.

use crate::support::{RunDir, Verger, copy_sample_subset, model_path, sha256_file, tempdir};

/// No --model, no VERGER_MODEL: the default ../shared/models/... is found
/// relative to the cwd (the repository root).
#[test]
fn default_model_is_found_from_repo_root() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    let files = copy_sample_subset(&input, "Test", &["Plum", "Pear"], 3);
    let out = tmp.path().join("out");
    Verger::run_without_model(&input, &out)
        .args(["--k", "2"])
        .exec()
        .assert_success();
    let run = RunDir::read(&out);
    assert_eq!(run.features.len(), files.len());
    assert_eq!(
        run.run_json["model"]["sha256"].as_str(),
        Some(sha256_file(&model_path()).as_str())
    );
}

/// VERGER_MODEL is honoured when the cwd has no ../shared.
#[test]
fn verger_model_env_is_used() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    let files = copy_sample_subset(&input, "Test", &["Cherry 1"], 3);
    let out = tmp.path().join("out");
    Verger::run_without_model(&input, &out)
        .current_dir(tmp.path())
        .env("VERGER_MODEL", model_path())
        .args(["--k", "2"])
        .exec()
        .assert_success();
    assert_eq!(RunDir::read(&out).features.len(), files.len());
}

#[test]
fn missing_model_fails_naming_the_path() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    copy_sample_subset(&input, "Test", &["Kiwi"], 1);
    let missing = tmp.path().join("no-such-model.onnx");
    let o = Verger::run_without_model(&input, tmp.path().join("out"))
        .arg("--model")
        .arg(&missing)
        .exec()
        .assert_failure();
    assert!(
        o.combined().contains(missing.to_str().unwrap()),
        "message should name the model path: {o:?}"
    );
    assert!(!tmp.path().join("out/_SUCCESS").exists());
}

/// No --model, no VERGER_MODEL and no shared/ above the cwd: a clear error.
#[test]
fn no_model_anywhere_is_a_clear_error() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    copy_sample_subset(&input, "Test", &["Kiwi"], 2);
    let o = Verger::run_without_model(&input, tmp.path().join("out"))
        .current_dir(tmp.path())
        .exec()
        .assert_failure();
    assert!(
        o.stderr.contains("--model") || o.stderr.contains("VERGER_MODEL"),
        "the error should say how to give the model: {o:?}"
    );
    assert!(!tmp.path().join("out/_SUCCESS").exists());
}
