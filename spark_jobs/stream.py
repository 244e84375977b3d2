"""The stream: loans landed as CSV files, applied to the online state exactly once (DESIGN §13).

    ./spark-submit.sh stream [--landing DIR] [--checkpoint DIR] [--quarantine DIR] [--once] [--trigger-seconds N]

Spark Structured Streaming's file source lists the new `*.csv` files of the landing folder (each file
once, recorded in the checkpoint); each micro-batch reads them with the feature job's reader and rules
(`spark_jobs.source`, `spark_jobs.features`: the same parsing, the same rejection reasons, loans dated
after today UTC rejected as `future_loan_date`), then:

1. the accepted loans already in the active version's history (its features, `meta.source`) are
   skipped, the same loan_id with another client or date is quarantined as `duplicate_loan_id`;
2. the executors register the other loans in the registries of the active version and of a version
   being loaded, and apply them to the active version's client hashes (`serving.landing`): a loan_id
   registered before with another row is quarantined as `duplicate_loan_id`;
3. the rejected rows are written to QUARANTINE/batch=<id>/ (replacing what a failed try left), and the
   version's meta counts what was applied;
4. if a load published another version meanwhile, the batch's loans are applied to it too.

Only then does Spark commit the micro-batch. A crash before that replays it: every step above is
idempotent (the registry and the hashes' `landed` field say what was done). `--once` processes what
has landed and stops; otherwise the query runs until SIGTERM or Ctrl-C, which stop it between micro-batches.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, cast

import pandas as pd
import redis
from py4j.protocol import Py4JJavaError
from pyspark import StorageLevel
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from conf import Settings, command_settings
from conf.command import DRIVER_PID_ENV
from conf.settings import RedisSettings
from contract import RAW_COLUMNS, REJECT_REASONS
from serving import embedded, landing
from serving.scoring import ApplicationRefused, ModelCache
from serving.scoring import load as load_model
from serving.store import OnlineStore, command_line_url, redacted
from spark_jobs.errors import error_line
from spark_jobs.features import (
    COPIES,
    REASON,
    distinct_parsed,
    rejected_rows,
    to_quarantine_output,
    validate,
)
from spark_jobs.output import hadoop_fs
from spark_jobs.session import build_session
from spark_jobs.source import RAW_RECORD, Limits, check_files, read_files

log = logging.getLogger(__name__)

FILES_SCHEMA = "path string, modificationTime timestamp, length long, content binary"
OUTCOME_SCHEMA = T.StructType(
    [T.StructField("loan_id", T.LongType()), T.StructField("outcome", T.StringType()),
      T.StructField("new_client", T.BooleanType())]
)  # fmt: skip
# A landed file whose structure breaks (an unclosed quote, a missing column): quarantined as one row
# with this reason and the message naming the file and line in `raw_record`; the file stays in place.
UNREADABLE_FILE = "unreadable_file"
STREAM_REJECT_REASONS = (*REJECT_REASONS, UNREADABLE_FILE)
LOAN_COLUMNS = ("loan_id", "client_id", "loan_date", "amount", "birthday", "job_start_date", "flag_own_car", "digest")
_MODELS = ModelCache()  # per Python worker: each version's model


class StreamError(RuntimeError):
    """The stream cannot apply loans (no active version, an unreadable history); the message says why."""


@dataclasses.dataclass(frozen=True)
class StreamArgs:
    landing: str
    checkpoint: str
    quarantine: str
    once: bool
    trigger_seconds: float
    max_files_per_trigger: int
    limits: Limits
    shuffle_partitions: int  # 0: the cluster's cores (Spark's default parallelism)
    redis: RedisSettings


@dataclasses.dataclass(frozen=True)
class Target:
    """What the executors need to apply a micro-batch's loans to one version."""

    url: str
    redis: RedisSettings
    version: str  # the active version, whose hashes are updated
    registries: tuple[str, ...]  # the versions the loans are registered in: the active one first


# ---------------------------------------------------------------- transforms


def landed_loans(accepted: DataFrame) -> DataFrame:
    """The accepted rows as landed loans (`serving.landing.LandedLoan`): the digest of the row's 24
    normalized values is its identity (two rows of one loan_id with another digest conflict)."""
    return accepted.select(
        F.col("_loan_id").alias("loan_id"), F.col("_id").alias("client_id"), F.col("_loan_date").alias("loan_date"),
        F.col("_loan_amount").alias("amount"), "birthday", "job_start_date", "flag_own_car",
        F.substring(F.sha2(F.to_json(F.struct(*RAW_COLUMNS)), 256), 1, 32).alias("digest"),
    )  # fmt: skip


def history_matches(loans: DataFrame, history: DataFrame) -> DataFrame:
    """The landed loans whose loan_id is in the version's history, with `same`: the same client and date
    (the loan is counted already) or not (a conflict). Few rows: the landed side is broadcast."""
    keys = loans.select("loan_id", F.col("client_id").alias("_client"), F.col("loan_date").alias("_date"))
    same = (F.col("id") == F.col("_client")) & (F.col("loan_date") == F.col("_date"))
    return history.join(F.broadcast(keys), "loan_id").select("loan_id", same.alias("same"))


def apply_in_executors(loans: DataFrame, target: Target) -> DataFrame:
    """Register and apply the loans from the executors, each client's loans in one task; one outcome row
    per loan (see OUTCOME_SCHEMA: applied, already_applied or duplicate_loan_id)."""
    ordered = loans.repartition("client_id").sortWithinPartitions("client_id", "loan_date", "loan_id")
    return ordered.mapInPandas(functools.partial(_apply_partitions, target), OUTCOME_SCHEMA)


def _apply_partitions(target: Target, frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """In an executor (a module-level function: shipped by reference, not with the model cache)."""
    store = OnlineStore.from_settings(target.redis, target.url)
    try:
        model = _MODELS.get(store, target.version)
        for frame in frames:
            batch = [
                landing.LandedLoan(int(r["loan_id"]), int(r["client_id"]), r["loan_date"], float(r["amount"]),
                                   _text(r["birthday"]), _text(r["job_start_date"]), _text(r["flag_own_car"]),
                                   str(r["digest"]))
                for r in cast(list[dict[str, Any]], frame.to_dict("records"))
            ]  # fmt: skip
            conflicts = landing.register(store, target.registries, batch)
            outcome = landing.apply(store, target.version, model, [x for x in batch if x.loan_id not in conflicts])
            rows = [(i, o, i in outcome.created) for i, o in outcome.by_loan.items()]
            rows += [(i, "duplicate_loan_id", False) for i in conflicts]
            yield pd.DataFrame(rows, columns=["loan_id", "outcome", "new_client"]).astype({"loan_id": "int64"})
    except ApplicationRefused as exc:
        raise landing.LandingError(exc.message) from None
    finally:
        store.close()


def _text(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and value != value) else str(value)


# ---------------------------------------------------------------- the micro-batch


@dataclasses.dataclass
class BatchReport:
    batch: int
    files: int = 0
    files_refused: int = 0
    rows_read: int = 0
    accepted: int = 0
    rejected: dict[str, int] = dataclasses.field(default_factory=dict)
    in_history: int = 0
    applied: dict[str, int] = dataclasses.field(default_factory=dict)  # version -> loans applied
    already_applied: int = 0
    new_clients: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        rejected = ", ".join(f"{r} {n}" for r, n in sorted(self.rejected.items()) if n) or "none"
        applied = ", ".join(f"{n} to {v}" for v, n in self.applied.items()) or "none"
        return (
            f"batch {self.batch}: {self.files} file(s) ({self.files_refused} refused), {self.rows_read} rows read, "
            f"{self.accepted} accepted, rejected: {rejected}; applied: {applied} ({self.new_clients} new clients), "
            f"{self.already_applied} already applied, {self.in_history} in the batch history; {self.seconds:.2f} s"
        )


class MicroBatches:
    """`foreachBatch`'s function: one micro-batch of landed files, applied (see the module docstring)."""

    def __init__(self, spark: SparkSession, args: StreamArgs, url: str) -> None:
        self.spark, self.args, self.url = spark, args, url
        self.store = OnlineStore.from_settings(args.redis, url, version_cache_seconds=0)
        self.histories: dict[str, DataFrame] = {}
        self.models_checked: set[str] = set()
        self.failure: BaseException | None = None
        self.reports: list[BatchReport] = []

    def __call__(self, files: DataFrame, batch_id: int) -> None:
        try:
            self.process(files, batch_id)
        except BaseException as exc:
            self.failure = exc
            raise

    def process(self, files: DataFrame, batch_id: int) -> None:
        started = time.perf_counter()
        report = BatchReport(batch_id)
        paths = sorted({row["path"] for row in files.select("path").collect()})
        present = [p for p in paths if self._exists(p)]
        if len(present) < len(paths):
            log.warning("batch %d: %d file(s) vanished before they were read", batch_id, len(paths) - len(present))
        report.files = len(present)
        sources, refused = check_files(self.spark, present, self.args.limits) if present else ([], [])
        report.files_refused = len(refused)
        for _, exc in refused:
            log.error("batch %d: a landed file is refused (left in place, quarantined as %s): %s", batch_id,
                      UNREADABLE_FILE, exc)  # fmt: skip
        quarantine: list[DataFrame] = []
        if refused:
            rows = [(*[None] * len(RAW_COLUMNS), UNREADABLE_FILE, f"{path}: {exc}") for path, exc in refused]
            schema = T.StructType([T.StructField(c, T.StringType()) for c in (*RAW_COLUMNS, REASON, RAW_RECORD)])
            quarantine.append(self.spark.createDataFrame(rows, schema))
            report.rejected[UNREADABLE_FILE] = len(refused)
        checked = None
        try:
            if sources:
                checked = self._checked(sources)
                self._count(checked, report)
                quarantine.append(to_quarantine_output(rejected_rows(checked)))
                if report.accepted:
                    loans = landed_loans(checked.where(F.col(REASON).isNull())).persist(StorageLevel.MEMORY_AND_DISK)
                    try:
                        conflicts = self._apply_everywhere(loans, report)
                    finally:
                        loans.unpersist()
                    if conflicts:
                        duplicate = checked.join(
                            F.broadcast(self.spark.createDataFrame([(i,) for i in sorted(conflicts)], "_loan_id long")),
                            "_loan_id",
                        ).withColumn(REASON, F.lit("duplicate_loan_id"))  # fmt: skip
                        quarantine.append(to_quarantine_output(duplicate))
                        before = report.rejected.get("duplicate_loan_id", 0)
                        report.rejected["duplicate_loan_id"] = before + len(conflicts)
                        report.accepted -= len(conflicts)
            if report.rejected:
                frame = quarantine[0]
                for more in quarantine[1:]:
                    frame = frame.unionByName(more)
                frame.write.mode("overwrite").parquet(f"{self.args.quarantine.rstrip('/')}/batch={batch_id}")
        finally:
            if checked is not None:
                checked.unpersist()
        report.seconds = time.perf_counter() - started
        self.reports.append(report)
        log.info("%s", report.line())

    def _exists(self, path: str) -> bool:
        path_class, fs = hadoop_fs(self.spark, path)
        return bool(fs.exists(path_class(path)))

    def _checked(self, sources: list[Any]) -> DataFrame:
        today = dt.datetime.now(dt.UTC).date()
        return validate(distinct_parsed(read_files(self.spark, sources)), today).persist(StorageLevel.MEMORY_AND_DISK)

    def _count(self, checked: DataFrame, report: BatchReport) -> None:
        counts = checked.groupBy(REASON).agg(F.count(F.lit(1)).alias("rows"), F.sum(COPIES).alias("copies"))
        for row in counts.collect():
            report.rows_read += int(row["copies"])
            if row[REASON] is None:
                report.accepted = int(row["rows"])
            else:
                report.rejected[row[REASON]] = int(row["rows"])

    def _apply_everywhere(self, loans: DataFrame, report: BatchReport) -> set[int]:
        """Apply to the active version, then again while a load published another one meanwhile;
        the loan_ids quarantined as duplicate_loan_id."""
        done: list[str] = []
        conflicts: set[int] = set()
        while (active := self.store.active_version(fresh=True)) not in done:
            if active is None:
                raise StreamError("no version is published in the online store: run materialize first")
            if done:
                log.info("version %s was published during the micro-batch: its loans are applied to it too", active)
            conflicts |= self._apply_to(active, loans, report, first=not done)
            done.append(active)
        return conflicts

    def _apply_to(self, version: str, loans: DataFrame, report: BatchReport, first: bool) -> set[int]:
        if version not in self.models_checked:  # here, so that a version without a model stops the stream clearly
            try:
                load_model(self.store, version)
            except ApplicationRefused as exc:
                raise StreamError(exc.message) from None
            self.models_checked.add(version)
        matches = history_matches(loans, self._history(version)).collect()
        in_history = {row["loan_id"] for row in matches if row["same"]}
        conflicts = {row["loan_id"] for row in matches if not row["same"]}
        skipped = in_history | conflicts
        candidates = loans
        if skipped:
            ids = self.spark.createDataFrame([(i,) for i in sorted(skipped)], "loan_id long")
            candidates = loans.join(F.broadcast(ids), "loan_id", "left_anti")
        target = Target(self.url, self.args.redis, version, (version, *self.store.loading_versions()))
        outcomes = apply_in_executors(candidates, target).collect()
        applied = [r["loan_id"] for r in outcomes if r["outcome"] == landing.APPLIED]
        new_clients = sum(1 for r in outcomes if r["new_client"])
        conflicts |= {r["loan_id"] for r in outcomes if r["outcome"] == "duplicate_loan_id"}
        self.store.note_landed(version, len(applied), new_clients, max(applied) if applied else None)
        report.applied[version] = len(applied)
        if first:
            report.in_history = len(in_history)
            report.already_applied = sum(1 for r in outcomes if r["outcome"] == landing.ALREADY_APPLIED)
            report.new_clients = new_clients
        return conflicts

    def _history(self, version: str) -> DataFrame:
        """The loans of the version's history (loan_id, id, loan_date), read once per version and cached
        (a new version may come from the same folder, rewritten)."""
        if version not in self.histories:
            source = self.store.meta(version).get("source")
            if not source:
                raise StreamError(f"version {version} does not say which features it was loaded from (meta source)")
            try:
                history = self.spark.read.parquet(source).select("loan_id", "id", "loan_date")
                history = history.persist(StorageLevel.MEMORY_AND_DISK)
                history.count()
            except (PySparkException, Py4JJavaError) as exc:
                raise StreamError(
                    f"the history of version {version} ({source}) cannot be read, so landed loans cannot be checked "
                    f"against it: {error_line(exc)}"
                ) from None
            for old in self.histories.values():
                old.unpersist()
            self.histories = {version: history}
        return self.histories[version]


# ---------------------------------------------------------------- the query


class Stopper:
    """SIGTERM and Ctrl-C ask the query to stop once the running micro-batch is done."""

    def __init__(self) -> None:
        self.requested = threading.Event()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._request)
        signal.signal(signal.SIGINT, self._request)

    def _request(self, signum: int, frame: FrameType | None) -> None:
        if self.requested.is_set():
            raise KeyboardInterrupt  # asked twice: stop now (the micro-batch is replayed on restart)
        log.info("stop requested (%s): stopping after the running micro-batch", signal.Signals(signum).name)
        self.requested.set()


def run(spark: SparkSession, args: StreamArgs, stopper: Stopper | None = None) -> list[BatchReport]:
    """Run the query until it has processed what landed (`--once`) or is asked to stop; its reports."""
    url = embedded.resolve_url(args.redis, "writer")
    # Micro-batches are small: a shuffle into more partitions than cores only adds tasks (and Python workers).
    partitions = args.shuffle_partitions or spark.sparkContext.defaultParallelism
    spark.conf.set("spark.sql.shuffle.partitions", str(partitions))
    batches = MicroBatches(spark, args, url)
    if batches.store.active_version(fresh=True) is None:
        raise StreamError("no version is published in the online store: run materialize first")
    files = (
        spark.readStream.format("binaryFile")
        .schema(FILES_SCHEMA)
        .option("pathGlobFilter", "*.csv")
        .option("maxFilesPerTrigger", args.max_files_per_trigger)
        .load(args.landing)
        .select("path")
    )
    writer = files.writeStream.queryName("credit-stream").option("checkpointLocation", args.checkpoint)
    if args.once:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{args.trigger_seconds} seconds")
    query = writer.foreachBatch(batches).start()
    how = "processing what has landed" if args.once else f"every {args.trigger_seconds:g} s"
    log.info("stream on %s (checkpoint %s, quarantine %s) into %s, %s", args.landing, args.checkpoint,
             args.quarantine, redacted(url), how)  # fmt: skip
    try:
        while query.isActive:
            if stopper is not None and stopper.requested.is_set() and not query.status["isTriggerActive"]:
                query.stop()
                break
            time.sleep(0.2)
        query.awaitTermination()  # raises the query's failure, if it failed
    except BaseException:
        if batches.failure is not None:
            raise batches.failure from None
        raise
    if batches.failure is not None:
        raise batches.failure
    return batches.reports


def parse_args(argv: Sequence[str] | None, settings: Settings) -> StreamArgs:
    parser = argparse.ArgumentParser(prog="spark-submit.sh stream", description=__doc__.split("\n\n")[0])
    s = settings.stream
    parser.add_argument("--landing", default=s.landing, help="the folder new loans CSV files land in")
    parser.add_argument("--checkpoint", default=s.checkpoint, help="the query's checkpoint folder")
    parser.add_argument("--quarantine", default=s.quarantine, help="where rejected rows go, per micro-batch")
    parser.add_argument("--once", action="store_true", help="process what has landed, then stop")
    parser.add_argument("--trigger-seconds", type=float, default=s.trigger_seconds, help="between micro-batches")
    parser.add_argument("--max-files-per-trigger", type=int, default=s.max_files_per_trigger)
    parser.add_argument("--redis-url", type=command_line_url, default="",
                        help="redis:// or rediss:// URL without a password (default: [redis] url)")  # fmt: skip
    parser.add_argument("--prefix", default=settings.redis.prefix, help="key prefix (default %(default)s)")
    ns = parser.parse_args(argv)
    if ns.trigger_seconds < 0:
        parser.error("--trigger-seconds: expected 0 or more")
    if ns.max_files_per_trigger < 1:
        parser.error("--max-files-per-trigger: expected at least 1")
    redis_settings = dataclasses.replace(settings.redis, url=ns.redis_url or settings.redis.url, prefix=ns.prefix)
    limits = Limits(settings.features.max_record_lines, settings.features.max_line_chars)
    return StreamArgs(ns.landing, ns.checkpoint, ns.quarantine, ns.once, ns.trigger_seconds, ns.max_files_per_trigger,
                      limits, s.shuffle_partitions, redis_settings)  # fmt: skip


def check(argv: Sequence[str]) -> int:
    """Before spark-submit starts a JVM: refuse bad arguments; create a local landing folder if missing."""
    args = parse_args(argv, command_settings())
    for path, what in ((args.landing, "landing"), (args.checkpoint, "checkpoint"), (args.quarantine, "quarantine")):
        if "://" in path and not path.startswith("file:"):
            continue
        local = Path(path.removeprefix("file:"))
        blocking = next((p for p in (local, *local.parents) if p.exists()), None)
        if blocking is not None and not blocking.is_dir():
            log.error("%s folder %s %s: give a folder", what, path,
                      "is a file" if blocking == local else f"lies under the file {blocking}")  # fmt: skip
            return 2
    landing_dir = Path(args.landing.removeprefix("file:"))
    if "://" not in args.landing and not landing_dir.exists():
        landing_dir.mkdir(parents=True)
        log.info("created the landing folder %s", landing_dir)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stream; 0 stopped cleanly, 2 bad arguments or nothing to apply to, 1 failed (replayed on restart)."""
    settings = command_settings()
    args = parse_args(argv, settings)
    stopper = Stopper()
    stopper.install()
    pid_file = os.environ.get(DRIVER_PID_ENV)
    if pid_file:
        Path(pid_file).write_text(str(os.getpid()), encoding="utf-8")
    spark = build_session(settings.spark, "stream")
    failure: BaseException | None = None
    try:
        reports = run(spark, args, stopper)
    except (StreamError, embedded.EmbeddedRedisError) as exc:
        log.error("%s", exc)
        return 2
    except (redis.RedisError, landing.LandingError) as exc:
        failure = exc
    except KeyboardInterrupt:
        log.warning("stopped during a micro-batch: it is replayed on the next start")
        return 130
    except Exception as exc:
        failure = exc
    finally:
        spark.stop()
    if failure is not None:
        log.error("the stream stopped: %s (restart it on the same checkpoint: the micro-batch is replayed, "
                  "nothing is applied twice)", error_line(failure))  # fmt: skip
        return 1
    applied = sum(sum(r.applied.values()) for r in reports)
    log.info("stream stopped after %d micro-batch(es): %d loans applied", len(reports), applied)
    return 0


if __name__ == "__main__":
    sys.exit(main())
