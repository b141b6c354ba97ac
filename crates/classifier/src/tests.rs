//! Unit tests: learning, the saved format, the feature-model rule.

use super::*;

const SHA_A: &str = "61a28d70298ef318cc53284e57bcd605e474f0a060a17478781df7cea2e270f3";
const SHA_B: &str = "0000000000000000000000000000000000000000000000000000000000000001";

/// A tiny deterministic generator (xorshift), values in [-0.5, 0.5).
struct Noise(u64);
impl Noise {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % 10_000) as f32 / 10_000.0 - 0.5
    }
}

/// `per_label` rows around each of `labels` random centres in `dim`
/// dimensions, with noise `spread`; paths under `split/`.
fn blobs(
    labels: &[&str],
    per_label: usize,
    dim: usize,
    spread: f32,
    seed: u64,
    split: &str,
) -> FeatureTable {
    let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
    let centres: Vec<Vec<f32>> = labels
        .iter()
        .map(|_| (0..dim).map(|_| 4.0 * noise.next()).collect())
        .collect();
    let mut noise = Noise(seed);
    let mut table = FeatureTable {
        location: "/synthetic".into(),
        model_sha256: SHA_A.into(),
        dim,
        ..FeatureTable::default()
    };
    for i in 0..per_label {
        for (label, centre) in labels.iter().zip(&centres) {
            table.paths.push(format!("/data/{split}/{label}/{i}.jpg"));
            table.labels.push(label.to_string());
            // A constant dimension (std 0) and a shifted, scaled one, to exercise standardisation.
            table
                .features
                .extend(centre.iter().enumerate().map(|(j, c)| match j {
                    0 => 7.0,
                    1 => 1000.0 + 50.0 * (c + spread * noise.next()),
                    _ => c + spread * noise.next(),
                }));
        }
    }
    table
}

fn small_classifier() -> Classifier {
    let table = blobs(&["apple", "banana", "cherry"], 20, 8, 0.5, 1, "Training");
    train(&table, &TrainConfig::default()).expect("trains")
}

#[test]
fn separable_blobs_are_learned_and_held_out_rows_classified() {
    let labels = ["apple", "banana", "cherry", "kiwi", "lemon"];
    let training = blobs(&labels, 30, 16, 1.0, 1, "Training");
    let test = blobs(&labels, 10, 16, 1.0, 2, "Test");
    let classifier = train(&training, &TrainConfig::default()).unwrap();
    assert_eq!(classifier.labels(), labels);
    assert_eq!(classifier.feature_dim(), 16);
    assert_eq!(classifier.training().images, 150);
    assert!(
        classifier.training().train_accuracy >= 0.99,
        "{:?}",
        classifier.training()
    );
    let evaluation = evaluate(&classifier, &test, "Test", Some((&training, 5))).unwrap();
    assert_eq!(evaluation.images, 50);
    assert!(evaluation.top1 >= 0.96, "{}", evaluation.summary());
    assert!(evaluation.top5 >= evaluation.top1);
    assert!(evaluation.knn_baseline.as_ref().unwrap().top1 >= 0.9);
    let total: u64 = evaluation.confusion.iter().flatten().sum();
    assert_eq!(total, 50);
    assert_eq!(
        evaluation.per_class.iter().map(|c| c.support).sum::<u64>(),
        50
    );
}

#[test]
fn probabilities_are_distributions_and_top_k_is_ordered() {
    let classifier = small_classifier();
    let table = blobs(&["apple", "banana", "cherry"], 2, 8, 0.5, 3, "Test");
    let probs = classifier.probabilities(&table.features).unwrap();
    assert_eq!(probs.len(), table.len() * 3);
    for row in probs.chunks(3) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
        assert!(row.iter().all(|p| (0.0..=1.0).contains(p)));
    }
    let top = classifier.top_k(&table.features, 5).unwrap();
    assert_eq!(top.len(), table.len());
    for (i, ranking) in top.iter().enumerate() {
        assert_eq!(ranking.len(), 3, "k is capped at the number of labels");
        assert!(ranking.windows(2).all(|w| w[0].1 >= w[1].1));
        assert_eq!(classifier.labels()[ranking[0].0], table.labels[i]);
    }
    assert!(classifier.probabilities(&[]).unwrap().is_empty());
}

#[test]
fn rows_of_the_wrong_width_or_not_finite_are_refused() {
    let classifier = small_classifier();
    let err = classifier.probabilities(&[0.0; 9]).unwrap_err();
    assert!(
        err.to_string()
            .contains("9 values is not a whole number of 8-d rows"),
        "{err}"
    );
    let mut row = [0.0f32; 8];
    row[3] = f32::NAN;
    assert!(
        classifier
            .top_k(&row, 1)
            .unwrap_err()
            .to_string()
            .contains("non-finite")
    );
}

#[test]
fn save_and_load_round_trip() {
    let classifier = small_classifier();
    let dir = tempfile::tempdir().unwrap();
    classifier.save(dir.path()).unwrap();
    let loaded = Classifier::load(dir.path()).unwrap();
    assert_eq!(loaded, classifier);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(MODEL_FILE)).unwrap()).unwrap();
    assert_eq!(json["format"], "verger-classifier");
    assert_eq!(json["version"], 1);
    assert_eq!(json["feature_dim"], 8);
    assert_eq!(json["weights"].as_array().unwrap().len(), 3);
    assert_eq!(json["weights"][0].as_array().unwrap().len(), 8);
    assert_eq!(
        json["standardize"]["std"][0], 1.0,
        "a constant dimension keeps std 1"
    );
    assert_eq!(json["training"]["split"], "Training");
}

/// `classifier.json` of `small_classifier`, edited by `edit`, loaded.
fn load_edited(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut json: serde_json::Value =
        serde_json::from_slice(&small_classifier().to_json()).unwrap();
    edit(&mut json);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(MODEL_FILE),
        serde_json::to_vec(&json).unwrap(),
    )
    .unwrap();
    let err = Classifier::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("classifier.json"),
        "the error names the file: {err}"
    );
    err
}

#[test]
fn another_version_or_format_is_refused() {
    let err = load_edited(|j| j["version"] = 2.into());
    assert!(err.contains("version 2 is not supported"), "{err}");
    let err = load_edited(|j| j["format"] = "onnx".into());
    assert!(err.contains("format is \"onnx\""), "{err}");
    let err = load_edited(|j| {
        j.as_object_mut().unwrap().remove("format");
    });
    assert!(err.contains("no \"format\""), "{err}");
}

#[test]
fn inconsistent_shapes_are_refused() {
    let err = load_edited(|j| j["bias"].as_array_mut().unwrap().push(0.0.into()));
    assert!(err.contains("bias has 4 values, expected 3"), "{err}");
    let err = load_edited(|j| {
        j["weights"][1]
            .as_array_mut()
            .unwrap()
            .pop()
            .map(drop)
            .unwrap()
    });
    assert!(err.contains("weights row 1 (banana) has 7 values"), "{err}");
    let err = load_edited(|j| j["feature_dim"] = 9.into());
    assert!(
        err.contains("standardize.mean has 8 values, expected 9"),
        "{err}"
    );
    let err = load_edited(|j| j["labels"] = serde_json::json!(["banana", "apple", "cherry"]));
    assert!(err.contains("not sorted"), "{err}");
    let err = load_edited(|j| j["standardize"]["std"][2] = 0.0.into());
    assert!(err.contains("must be > 0"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let err = Classifier::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("cannot read") && err.contains("classifier.json"),
        "{err}"
    );
}

#[test]
fn another_feature_model_is_refused_naming_both() {
    let classifier = small_classifier();
    classifier.check_feature_model(SHA_A).unwrap();
    classifier
        .check_feature_model(&SHA_A.to_uppercase())
        .unwrap();
    let err = classifier
        .check_feature_model(SHA_B)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&SHA_A[..12]) && err.contains(&SHA_B[..12]),
        "{err}"
    );
    let mut test = blobs(&["apple", "banana", "cherry"], 2, 8, 0.5, 3, "Test");
    test.model_sha256 = SHA_B.into();
    let err = evaluate(&classifier, &test, "Test", None)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&SHA_B[..12]), "{err}");
}

#[test]
fn training_needs_two_labels_and_some_images() {
    let one = blobs(&["apple"], 10, 4, 0.5, 1, "Training");
    let err = train(&one, &TrainConfig::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("1 label(s) (apple); a classifier needs at least 2"),
        "{err}"
    );
    let none = blobs(&["apple", "banana"], 10, 4, 0.5, 1, "Training").split("Nope");
    let err = train(&none, &TrainConfig::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no images under a folder named \"Training\""),
        "{err}"
    );
}

#[test]
fn splits_are_folder_components_not_substrings() {
    assert!(in_split("/d/fruits/Training/Apple/1.jpg", "Training"));
    assert!(in_split("s3://b/p/Test/Apple/1.jpg", "Test"));
    assert!(!in_split("/d/TrainingSet/Apple/1.jpg", "Training"));
    assert!(
        !in_split("/d/Apple/Training", "Training"),
        "the file name is not a folder"
    );
}

#[test]
fn training_is_repeatable() {
    let a = small_classifier();
    let b = small_classifier();
    let strip = |c: &Classifier| {
        let mut j: serde_json::Value = serde_json::from_slice(&c.to_json()).unwrap();
        j.as_object_mut().unwrap().remove("training");
        j
    };
    assert_eq!(strip(&a), strip(&b));
}
