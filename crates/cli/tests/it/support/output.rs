//! Reading a verger output directory (`features/`, `errors/`, JSON files) with
//! the `parquet` crate.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float32Type, Float64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

use super::read_dir_sorted;

#[derive(Clone, Debug)]
pub struct FeatureRow {
    pub path: String,
    pub label: String,
    pub features: Vec<f32>,
    pub pca: Vec<f64>,
}

#[derive(Clone, Debug)]
pub struct ErrorRow {
    pub path: String,
    pub label: String,
    pub stage: String,
    pub kind: String,
    pub reason: String,
}

/// Everything a successful run leaves in its output directory.
pub struct RunDir {
    pub root: PathBuf,
    pub features: Vec<FeatureRow>,
    pub errors: Vec<ErrorRow>,
    pub run_json: Value,
    pub pca_model: Value,
    by_path: HashMap<String, usize>,
}

impl RunDir {
    /// Read `dir`; panics with a clear message if a part is missing.
    pub fn read(dir: &Path) -> Self {
        let features = read_features(&dir.join("features"));
        let errors = read_errors(&dir.join("errors"));
        let run_json = read_json(&dir.join("run.json"));
        let pca_model = read_json(&dir.join("pca_model.json"));
        let by_path = features
            .iter()
            .enumerate()
            .map(|(i, r)| (r.path.clone(), i))
            .collect();
        RunDir {
            root: dir.to_path_buf(),
            features,
            errors,
            run_json,
            pca_model,
            by_path,
        }
    }

    pub fn feature(&self, path: &str) -> Option<&FeatureRow> {
        self.by_path.get(path).map(|&i| &self.features[i])
    }

    /// `run.json` → `counts` → (listed, features, errors).
    #[track_caller]
    pub fn counts(&self) -> (u64, u64, u64) {
        let c = &self.run_json["counts"];
        let get = |k: &str| {
            c[k].as_u64().unwrap_or_else(|| {
                panic!(
                    "run.json counts.{k} missing or not an integer: {}",
                    self.run_json
                )
            })
        };
        (get("listed"), get("features"), get("errors"))
    }

    pub fn k(&self) -> usize {
        self.pca_model["k"].as_u64().expect("pca_model.json k") as usize
    }
}

pub fn read_json(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The `*.parquet` files directly in `dir`, sorted.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    assert!(dir.is_dir(), "{} is missing", dir.display());
    read_dir_sorted(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect()
}

pub fn read_batches(dir: &Path) -> Vec<RecordBatch> {
    let files = parquet_files(dir);
    assert!(!files.is_empty(), "no *.parquet in {}", dir.display());
    let mut out = Vec::new();
    for f in files {
        let file = File::open(&f).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap_or_else(|e| panic!("{} is not Parquet: {e}", f.display()))
            .build()
            .unwrap();
        for b in reader {
            out.push(b.unwrap_or_else(|e| panic!("read {}: {e}", f.display())));
        }
    }
    out
}

fn column(batch: &RecordBatch, name: &str) -> ArrayRef {
    let col = batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("column {name:?} missing; schema: {:?}", batch.schema()));
    Arc::clone(col)
}

fn strings(batch: &RecordBatch, name: &str) -> Vec<String> {
    let col = cast(&column(batch, name), &DataType::Utf8).unwrap();
    let arr = col.as_string::<i32>();
    (0..arr.len())
        .map(|i| {
            assert!(!arr.is_null(i), "null in column {name}");
            arr.value(i).to_string()
        })
        .collect()
}

fn lists<T: arrow::datatypes::ArrowPrimitiveType>(
    batch: &RecordBatch,
    name: &str,
    item: DataType,
) -> Vec<Vec<T::Native>> {
    let col = cast(&column(batch, name), &DataType::new_list(item, true)).unwrap();
    let list = col.as_list::<i32>();
    (0..list.len())
        .map(|i| {
            assert!(!list.is_null(i), "null list in column {name}");
            let v = list.value(i);
            let prim = v.as_primitive::<T>();
            assert_eq!(prim.null_count(), 0, "null element in column {name}");
            prim.values().to_vec()
        })
        .collect()
}

/// One row of `views/`.
#[derive(Clone, Debug)]
pub struct ViewRow {
    pub path: String,
    pub label: String,
    pub view: String,
    pub features: Vec<f32>,
}

pub fn read_views(dir: &Path) -> Vec<ViewRow> {
    let mut out = Vec::new();
    for b in read_batches(dir) {
        let paths = strings(&b, "path");
        let labels = strings(&b, "label");
        let views = strings(&b, "view");
        let feats = lists::<Float32Type>(&b, "features", DataType::Float32);
        for (((path, label), view), features) in paths.into_iter().zip(labels).zip(views).zip(feats)
        {
            out.push(ViewRow {
                path,
                label,
                view,
                features,
            });
        }
    }
    out
}

pub fn read_features(dir: &Path) -> Vec<FeatureRow> {
    let mut out = Vec::new();
    for b in read_batches(dir) {
        let paths = strings(&b, "path");
        let labels = strings(&b, "label");
        let feats = lists::<Float32Type>(&b, "features", DataType::Float32);
        let pcas = lists::<Float64Type>(&b, "pca", DataType::Float64);
        for (((path, label), features), pca) in paths.into_iter().zip(labels).zip(feats).zip(pcas) {
            out.push(FeatureRow {
                path,
                label,
                features,
                pca,
            });
        }
    }
    out
}

pub fn read_errors(dir: &Path) -> Vec<ErrorRow> {
    let mut out = Vec::new();
    for b in read_batches(dir) {
        let paths = strings(&b, "path");
        let labels = strings(&b, "label");
        let stages = strings(&b, "stage");
        let kinds = strings(&b, "kind");
        let reasons = strings(&b, "reason");
        for ((((path, label), stage), kind), reason) in paths
            .into_iter()
            .zip(labels)
            .zip(stages)
            .zip(kinds)
            .zip(reasons)
        {
            out.push(ErrorRow {
                path,
                label,
                stage,
                kind,
                reason,
            });
        }
    }
    out
}
