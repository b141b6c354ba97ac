//! Broken, odd-but-valid and awkwardly named inputs
//! (tree built by tests/python/make_bad_inputs.py in a temp dir).

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::sample::FEATURE_DIM;
use crate::support::{
    RunDir, RunOutput, Verger, dataset_dir, mentions_any, parent_name, python_json, tempdir,
};

/// Name of the input root; a file directly under it gets this label.
const ROOT: &str = "Mixed Bag";
const CUSTOM_GLOB: &str = "*.{jpg,png}";
/// Enough to fit the handful of valid images in the mixed tree.
const K: &str = "3";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Features,
    Error,
    /// Not matched by either glob used here.
    Ignored,
}

fn expect(rel: &str) -> Expect {
    if rel.ends_with(".txt") || rel.ends_with(".jpeg") {
        Expect::Ignored
    } else if rel.starts_with("broken/") {
        Expect::Error
    } else {
        Expect::Features
    }
}

/// The cases the generator must have produced (guards against drift between
/// make_bad_inputs.py and this table).
const REQUIRED: &[(&str, Expect)] = &[
    ("broken/empty.jpg", Expect::Error),
    ("broken/truncated.jpg", Expect::Error),
    ("broken/random.jpg", Expect::Error),
    ("broken/text.jpg", Expect::Error),
    ("broken/huge.png", Expect::Error),
    ("odd/png_named.jpg", Expect::Features),
    ("odd/gray.jpg", Expect::Features),
    ("odd/cmyk.jpg", Expect::Features),
    ("odd/palette_alpha.png", Expect::Features),
    ("odd/one_pixel.jpg", Expect::Features),
    ("odd/big.jpg", Expect::Features),
    ("odd/hash#and%20percent.jpg", Expect::Features),
    ("root level.jpg", Expect::Features),
    ("Äpfel Grün/ñ 1.jpg", Expect::Features),
    ("notes.txt", Expect::Ignored),
    ("Banana/photo.jpeg", Expect::Ignored),
];

struct Tree {
    _tmp: tempfile::TempDir,
    /// Parent of the input root (a convenient cwd).
    base: PathBuf,
    /// Canonical absolute input root (`.../Mixed Bag`).
    root: PathBuf,
    rels: Vec<String>,
}

impl Tree {
    fn build(mode: &str) -> Tree {
        let tmp = tempdir();
        let base = tmp.path().canonicalize().unwrap();
        let root = base.join(ROOT);
        let v = python_json(
            "make_bad_inputs.py",
            [mode.as_ref(), root.as_os_str(), dataset_dir().as_os_str()],
        );
        let rels: Vec<String> = v["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        for r in &rels {
            assert!(
                root.join(r).is_file(),
                "generator listed a missing file {r}"
            );
        }
        Tree {
            _tmp: tmp,
            base,
            root,
            rels,
        }
    }

    fn abs(&self, rel: &str) -> String {
        self.root.join(rel).to_str().unwrap().to_string()
    }

    /// Absolute paths of the files matching `exts` with the given expectation.
    fn paths(&self, exts: &[&str], want: Expect) -> BTreeSet<String> {
        self.rels
            .iter()
            .filter(|r| exts.iter().any(|e| r.ends_with(&format!(".{e}"))))
            .filter(|r| expect(r) == want)
            .map(|r| self.abs(r))
            .collect()
    }
}

fn out_paths(run: &RunDir) -> (BTreeSet<String>, BTreeSet<String>) {
    (
        run.features.iter().map(|r| r.path.clone()).collect(),
        run.errors.iter().map(|r| r.path.clone()).collect(),
    )
}

fn assert_labels(run: &RunDir) {
    for (path, label) in run
        .features
        .iter()
        .map(|r| (&r.path, &r.label))
        .chain(run.errors.iter().map(|r| (&r.path, &r.label)))
    {
        assert!(!label.is_empty(), "empty label for {path}");
        assert_eq!(label, parent_name(path), "label of {path}");
    }
}

#[test]
fn mixed_inputs_split_into_features_and_errors() {
    let t = Tree::build("mixed");
    let set: BTreeSet<&str> = t.rels.iter().map(String::as_str).collect();
    for (rel, want) in REQUIRED {
        assert!(set.contains(rel), "generator did not create {rel}");
        assert_eq!(expect(rel), *want, "classification of {rel}");
    }
    let out = t.base.join("out");
    let o: RunOutput = Verger::run(&t.root, &out)
        .args(["--glob", CUSTOM_GLOB, "--k", K])
        .exec()
        .assert_success();
    assert!(o.status.success());
    let run = RunDir::read(&out);

    let exts = ["jpg", "png"];
    let want_features = t.paths(&exts, Expect::Features);
    let want_errors = t.paths(&exts, Expect::Error);
    let listed = want_features.len() + want_errors.len();
    let (got_features, got_errors) = out_paths(&run);
    assert_eq!(
        got_features, want_features,
        "features rows\n{o:?}\nerrors: {:#?}",
        run.errors
    );
    assert_eq!(
        got_errors, want_errors,
        "errors rows\n{o:?}\nerrors: {:#?}",
        run.errors
    );
    assert_eq!(
        run.features.len() + run.errors.len(),
        listed,
        "one row per matching file"
    );
    assert_eq!(
        run.counts(),
        (
            listed as u64,
            want_features.len() as u64,
            want_errors.len() as u64
        )
    );
    o.assert_summary(listed, want_features.len(), want_errors.len());
    assert_labels(&run);

    // The root file is labelled with the root folder; non-ASCII survives.
    let root_file = run
        .feature(&t.abs("root level.jpg"))
        .expect("root-level file");
    assert_eq!(root_file.label, ROOT);
    let umlaut = run
        .feature(&t.abs("Äpfel Grün/ñ 1.jpg"))
        .expect("non-ASCII path");
    assert_eq!(umlaut.label, "Äpfel Grün");
    for r in &run.features {
        assert_eq!(r.features.len(), FEATURE_DIM, "{}", r.path);
        assert!(r.features.iter().all(|v| v.is_finite()), "{}", r.path);
    }
    for e in &run.errors {
        assert!(!e.stage.trim().is_empty(), "empty stage: {e:?}");
        assert!(!e.reason.trim().is_empty(), "empty reason: {e:?}");
    }
    // Each failure carries its typed kind, so nobody parses the reason text.
    let kind_of = |rel: &str| {
        run.errors
            .iter()
            .find(|e| e.path == t.abs(rel))
            .map(|e| (e.stage.as_str(), e.kind.as_str()))
    };
    assert_eq!(kind_of("broken/empty.jpg"), Some(("decode", "empty")));
    assert_eq!(kind_of("broken/truncated.jpg"), Some(("decode", "corrupt")));
    assert_eq!(
        kind_of("broken/random.jpg"),
        Some(("decode", "not_an_image"))
    );
    assert_eq!(kind_of("broken/text.jpg"), Some(("decode", "not_an_image")));
    assert_eq!(kind_of("broken/huge.png"), Some(("decode", "too_large")));
    let huge = run
        .errors
        .iter()
        .find(|e| e.path == t.abs("broken/huge.png"))
        .unwrap();
    assert!(
        mentions_any(
            &huge.reason,
            &["size", "limit", "pixel", "large", "dimension", "big"]
        ),
        "the 50000x50000 PNG should be refused for its size: {huge:?}"
    );
    // Decompression bomb refused without allocating it (RGB f32 would be 30 GB).
    if let Some(kib) = o.max_rss_kib {
        assert!(kib < 1024 * 1024, "peak RSS {kib} KiB >= 1 GiB");
    }
}

#[test]
fn max_errors_zero_fails_the_same_run() {
    let t = Tree::build("mixed");
    let o = Verger::run(&t.root, t.base.join("out"))
        .args(["--glob", CUSTOM_GLOB, "--k", K, "--max-errors", "0"])
        .exec()
        .assert_failure();
    assert!(
        mentions_any(
            &o.combined(),
            &["max-errors", "max_errors", "too many errors", "error limit"]
        ),
        "a --max-errors failure should say why: {o:?}"
    );
}

/// Default glob (`*.jpg`, so the PNG files are not listed), input given
/// relative to the cwd: `--max-errors` equal to the error count passes,
/// one less fails.
#[test]
fn max_errors_boundary_with_default_glob_and_relative_input() {
    let t = Tree::build("mixed");
    let want_features = t.paths(&["jpg"], Expect::Features);
    let want_errors = t.paths(&["jpg"], Expect::Error);
    let n_err = want_errors.len();
    assert!(n_err > 0);

    let ok = Verger::run(ROOT, "out-ok")
        .current_dir(&t.base)
        .args(["--k", K, "--max-errors", &n_err.to_string()])
        .exec()
        .assert_success();
    let run = RunDir::read(&t.base.join("out-ok"));
    let (got_features, got_errors) = out_paths(&run);
    assert_eq!(
        got_features, want_features,
        "relative input must still give absolute paths\n{ok:?}"
    );
    assert_eq!(got_errors, want_errors);
    assert_eq!(
        run.counts().0,
        (want_features.len() + n_err) as u64,
        "only *.jpg listed"
    );
    assert_labels(&run);

    let bad = Verger::run(ROOT, "out-bad")
        .current_dir(&t.base)
        .args(["--k", K, "--max-errors", &(n_err - 1).to_string()])
        .exec()
        .assert_failure();
    assert!(
        mentions_any(
            &bad.combined(),
            &["max-errors", "max_errors", "too many errors", "error limit"]
        ),
        "{bad:?}"
    );
}

#[test]
fn max_pixels_sends_large_images_to_errors() {
    let t = Tree::build("small");
    let small: BTreeSet<String> = t
        .rels
        .iter()
        .filter(|r| r.contains("small_"))
        .map(|r| t.abs(r))
        .collect();
    let full: BTreeSet<String> = t
        .rels
        .iter()
        .filter(|r| r.contains("full_"))
        .map(|r| t.abs(r))
        .collect();
    assert!(small.len() >= 3 && !full.is_empty());
    // 60x60 = 3600 pixels pass, 100x100 = 10000 do not.
    let out = t.base.join("out");
    let o = Verger::run(&t.root, &out)
        .args(["--max-pixels", "5000", "--k", "2"])
        .exec()
        .assert_success();
    let run = RunDir::read(&out);
    let (got_features, got_errors) = out_paths(&run);
    assert_eq!(got_features, small, "{o:?}");
    assert_eq!(got_errors, full, "{o:?}");
    for e in &run.errors {
        assert!(
            mentions_any(
                &e.reason,
                &["size", "limit", "pixel", "large", "dimension", "big"]
            ),
            "{e:?}"
        );
    }
}

#[test]
fn missing_input_fails_naming_it() {
    let tmp = tempdir();
    let missing = tmp.path().join("does not exist");
    let o = Verger::run(&missing, tmp.path().join("out"))
        .exec()
        .assert_failure();
    assert!(
        o.combined().contains(missing.to_str().unwrap()),
        "message should name the input: {o:?}"
    );
    assert!(!tmp.path().join("out/_SUCCESS").exists());
}

#[test]
fn empty_input_fails_with_a_clear_message() {
    let tmp = tempdir();
    let empty = tmp.path().join("empty input");
    std::fs::create_dir_all(&empty).unwrap();
    let out = tmp.path().join("out");
    let o = Verger::run(&empty, &out).exec().assert_failure();
    assert!(mentions_any(&o.stderr, &["no files"]), "{o:?}");
    assert!(
        o.stderr.contains(empty.to_str().unwrap()),
        "message should name the input: {o:?}"
    );
    assert!(!out.join("_SUCCESS").exists());
}
