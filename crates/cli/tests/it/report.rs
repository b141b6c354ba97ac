//! `verger report`: the page of the whole-sample run (with an evaluation),
//! looked at in headless Chromium; markup in labels and a run with broken
//! inputs; the refusals.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::sample::sample_run;
use crate::support::{
    RunDir, Verger, copy_sample_subset, dataset_images, histogram, python_json, tempdir,
};

const PICTURES: [&str; 3] = ["scree.png", "pca.png", "labels.png"];

/// The escaping the page must apply to every text from the data.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The table row of one label in the page's label list.
fn label_row(label: &str, count: usize) -> String {
    format!("{}</td><td class=\"num\">{count}</td>", escape(label))
}

/// Decodes a PNG and checks that it is a picture, not a blank canvas:
/// the standard deviation of its luminance and its share of inked pixels.
#[track_caller]
fn assert_not_blank(path: &Path, min_size: (u32, u32)) {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()))
        .to_luma8();
    let (w, h) = img.dimensions();
    assert!(
        w >= min_size.0 && h >= min_size.1,
        "{} is {w}×{h}",
        path.display()
    );
    let n = (w * h) as f64;
    let mean = img.pixels().map(|p| p.0[0] as f64).sum::<f64>() / n;
    let var = img
        .pixels()
        .map(|p| (p.0[0] as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    let inked = img.pixels().filter(|p| p.0[0] < 160).count() as f64 / n;
    assert!(
        var.sqrt() > 10.0 && inked > 0.005,
        "{} looks blank: luminance sd {:.1}, {:.2}% inked",
        path.display(),
        var.sqrt(),
        inked * 100.0
    );
}

/// An `evaluation.json` (the documented format `verger evaluate` writes)
/// made from the sample run itself: a nearest-centroid classifier on the
/// 1280-d features of `Training/`, scored on `Test/`, and a 5-NN baseline.
/// Real numbers from real features, until `verger evaluate` exists.
fn evaluation_of_sample(run: &RunDir) -> serde_json::Value {
    let split = |name: &str| {
        run.features
            .iter()
            .filter(|r| r.path.contains(&format!("/{name}/")))
            .collect::<Vec<_>>()
    };
    let (train, test) = (split("Training"), split("Test"));
    assert!(!train.is_empty() && !test.is_empty(), "sample splits");
    let labels: Vec<String> = histogram(train.iter().map(|r| r.label.as_str()))
        .into_keys()
        .collect();
    let index = |l: &str| {
        labels
            .iter()
            .position(|x| x == l)
            .expect("label in Training")
    };
    let dim = train[0].features.len();
    let mut centroids = vec![vec![0f64; dim]; labels.len()];
    let mut sizes = vec![0f64; labels.len()];
    for r in &train {
        let c = index(&r.label);
        sizes[c] += 1.0;
        for (s, v) in centroids[c].iter_mut().zip(&r.features) {
            *s += *v as f64;
        }
    }
    for (c, size) in centroids.iter_mut().zip(&sizes) {
        c.iter_mut().for_each(|s| *s /= size);
    }
    let dist = |a: &[f32], b: &[f64]| -> f64 {
        a.iter().zip(b).map(|(x, y)| (*x as f64 - y).powi(2)).sum()
    };
    let n = labels.len();
    let mut confusion = vec![vec![0u64; n]; n];
    let (mut top1, mut top5, mut knn) = (0, 0, 0);
    for r in &test {
        let truth = index(&r.label);
        let mut ranked: Vec<(f64, usize)> = centroids
            .iter()
            .enumerate()
            .map(|(c, centroid)| (dist(&r.features, centroid), c))
            .collect();
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
        confusion[truth][ranked[0].1] += 1;
        top1 += usize::from(ranked[0].1 == truth);
        top5 += usize::from(ranked.iter().take(5).any(|&(_, c)| c == truth));
        // The baseline votes among the 5 nearest Training images by their
        // PCA components (cheap enough for a debug-built test).
        let mut neighbours: Vec<(f64, usize)> = train
            .iter()
            .map(|t| {
                let d: f64 = r.pca.iter().zip(&t.pca).map(|(x, y)| (x - y).powi(2)).sum();
                (d, index(&t.label))
            })
            .collect();
        neighbours.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut votes = vec![0; n];
        neighbours.iter().take(5).for_each(|&(_, c)| votes[c] += 1);
        let best = (0..n)
            .max_by_key(|&c| (votes[c], std::cmp::Reverse(c)))
            .unwrap();
        knn += usize::from(best == truth);
    }
    let per_class: Vec<serde_json::Value> = (0..n)
        .map(|c| {
            let support: u64 = confusion[c].iter().sum();
            let predicted: u64 = confusion.iter().map(|row| row[c]).sum();
            let hit = confusion[c][c] as f64;
            serde_json::json!({
                "label": labels[c],
                "precision": (predicted > 0).then(|| hit / predicted as f64),
                "recall": (support > 0).then(|| hit / support as f64),
                "support": support,
            })
        })
        .collect();
    let total = test.len() as f64;
    serde_json::json!({
        "format": "verger-evaluation", "version": 1, "split": "Test",
        "images": test.len(), "top1": top1 as f64 / total, "top5": top5 as f64 / total,
        "knn_baseline": {"k": 5, "top1": knn as f64 / total},
        "labels": labels, "per_class": per_class, "confusion": confusion,
        "classifier": "nearest centroid (made by the report test)",
    })
}

/// What `tests/python/browser.py` saw of a page.
fn open_in_chromium(page: &Path, screenshot: &Path) -> serde_json::Value {
    let url = std::ffi::OsString::from(format!("file://{}", page.display()));
    python_json(
        "browser.py",
        [
            url.as_os_str(),
            OsStr::new("--screenshot"),
            screenshot.as_os_str(),
            OsStr::new("--full-page"),
        ],
    )
}

#[test]
fn report_of_the_sample_run_renders_in_chromium() {
    let s = sample_run();
    let tmp = tempdir();
    let evaluation = evaluation_of_sample(&s.run);
    let evaluation_file = tmp.path().join("evaluation.json");
    std::fs::write(&evaluation_file, evaluation.to_string()).unwrap();
    let out = tmp.path().join("report");
    let result = Verger::new()
        .args(["report", "--input"])
        .arg(&s.out)
        .arg("--out")
        .arg(&out)
        .arg("--evaluation")
        .arg(&evaluation_file)
        .exec()
        .assert_success();
    let n = dataset_images().len();
    let counts = histogram(s.run.features.iter().map(|r| r.label.as_str()));
    assert!(
        result.stdout.contains(&format!(
            "report of {n} images, {} labels, 0 errors",
            counts.len()
        )),
        "{result:?}"
    );

    let page = out.join("index.html");
    let html = std::fs::read_to_string(&page).expect("index.html");
    // Every label with its image count.
    assert_eq!(counts.len(), 24, "the sample's labels");
    for (label, count) in &counts {
        assert!(
            html.contains(&label_row(label, *count)),
            "no row for {label} ({count} images)"
        );
    }
    for picture in PICTURES.iter().chain(["confusion.png"].iter()) {
        assert!(
            html.contains(&format!("<img src=\"{picture}\"")),
            "{picture} not shown"
        );
        assert_not_blank(&out.join(picture), (400, 300));
    }
    assert!(html.contains("No errors"), "no-error statement");
    // Explained variance, parameters and timings from the run's documents.
    let explained = s.run.pca_model["explained_variance"][0].as_f64().unwrap();
    assert!(html.contains(&format!("{:.1}%", explained * 100.0)));
    let input = s.run.run_json["job"]["input"].as_str().unwrap();
    assert!(html.contains(&escape(input)), "run.json input {input}");
    for timing in ["featurize_s", "stages.inference_s", "total_s"] {
        assert!(html.contains(&format!("<td>{timing}</td>")), "{timing}");
    }
    // The evaluation's figures and per-class table.
    let top1 = evaluation["top1"].as_f64().unwrap();
    assert!(
        html.contains(&format!("<b>{:.1}%</b>top-1 accuracy", top1 * 100.0)),
        "top-1 {top1}"
    );
    assert!(html.contains("kNN baseline top-1 (k = 5)"));
    // Self-contained: nothing but the pictures beside it is referenced.
    assert!(!html.contains("http://") && !html.contains("https://"));
    assert!(!html.contains("<script"), "no script");

    let shot = tmp.path().join("screenshot.png");
    let seen = open_in_chromium(&page, &shot);
    for problem in ["console_errors", "page_errors", "failed_requests"] {
        assert_eq!(
            seen[problem].as_array().map(Vec::len),
            Some(0),
            "{problem} in Chromium: {seen}"
        );
    }
    let images = seen["images"].as_array().expect("images");
    assert_eq!(images.len(), 4, "{seen}");
    for img in images {
        assert!(
            img["complete"] == true && img["natural_width"].as_u64() > Some(300),
            "an image did not load: {img}"
        );
    }
    assert!(seen["title"].as_str().unwrap().starts_with("verger report"));
    assert_not_blank(&shot, (1200, 2000));
}

/// A tree with a label that is markup (`a<b&c`) and three files that are
/// not images: the page escapes the label and the error paths, and sums up
/// the failures by stage and reason.
#[test]
fn report_escapes_labels_and_summarises_errors() {
    let tmp = tempdir();
    let input = tmp.path().join("photos");
    copy_sample_subset(&input, "Training", &["Banana", "Kiwi"], 3);
    let markup = input.join("a<b&c");
    std::fs::rename(input.join("Kiwi"), &markup).unwrap();
    let jpeg = std::fs::read(dataset_images().first().unwrap()).unwrap();
    std::fs::write(markup.join("empty.jpg"), b"").unwrap();
    std::fs::write(markup.join("text & <tags>.jpg"), b"not an image at all").unwrap();
    std::fs::write(input.join("Banana/cut.jpg"), &jpeg[..jpeg.len() / 3]).unwrap();

    let run_out = tmp.path().join("run");
    Verger::run(&input, &run_out)
        .args(["--k", "2"])
        .exec()
        .assert_success();
    let run = RunDir::read(&run_out);
    assert_eq!(run.errors.len(), 3, "{:?}", run.errors);

    let out = tmp.path().join("report");
    Verger::new()
        .args(["report", "--input"])
        .arg(&run_out)
        .arg("--out")
        .arg(&out)
        .exec()
        .assert_success();
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(html.contains(&label_row("a<b&c", 3)), "escaped label row");
    assert!(!html.contains("a<b&c"), "a raw `a<b&c` in the page");
    assert!(!html.contains("<tags>"), "a raw file name in the page");
    // One row per (stage, failure kind), with its count.
    let mut groups: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in &run.errors {
        *groups.entry((e.stage.clone(), e.kind.clone())).or_default() += 1;
    }
    for ((stage, kind), count) in &groups {
        let row = format!(
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{count}</td>",
            escape(stage),
            escape(kind)
        );
        assert!(html.contains(&row), "no error row {row:?}");
    }
    // Every example shown is one of the failed paths, escaped.
    let examples = html.matches("<td class=\"path\">").count();
    assert_eq!(examples, groups.len());
    assert!(
        run.errors
            .iter()
            .any(|e| html.contains(&format!("<td class=\"path\">{}<br>", escape(&e.path)))),
        "no example path"
    );
    for picture in PICTURES {
        assert_not_blank(&out.join(picture), (400, 200));
    }
}

#[test]
fn report_refuses_an_unfinished_output_naming_the_file() {
    let tmp = tempdir();
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("run.json"), "{}").unwrap();
    let refused = |input: &PathBuf| {
        Verger::new()
            .args(["report", "--input"])
            .arg(input)
            .arg("--out")
            .arg(tmp.path().join("report"))
            .exec()
            .assert_failure()
    };
    let no_marker = refused(&run);
    let marker = format!("{}/_SUCCESS", run.canonicalize().unwrap().display());
    assert!(
        no_marker.stderr.contains(&marker) && no_marker.stderr.contains("not a finished"),
        "{no_marker:?}"
    );

    std::fs::remove_file(run.join("run.json")).unwrap();
    std::fs::write(run.join("_SUCCESS"), "").unwrap();
    let no_run = refused(&run);
    let document = format!("{}/run.json", run.canonicalize().unwrap().display());
    assert!(no_run.stderr.contains(&document), "{no_run:?}");

    let missing = tmp.path().join("nothing here");
    let absent = refused(&missing);
    assert!(
        absent.stderr.contains(missing.to_str().unwrap()),
        "{absent:?}"
    );
    assert!(
        !tmp.path().join("report/index.html").exists(),
        "nothing written"
    );
}

#[test]
fn report_help_explains_the_page() {
    let help = Verger::new()
        .args(["report", "--help"])
        .exec()
        .assert_success();
    for needed in [
        "--input",
        "--out",
        "--evaluation",
        "scree",
        "other",
        "offline",
        "verger report --input out/sample --out report/",
    ] {
        assert!(
            help.stdout.contains(needed),
            "{needed:?} in {}",
            help.stdout
        );
    }
}
