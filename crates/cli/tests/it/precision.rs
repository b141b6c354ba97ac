//! `--precision int8`: the int8 MobileNetV2 that `tools/quantize_int8.py`
//! builds from the shared TFLite file (scripts/test.sh and .ci/run build it
//! into `models/`), against the shared fp32 model, on the whole sample.

use std::path::PathBuf;
use std::sync::LazyLock;

use crate::classifier::{TRAINED, evaluate, train};
use crate::sample::{FEATURE_DIM, sample_run};
use crate::support::output::read_json;
use crate::support::{
    RunDir, Verger, cosine, dataset_dir, model_path, repo_root, sha256_file, tempdir,
};

/// The int8 model's sha256 with the pinned tools/requirements.txt.
const INT8_SHA256: &str = "2f7c54fbdb4a2af7db396bec647255d170ba7496d32deaae2f7310b6fd585077";

fn int8_model() -> PathBuf {
    repo_root().join("models/mobilenet_v2_1.0_224_int8.onnx")
}

struct Int8Run {
    dir: tempfile::TempDir,
    run: RunDir,
}

/// `verger run --precision int8` over the whole sample, once; the model is
/// found by the default lookup (`models/` from the repository root).
static INT8_RUN: LazyLock<Int8Run> = LazyLock::new(|| {
    let dir = tempdir();
    let out = dir.path().join("int8");
    let output = Verger::run_without_model(dataset_dir(), &out)
        .args(["--precision", "int8"])
        .exec()
        .assert_success();
    eprintln!("int8 run: {} in {:.1?}", output.command, output.elapsed);
    let run = RunDir::read(&out);
    Int8Run { dir, run }
});

#[test]
fn int8_run_records_its_precision_and_keeps_the_features_of_fp32() {
    let int8 = &INT8_RUN.run;
    let fp32 = &sample_run().run;
    assert_eq!(
        sha256_file(&int8_model()),
        INT8_SHA256,
        "tools/quantize_int8.py is reproducible"
    );
    assert_eq!(int8.run_json["model"]["precision"], "int8");
    assert_eq!(int8.run_json["model"]["sha256"], INT8_SHA256);
    assert_eq!(int8.run_json["job"]["model_sha256"], INT8_SHA256);
    assert_eq!(fp32.run_json["model"]["precision"], "fp32");
    assert_eq!(
        fp32.run_json["model"]["sha256"],
        sha256_file(&model_path()).as_str()
    );

    assert_eq!(int8.features.len(), fp32.features.len());
    let cosines: Vec<f64> = int8
        .features
        .iter()
        .map(|row| {
            let theirs = fp32
                .feature(&row.path)
                .unwrap_or_else(|| panic!("{} in fp32", row.path));
            assert_eq!(row.features.len(), FEATURE_DIM);
            cosine(&row.features, &theirs.features)
        })
        .collect();
    let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
    let worst = cosines.iter().copied().fold(f64::INFINITY, f64::min);
    eprintln!("int8 vs fp32 features: cosine mean {mean:.4}, worst {worst:.4}");
    assert!(mean >= 0.99, "mean cosine {mean:.4} < 0.99");
    assert!(worst >= 0.97, "worst cosine {worst:.4} < 0.97");
}

#[test]
fn an_int8_classifier_is_within_a_point_of_fp32_and_fp32_ones_are_refused() {
    let int8 = &*INT8_RUN;
    let top1 = |classifier: &std::path::Path, features: &std::path::Path| {
        let file = tempdir();
        let path = file.path().join("evaluation.json");
        evaluate(classifier, features, &path)
            .exec()
            .assert_success();
        read_json(&path)["top1"].as_f64().unwrap()
    };
    let model = int8.dir.path().join("classifier");
    train(&int8.run.root, &model).exec().assert_success();
    let classifier = read_json(&model.join("classifier.json"));
    assert_eq!(classifier["feature_model_sha256"], INT8_SHA256);
    let (int8_top1, fp32_top1) = (
        top1(&model, &int8.run.root),
        top1(TRAINED.model(), &sample_run().out),
    );
    eprintln!("Test top-1: int8 {int8_top1:.4}, fp32 {fp32_top1:.4}");
    assert!(
        (int8_top1 - fp32_top1).abs() <= 0.01 + 1e-9,
        "int8 top-1 {int8_top1:.4} vs fp32 {fp32_top1:.4}"
    );

    // The fp32 classifier does not read int8 features (their sha256 differ).
    let refused = tempdir();
    let output = evaluate(
        TRAINED.model(),
        &int8.run.root,
        &refused.path().join("e.json"),
    )
    .exec()
    .assert_failure();
    assert!(
        output.stderr.contains(&INT8_SHA256[..12]),
        "{}",
        output.stderr
    );
}

#[test]
fn a_known_model_at_the_other_precision_is_refused_before_any_output() {
    let dir = tempdir();
    let out = dir.path().join("out");
    let output = Verger::run(dataset_dir(), &out)
        .args(["--precision", "int8"])
        .exec()
        .assert_failure();
    assert!(
        output.stderr.contains("--precision int8") && output.stderr.contains("fp32 model"),
        "{}",
        output.stderr
    );
    assert!(!out.exists(), "nothing written for a refused run");

    let output = Verger::run_without_model(dataset_dir(), &out)
        .args(["--precision", "fp16"])
        .exec()
        .assert_failure();
    assert!(output.stderr.contains("fp32 or int8"), "{}", output.stderr);
}
