"""The five features computed the naive way, for comparison: what a first Spark job would do.

    spark-submit bench/naive_features.py IN.csv OUT

The same reader and session settings as `bench/bare_read_write.py`, then one window per client
ordered by loan date, ages as days / 365.25, and one write. No validation, no quarantine, no
duplicate handling, ties between same-day loans in no defined order, and ages off around birthdays:
fast and wrong, the yardstick a user may hold the feature job against.
"""

import sys

from bare_read_write import read_loans  # the same session and reader (spark-submit puts bench/ on the path)
from pyspark.sql import Window
from pyspark.sql import functions as F

if __name__ == "__main__":
    spark, loans = read_loans(sys.argv[1], "naive")
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
    features.write.mode("overwrite").parquet(sys.argv[2])
    spark.stop()
