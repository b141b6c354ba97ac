//! The shared "sample_run" fixture (verger once over the whole Fruits-360
//! sample, local directory → local directory) and the checks on its output.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::SystemTime;

use crate::support::{
    RunDir, RunOutput, Verger, dataset_dir, dataset_images, histogram, model_path, parent_name,
    sha256_file, walk_files,
};

/// MobileNetV2 pooled-feature width (model README).
pub const FEATURE_DIM: usize = 1280;
/// `--k` default of the CLI contract.
pub const DEFAULT_K: usize = 5;

pub struct SampleRun {
    pub out: PathBuf,
    pub output: RunOutput,
    pub run: RunDir,
}

/// Runs once per test process, on first use; later users share the result.
/// Kept under the target's tmp dir (not /tmp) for post-mortem inspection.
/// One directory per test process (`sample_run-<pid>`), so that two test
/// runs at once (a developer and a helper on one machine) never delete each
/// other's fixture; directories of processes that are gone are removed.
pub static SAMPLE_RUN: LazyLock<SampleRun> = LazyLock::new(|| {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    remove_fixtures_of_finished_processes(tmp);
    let out = tmp.join(format!("sample_run-{}", std::process::id()));
    if out.exists() {
        std::fs::remove_dir_all(&out).unwrap();
    }
    let output = Verger::run(dataset_dir(), &out).exec().assert_success();
    eprintln!("sample_run: {} in {:.1?}", output.command, output.elapsed);
    let run = RunDir::read(&out);
    SampleRun { out, output, run }
});

fn remove_fixtures_of_finished_processes(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("sample_run-")) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            std::fs::remove_dir_all(entry.path()).ok();
        }
    }
}

pub fn sample_run() -> &'static SampleRun {
    &SAMPLE_RUN
}

#[test]
fn sample_run_counts_match_the_dataset_and_summary() {
    let s = sample_run();
    let images = dataset_images();
    assert!(!images.is_empty());
    let n = images.len();
    assert_eq!(s.run.features.len(), n, "one features row per sample image");
    assert!(
        s.run.errors.is_empty(),
        "unexpected errors: {:?}",
        s.run.errors
    );
    assert_eq!(s.run.counts(), (n as u64, n as u64, 0), "run.json counts");
    s.output.assert_summary(n, n, 0);
}

#[test]
fn sample_run_paths_are_absolute_and_labels_are_parent_folders() {
    let s = sample_run();
    let want: BTreeSet<String> = dataset_images()
        .iter()
        .map(|p| p.to_str().unwrap().to_string())
        .collect();
    let got: BTreeSet<String> = s.run.features.iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        got.len(),
        s.run.features.len(),
        "duplicate paths in features"
    );
    assert_eq!(
        got, want,
        "features paths must be the absolute paths of the input files"
    );
    for r in &s.run.features {
        assert!(Path::new(&r.path).is_absolute(), "{}", r.path);
        assert!(!r.label.is_empty(), "empty label for {}", r.path);
        assert_eq!(r.label, parent_name(&r.path), "label of {}", r.path);
    }
    // Per-label counts equal what is on disk (labels with spaces kept intact).
    let mut on_disk: BTreeMap<String, usize> = BTreeMap::new();
    for p in dataset_images() {
        let label = p.parent().unwrap().file_name().unwrap().to_str().unwrap();
        *on_disk.entry(label.to_string()).or_default() += 1;
    }
    let got = histogram(s.run.features.iter().map(|r| r.label.as_str()));
    assert_eq!(got, on_disk);
    assert!(
        got.keys().any(|l| l.contains(' ')),
        "sample labels with spaces must survive"
    );
}

#[test]
fn sample_run_features_are_well_formed() {
    let s = sample_run();
    let k = s.run.k();
    assert_eq!(k, DEFAULT_K, "default --k");
    let mut distinct = BTreeSet::new();
    for r in &s.run.features {
        assert_eq!(r.features.len(), FEATURE_DIM, "{}", r.path);
        assert_eq!(r.pca.len(), k, "{}", r.path);
        // The model's pooled ReLU6 outputs lie in [0, 6] (model README).
        assert!(
            r.features
                .iter()
                .all(|v| v.is_finite() && (0.0..=6.0).contains(v)),
            "features out of [0, 6] for {}",
            r.path
        );
        assert!(
            r.features.iter().any(|&v| v > 0.0),
            "all-zero features for {}",
            r.path
        );
        assert!(
            r.pca.iter().all(|v| v.is_finite()),
            "non-finite pca for {}",
            r.path
        );
        distinct.insert(r.features.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    }
    assert_eq!(
        distinct.len(),
        s.run.features.len(),
        "different images must give different features"
    );
}

#[test]
fn sample_run_json_records_counts_model_and_engine() {
    let s = sample_run();
    let j = &s.run.run_json;
    assert_eq!(
        j["model"]["sha256"].as_str(),
        Some(sha256_file(&model_path()).as_str()),
        "run.json model.sha256 must be the model file's sha256: {j}"
    );
    // ORT_DYLIB_PATH is set, so `--engine auto` must pick ONNX Runtime.
    let engine = j["model"]["engine"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        engine.contains("onnx"),
        "run.json model.engine with auto + ORT lib available: {j}"
    );
    assert_eq!(j["parameters"]["k"].as_u64(), Some(DEFAULT_K as u64), "{j}");
    assert!(j["timings"].is_object(), "run.json timings: {j}");
    let pm = &s.run.pca_model;
    assert_eq!(
        pm["n"].as_u64(),
        Some(s.run.features.len() as u64),
        "pca_model.json n"
    );
    assert_eq!(
        pm["dim"].as_u64(),
        Some(FEATURE_DIM as u64),
        "pca_model.json dim"
    );
    assert_eq!(
        pm["center"].as_bool(),
        Some(false),
        "center defaults to false"
    );
}

/// Exactly the documented entries, nothing left over (e.g. `_staging/`),
/// and `_SUCCESS` is the newest file.
#[test]
fn sample_run_output_layout_and_success_marker() {
    let s = sample_run();
    let entries: BTreeSet<String> = std::fs::read_dir(&s.out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let want: BTreeSet<String> = [
        "features",
        "errors",
        "inventory",
        "pca_model.json",
        "run.json",
        "_SUCCESS",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(entries, want, "top-level entries of {}", s.out.display());
    let marker = s.out.join("_SUCCESS");
    assert!(marker.is_file(), "_SUCCESS missing in {}", s.out.display());
    let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let m: SystemTime = mtime(&marker);
    for f in walk_files(&s.out) {
        assert!(mtime(&f) <= m, "{} is newer than _SUCCESS", f.display());
    }
}
