//! Reading a finished output: the documents, the label counts, a bounded
//! sample of PCA points and the failures grouped by reason.
//!
//! Everything is streamed part by part, reading only the columns the report
//! needs (`label` and `pca` of `features/`, never the 1280-d vectors), so
//! memory stays bounded by the number of labels and [`MAX_POINTS`], not by
//! the number of images.

use std::collections::HashMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use futures::StreamExt;
use verger_output::{
    ERRORS_DIR, FEATURES_DIR, PCA_MODEL_FILE, RUN_FILE, RunRecord, SUCCESS_FILE, list_parquet,
};
use verger_pca::PcaModel;
use verger_store::{Location, ObjectKey};

use crate::ReportError;

/// At most this many points are drawn in the PCA scatter (a uniform,
/// reproducible sample beyond it): more only hides the shape under ink.
pub const MAX_POINTS: usize = 20_000;

/// What a report is made of, read from one finished output.
#[derive(Debug, Clone)]
pub struct RunData {
    /// The output as users see it (`/abs/folder` or `s3://bucket/prefix`).
    pub root: String,
    /// `run.json`: the page shows its job, parameters, timings and counts.
    pub run: RunRecord,
    /// `pca_model.json`.
    pub pca: PcaModel,
    /// Images per label, most frequent first (ties by name).
    pub labels: Vec<(String, u64)>,
    /// Rows read from `features/`.
    pub rows: u64,
    /// Components 1 and 2 of at most [`MAX_POINTS`] rows; `label` indexes
    /// [`RunData::labels`]. Empty when the PCA has a single component.
    pub points: Vec<Point>,
    pub errors: ErrorSummary,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub label: usize,
    pub x: f64,
    pub y: f64,
}

/// The rows of `errors/`, grouped by stage and kind of reason.
#[derive(Debug, Clone, Default)]
pub struct ErrorSummary {
    pub total: u64,
    /// Most frequent first.
    pub groups: Vec<ErrorGroup>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorGroup {
    pub stage: String,
    /// The failure kind (`errors/`'s `kind` column: not_an_image, corrupt, …).
    pub kind: String,
    pub count: u64,
    pub example_path: String,
    /// The example's full reason.
    pub example_reason: String,
}

/// Reads the output at `location`, refusing one that is not finished.
pub async fn read_run(location: &Location) -> Result<RunData, ReportError> {
    let root = location.display_root().to_string();
    if !location.exists(SUCCESS_FILE).await? {
        return Err(ReportError::NotFinished {
            output: root,
            missing: location.display_key(&location.key(SUCCESS_FILE)),
        });
    }
    require(location, RUN_FILE).await?;
    let run = RunRecord::read(location).await.map_err(document_error)?;
    require(location, PCA_MODEL_FILE).await?;
    let pca: PcaModel = verger_output::read_json(location, PCA_MODEL_FILE)
        .await
        .map_err(document_error)?;
    let (labels, rows, points) = read_features(location, pca.k).await?;
    let errors = read_errors(location).await?;
    tracing::info!(
        output = %root,
        rows,
        labels = labels.len(),
        errors = errors.total,
        "read the run"
    );
    Ok(RunData {
        root,
        run,
        pca,
        labels,
        rows,
        points,
        errors,
    })
}

/// A missing document is named in the error (before any read fails on it).
async fn require(location: &Location, file: &str) -> Result<(), ReportError> {
    if !location.exists(file).await? {
        return Err(ReportError::MissingDocument {
            output: location.display_root().to_string(),
            missing: location.display_key(&location.key(file)),
        });
    }
    Ok(())
}

fn document_error(e: verger_output::OutputError) -> ReportError {
    match e {
        verger_output::OutputError::Document { file, reason } => {
            ReportError::Document { file, reason }
        }
        other => ReportError::Document {
            file: RUN_FILE.to_string(),
            reason: other.to_string(),
        },
    }
}

/// The Parquet parts of a table folder, in name order.
async fn parts(location: &Location, dir: &str) -> Result<Vec<ObjectKey>, ReportError> {
    list_parquet(location, dir)
        .await
        .map_err(|e| ReportError::Parquet {
            target: location.display_key(&location.key(dir)),
            reason: e.to_string(),
        })
}

/// The batches of one part, only the named columns.
async fn read_part(
    location: &Location,
    key: &ObjectKey,
    columns: &[&str],
) -> Result<impl futures::Stream<Item = Result<RecordBatch, ReportError>> + use<>, ReportError> {
    let target = location.display_key(key);
    let into_report = move |e: verger_output::OutputError| match e {
        verger_output::OutputError::Parquet { target, reason } => {
            ReportError::Parquet { target, reason }
        }
        other => ReportError::Parquet {
            target: target.clone(),
            reason: other.to_string(),
        },
    };
    let stream = verger_output::read_columns(location, key, columns)
        .await
        .map_err(&into_report)?;
    Ok(stream.map(move |batch| batch.map_err(&into_report)))
}

fn column_error(target: &str, reason: impl Into<String>) -> ReportError {
    ReportError::Parquet {
        target: target.to_string(),
        reason: reason.into(),
    }
}

/// Label counts, the number of rows and a sample of (pc1, pc2) points.
async fn read_features(
    location: &Location,
    k: usize,
) -> Result<(Vec<(String, u64)>, u64, Vec<Point>), ReportError> {
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut counts: Vec<(String, u64)> = Vec::new();
    let mut sample = Reservoir::new(MAX_POINTS);
    let mut rows = 0u64;
    for key in parts(location, FEATURES_DIR).await? {
        let target = location.display_key(&key);
        let mut batches = read_part(location, &key, &["label", "pca"]).await?;
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            let schema = batch.schema();
            let label_at = schema
                .index_of("label")
                .map_err(|e| column_error(&target, e.to_string()))?;
            let pca_at = schema
                .index_of("pca")
                .map_err(|e| column_error(&target, e.to_string()))?;
            let label = batch
                .column(label_at)
                .as_string_opt::<i32>()
                .ok_or_else(|| column_error(&target, "column label is not a string"))?;
            let pca = batch
                .column(pca_at)
                .as_list_opt::<i32>()
                .ok_or_else(|| column_error(&target, "column pca is not a list"))?;
            let values = arrow::compute::cast(pca.values(), &DataType::Float64)
                .map_err(|e| column_error(&target, format!("column pca: {e}")))?;
            let values = values.as_primitive::<Float64Type>();
            let offsets = pca.value_offsets();
            for row in 0..batch.num_rows() {
                let name = if label.is_null(row) {
                    ""
                } else {
                    label.value(row)
                };
                let id = match ids.get(name) {
                    Some(&id) => id,
                    None => {
                        ids.insert(name.to_string(), counts.len());
                        counts.push((name.to_string(), 0));
                        counts.len() - 1
                    }
                };
                counts[id].1 += 1;
                rows += 1;
                let start = offsets[row] as usize;
                if k >= 2 && offsets[row + 1] as usize >= start + 2 {
                    let (x, y) = (values.value(start), values.value(start + 1));
                    if x.is_finite() && y.is_finite() {
                        sample.offer(Point { label: id, x, y });
                    }
                }
            }
        }
    }
    // Final order: most images first; points re-indexed to match.
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by(|&a, &b| {
        counts[b]
            .1
            .cmp(&counts[a].1)
            .then(counts[a].0.cmp(&counts[b].0))
    });
    let mut rank = vec![0; counts.len()];
    for (position, &id) in order.iter().enumerate() {
        rank[id] = position;
    }
    let labels = order.iter().map(|&id| counts[id].clone()).collect();
    let points = sample
        .into_items()
        .into_iter()
        .map(|p| Point {
            label: rank[p.label],
            ..p
        })
        .collect();
    Ok((labels, rows, points))
}

async fn read_errors(location: &Location) -> Result<ErrorSummary, ReportError> {
    let mut groups: HashMap<(String, String), ErrorGroup> = HashMap::new();
    let mut total = 0u64;
    for key in parts(location, ERRORS_DIR).await? {
        let target = location.display_key(&key);
        let mut batches = read_part(location, &key, &["path", "stage", "kind", "reason"]).await?;
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            let schema = batch.schema();
            let column = |name: &str| {
                let at = schema
                    .index_of(name)
                    .map_err(|e| column_error(&target, e.to_string()))?;
                batch
                    .column(at)
                    .as_string_opt::<i32>()
                    .ok_or_else(|| column_error(&target, format!("column {name} is not a string")))
            };
            let (path, stage, kind, reason) = (
                column("path")?,
                column("stage")?,
                column("kind")?,
                column("reason")?,
            );
            for row in 0..batch.num_rows() {
                total += 1;
                let group = groups
                    .entry((stage.value(row).to_string(), kind.value(row).to_string()))
                    .or_insert_with(|| ErrorGroup {
                        stage: stage.value(row).to_string(),
                        kind: kind.value(row).to_string(),
                        count: 0,
                        example_path: path.value(row).to_string(),
                        example_reason: reason.value(row).to_string(),
                    });
                group.count += 1;
            }
        }
    }
    let mut groups: Vec<ErrorGroup> = groups.into_values().collect();
    groups.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.stage.cmp(&b.stage))
            .then_with(|| a.kind.cmp(&b.kind))
    });
    Ok(ErrorSummary { total, groups })
}

/// A uniform sample of at most `capacity` items of a stream of unknown
/// length (Vitter's algorithm R), with a fixed seed so a report of the same
/// output always draws the same points.
struct Reservoir<T> {
    items: Vec<T>,
    capacity: usize,
    seen: u64,
    state: u64,
}

impl<T> Reservoir<T> {
    fn new(capacity: usize) -> Self {
        Reservoir {
            items: Vec::new(),
            capacity,
            seen: 0,
            state: 0x9E37_79B9_7F4A_7C15,
        }
    }

    fn offer(&mut self, item: T) {
        self.seen += 1;
        if self.items.len() < self.capacity {
            self.items.push(item);
            return;
        }
        let slot = self.next() % self.seen;
        if let Some(kept) = self.items.get_mut(slot as usize) {
            *kept = item;
        }
    }

    /// splitmix64.
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn into_items(self) -> Vec<T> {
        self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservoir_keeps_everything_below_capacity_and_caps_above() {
        let mut small = Reservoir::new(10);
        (0..7).for_each(|i| small.offer(i));
        assert_eq!(small.into_items(), (0..7).collect::<Vec<_>>());

        let mut big = Reservoir::new(100);
        (0..10_000).for_each(|i| big.offer(i));
        let kept = big.into_items();
        assert_eq!(kept.len(), 100);
        // Uniform: the sample reaches into the late part of the stream.
        assert!(
            kept.iter().filter(|&&i| i >= 5_000).count() > 20,
            "{kept:?}"
        );
    }
}
