//! The features of a DCT-scaled JPEG decode must be those of a full decode:
//! on phone-sized photos made from the shared Fruits-360 and grocery images
//! (upscaled, noise added, JPEG quality 90; see `verger_bench::photos`), the
//! MobileNetV2 features of `preprocess` with `scaled_jpeg_decode` and
//! without it have a cosine of at least 0.99 on average and 0.97 at worst.
//!
//! Needs the shared model and ONNX Runtime (`ORT_DYLIB_PATH`, as the rest
//! of the test suite).

use verger_bench::photos as phone;

use crate::support::cosine;

use verger_image::{PreprocessConfig, TENSOR_LEN, decode_rgb, preprocess};
use verger_model::{EngineChoice, EngineConfig, FEATURE_DIM, SharedModel};

/// Images per source: "a few dozen" in all.
const PER_SOURCE: usize = 20;

/// Stored sizes, cycled over the images: mostly phone photos (1/8 scale),
/// and sizes that take the 1/4, 3/8 and 1/2 scales.
const SIZES: [(u32, u32); 6] = [
    phone::PHONE,
    (3024, 4032),
    phone::PHONE,
    (2000, 1500),
    (1000, 750),
    (500, 700),
];

struct Case {
    source: &'static str,
    name: String,
    size: (u32, u32),
    decoded: (u32, u32),
    scaled: Vec<f32>,
    full: Vec<f32>,
}

#[test]
fn scaled_decode_keeps_the_features_of_the_full_decode() {
    let shared = phone::shared_dir();
    let mut jobs = Vec::new();
    for (source, split) in [
        ("fruits360", shared.join("datasets/fruits360-sample/Test")),
        (
            "grocery",
            shared.join("datasets/grocery-photos/fruit/Validation"),
        ),
    ] {
        let picked = phone::pick_images(&split, PER_SOURCE).unwrap();
        assert_eq!(picked.len(), PER_SOURCE, "{}", split.display());
        for (i, path) in picked.into_iter().enumerate() {
            jobs.push((source, path, SIZES[i % SIZES.len()], jobs.len() as u64));
        }
    }

    // Making 12-megapixel JPEGs is the slow part: both cores.
    let half = jobs.len().div_ceil(2);
    let cases: Vec<Case> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .chunks(half)
            .map(|chunk| s.spawn(move || chunk.iter().map(make_case).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });

    let model_file = verger_model::ModelFile::locate(None, verger_model::Precision::Fp32).unwrap();
    let config = EngineConfig {
        choice: EngineChoice::Ort,
        threads: 2,
        sessions: 1,
        ort_library: None,
        batch_size: 8,
    };
    let model = SharedModel::load(model_file, &config).unwrap();
    let features = |pick: fn(&Case) -> &[f32]| -> Vec<f32> {
        let mut out = Vec::with_capacity(cases.len() * FEATURE_DIM);
        for batch in cases.chunks(8) {
            let input: Vec<f32> = batch.iter().flat_map(|c| pick(c).to_vec()).collect();
            out.extend(model.features(&input, batch.len()).unwrap());
        }
        out
    };
    let scaled = features(|c| &c.scaled);
    let full = features(|c| &c.full);

    let cosines: Vec<f64> = scaled
        .chunks_exact(FEATURE_DIM)
        .zip(full.chunks_exact(FEATURE_DIM))
        .map(|(a, b)| cosine(a, b))
        .collect();
    println!(
        "{:<10} {:<44} {:>9}  {:>9}  cosine",
        "source", "image", "stored", "decoded"
    );
    for (case, cos) in cases.iter().zip(&cosines) {
        println!(
            "{:<10} {:<44} {:>9}  {:>9}  {cos:.4}",
            case.source,
            case.name,
            format!("{}x{}", case.size.0, case.size.1),
            format!("{}x{}", case.decoded.0, case.decoded.1)
        );
    }
    for source in ["fruits360", "grocery", "all"] {
        let of_source: Vec<f64> = cases
            .iter()
            .zip(&cosines)
            .filter(|(c, _)| source == "all" || c.source == source)
            .map(|(_, &cos)| cos)
            .collect();
        let mean = of_source.iter().sum::<f64>() / of_source.len() as f64;
        let worst = of_source.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "{source}: {} images, cosine mean {mean:.4}, worst {worst:.4}",
            of_source.len()
        );
        assert!(mean >= 0.99, "{source}: mean cosine {mean:.4} < 0.99");
        assert!(worst >= 0.97, "{source}: worst cosine {worst:.4} < 0.97");
    }
}

fn make_case(
    (source, path, size, seed): &(&'static str, std::path::PathBuf, (u32, u32), u64),
) -> Case {
    let bytes = phone::phone_jpeg(path, *size, *seed).unwrap();
    let scaling = PreprocessConfig::default();
    let no_scaling = PreprocessConfig {
        scaled_jpeg_decode: false,
        ..PreprocessConfig::default()
    };
    let decoded = decode_rgb(&bytes, &scaling).unwrap().dimensions();
    assert!(
        decoded.0 < size.0 && decoded.1 < size.1,
        "{}: {size:?} was not decoded at a reduced scale ({decoded:?})",
        path.display()
    );
    let scaled = preprocess(&bytes, &scaling).unwrap();
    let full = preprocess(&bytes, &no_scaling).unwrap();
    assert_eq!((scaled.len(), full.len()), (TENSOR_LEN, TENSOR_LEN));
    Case {
        source,
        // label/file: Fruits-360 file names repeat across labels.
        name: format!(
            "{}/{}",
            path.parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy(),
            path.file_name().unwrap().to_string_lossy()
        ),
        size: *size,
        decoded,
        scaled,
        full,
    }
}
