//! verger's `features` against an independent Python reference
//! (Pillow bilinear resize + onnxruntime, tests/python/reference_features.py),
//! for the default engine (shared sample run) and for `--engine ort` / `tract`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::sample::{FEATURE_DIM, sample_run};
use crate::support::{
    RunDir, Verger, copy_sample_subset, cosine, dataset_dir, max_abs_diff, model_path, python_json,
    read_dir_sorted, tempdir,
};

const MIN_COSINE: f64 = 0.995;

/// One image from each of 12 different labels (every other label of Test/).
fn reference_labels() -> Vec<String> {
    let labels: Vec<String> = read_dir_sorted(&dataset_dir().join("Test"))
        .into_iter()
        .filter(|p| p.is_dir())
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    let picked: Vec<String> = labels.into_iter().step_by(2).collect();
    assert!(
        picked.len() >= 10,
        "need at least 10 labels, got {picked:?}"
    );
    picked
}

/// Python reference features, keyed by the path given to the script.
fn python_reference(paths: &[PathBuf]) -> BTreeMap<String, Vec<f32>> {
    let mut args = vec![model_path()];
    args.extend(paths.iter().cloned());
    let v = python_json("reference_features.py", &args);
    let obj = v["features"].as_object().expect("features object");
    obj.iter()
        .map(|(k, v)| {
            let f: Vec<f32> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(f.len(), FEATURE_DIM, "python reference length");
            (k.clone(), f)
        })
        .collect()
}

fn assert_close_to_reference(what: &str, run: &RunDir, reference: &BTreeMap<String, Vec<f32>>) {
    let mut worst = f64::INFINITY;
    for (path, want) in reference {
        let got = run
            .feature(path)
            .unwrap_or_else(|| panic!("{what}: no features row for {path}"));
        let c = cosine(&got.features, want);
        assert!(
            c >= MIN_COSINE,
            "{what}: cosine {c:.5} < {MIN_COSINE} for {path}"
        );
        worst = worst.min(c);
    }
    eprintln!(
        "{what}: worst cosine vs python reference {worst:.6} over {} images",
        reference.len()
    );
}

#[test]
fn default_engine_features_match_python_reference() {
    let s = sample_run();
    let labels = reference_labels();
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    // Paths of the chosen sample images exactly as the sample run recorded them.
    let mut paths = Vec::new();
    for label in &labels {
        let dir = dataset_dir().join("Test").join(label);
        paths.push(read_dir_sorted(&dir).into_iter().next().unwrap());
    }
    let reference = python_reference(&paths);
    assert_eq!(reference.len(), paths.len());
    assert_close_to_reference("sample run (default engine)", &s.run, &reference);
}

#[test]
fn ort_and_tract_engines_match_python_reference_and_each_other() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    let labels = reference_labels();
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    let paths = copy_sample_subset(&input, "Test", &labels, 1);
    let reference = python_reference(&paths);

    let mut runs = Vec::new();
    for engine in ["ort", "tract"] {
        let out = tmp.path().join(format!("out-{engine}"));
        let o = Verger::run(&input, &out)
            .args(["--engine", engine, "--k", "2"])
            .exec()
            .assert_success();
        let run = RunDir::read(&out);
        assert_eq!(run.features.len(), paths.len(), "{engine}: {o:?}");
        let name = run.run_json["model"]["engine"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        let want: &[&str] = if engine == "ort" {
            &["onnx", "ort"]
        } else {
            &["tract"]
        };
        assert!(
            want.iter().any(|w| name.contains(w)),
            "run.json model.engine should name {engine}: {}",
            run.run_json
        );
        assert_close_to_reference(engine, &run, &reference);
        runs.push(run);
    }
    // Two runtimes, same preprocessing: features agree closely (the model
    // README expects ~1e-4 relative differences between runtimes).
    let (ort, tract) = (&runs[0], &runs[1]);
    let mut worst = 0f32;
    for r in &ort.features {
        let t = tract.feature(&r.path).expect("same paths in both runs");
        let d = max_abs_diff(&r.features, &t.features);
        assert!(d <= 1e-3, "ort vs tract max abs diff {d} for {}", r.path);
        worst = worst.max(d);
    }
    eprintln!("ort vs tract: worst max-abs-diff {worst:e}");
}
