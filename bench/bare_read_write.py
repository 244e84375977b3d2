"""Spark's floor for the feature job: read the CSV with the job's reader options, write it as Parquet.

    spark-submit bench/bare_read_write.py IN.csv OUT

The same reader as the job's (`spark_jobs.source.READER_OPTIONS`, every column as text, the header
by name, `multiLine` only for a file holding quoted line breaks: none in the generated data), the
same session settings (`spark_jobs.session`), no parsing, no rule, one write.
"""

import sys

from pyspark.sql import SparkSession
from pyspark.sql import types as T

from conf import load_settings
from contract import RAW_COLUMNS
from spark_jobs.session import build_session
from spark_jobs.source import RAW_RECORD, READER_OPTIONS

if __name__ == "__main__":
    source, out = sys.argv[1], sys.argv[2]
    SparkSession.builder.config("spark.ui.enabled", "false").getOrCreate()
    spark = build_session(load_settings().spark, "bare")
    schema = T.StructType([T.StructField(c, T.StringType()) for c in (*RAW_COLUMNS, RAW_RECORD)])
    frame = spark.read.csv(source, schema=schema, header=True, multiLine=False, **READER_OPTIONS)
    frame.write.mode("overwrite").parquet(out)
    spark.stop()
