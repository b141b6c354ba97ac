//! `verger train` and `verger evaluate` on the real features of the shared
//! sample (`sample_run`: 24 labels, Training/ 60 and Test/ 20 images each).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use serde_json::Value;

use crate::sample::{FEATURE_DIM, sample_run};
use crate::support::output::read_json;
use crate::support::{
    RunOutput, Verger, copy_sample_subset, dataset_images, parent_name, tempdir, walk_files,
};

/// The target on `Test/`.
const TARGET_TOP1: f64 = 0.97;

pub(crate) struct Trained {
    /// Holds classifier.json (kept for the whole test process).
    dir: tempfile::TempDir,
    output: RunOutput,
}

impl Trained {
    pub(crate) fn model(&self) -> &Path {
        self.dir.path()
    }
}

/// `verger train` once over the sample run, shared by the tests below.
pub(crate) static TRAINED: LazyLock<Trained> = LazyLock::new(|| {
    let dir = tempdir();
    let output = train(&sample_run().out, dir.path()).exec().assert_success();
    eprintln!("classifier: {} in {:.1?}", output.command, output.elapsed);
    Trained { dir, output }
});

pub(crate) fn train(features: &Path, out: &Path) -> Verger {
    Verger::new()
        .arg("train")
        .arg("--features")
        .arg(features)
        .arg("--out")
        .arg(out)
}

pub(crate) fn evaluate(model: &Path, features: &Path, out: &Path) -> Verger {
    Verger::new()
        .arg("evaluate")
        .arg("--classifier")
        .arg(model)
        .arg("--features")
        .arg(features)
        .arg("--out")
        .arg(out)
}

/// Sample images under `split/` (…/<split>/<label>/x.jpg).
fn split_images(split: &str) -> Vec<PathBuf> {
    dataset_images()
        .into_iter()
        .filter(|p| {
            p.parent()
                .and_then(Path::parent)
                .and_then(Path::file_name)
                .is_some_and(|n| n == split)
        })
        .collect()
}

fn labels_of(images: &[PathBuf]) -> Vec<String> {
    let labels: BTreeSet<String> = images
        .iter()
        .map(|p| parent_name(&p.to_string_lossy()).to_string())
        .collect();
    labels.into_iter().collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .expect("an array")
        .iter()
        .map(|v| v.as_str().expect("a string").to_string())
        .collect()
}

#[test]
fn classifier_json_records_labels_feature_model_and_training() {
    let trained = &*TRAINED;
    let model = read_json(&trained.model().join("classifier.json"));
    let run = read_json(&sample_run().out.join("run.json"));
    let training_images = split_images("Training");
    assert_eq!(model["format"], "verger-classifier");
    assert_eq!(model["version"], 2);
    assert_eq!(model["feature_model_sha256"], run["model"]["sha256"]);
    assert_eq!(model["feature_dim"], FEATURE_DIM);
    let labels = strings(&model["labels"]);
    assert_eq!(
        labels,
        labels_of(&training_images),
        "sorted labels of Training/"
    );
    assert_eq!(labels.len(), 24);
    let weights = model["weights"].as_array().unwrap();
    assert_eq!(weights.len(), labels.len());
    assert!(
        weights
            .iter()
            .all(|row| row.as_array().unwrap().len() == FEATURE_DIM)
    );
    assert_eq!(model["bias"].as_array().unwrap().len(), labels.len());
    for part in ["mean", "std"] {
        assert_eq!(
            model["standardize"][part].as_array().unwrap().len(),
            FEATURE_DIM
        );
    }
    let training = &model["training"];
    assert_eq!(training["images"], training_images.len());
    assert_eq!(training["split"], "Training");
    assert!(
        training["train_accuracy"].as_f64().unwrap() >= 0.99,
        "{training}"
    );
    // The summary line names what was done.
    let line = trained.output.stdout.trim();
    assert!(
        line.contains(&format!(
            "trained on {} Training images",
            training_images.len()
        )) && line.contains("24 labels")
            && line.contains("classifier.json"),
        "{line}"
    );
}

#[test]
fn evaluate_on_test_reaches_the_target_and_writes_evaluation_json() {
    let trained = &*TRAINED;
    let out = tempdir();
    let file = out.path().join("eval/evaluation.json");
    let output = evaluate(trained.model(), &sample_run().out, &file)
        .exec()
        .assert_success();
    eprintln!("{}", output.stdout);
    let evaluation = read_json(&file);
    let test_images = split_images("Test");
    let n = test_images.len();
    assert_eq!(evaluation["format"], "verger-evaluation");
    assert_eq!(evaluation["version"], 2);
    assert_eq!(evaluation["split"], "Test");
    assert_eq!(evaluation["images"], n);

    let top1 = evaluation["top1"].as_f64().unwrap();
    let top5 = evaluation["top5"].as_f64().unwrap();
    assert!(
        top1 >= TARGET_TOP1,
        "top-1 {top1} < {TARGET_TOP1}\n{}",
        output.stdout
    );
    assert!(top5 >= top1 && top5 <= 1.0, "top-5 {top5}, top-1 {top1}");
    let knn = &evaluation["knn_baseline"];
    assert_eq!(knn["k"], 5);
    let knn_top1 = knn["top1"].as_f64().unwrap();
    assert!((0.5..=1.0).contains(&knn_top1), "kNN top-1 {knn_top1}");

    let labels = strings(&evaluation["labels"]);
    let model = read_json(&trained.model().join("classifier.json"));
    assert_eq!(labels, strings(&model["labels"]), "the classifier's labels");
    assert_eq!(labels, labels_of(&test_images));

    let confusion: Vec<Vec<u64>> = serde_json::from_value(evaluation["confusion"].clone()).unwrap();
    assert_eq!(confusion.len(), labels.len());
    assert!(confusion.iter().all(|row| row.len() == labels.len()));
    let total: u64 = confusion.iter().flatten().sum();
    assert_eq!(
        total, n as u64,
        "the confusion matrix counts every Test image once"
    );
    let diagonal: u64 = (0..labels.len()).map(|i| confusion[i][i]).sum();
    assert!(
        (diagonal as f64 / n as f64 - top1).abs() < 1e-9,
        "top-1 is the diagonal"
    );

    let per_class = evaluation["per_class"].as_array().unwrap();
    assert_eq!(per_class.len(), labels.len());
    for (i, class) in per_class.iter().enumerate() {
        assert_eq!(class["label"], labels[i].as_str());
        let support = confusion[i].iter().sum::<u64>();
        assert_eq!(class["support"], support);
        assert_eq!(support, 20, "20 Test images of {}", labels[i]);
        let recall = class["recall"].as_f64().unwrap();
        assert!((recall - confusion[i][i] as f64 / support as f64).abs() < 1e-9);
        let precision = class["precision"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&precision));
    }

    // A readable table, then a summary line.
    assert!(output.stdout.contains("precision") && output.stdout.contains("recall"));
    assert!(output.stdout.contains("Apple Braeburn"));
    let last = output.last_lines()[0];
    assert!(
        last.contains(&format!("{n} Test images"))
            && last.contains("top-1")
            && last.contains("kNN"),
        "{last}"
    );
}

/// Copies the parts of a run output that `evaluate`/`train` read.
fn copy_output(from: &Path, to: &Path, with_success: bool) {
    for file in walk_files(from) {
        let relative = file.strip_prefix(from).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        if first != "features" && first != "run.json" && first != "_SUCCESS" {
            continue;
        }
        if first == "_SUCCESS" && !with_success {
            continue;
        }
        let dest = to.join(relative);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&file, &dest).unwrap();
    }
}

#[test]
fn features_of_another_feature_model_are_refused_naming_both() {
    let trained = &*TRAINED;
    let other = tempdir();
    copy_output(&sample_run().out, other.path(), true);
    let run_file = other.path().join("run.json");
    let mut run = read_json(&run_file);
    let ours = run["model"]["sha256"].as_str().unwrap().to_string();
    let theirs = "abcdef0123456789".repeat(4);
    run["model"]["sha256"] = theirs.clone().into();
    std::fs::write(&run_file, serde_json::to_vec(&run).unwrap()).unwrap();

    let file = other.path().join("evaluation.json");
    let output = evaluate(trained.model(), other.path(), &file)
        .exec()
        .assert_failure();
    let err = output.stderr;
    assert!(
        err.contains(&ours[..12]) && err.contains(&theirs[..12]),
        "both sha256 prefixes named: {err}"
    );
    assert!(err.contains("feature model"), "{err}");
    assert!(!file.exists(), "nothing written for refused features");
}

#[test]
fn train_refuses_an_unfinished_output() {
    let partial = tempdir();
    copy_output(&sample_run().out, partial.path(), false);
    let model = tempdir();
    let output = train(partial.path(), model.path()).exec().assert_failure();
    assert!(
        output.stderr.contains("no _SUCCESS")
            && output
                .stderr
                .contains(&partial.path().display().to_string()),
        "{}",
        output.stderr
    );
    assert!(!model.path().join("classifier.json").exists());
}

#[test]
fn train_without_training_images_fails_clearly() {
    let model = tempdir();
    let output = train(&sample_run().out, model.path())
        .args(["--train-split", "Validation"])
        .exec()
        .assert_failure();
    assert!(
        output
            .stderr
            .contains("no images under a folder named \"Validation\""),
        "{}",
        output.stderr
    );
    assert!(!model.path().join("classifier.json").exists());
}

#[test]
fn train_on_a_single_label_fails_clearly() {
    // A real run over three Banana images: …/Training/Banana/x.jpg.
    let work = tempdir();
    copy_sample_subset(&work.path().join("in/Training"), "Training", &["Banana"], 3);
    let out = work.path().join("out");
    Verger::run(work.path().join("in"), &out)
        .exec()
        .assert_success();
    let output = train(&out, &work.path().join("model"))
        .exec()
        .assert_failure();
    assert!(
        output
            .stderr
            .contains("1 fruit label(s) (Banana); a classifier needs at least 2"),
        "{}",
        output.stderr
    );
}
