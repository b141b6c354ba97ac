//! Reading the feature vectors of a `verger run` output.

use arrow::array::{Array, AsArray};
use arrow::datatypes::Float32Type;
use futures::StreamExt;
use verger_output::{FEATURES_DIR, RunRecord, SUCCESS_FILE};
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
    let root = location.display_root().to_string();
    let failed = |reason: String| ClassifierError::Features {
        location: root.clone(),
        reason,
    };
    let model_sha256 = feature_model_sha256(location).await?;

    let keys = verger_output::list_parquet(location, FEATURES_DIR)
        .await
        .map_err(|e| failed(e.to_string()))?;
    if keys.is_empty() {
        return Err(failed(format!("no {FEATURES_DIR}/*.parquet")));
    }
    let mut rows: Vec<(String, String, Vec<f32>)> = Vec::new();
    let mut dim = None;
    for key in keys {
        let target = location.display_key(&key);
        let features_error = |e: verger_output::OutputError| ClassifierError::Features {
            location: target.clone(),
            reason: e.to_string(),
        };
        let mut stream =
            verger_output::read_columns(location, &key, &["path", "label", "features"])
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
                rows.push((
                    paths.value(row).to_string(),
                    labels.value(row).to_string(),
                    values.values()[range].to_vec(),
                ));
            }
        }
    }
    // Part files hold rows in the order tasks finished; sorting makes
    // training exactly repeatable.
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let mut table = FeatureTable {
        location: root,
        model_sha256,
        dim: dim.unwrap_or(0),
        ..FeatureTable::default()
    };
    for (path, label, features) in rows {
        table.paths.push(path);
        table.labels.push(label);
        table.features.extend(features);
    }
    tracing::debug!(location = %table.location, rows = table.len(), "features read");
    Ok(table)
}
