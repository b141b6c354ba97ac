//! The baseline: cosine k-nearest neighbours over the training features.

use crate::model::dot;

/// Reference rows (L2-normalised) and their label indices.
pub struct Knn {
    k: usize,
    dim: usize,
    classes: usize,
    /// rows × dim, each row of unit length (or zero).
    unit: Vec<f32>,
    labels: Vec<usize>,
}

impl Knn {
    /// `features`: rows × `dim`; `labels[i]` indexes a list of `classes` labels.
    pub fn new(k: usize, dim: usize, classes: usize, features: &[f32], labels: &[usize]) -> Self {
        assert_eq!(features.len(), labels.len() * dim, "one label per row");
        let unit = features.chunks_exact(dim).flat_map(unit_vector).collect();
        Knn {
            k: k.max(1),
            dim,
            classes,
            unit,
            labels: labels.to_vec(),
        }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// The label index most voted for among the `k` most cosine-similar
    /// reference rows; votes are weighted by similarity, and a tie goes to
    /// the label of the nearest neighbour among the tied ones.
    pub fn predict(&self, row: &[f32]) -> Option<usize> {
        let query = unit_vector(row);
        let mut nearest: Vec<(f32, usize)> = self
            .unit
            .chunks_exact(self.dim)
            .zip(&self.labels)
            .map(|(reference, &label)| (dot(reference, &query), label))
            .collect();
        let k = self.k.min(nearest.len());
        if k == 0 {
            return None;
        }
        nearest.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
        nearest.truncate(k);
        nearest.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut votes = vec![0.0f32; self.classes];
        for &(similarity, label) in &nearest {
            votes[label] += similarity.max(0.0) + f32::EPSILON;
        }
        let best = votes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        nearest
            .iter()
            .map(|&(_, label)| label)
            .find(|&label| votes[label] == best)
    }
}

fn unit_vector(row: &[f32]) -> Vec<f32> {
    let norm = dot(row, row).sqrt();
    if norm > 0.0 {
        row.iter().map(|v| v / norm).collect()
    } else {
        row.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nearest_by_angle_wins_not_by_length() {
        // Label 0 points along x, label 1 along y; the query is a long
        // vector mostly along x.
        let refs = [1.0, 0.0, 0.9, 0.1, 0.0, 1.0, 0.1, 0.9];
        let knn = Knn::new(1, 2, 2, &refs, &[0, 0, 1, 1]);
        assert_eq!(knn.predict(&[100.0, 10.0]), Some(0));
        assert_eq!(knn.predict(&[0.2, 5.0]), Some(1));
    }

    #[test]
    fn majority_of_k_decides() {
        let refs = [1.0, 0.0, 0.95, 0.05, 0.9, 0.1, 0.0, 1.0];
        let knn = Knn::new(3, 2, 2, &refs, &[1, 0, 0, 1]);
        // Nearest is label 1, but two of the three nearest are label 0.
        assert_eq!(knn.predict(&[1.0, 0.0]), Some(0));
        assert_eq!(Knn::new(5, 2, 2, &[], &[]).predict(&[1.0, 0.0]), None);
    }
}
