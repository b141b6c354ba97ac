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
fn overwrite_replaces_verger_files_and_leaves_the_rest_named() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    let first = copy_sample_subset(&input, "Test", LABELS, 3);
    let out = tmp.path().join("out");
    Verger::run(&input, &out).exec().assert_success();
    // A user's own file beside the result, and an old part verger wrote.
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
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
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine",
        "--overwrite deleted a file verger did not write"
    );
    assert!(
        o.stderr.contains("did not write") && o.stderr.contains("notes.txt"),
        "the file left in place is named: {o:?}"
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

/// `--output` the input itself, inside it, or around it: refused before
/// anything is listed, created or deleted, `--overwrite` or not.
#[test]
fn an_output_that_overlaps_the_input_is_refused() {
    let tmp = tempdir();
    let photos = tmp.path().join("photos");
    copy_sample_subset(&photos, "Test", LABELS, 2);
    // A verger result inside the photos would make --overwrite tempting.
    let before = snapshot(tmp.path());
    for output in [
        photos.clone(),
        photos.join("Apricot"),
        photos.join("results"),
        tmp.path().to_path_buf(),
    ] {
        let o = Verger::run(&photos, &output)
            .arg("--overwrite")
            .exec()
            .assert_failure();
        assert!(o.stderr.contains("overlap"), "{}: {o:?}", output.display());
        assert_eq!(snapshot(tmp.path()), before, "{}", output.display());
    }
}

/// A folder that holds anything verger did not make (a home directory, a
/// project) is never written into, even with --overwrite.
#[test]
fn a_folder_verger_did_not_make_is_refused_even_with_overwrite() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    copy_sample_subset(&input, "Test", LABELS, 2);
    let home = tmp.path().join("home");
    std::fs::create_dir_all(home.join("Documents")).unwrap();
    std::fs::write(home.join("Documents/thesis.tex"), "years of work").unwrap();
    std::fs::write(home.join(".bashrc"), "alias x=y").unwrap();
    let before = snapshot(&home);
    let o = Verger::run(&input, &home)
        .arg("--overwrite")
        .exec()
        .assert_failure();
    assert!(o.stderr.contains("not made by verger"), "{o:?}");
    assert_eq!(snapshot(&home), before);
}

/// A symlinked folder inside a previous result must not lead an overwrite
/// out of the output.
#[test]
fn overwrite_never_follows_a_symlink_out_of_the_output() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    copy_sample_subset(&input, "Test", LABELS, 2);
    let out = tmp.path().join("out");
    Verger::run(&input, &out).exec().assert_success();
    let precious = tmp.path().join("precious");
    std::fs::create_dir_all(&precious).unwrap();
    std::fs::write(precious.join("photo.jpg"), "keep").unwrap();
    std::os::unix::fs::symlink(&precious, out.join("features/linked")).unwrap();
    // A top-level name verger writes through is refused, nothing deleted.
    std::os::unix::fs::symlink(&precious, out.join("_staging")).unwrap();
    let o = Verger::run(&input, &out)
        .arg("--overwrite")
        .exec()
        .assert_failure();
    assert!(o.stderr.contains("is a symlink"), "{o:?}");
    assert!(out.join("_SUCCESS").is_file(), "nothing was deleted");
    std::fs::remove_file(out.join("_staging")).unwrap();
    // A link inside a folder of verger's is left alone, and not followed.
    Verger::run(&input, &out)
        .arg("--overwrite")
        .exec()
        .assert_success();
    assert_eq!(
        std::fs::read_to_string(precious.join("photo.jpg")).unwrap(),
        "keep"
    );
    assert_eq!(walk_files(&precious).len(), 1, "nothing was written there");
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
