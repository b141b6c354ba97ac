//! The Arrow schemas of the output's tables, and the typed failure reasons
//! of `errors/`.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

/// Where in the pipeline an image failed (the `stage` column of `errors/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Read,
    Decode,
    Inference,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Read => "read",
            Stage::Decode => "decode",
            Stage::Inference => "inference",
        }
    }
}

/// Why an image ended up in `errors/` (the `kind` column): a fixed set, so
/// readers count and filter without parsing the human `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The object vanished between listing and reading.
    NotFound,
    /// The store refused or failed the read (after its retries).
    ReadFailed,
    /// A file of 0 bytes.
    Empty,
    /// Neither JPEG nor PNG (sniffed from the bytes, never the name).
    NotAnImage,
    /// Corrupt or truncated image data.
    Corrupt,
    /// Over the pixel limit or the decode-memory budget.
    TooLarge,
    /// A valid image in a variant the decoder does not implement.
    Unsupported,
    /// The model failed on the batch holding the image.
    InferenceFailed,
}

impl FailureKind {
    pub const ALL: [FailureKind; 8] = [
        FailureKind::NotFound,
        FailureKind::ReadFailed,
        FailureKind::Empty,
        FailureKind::NotAnImage,
        FailureKind::Corrupt,
        FailureKind::TooLarge,
        FailureKind::Unsupported,
        FailureKind::InferenceFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::NotFound => "not_found",
            FailureKind::ReadFailed => "read_failed",
            FailureKind::Empty => "empty",
            FailureKind::NotAnImage => "not_an_image",
            FailureKind::Corrupt => "corrupt",
            FailureKind::TooLarge => "too_large",
            FailureKind::Unsupported => "unsupported",
            FailureKind::InferenceFailed => "inference_failed",
        }
    }

    /// The stage a failure of this kind happens in.
    pub fn stage(self) -> Stage {
        match self {
            FailureKind::NotFound | FailureKind::ReadFailed => Stage::Read,
            FailureKind::Empty
            | FailureKind::NotAnImage
            | FailureKind::Corrupt
            | FailureKind::TooLarge
            | FailureKind::Unsupported => Stage::Decode,
            FailureKind::InferenceFailed => Stage::Inference,
        }
    }
}

impl std::str::FromStr for FailureKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        FailureKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown failure kind {s:?}"))
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `list<item: T>`, the layout pandas, Spark and DuckDB all read as arrays.
pub fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new_list_field(item, true)))
}

/// What identifies the version of an input file a row was made from.
fn identity_fields() -> [Field; 3] {
    [
        Field::new("size", DataType::UInt64, false),
        Field::new("last_modified_ms", DataType::Int64, false),
        Field::new("e_tag", DataType::Utf8, true),
    ]
}

/// Rows of the staging area: features before projection, with the
/// identity of the file they came from.
pub fn staged_features_schema() -> SchemaRef {
    let mut fields = vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("features", list_of(DataType::Float32), false),
    ];
    fields.extend(identity_fields());
    // With --views: every view's features back to back (null without).
    fields.push(Field::new("views", list_of(DataType::Float32), true));
    Arc::new(Schema::new(fields))
}

/// Rows of `views/` (only with `--views`): one per photo and view, the
/// view's name in `view` (`full`, `c0.6`, `tl0.5-m`, …).
pub fn views_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("view", DataType::Utf8, false),
        Field::new("features", list_of(DataType::Float32), false),
    ]))
}

/// Staged rows `(path, label, views, …)` (found by name) → `views/` rows,
/// one per view named in `names`, in that order. Rows without views are
/// skipped; a row whose views do not split into `names.len()` equal parts
/// is an error naming it.
pub fn explode_views(
    staged: &arrow::array::RecordBatch,
    names: &[String],
) -> Result<arrow::array::RecordBatch, arrow::error::ArrowError> {
    use arrow::array::{Array, AsArray, Float32Builder, ListBuilder, StringBuilder};
    use arrow::datatypes::Float32Type;
    use arrow::error::ArrowError;
    let column = |name: &str| {
        staged
            .column_by_name(name)
            .ok_or_else(|| ArrowError::SchemaError(format!("staged rows lack {name:?}")))
    };
    let paths = column("path")?.as_string::<i32>();
    let labels = column("label")?.as_string::<i32>();
    let views = column("views")?.as_list::<i32>();
    let values = views.values().as_primitive::<Float32Type>().values();
    let (mut path_out, mut label_out, mut view_out) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let mut features = ListBuilder::new(Float32Builder::new());
    for row in 0..staged.num_rows() {
        if views.is_null(row) || names.is_empty() {
            continue;
        }
        let offsets = views.value_offsets();
        let all = &values[offsets[row] as usize..offsets[row + 1] as usize];
        if all.is_empty() || all.len() % names.len() != 0 {
            return Err(ArrowError::InvalidArgumentError(format!(
                "{}: {} view values do not split into {} views",
                paths.value(row),
                all.len(),
                names.len()
            )));
        }
        let width = all.len() / names.len();
        for (name, one) in names.iter().zip(all.chunks_exact(width)) {
            path_out.append_value(paths.value(row));
            label_out.append_value(labels.value(row));
            view_out.append_value(name);
            features.values().append_slice(one);
            features.append(true);
        }
    }
    arrow::array::RecordBatch::try_new(
        views_schema(),
        vec![
            Arc::new(path_out.finish()),
            Arc::new(label_out.finish()),
            Arc::new(view_out.finish()),
            Arc::new(features.finish()),
        ],
    )
}

/// Staged failures: `errors/` rows plus the identity of the file.
pub fn staged_errors_schema() -> SchemaRef {
    let mut fields = errors_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect::<Vec<_>>();
    fields.extend(identity_fields());
    Arc::new(Schema::new(fields))
}

/// Rows of `inventory/`: every input file a run took, and which version of
/// it (what `--incremental` compares against).
pub fn inventory_schema() -> SchemaRef {
    let mut fields = vec![Field::new("path", DataType::Utf8, false)];
    fields.extend(identity_fields());
    Arc::new(Schema::new(fields))
}

/// Rows of `features/`: the final result.
pub fn features_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("features", list_of(DataType::Float32), false),
        Field::new("pca", list_of(DataType::Float64), false),
    ]))
}

/// Rows of `errors/`: one per input that could not be turned into features.
/// `stage` is a [`Stage`], `kind` a [`FailureKind`], `reason` for people.
pub fn errors_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("stage", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explode_views_makes_one_marked_row_per_view_and_skips_rows_without() {
        use arrow::array::{AsArray, Float32Builder, ListBuilder, RecordBatch, StringArray};
        let mut views = ListBuilder::new(Float32Builder::new());
        views.values().append_slice(&[1.0, 2.0, 3.0, 4.0]);
        views.append(true);
        views.append(false);
        let staged = RecordBatch::try_from_iter(vec![
            (
                "path",
                Arc::new(StringArray::from(vec!["a/Lime/1.jpg", "a/Kiwi/2.jpg"])) as _,
            ),
            (
                "label",
                Arc::new(StringArray::from(vec!["Lime", "Kiwi"])) as _,
            ),
            ("views", Arc::new(views.finish()) as _),
        ])
        .unwrap();
        let names = vec!["full".to_string(), "full-m".to_string()];
        let out = explode_views(&staged, &names).unwrap();
        assert_eq!(out.schema(), views_schema());
        assert_eq!(out.num_rows(), 2, "two views of the one row that has them");
        let view = out.column(2).as_string::<i32>();
        assert_eq!((view.value(0), view.value(1)), ("full", "full-m"));
        let features = out.column(3).as_list::<i32>();
        let second = features.value(1);
        let second = second.as_primitive::<arrow::datatypes::Float32Type>();
        assert_eq!(second.values().as_ref(), &[3.0, 4.0]);
        let three = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let err = explode_views(&staged, &three).unwrap_err().to_string();
        assert!(err.contains("a/Lime/1.jpg"), "{err}");
    }

    #[test]
    fn failure_kinds_round_trip_through_their_names() {
        for kind in FailureKind::ALL {
            assert_eq!(kind.as_str().parse::<FailureKind>().unwrap(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        assert!("truncated-ish".parse::<FailureKind>().is_err());
        assert_eq!(FailureKind::NotFound.stage(), Stage::Read);
        assert_eq!(FailureKind::TooLarge.stage(), Stage::Decode);
        assert_eq!(FailureKind::InferenceFailed.stage().as_str(), "inference");
    }

    #[test]
    fn staged_errors_extend_errors_with_the_file_identity() {
        let staged = staged_errors_schema();
        let errors = errors_schema();
        assert_eq!(
            &staged.fields()[..errors.fields().len()],
            &errors.fields()[..]
        );
        assert_eq!(staged.field(errors.fields().len()).name(), "size");
    }
}
