//! `write_report` on outputs made here with the output's own schemas and
//! typed documents: many
//! labels (150, more than the palette), markup in labels, paths and reasons,
//! a single PCA component, and the refusals. The real sample's report is
//! tested on a real run in crates/cli/tests/it/report.rs.

use std::path::Path;
use std::sync::Arc;

use arrow::array::Float32Builder;
use arrow::array::{ArrayRef, Float64Builder, ListBuilder, RecordBatch, StringArray};
use parquet::arrow::ArrowWriter;
use verger_output::{
    Counts, FailureCount, FailureKind, FeatureModel, JobIdentity, Parameters, RunRecord,
    StageTimes, Timings, Versions,
};

use crate::{ReportConfig, ReportError, write_report};

const LABELS: usize = 150;
/// A label that is also markup: it must come out escaped.
const MARKUP: &str = "a<b&c";

fn label(i: usize) -> String {
    if i == 7 {
        MARKUP.to_string()
    } else {
        format!("Fruit {i:03}")
    }
}

/// Label i has 3 + (i * 7) % 11 images.
fn count(i: usize) -> usize {
    3 + (i * 7) % 11
}

fn write_parquet(path: &Path, batch: RecordBatch) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// A finished output with `k` components; returns the number of rows.
fn make_output(dir: &Path, k: usize) -> usize {
    let (mut paths, mut labels) = (Vec::new(), Vec::new());
    let mut features = ListBuilder::new(Float32Builder::new());
    let mut pca = ListBuilder::new(Float64Builder::new());
    for i in 0..LABELS {
        for j in 0..count(i) {
            paths.push(format!("/photos/{}/{j}.jpg", label(i)));
            labels.push(label(i));
            features.values().append_slice(&[0.5; 4]);
            features.append(true);
            let angle = i as f64 / LABELS as f64 * std::f64::consts::TAU;
            let r = 10.0 + j as f64 * 0.1;
            pca.values()
                .append_slice(&[r * angle.cos(), r * angle.sin(), 1.0][..k]);
            pca.append(true);
        }
    }
    let rows = paths.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(paths)),
        Arc::new(StringArray::from(labels)),
        Arc::new(features.finish()),
        Arc::new(pca.finish()),
    ];
    let batch = RecordBatch::try_new(verger_output::features_schema(), columns).unwrap();
    write_parquet(&dir.join("features/part-000-0000.parquet"), batch);

    let errors: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![
            "/photos/a<b&c/broken.jpg",
            "/photos/Fruit 001/empty.jpg",
            "/photos/Fruit 002/cut.jpg",
        ])),
        Arc::new(StringArray::from(vec![MARKUP, "Fruit 001", "Fruit 002"])),
        Arc::new(StringArray::from(vec!["decode", "decode", "read"])),
        Arc::new(StringArray::from(vec!["corrupt", "corrupt", "read_failed"])),
        Arc::new(StringArray::from(vec![
            "corrupt or truncated image: <script>alert(1)</script>",
            "corrupt or truncated image: unexpected end",
            "cannot read: gone",
        ])),
    ];
    let batch = RecordBatch::try_new(verger_output::errors_schema(), errors).unwrap();
    write_parquet(&dir.join("errors/part-000-0000.parquet"), batch);

    let explained: Vec<f64> = [0.21, 0.12, 0.05][..k].to_vec();
    let run = run_record(dir, rows, k, explained.clone());
    std::fs::write(dir.join("run.json"), serde_json::to_vec(&run).unwrap()).unwrap();
    let model = serde_json::json!({
        "k": k, "n": rows, "dim": 4, "center": false, "mean": vec![0.0; 4],
        "components": vec![[0.5; 4]; k], "eigenvalues": vec![1.0; k],
        "explained_variance": explained, "total_variance": 10.0
    });
    std::fs::write(dir.join("pca_model.json"), model.to_string()).unwrap();
    std::fs::write(dir.join("_SUCCESS"), "").unwrap();
    rows
}

/// `run.json` of that output, through the type the report reads it with.
fn run_record(dir: &Path, rows: usize, k: usize, explained: Vec<f64>) -> RunRecord {
    RunRecord {
        format: RunRecord::FORMAT.into(),
        version: RunRecord::VERSION,
        counts: Counts {
            listed: rows as u64 + 3,
            features: rows as u64,
            errors: 3,
            ..Counts::default()
        },
        job: JobIdentity {
            input: "/photos".into(),
            glob: "*.{jpg,png}".into(),
            model_sha256: "ab12".into(),
            max_pixels: 64_000_000,
            views: Vec::new(),
        },
        parameters: Parameters {
            output: dir.display().to_string(),
            k,
            center: false,
            batch_size: 32,
            partitions: 2,
            threads: Some(2),
            max_errors: None,
            checkpoint_every: 256,
        },
        model: FeatureModel {
            path: "/models/m.onnx".into(),
            sha256: "ab12".into(),
            engine: "onnxruntime".into(),
            precision: "fp32".into(),
        },
        timings: Timings {
            model_load_s: 0.25,
            featurize_s: 3.5,
            total_s: 4.0,
            stages: StageTimes {
                read_s: 0.5,
                batches: 7,
                ..StageTimes::default()
            },
            ..Timings::default()
        },
        explained_variance: explained,
        failures: FailureCount::tally([(FailureKind::Corrupt, 2), (FailureKind::ReadFailed, 1)]),
        versions: Versions {
            verger: "0.1.0".into(),
            datafusion: "55".into(),
        },
        cluster: None,
        started_at: "2026-01-01T00:00:00Z".into(),
        finished_at: "2026-01-01T00:00:04Z".into(),
    }
}

fn config(input: &Path, out: &Path) -> ReportConfig {
    ReportConfig::new(
        input.to_str().unwrap().to_string(),
        out.to_str().unwrap().to_string(),
    )
}

fn png_size(path: &Path) -> (u32, u32) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (img.width(), img.height())
}

#[tokio::test]
async fn many_labels_markup_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, out) = (tmp.path().join("run"), tmp.path().join("report"));
    let rows = make_output(&input, 2);
    let written = write_report(&config(&input, &out)).await.unwrap();
    assert_eq!(written.images, rows as u64);
    assert_eq!((written.labels, written.errors), (LABELS, 3));
    assert!(
        written.index.ends_with("/report/index.html"),
        "{}",
        written.index
    );

    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    for file in ["scree.png", "pca.png", "labels.png"] {
        assert!(
            html.contains(&format!("src=\"{file}\"")),
            "{file} not shown"
        );
        let (w, h) = png_size(&out.join(file));
        assert!(w > 300 && h > 300, "{file} is {w}×{h}");
    }
    // Every label with its count; markup only ever escaped.
    for i in 0..LABELS {
        let row = format!(
            "{}</td><td class=\"num\">{}</td>",
            crate::escape(&label(i)),
            count(i)
        );
        assert!(html.contains(&row), "no row {row:?}");
    }
    assert!(html.contains("a&lt;b&amp;c"));
    assert!(!html.contains(MARKUP), "unescaped label in the page");
    assert!(!html.contains("<script"), "unescaped reason in the page");
    // 20 named, 130 grouped.
    assert!(html.contains("the other 130 labels"), "legend grouping");
    // Errors grouped by stage and failure kind (the `kind` column), most
    // frequent first.
    let decode = html
        .find("<td>decode</td><td>corrupt</td><td class=\"num\">2</td>")
        .expect("decode group");
    let read = html
        .find("<td>read</td><td>read_failed</td><td class=\"num\">1</td>")
        .expect("read group");
    assert!(decode < read);
    // Run details from run.json.
    assert!(html.contains("<td>glob</td><td>*.{jpg,png}</td>"));
    assert!(html.contains("<td>stages.read_s</td><td class=\"num\">500 ms</td>"));
    assert!(html.contains("<td>max_errors</td><td>–</td>"));
}

#[tokio::test]
async fn evaluation_adds_scores_and_a_confusion_heat_map() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, out) = (tmp.path().join("run"), tmp.path().join("report"));
    make_output(&input, 2);
    let labels: Vec<String> = (0..LABELS).map(label).collect();
    let confusion: Vec<Vec<u64>> = (0..LABELS)
        .map(|i| {
            (0..LABELS)
                .map(|j| u64::from(i == j) * 5 + u64::from(j == (i + 1) % LABELS))
                .collect()
        })
        .collect();
    let per_class: Vec<_> = labels
        .iter()
        .map(|l| serde_json::json!({"label": l, "precision": 0.833, "recall": 0.833, "support": 6}))
        .collect();
    let evaluation = serde_json::json!({
        "format": "verger-evaluation", "version": 1, "split": "Test", "images": 900,
        "top1": 0.8333, "top5": 1.0, "knn_baseline": {"k": 5, "top1": 0.81},
        "labels": labels, "per_class": per_class, "confusion": confusion,
        "classifier_sha256": "extra fields are allowed"
    });
    let file = tmp.path().join("evaluation.json");
    std::fs::write(&file, evaluation.to_string()).unwrap();
    let mut config = config(&input, &out);
    config.evaluation = Some(file.to_str().unwrap().to_string());
    write_report(&config).await.unwrap();
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(html.contains("src=\"confusion.png\""));
    let (w, h) = png_size(&out.join("confusion.png"));
    assert!(w >= 420 && h >= 420, "confusion.png is {w}×{h}");
    assert!(html.contains("<b>83.3%</b>top-1 accuracy"));
    assert!(html.contains("<b>100.0%</b>top-5 accuracy"));
    assert!(html.contains("<b>81.0%</b>kNN baseline top-1 (k = 5)"));
    assert!(html.contains("<td>a&lt;b&amp;c</td><td class=\"num\">0.833</td>"));

    // A file of another shape is refused with its name.
    std::fs::write(&file, r#"{"format":"something else"}"#).unwrap();
    let err = write_report(&config).await.unwrap_err().to_string();
    assert!(err.contains("evaluation.json"), "{err}");
}

#[tokio::test]
async fn one_component_has_no_plane_to_draw() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, out) = (tmp.path().join("run"), tmp.path().join("report"));
    make_output(&input, 1);
    write_report(&config(&input, &out)).await.unwrap();
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(html.contains("single component"));
    assert!(!out.join("pca.png").exists());
}

#[tokio::test]
async fn unfinished_or_incomplete_outputs_and_bad_places_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, out) = (tmp.path().join("run"), tmp.path().join("report"));
    make_output(&input, 2);

    let inside = write_report(&config(&input, &input.join("report")))
        .await
        .unwrap_err();
    assert!(
        matches!(inside, ReportError::OutInsideInput { .. }),
        "{inside}"
    );

    std::fs::remove_file(input.join("run.json")).unwrap();
    let err = write_report(&config(&input, &out))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("{}/run.json is missing", input.display())),
        "{err}"
    );

    std::fs::remove_file(input.join("_SUCCESS")).unwrap();
    let err = write_report(&config(&input, &out))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("{}/_SUCCESS is missing", input.display())),
        "{err}"
    );
    assert!(err.contains("not a finished verger output"), "{err}");

    let missing = tmp.path().join("nowhere");
    let err = write_report(&config(&missing, &out))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
}
