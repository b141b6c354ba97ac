//! The page: plain HTML and inline CSS, no script, no external resource but
//! the PNGs beside it. Every text that comes from the data (labels are
//! folder names, paths and reasons are arbitrary) goes through [`escape`].

use std::fmt::Write;

use serde_json::Value;

use crate::evaluation::Evaluation;
use crate::input::RunData;
use crate::plots::{Legend, MAX_BARS, PALETTE, SCREE_SIZE};

/// `text` safe inside HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The PNG files the page shows, by role (names relative to the page).
pub struct Images<'a> {
    pub scree: &'a str,
    pub scatter: Option<&'a str>,
    pub counts: &'a str,
    pub confusion: Option<&'a str>,
    /// With an evaluation's `open_set`: its risk–coverage curve.
    pub risk_coverage: Option<&'a str>,
    /// The thumbnail file of each example photo, by path (missing: the
    /// photo could not be read or decoded, and only its text is shown).
    pub thumbnails: &'a std::collections::HashMap<String, String>,
}

const STYLE: &str = r#"
:root { color-scheme: light; }
body { font-family: "DejaVu Sans", "Liberation Sans", Arial, Helvetica, sans-serif;
       margin: 0 auto; padding: 1.5rem; max-width: 1200px; color: #1d1d1f; line-height: 1.45; }
h1 { margin-bottom: .2rem; }
h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
.muted { color: #666; }
.figures { display: flex; flex-wrap: wrap; gap: .8rem; margin: 1rem 0; }
.figure { border: 1px solid #ddd; border-radius: 6px; padding: .6rem 1rem; min-width: 9rem; }
.figure b { display: block; font-size: 1.6rem; }
.examples { display: flex; flex-wrap: wrap; gap: .6rem; margin: .6rem 0 1.2rem; }
.example { width: 9.5rem; font-size: .8rem; border: 1px solid #ddd; border-radius: 6px; padding: .3rem; }
.example img { display: block; margin: 0 auto .2rem; max-width: 100%; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .92rem; }
th, td { border-bottom: 1px solid #e4e4e4; padding: .25rem .7rem; text-align: left; vertical-align: top; }
th { background: #f5f5f7; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.path { font-family: "DejaVu Sans Mono", monospace; font-size: .85rem; word-break: break-all; }
.swatch { display: inline-block; width: .8rem; height: .8rem; margin-right: .4rem; vertical-align: -1px; }
.ok { color: #1b5e20; }
details > summary { cursor: pointer; margin: .4rem 0; }
.row { display: flex; flex-wrap: wrap; gap: 1rem 2rem; align-items: flex-start; }
.parts { display: flex; flex-wrap: wrap; gap: 0 2.5rem; align-items: flex-start; }
"#;

/// The whole page.
pub fn page(data: &RunData, evaluation: Option<&Evaluation>, images: &Images<'_>) -> String {
    let mut html = String::new();
    let title = format!("verger report: {}", data.root);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        escape(&title)
    );
    header(&mut html, data);
    variance(&mut html, data, images.scree);
    scatter(&mut html, data, images.scatter);
    counts(&mut html, data, images.counts);
    errors(&mut html, data);
    if let Some(evaluation) = evaluation {
        classifier(&mut html, evaluation, images.confusion);
        open_set(&mut html, evaluation, images);
    }
    run_details(&mut html, &run_value(data));
    html.push_str("</body>\n</html>\n");
    html
}

fn header(html: &mut String, data: &RunData) {
    let run = &run_value(data);
    let count = |name: &str| run["counts"][name].as_u64();
    let _ = write!(
        html,
        "<h1>verger report</h1>\n<p class=\"muted\">Output <code>{}</code>, finished {}</p>\n",
        escape(&data.root),
        escape(run["finished_at"].as_str().unwrap_or("(unknown)"))
    );
    html.push_str("<div class=\"figures\">\n");
    let figures = [
        ("images listed", count("listed")),
        ("featurized", Some(data.rows)),
        ("errors", Some(data.errors.total)),
        ("labels", Some(data.labels.len() as u64)),
    ];
    for (name, value) in figures {
        let value = value.map_or("–".to_string(), |v| v.to_string());
        let _ = writeln!(html, "<div class=\"figure\"><b>{value}</b>{name}</div>");
    }
    let _ = writeln!(
        html,
        "<div class=\"figure\"><b>{}</b>PCA components</div>",
        data.pca.k
    );
    if let Some(total) = run["timings"]["total_s"].as_f64() {
        let _ = writeln!(
            html,
            "<div class=\"figure\"><b>{}</b>run time</div>",
            seconds(total)
        );
    }
    html.push_str("</div>\n");
    if let Some(features) = count("features")
        && features != data.rows
    {
        let _ = writeln!(
            html,
            "<p><strong>Note:</strong> run.json counts {features} featurized images but \
             features/ holds {} rows.</p>",
            data.rows
        );
    }
}

fn variance(html: &mut String, data: &RunData, scree: &str) {
    let pca = &data.pca;
    let _ = write!(
        html,
        "<h2>Explained variance</h2>\n<p>The PCA was fitted on {} feature vectors of {} \
         dimensions and keeps {} components ({}). Each bar is one component's share of the \
         total variance; the line is the running total.</p>\n\
         <div class=\"row\">\n<img src=\"{}\" alt=\"Scree plot of the explained variance per \
         component, with the cumulative share\" width=\"{}\" height=\"{}\">\n",
        pca.n,
        pca.dim,
        pca.k,
        if pca.center {
            "projected centred, like scikit-learn"
        } else {
            "projected uncentred, like spark.ml"
        },
        escape(scree),
        SCREE_SIZE.0,
        SCREE_SIZE.1
    );
    html.push_str(
        "<table>\n<tr><th>component</th><th class=\"num\">explained</th>\
         <th class=\"num\">cumulative</th><th class=\"num\">eigenvalue</th></tr>\n",
    );
    let mut cumulative = 0.0;
    for (i, share) in pca.explained_variance.iter().enumerate() {
        cumulative += share;
        let eigenvalue = pca
            .eigenvalues
            .get(i)
            .map_or("–".to_string(), |v| format!("{v:.3}"));
        let _ = writeln!(
            html,
            "<tr><td>PC{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{eigenvalue}</td></tr>",
            i + 1,
            percent(*share),
            percent(cumulative)
        );
    }
    html.push_str("</table>\n</div>\n");
}

fn scatter(html: &mut String, data: &RunData, image: Option<&str>) {
    html.push_str("<h2>Images in the plane of components 1 and 2</h2>\n");
    let Some(image) = image else {
        html.push_str(
            "<p>The PCA has a single component: there is no second axis to draw \
             (run verger with <code>--k 2</code> or more).</p>\n",
        );
        return;
    };
    let legend = Legend::of(&data.labels);
    let drawn = data.points.len() as u64;
    let sample = if drawn < data.rows {
        format!(
            " A uniform sample of {drawn} of the {} images is drawn.",
            data.rows
        )
    } else {
        String::new()
    };
    let grouping = if legend.other_labels > 0 {
        format!(
            " The {} labels with the most images have a colour each; the other {} labels \
             ({} images) are grey.",
            legend.named, legend.other_labels, legend.other_images
        )
    } else {
        String::new()
    };
    let _ = write!(
        html,
        "<p>Each point is one image, placed by its first two principal components and \
         coloured by label: images of one fruit should gather.{grouping}{sample}</p>\n\
         <img src=\"{}\" alt=\"Scatter plot of PCA components 1 and 2, coloured by label\">\n",
        escape(image)
    );
}

fn counts(html: &mut String, data: &RunData, image: &str) {
    let _ = write!(
        html,
        "<h2>Images per label</h2>\n<p>{} images in {} labels (a label is the name of the \
         folder an image is in).{}</p>\n<div class=\"row\">\n<img src=\"{}\" alt=\"Bar chart of the \
         number of images per label\">\n",
        data.rows,
        data.labels.len(),
        if data.labels.len() > MAX_BARS {
            format!(" The chart shows the {MAX_BARS} largest; the table lists them all.")
        } else {
            String::new()
        },
        escape(image)
    );
    let legend = Legend::of(&data.labels);
    let _ = write!(
        html,
        "<details{}>\n<summary>All {} labels with their image counts</summary>\n<table>\n\
         <tr><th>label</th><th class=\"num\">images</th></tr>\n",
        if data.labels.len() <= 40 { " open" } else { "" },
        data.labels.len()
    );
    for (i, (label, count)) in data.labels.iter().enumerate() {
        let swatch = if i < legend.named {
            let c = PALETTE[i];
            format!(
                "<span class=\"swatch\" style=\"background:#{:02x}{:02x}{:02x}\"></span>",
                c.0, c.1, c.2
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            html,
            "<tr><td>{swatch}{}</td><td class=\"num\">{count}</td></tr>",
            escape(label)
        );
    }
    html.push_str("</table>\n</details>\n</div>\n");
}

fn errors(html: &mut String, data: &RunData) {
    html.push_str("<h2>Errors</h2>\n");
    let errors = &data.errors;
    if errors.total == 0 {
        html.push_str(
            "<p class=\"ok\">No errors: every listed image was read, decoded and featurized.</p>\n",
        );
        return;
    }
    let _ = write!(
        html,
        "<p>{} image{} could not be featurized; they are listed one by one in \
         <code>errors/</code>. By stage and reason:</p>\n<table>\n<tr><th>stage</th>\
         <th>reason</th><th class=\"num\">images</th><th>example</th></tr>\n",
        errors.total,
        if errors.total == 1 { "" } else { "s" }
    );
    for group in &errors.groups {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"path\">{}<br>\
             <span class=\"muted\">{}</span></td></tr>",
            escape(&group.stage),
            escape(&group.kind),
            group.count,
            escape(&group.example_path),
            escape(&group.example_reason)
        );
    }
    html.push_str("</table>\n");
}

fn classifier(html: &mut String, evaluation: &Evaluation, confusion: Option<&str>) {
    let _ = write!(
        html,
        "<h2>Classifier</h2>\n<p>Scores on the <strong>{}</strong> split ({} images, {} \
         labels).</p>\n<div class=\"figures\">\n\
         <div class=\"figure\"><b>{}</b>top-1 accuracy</div>\n\
         <div class=\"figure\"><b>{}</b>top-5 accuracy</div>\n",
        escape(if evaluation.split.is_empty() {
            "evaluation"
        } else {
            &evaluation.split
        }),
        evaluation.images,
        evaluation.labels.len(),
        percent(evaluation.top1),
        percent(evaluation.top5)
    );
    if let Some(knn) = &evaluation.knn_baseline {
        let _ = writeln!(
            html,
            "<div class=\"figure\"><b>{}</b>kNN baseline top-1 (k = {})</div>",
            percent(knn.top1),
            knn.k
        );
    }
    html.push_str("</div>\n");
    if let Some(image) = confusion {
        let _ = writeln!(
            html,
            "<p>Confusion matrix: row = true label, column = predicted label, shade = share \
             of the row (the diagonal is each label's recall).</p>\n<img src=\"{}\" \
             alt=\"Confusion matrix heat map\">",
            escape(image)
        );
    }
    html.push_str(
        "<table>\n<tr><th>#</th><th>label</th><th class=\"num\">precision</th>\
         <th class=\"num\">recall</th><th class=\"num\">support</th></tr>\n",
    );
    let score = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.3}"));
    for (i, class) in evaluation.per_class.iter().enumerate() {
        let _ = writeln!(
            html,
            "<tr><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            i + 1,
            escape(&class.label),
            score(class.precision),
            score(class.recall),
            class.support
        );
    }
    html.push_str("</table>\n");
}

/// Rejection: the answered share, the risk–coverage curve, and the photos
/// behind the figures (worst confusions, rejections, wrong answers).
fn open_set(html: &mut String, evaluation: &Evaluation, images: &Images<'_>) {
    if let Some(open) = &evaluation.open_set {
        let _ = write!(
            html,
            "<h2>\"I don't know\"</h2>\n<div class=\"figures\">\n\
             <div class=\"figure\"><b>{}</b>photos of known labels answered</div>\n\
             <div class=\"figure\"><b>{}</b>right among the answered</div>\n</div>\n",
            percent(open.answered),
            percent(open.accuracy_among_answered)
        );
    }
    if let Some(image) = images.risk_coverage {
        let _ = writeln!(
            html,
            "<p>Each point is a max-softmax threshold: a higher one answers fewer photos and \
             is right more often among them. The dot is the threshold the classifier was \
             calibrated to.</p>\n<img src=\"{}\" alt=\"Risk–coverage curve\">",
            escape(image)
        );
    }
    let Some(examples) = &evaluation.examples else {
        return;
    };
    let groups = [
        (
            "Most frequent confusions",
            "true label → the label given",
            &examples.confused,
        ),
        (
            "Photos of known labels that got no label",
            "true label; the best guess and the rule that withheld it",
            &examples.rejected,
        ),
        (
            "Photos that should have got no label but did",
            "folder; the label given",
            &examples.wrongly_answered,
        ),
    ];
    for (title, legend, list) in groups {
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(
            html,
            "<h3>{}</h3>\n<p>{}</p>\n<div class=\"examples\">",
            escape(title),
            escape(legend)
        );
        for example in list {
            let picture = images
                .thumbnails
                .get(&example.path)
                .map(|file| format!("<img src=\"{}\" alt=\"\">", escape(file)))
                .unwrap_or_default();
            let verdict = match &example.rejected_by {
                Some(rule) => format!(
                    "{} ({}), no label: {}",
                    example.predicted,
                    percent(example.confidence),
                    rule
                ),
                None => format!("→ {} ({})", example.predicted, percent(example.confidence)),
            };
            let _ = writeln!(
                html,
                "<div class=\"example\" title=\"{}\">{picture}<b>{}</b><br>{}</div>",
                escape(&example.path),
                escape(&example.label),
                escape(&verdict)
            );
        }
        html.push_str("</div>\n");
    }
}

fn run_details(html: &mut String, run: &Value) {
    html.push_str("<h2>Run</h2>\n<div class=\"parts\">\n");
    section_table(html, "Job", &run["job"], "");
    section_table(html, "Parameters", &run["parameters"], "");
    html.push_str(
        "<section><h3>Timings</h3>\n<table>\n<tr><th>step</th><th class=\"num\">value</th></tr>\n",
    );
    let mut rows = Vec::new();
    flatten(&run["timings"], "", &mut rows);
    for (name, value) in rows {
        let shown = match (value.as_f64(), name.ends_with("_s")) {
            (Some(s), true) => seconds(s),
            _ => scalar(&value),
        };
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td class=\"num\">{}</td></tr>",
            escape(&name),
            escape(&shown)
        );
    }
    html.push_str("</table></section>\n");
    section_table(html, "Counts", &run["counts"], "");
    section_table(html, "Model", &run["model"], "");
    section_table(html, "Versions", &run["versions"], "");
    html.push_str("</div>\n");
    if let (Some(start), Some(end)) = (run["started_at"].as_str(), run["finished_at"].as_str()) {
        let _ = writeln!(
            html,
            "<p class=\"muted\">Started {}, finished {}.</p>",
            escape(start),
            escape(end)
        );
    }
    if run.get("cluster").is_some_and(|c| !c.is_null()) {
        html.push_str("<p>The run went through a Ballista cluster (see <code>run.json</code>, section <code>cluster</code>).</p>\n");
    }
}

/// A table of an object's fields (nested objects flattened as `a.b`).
fn section_table(html: &mut String, title: &str, value: &Value, prefix: &str) {
    let mut rows = Vec::new();
    flatten(value, prefix, &mut rows);
    if rows.is_empty() {
        return;
    }
    let _ = write!(
        html,
        "<section><h3>{}</h3>\n<table>\n<tr><th>name</th><th>value</th></tr>\n",
        escape(title)
    );
    for (name, value) in rows {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td></tr>",
            escape(&name),
            escape(&scalar(&value))
        );
    }
    html.push_str("</table></section>\n");
}

fn flatten(value: &Value, prefix: &str, rows: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields {
                let name = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}.{name}")
                };
                flatten(field, &name, rows);
            }
        }
        Value::Null if prefix.is_empty() => {}
        other => rows.push((prefix.to_string(), other.clone())),
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::Null => "–".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

fn seconds(s: f64) -> String {
    if s >= 100.0 {
        format!("{s:.0} s")
    } else if s >= 1.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.0} ms", s * 1000.0)
    }
}

/// `run.json` as a tree, so its sections render as generic tables.
fn run_value(data: &RunData) -> Value {
    serde_json::to_value(&data.run).expect("a run record always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"a<b&c> "d" 'e'"#),
            "a&lt;b&amp;c&gt; &quot;d&quot; &#39;e&#39;"
        );
        assert_eq!(escape("Äpfel Grün"), "Äpfel Grün");
    }

    #[test]
    fn flatten_names_nested_fields() {
        let v = serde_json::json!({"a": 1, "b": {"c": "x", "d": null}});
        let mut rows = Vec::new();
        flatten(&v, "", &mut rows);
        let names: Vec<&str> = rows.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b.c", "b.d"]);
        assert_eq!(scalar(&rows[2].1), "–");
    }

    #[test]
    fn seconds_are_readable() {
        assert_eq!(seconds(0.0123), "12 ms");
        assert_eq!(seconds(12.345), "12.35 s");
        assert_eq!(seconds(1234.0), "1234 s");
    }
}
