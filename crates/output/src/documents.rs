//! The JSON documents of an output, as typed structs.
//!
//! Each is written and read back through the same type, and every struct
//! refuses unknown fields: a document this verger cannot fully understand
//! is an error naming the file, never a half-read default.
//!
//! - `run.json`: [`RunRecord`], what a complete run did;
//! - `_staging/job.json`: [`JobIdentity`], what an unfinished run was
//!   started with (a resume must match it);
//! - task summaries: [`TaskSummary`], what one phase task (an embedded
//!   partition or a cluster slice) did; on a cluster they travel back to the
//!   client as JSON.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use verger_store::Location;

use crate::schema::{FailureKind, Stage};
use crate::{OutputError, RUN_FILE};

/// Reads and decodes one JSON document of `location`, naming the file in
/// every error (missing, unreadable, or not of type `T`).
pub async fn read_json<T: DeserializeOwned>(
    location: &Location,
    file: &str,
) -> Result<T, OutputError> {
    let key = location.key(file);
    let bytes = location.read(&key).await?;
    decode_json(&bytes, &location.display_key(&key))
}

/// Decodes a document already read; `shown` names it in errors.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8], shown: &str) -> Result<T, OutputError> {
    serde_json::from_slice(bytes).map_err(|e| OutputError::Document {
        file: shown.to_string(),
        reason: e.to_string(),
    })
}

/// What decides the content of a run's rows: a resume or an incremental
/// update must match it, or one output would mix two different jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobIdentity {
    pub input: String,
    pub glob: String,
    pub model_sha256: String,
    pub max_pixels: u64,
    /// `--views`: the names of the views featurized besides each photo
    /// (empty without; documents from before views have none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub views: Vec<String>,
}

impl JobIdentity {
    /// The fields that differ, as `name: was → now`.
    pub fn differences(&self, now: &JobIdentity) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |name: &str, was: &str, is: &str| {
            if was != is {
                out.push(format!("{name}: {was} → {is}"));
            }
        };
        check("input", &self.input, &now.input);
        check("glob", &self.glob, &now.glob);
        check("model sha256", &self.model_sha256, &now.model_sha256);
        check(
            "max pixels",
            &self.max_pixels.to_string(),
            &now.max_pixels.to_string(),
        );
        check("views", &self.views.join(","), &now.views.join(","));
        out
    }
}

/// `run.json`: everything a complete run did, for people and for the next
/// tools (report, classifier, `--incremental`). An embedded and a cluster
/// run write the same fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRecord {
    /// Always [`RunRecord::FORMAT`].
    pub format: String,
    /// [`RunRecord::VERSION`] when written by this verger.
    pub version: u32,
    pub counts: Counts,
    pub job: JobIdentity,
    pub parameters: Parameters,
    pub model: FeatureModel,
    pub timings: Timings,
    /// Fraction of the total variance each PCA component explains.
    pub explained_variance: Vec<f64>,
    /// Failures per kind, most frequent first.
    pub failures: Vec<FailureCount>,
    pub versions: Versions,
    /// Set when the run went through a Ballista cluster.
    pub cluster: Option<ClusterRecord>,
    pub started_at: String,
    pub finished_at: String,
}

impl RunRecord {
    pub const FORMAT: &'static str = "verger-run";
    pub const VERSION: u32 = 2;

    /// `run.json` of a finished output, refusing another format or version.
    pub async fn read(location: &Location) -> Result<Self, OutputError> {
        let key = location.key(RUN_FILE);
        let bytes = location.read(&key).await?;
        Self::decode(&bytes, &location.display_key(&key))
    }

    /// Decodes `run.json` from its bytes; `shown` names it in errors.
    pub fn decode(bytes: &[u8], shown: &str) -> Result<Self, OutputError> {
        #[derive(Deserialize)]
        struct Header {
            format: Option<String>,
            version: Option<u32>,
        }
        let refuse = |reason: String| OutputError::Document {
            file: shown.to_string(),
            reason,
        };
        let header: Header = decode_json(bytes, shown)?;
        match (header.format.as_deref(), header.version) {
            (Some(Self::FORMAT), Some(Self::VERSION)) => decode_json(bytes, shown),
            (Some(Self::FORMAT), Some(v)) => Err(refuse(format!(
                "version {v}, this verger reads version {}",
                Self::VERSION
            ))),
            _ => Err(refuse(format!(
                "no \"format\": \"{}\" (written by an older verger?); run it again with --overwrite",
                Self::FORMAT
            ))),
        }
    }

    /// The line printed at the end of a run.
    pub fn summary_line(&self) -> String {
        let rate = if self.timings.total_s > 0.0 {
            self.counts.listed as f64 / self.timings.total_s
        } else {
            0.0
        };
        let c = &self.counts;
        let restarted = match (c.resumed, c.unchanged, c.removed) {
            (0, 0, 0) => String::new(),
            (n, 0, 0) => format!(" ({n} already done before --resume, skipped)"),
            (_, unchanged, removed) => format!(
                " ({} computed, {unchanged} unchanged and reused, {removed} removed)",
                c.listed - unchanged - c.resumed
            ),
        };
        format!(
            "verger: {} images listed, {} featurized, {} errors{restarted} in {:.1}s ({:.1} images/s) -> {}",
            c.listed, c.features, c.errors, self.timings.total_s, rate, self.parameters.output
        )
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    /// Files under the input whose name matched the glob.
    pub listed: u64,
    /// Rows in `features/`.
    pub features: u64,
    /// Rows in `errors/`.
    pub errors: u64,
    /// Listed images an interrupted run had already done (`--resume`).
    pub resumed: u64,
    /// Listed images whose rows were reused from the earlier run because the
    /// file did not change (`--incremental`).
    pub unchanged: u64,
    /// Rows of the earlier run dropped because their file is gone (`--incremental`).
    pub removed: u64,
    /// Rows in `views/` (`--views`; 0 without, and in older documents).
    #[serde(default)]
    pub views: u64,
}

/// The run's settings that do not change its rows (those are in
/// [`JobIdentity`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parameters {
    pub output: String,
    pub k: usize,
    pub center: bool,
    pub batch_size: usize,
    /// Embedded: parallel tasks; cluster: slices.
    pub partitions: usize,
    /// Inference threads; `None` on a cluster, where each executor has its own.
    pub threads: Option<usize>,
    pub max_errors: Option<u64>,
    pub checkpoint_every: usize,
}

/// The feature model that made the rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureModel {
    pub path: String,
    pub sha256: String,
    /// `onnxruntime` or `tract`.
    pub engine: String,
    /// `fp32` (the shared model) or `int8` (`tools/quantize_int8.py`).
    /// Documents written before int8 existed have none: they were all fp32.
    #[serde(default = "fp32")]
    pub precision: String,
}

fn fp32() -> String {
    "fp32".to_string()
}

/// Wall-clock seconds of each phase, plus the per-stage sums.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timings {
    pub model_load_s: f64,
    pub featurize_s: f64,
    pub pca_fit_s: f64,
    pub project_write_s: f64,
    pub total_s: f64,
    pub stages: StageTimes,
}

/// Counts and per-stage time of featurizing (one task's, or a run's sum).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageTimes {
    pub listed: u64,
    pub featurized: u64,
    pub failed: u64,
    pub batches: u64,
    pub read_bytes: u64,
    /// Seconds spent in each stage, summed over all tasks (so they can exceed
    /// wall time when stages run in parallel).
    pub list_s: f64,
    pub read_s: f64,
    pub decode_resize_s: f64,
    pub inference_s: f64,
}

impl StageTimes {
    /// The sum of two tasks' figures.
    pub fn add(&self, other: &StageTimes) -> StageTimes {
        StageTimes {
            listed: self.listed + other.listed,
            featurized: self.featurized + other.featurized,
            failed: self.failed + other.failed,
            batches: self.batches + other.batches,
            read_bytes: self.read_bytes + other.read_bytes,
            list_s: self.list_s + other.list_s,
            read_s: self.read_s + other.read_s,
            decode_resize_s: self.decode_resize_s + other.decode_resize_s,
            inference_s: self.inference_s + other.inference_s,
        }
    }
}

/// How many images failed with one kind of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureCount {
    pub stage: Stage,
    pub kind: FailureKind,
    pub count: u64,
}

impl FailureCount {
    /// Counts per kind, most frequent first (ties in kind order).
    pub fn tally(counts: impl IntoIterator<Item = (FailureKind, u64)>) -> Vec<FailureCount> {
        let mut by_kind: BTreeMap<FailureKind, u64> = BTreeMap::new();
        for (kind, count) in counts {
            *by_kind.entry(kind).or_default() += count;
        }
        let mut out: Vec<FailureCount> = by_kind
            .into_iter()
            .filter(|(_, count)| *count > 0)
            .map(|(kind, count)| FailureCount {
                stage: kind.stage(),
                kind,
                count,
            })
            .collect();
        out.sort_by(|a, b| b.count.cmp(&a.count).then(a.kind.cmp(&b.kind)));
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Versions {
    pub verger: String,
    pub datafusion: String,
}

/// What the cluster did in a cluster run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterRecord {
    pub scheduler: String,
    pub slices: u32,
    pub workers: BTreeMap<String, WorkerRecord>,
}

/// What one executor did in a cluster run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerRecord {
    /// Featurize tasks it ran (slices).
    pub featurize_tasks: u64,
    pub images: u64,
    /// How many times its process loaded the model (1 for a healthy executor).
    pub model_loads: u64,
    pub pid: u32,
}

/// What one phase task did: an embedded partition or a cluster slice.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSummary {
    /// The slice a cluster task worked on (`None` for an embedded partition).
    pub slice: Option<u32>,
    /// Images listed by this task, the skipped ones included.
    pub listed: u64,
    /// Listed images already done before this run (`--resume`, `--incremental`).
    pub skipped: u64,
    /// Rows written: staged features (phase 1) or `features/` rows (phase 3).
    pub rows: u64,
    /// Failures staged (phase 1).
    pub errors: u64,
    pub failures: Vec<FailureCount>,
    pub stages: StageTimes,
    /// Who ran it (an executor's id; empty in an embedded run).
    pub worker: String,
    pub pid: u32,
    pub model_loads: u64,
    pub engine: String,
    pub model_sha256: String,
}

impl TaskSummary {
    /// The summary a cluster task sends back as one JSON string.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a task summary always serialises")
    }

    pub fn from_json(text: &str) -> Result<Self, OutputError> {
        decode_json(text.as_bytes(), "a task summary")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record() -> RunRecord {
        RunRecord {
            format: RunRecord::FORMAT.into(),
            version: RunRecord::VERSION,
            counts: Counts {
                listed: 10,
                features: 9,
                errors: 1,
                ..Counts::default()
            },
            job: JobIdentity {
                input: "/in".into(),
                glob: "*.jpg".into(),
                model_sha256: "61a2".into(),
                max_pixels: 64_000_000,
                views: vec!["full".into(), "full-m".into()],
            },
            parameters: Parameters {
                output: "/out".into(),
                k: 5,
                center: false,
                batch_size: 32,
                partitions: 2,
                threads: Some(2),
                max_errors: None,
                checkpoint_every: 256,
            },
            model: FeatureModel {
                path: "m.onnx".into(),
                sha256: "61a2".into(),
                engine: "onnxruntime".into(),
                precision: "fp32".into(),
            },
            timings: Timings::default(),
            explained_variance: vec![0.5, 0.2],
            failures: FailureCount::tally([(FailureKind::Corrupt, 1)]),
            versions: Versions {
                verger: "0.1.0".into(),
                datafusion: "55".into(),
            },
            cluster: None,
            started_at: "t0".into(),
            finished_at: "t1".into(),
        }
    }

    #[test]
    fn a_run_record_reads_back_as_written() {
        let record = record();
        let text = serde_json::to_vec_pretty(&record).unwrap();
        assert_eq!(RunRecord::decode(&text, "run.json").unwrap(), record);
        // `cluster` is written even when empty: both kinds of run have the same fields.
        assert!(
            String::from_utf8(text)
                .unwrap()
                .contains("\"cluster\": null")
        );
    }

    #[test]
    fn unknown_missing_and_foreign_fields_are_errors_naming_the_file() {
        let mut json = serde_json::to_value(record()).unwrap();
        json["counts"]["surprise"] = 1.into();
        let err = RunRecord::decode(json.to_string().as_bytes(), "/out/run.json").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("/out/run.json") && text.contains("surprise"),
            "{text}"
        );

        let mut json = serde_json::to_value(record()).unwrap();
        json["job"].as_object_mut().unwrap().remove("glob");
        let text = RunRecord::decode(json.to_string().as_bytes(), "/out/run.json")
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("/out/run.json") && text.contains("glob"),
            "{text}"
        );

        let old = br#"{"counts": {}, "parameters": {}}"#;
        let text = RunRecord::decode(old, "/old/run.json")
            .unwrap_err()
            .to_string();
        assert!(text.contains("older verger"), "{text}");

        let mut json = serde_json::to_value(record()).unwrap();
        json["version"] = 99.into();
        let text = RunRecord::decode(json.to_string().as_bytes(), "run.json")
            .unwrap_err()
            .to_string();
        assert!(text.contains("version 99"), "{text}");
    }

    #[test]
    fn job_differences_name_each_changed_setting() {
        let was = record().job;
        let mut now = was.clone();
        now.glob = "*.png".into();
        now.max_pixels = 1;
        assert_eq!(
            was.differences(&now),
            vec!["glob: *.jpg → *.png", "max pixels: 64000000 → 1"]
        );
        assert!(was.differences(&was).is_empty());
        let unknown = br#"{"input":"a","glob":"b","model_sha256":"c","max_pixels":1,"x":2}"#;
        assert!(decode_json::<JobIdentity>(unknown, "job.json").is_err());
    }

    #[test]
    fn task_summaries_travel_as_json() {
        let summary = TaskSummary {
            slice: Some(3),
            listed: 10,
            skipped: 2,
            rows: 7,
            errors: 1,
            failures: FailureCount::tally([(FailureKind::NotAnImage, 1)]),
            worker: "exec-1".into(),
            ..TaskSummary::default()
        };
        assert_eq!(TaskSummary::from_json(&summary.to_json()).unwrap(), summary);
        assert!(TaskSummary::from_json("{\"slice\": 1}").is_err());
    }

    #[test]
    fn failures_are_tallied_most_frequent_first() {
        let tally = FailureCount::tally([
            (FailureKind::Corrupt, 2),
            (FailureKind::NotFound, 5),
            (FailureKind::Corrupt, 4),
            (FailureKind::Empty, 0),
        ]);
        let flat: Vec<(FailureKind, u64)> = tally.iter().map(|f| (f.kind, f.count)).collect();
        assert_eq!(
            flat,
            vec![(FailureKind::Corrupt, 6), (FailureKind::NotFound, 5)]
        );
        assert_eq!(tally[1].stage, Stage::Read);
    }
}
