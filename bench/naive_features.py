"""The five features computed the naive way, for comparison: what a first Spark job would do.

    spark-submit bench/naive_features.py IN.csv OUT

The same reader and session settings as `bench/bare_read_write.py`, then one window per client
ordered by loan date, ages as days / 365.25, and one write. No validation, no quarantine, no
duplicate handling, ties between same-day loans in no defined order, and ages off around birthdays:
fast and wrong, the yardstick a user may hold the feature job against.
"""

import sys

from pyspark.sql import SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from conf import load_settings
from contract import RAW_COLUMNS
from spark_jobs.session import build_session
from spark_jobs.source import RAW_RECORD, READER_OPTIONS

if __name__ == "__main__":
    source, out = sys.argv[1], sys.argv[2]
    SparkSession.builder.config("spark.ui.enabled", "false").getOrCreate()
    spark = build_session(load_settings().spark, "naive")
    schema = T.StructType([T.StructField(c, T.StringType()) for c in (*RAW_COLUMNS, RAW_RECORD)])
    loans = spark.read.csv(source, schema=schema, header=True, multiLine=False, **READER_OPTIONS)
    loan_date = F.to_date("loan_date")
    earlier = Window.partitionBy("id").orderBy(loan_date).rowsBetween(Window.unboundedPreceding, -1)
    features = loans.select(
        F.col("loan_id").cast("long").alias("loan_id"),
        F.col("id").cast("long").alias("id"),
        loan_date.alias("loan_date"),
        F.count(F.lit(1)).over(earlier).alias("nb_previous_loans"),
        F.avg(F.col("loan_amount").cast("double")).over(earlier).alias("avg_amount_loans_previous"),
        F.floor(F.datediff(loan_date, F.to_date("birthday")) / 365.25).cast("int").alias("age"),
        F.floor(F.datediff(loan_date, F.to_date("job_start_date")) / 365.25).cast("int").alias("years_on_the_job"),
        F.when(F.col("flag_own_car") == "Y", 1).otherwise(0).alias("flag_own_car"),
        F.col("status").cast("int").alias("status"),
    )
    features.write.mode("overwrite").parquet(out)
    spark.stop()
