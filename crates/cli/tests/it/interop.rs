//! The output is readable by pandas/pyarrow and DuckDB (tests/python/interop.py).

use serde_json::{Value, json};

use crate::sample::{FEATURE_DIM, sample_run};
use crate::support::{histogram, python_json};

#[test]
fn pandas_pyarrow_and_duckdb_read_the_output() {
    let s = sample_run();
    let n = s.run.features.len() as u64;
    let k = s.run.k() as u64;
    let labels = histogram(s.run.features.iter().map(|r| r.label.as_str()));
    let v: Value = python_json("interop.py", [s.out.as_os_str()]);

    // Schema as written (pyarrow type names).
    let fs = &v["features_schema"];
    assert_eq!(fs["path"], "string", "{fs}");
    assert_eq!(fs["label"], "string", "{fs}");
    assert!(
        fs["features"].as_str().unwrap().starts_with("list<")
            && fs["features"].as_str().unwrap().contains("float>"),
        "features must be list<float32>: {fs}"
    );
    assert!(
        fs["pca"].as_str().unwrap().starts_with("list<")
            && fs["pca"].as_str().unwrap().contains("double>"),
        "pca must be list<float64>: {fs}"
    );
    let es = &v["errors_schema"];
    for c in ["path", "label", "stage", "reason"] {
        assert_eq!(es[c], "string", "errors.{c}: {es}");
    }

    let p = &v["pandas"];
    assert_eq!(p["rows"].as_u64(), Some(n), "{p}");
    assert_eq!(
        p["distinct_labels"].as_u64(),
        Some(labels.len() as u64),
        "{p}"
    );
    assert_eq!(
        p["features_len_row1"].as_u64(),
        Some(FEATURE_DIM as u64),
        "{p}"
    );
    assert_eq!(p["features_lens"], json!([FEATURE_DIM]), "{p}");
    assert_eq!(p["features_dtypes"], json!(["float32"]), "{p}");
    assert_eq!(p["pca_lens"], json!([k]), "{p}");
    assert_eq!(p["pca_dtypes"], json!(["float64"]), "{p}");
    assert_eq!(p["features_all_finite"], true, "{p}");
    let want_counts: serde_json::Map<String, Value> =
        labels.iter().map(|(l, c)| (l.clone(), json!(c))).collect();
    assert_eq!(
        p["label_counts"],
        Value::Object(want_counts),
        "pandas label counts"
    );
    assert_eq!(
        v["pandas_errors"]["rows"].as_u64(),
        Some(s.run.errors.len() as u64)
    );

    let d = &v["duckdb"];
    assert_eq!(d["rows"].as_u64(), Some(n), "{d}");
    assert_eq!(
        d["distinct_labels"].as_u64(),
        Some(labels.len() as u64),
        "{d}"
    );
    for key in ["features_len_min", "features_len_max", "features_len_row1"] {
        assert_eq!(
            d[key].as_u64(),
            Some(FEATURE_DIM as u64),
            "duckdb {key}: {d}"
        );
    }
    assert_eq!(d["pca_len_min"].as_u64(), Some(k), "{d}");
    assert_eq!(d["pca_len_max"].as_u64(), Some(k), "{d}");
    assert_eq!(
        d["errors_rows"].as_u64(),
        Some(s.run.errors.len() as u64),
        "{d}"
    );
    assert_eq!(
        d["errors_columns"],
        json!(["path", "label", "stage", "kind", "reason"]),
        "{d}"
    );
}

/// The reference system ran on Spark: its reader must take the output as-is.
#[test]
fn pyspark_reads_the_output() {
    let s = sample_run();
    let n = s.run.features.len() as u64;
    let k = s.run.k() as u64;
    let labels = histogram(s.run.features.iter().map(|r| r.label.as_str()));
    let v: Value = python_json("spark_read.py", [s.out.as_os_str()]);
    assert_eq!(v["rows"].as_u64(), Some(n), "{v}");
    assert_eq!(
        v["distinct_labels"].as_u64(),
        Some(labels.len() as u64),
        "{v}"
    );
    assert_eq!(
        v["schema"],
        json!({"path": "string", "label": "string", "features": "array<float>", "pca": "array<double>"}),
        "{v}"
    );
    assert_eq!(
        v["errors_schema"],
        json!({"path": "string", "label": "string", "stage": "string", "kind": "string", "reason": "string"}),
        "{v}"
    );
    assert_eq!(v["features_len"], json!([FEATURE_DIM, FEATURE_DIM]), "{v}");
    assert_eq!(v["pca_len"], json!([k, k]), "{v}");
    assert_eq!(
        v["error_rows"].as_u64(),
        Some(s.run.errors.len() as u64),
        "{v}"
    );
}
