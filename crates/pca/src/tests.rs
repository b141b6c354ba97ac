use super::*;

/// Small deterministic generator so tests need no extra crate.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    /// Roughly standard normal (Irwin–Hall with 12 terms).
    fn normal(&mut self) -> f64 {
        (0..12).map(|_| (self.uniform() + 1.0) / 2.0).sum::<f64>() - 6.0
    }
}

/// `n` rows of dimension `dim`: a random linear mix of independent sources
/// with decreasing scales, plus an offset so centring matters.
fn correlated_rows(rng: &mut Rng, n: usize, dim: usize, scales: &[f64]) -> Vec<f32> {
    let mix: Vec<Vec<f64>> = (0..scales.len())
        .map(|_| (0..dim).map(|_| rng.uniform()).collect())
        .collect();
    let offset: Vec<f64> = (0..dim).map(|i| 3.0 + i as f64 * 0.25).collect();
    let mut rows = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let z: Vec<f64> = scales.iter().map(|s| s * rng.normal()).collect();
        for c in 0..dim {
            let v: f64 = offset[c] + z.iter().zip(&mix).map(|(zj, m)| zj * m[c]).sum::<f64>();
            rows.push(v as f32);
        }
    }
    rows
}

fn stats_of(rows: &[f32], dim: usize) -> PcaStats {
    let mut s = PcaStats::new(dim);
    s.add_rows(rows);
    s
}

fn assert_stats_close(a: &PcaStats, b: &PcaStats, tol: f64) {
    assert_eq!(a.dim(), b.dim());
    assert_eq!(a.count(), b.count());
    for (x, y) in a.sum.iter().zip(&b.sum) {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "sum {x} vs {y}");
    }
    for i in 0..a.dim() {
        for j in 0..a.dim() {
            let (x, y) = (a.xtx_at(i, j), b.xtx_at(i, j));
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "xtx({i},{j}) {x} vs {y}"
            );
        }
    }
}

/// Two-pass sample covariance, the textbook way.
fn naive_covariance(rows: &[f32], dim: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
    let n = rows.len() / dim;
    let mut mean = vec![0.0; dim];
    for row in rows.chunks_exact(dim) {
        for (m, &x) in mean.iter_mut().zip(row) {
            *m += f64::from(x);
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut cov = vec![vec![0.0; dim]; dim];
    for row in rows.chunks_exact(dim) {
        for i in 0..dim {
            for j in 0..dim {
                cov[i][j] += (f64::from(row[i]) - mean[i]) * (f64::from(row[j]) - mean[j]);
            }
        }
    }
    cov.iter_mut().flatten().for_each(|c| *c /= (n - 1) as f64);
    (mean, cov)
}

/// Cyclic Jacobi eigensolver: returns eigenvalues and eigenvectors (as
/// `vectors[k]`), sorted by decreasing eigenvalue.
fn jacobi_eigen(a: &[Vec<f64>]) -> (Vec<f64>, Vec<Vec<f64>>) {
    let n = a.len();
    let mut a = a.to_vec();
    let mut v: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|j| if i == j { 1.0 } else { 0.0 }).collect())
        .collect();
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum();
        if off < 1e-28 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                if a[p][q] == 0.0 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for row in a.iter_mut() {
                    let (akp, akq) = (row[p], row[q]);
                    row[p] = c * akp - s * akq;
                    row[q] = s * akp + c * akq;
                }
                let (upper, lower) = a.split_at_mut(q);
                for (apk, aqk) in upper[p].iter_mut().zip(lower[0].iter_mut()) {
                    let (x, y) = (*apk, *aqk);
                    *apk = c * x - s * y;
                    *aqk = s * x + c * y;
                }
                for row in v.iter_mut() {
                    let (vkp, vkq) = (row[p], row[q]);
                    row[p] = c * vkp - s * vkq;
                    row[q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| a[y][y].total_cmp(&a[x][x]));
    let values = order.iter().map(|&k| a[k][k]).collect();
    let vectors = order
        .iter()
        .map(|&k| (0..n).map(|i| v[i][k]).collect())
        .collect();
    (values, vectors)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn mat_vec(m: &[Vec<f64>], v: &[f64]) -> Vec<f64> {
    m.iter().map(|row| dot(row, v)).collect()
}

// --- statistics -----------------------------------------------------------

#[test]
fn add_rows_matches_add_row() {
    let mut rng = Rng(7);
    let dim = 13;
    let rows = correlated_rows(&mut rng, 37, dim, &[4.0, 2.0, 1.0]);
    let batched = stats_of(&rows, dim);
    let mut single = PcaStats::new(dim);
    for row in rows.chunks_exact(dim) {
        single.add_row(row);
    }
    assert_eq!(batched.count(), 37);
    assert_stats_close(&batched, &single, 1e-12);
    // Only the upper triangle is stored; the lower one must stay empty so
    // that the binary form round-trips exactly.
    for j in 0..dim {
        for i in j + 1..dim {
            assert_eq!(batched.xtx[j * dim + i], 0.0);
            assert_eq!(single.xtx[j * dim + i], 0.0);
        }
    }
}

#[test]
fn add_rows_at_model_dimension_matches_add_row() {
    let mut rng = Rng(11);
    let dim = 1280;
    let rows: Vec<f32> = (0..32 * dim)
        .map(|_| (rng.uniform() * 6.0) as f32)
        .collect();
    let batched = stats_of(&rows, dim);
    let mut single = PcaStats::new(dim);
    for row in rows.chunks_exact(dim) {
        single.add_row(row);
    }
    assert_stats_close(&batched, &single, 1e-12);
}

#[test]
fn merged_halves_equal_the_whole() {
    let mut rng = Rng(42);
    let dim = 9;
    let rows = correlated_rows(&mut rng, 101, dim, &[5.0, 3.0, 0.5]);
    let whole = stats_of(&rows, dim);
    let split = 47 * dim;
    let mut left = stats_of(&rows[..split], dim);
    let mut right = PcaStats::new(dim);
    for row in rows[split..].chunks_exact(dim) {
        right.add_row(row);
    }
    left.merge(&right).unwrap();
    assert_stats_close(&left, &whole, 1e-9);

    // Merging an empty accumulator changes nothing.
    let before = left.clone();
    left.merge(&PcaStats::new(dim)).unwrap();
    assert_eq!(left, before);
}

#[test]
fn merge_rejects_other_dimension() {
    let mut a = PcaStats::new(4);
    a.add_row(&[1.0, 2.0, 3.0, 4.0]);
    let before = a.clone();
    let err = a.merge(&PcaStats::new(5)).unwrap_err();
    assert!(
        matches!(
            err,
            PcaError::DimMismatch {
                expected: 4,
                found: 5
            }
        ),
        "{err:?}"
    );
    assert_eq!(a, before, "a failed merge must leave the target untouched");
}

// --- binary form ----------------------------------------------------------

#[test]
fn bytes_round_trip_exactly() {
    let mut rng = Rng(3);
    let dim = 17;
    let stats = stats_of(&correlated_rows(&mut rng, 50, dim, &[2.0, 1.0]), dim);
    let bytes = stats.to_bytes();
    assert_eq!(bytes.len(), HEADER_LEN + 8 * (dim + dim * (dim + 1) / 2));
    assert_eq!(&bytes[..8], b"VPCASTAT");
    assert_eq!(PcaStats::from_bytes(&bytes).unwrap(), stats);

    let empty = PcaStats::new(dim);
    assert_eq!(PcaStats::from_bytes(&empty.to_bytes()).unwrap(), empty);
}

#[test]
fn truncated_or_padded_bytes_are_rejected() {
    let mut stats = PcaStats::new(6);
    stats.add_row(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let bytes = stats.to_bytes();
    for cut in [
        0,
        1,
        8,
        HEADER_LEN - 1,
        HEADER_LEN,
        bytes.len() - 8,
        bytes.len() - 1,
    ] {
        let err = PcaStats::from_bytes(&bytes[..cut]).unwrap_err();
        assert!(
            matches!(err, PcaError::InvalidStats(_)),
            "cut {cut}: {err:?}"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(PcaStats::from_bytes(&longer).is_err());
}

#[test]
fn garbage_bytes_are_rejected() {
    let mut stats = PcaStats::new(3);
    stats.add_row(&[1.0, 2.0, 3.0]);
    let good = stats.to_bytes();

    let mut bad_magic = good.clone();
    bad_magic[0] ^= 0xFF;
    let err = PcaStats::from_bytes(&bad_magic).unwrap_err();
    assert!(err.to_string().contains("magic"), "{err}");

    let mut bad_version = good.clone();
    bad_version[8] = 99;
    let err = PcaStats::from_bytes(&bad_version).unwrap_err();
    assert!(err.to_string().contains("version 99"), "{err}");

    // A dimension whose byte size overflows must be refused, not allocated.
    let mut huge_dim = good.clone();
    huge_dim[12..20].copy_from_slice(&(u64::MAX / 3).to_le_bytes());
    assert!(PcaStats::from_bytes(&huge_dim).is_err());

    let noise: Vec<u8> = (0..500u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    assert!(PcaStats::from_bytes(&noise).is_err());
}

#[test]
fn serde_round_trip_and_validation() {
    let mut stats = PcaStats::new(3);
    stats.add_row(&[1.0, -2.0, 0.5]);
    stats.add_row(&[0.0, 4.0, 1.5]);
    let json = serde_json::to_string(&stats).unwrap();
    assert_eq!(serde_json::from_str::<PcaStats>(&json).unwrap(), stats);

    let wrong = r#"{"dim":3,"n":1,"sum":[1.0,2.0],"xtx":[0,0,0,0,0,0,0,0,0]}"#;
    assert!(serde_json::from_str::<PcaStats>(wrong).is_err());

    // A full symmetric matrix is accepted and reads the same as its upper
    // triangle, so it survives the binary form unchanged.
    let full = r#"{"dim":2,"n":2,"sum":[1.0,2.0],"xtx":[1.0,5.0,5.0,4.0]}"#;
    let parsed: PcaStats = serde_json::from_str(full).unwrap();
    assert_eq!(parsed.xtx_at(1, 0), 5.0);
    assert_eq!(parsed.xtx_at(0, 1), 5.0);
    assert_eq!(PcaStats::from_bytes(&parsed.to_bytes()).unwrap(), parsed);

    let model = fit(&stats, 1, true).unwrap();
    let json = serde_json::to_string(&model).unwrap();
    assert_eq!(serde_json::from_str::<PcaModel>(&json).unwrap(), model);
}

// --- fit ------------------------------------------------------------------

#[test]
fn first_component_follows_the_known_direction() {
    // Points spread along `d` with small isotropic noise. The entry of `d`
    // with the largest magnitude is negative, so the sign convention must
    // return -d.
    let raw = [1.0, -4.0, 2.0, 0.0, 1.0, -1.0];
    let norm = raw.iter().map(|x: &f64| x * x).sum::<f64>().sqrt();
    let d: Vec<f64> = raw.iter().map(|x| x / norm).collect();
    let dim = d.len();
    let mut rng = Rng(99);
    let mut rows = Vec::new();
    for _ in 0..2000 {
        let t = 5.0 * rng.normal();
        for (c, dc) in d.iter().enumerate() {
            rows.push((10.0 + c as f64 + t * dc + 0.05 * rng.normal()) as f32);
        }
    }
    let model = fit(&stats_of(&rows, dim), 3, false).unwrap();

    let first = &model.components[0];
    let expected: Vec<f64> = d.iter().map(|x| -x).collect();
    assert!(dot(first, &expected) > 0.9999, "{first:?}");
    assert!(first[1] > 0.0, "largest-magnitude entry must be positive");

    // Variance along d is 25, noise variance 0.0025 per axis.
    assert!(
        (model.eigenvalues[0] - 25.0).abs() < 2.5,
        "{:?}",
        model.eigenvalues
    );
    assert!(model.eigenvalues[1] < 0.01);
    assert!(model.explained_variance[0] > 0.99);
    let total: f64 = model.explained_variance.iter().sum();
    assert!(total <= 1.0 + 1e-12, "{total}");
    for (r, l) in model.explained_variance.iter().zip(&model.eigenvalues) {
        assert!((r - l / model.total_variance).abs() < 1e-15);
    }
    assert!(model.eigenvalues.windows(2).all(|w| w[0] >= w[1]));
}

#[test]
fn fit_matches_naive_covariance_and_jacobi() {
    let dim = 8;
    let mut rng = Rng(2024);
    let rows = correlated_rows(
        &mut rng,
        500,
        dim,
        &[8.0, 5.0, 3.0, 2.0, 1.5, 1.0, 0.5, 0.2],
    );
    let (mean, cov) = naive_covariance(&rows, dim);
    let (values, vectors) = jacobi_eigen(&cov);
    // The reference itself must be right, and the spectrum must have gaps,
    // or comparing eigenvectors would be meaningless.
    for (l, v) in values.iter().zip(&vectors) {
        let cv = mat_vec(&cov, v);
        let resid: f64 = cv
            .iter()
            .zip(v)
            .map(|(a, b)| (a - l * b).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(resid < 1e-9 * values[0], "jacobi residual {resid}");
    }
    assert!(
        values.windows(2).all(|w| w[0] - w[1] > 1e-4 * values[0]),
        "{values:?}"
    );

    let model = fit(&stats_of(&rows, dim), dim, true).unwrap();
    assert_eq!((model.k, model.dim, model.n), (dim, dim, 500));
    for (a, b) in model.mean.iter().zip(&mean) {
        assert!((a - b).abs() < 1e-12 * (1.0 + b.abs()), "mean {a} vs {b}");
    }
    let trace: f64 = (0..dim).map(|i| cov[i][i]).sum();
    assert!((model.total_variance - trace).abs() < 1e-10 * trace);

    for (i, (comp, reference)) in model.components.iter().zip(&vectors).enumerate() {
        assert!(
            (model.eigenvalues[i] - values[i]).abs() < 1e-9 * values[0],
            "eigenvalue {i}: {} vs {}",
            model.eigenvalues[i],
            values[i]
        );
        let mut reference = reference.clone();
        orient(&mut reference);
        for (a, b) in comp.iter().zip(&reference) {
            assert!(
                (a - b).abs() < 1e-7,
                "component {i}: {comp:?} vs {reference:?}"
            );
        }
        assert!((dot(comp, comp) - 1.0).abs() < 1e-12);
    }
    // All components kept: they explain everything.
    let total: f64 = model.explained_variance.iter().sum();
    assert!((total - 1.0).abs() < 1e-10, "{total}");
}

/// `n` rows of the model's 1280 dimensions: 24 decaying directions plus
/// noise of standard deviation `noise` on every value.
fn model_like_rows(seed: u64, n: usize, noise: f64) -> Vec<f32> {
    let mut rng = Rng(seed);
    let scales: Vec<f64> = (0..24).map(|i| 10.0 / (1.0 + i as f64)).collect();
    let mut rows = correlated_rows(&mut rng, n, 1280, &scales);
    rows.iter_mut()
        .for_each(|x| *x += (noise * rng.normal()) as f32);
    rows
}

#[test]
fn fit_at_model_dimension_is_an_orthonormal_eigenbasis() {
    let dim = 1280;
    let rows = model_like_rows(5, 320, 0.01);
    let mut stats = PcaStats::new(dim);
    for batch in rows.chunks(32 * dim) {
        stats.add_rows(batch);
    }
    let k = 16;
    let model = fit(&stats, k, false).unwrap();
    assert_eq!(model.components.len(), k);
    assert!(model.eigenvalues.windows(2).all(|w| w[0] >= w[1]));

    for a in 0..k {
        for b in 0..k {
            let d = dot(&model.components[a], &model.components[b]);
            let want = if a == b { 1.0 } else { 0.0 };
            assert!((d - want).abs() < 1e-10, "<c{a}, c{b}> = {d}");
        }
    }
    // C·v = λ·v, with C applied straight from the statistics.
    let n = stats.count() as f64;
    for (v, &l) in model.components.iter().zip(&model.eigenvalues) {
        let mv = dot(&model.mean, v);
        let cv: Vec<f64> = (0..dim)
            .map(|i| {
                let xtxv: f64 = (0..dim).map(|j| stats.xtx_at(i, j) * v[j]).sum();
                (xtxv - n * model.mean[i] * mv) / (n - 1.0)
            })
            .collect();
        let resid: f64 = cv
            .iter()
            .zip(v)
            .map(|(a, b)| (a - l * b).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(
            resid < 1e-8 * model.eigenvalues[0],
            "residual {resid} for λ={l}"
        );
    }
}

#[test]
fn identical_rows_give_zero_variance_without_nan() {
    let mut stats = PcaStats::new(4);
    for _ in 0..10 {
        stats.add_row(&[1.0, 2.0, 3.0, 4.0]);
    }
    let model = fit(&stats, 2, true).unwrap();
    assert_eq!(model.total_variance, 0.0);
    assert!(model.eigenvalues.iter().all(|&l| l == 0.0));
    assert!(model.explained_variance.iter().all(|&r| r == 0.0));
    assert!(model.components.iter().flatten().all(|x| x.is_finite()));
}

#[test]
fn non_finite_features_are_reported() {
    let mut stats = PcaStats::new(2);
    stats.add_row(&[1.0, f32::NAN]);
    stats.add_row(&[2.0, 3.0]);
    assert!(matches!(fit(&stats, 1, false), Err(PcaError::NonFinite)));
}

#[test]
fn fit_argument_errors() {
    let mut stats = PcaStats::new(3);
    let err = fit(&stats, 1, false).unwrap_err();
    assert!(matches!(err, PcaError::TooFewRows { n: 0 }), "{err:?}");
    stats.add_row(&[1.0, 2.0, 3.0]);
    let err = fit(&stats, 1, false).unwrap_err();
    assert!(matches!(err, PcaError::TooFewRows { n: 1 }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "PCA needs at least 2 rows to estimate a covariance, got 1"
    );
    stats.add_row(&[0.0, 1.0, 5.0]);

    let err = fit(&stats, 4, false).unwrap_err();
    assert!(
        matches!(err, PcaError::KTooLarge { k: 4, dim: 3 }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "k = 4 is larger than the feature dimension 3"
    );
    let err = fit(&stats, 0, false).unwrap_err();
    assert!(matches!(err, PcaError::ZeroK), "{err:?}");
    assert!(fit(&stats, 3, false).is_ok());
}

// --- projection -----------------------------------------------------------

fn hand_model(center: bool) -> PcaModel {
    PcaModel {
        k: 2,
        n: 10,
        dim: 3,
        center,
        mean: vec![1.0, 2.0, 3.0],
        components: vec![vec![1.0, 0.0, 0.0], vec![0.0, 0.6, 0.8]],
        eigenvalues: vec![2.0, 1.0],
        explained_variance: vec![0.5, 0.25],
        total_variance: 4.0,
    }
}

#[test]
fn projection_without_centring_is_spark_style() {
    let y = hand_model(false).project(&[2.0, 4.0, 1.0]);
    // [1,0,0]·x = 2; [0,.6,.8]·x = 2.4 + 0.8.
    assert!(
        (y[0] - 2.0).abs() < 1e-12 && (y[1] - 3.2).abs() < 1e-12,
        "{y:?}"
    );
}

#[test]
fn projection_with_centring_is_sklearn_style() {
    let mut y = vec![f64::NAN; 2];
    hand_model(true).project_into(&[2.0, 4.0, 1.0], &mut y);
    // x − mean = (1, 2, −2): 1 and 1.2 − 1.6.
    assert!(
        (y[0] - 1.0).abs() < 1e-12 && (y[1] + 0.4).abs() < 1e-12,
        "{y:?}"
    );
}

#[test]
fn centred_scores_have_zero_mean_and_eigenvalue_variance() {
    let dim = 6;
    let mut rng = Rng(77);
    let rows = correlated_rows(&mut rng, 400, dim, &[4.0, 2.0, 1.0]);
    let stats = stats_of(&rows, dim);
    let centred = fit(&stats, 3, true).unwrap();
    let raw = PcaModel {
        center: false,
        ..centred.clone()
    };
    let n = (rows.len() / dim) as f64;
    let mut mean = [0.0; 3];
    let mut sq = [0.0; 3];
    for row in rows.chunks_exact(dim) {
        let y = centred.project(row);
        let y_raw = raw.project(row);
        for j in 0..3 {
            mean[j] += y[j] / n;
            sq[j] += y[j] * y[j];
            // Uncentred scores differ by exactly the projected mean.
            let shift = dot(&centred.components[j], &centred.mean);
            assert!((y_raw[j] - shift - y[j]).abs() < 1e-9);
        }
    }
    for j in 0..3 {
        assert!(mean[j].abs() < 1e-9, "score {j} mean {}", mean[j]);
        let var = sq[j] / (n - 1.0);
        let l = centred.eigenvalues[j];
        assert!((var - l).abs() < 1e-9 * l, "score {j}: var {var} vs λ {l}");
    }
}

/// The default k (5) of the model's 1280 dimensions, and k = 16, are solved
/// by Lanczos: they must be the full decomposition's top pairs.
#[test]
fn lanczos_top_k_matches_the_full_decomposition() {
    let dim = 1280;
    let stats = stats_of(&model_like_rows(11, 400, 0.05), dim);
    let Covariance {
        cov,
        total_variance: total,
        ..
    } = covariance(&stats).unwrap();
    for k in [5, 16] {
        let (lanczos_values, lanczos_vectors) =
            top_eigen_lanczos(&cov, k, total).expect("k is small beside 1280: Lanczos converges");
        let (dense_values, dense_vectors) = top_eigen_dense(&cov, k).unwrap();
        for j in 0..k {
            let rel = (lanczos_values[j] - dense_values[j]).abs() / dense_values[j];
            assert!(
                rel < 1e-9,
                "k={k}: λ{j} {} vs {}",
                lanczos_values[j],
                dense_values[j]
            );
            let cos = dot(&lanczos_vectors[j], &dense_vectors[j]);
            assert!(cos > 1.0 - 1e-8, "k={k}: component {j} cos {cos}");
        }
    }
    // Small or wide requests keep the full decomposition.
    assert!(top_eigen_lanczos(&cov, 400, total).is_none());
    assert!(top_eigen_lanczos(&cov, 5, 0.0).is_none());
}
