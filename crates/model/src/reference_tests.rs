//! The model README's reference values, through both engines.

use super::*;

fn config(choice: EngineChoice) -> EngineConfig {
    EngineConfig {
        choice,
        threads: 2,
        ort_library: None,
        batch_size: 2,
    }
}

fn shared_model() -> PathBuf {
    resolve_model_path(std::env::var_os("VERGER_MODEL").as_deref().map(Path::new))
        .expect("the shared model must be reachable from the crate folder")
}

/// `x[c, h, w] = linspace(-1, 1, 224)[w]`, the README's second reference input.
fn linspace_image() -> Vec<f32> {
    let mut image = vec![0f32; INPUT_LEN];
    for (i, value) in image.iter_mut().enumerate() {
        let w = i % 224;
        *value = -1.0 + 2.0 * w as f32 / 223.0;
    }
    image
}

fn check_reference(choice: EngineChoice) {
    let model = SharedModel::load(&shared_model(), &config(choice)).unwrap();
    assert_eq!(
        model.file().sha256,
        "61a28d70298ef318cc53284e57bcd605e474f0a060a17478781df7cea2e270f3"
    );
    let mut input = vec![0f32; INPUT_LEN];
    input.extend(linspace_image());
    let features = model.features(&input, 2).unwrap();
    assert_eq!(features.len(), 2 * FEATURE_DIM);
    let (zeros, linspace) = features.split_at(FEATURE_DIM);
    let expect = |got: &[f32], want: &[f32], want_sum: f32| {
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() < 1e-4,
                "{}: got {:?}, want {:?}",
                model.engine_name(),
                &got[..6],
                want
            );
        }
        let sum: f32 = got.iter().sum();
        assert!(
            (sum - want_sum).abs() / want_sum < 1e-4,
            "{}: sum {sum} vs {want_sum}",
            model.engine_name()
        );
    };
    expect(
        zeros,
        &[0.00778, 0.02472, 0.0, 0.0, 0.0, 0.06024],
        129.28067,
    );
    expect(linspace, &[0.04416, 0.0, 0.0, 0.0, 0.0, 0.7021], 196.33957);
}

#[test]
fn onnxruntime_matches_the_readme_reference_values() {
    check_reference(EngineChoice::Ort);
}

#[test]
fn tract_matches_the_readme_reference_values() {
    check_reference(EngineChoice::Tract);
}

#[test]
fn a_missing_model_says_where_the_shared_one_lives() {
    let err = resolve_model_path(Some(Path::new("/nope/model.onnx")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/nope/model.onnx") && err.contains("shared/models"),
        "{err}"
    );
    assert!(err.contains("VERGER_MODEL"), "{err}");
}

#[test]
fn engine_names_parse() {
    assert_eq!("ort".parse::<EngineChoice>().unwrap(), EngineChoice::Ort);
    assert_eq!(
        "tract".parse::<EngineChoice>().unwrap(),
        EngineChoice::Tract
    );
    assert!(
        "gpu"
            .parse::<EngineChoice>()
            .unwrap_err()
            .contains("auto, ort or tract")
    );
}

#[test]
fn the_imagenet_head_gives_the_readme_logits_and_fruit_mass() {
    let path = shared_model();
    let model = SharedModel::load(&path, &config(EngineChoice::Ort)).unwrap();
    let zeros = model.features(&vec![0f32; INPUT_LEN], 1).unwrap();
    let head = ImagenetHead::from_onnx(&path).unwrap();
    let logits = head.logits(&zeros);
    assert_eq!(logits.len(), IMAGENET_CLASSES);
    let (argmax, max) = logits
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &l)| {
            if l > best.1 { (i, l) } else { best }
        });
    // The README: a mid-grey image is class 644 with max logit 3.4113.
    assert_eq!(argmax, 644);
    assert!((max - 3.4113).abs() < 1e-3, "max logit {max}");
    let mass = head.fruit_mass(&zeros);
    assert!(
        mass > 0.0 && mass < 0.05,
        "a grey image is not fruit: {mass}"
    );
}

#[test]
fn fruit_mass_is_the_softmax_mass_of_classes_948_to_957() {
    let mut logits = vec![0f32; IMAGENET_CLASSES];
    assert!((fruit_mass_of_logits(&logits) - 0.01).abs() < 1e-6);
    logits[950] = 100.0;
    assert!(fruit_mass_of_logits(&logits) > 0.999);
    logits[950] = 0.0;
    logits[947] = 100.0;
    assert!(fruit_mass_of_logits(&logits) < 1e-6);
}
