//! Principal component analysis over feature vectors, split so that it can run
//! distributed: [`PcaStats`] are mergeable sufficient statistics (count, sum,
//! XᵀX) accumulated per partition, [`fit`] turns the merged statistics into a
//! [`PcaModel`], and the model projects rows.
//!
//! This crate owns only the numerics and the binary form of the statistics.
//! It must not know about DataFusion, object storage, files, images or the
//! model: callers feed it `f32` rows and move the bytes around themselves.

use faer::linalg::matmul::triangular::{BlockStructure, matmul};
use faer::{Accum, Mat, MatMut, Par, Side};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum PcaError {
    #[error(
        "cannot merge PCA statistics of dimension {found} into statistics of dimension {expected}"
    )]
    DimMismatch { expected: usize, found: usize },
    #[error("k must be at least 1")]
    ZeroK,
    #[error("k = {k} is larger than the feature dimension {dim}")]
    KTooLarge { k: usize, dim: usize },
    #[error("PCA needs at least 2 rows to estimate a covariance, got {n}")]
    TooFewRows { n: u64 },
    #[error("invalid PCA statistics: {0}")]
    InvalidStats(String),
    #[error("the covariance contains NaN or infinite values (are there non-finite features?)")]
    NonFinite,
    #[error("eigendecomposition of the covariance did not converge")]
    NoConvergence,
}

/// Sufficient statistics for PCA: row count, per-column sums and the Gram
/// matrix XᵀX, all in `f64`. Two halves merged give exactly the statistics of
/// the whole (up to floating-point summation order), which is what lets each
/// partition accumulate on its own.
///
/// Only the upper triangle of XᵀX is kept (column-major, entry `(i, j)` with
/// `i <= j` at `j * dim + i`; the strict lower triangle stays zero): it is
/// symmetric, and computing half of it halves the cost of every batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawStats")]
pub struct PcaStats {
    dim: usize,
    n: u64,
    sum: Vec<f64>,
    xtx: Vec<f64>,
}

/// Unchecked shape of [`PcaStats`] as it arrives through serde.
#[derive(Deserialize)]
struct RawStats {
    dim: usize,
    n: u64,
    sum: Vec<f64>,
    xtx: Vec<f64>,
}

impl TryFrom<RawStats> for PcaStats {
    type Error = PcaError;

    fn try_from(raw: RawStats) -> Result<Self, PcaError> {
        let cells = raw.dim.checked_mul(raw.dim);
        if raw.sum.len() != raw.dim || cells != Some(raw.xtx.len()) {
            return Err(PcaError::InvalidStats(format!(
                "dimension {} needs {} sums and {}x{} products, got {} and {}",
                raw.dim,
                raw.dim,
                raw.dim,
                raw.dim,
                raw.sum.len(),
                raw.xtx.len()
            )));
        }
        // Only the upper triangle is ever read; clearing the rest keeps
        // equality and the binary form consistent for a full matrix sent in.
        let mut xtx = raw.xtx;
        for j in 0..raw.dim {
            xtx[j * raw.dim + j + 1..(j + 1) * raw.dim].fill(0.0);
        }
        Ok(PcaStats {
            dim: raw.dim,
            n: raw.n,
            sum: raw.sum,
            xtx,
        })
    }
}

const MAGIC: &[u8; 8] = b"VPCASTAT";
const VERSION: u32 = 1;
/// magic, version (u32), dim (u64), n (u64).
const HEADER_LEN: usize = 8 + 4 + 8 + 8;

impl PcaStats {
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            n: 0,
            sum: vec![0.0; dim],
            xtx: vec![0.0; dim * dim],
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    /// # Panics
    /// If `row.len() != dim`: a caller bug, not a data problem.
    pub fn add_row(&mut self, row: &[f32]) {
        assert_eq!(
            row.len(),
            self.dim,
            "row length must equal the PCA dimension"
        );
        let dim = self.dim;
        for (j, &xj) in row.iter().enumerate() {
            let xj = f64::from(xj);
            self.sum[j] += xj;
            let col = &mut self.xtx[j * dim..j * dim + j + 1];
            for (acc, &xi) in col.iter_mut().zip(row) {
                *acc += f64::from(xi) * xj;
            }
        }
        self.n += 1;
    }

    /// Adds `rows.len() / dim` rows stored row-major, as one rank-k update
    /// XᵀX += BᵀB through a (triangular) matrix product.
    ///
    /// # Panics
    /// If `rows.len()` is not a multiple of `dim`.
    pub fn add_rows(&mut self, rows: &[f32]) {
        let dim = self.dim;
        if rows.is_empty() {
            return;
        }
        assert!(
            dim > 0 && rows.len().is_multiple_of(dim),
            "rows must hold a whole number of rows of the PCA dimension"
        );
        let k = rows.len() / dim;
        let batch = Mat::<f64>::from_fn(k, dim, |r, c| f64::from(rows[r * dim + c]));
        for row in rows.chunks_exact(dim) {
            for (s, &x) in self.sum.iter_mut().zip(row) {
                *s += f64::from(x);
            }
        }
        let xtx = MatMut::from_column_major_slice_mut(&mut self.xtx, dim, dim);
        // Sequential: callers already run one accumulator per partition in
        // parallel, and nested thread pools would only contend.
        matmul(
            xtx,
            BlockStructure::TriangularUpper,
            Accum::Add,
            batch.transpose(),
            BlockStructure::Rectangular,
            batch.as_ref(),
            BlockStructure::Rectangular,
            1.0,
            Par::Seq,
        );
        self.n += k as u64;
    }

    pub fn merge(&mut self, other: &PcaStats) -> Result<(), PcaError> {
        if other.dim != self.dim {
            return Err(PcaError::DimMismatch {
                expected: self.dim,
                found: other.dim,
            });
        }
        self.n += other.n;
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        for (a, b) in self.xtx.iter_mut().zip(&other.xtx) {
            *a += b;
        }
        Ok(())
    }

    /// Compact little-endian form: `b"VPCASTAT"`, version `u32`, `dim` `u64`,
    /// `n` `u64`, `dim` sums, then the upper triangle of XᵀX column by column
    /// (`dim·(dim+1)/2` values), all `f64`. About 6.5 MB for dim 1280.
    pub fn to_bytes(&self) -> Vec<u8> {
        let dim = self.dim;
        let values = dim + dim * (dim + 1) / 2;
        let mut out = Vec::with_capacity(HEADER_LEN + 8 * values);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(dim as u64).to_le_bytes());
        out.extend_from_slice(&self.n.to_le_bytes());
        for v in &self.sum {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for j in 0..dim {
            for v in &self.xtx[j * dim..j * dim + j + 1] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self, PcaError> {
        let bad = |why: String| PcaError::InvalidStats(why);
        if b.len() < HEADER_LEN {
            return Err(bad(format!(
                "{} bytes is shorter than the {HEADER_LEN}-byte header",
                b.len()
            )));
        }
        if &b[..8] != MAGIC {
            return Err(bad("missing VPCASTAT magic".to_string()));
        }
        let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(bad(format!(
                "unsupported version {version} (expected {VERSION})"
            )));
        }
        let dim = u64::from_le_bytes(b[12..20].try_into().expect("8 bytes"));
        let n = u64::from_le_bytes(b[20..28].try_into().expect("8 bytes"));
        // Checked arithmetic: the dimension comes from untrusted bytes and
        // must not be able to overflow or trigger a huge allocation.
        let expected = usize::try_from(dim)
            .ok()
            .and_then(|d| {
                let tri = d.checked_mul(d.checked_add(1)?)? / 2;
                tri.checked_add(d)?.checked_mul(8)?.checked_add(HEADER_LEN)
            })
            .filter(|&len| len == b.len());
        if expected.is_none() {
            return Err(bad(format!(
                "{} bytes do not match dimension {dim}",
                b.len()
            )));
        }
        let dim = dim as usize;
        let mut values = b[HEADER_LEN..]
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")));
        let sum: Vec<f64> = values.by_ref().take(dim).collect();
        let mut xtx = vec![0.0; dim * dim];
        for j in 0..dim {
            for (slot, v) in xtx[j * dim..j * dim + j + 1]
                .iter_mut()
                .zip(values.by_ref())
            {
                *slot = v;
            }
        }
        Ok(Self { dim, n, sum, xtx })
    }

    /// Entry `(i, j)` of XᵀX, whichever triangle is asked for.
    fn xtx_at(&self, i: usize, j: usize) -> f64 {
        let (lo, hi) = if i <= j { (i, j) } else { (j, i) };
        self.xtx[hi * self.dim + lo]
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PcaModel {
    pub k: usize,
    pub n: u64,
    pub dim: usize,
    /// Whether [`PcaModel::project`] subtracts `mean` first.
    pub center: bool,
    pub mean: Vec<f64>,
    /// `k` rows of length `dim`, unit norm, by decreasing eigenvalue. Each is
    /// signed so that its entry of largest magnitude is positive, because an
    /// eigenvector's sign is arbitrary and would otherwise differ between
    /// runs and libraries.
    pub components: Vec<Vec<f64>>,
    /// The `k` largest eigenvalues of the sample covariance (divisor n−1).
    /// Rounding can leave tiny negative values for directions with no
    /// variance; those are reported as 0.
    pub eigenvalues: Vec<f64>,
    /// `eigenvalue / total_variance`, as spark.ml `PCAModel.explainedVariance`.
    pub explained_variance: Vec<f64>,
    /// Trace of the sample covariance.
    pub total_variance: f64,
}

/// Fits the top `k` principal components from merged statistics.
///
/// The covariance is C = (XᵀX − n·μμᵀ)/(n−1) in `f64`; its top `k`
/// eigenpairs come from faer's Lanczos solver when `k` is small beside the
/// dimension, else from its full self-adjoint decomposition. `center` only changes how [`PcaModel::project`]
/// treats rows; the components are the same either way.
pub fn fit(stats: &PcaStats, k: usize, center: bool) -> Result<PcaModel, PcaError> {
    let dim = stats.dim;
    if k == 0 {
        return Err(PcaError::ZeroK);
    }
    if k > dim {
        return Err(PcaError::KTooLarge { k, dim });
    }
    if stats.n < 2 {
        return Err(PcaError::TooFewRows { n: stats.n });
    }
    let Covariance {
        mean,
        cov,
        total_variance,
    } = covariance(stats)?;
    let (eigenvalues, components) = match top_eigen_lanczos(&cov, k, total_variance) {
        Some(top) => top,
        None => top_eigen_dense(&cov, k)?,
    };
    let explained_variance = eigenvalues
        .iter()
        .map(|&l| {
            if total_variance > 0.0 {
                l / total_variance
            } else {
                // Every row identical: no direction explains anything.
                0.0
            }
        })
        .collect();

    Ok(PcaModel {
        k,
        n: stats.n,
        dim,
        center,
        mean,
        components,
        eigenvalues,
        explained_variance,
        total_variance,
    })
}

/// The sample covariance of merged statistics and what `fit` needs beside it.
struct Covariance {
    mean: Vec<f64>,
    /// C = (XᵀX − n·μμᵀ)/(n−1), in `f64`.
    cov: Mat<f64>,
    /// The trace of C.
    total_variance: f64,
}

/// C from the statistics (at least 2 rows); non-finite entries are refused.
fn covariance(stats: &PcaStats) -> Result<Covariance, PcaError> {
    let dim = stats.dim;
    let n = stats.n as f64;
    let mean: Vec<f64> = stats.sum.iter().map(|s| s / n).collect();
    let cov = Mat::<f64>::from_fn(dim, dim, |i, j| {
        (stats.xtx_at(i, j) - n * mean[i] * mean[j]) / (n - 1.0)
    });
    if !cov.is_all_finite() {
        return Err(PcaError::NonFinite);
    }
    let total_variance = (0..dim).map(|i| cov[(i, i)]).sum();
    Ok(Covariance {
        mean,
        cov,
        total_variance,
    })
}

/// The `k` largest eigenvalues (clamped at 0) and their eigenvectors
/// (oriented, see [`orient`]), by decreasing eigenvalue.
type TopEigen = (Vec<f64>, Vec<Vec<f64>>);

/// Every eigenpair of `cov`, then the top `k`: exact, and at the model's
/// dimension about 0.3 s (an O(dim³) decomposition), whatever `k`.
fn top_eigen_dense(cov: &Mat<f64>, k: usize) -> Result<TopEigen, PcaError> {
    let dim = cov.nrows();
    let evd = cov
        .self_adjoint_eigen(Side::Lower)
        .map_err(|_| PcaError::NoConvergence)?;
    let values = evd.S().column_vector();
    let vectors = evd.U();
    // faer returns eigenvalues in nondecreasing order.
    Ok((dim - k..dim)
        .rev()
        .map(|idx| {
            let mut v: Vec<f64> = vectors.col(idx).iter().copied().collect();
            orient(&mut v);
            (values[idx].max(0.0), v)
        })
        .unzip())
}

/// The top `k` eigenpairs alone, by faer's restarted Lanczos solver, when
/// `k` is small beside the dimension (the default k = 5 of 1280): a few
/// dozen products of `cov` with a vector instead of a full decomposition,
/// which makes the fit a few milliseconds instead of about 0.3 s.
///
/// `None` (the caller then decomposes in full) for small or degenerate
/// problems and when not every pair converged: each returned pair has a
/// residual ‖C·v − λ·v‖ of at most 1e-12 of the total variance. The start
/// vector is fixed, so a fit is reproducible.
fn top_eigen_lanczos(cov: &Mat<f64>, k: usize, total_variance: f64) -> Option<TopEigen> {
    use faer::dyn_stack::{MemBuffer, MemStack};
    use faer::matrix_free::eigen::{
        PartialEigenParams, partial_self_adjoint_eigen, partial_self_adjoint_eigen_scratch,
    };

    let dim = cov.nrows();
    if dim < LANCZOS_MIN_DIM || 4 * k > dim || total_variance.is_nan() || total_variance <= 0.0 {
        return None;
    }
    let par = Par::Seq;
    let params = PartialEigenParams::default();
    let mut buffer = MemBuffer::try_new(partial_self_adjoint_eigen_scratch::<f64>(
        cov, k, par, params,
    ))
    .ok()?;
    // A fixed pseudo-random start (splitmix64): no eigenvector of real data
    // is orthogonal to it.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let start = faer::Col::<f64>::from_fn(dim, |_| {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as f64 / u64::MAX as f64 - 0.5
    });
    let mut vectors = Mat::<f64>::zeros(dim, k);
    let mut values = vec![0.0f64; k];
    let info = partial_self_adjoint_eigen(
        vectors.as_mut(),
        &mut values,
        cov,
        start.as_ref(),
        1e-12 * total_variance,
        par,
        MemStack::new(&mut buffer),
        params,
    );
    if info.n_converged_eigen < k || values.iter().any(|l| !l.is_finite()) {
        return None;
    }
    let mut pairs: Vec<(f64, Vec<f64>)> = (0..k)
        .map(|j| {
            let mut v: Vec<f64> = vectors.col(j).iter().copied().collect();
            orient(&mut v);
            (values[j].max(0.0), v)
        })
        .collect();
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    Some(pairs.into_iter().unzip())
}

/// Below this dimension a full decomposition is cheap enough.
const LANCZOS_MIN_DIM: usize = 256;

/// Makes the entry of largest magnitude positive (the first one on ties).
fn orient(v: &mut [f64]) {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if x.abs() > v[best].abs() {
            best = i;
        }
    }
    if v.get(best).is_some_and(|&x| x < 0.0) {
        for x in v.iter_mut() {
            *x = -*x;
        }
    }
}

impl PcaModel {
    pub fn project(&self, row: &[f32]) -> Vec<f64> {
        let mut out = vec![0.0; self.k];
        self.project_into(row, &mut out);
        out
    }

    /// With `center == false`, spark.ml's convention: y = componentsᵀ·x, the
    /// row as is. With `center == true`, scikit-learn's: y = components·(x − mean).
    ///
    /// # Panics
    /// If `row.len() != dim` or `out.len() != k`.
    pub fn project_into(&self, row: &[f32], out: &mut [f64]) {
        assert_eq!(
            row.len(),
            self.dim,
            "row length must equal the PCA dimension"
        );
        assert_eq!(out.len(), self.k, "output length must equal k");
        for (y, comp) in out.iter_mut().zip(&self.components) {
            *y = if self.center {
                comp.iter()
                    .zip(row)
                    .zip(&self.mean)
                    .map(|((c, &x), m)| c * (f64::from(x) - m))
                    .sum()
            } else {
                comp.iter().zip(row).map(|(c, &x)| c * f64::from(x)).sum()
            };
        }
    }
}

#[cfg(test)]
mod tests;
