"""The one Spark session builder: names the app and sets what the jobs need, nothing about resources.

`--master`, memory and cores belong to `spark-submit` (see `spark-submit.sh`); settings made here
would override the command line, so only the semantics the jobs rely on are fixed.
"""

from __future__ import annotations

import logging

from pyspark.sql import SparkSession

from conf.settings import SparkSettings

log = logging.getLogger(__name__)


# Set when the session starts (static: a session already running keeps its own). No Python call site is
# recorded in each column expression (the "DataFrame query context" of an error message): PySpark records it
# around most column functions with about ten calls to the JVM (look the session up, set the call site, clear
# it), where the function itself takes one. Building the feature job's plans took about 8,000 calls to the
# JVM with it, 3,000 without.
STARTUP_SETTINGS: dict[str, bool | float | int | str | None] = {"spark.python.sql.dataFrameDebugging.enabled": "false"}


def build_session(settings: SparkSettings, job: str) -> SparkSession:
    """Get (or create) the session for `job` with the SQL semantics the jobs are written for."""
    spark = (
        SparkSession.builder.appName(f"{settings.app_name}-{job}")
        .config(map=STARTUP_SETTINGS)
        .config("spark.sql.shuffle.partitions", str(settings.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        # The jobs parse with the try_ functions, so they behave the same with or without ANSI mode.
        .config("spark.sql.ansi.enabled", "true")
        .config("spark.sql.parquet.datetimeRebaseModeInWrite", "CORRECTED")
        .config("spark.sql.parquet.int96RebaseModeInWrite", "CORRECTED")
        # Nor does the JVM collect a stack trace for each expression's context.
        .config("spark.sql.dataFrameQueryContext.enabled", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    log.info("spark %s, master %s, driver garbage collector %s", spark.version, spark.sparkContext.master,
             "/".join(garbage_collectors(spark)))  # fmt: skip
    return spark


def garbage_collectors(spark: SparkSession) -> list[str]:
    """The names of the driver JVM's garbage collectors, sorted (`PS MarkSweep`, `PS Scavenge`: the parallel one)."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    return sorted(bean.getName() for bean in jvm.java.lang.management.ManagementFactory.getGarbageCollectorMXBeans())
