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

/// Every synthetic row passes the fruit-mass gate alike.
const FRUIT_MASS: f32 = 0.5;

fn fit(table: &FeatureTable, config: &TrainConfig) -> Result<Classifier, ClassifierError> {
    train(table, &vec![FRUIT_MASS; table.len()], config)
}

fn test_masses(table: &FeatureTable) -> Vec<f32> {
    vec![FRUIT_MASS; table.len()]
}

fn small_classifier() -> Classifier {
    let table = blobs(&["apple", "banana", "cherry"], 20, 8, 0.5, 1, "Training");
    fit(&table, &TrainConfig::default()).expect("trains")
}

#[test]
fn separable_blobs_are_learned_and_held_out_rows_classified() {
    let labels = ["apple", "banana", "cherry", "kiwi", "lemon"];
    let training = blobs(&labels, 30, 16, 1.0, 1, "Training");
    let test = blobs(&labels, 10, 16, 1.0, 2, "Test");
    let classifier = fit(&training, &TrainConfig::default()).unwrap();
    assert_eq!(classifier.labels(), labels);
    assert_eq!(classifier.feature_dim(), 16);
    assert_eq!(classifier.training().images, 150);
    assert!(
        classifier.training().train_accuracy >= 0.99,
        "{:?}",
        classifier.training()
    );
    let evaluation = evaluate(
        &classifier,
        &test,
        "Test",
        Some((&training, 5)),
        &test_masses(&test),
        None,
    )
    .unwrap();
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
    assert_eq!(json["version"], 2);
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
    let err = load_edited(|j| j["version"] = 1.into());
    assert!(err.contains("version 1 is not supported"), "{err}");
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
    let err = evaluate(&classifier, &test, "Test", None, &test_masses(&test), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&SHA_B[..12]), "{err}");
}

#[test]
fn training_needs_two_labels_and_some_images() {
    let one = blobs(&["apple"], 10, 4, 0.5, 1, "Training");
    let err = fit(&one, &TrainConfig::default()).unwrap_err().to_string();
    assert!(
        err.contains("1 fruit label(s) (apple); a classifier needs at least 2"),
        "{err}"
    );
    let none = blobs(&["apple", "banana"], 10, 4, 0.5, 1, "Training").split("Nope");
    let err = fit(&none, &TrainConfig::default()).unwrap_err().to_string();
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

#[test]
fn rejection_fields_are_required_and_checked() {
    let err = load_edited(|j| {
        j.as_object_mut().unwrap().remove("rejection");
    });
    assert!(err.contains("missing field `rejection`"), "{err}");
    let err = load_edited(|j| {
        j["rejection"].as_object_mut().unwrap().remove("negatives");
    });
    assert!(err.contains("missing field `negatives`"), "{err}");
    let err = load_edited(|j| {
        j["rejection"]["max_softmax"]
            .as_object_mut()
            .unwrap()
            .remove("threshold");
    });
    assert!(err.contains("missing field `threshold`"), "{err}");
    let err = load_edited(|j| j["rejection"]["fruit_mass"]["threshold"] = 1.5.into());
    assert!(
        err.contains("rejection.fruit_mass.threshold is 1.5"),
        "{err}"
    );
}

#[test]
fn the_operating_point_is_calibrated_out_of_fold_and_recorded() {
    let labels = ["apple", "banana", "cherry"];
    // Overlapping blobs: out-of-fold confidences vary, so the threshold matters.
    let table = blobs(&labels, 40, 8, 6.0, 5, "Training");
    let config = TrainConfig {
        answer_fraction: 0.8,
        ..TrainConfig::default()
    };
    let classifier = fit(&table, &config).unwrap();
    let point = &classifier.rejection().operating_point;
    assert_eq!(point.answer_fraction, 0.8);
    assert_eq!(point.folds, 5);
    assert!(
        point.oof_answered >= 0.8 && point.oof_answered < 0.9,
        "{point:?}"
    );
    assert!(
        point.oof_accuracy_among_answered >= point.oof_top1,
        "{point:?}"
    );
    let threshold = classifier.rejection().max_softmax.threshold;
    assert!(threshold > 1.0 / 3.0 && threshold < 1.0, "{threshold}");
    // A stricter operating point has a higher threshold.
    let strict = TrainConfig {
        answer_fraction: 0.5,
        ..TrainConfig::default()
    };
    let strict = fit(&table, &strict).unwrap();
    assert!(strict.rejection().max_softmax.threshold > threshold);
    let json: serde_json::Value = serde_json::from_slice(&classifier.to_json()).unwrap();
    assert_eq!(json["rejection"]["operating_point"]["answer_fraction"], 0.8);
    assert!(json["rejection"]["negatives"].is_null());
}

#[test]
fn negatives_are_a_class_but_never_a_label() {
    let mut table = blobs(&["apple", "banana", "carrot"], 20, 8, 0.5, 1, "Training");
    for path in &mut table.paths {
        if path.contains("/carrot/") {
            *path = path.replace("/data/", "/data/other/");
        }
    }
    let config = TrainConfig {
        negatives: Some("other".into()),
        ..TrainConfig::default()
    };
    let classifier = fit(&table, &config).unwrap();
    assert_eq!(classifier.labels(), ["apple", "banana"]);
    let negatives = classifier.rejection().negatives.as_ref().unwrap();
    assert_eq!(
        (negatives.class.as_str(), negatives.training_photos),
        (NEGATIVE_CLASS, 20)
    );
    let test = blobs(&["apple", "banana", "carrot"], 3, 8, 0.5, 9, "Test");
    let answers = classifier
        .identify(&test.features, &test_masses(&test), 5)
        .unwrap();
    for (answer, label) in answers.iter().zip(&test.labels) {
        assert!(answer.ranking.len() <= 2, "only fruit labels are ranked");
        if label == "carrot" {
            assert_eq!(answer.rejected, Some(RejectRule::Negatives), "{answer:?}");
        } else {
            assert_ne!(
                answer.rejected,
                Some(RejectRule::Negatives),
                "{label}: {answer:?}"
            );
        }
    }
    let missing = TrainConfig {
        negatives: Some("veg".into()),
        ..TrainConfig::default()
    };
    let err = fit(&table, &missing).unwrap_err().to_string();
    assert!(err.contains("no image") && err.contains("\"veg\""), "{err}");
}

#[test]
fn a_low_fruit_mass_rejects_first() {
    let classifier = small_classifier();
    let table = blobs(&["apple", "banana", "cherry"], 1, 8, 0.5, 3, "Test");
    let low = vec![0.0; table.len()];
    let answers = classifier.identify(&table.features, &low, 3).unwrap();
    assert!(
        answers
            .iter()
            .all(|a| a.rejected == Some(RejectRule::FruitMass))
    );
    assert!(
        answers.iter().all(|a| a.ranking.len() == 3),
        "top-k is still given"
    );
    let answers = classifier
        .identify(&table.features, &test_masses(&table), 3)
        .unwrap();
    assert!(answers.iter().all(|a| a.rejected.is_none()), "{answers:?}");
}

#[test]
fn rules_fire_in_order_and_name_their_reason() {
    let mut rejection = small_classifier().rejection().clone();
    rejection.fruit_mass.threshold = 0.1;
    rejection.max_softmax.threshold = 0.5;
    assert_eq!(
        rejection.first_rule(0.05, true, 0.1),
        Some(RejectRule::FruitMass)
    );
    assert_eq!(
        rejection.first_rule(0.5, true, 0.1),
        Some(RejectRule::Negatives)
    );
    assert_eq!(
        rejection.first_rule(0.5, false, 0.1),
        Some(RejectRule::MaxSoftmax)
    );
    assert_eq!(rejection.first_rule(0.5, false, 0.5), None);
    assert_eq!(RejectRule::FruitMass.reason(), RejectReason::NotAFruit);
    assert_eq!(RejectRule::Negatives.reason(), RejectReason::NotAFruit);
    assert_eq!(RejectRule::MaxSoftmax.reason(), RejectReason::Uncertain);
    let json = serde_json::to_string(&RejectReason::NotAFruit).unwrap();
    assert_eq!(json, "\"not_a_fruit\"");
}

#[test]
fn keep_threshold_keeps_at_least_the_fraction() {
    let values: Vec<f32> = (0..100).map(|i| i as f32 / 100.0).collect();
    let t = keep_threshold(&values, 0.9);
    assert_eq!(t, 0.10);
    assert_eq!(values.iter().filter(|&&v| v >= t).count(), 90);
    // Uneven sizes round towards keeping more.
    let seven = [0.7, 0.1, 0.4, 0.2, 0.6, 0.3, 0.5];
    let t = keep_threshold(&seven, 0.5);
    assert!(seven.iter().filter(|&&v| v >= t).count() >= 4, "{t}");
    assert_eq!(keep_threshold(&seven, 1.0), 0.1);
    // Values already rejected (−∞) are never kept ahead of real ones.
    let gated = [f32::NEG_INFINITY, 0.2, 0.9, 0.8];
    assert_eq!(keep_threshold(&gated, 0.75), 0.2);
}

#[test]
fn training_on_views_fits_their_rows_and_records_what_is_averaged() {
    // Two "views" per photo: the photo's row, and the same row shifted.
    let photos = blobs(&["apple", "banana", "cherry"], 12, 8, 0.5, 3, "Training");
    let mut rows = FeatureTable {
        location: photos.location.clone(),
        model_sha256: photos.model_sha256.clone(),
        dim: photos.dim,
        ..FeatureTable::default()
    };
    let mut photo = Vec::new();
    for i in 0..photos.len() {
        for shift in [0.0, 0.1] {
            rows.paths.push(photos.paths[i].clone());
            rows.labels.push(photos.labels[i].clone());
            rows.features
                .extend(photos.row(i).iter().map(|x| x + shift));
            photo.push(i);
        }
    }
    let views = TrainingViews {
        rows: &rows,
        photo: photo.clone(),
        averaged: vec!["full".into(), "full-m".into()],
    };
    let config = TrainConfig::default();
    let classifier =
        train_with_views(&photos, &test_masses(&photos), Some(&views), &config).unwrap();
    assert_eq!(classifier.views(), ["full", "full-m"]);
    assert_eq!(classifier.training().view_rows, rows.len());
    assert_eq!(classifier.training().images, photos.len());
    let again = Classifier::from_json(&classifier.to_json()).unwrap();
    assert_eq!(again.views(), classifier.views(), "views survive the file");
    assert!(
        small_classifier().views().is_empty(),
        "no views: none recorded"
    );

    // A view row pointing past the photos is a shape error, not a panic.
    let mut bad = photo;
    bad[0] = photos.len();
    let views = TrainingViews {
        rows: &rows,
        photo: bad,
        averaged: vec!["full".into()],
    };
    let err = train_with_views(&photos, &test_masses(&photos), Some(&views), &config).unwrap_err();
    assert!(matches!(err, ClassifierError::Shape(_)), "{err}");
}
