//! `evaluation.json`, the classifier's scores on a held-out split (written by
//! `verger evaluate`), as the report reads it.
//!
//! ```json
//! {"format":"verger-evaluation","version":1,"split":"Test","images":480,"top1":0.98,"top5":1.0,
//!  "knn_baseline":{"k":5,"top1":0.97},"labels":["Apple Braeburn","…"],
//!  "per_class":[{"label":"Apple Braeburn","precision":1.0,"recall":0.95,"support":20}],
//!  "confusion":[[20,0],[1,19]]}
//! ```
//!
//! `confusion[i][j]` counts images whose true label is `labels[i]` and
//! predicted label is `labels[j]`. Other fields are allowed and ignored;
//! a `precision` or `recall` may be `null` (a class never predicted, or
//! absent from the split).

use serde::Deserialize;

pub const FORMAT: &str = "verger-evaluation";
/// Version 2 added `open_set` (rejection figures: the report draws its
/// risk–coverage curve) and later `examples` (photos the report shows as
/// thumbnails); both are optional here, so version 1 still reads.
pub const VERSIONS: [u32; 2] = [1, 2];

#[derive(Debug, Clone, Deserialize)]
pub struct Evaluation {
    pub format: String,
    pub version: u32,
    #[serde(default)]
    pub split: String,
    pub images: u64,
    pub top1: f64,
    pub top5: f64,
    #[serde(default)]
    pub knn_baseline: Option<KnnBaseline>,
    pub labels: Vec<String>,
    pub per_class: Vec<ClassScore>,
    pub confusion: Vec<Vec<u64>>,
    #[serde(default)]
    pub open_set: Option<OpenSet>,
    #[serde(default)]
    pub examples: Option<Examples>,
}

/// The part of `open_set` the report draws.
#[derive(Debug, Clone, Deserialize)]
pub struct OpenSet {
    pub answered: f64,
    pub accuracy_among_answered: f64,
    #[serde(default)]
    pub risk_coverage: Vec<CoveragePoint>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CoveragePoint {
    pub max_softmax_threshold: f64,
    pub answered: f64,
    pub accuracy_among_answered: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Examples {
    #[serde(default)]
    pub confused: Vec<Example>,
    #[serde(default)]
    pub rejected: Vec<Example>,
    #[serde(default)]
    pub wrongly_answered: Vec<Example>,
}

/// One photo: its path in the run's input, its folder's label, the best
/// fruit label and why none was given (if none was).
#[derive(Debug, Clone, Deserialize)]
pub struct Example {
    pub path: String,
    pub label: String,
    pub predicted: String,
    pub confidence: f64,
    #[serde(default)]
    pub rejected_by: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KnnBaseline {
    pub k: usize,
    pub top1: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClassScore {
    pub label: String,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub support: u64,
}

impl Evaluation {
    /// Parses and checks the document; the error is a reason to show after
    /// the file's name.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let evaluation: Evaluation = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        evaluation.check()?;
        Ok(evaluation)
    }

    fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "format is {:?}, expected {FORMAT:?} (the file `verger evaluate` writes)",
                self.format
            ));
        }
        if !VERSIONS.contains(&self.version) {
            return Err(format!(
                "version {} is not supported by this verger (it reads versions {VERSIONS:?})",
                self.version
            ));
        }
        let n = self.labels.len();
        if self.confusion.len() != n || self.confusion.iter().any(|row| row.len() != n) {
            return Err(format!(
                "confusion must be {n} × {n} (one row and one column per label), got {} rows of lengths {:?}",
                self.confusion.len(),
                self.confusion.iter().map(Vec::len).collect::<Vec<_>>()
            ));
        }
        for (name, value) in [("top1", self.top1), ("top5", self.top5)] {
            if !(0.0..=1.0).contains(&value) {
                return Err(format!("{name} = {value} is not a fraction in [0, 1]"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"format":"verger-evaluation","version":1,"split":"Test","images":40,
        "top1":0.975,"top5":1.0,"knn_baseline":{"k":5,"top1":0.95},"labels":["A","B"],
        "per_class":[{"label":"A","precision":0.95,"recall":1.0,"support":20},
                     {"label":"B","precision":null,"recall":0.95,"support":20}],
        "confusion":[[20,0],[1,19]],"extra":{"ignored":true}}"#;

    #[test]
    fn reads_the_documented_shape_with_extra_fields_and_nulls() {
        let e = Evaluation::parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(e.labels, ["A", "B"]);
        assert_eq!(e.confusion[1], [1, 19]);
        assert_eq!(e.per_class[1].precision, None);
        assert_eq!(e.knn_baseline.unwrap().k, 5);
    }

    #[test]
    fn refuses_other_formats_versions_and_shapes() {
        let other = SAMPLE.replace("verger-evaluation", "something");
        assert!(
            Evaluation::parse(other.as_bytes())
                .unwrap_err()
                .contains("format")
        );
        let two = SAMPLE.replace(r#""version":1"#, r#""version":2"#);
        assert!(Evaluation::parse(two.as_bytes()).is_ok());
        let newer = SAMPLE.replace(r#""version":1"#, r#""version":3"#);
        assert!(
            Evaluation::parse(newer.as_bytes())
                .unwrap_err()
                .contains("version 3")
        );
        let ragged = SAMPLE.replace("[1,19]", "[1]");
        assert!(
            Evaluation::parse(ragged.as_bytes())
                .unwrap_err()
                .contains("2 × 2")
        );
    }
}
