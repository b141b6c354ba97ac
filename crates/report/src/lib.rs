//! `verger report`: a finished verger output as a page people can look at.
//!
//! This crate owns the visual report. It reads a *finished* output (one
//! with `_SUCCESS`) through [`verger_store::Location`], locally or on S3:
//! `run.json`, `pca_model.json`, the `label` and `pca` columns of
//! `features/` and the rows of `errors/`; optionally the classifier's
//! `evaluation.json` ([`Evaluation`]). It writes a folder that opens offline
//! (no script, no CDN):
//!
//! ```text
//! report/
//!   index.html      counts, tables, run parameters and timings; every text from the data escaped
//!   scree.png       explained variance per component, and cumulative
//!   pca.png         components 1 and 2 coloured by label (20 named, the rest grey "other")
//!   labels.png      images per label (horizontal bars, largest first)
//!   confusion.png   with --evaluation: the confusion matrix as a heat map
//!   risk_coverage.png  with --evaluation (version 2): answered share vs right among answered
//!   examples/NNN.png   thumbnails of the evaluation's example photos (worst confusions,
//!                      rejections, wrong answers), read from the run's input
//! ```
//!
//! Plots are drawn by `plotters` into a buffer and encoded with `image`;
//! text uses DejaVu Sans embedded in the binary (crate `dejavu`), so no
//! system font is needed.
//!
//! It never writes into the output it reads, and knows nothing of
//! DataFusion or Ballista, the model or HTTP: only the output's documented
//! layout (`verger-output`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), verger_report::ReportError> {
//! let config = verger_report::ReportConfig::new("out/sample", "report");
//! let written = verger_report::write_report(&config).await?;
//! println!("open {}", written.index);
//! # Ok(()) }
//! ```

mod evaluation;
mod html;
mod input;
mod plots;
#[cfg(test)]
mod synthetic_tests;

pub use evaluation::{ClassScore, Evaluation, KnnBaseline};
pub use html::escape;
pub use input::{ErrorGroup, ErrorSummary, MAX_POINTS, Point, RunData, read_run};
pub use plots::{Legend, MAX_BARS, PALETTE};

use verger_store::{Location, StoreError};

/// The page, and the pictures beside it.
pub const INDEX_FILE: &str = "index.html";
pub const SCREE_FILE: &str = "scree.png";
pub const SCATTER_FILE: &str = "pca.png";
pub const COUNTS_FILE: &str = "labels.png";
pub const CONFUSION_FILE: &str = "confusion.png";
pub const RISK_COVERAGE_FILE: &str = "risk_coverage.png";
/// Folder of the example photos' thumbnails.
pub const EXAMPLES_DIR: &str = "examples";

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(
        "{output} is not a finished verger output: {missing} is missing \
         (the run is still going, failed or was interrupted; `verger run --resume` finishes it)"
    )]
    NotFinished { output: String, missing: String },
    #[error("{output} is not a complete verger output: {missing} is missing")]
    MissingDocument { output: String, missing: String },
    #[error("cannot read {file}: {reason}")]
    Document { file: String, reason: String },
    #[error("cannot read Parquet {target}: {reason}")]
    Parquet { target: String, reason: String },
    #[error("evaluation {file} cannot be used: {reason}")]
    Evaluation { file: String, reason: String },
    #[error("cannot draw {plot}: {reason}")]
    Plot { plot: &'static str, reason: String },
    #[error(
        "the report cannot go inside the output it describes ({out} is in {input}); \
         choose another --out, e.g. beside it"
    )]
    OutInsideInput { out: String, input: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What to report on and where.
#[derive(Debug, Clone)]
pub struct ReportConfig {
    /// The output of `verger run`: a folder or `s3://bucket/prefix`.
    pub input: String,
    /// Where the page goes: a folder (created) or `s3://bucket/prefix`.
    pub out: String,
    /// `evaluation.json` of `verger evaluate` (a file or an `s3://` key).
    pub evaluation: Option<String>,
}

impl ReportConfig {
    pub fn new(input: impl Into<String>, out: impl Into<String>) -> Self {
        ReportConfig {
            input: input.into(),
            out: out.into(),
            evaluation: None,
        }
    }
}

/// What a report run wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// The page, as users see it (`/abs/report/index.html` or an `s3://` URL).
    pub index: String,
    /// Every file written, page first.
    pub files: Vec<String>,
    pub images: u64,
    pub labels: usize,
    pub errors: u64,
}

/// Reads the output at `config.input` and writes the report to `config.out`.
pub async fn write_report(config: &ReportConfig) -> Result<Written, ReportError> {
    plots::register_fonts().map_err(|reason| ReportError::Plot {
        plot: "text",
        reason,
    })?;
    let input = Location::parse(&config.input)?;
    let evaluation = match &config.evaluation {
        Some(file) => Some(read_evaluation(file).await?),
        None => None,
    };
    let data = read_run(&input).await?;
    let out = Location::parse_for_output(&config.out)?;
    let (input_root, out_root) = (input.display_root(), out.display_root());
    if out_root == input_root || out_root.starts_with(&format!("{input_root}/")) {
        return Err(ReportError::OutInsideInput {
            out: out_root.to_string(),
            input: input_root.to_string(),
        });
    }

    let mut files = Vec::new();
    let mut write = async |name: &str, bytes: Vec<u8>| -> Result<(), ReportError> {
        out.write(name, bytes).await?;
        files.push(out.display_key(&out.key(name)));
        Ok(())
    };
    let drawn = |plot: &'static str, result: Result<Vec<u8>, String>| {
        result.map_err(|reason| ReportError::Plot { plot, reason })
    };
    write(
        SCREE_FILE,
        drawn("the scree plot", plots::scree(&data.pca.explained_variance))?,
    )
    .await?;
    let has_plane = data.pca.k >= 2 && !data.points.is_empty();
    if has_plane {
        let png = plots::scatter(&data.points, &data.labels, &data.pca.explained_variance);
        write(SCATTER_FILE, drawn("the PCA scatter", png)?).await?;
    }
    write(
        COUNTS_FILE,
        drawn("the label counts", plots::label_counts(&data.labels))?,
    )
    .await?;
    let mut has_curve = false;
    let mut thumbnails = std::collections::HashMap::new();
    if let Some(evaluation) = &evaluation {
        let png = plots::confusion(&evaluation.labels, &evaluation.confusion);
        write(CONFUSION_FILE, drawn("the confusion matrix", png)?).await?;
        if let Some(open) = evaluation
            .open_set
            .as_ref()
            .filter(|o| !o.risk_coverage.is_empty())
        {
            let curve: Vec<(f64, f64)> = open
                .risk_coverage
                .iter()
                .map(|p| (p.answered, p.accuracy_among_answered))
                .collect();
            let operating = (open.answered, open.accuracy_among_answered);
            let png = plots::risk_coverage(&curve, operating);
            write(RISK_COVERAGE_FILE, drawn("the risk–coverage curve", png)?).await?;
            has_curve = true;
        }
        for example in evaluation.examples.iter().flat_map(|e| {
            e.confused
                .iter()
                .chain(&e.rejected)
                .chain(&e.wrongly_answered)
        }) {
            if thumbnails.contains_key(&example.path) {
                continue;
            }
            // evaluation.json is a file from outside: read only photos of
            // the run's own input, never `..` or another folder's files.
            if !is_input_photo(&example.path, &data.run.job.input) {
                tracing::warn!(path = %example.path, input = %data.run.job.input, "an example photo outside the run's input is not shown");
                continue;
            }
            // A photo that moved or does not decode costs its picture, not the report.
            match read_photo(&example.path)
                .await
                .and_then(|b| plots::thumbnail(&b))
            {
                Ok(png) => {
                    let name = format!("{EXAMPLES_DIR}/{:03}.png", thumbnails.len());
                    write(&name, png).await?;
                    thumbnails.insert(example.path.clone(), name);
                }
                Err(reason) => {
                    tracing::warn!(path = %example.path, %reason, "no thumbnail for an example photo")
                }
            }
        }
    }
    let images = html::Images {
        scree: SCREE_FILE,
        scatter: has_plane.then_some(SCATTER_FILE),
        counts: COUNTS_FILE,
        confusion: evaluation.as_ref().map(|_| CONFUSION_FILE),
        risk_coverage: has_curve.then_some(RISK_COVERAGE_FILE),
        thumbnails: &thumbnails,
    };
    let page = html::page(&data, evaluation.as_ref(), &images);
    write(INDEX_FILE, page.into_bytes()).await?;
    files.rotate_right(1);
    tracing::info!(report = %files[0], files = files.len(), "wrote the report");
    Ok(Written {
        index: files[0].clone(),
        files,
        images: data.rows,
        labels: data.labels.len(),
        errors: data.errors.total,
    })
}

/// Whether `path` lies under the run's input `root` (a folder or an
/// `s3://` prefix), with no `..` or empty component on the way.
fn is_input_photo(path: &str, root: &str) -> bool {
    let root = root.trim_end_matches('/');
    path.strip_prefix(root)
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|rest| {
            rest.split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..")
        })
}

/// The bytes of one photo of the run's input, by the path its row names
/// (a local path or an `s3://` URL).
async fn read_photo(path: &str) -> Result<Vec<u8>, String> {
    let (folder, name) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("{path} is not a path to a file"))?;
    let location =
        Location::parse(if folder.is_empty() { "/" } else { folder }).map_err(|e| e.to_string())?;
    let bytes = location
        .read(&location.key(name))
        .await
        .map_err(|e| e.to_string())?;
    Ok(bytes.to_vec())
}

/// Reads `evaluation.json` from a local file or an `s3://` key.
async fn read_evaluation(file: &str) -> Result<Evaluation, ReportError> {
    let (folder, name) = match file.rsplit_once('/') {
        Some((folder, name)) if !folder.is_empty() && !folder.ends_with(':') => (folder, name),
        Some(("", name)) => ("/", name),
        _ => (".", file),
    };
    let failed = |reason: String| ReportError::Evaluation {
        file: file.to_string(),
        reason,
    };
    let location = Location::parse(folder).map_err(|e| failed(e.to_string()))?;
    if name.is_empty() || !location.exists(name).await? {
        return Err(failed("no such file".to_string()));
    }
    let bytes = location.read(&location.key(name)).await?;
    Evaluation::parse(&bytes).map_err(failed)
}

#[cfg(test)]
mod input_photo_tests {
    use super::is_input_photo;

    #[test]
    fn only_photos_under_the_runs_input_are_read() {
        assert!(is_input_photo("/data/in/fruit/Kiwi/a.jpg", "/data/in"));
        assert!(is_input_photo("s3://b/p/Kiwi/a.jpg", "s3://b/p/"));
        for outside in [
            "/data/input-other/Kiwi/a.jpg",
            "/data/in/../secret/a.jpg",
            "/data/in//a.jpg",
            "/etc/passwd",
            "/data/in",
            "/dev/zero",
        ] {
            assert!(!is_input_photo(outside, "/data/in"), "{outside}");
        }
    }
}
