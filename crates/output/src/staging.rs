//! Phase 1's checkpoints, written the same way by an embedded partition and
//! by a cluster slice.
//!
//! A featurize task turns each batch of listed images into rows
//! `(path, label, result, size, last_modified_ms, e_tag, …)` where `result`
//! is `struct<features, error_stage, error_kind, error_reason>`. A
//! [`StagingWriter`] splits them: featurized rows go to
//! `_staging/features/<task>-NNNN.parquet`, failures to
//! `_staging/errors/<task>-NNNN.parquet`, each closed every N rows. The
//! failures are counted against the run's [`ErrorBudget`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::{filter, is_not_null, not};
use arrow::error::ArrowError;
use verger_store::Location;

use crate::documents::FailureCount;
use crate::schema::{FailureKind, staged_errors_schema, staged_features_schema};
use crate::{OutputError, PartWriter, STAGED_ERRORS_DIR, STAGED_FEATURES_DIR};

/// How a phase-1 task stages its rows: the run's settings (an embedded run
/// hands them to its partitions, a cluster run sends them in the plan).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StagingSpec {
    /// The run's attempt id: part of every file name, so a resumed run never
    /// writes over the files of the run it resumes.
    pub attempt: String,
    /// `--checkpoint-every`: rows per checkpoint file.
    pub checkpoint_every: usize,
    /// `--max-errors`.
    pub max_errors: Option<u64>,
    /// Failures already staged before this run (a resumed run's).
    pub errors_before: u64,
}

/// `--max-errors`: how many failures a run tolerates, shared by every task
/// of one process.
#[derive(Debug, Default)]
pub struct ErrorBudget {
    max: Option<u64>,
    used: AtomicU64,
}

impl ErrorBudget {
    /// `max = None` tolerates any number; `already` failures count from the start
    /// (those of an interrupted run being resumed, or of other tasks).
    pub fn new(max: Option<u64>, already: u64) -> Self {
        ErrorBudget {
            max,
            used: AtomicU64::new(already),
        }
    }

    /// Adds `n` failures; `Err(total)` once the total is over the maximum.
    pub fn charge(&self, n: u64) -> Result<(), u64> {
        let total = self.used.fetch_add(n, Ordering::SeqCst) + n;
        match self.max {
            Some(max) if total > max => Err(total),
            _ => Ok(()),
        }
    }

    pub fn max(&self) -> Option<u64> {
        self.max
    }
}

/// The checkpoint writers of one phase-1 task.
pub struct StagingWriter {
    location: Location,
    features: PartWriter,
    errors: PartWriter,
    failures: BTreeMap<FailureKind, u64>,
}

impl StagingWriter {
    /// `task` names the files (`part-001-<attempt>`, `slice-0003-<attempt>`):
    /// it must be unique to this task in this run.
    pub fn new(location: &Location, task: &str, checkpoint_every: usize) -> Self {
        StagingWriter {
            location: location.clone(),
            features: PartWriter::new(
                location,
                STAGED_FEATURES_DIR,
                task,
                staged_features_schema(),
            )
            .checkpoint_every(checkpoint_every),
            errors: PartWriter::new(location, STAGED_ERRORS_DIR, task, staged_errors_schema())
                .checkpoint_every(checkpoint_every),
            failures: BTreeMap::new(),
        }
    }

    /// Stages one batch of featurized rows; fails (after making the
    /// failures so far durable) once `budget` is exceeded.
    pub async fn write(
        &mut self,
        featurized: &RecordBatch,
        budget: &ErrorBudget,
    ) -> Result<(), OutputError> {
        let arrow_error = |e: ArrowError| OutputError::Parquet {
            target: self
                .location
                .display_key(&self.location.key(STAGED_FEATURES_DIR)),
            reason: e.to_string(),
        };
        let (ok, failed) = split_featurized(featurized).map_err(arrow_error)?;
        self.features.write(&ok).await?;
        self.errors.write(&failed).await?;
        let (paths, kinds, reasons) = (
            failed.column(0).as_string::<i32>(),
            failed.column(3).as_string::<i32>(),
            failed.column(4).as_string::<i32>(),
        );
        for row in 0..failed.num_rows() {
            let kind =
                kinds
                    .value(row)
                    .parse::<FailureKind>()
                    .map_err(|reason| OutputError::Parquet {
                        target: paths.value(row).to_string(),
                        reason,
                    })?;
            *self.failures.entry(kind).or_default() += 1;
            tracing::warn!(
                path = paths.value(row),
                kind = kind.as_str(),
                reason = reasons.value(row),
                "image skipped"
            );
        }
        if let Err(total) = budget.charge(failed.num_rows() as u64) {
            // The failures so far are what the user needs to see: keep them.
            let errors = std::mem::replace(
                &mut self.errors,
                PartWriter::new(
                    &self.location,
                    STAGED_ERRORS_DIR,
                    "unused",
                    staged_errors_schema(),
                ),
            );
            errors.finish().await?;
            return Err(OutputError::TooManyErrors {
                max: budget.max().unwrap_or_default(),
                total,
                staged: self
                    .location
                    .display_key(&self.location.key(STAGED_ERRORS_DIR)),
            });
        }
        Ok(())
    }

    /// Closes the last checkpoints: `(featurized rows, failures, per kind)`.
    pub async fn finish(self) -> Result<(u64, u64, Vec<FailureCount>), OutputError> {
        let rows = self.features.finish().await?.rows;
        let errors = self.errors.finish().await?.rows;
        Ok((rows, errors, FailureCount::tally(self.failures)))
    }
}

/// Splits featurized rows (columns `path`, `label`, `result`, `size`,
/// `last_modified_ms`, `e_tag`, found by name) into staged features
/// ([`staged_features_schema`]) and staged failures ([`staged_errors_schema`]).
pub fn split_featurized(batch: &RecordBatch) -> Result<(RecordBatch, RecordBatch), ArrowError> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .cloned()
            .ok_or_else(|| ArrowError::SchemaError(format!("featurized rows lack {name:?}")))
    };
    let result = column("result")?;
    let result = result.as_struct();
    let field = |name: &str| {
        result
            .column_by_name(name)
            .cloned()
            .ok_or_else(|| ArrowError::SchemaError(format!("featurize result lacks {name:?}")))
    };
    let (path, label) = (column("path")?, column("label")?);
    let (size, modified, e_tag) = (
        column("size")?,
        column("last_modified_ms")?,
        column("e_tag")?,
    );
    let features = field("features")?;
    // A result made without views has no such field: every row gets null.
    let views = match result.column_by_name("views") {
        Some(views) => views.clone(),
        None => arrow::array::new_null_array(
            &crate::list_of(arrow::datatypes::DataType::Float32),
            batch.num_rows(),
        ),
    };
    let (stage, kind, reason) = (
        field("error_stage")?,
        field("error_kind")?,
        field("error_reason")?,
    );
    let ok_mask = is_not_null(&features)?;
    let failed_mask = not(&ok_mask)?;
    let pick = |columns: &[&ArrayRef], mask: &BooleanArray| {
        columns
            .iter()
            .map(|column| filter(column.as_ref() as &dyn Array, mask))
            .collect::<Result<Vec<_>, _>>()
    };
    let ok = RecordBatch::try_new(
        staged_features_schema(),
        pick(
            &[&path, &label, &features, &size, &modified, &e_tag, &views],
            &ok_mask,
        )?,
    )?;
    let failed = RecordBatch::try_new(
        staged_errors_schema(),
        pick(
            &[
                &path, &label, &stage, &kind, &reason, &size, &modified, &e_tag,
            ],
            &failed_mask,
        )?,
    )?;
    Ok((ok, failed))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use arrow::array::{
        Float32Builder, Int64Array, ListBuilder, StringArray, StructArray, UInt64Array,
    };
    use arrow::datatypes::{DataType, Field, Fields, Schema};

    use super::*;
    use crate::list_of;

    /// Rows as `featurize` makes them: `(path, ok?)`.
    pub(crate) fn featurized(rows: &[(&str, Option<FailureKind>)]) -> RecordBatch {
        let mut features = ListBuilder::new(Float32Builder::new());
        let (mut stages, mut kinds, mut reasons) = (vec![], vec![], vec![]);
        for (_, failure) in rows {
            match failure {
                None => {
                    features.values().append_slice(&[1.0, 2.0]);
                    features.append(true);
                    stages.push(None);
                    kinds.push(None);
                    reasons.push(None);
                }
                Some(kind) => {
                    features.append(false);
                    stages.push(Some(kind.stage().as_str()));
                    kinds.push(Some(kind.as_str()));
                    reasons.push(Some("broken: details"));
                }
            }
        }
        let result_fields = Fields::from(vec![
            Field::new("features", list_of(DataType::Float32), true),
            Field::new("error_stage", DataType::Utf8, true),
            Field::new("error_kind", DataType::Utf8, true),
            Field::new("error_reason", DataType::Utf8, true),
        ]);
        let result = StructArray::new(
            result_fields.clone(),
            vec![
                Arc::new(features.finish()),
                Arc::new(StringArray::from(stages)),
                Arc::new(StringArray::from(kinds)),
                Arc::new(StringArray::from(reasons)),
            ],
            None,
        );
        let n = rows.len();
        let schema = Arc::new(Schema::new(vec![
            Field::new("path", DataType::Utf8, false),
            Field::new("label", DataType::Utf8, false),
            Field::new("result", DataType::Struct(result_fields), false),
            Field::new("size", DataType::UInt64, false),
            Field::new("last_modified_ms", DataType::Int64, false),
            Field::new("e_tag", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(std::iter::repeat_n("L", n))),
                Arc::new(result),
                Arc::new(UInt64Array::from_iter_values(0..n as u64)),
                Arc::new(Int64Array::from_iter_values(0..n as i64)),
                Arc::new(StringArray::from(vec![None::<&str>; n])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn featurized_rows_split_into_features_and_typed_failures() {
        let batch = featurized(&[("a", None), ("b", Some(FailureKind::Corrupt)), ("c", None)]);
        let (ok, failed) = split_featurized(&batch).unwrap();
        assert_eq!(ok.num_rows(), 2);
        assert_eq!(failed.num_rows(), 1);
        assert_eq!(failed.column(0).as_string::<i32>().value(0), "b");
        assert_eq!(failed.column(2).as_string::<i32>().value(0), "decode");
        assert_eq!(failed.column(3).as_string::<i32>().value(0), "corrupt");
        assert_eq!(
            failed
                .column(5)
                .as_primitive::<arrow::datatypes::UInt64Type>()
                .value(0),
            1
        );
    }

    #[tokio::test]
    async fn staging_stops_past_the_error_budget_and_keeps_the_failures() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::parse(dir.path().to_str().unwrap()).unwrap();
        let budget = ErrorBudget::new(Some(2), 1);
        let mut writer = StagingWriter::new(&location, "part-000-x", 256);
        writer
            .write(
                &featurized(&[("a", Some(FailureKind::Empty)), ("b", None)]),
                &budget,
            )
            .await
            .unwrap();
        let err = writer
            .write(&featurized(&[("c", Some(FailureKind::NotFound))]), &budget)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("--max-errors 2"), "{err}");
        let staged = crate::list_parquet(&location, STAGED_ERRORS_DIR)
            .await
            .unwrap();
        assert_eq!(
            staged.len(),
            1,
            "the failures were made durable: {staged:?}"
        );

        let mut writer = StagingWriter::new(&location, "part-001-x", 256);
        let unlimited = ErrorBudget::new(None, 0);
        writer
            .write(
                &featurized(&[
                    ("d", Some(FailureKind::Corrupt)),
                    ("e", Some(FailureKind::Corrupt)),
                    ("f", None),
                ]),
                &unlimited,
            )
            .await
            .unwrap();
        let (rows, errors, kinds) = writer.finish().await.unwrap();
        assert_eq!((rows, errors), (1, 2));
        assert_eq!(kinds, FailureCount::tally([(FailureKind::Corrupt, 2)]));
    }
}
