//! Reading the feature vectors of a `verger run` output.

use arrow::array::{Array, AsArray};
use arrow::datatypes::Float32Type;
use futures::StreamExt;
use verger_output::{FEATURES_DIR, RunRecord, SUCCESS_FILE, VIEWS_DIR};
use verger_store::Location;

use crate::ClassifierError;

/// Feature rows of one run output, sorted by path.
#[derive(Debug, Clone, Default)]
pub struct FeatureTable {
    /// The output they were read from, as users see it.
    pub location: String,
    /// `run.json`'s `model.sha256`: the feature model that made them.
    pub model_sha256: String,
    /// Values per row (1280 for MobileNetV2).
    pub dim: usize,
    pub paths: Vec<String>,
    pub labels: Vec<String>,
    /// rows × dim, row-major.
    pub features: Vec<f32>,
}

impl FeatureTable {
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.dim..(i + 1) * self.dim]
    }

    /// The rows whose path has a folder named `split` (`…/<split>/<label>/x.jpg`).
    pub fn split(&self, split: &str) -> FeatureTable {
        self.keep(|path| in_split(path, split))
    }

    /// The rows whose path `keep` accepts.
    pub fn keep(&self, keep: impl Fn(&str) -> bool) -> FeatureTable {
        let keep: Vec<usize> = (0..self.len())
            .filter(|&i| keep(self.paths[i].as_str()))
            .collect();
        FeatureTable {
            location: self.location.clone(),
            model_sha256: self.model_sha256.clone(),
            dim: self.dim,
            paths: keep.iter().map(|&i| self.paths[i].clone()).collect(),
            labels: keep.iter().map(|&i| self.labels[i].clone()).collect(),
            features: keep.iter().flat_map(|&i| self.row(i)).copied().collect(),
        }
    }

    /// The distinct labels, sorted.
    pub fn distinct_labels(&self) -> Vec<String> {
        let mut labels = self.labels.clone();
        labels.sort();
        labels.dedup();
        labels
    }
}

/// Whether `path` has a folder component equal to `split` (the file name
/// itself does not count).
pub fn in_split(path: &str, split: &str) -> bool {
    let mut parts: Vec<&str> = path.split('/').collect();
    parts.pop();
    parts.contains(&split)
}

/// The sha256 of the feature model that made a complete `verger run`
/// output (`run.json`'s `model.sha256`); refuses an output without `_SUCCESS`.
pub async fn feature_model_sha256(location: &Location) -> Result<String, ClassifierError> {
    let failed = |reason: String| ClassifierError::Features {
        location: location.display_root().to_string(),
        reason,
    };
    if !location.exists(SUCCESS_FILE).await? {
        return Err(failed(format!(
            "no {SUCCESS_FILE}: it is not the output of a finished `verger run` \
             (interrupted, still running, or not a verger output)"
        )));
    }
    let run = RunRecord::read(location)
        .await
        .map_err(|e| failed(e.to_string()))?;
    Ok(run.model.sha256)
}

/// Reads `features/*.parquet` (path, label, features) and the feature
/// model's sha256 from `run.json` of a complete `verger run` output,
/// keeping the rows whose path `keep` accepts.
pub async fn read_features(
    location: &Location,
    keep: &(dyn Fn(&str) -> bool + Sync),
) -> Result<FeatureTable, ClassifierError> {
    let model_sha256 = feature_model_sha256(location).await?;
    let rows = read_rows(location, FEATURES_DIR, false, keep).await?;
    Ok(FeatureTable::from_rows(location, model_sha256, rows))
}

/// The `views/` rows of a `verger run --views` output: one per photo and
/// view, sorted by path, then in the run's view order.
#[derive(Debug, Clone, Default)]
pub struct ViewRows {
    /// The run's views, in order (`run.json`'s `job.views`).
    pub names: Vec<String>,
    /// One row per (photo, view).
    pub rows: FeatureTable,
    /// Each row's view, as an index into `names`.
    pub view: Vec<usize>,
}

impl ViewRows {
    /// One row per photo: the mean of its views named in `average`, which
    /// must all be views of the run. A photo missing one is an error.
    pub fn averaged(&self, average: &[String]) -> Result<FeatureTable, ClassifierError> {
        let failed = |reason: String| ClassifierError::Features {
            location: self.rows.location.clone(),
            reason,
        };
        let wanted: Vec<usize> = average
            .iter()
            .map(|name| {
                self.names.iter().position(|n| n == name).ok_or_else(|| {
                    failed(format!(
                        "the run has no view {name:?} (its views: {})",
                        self.names.join(", ")
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        let dim = self.rows.dim;
        let mut table = FeatureTable {
            location: self.rows.location.clone(),
            model_sha256: self.rows.model_sha256.clone(),
            dim,
            ..FeatureTable::default()
        };
        let mut i = 0;
        while i < self.rows.len() {
            let path = &self.rows.paths[i];
            let end = (i..self.rows.len())
                .find(|&j| &self.rows.paths[j] != path)
                .unwrap_or(self.rows.len());
            let mut sum = vec![0.0f32; dim];
            for &want in &wanted {
                let row = (i..end).find(|&j| self.view[j] == want).ok_or_else(|| {
                    failed(format!("{path} has no row for view {:?}", self.names[want]))
                })?;
                for (s, x) in sum.iter_mut().zip(self.rows.row(row)) {
                    *s += x;
                }
            }
            table.paths.push(path.clone());
            table.labels.push(self.rows.labels[i].clone());
            table
                .features
                .extend(sum.iter().map(|s| s / wanted.len() as f32));
            i = end;
        }
        Ok(table)
    }

    /// For each row, the index of its photo in [`ViewRows::averaged`]'s order.
    pub fn photo_of_rows(&self) -> Vec<usize> {
        let mut photo = 0;
        (0..self.rows.len())
            .map(|i| {
                if i > 0 && self.rows.paths[i] != self.rows.paths[i - 1] {
                    photo += 1;
                }
                photo
            })
            .collect()
    }
}

/// Reads `views/*.parquet` of a complete `verger run --views` output,
/// keeping the photos whose path `keep` accepts; `None` when the run was
/// made without `--views`.
pub async fn read_views(
    location: &Location,
    keep: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Option<ViewRows>, ClassifierError> {
    feature_model_sha256(location).await?;
    let run = RunRecord::read(location)
        .await
        .map_err(|e| ClassifierError::Features {
            location: location.display_root().to_string(),
            reason: e.to_string(),
        })?;
    if run.job.views.is_empty() {
        return Ok(None);
    }
    let names = run.job.views.clone();
    let mut rows = read_rows(location, VIEWS_DIR, true, keep).await?;
    let order = |view: &Option<String>| {
        let view = view.as_deref().unwrap_or_default();
        names.iter().position(|n| n == view)
    };
    if let Some(row) = rows.iter().find(|r| order(&r.view).is_none()) {
        return Err(ClassifierError::Features {
            location: location.display_root().to_string(),
            reason: format!(
                "{} has a row for view {:?}, which run.json does not list",
                row.path,
                row.view.as_deref().unwrap_or_default()
            ),
        });
    }
    rows.sort_by_key(|r| (r.path.clone(), order(&r.view)));
    let view = rows.iter().filter_map(|r| order(&r.view)).collect();
    let rows = FeatureTable::from_rows(location, run.model.sha256, rows);
    Ok(Some(ViewRows { names, rows, view }))
}

/// One row of a features or views table.
struct Row {
    path: String,
    label: String,
    view: Option<String>,
    features: Vec<f32>,
}

impl FeatureTable {
    /// The table of `rows`, in their order.
    fn from_rows(location: &Location, model_sha256: String, rows: Vec<Row>) -> FeatureTable {
        let mut table = FeatureTable {
            location: location.display_root().to_string(),
            model_sha256,
            dim: rows.first().map_or(0, |r| r.features.len()),
            ..FeatureTable::default()
        };
        for row in rows {
            table.paths.push(row.path);
            table.labels.push(row.label);
            table.features.extend(row.features);
        }
        tracing::debug!(location = %table.location, rows = table.len(), "features read");
        table
    }
}

/// The rows of `dir/*.parquet` (path, label, features, and `view` when
/// `with_view`) whose path `keep` accepts, sorted by path; every row must
/// have as many values as the first.
async fn read_rows(
    location: &Location,
    dir: &str,
    with_view: bool,
    keep: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Vec<Row>, ClassifierError> {
    let failed = |reason: String| ClassifierError::Features {
        location: location.display_root().to_string(),
        reason,
    };
    let keys = verger_output::list_parquet(location, dir)
        .await
        .map_err(|e| failed(e.to_string()))?;
    if keys.is_empty() {
        return Err(failed(format!("no {dir}/*.parquet")));
    }
    let mut columns = vec!["path", "label", "features"];
    if with_view {
        columns.push("view");
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut dim = None;
    for key in keys {
        let target = location.display_key(&key);
        let features_error = |e: verger_output::OutputError| ClassifierError::Features {
            location: target.clone(),
            reason: e.to_string(),
        };
        let mut stream = verger_output::read_columns(location, &key, &columns)
            .await
            .map_err(features_error)?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(features_error)?;
            let column = |name: &str| {
                batch
                    .column_by_name(name)
                    .ok_or_else(|| ClassifierError::Features {
                        location: target.clone(),
                        reason: format!("no column {name:?}"),
                    })
            };
            let bad_type = |name: &str| ClassifierError::Features {
                location: target.clone(),
                reason: format!("column {name:?} does not have the type of a verger output"),
            };
            let paths = column("path")?
                .as_string_opt::<i32>()
                .ok_or_else(|| bad_type("path"))?;
            let labels = column("label")?
                .as_string_opt::<i32>()
                .ok_or_else(|| bad_type("label"))?;
            let views = match with_view {
                true => Some(
                    column("view")?
                        .as_string_opt::<i32>()
                        .ok_or_else(|| bad_type("view"))?,
                ),
                false => None,
            };
            let lists = column("features")?
                .as_list_opt::<i32>()
                .ok_or_else(|| bad_type("features"))?;
            let values = lists
                .values()
                .as_primitive_opt::<Float32Type>()
                .ok_or_else(|| bad_type("features"))?;
            for row in 0..batch.num_rows() {
                if paths.is_null(row) || lists.is_null(row) || !keep(paths.value(row)) {
                    continue;
                }
                let range =
                    lists.value_offsets()[row] as usize..lists.value_offsets()[row + 1] as usize;
                let width = *dim.get_or_insert(range.len());
                if range.len() != width || width == 0 {
                    return Err(ClassifierError::Features {
                        location: target.clone(),
                        reason: format!(
                            "{} has {} feature values, others {width}",
                            paths.value(row),
                            range.len()
                        ),
                    });
                }
                rows.push(Row {
                    path: paths.value(row).to_string(),
                    label: labels.value(row).to_string(),
                    view: views.map(|v| v.value(row).to_string()),
                    features: values.values()[range].to_vec(),
                });
            }
        }
    }
    // Part files hold rows in the order tasks finished; sorting makes
    // training exactly repeatable.
    rows.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(rows)
}
