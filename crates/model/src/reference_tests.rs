//! The reference values of the model README (fp32, both engines) and of
//! tools/README.md (int8, ONNX Runtime).

use super::*;

fn config(choice: EngineChoice) -> EngineConfig {
    EngineConfig {
        choice,
        threads: 2,
        sessions: 1,
        ort_library: None,
        batch_size: 2,
    }
}

fn shared_model() -> ModelFile {
    ModelFile::locate(
        std::env::var_os("VERGER_MODEL").as_deref().map(Path::new),
        Precision::Fp32,
    )
    .expect("the shared model must be reachable from the crate folder")
}

/// The int8 model under the project's `models/` (scripts/test.sh builds it
/// when it is missing).
fn int8_model() -> ModelFile {
    ModelFile::locate(None, Precision::Int8).unwrap_or_else(|e| {
        panic!("the int8 model must be built before the tests (scripts/test.sh does it): {e}")
    })
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

/// One reference input's expected features: the first six values and the sum.
struct Expected {
    first: [f32; 6],
    sum: f32,
}

/// Runs the zeros and linspace inputs as one batch of 2 and compares.
fn check_reference(file: ModelFile, choice: EngineChoice, zeros: Expected, linspace: Expected) {
    let model = SharedModel::load(file, &config(choice)).unwrap();
    let mut input = vec![0f32; INPUT_LEN];
    input.extend(linspace_image());
    let features = model.features(&input, 2).unwrap();
    assert_eq!(features.len(), 2 * FEATURE_DIM);
    let (got_zeros, got_linspace) = features.split_at(FEATURE_DIM);
    let name = format!("{} {}", model.engine_name(), model.file().precision);
    let expect = |got: &[f32], want: &Expected| {
        for (g, w) in got.iter().zip(&want.first) {
            assert!(
                (g - w).abs() < 1e-4,
                "{name}: got {:?}, want {:?}",
                &got[..6],
                want.first
            );
        }
        let sum: f32 = got.iter().sum();
        assert!(
            (sum - want.sum).abs() / want.sum < 1e-4,
            "{name}: sum {sum} vs {}",
            want.sum
        );
    };
    expect(got_zeros, &zeros);
    expect(got_linspace, &linspace);
}

fn check_fp32_reference(choice: EngineChoice) {
    let file = shared_model();
    assert_eq!(file.sha256, FP32_MODEL_SHA256);
    check_reference(
        file,
        choice,
        Expected {
            first: [0.00778, 0.02472, 0.0, 0.0, 0.0, 0.06024],
            sum: 129.28067,
        },
        Expected {
            first: [0.04416, 0.0, 0.0, 0.0, 0.0, 0.7021],
            sum: 196.33957,
        },
    );
}

#[test]
fn onnxruntime_matches_the_readme_reference_values() {
    check_fp32_reference(EngineChoice::Ort);
}

/// tools/README.md's int8 reference values (ONNX Runtime 1.32 CPU).
#[test]
fn onnxruntime_int8_matches_the_tools_reference_values() {
    let file = int8_model();
    assert_eq!(file.sha256, INT8_MODEL_SHA256, "{}", file.path.display());
    check_reference(
        file,
        EngineChoice::Ort,
        Expected {
            first: [0.00768, 0.0, 0.0048, 0.0, 0.0, 0.27322],
            sum: 147.5284,
        },
        Expected {
            first: [0.03265, 0.0, 0.00672, 0.0, 0.0, 0.82206],
            sum: 190.0179,
        },
    );
}

#[test]
fn tract_matches_the_readme_reference_values() {
    check_fp32_reference(EngineChoice::Tract);
}

#[test]
fn a_missing_model_says_where_the_shared_one_lives() {
    let err = resolve_model_path(Some(Path::new("/nope/model.onnx")), Precision::Fp32)
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
fn precisions_parse_and_name_their_files() {
    assert_eq!("fp32".parse::<Precision>().unwrap(), Precision::Fp32);
    assert_eq!("int8".parse::<Precision>().unwrap(), Precision::Int8);
    assert!(
        "fp16"
            .parse::<Precision>()
            .unwrap_err()
            .contains("fp32 or int8")
    );
    assert_eq!(Precision::default(), Precision::Fp32);
    assert_eq!(Precision::Int8.default_file(), INT8_MODEL_FILE);
    assert_eq!(
        Precision::of_known_sha256(&FP32_MODEL_SHA256.to_uppercase()),
        Some(Precision::Fp32)
    );
    assert_eq!(Precision::of_known_sha256("00"), None);
}

/// A known model file run at the other precision is refused, naming both.
#[test]
fn a_known_model_at_the_wrong_precision_is_refused() {
    let fp32 = shared_model().path;
    let err = ModelFile::open(&fp32, Precision::Int8)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--precision int8") && err.contains("fp32 model") && err.contains("61a28d70"),
        "{err}"
    );
    let int8 = int8_model().path;
    let err = ModelFile::open(&int8, Precision::Fp32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("int8 model"), "{err}");
    // A file verger does not know is taken at the caller's word.
    let dir = std::env::temp_dir().join(format!("verger-model-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let other = dir.join("own.onnx");
    std::fs::write(&other, b"not a known model").unwrap();
    assert_eq!(
        ModelFile::open(&other, Precision::Int8).unwrap().precision,
        Precision::Int8
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Without `models/`, asking for int8 says how to build the model.
#[test]
fn a_missing_int8_model_says_how_to_build_it() {
    let dir = std::env::temp_dir().join(format!("verger-no-models-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = find_default(Precision::Int8, std::slice::from_ref(&dir))
        .unwrap_err()
        .to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        err.contains("tools/quantize_int8.py") && err.contains(INT8_MODEL_FILE),
        "{err}"
    );
    assert!(err.contains("--model"), "{err}");
}

#[test]
fn the_imagenet_head_gives_the_readme_logits_and_fruit_mass() {
    let file = shared_model();
    let head = ImagenetHead::from_onnx(&file.path).unwrap();
    let model = SharedModel::load(file, &config(EngineChoice::Ort)).unwrap();
    let zeros = model.features(&vec![0f32; INPUT_LEN], 1).unwrap();
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

/// Two sessions called from four threads at once: every call gets the
/// features of its own input, as one session gives them, and no call is
/// lost while both sessions are busy.
#[test]
fn concurrent_calls_on_two_sessions_keep_their_own_features() {
    let one = SharedModel::load(shared_model(), &config(EngineChoice::Ort)).unwrap();
    let two = SharedModel::load(
        shared_model(),
        &EngineConfig {
            sessions: 2,
            ..config(EngineChoice::Ort)
        },
    )
    .unwrap();
    assert_eq!(two.sessions(), 2);
    // Input `i` is the linspace image scaled by a factor of its own, so a
    // result handed to the wrong caller shows.
    let inputs: Vec<Vec<f32>> = (0..4)
        .map(|i| {
            let scale = 0.25 + 0.25 * i as f32;
            linspace_image().iter().map(|v| v * scale).collect()
        })
        .collect();
    let expected: Vec<Vec<f32>> = inputs
        .iter()
        .map(|input| one.features(input, 1).unwrap())
        .collect();
    for pair in expected.windows(2) {
        assert_ne!(pair[0], pair[1], "the inputs must give different features");
    }
    let got: Vec<Vec<Vec<f32>>> = std::thread::scope(|scope| {
        let callers: Vec<_> = inputs
            .iter()
            .map(|input| {
                let two = &two;
                scope.spawn(move || (0..3).map(|_| two.features(input, 1).unwrap()).collect())
            })
            .collect();
        callers.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for (caller, (results, want)) in got.iter().zip(&expected).enumerate() {
        for result in results {
            let worst = result
                .iter()
                .zip(want)
                .map(|(g, w)| (g - w).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-4, "caller {caller}: off by {worst}");
        }
    }
}
