"""The one Spark session builder: names the app and sets what the jobs need, nothing about resources.

`--master`, memory and cores belong to `spark-submit` (see `spark-submit.sh`); settings made here
would override the command line, so only the semantics the jobs rely on are fixed.
"""

from __future__ import annotations

import logging

from pyspark.sql import SparkSession

from conf.settings import SparkSettings

log = logging.getLogger(__name__)


def build_session(settings: SparkSettings, job: str) -> SparkSession:
    """Get (or create) the session for `job` with the SQL semantics the jobs are written for."""
    spark = (
        SparkSession.builder.appName(f"{settings.app_name}-{job}")
        .config("spark.sql.shuffle.partitions", str(settings.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        # The jobs parse with the try_ functions, so they behave the same with or without ANSI mode.
        .config("spark.sql.ansi.enabled", "true")
        .config("spark.sql.parquet.datetimeRebaseModeInWrite", "CORRECTED")
        .config("spark.sql.parquet.int96RebaseModeInWrite", "CORRECTED")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    log.info("spark %s, master %s", spark.version, spark.sparkContext.master)
    return spark
