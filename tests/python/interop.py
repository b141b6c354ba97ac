#!/usr/bin/env python3
"""Read a verger output directory with third-party tools and report what they see.

usage: interop.py OUTPUT_DIR

pandas (pyarrow engine) reads features/ and errors/; DuckDB queries
read_parquet('OUTPUT_DIR/features/*.parquet') and errors/*.parquet.
Prints one JSON object with what each reader found.
"""
import json
import os
import sys

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq


def main():
    out = sys.argv[1]
    feat_dir = os.path.join(out, "features")
    err_dir = os.path.join(out, "errors")
    res = {}

    # pyarrow: the schema as written.
    schema = pq.read_table(feat_dir).schema
    res["features_schema"] = {f.name: str(f.type) for f in schema}
    res["errors_schema"] = {f.name: str(f.type) for f in pq.read_table(err_dir).schema}

    # pandas with the pyarrow engine, whole directory.
    df = pd.read_parquet(feat_dir, engine="pyarrow")
    feats = [np.asarray(v) for v in df["features"]]
    pcas = [np.asarray(v) for v in df["pca"]]
    res["pandas"] = {
        "rows": int(len(df)),
        "columns": list(df.columns),
        "distinct_labels": int(df["label"].nunique()),
        "features_len_row1": int(len(df["features"].iloc[1])) if len(df) > 1 else None,
        "features_lens": sorted({int(len(v)) for v in feats}),
        "features_dtypes": sorted({str(v.dtype) for v in feats}),
        "pca_lens": sorted({int(len(v)) for v in pcas}),
        "pca_dtypes": sorted({str(v.dtype) for v in pcas}),
        "features_min": float(min(v.min() for v in feats)),
        "features_max": float(max(v.max() for v in feats)),
        "features_all_finite": bool(all(np.isfinite(v).all() for v in feats)),
        "label_counts": {str(k): int(v) for k, v in df["label"].value_counts().items()},
    }
    edf = pd.read_parquet(err_dir, engine="pyarrow")
    res["pandas_errors"] = {"rows": int(len(edf)), "columns": list(edf.columns)}

    # DuckDB over the Parquet files directly.
    con = duckdb.connect()
    fglob = os.path.join(feat_dir, "*.parquet").replace("'", "''")
    eglob = os.path.join(err_dir, "*.parquet").replace("'", "''")
    count, labels, min_len, max_len, min_pca, max_pca = con.execute(
        "SELECT count(*), count(DISTINCT label), min(len(features)), max(len(features)), "
        f"min(len(pca)), max(len(pca)) FROM read_parquet('{fglob}')"
    ).fetchone()
    first_len = con.execute(
        f"SELECT len(features) FROM read_parquet('{fglob}') ORDER BY path LIMIT 1 OFFSET 1"
    ).fetchone()
    ecount = con.execute(f"SELECT count(*) FROM read_parquet('{eglob}')").fetchone()[0]
    ecols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{eglob}')").fetchall()]
    res["duckdb"] = {
        "rows": int(count),
        "distinct_labels": int(labels),
        "features_len_min": int(min_len),
        "features_len_max": int(max_len),
        "features_len_row1": int(first_len[0]) if first_len else None,
        "pca_len_min": int(min_pca),
        "pca_len_max": int(max_pca),
        "errors_rows": int(ecount),
        "errors_columns": ecols,
    }
    json.dump(res, sys.stdout)


if __name__ == "__main__":
    main()
