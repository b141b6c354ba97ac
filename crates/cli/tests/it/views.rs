//! Views (issue 14): `verger run --views training` writes one marked row
//! per crop and mirror of each photo to `views/`, `verger train` fits on
//! them and records the views it averages, `verger evaluate` and
//! `verger serve` average those same views, on real grocery photos.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use crate::serve::Server;
use crate::support::output::{RunDir, ViewRow, read_json, read_views};
use crate::support::{Verger, cosine, read_dir_sorted, shared_dir, tempdir};

const FRUIT: [&str; 3] = ["Banana", "Lime", "Orange"];
const TRAIN_PER_LABEL: usize = 6;
const VALIDATION_PER_LABEL: usize = 2;
const NEGATIVES: usize = 4;

/// The 12 views `verger serve` averages, as `verger_image` names them.
fn serving_views() -> Vec<String> {
    verger_image::views::ViewSet::Serving.names()
}

struct Trained {
    work: tempfile::TempDir,
    /// One unreadable "photo" among the training ones.
    broken: String,
}

impl Trained {
    fn input(&self) -> PathBuf {
        self.work.path().join("in")
    }
    fn out(&self) -> PathBuf {
        self.work.path().join("out")
    }
    fn model(&self) -> PathBuf {
        self.work.path().join("model")
    }
}

fn copy_first(folder: &str, split: &str, label: &str, n: usize, to: &Path) {
    let from = shared_dir()
        .join("datasets/grocery-photos")
        .join(folder)
        .join(split)
        .join(label);
    let dir = to.join(folder).join(split).join(label);
    std::fs::create_dir_all(&dir).unwrap();
    for photo in read_dir_sorted(&from).into_iter().take(n) {
        std::fs::copy(&photo, dir.join(photo.file_name().unwrap())).unwrap();
    }
}

static TRAINED: LazyLock<Trained> = LazyLock::new(|| {
    let work = tempdir();
    let input = work.path().join("in");
    for label in FRUIT {
        copy_first("fruit", "Training", label, TRAIN_PER_LABEL, &input);
        copy_first("fruit", "Validation", label, VALIDATION_PER_LABEL, &input);
    }
    copy_first("other", "Training", "Carrots", NEGATIVES, &input);
    let broken = input.join("fruit/Training/Lime/broken.jpg");
    std::fs::write(&broken, b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    let trained = Trained {
        work,
        broken: broken.display().to_string(),
    };
    Verger::run(&input, trained.out())
        .args(["--views", "training", "--batch-size", "5"])
        .exec()
        .assert_success();
    let output = Verger::new()
        .arg("train")
        .arg("--features")
        .arg(trained.out())
        .arg("--out")
        .arg(trained.model())
        .args(["--negatives", "other"])
        .exec()
        .assert_success();
    assert!(output.stdout.contains("view rows"), "{}", output.stdout);
    trained
});

/// `views/` rows grouped by photo path.
fn views_by_path(out: &Path) -> BTreeMap<String, Vec<ViewRow>> {
    let mut by_path: BTreeMap<String, Vec<ViewRow>> = BTreeMap::new();
    for row in read_views(&out.join("views")) {
        by_path.entry(row.path.clone()).or_default().push(row);
    }
    by_path
}

#[test]
fn a_views_run_writes_every_view_of_every_photo_as_marked_rows() {
    let run = RunDir::read(&TRAINED.out());
    let names: Vec<String> = run.run_json["job"]["views"]
        .as_array()
        .expect("run.json job.views")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, verger_image::views::ViewSet::Training.names());
    assert_eq!(names.len(), 22);
    let photos = FRUIT.len() * (TRAIN_PER_LABEL + VALIDATION_PER_LABEL) + NEGATIVES;
    assert_eq!(
        run.features.len(),
        photos,
        "features/ keeps one row per photo"
    );
    assert_eq!(run.run_json["counts"]["views"], 22 * photos);
    assert_eq!(run.errors.len(), 1);
    assert_eq!(run.errors[0].path, TRAINED.broken);

    let by_path = views_by_path(&TRAINED.out());
    assert_eq!(by_path.len(), photos, "a failed image has no view rows");
    assert!(!by_path.contains_key(&TRAINED.broken));
    for row in &run.features {
        let views = &by_path[&row.path];
        let mut seen: Vec<String> = views.iter().map(|v| v.view.clone()).collect();
        seen.sort();
        let mut expected = names.clone();
        expected.sort();
        assert_eq!(seen, expected, "{}", row.path);
        assert!(views.iter().all(|v| v.label == row.label));
        let full = views.iter().find(|v| v.view == "full").unwrap();
        assert_eq!(
            full.features, row.features,
            "{}: the whole-photo view is the features/ row",
            row.path
        );
        let mirrored = views.iter().find(|v| v.view == "full-m").unwrap();
        let crop = views.iter().find(|v| v.view == "tl0.5").unwrap();
        for other in [mirrored, crop] {
            let c = cosine(&other.features, &row.features);
            assert!(
                c > 0.3 && c < 0.9999,
                "{} {}: cosine {c} to the whole photo",
                row.path,
                other.view
            );
        }
    }
}

#[test]
fn train_fits_on_view_rows_and_records_the_views_it_averages() {
    let model = read_json(&TRAINED.model().join("classifier.json"));
    let averaged: Vec<String> = model["views"]
        .as_array()
        .expect("classifier.json views")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(averaged, serving_views());
    let photos = FRUIT.len() * TRAIN_PER_LABEL + NEGATIVES;
    assert_eq!(model["training"]["images"], photos);
    assert_eq!(model["training"]["view_rows"], 22 * photos);
}

#[test]
fn evaluate_averages_the_views_and_refuses_a_run_without_them() {
    let eval = TRAINED.work.path().join("evaluation.json");
    Verger::new()
        .arg("evaluate")
        .arg("--classifier")
        .arg(TRAINED.model())
        .arg("--features")
        .arg(TRAINED.out())
        .args(["--test-split", "Validation"])
        .arg("--out")
        .arg(&eval)
        .exec()
        .assert_success();
    let evaluation = read_json(&eval);
    assert_eq!(evaluation["images"], FRUIT.len() * VALIDATION_PER_LABEL);
    let top1 = evaluation["top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1), "{top1}");

    let plain = TRAINED.work.path().join("plain");
    Verger::run(TRAINED.input().join("fruit/Validation"), &plain)
        .exec()
        .assert_success();
    let refused = Verger::new()
        .arg("evaluate")
        .arg("--classifier")
        .arg(TRAINED.model())
        .arg("--features")
        .arg(&plain)
        .args(["--test-split", "Validation"])
        .exec();
    assert!(!refused.status.success());
    assert!(
        refused.stderr.contains("--views serving"),
        "{}",
        refused.stderr
    );
}

#[test]
fn serve_answers_from_the_mean_of_the_serving_views() {
    let classifier = verger_classifier::Classifier::load(&TRAINED.model()).unwrap();
    let by_path = views_by_path(&TRAINED.out());
    let server = Server::start_with(&TRAINED.model(), &[]);
    for label in FRUIT {
        let photo = read_dir_sorted(&TRAINED.input().join("fruit/Validation").join(label))
            .remove(0)
            .display()
            .to_string();
        let views = &by_path[&photo];
        let mut mean = vec![0.0f32; 1280];
        for name in serving_views() {
            let view = views.iter().find(|v| v.view == name).unwrap();
            for (m, x) in mean.iter_mut().zip(&view.features) {
                *m += x / 12.0;
            }
        }
        let expected = classifier.probabilities(&mean).unwrap();
        let best = expected.iter().cloned().fold(0.0f32, f32::max);
        let r = server.post("image/jpeg", &std::fs::read(&photo).unwrap());
        assert_eq!(r.status, 200, "{}", r.text);
        let served = r.json["top5"][0]["confidence"].as_f64().unwrap();
        assert!(
            (served - f64::from(best)).abs() < 2e-3,
            "{photo}: served {served}, the mean of the run's serving views gives {best}"
        );
    }
}
