"""Reads a verger output with PySpark in local mode (the reference system's
engine) and prints what it saw as JSON for the Rust test to check."""
import json
import sys

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

out = sys.argv[1]
spark = (
    SparkSession.builder.master("local[1]")
    .appName("verger-interop")
    .config("spark.ui.enabled", "false")
    .config("spark.driver.host", "127.0.0.1")
    .config("spark.driver.bindAddress", "127.0.0.1")
    .config("spark.sql.shuffle.partitions", "1")
    .getOrCreate()
)
spark.sparkContext.setLogLevel("ERROR")
features = spark.read.parquet(f"file://{out}/features")
errors = spark.read.parquet(f"file://{out}/errors")
sizes = features.select(
    F.min(F.size("features")).alias("min_f"),
    F.max(F.size("features")).alias("max_f"),
    F.min(F.size("pca")).alias("min_p"),
    F.max(F.size("pca")).alias("max_p"),
).first()
print(
    json.dumps(
        {
            "rows": features.count(),
            "distinct_labels": features.select("label").distinct().count(),
            "schema": {f.name: f.dataType.simpleString() for f in features.schema.fields},
            "errors_schema": {f.name: f.dataType.simpleString() for f in errors.schema.fields},
            "features_len": [sizes["min_f"], sizes["max_f"]],
            "pca_len": [sizes["min_p"], sizes["max_p"]],
            "error_rows": errors.count(),
        }
    )
)
spark.stop()
