#!/usr/bin/env python3
"""Independent check of verger's PCA (pca_model.json and the `pca` column).

usage: check_pca.py OUTPUT_DIR [TOL]

Reads OUTPUT_DIR/features/*.parquet with pyarrow, recomputes the covariance
(n-1) of `features` in float64 with numpy, takes the top-k eigenpairs with
numpy.linalg.eigh and compares them with OUTPUT_DIR/pca_model.json:
mean, total variance, eigenvalues, explained-variance ratios, components (up
to sign; unit norm, orthogonal), and the `pca` column against
components . x (or components . (x - mean) when center is true).
Prints one JSON verdict: {"ok": bool, "failures": [...], "metrics": {...}}.
"""
import glob
import json
import os
import sys

import numpy as np
import pyarrow.parquet as pq


def main():
    out = sys.argv[1]
    tol = float(sys.argv[2]) if len(sys.argv) > 2 else 1e-6
    failures = []
    metrics = {}

    def check(name, err, limit=tol):
        metrics[name] = float(err)
        if not np.isfinite(err) or err > limit:
            failures.append(f"{name}: error {err:.3e} > {limit:.1e}")

    with open(os.path.join(out, "pca_model.json")) as f:
        model = json.load(f)
    files = sorted(glob.glob(os.path.join(out, "features", "*.parquet")))
    if not files:
        failures.append("no features/*.parquet")
        print(json.dumps({"ok": False, "failures": failures, "metrics": metrics}))
        return
    table = pq.read_table(files)
    x = np.array(table.column("features").to_pylist(), dtype=np.float64)
    proj = np.array(table.column("pca").to_pylist(), dtype=np.float64)
    n, dim = x.shape
    k = int(model["k"])
    metrics.update(n=n, dim=dim, k=k)
    for key, want in (("n", n), ("dim", dim)):
        if int(model[key]) != want:
            failures.append(f"{key}: json {model[key]} != data {want}")
    if proj.shape != (n, k):
        failures.append(f"pca column shape {proj.shape} != {(n, k)}")

    mean = x.mean(axis=0)
    cov = np.cov(x, rowvar=False, ddof=1)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1][:k]
    evals, evecs = evals[order], evecs[:, order].T  # k x dim
    total = float(np.trace(cov))

    j_mean = np.asarray(model["mean"], dtype=np.float64)
    j_comp = np.asarray(model["components"], dtype=np.float64)
    j_eval = np.asarray(model["eigenvalues"], dtype=np.float64)
    j_ratio = np.asarray(model["explained_variance"], dtype=np.float64)
    j_total = float(model["total_variance"])
    if j_mean.shape != (dim,) or j_comp.shape != (k, dim) or j_eval.shape != (k,) or j_ratio.shape != (k,):
        failures.append(
            f"json shapes mean {j_mean.shape} components {j_comp.shape} "
            f"eigenvalues {j_eval.shape} explained_variance {j_ratio.shape}"
        )
        print(json.dumps({"ok": False, "failures": failures, "metrics": metrics}))
        return

    check("mean_max_abs", np.abs(j_mean - mean).max())
    check("total_variance_rel", abs(j_total - total) / total)
    check("eigenvalues_rel", (np.abs(j_eval - evals) / evals[0]).max())
    check("explained_variance_abs", np.abs(j_ratio - evals / total).max())
    check("explained_variance_vs_json_eigen", np.abs(j_ratio - j_eval / j_total).max())
    metrics["explained_variance"] = (evals / total).tolist()
    if np.any(np.diff(j_eval) > 0):
        failures.append("eigenvalues not in descending order")
    check("components_unit_norm", np.abs(np.linalg.norm(j_comp, axis=1) - 1).max())
    check("components_orthogonal", np.abs(j_comp @ j_comp.T - np.eye(k)).max())
    signs = np.sign(np.sum(j_comp * evecs, axis=1))
    signs[signs == 0] = 1
    check("components_up_to_sign", np.abs(j_comp - signs[:, None] * evecs).max())

    centred = x - j_mean if model["center"] else x
    expected = centred @ j_comp.T
    scale = np.maximum(1.0, np.abs(expected))
    check("pca_column_rel", (np.abs(proj - expected) / scale).max())
    # The same projection with numpy's own components (sign-aligned).
    centred_np = x - mean if model["center"] else x
    expected_np = centred_np @ (signs[:, None] * evecs).T
    check("pca_column_vs_numpy_rel", (np.abs(proj - expected_np) / np.maximum(1.0, np.abs(expected_np))).max(), 1e-5)
    metrics["center"] = bool(model["center"])
    metrics["pca_column_mean_abs"] = float(np.abs(proj).mean())

    print(json.dumps({"ok": not failures, "failures": failures, "metrics": metrics}))


if __name__ == "__main__":
    main()
