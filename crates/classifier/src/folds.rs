//! Scene-grouped folds: the cross-validation split the rejection threshold
//! is calibrated on.
//!
//! Within a label, training photos come from a few shooting sessions (the
//! same crate, shuffled), so random folds put near-copies on both sides and
//! out-of-fold confidences come out far too optimistic (issue 14's study:
//! 0.97 random-fold top-1 against 0.62 on new photos). Clustering each
//! label's photos and holding out whole clusters mimics new sessions.

/// The fold (0..folds) of every row. Per label (labels sorted, index `li`),
/// its rows are cut into `folds` clusters by complete-linkage agglomerative
/// clustering on the cosine distance between their `vectors` (standardised
/// features); the cluster of size rank `r` (largest first, ties by first
/// row) goes to fold `(r + li) mod folds`, so every fold gets some of
/// every label's sessions. Deterministic.
pub fn scene_folds(vectors: &[Vec<f32>], labels: &[String], folds: usize) -> Vec<usize> {
    assert_eq!(vectors.len(), labels.len());
    let mut distinct: Vec<&String> = labels.iter().collect();
    distinct.sort();
    distinct.dedup();
    let mut fold_of = vec![0; labels.len()];
    for (li, label) in distinct.iter().enumerate() {
        let rows: Vec<usize> = (0..labels.len())
            .filter(|&i| labels[i] == **label)
            .collect();
        let members: Vec<&[f32]> = rows.iter().map(|&i| vectors[i].as_slice()).collect();
        let mut clusters = complete_linkage_clusters(&members, folds);
        // Stable: equal sizes keep the order of their first member.
        clusters.sort_by_key(|c| std::cmp::Reverse(c.len()));
        for (rank, cluster) in clusters.iter().enumerate() {
            for &member in cluster {
                fold_of[rows[member]] = (rank + li) % folds;
            }
        }
    }
    fold_of
}

/// Cuts the complete-linkage dendrogram of `members` into (at most) `k`
/// clusters, each a list of member indices in increasing order, clusters
/// ordered by their first member.
fn complete_linkage_clusters(members: &[&[f32]], k: usize) -> Vec<Vec<usize>> {
    let n = members.len();
    if n <= k {
        return (0..n).map(|i| vec![i]).collect();
    }
    let norms: Vec<f64> = members.iter().map(|v| norm(v)).collect();
    let mut condensed = Vec::with_capacity(n * (n - 1) / 2);
    for i in 0..n {
        for j in i + 1..n {
            condensed.push(cosine_distance(members[i], members[j], norms[i], norms[j]));
        }
    }
    let dendrogram = kodama::linkage(&mut condensed, n, kodama::Method::Complete);
    // Replaying the first n − k merges leaves k clusters; cluster id n + s
    // is the one step s made.
    let mut parent: Vec<usize> = (0..2 * n - 1).collect();
    for (s, step) in dendrogram.steps().iter().take(n - k).enumerate() {
        parent[step.cluster1] = n + s;
        parent[step.cluster2] = n + s;
    }
    let root = |mut c: usize| {
        while parent[c] != c {
            c = parent[c];
        }
        c
    };
    let mut clusters: Vec<(usize, Vec<usize>)> = Vec::new();
    for i in 0..n {
        let r = root(i);
        match clusters.iter_mut().find(|(id, _)| *id == r) {
            Some((_, list)) => list.push(i),
            None => clusters.push((r, vec![i])),
        }
    }
    clusters.into_iter().map(|(_, list)| list).collect()
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
}

fn cosine_distance(a: &[f32], b: &[f32], norm_a: f64, norm_b: f64) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let denominator = norm_a * norm_b;
    if denominator == 0.0 {
        1.0
    } else {
        1.0 - dot / denominator
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_linkage_separates_well_apart_groups() {
        // Three directions, a few noisy copies of each.
        let base = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        let mut members = Vec::new();
        for i in 0..9 {
            let mut v = base[i % 3].to_vec();
            v[(i + 1) % 3] += 0.05 * (i as f32);
            members.push(v);
        }
        let refs: Vec<&[f32]> = members.iter().map(Vec::as_slice).collect();
        let clusters = complete_linkage_clusters(&refs, 3);
        assert_eq!(clusters.len(), 3);
        for cluster in &clusters {
            let group = cluster[0] % 3;
            assert!(cluster.iter().all(|m| m % 3 == group), "{clusters:?}");
        }
    }

    #[test]
    fn scene_folds_hold_out_whole_clusters_and_rotate_by_label() {
        let mut vectors = Vec::new();
        let mut labels = Vec::new();
        for label in ["a", "b"] {
            for i in 0..10 {
                // Two sessions per label: 6 photos one way, 4 the other.
                let v = if i < 6 {
                    vec![1.0, 0.1 * i as f32]
                } else {
                    vec![0.1 * i as f32, 1.0]
                };
                vectors.push(v);
                labels.push(label.to_string());
            }
        }
        let folds = scene_folds(&vectors, &labels, 2);
        // Label a (index 0): the larger session is fold 0; label b: fold 1.
        assert!(folds[..6].iter().all(|&f| f == 0), "{folds:?}");
        assert!(folds[6..10].iter().all(|&f| f == 1), "{folds:?}");
        assert!(folds[10..16].iter().all(|&f| f == 1), "{folds:?}");
        assert!(folds[16..].iter().all(|&f| f == 0), "{folds:?}");
    }
}
