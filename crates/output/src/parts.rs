use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use verger_store::Location;
use verger_store::object_store::buffered::BufWriter;

use crate::OutputError;

/// Rows per row group: 1,024 feature rows are about 5 MB, enough for fast
/// scans and small enough that a writer's buffer never grows with the run.
const ROW_GROUP_ROWS: usize = 1024;
/// Rows per file, so a part is a reasonable unit for Spark or DuckDB to split on.
const PART_ROWS: usize = 50_000;

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
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_created_by(format!("verger {}", env!("CARGO_PKG_VERSION")))
            .build();
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
