//! Saying "I don't know" (issue 14) on real grocery photos: a small run
//! over three fruit labels and three kinds of negatives (vegetables and a
//! carton), `verger train --negatives other`, then `verger evaluate` and
//! `verger serve` on photos the classifier never saw.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use serde_json::Value;

use crate::serve::Server;
use crate::support::output::read_json;
use crate::support::{Verger, read_dir_sorted, shared_dir, tempdir};

const FRUIT: [&str; 3] = ["Banana", "Kiwi", "Lemon"];
const NEGATIVES: [&str; 3] = ["Carrots", "Milk Arla-Standard-Milk", "Potato Floury-Potato"];
/// Photos per label copied for training; the next ones stay unseen.
const PER_LABEL: usize = 12;
const NEGATIVES_PER_LABEL: usize = 6;

struct Grocery {
    work: tempfile::TempDir,
}

impl Grocery {
    fn model(&self) -> PathBuf {
        self.work.path().join("model")
    }
    fn out(&self) -> PathBuf {
        self.work.path().join("out")
    }
}

fn grocery() -> PathBuf {
    shared_dir().join("datasets/grocery-photos")
}

/// Sorted photos of `folder/split/label`.
fn photos(folder: &str, split: &str, label: &str) -> Vec<PathBuf> {
    read_dir_sorted(&grocery().join(folder).join(split).join(label))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect()
}

fn copy_first(folder: &str, split: &str, label: &str, n: usize, to: &Path) {
    let dir = to.join(folder).join(split).join(label);
    std::fs::create_dir_all(&dir).unwrap();
    for photo in photos(folder, split, label).into_iter().take(n) {
        std::fs::copy(&photo, dir.join(photo.file_name().unwrap())).unwrap();
    }
}

/// One run, one classifier trained with negatives, shared by the tests.
static TRAINED: LazyLock<Grocery> = LazyLock::new(|| {
    let work = tempdir();
    let input = work.path().join("in");
    for label in FRUIT {
        copy_first("fruit", "Training", label, PER_LABEL, &input);
        copy_first("fruit", "Validation", label, 3, &input);
    }
    for label in NEGATIVES {
        copy_first("other", "Training", label, NEGATIVES_PER_LABEL, &input);
    }
    let grocery = Grocery { work };
    Verger::run(&input, grocery.out()).exec().assert_success();
    let output = Verger::new()
        .arg("train")
        .arg("--features")
        .arg(grocery.out())
        .arg("--out")
        .arg(grocery.model())
        .args(["--negatives", "other"])
        .exec()
        .assert_success();
    assert!(output.stdout.contains("not_a_fruit"), "{}", output.stdout);
    grocery
});

#[test]
fn classifier_json_records_the_operating_point_and_never_a_negative_label() {
    let model = read_json(&TRAINED.model().join("classifier.json"));
    assert_eq!(model["version"], 2);
    assert_eq!(
        model["labels"],
        serde_json::json!(FRUIT),
        "fruit labels only"
    );
    assert_eq!(model["weights"].as_array().unwrap().len(), FRUIT.len());
    let rejection = &model["rejection"];
    let point = &rejection["operating_point"];
    assert_eq!(point["answer_fraction"], 0.9, "{point}");
    assert_eq!(point["folds"], 5, "{point}");
    assert!(
        point["calibrated_on"]
            .as_str()
            .unwrap()
            .contains("scene-grouped")
    );
    for figure in ["oof_answered", "oof_accuracy_among_answered", "oof_top1"] {
        let v = point[figure].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{figure} = {v}");
    }
    let negatives = &rejection["negatives"];
    assert_eq!(negatives["class"], "__negative__");
    assert_eq!(negatives["folder"], "other");
    assert_eq!(
        negatives["training_photos"],
        NEGATIVES.len() * NEGATIVES_PER_LABEL
    );
    assert_eq!(negatives["weights"].as_array().unwrap().len(), 1280);
    let classes: Vec<u64> = (948..=957).collect();
    assert_eq!(
        rejection["fruit_mass"]["imagenet_classes"],
        serde_json::json!(classes)
    );
    assert_eq!(rejection["fruit_mass"]["pass_fraction"], 0.98);
    let gate = rejection["fruit_mass"]["threshold"].as_f64().unwrap();
    assert!(gate > 0.0 && gate < 1.0, "{gate}");
    let threshold = rejection["max_softmax"]["threshold"].as_f64().unwrap();
    assert!((1.0 / 3.0..=1.0).contains(&threshold), "{threshold}");
}

#[test]
fn a_lower_answer_fraction_raises_the_threshold() {
    let model = tempdir();
    Verger::new()
        .arg("train")
        .arg("--features")
        .arg(TRAINED.out())
        .arg("--out")
        .arg(model.path())
        .args(["--answer-fraction", "0.5"])
        .exec()
        .assert_success();
    let strict = read_json(&model.path().join("classifier.json"));
    let default = read_json(&TRAINED.model().join("classifier.json"));
    assert_eq!(
        strict["rejection"]["operating_point"]["answer_fraction"],
        0.5
    );
    // Without --negatives there is no negatives class: the other/Training
    // photos are in the Training split, so their folders are labels too.
    assert!(
        strict["rejection"]["negatives"].is_null(),
        "{}",
        strict["rejection"]
    );
    let t = |m: &Value| m["rejection"]["max_softmax"]["threshold"].as_f64().unwrap();
    assert!(
        t(&strict) > t(&default),
        "{} vs {}",
        t(&strict),
        t(&default)
    );
    let labels = strict["labels"].as_array().unwrap();
    assert_eq!(labels.len(), FRUIT.len() + NEGATIVES.len(), "{labels:?}");
    assert!(labels.iter().all(|l| l != "__negative__"), "{labels:?}");
}

#[test]
fn evaluate_reports_answered_rate_rejections_and_risk_coverage() {
    let file = TRAINED.work.path().join("evaluation.json");
    let output = Verger::new()
        .arg("evaluate")
        .arg("--classifier")
        .arg(TRAINED.model())
        .arg("--features")
        .arg(TRAINED.out())
        .args([
            "--test-split",
            "Validation",
            "--not-fruit",
            "other",
            "--out",
        ])
        .arg(&file)
        .exec()
        .assert_success();
    let evaluation = read_json(&file);
    assert_eq!(evaluation["version"], 2);
    assert_eq!(evaluation["images"], 3 * FRUIT.len(), "{}", output.stdout);
    let open = &evaluation["open_set"];
    let answered = open["answered"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&answered), "{open}");
    let not_known = &open["not_known"];
    assert_eq!(
        not_known["images"],
        NEGATIVES.len() * NEGATIVES_PER_LABEL,
        "{open}"
    );
    let curve = open["risk_coverage"].as_array().unwrap();
    assert!(!curve.is_empty(), "{open}");
    let coverage: Vec<f64> = curve
        .iter()
        .map(|p| p["answered"].as_f64().unwrap())
        .collect();
    assert!(coverage.windows(2).all(|w| w[0] <= w[1]), "{coverage:?}");
    let thresholds: Vec<f64> = curve
        .iter()
        .map(|p| p["max_softmax_threshold"].as_f64().unwrap())
        .collect();
    assert!(
        thresholds.windows(2).all(|w| w[0] >= w[1]),
        "{thresholds:?}"
    );
    assert!(
        output.stdout.contains("with rejection"),
        "{}",
        output.stdout
    );
    check_examples(&evaluation["examples"]);

    // The report draws the curve and shows the example photos.
    let report = TRAINED.work.path().join("report");
    Verger::new()
        .args(["report", "--input"])
        .arg(TRAINED.out())
        .arg("--out")
        .arg(&report)
        .arg("--evaluation")
        .arg(&file)
        .exec()
        .assert_success();
    let curve = image::open(report.join("risk_coverage.png")).unwrap();
    assert!(curve.width() > 300 && curve.height() > 200);
    let page = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(page.contains("I don't know"), "the open-set section");
    assert!(page.contains("<img src=\"risk_coverage.png\""));
    let examples = &evaluation["examples"];
    let mut paths: Vec<&str> = ["confused", "rejected", "wrongly_answered"]
        .iter()
        .flat_map(|group| examples[group].as_array().unwrap())
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    paths.sort();
    paths.dedup();
    assert!(!paths.is_empty(), "{examples}");
    let thumbnails = read_dir_sorted(&report.join("examples"));
    assert_eq!(
        thumbnails.len(),
        paths.len(),
        "one thumbnail per example photo"
    );
    for (i, thumbnail) in thumbnails.iter().enumerate() {
        let picture = image::open(thumbnail).unwrap();
        assert!(picture.width().max(picture.height()) <= 112);
        assert!(page.contains(&format!("<img src=\"examples/{i:03}.png\"")));
    }
}

/// `examples` name real photos of the run, each in the group it belongs to.
fn check_examples(examples: &Value) {
    for (group, rejected) in [
        ("confused", None),
        ("rejected", Some(true)),
        ("wrongly_answered", Some(false)),
    ] {
        for e in examples[group].as_array().unwrap() {
            let path = e["path"].as_str().unwrap();
            assert!(Path::new(path).is_file(), "{group}: {path}");
            assert!(
                path.contains(&format!("/{}/", e["label"].as_str().unwrap())),
                "{e}"
            );
            match rejected {
                None => assert_ne!(e["label"], e["predicted"], "{e}"),
                Some(true) => assert!(e["rejected_by"].is_string(), "{e}"),
                Some(false) => {
                    assert!(e["rejected_by"].is_null(), "{e}");
                    assert!(path.contains("/other/"), "{e}");
                }
            }
        }
    }
}

#[test]
fn serve_says_not_a_fruit_for_unseen_negatives_and_a_graphic() {
    let server = Server::start_with(&TRAINED.model(), &[]);
    // A carton and carrots the classifier never saw (past the copied ones).
    for label in ["Milk Arla-Standard-Milk", "Carrots"] {
        let photo = &photos("other", "Training", label)[NEGATIVES_PER_LABEL + 1];
        let r = server.post("image/jpeg", &std::fs::read(photo).unwrap());
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.json["label"].is_null(), "{}: {}", photo.display(), r.text);
        assert_eq!(r.json["rejected"], "not_a_fruit", "{}", r.text);
        assert!(r.json["info"].is_null(), "{}", r.text);
        check_top5(&r.json);
    }
    // Not a photo at all: a black-and-white checkerboard.
    let board = image::RgbImage::from_fn(256, 256, |x, y| {
        if (x / 32 + y / 32) % 2 == 0 {
            image::Rgb([0, 0, 0])
        } else {
            image::Rgb([255; 3])
        }
    });
    let mut png = Vec::new();
    board
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let r = server.post("image/png", &png);
    assert!(r.json["label"].is_null(), "{}", r.text);
    assert_eq!(r.json["rejected"], "not_a_fruit", "{}", r.text);
    assert_eq!(r.json["rejected_by"], "fruit_mass", "{}", r.text);
    // Unseen fruit: ranked fruit candidates, an answer or a reason, never the negatives class.
    for label in FRUIT {
        let photo = &photos("fruit", "Validation", label)[4];
        let r = server.post("image/jpeg", &std::fs::read(photo).unwrap());
        assert_eq!(r.status, 200, "{}", r.text);
        check_top5(&r.json);
        match r.json["label"].as_str() {
            Some(answer) => assert!(FRUIT.contains(&answer), "{}", r.text),
            None => assert!(r.json["rejected"].is_string(), "{}", r.text),
        }
    }
}

/// `top5` is there, ranked, and names fruit labels only.
fn check_top5(answer: &Value) {
    let top5 = answer["top5"].as_array().unwrap();
    assert_eq!(top5.len(), FRUIT.len(), "{answer}");
    let confidences: Vec<f64> = top5
        .iter()
        .map(|e| e["confidence"].as_f64().unwrap())
        .collect();
    assert!(confidences.windows(2).all(|w| w[0] >= w[1]), "{answer}");
    assert!(
        top5.iter()
            .all(|e| FRUIT.contains(&e["label"].as_str().unwrap())),
        "{answer}"
    );
    assert_eq!(answer["confidence"], top5[0]["confidence"], "{answer}");
}
