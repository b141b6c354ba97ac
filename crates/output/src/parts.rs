//! Parquet parts: how every table of an output is written and read.
//!
//! A table is a folder of `*.parquet` parts. [`PartWriter`] writes a stream
//! of batches as parts straight to the store (bounded row groups, a new part
//! every N rows: each closed part is a checkpoint); [`list_parquet`] and
//! [`read_columns`] are the one way parts are found and read back.

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use futures::StreamExt;
use parquet::arrow::AsyncArrowWriter;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use verger_store::object_store::buffered::BufWriter;
use verger_store::{Location, ObjectKey};

use crate::OutputError;

/// Rows per row group: 1,024 feature rows are about 5 MB, enough for fast
/// scans and small enough that a writer's buffer never grows with the run.
const ROW_GROUP_ROWS: usize = 1024;
/// Rows per file, so a part is a reasonable unit for Spark or DuckDB to split on.
const PART_ROWS: usize = 50_000;

/// Snappy, bounded row groups, and dictionaries only for the text columns.
///
/// A dictionary pays off for text that repeats (labels, failure kinds). On
/// float vectors it does not: nearly every value is new, so the writer hashes
/// 1,280 floats a row only to fall back to plain encoding once the
/// dictionary page is full, a cost that showed in the run's profile.
fn writer_properties(schema: &SchemaRef) -> WriterProperties {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(format!("verger {}", env!("CARGO_PKG_VERSION")))
        .set_dictionary_enabled(false);
    for field in schema.fields() {
        if matches!(field.data_type(), DataType::Utf8 | DataType::LargeUtf8) {
            props =
                props.set_column_dictionary_enabled(ColumnPath::from(field.name().as_str()), true);
        }
    }
    props.build()
}

/// What a [`PartWriter`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WrittenParts {
    pub files: Vec<String>,
    pub rows: u64,
}

/// Writes a stream of record batches as `dir/<prefix>-NNNN.parquet` files,
/// starting a new file every [`PART_ROWS`] rows.
pub struct PartWriter {
    location: Location,
    dir: String,
    prefix: String,
    schema: SchemaRef,
    current: Option<(AsyncArrowWriter<BufWriter>, String, usize)>,
    written: WrittenParts,
    /// Even with no rows, leave one (empty) file so readers find the schema.
    keep_empty: bool,
    /// Rows per file: a file is durable once closed, so this is also how
    /// much work a kill can lose.
    part_rows: usize,
}

impl PartWriter {
    pub fn new(location: &Location, dir: &str, prefix: &str, schema: SchemaRef) -> Self {
        PartWriter {
            location: location.clone(),
            dir: dir.trim_matches('/').to_string(),
            prefix: prefix.to_string(),
            schema,
            current: None,
            written: WrittenParts::default(),
            keep_empty: false,
            part_rows: PART_ROWS,
        }
    }

    /// Closes a file every `rows` rows (at most [`PART_ROWS`]): each closed
    /// file is a checkpoint that survives a crash.
    pub fn checkpoint_every(mut self, rows: usize) -> Self {
        self.part_rows = rows.clamp(1, PART_ROWS);
        self
    }

    /// Writes an empty file when no rows ever come, so `errors/` always exists.
    pub fn keep_empty(mut self) -> Self {
        self.keep_empty = true;
        self
    }

    pub fn rows(&self) -> u64 {
        self.written.rows
    }

    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), OutputError> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self.current.is_none() {
                self.open()?;
            }
            let (writer, target, rows) = self.current.as_mut().expect("opened above");
            let take = (self.part_rows - *rows).min(batch.num_rows() - offset);
            let slice = batch.slice(offset, take);
            writer
                .write(&slice)
                .await
                .map_err(|e| OutputError::Parquet {
                    target: target.clone(),
                    reason: e.to_string(),
                })?;
            *rows += take;
            offset += take;
            self.written.rows += take as u64;
            if *rows >= self.part_rows {
                self.close_current().await?;
            }
        }
        Ok(())
    }

    fn open(&mut self) -> Result<(), OutputError> {
        let relative = format!(
            "{}/{}-{:04}.parquet",
            self.dir,
            self.prefix,
            self.written.files.len()
        );
        let key = self.location.key(&relative);
        let target = self.location.display_key(&key);
        let props = writer_properties(&self.schema);
        let sink = BufWriter::new(self.location.store().clone(), key);
        let writer =
            AsyncArrowWriter::try_new(sink, self.schema.clone(), Some(props)).map_err(|e| {
                OutputError::Parquet {
                    target: target.clone(),
                    reason: e.to_string(),
                }
            })?;
        self.written.files.push(target.clone());
        self.current = Some((writer, target, 0));
        Ok(())
    }

    async fn close_current(&mut self) -> Result<(), OutputError> {
        if let Some((writer, target, _)) = self.current.take() {
            writer.close().await.map_err(|e| OutputError::Parquet {
                target,
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }

    pub async fn finish(mut self) -> Result<WrittenParts, OutputError> {
        if self.written.files.is_empty() && self.keep_empty {
            self.open()?;
        }
        self.close_current().await?;
        Ok(self.written)
    }
}

/// The Parquet parts under `dir`, in name order (the order every reader
/// uses, so results are reproducible).
pub async fn list_parquet(location: &Location, dir: &str) -> Result<Vec<ObjectKey>, OutputError> {
    let mut keys = location.list_keys(dir).await?;
    keys.retain(|k| k.as_ref().ends_with(".parquet"));
    keys.sort();
    Ok(keys)
}

/// The batches of one Parquet part, only the named top-level columns, in
/// the order asked. A missing column is an error naming the file and it.
pub async fn read_columns(
    location: &Location,
    key: &ObjectKey,
    names: &[&str],
) -> Result<impl futures::Stream<Item = Result<RecordBatch, OutputError>> + use<>, OutputError> {
    let target = location.display_key(key);
    let parquet_error = {
        let target = target.clone();
        move |e: parquet::errors::ParquetError| OutputError::Parquet {
            target: target.clone(),
            reason: e.to_string(),
        }
    };
    // Deprecated in parquet 59 in favour of hand-written readers; it is
    // still the maintained object_store adapter and does exactly this.
    #[allow(deprecated)]
    let reader = parquet::arrow::async_reader::ParquetObjectReader::new(
        location.store().clone(),
        key.clone(),
    );
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(&parquet_error)?;
    let schema = builder.schema().clone();
    let indices = names
        .iter()
        .map(|name| {
            schema.index_of(name).map_err(|_| OutputError::Parquet {
                target: target.clone(),
                reason: format!("no column {name:?} (is this a verger output?)"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices.iter().copied());
    let stream = builder
        .with_projection(mask)
        .build()
        .map_err(&parquet_error)?;
    // The projection keeps the file's column order; give the caller its own.
    let mut in_file = indices.clone();
    in_file.sort_unstable();
    let order: Vec<usize> = indices
        .iter()
        .map(|i| in_file.iter().position(|j| j == i).expect("kept above"))
        .collect();
    Ok(stream.map(move |batch| {
        let batch = batch.map_err(&parquet_error)?;
        batch.project(&order).map_err(|e| OutputError::Parquet {
            target: target.clone(),
            reason: e.to_string(),
        })
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{AsArray, StringArray, UInt64Array};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(rows: std::ops::Range<u64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("path", DataType::Utf8, false),
            Field::new("n", DataType::UInt64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(
                    rows.clone().map(|i| format!("p{i}")),
                )),
                Arc::new(UInt64Array::from_iter_values(rows)),
            ],
        )
        .unwrap()
    }

    #[test]
    fn only_text_columns_get_a_dictionary() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("label", DataType::Utf8, false),
            Field::new_list(
                "features",
                Field::new_list_field(DataType::Float32, false),
                false,
            ),
        ]));
        let props = writer_properties(&schema);
        assert!(props.dictionary_enabled(&ColumnPath::from("label")));
        let floats = ColumnPath::new(vec!["features".into(), "list".into(), "item".into()]);
        assert!(!props.dictionary_enabled(&floats));
    }

    #[tokio::test]
    async fn parts_close_every_n_rows_and_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::parse(dir.path().to_str().unwrap()).unwrap();
        let mut writer =
            PartWriter::new(&location, "t", "part-000", batch(0..1).schema()).checkpoint_every(4);
        writer.write(&batch(0..6)).await.unwrap();
        writer.write(&batch(6..10)).await.unwrap();
        let written = writer.finish().await.unwrap();
        assert_eq!(written.rows, 10);
        assert_eq!(written.files.len(), 3, "4 + 4 + 2 rows: {written:?}");

        let parts = list_parquet(&location, "t").await.unwrap();
        assert_eq!(parts.len(), 3);
        let mut seen = Vec::new();
        for key in &parts {
            // Columns come back in the order asked, not the file's.
            let mut batches = read_columns(&location, key, &["n", "path"]).await.unwrap();
            while let Some(b) = batches.next().await {
                let b = b.unwrap();
                assert_eq!(b.schema().field(0).name(), "n");
                seen.extend(
                    b.column(1)
                        .as_string::<i32>()
                        .iter()
                        .map(|p| p.unwrap().to_string()),
                );
            }
        }
        let expected: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
        assert_eq!(seen, expected);
        let err = match read_columns(&location, &parts[0], &["nope"]).await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a missing column must be refused"),
        };
        assert!(
            err.contains("nope") && err.contains("part-000-0000.parquet"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_empty_table_still_gets_one_part_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::parse(dir.path().to_str().unwrap()).unwrap();
        let written = PartWriter::new(&location, "e", "part-000", batch(0..1).schema())
            .keep_empty()
            .finish()
            .await
            .unwrap();
        assert_eq!((written.rows, written.files.len()), (0, 1));
        let none = PartWriter::new(&location, "n", "part-000", batch(0..1).schema())
            .finish()
            .await
            .unwrap();
        assert!(none.files.is_empty());
        assert!(list_parquet(&location, "n").await.unwrap().is_empty());
    }
}
