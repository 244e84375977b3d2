"""Spark's floor for the feature job: read the CSV with the job's reader options, write it as Parquet.

    spark-submit bench/bare_read_write.py IN.csv OUT

The same reader as the job's (`spark_jobs.source.READER_OPTIONS`, every column as text, the header
by name, `multiLine` only for a file holding quoted line breaks: none in the generated data), the
same session settings (`spark_jobs.session`), no parsing, no rule, one write.
"""

import sys

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from conf import load_settings
from contract import RAW_COLUMNS
from spark_jobs.session import build_session
from spark_jobs.source import RAW_RECORD, READER_OPTIONS


def read_loans(source: str, job: str) -> tuple[SparkSession, DataFrame]:
    """The session (the jobs' settings, no UI) and the CSV read as the feature job reads a file that holds
    no quoted line breaks: every column as text, the header by name, split."""
    SparkSession.builder.config("spark.ui.enabled", "false").getOrCreate()
    spark = build_session(load_settings().spark, job)
    schema = T.StructType([T.StructField(c, T.StringType()) for c in (*RAW_COLUMNS, RAW_RECORD)])
    return spark, spark.read.csv(source, schema=schema, header=True, multiLine=False, **READER_OPTIONS)


if __name__ == "__main__":
    spark, loans = read_loans(sys.argv[1], "bare")
    loans.write.mode("overwrite").parquet(sys.argv[2])
    spark.stop()
