"""The feature job: raw loans CSV -> one row of features per accepted loan, quarantine, report.

    ./spark-submit.sh features --input data/raw/loans.csv --output data/output [--as-of 2020-12-31]

Writes `OUT/features/` (Parquet), `OUT/quarantine/` (Parquet: the rejected rows as text plus
`reason`), `OUT/clients/` (Parquet: each client's history state, DESIGN §8) and `OUT/report.json`,
staged and moved into place at the end (DESIGN §4 to §6).
The transforms below are pure `DataFrame -> DataFrame` functions; `run` does the reading and writing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import glob
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from conf import Settings, SettingsError, command_settings
from conf.settings import parse_date as parse_setting_date
from contract import NULL_REASONS, OUTPUT_COLUMNS, RAW_COLUMNS, REJECT_REASONS, TRIMMED
from contract import spark as contract_spark
from contract.spark import parse_date, parse_decimal, parse_whole_number
from spark_jobs.errors import error_line
from spark_jobs.output import OutputError, StagedOutput
from spark_jobs.report import summary
from spark_jobs.session import build_session
from spark_jobs.source import RAW_RECORD, InputError, Limits, SourceFile, paths_of, read_files, read_raw

log = logging.getLogger(__name__)

COPIES = "_copies"
DEFAULT_LIMITS = Limits(max_record_lines=20, max_line_chars=100_000)
REASON = "reason"


# ---------------------------------------------------------------- transforms (DataFrame -> DataFrame)


def key_by_client(raw: DataFrame) -> DataFrame:
    """Add the parsed client id `_id` and gather each client's rows in one partition.

    Every later step (exact duplicates, the feature window) groups by client, so this is the job's
    one full shuffle; identical rows share `_id` and meet in the same partition.
    """
    trimmed = raw.select(F.btrim(F.col("id"), F.lit(TRIMMED)).alias("_id_text"), *RAW_COLUMNS, RAW_RECORD)
    keyed = trimmed.select(parse_whole_number(F.col("_id_text")).alias("_id"), *RAW_COLUMNS, RAW_RECORD)
    return keyed.repartition("_id")


def normalized(column: str, value: Column | None = None) -> Column:
    """A raw column (or `value`, named `column`) as the contract reads it: text, trimmed, empty as null."""
    trimmed = F.btrim((F.col(column) if value is None else value).cast("string"), F.lit(TRIMMED))
    # `nullif` computes the trimmed text once; `when(trimmed != "", trimmed)` computed it twice, and trimming
    # is most of the cost of reading the raw rows.
    return F.nullif(trimmed, F.lit("")).alias(column)


# What TRIMMED holds besides the space and the line breaks, which a value read from one line never holds.
IN_LINE_TRIMMED = tuple(c for c in TRIMMED if c not in " \r\n")


def normalized_in_line(column: str) -> Column:
    """`normalized(column)` of a value read from one line (of a file whose quoted values never span lines:
    `SourceFile.multiline` false), by fewer copies and more generated code (the job's read of the rows).

    A value holding none of `IN_LINE_TRIMMED` (nearly all) is trimmed of spaces by the plain `trim`, which
    returns the value itself when it has none; trimming a set of characters copies each of the value's
    characters and the value. The eight columns the job reads, at 8M loans, are normalized in 0.4 s where
    the set took 1.9 s (over the 4.4 s that reading them takes).
    """
    text = F.col(column).cast("string")
    plain = ~reduce(Column.__or__, [text.contains(c) for c in IN_LINE_TRIMMED]) if IN_LINE_TRIMMED else F.lit(True)
    return F.nullif(F.when(plain, F.trim(text)).otherwise(F.btrim(text, F.lit(TRIMMED))), F.lit("")).alias(column)


def normalize(rows: DataFrame) -> DataFrame:
    """Keep the contract's columns, normalized (and `_id` if present).

    `raw_record` (the text of a malformed record) is kept as read.
    """
    keep = ([F.col("_id")] if "_id" in rows.columns else []) + [F.col(RAW_RECORD)]
    return rows.select(*keep, *[normalized(c) for c in RAW_COLUMNS])


def drop_exact_duplicates(rows: DataFrame) -> DataFrame:
    """One row per distinct row, with the number of identical copies read in `_copies`."""
    keys = (["_id"] if "_id" in rows.columns else []) + [*RAW_COLUMNS, RAW_RECORD]
    return rows.groupBy(*keys).agg(F.count(F.lit(1)).alias(COPIES))


def parse_keys(rows: DataFrame) -> DataFrame:
    """Parse the columns a row is validated on: `_id`, `_loan_id`, `_loan_date`, `_loan_amount`."""
    # `_id` is kept when `key_by_client` made it: recomputing it would hide that rows are partitioned by it.
    client = [] if "_id" in rows.columns else [parse_whole_number(F.col("id")).alias("_id")]
    return rows.select(
        *rows.columns,
        *client,
        parse_whole_number(F.col("loan_id")).alias("_loan_id"),
        parse_date(F.col("loan_date")).alias("_loan_date"),
        parse_decimal(F.col("loan_amount")).alias("_loan_amount"),
    )


def distinct_parsed(raw: DataFrame) -> DataFrame:
    """The raw rows keyed by client, normalized, one per distinct row (`_copies`), their keys parsed: what
    `validate` checks in the stream, whose micro-batches are small enough to compare every row whole. The
    feature job reaches the same rows by a cheaper route (`key_rows` below)."""
    return raw.transform(key_by_client).transform(normalize).transform(drop_exact_duplicates).transform(parse_keys)


def conflicting_loan_ids(parsed: DataFrame) -> DataFrame:
    """The `loan_id`s that two or more distinct rows share (`parsed` holds distinct rows)."""
    return (
        parsed.where(F.col("_loan_id").isNotNull())
        .groupBy("_loan_id")
        .agg(F.count(F.lit(1)).alias("_sharing"))
        .where(F.col("_sharing") > 1)
    )


def row_reason(as_of: dt.date | None) -> Column:
    """The first reason a row is rejected for on its own (every reason but `duplicate_loan_id`), or null,
    over its parsed keys, `status` and `raw_record`."""
    status = F.col("status")
    as_of_date = F.lit(as_of) if as_of else F.lit(None).cast("date")
    return (
        F.when(F.col(RAW_RECORD).isNotNull(), "malformed_record")
        .when(F.col("_id").isNull(), "invalid_id")
        .when(F.col("_loan_id").isNull(), "invalid_loan_id")
        .when(F.col("_loan_date").isNull(), "invalid_loan_date")
        .when(F.col("_loan_amount").isNull() | (F.col("_loan_amount") <= 0), "invalid_loan_amount")
        .when(status.isNotNull() & ~status.isin("0", "1"), "invalid_status")
        .when(F.col("_loan_date") > as_of_date, "future_loan_date")
    )


def validate(parsed: DataFrame, as_of: dt.date | None = None, conflicts: DataFrame | None = None) -> DataFrame:
    """Add `reason`: the first rejection reason that applies to the row, or null when accepted.

    `conflicts` is `conflicting_loan_ids(parsed)`, computed here unless the caller already holds it.
    """
    # Which of the rows sharing a loan_id is true cannot be known, so all of them are rejected.
    shared = conflicting_loan_ids(parsed) if conflicts is None else conflicts
    joined = parsed.join(F.broadcast(shared), on="_loan_id", how="left")
    reason = row_reason(as_of).when(F.col("_sharing").isNotNull(), "duplicate_loan_id")
    return joined.withColumn(REASON, reason).drop("_sharing")


# ---------------------------------------------------------------- the feature job's route to the same rows
#
# `distinct_parsed` compares every row with every other on all 24 columns. The feature job reaches the same
# distinct rows cheaper: exact copies and conflicting rows always share a loan_id, so a first pass over the
# loan_ids alone finds the few read more than once, and only their rows (and the rows rejected on their
# own, which the quarantine keeps whole) carry all their columns through the shuffle, the exact-duplicate
# aggregate and the conflict check. Every other row is accepted as it is read (its loan_id is its own: no
# copy, no conflict) and travels with just the columns the features read.

# What a lone row carries: its parsed keys and the text columns `add_features` reads (the other raw columns
# only ever go to the quarantine).
KEYS = ("_id", "_loan_id", "_loan_date", "_loan_amount")
FEATURE_TEXT = ("status", "birthday", "job_start_date", "flag_own_car")
WHOLE_ROW = "_row"  # struct: a row's 24 columns as read and `raw_record`; null on a lone row
READ_TWICE = "_read_twice"


def loan_ids_read_twice(loan_ids: DataFrame) -> DataFrame:
    """The loan_ids that two or more rows hold, copies included (`loan_ids` holds the column `loan_id` as
    read): the loan_id of every exact duplicate and of every conflict is one of them."""
    # A plain cast of the text as read, neither normalized nor `parse_whole_number`'s check: the cast trims
    # every character up to U+0020 itself, so it gives the same number for every loan_id that parses, and
    # numbers for some that do not (`+7`), whose rows are rejected, so carried whole, anyway.
    key = F.col("loan_id").try_cast("long")
    return (
        loan_ids.select(key.alias("_loan_id"))
        .where(F.col("_loan_id").isNotNull())
        .groupBy("_loan_id")
        .agg(F.count(F.lit(1)).alias("_rows"))
        .where(F.col("_rows") > 1)
        .select("_loan_id", "_rows", F.lit(True).alias(READ_TWICE))
    )


def key_rows(raw: DataFrame, read_twice: DataFrame, as_of: dt.date | None, breaks: bool = True) -> DataFrame:
    """Every row read, gathered by client in the job's one full shuffle: its parsed keys and the normalized
    columns the features read, and in `_row`, only when its loan_id is read twice or it is rejected on its
    own, all its columns and `raw_record` (normalized by `whole_rows`). `breaks`: whether a value may hold
    a line break (a file read whole; see `normalized_in_line`)."""
    read = {"id", "loan_id", "loan_date", "loan_amount", *FEATURE_TEXT}
    # The other columns are normalized after the shuffle, on the rows that keep them (in the struct they
    # would be normalized on every row).
    normalize_read = normalized if breaks else normalized_in_line
    columns = [normalize_read(c) if c in read else c for c in RAW_COLUMNS]
    parsed = raw.select(*columns, RAW_RECORD).transform(parse_keys)
    joined = parsed.join(F.broadcast(read_twice), on="_loan_id", how="left")
    whole = row_reason(as_of).isNotNull() | F.col(READ_TWICE).isNotNull()
    row = F.when(whole, F.struct(*RAW_COLUMNS, RAW_RECORD)).alias(WHOLE_ROW)
    return joined.select(*KEYS, *FEATURE_TEXT, row).repartition("_id")


def lone_rows(keyed: DataFrame) -> DataFrame:
    """The rows of `key_rows` that travel narrow: accepted, each read once (`_copies` 1)."""
    return keyed.where(F.col(WHOLE_ROW).isNull()).select(*KEYS, *FEATURE_TEXT, F.lit(1).cast("long").alias(COPIES))


def whole_rows(keyed: DataFrame) -> DataFrame:
    """The rows of `key_rows` that carry all their columns, one per distinct row (`_copies`), normalized and
    parsed: what `validate` checks. Every row of a loan_id that two rows share is one of them."""
    row = F.struct(*[normalized(c, F.col(f"{WHOLE_ROW}.{c}")) for c in RAW_COLUMNS], f"{WHOLE_ROW}.{RAW_RECORD}")
    distinct = (
        keyed.where(F.col(WHOLE_ROW).isNotNull())
        .select(*KEYS, row.alias(WHOLE_ROW))
        .groupBy(*KEYS, WHOLE_ROW)  # the keys are the row's own, parsed; `_id` keeps it within the partitions
        .agg(F.count(F.lit(1)).alias(COPIES))
    )
    return distinct.select(*KEYS, COPIES, f"{WHOLE_ROW}.*")


def accepted_rows(lone: DataFrame, checked: DataFrame) -> DataFrame:
    """The lone rows and the accepted checked rows, with what `add_features` reads. Both keep the client
    partitioning of `key_rows`, so their union needs no shuffle before the features' window."""
    return lone.unionByName(checked.where(F.col(REASON).isNull()).select(*KEYS, *FEATURE_TEXT, COPIES))


def add_features(accepted: DataFrame) -> DataFrame:
    """The five features of DESIGN §5, each as of its own loan date, plus `_null_<feature>` reasons."""
    return contract_spark.add_features(accepted, COPIES)


def to_features_output(features: DataFrame) -> DataFrame:
    """The published columns of `features/`, in contract order."""
    return features.select(*OUTPUT_COLUMNS)


def to_clients_output(features: DataFrame) -> DataFrame:
    """`clients/`: one row per client, the history state the online store keeps for applications (DESIGN §8):
    its accepted loans, their amounts summed, its last loan, and its attributes on that loan (dates as
    `yyyy-MM-dd`, null when missing or invalid)."""
    return features.where(F.col("_last")).select(
        "id",
        (F.col("nb_previous_loans") + 1).alias("loans"),
        F.col("_amount_sum").alias("amount_sum"),
        F.col("loan_id").alias("last_loan_id"),
        F.col("loan_date").alias("last_loan_date"),
        F.date_format("_birthday", "yyyy-MM-dd").alias("birthday"),
        F.date_format("_job_start", "yyyy-MM-dd").alias("job_start_date"),
        "flag_own_car",
    )


def rejected_rows(checked: DataFrame) -> DataFrame:
    """The rows with a rejection reason."""
    return checked.where(F.col(REASON).isNotNull())


def to_quarantine_output(rejected: DataFrame) -> DataFrame:
    """The quarantine's columns: the raw columns as text, `reason`, and `raw_record` (a malformed record's text)."""
    return rejected.select(*RAW_COLUMNS, REASON, RAW_RECORD)


# ---------------------------------------------------------------- report metrics


def _count_if(condition: Column) -> Column:
    return F.sum(F.when(condition, 1).otherwise(0))


def feature_counts(features: DataFrame) -> dict[str, Any]:
    """The report's counts over the feature rows, by one aggregate of `features` (cached by the job, and
    filled by the features' write: the aggregate reads the cache).

    Not an `Observation` of the write, as the quarantine's few rows are counted: an observation's aggregates
    are updated row by row outside Spark's generated code (17 counts observed over 7.8M lines took 17 s
    more than the lines' pass alone, the same counts as an aggregate 4 s). At 8M loans, writing and then
    counting the cache takes 16.4-17.3 s where the observed write took 17.8-18.9 s.
    """
    row = feature_counts_frame(features).first()
    assert row is not None  # an aggregate without groups has one row
    return row.asDict()


def feature_counts_frame(features: DataFrame) -> DataFrame:
    """The aggregate `feature_counts` reads its one row from."""
    counts = [
        _count_if(F.col(f"_null_{feature}") == reason).alias(f"null:{feature}:{reason}")
        for feature, reasons in NULL_REASONS.items()
        for reason in reasons
    ]
    return features.agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(COPIES).alias("copies"),
        _count_if(F.col("nb_previous_loans") == 0).alias("clients"),
        _count_if(F.col("status").isNull()).alias("status_unknown"),
        F.min("loan_date").alias("first_loan_date"),
        F.max("loan_date").alias("last_loan_date"),
        *counts,
    )


def quarantine_metrics(rejected: DataFrame, observation: Observation) -> DataFrame:
    """Observe the rejected rows by reason while the quarantine is written."""
    return rejected.observe(
        observation,
        F.count(F.lit(1)).alias("rows"),
        F.sum(COPIES).alias("copies"),
        *[_count_if(F.col(REASON) == reason).alias(f"reason:{reason}") for reason in REJECT_REASONS],
    )


def build_report(accepted: dict[str, Any], rejected: dict[str, Any]) -> dict[str, Any]:
    """Turn the feature rows' counts and the quarantine's observation into the report's counts."""
    rows_read = (accepted["copies"] or 0) + (rejected["copies"] or 0)
    distinct = accepted["rows"] + rejected["rows"]
    dates = (accepted["first_loan_date"], accepted["last_loan_date"])
    return {
        "rows_read": rows_read,
        "duplicates_dropped": rows_read - distinct,
        "rows_accepted": accepted["rows"],
        "rows_rejected": rejected["rows"],
        "rejected_by_reason": {r: rejected[f"reason:{r}"] or 0 for r in REJECT_REASONS},
        "nulls": {
            feature: {r: accepted[f"null:{feature}:{r}"] or 0 for r in reasons}
            for feature, reasons in NULL_REASONS.items()
        },
        "status_unknown": accepted["status_unknown"] or 0,
        "clients": accepted["clients"] or 0,
        "first_loan_date": dates[0].isoformat() if dates[0] else None,
        "last_loan_date": dates[1].isoformat() if dates[1] else None,
    }


# ---------------------------------------------------------------- I/O


@dataclass(frozen=True)
class FeatureJobArgs:
    input: str
    output: str
    as_of: dt.date | None
    limits: Limits = DEFAULT_LIMITS
    allow_empty: bool = False


def source_report(sources: Sequence[SourceFile]) -> list[dict[str, Any]]:
    """Per input file: its path, lines, and how it was read."""
    return [{"path": s.path, "lines": s.lines, "read": "whole (quoted line breaks)" if s.multiline else "split"}
            for s in sources]  # fmt: skip


# The SQL settings the job's plans are made under (and the session's own restored after).
JOB_SQL_SETTINGS = {
    # The job's caches live for one run: compressing them (a dictionary per column) costs more time than
    # the memory it saves.
    "spark.sql.inMemoryColumnarStorage.compressed": "false",
    # Adaptive execution would hide the cached rows' partitioning by client from the plans that read them,
    # and the features' window would shuffle every row a second time. The job sizes its shuffles itself
    # (`shuffle_partitions` below), at most [spark] shuffle_partitions.
    "spark.sql.adaptive.enabled": "false",
    # Its aggregates have about as many groups as rows (one per loan_id, one per distinct checked row):
    # pre-aggregating before the shuffle would only copy them once more.
    "spark.sql.execution.bypassPartialAggregation": "true",
}


# The input bytes per shuffle partition the job aims at, as adaptive execution (off in the job, see above)
# would have coalesced to: at the sample's size (129 MiB) 4 partitions on 2 cores instead of 16 ended the
# job about 1 s sooner (median of 8 alternating runs, 21.7 s against 22.5 s), less tasks' start-up; at 8M
# loans (1.3 GB) it stays at 16.
PARTITION_BYTES = 64 * 2**20


def shuffle_partitions(input_bytes: int, cores: int, most: int) -> int:
    """The job's shuffle partitions: one per `PARTITION_BYTES` of input, rounded up to a multiple of the
    cores (no core idle on the last wave of tasks), at most `most` ([spark] shuffle_partitions)."""
    wanted = max(1, -(-input_bytes // PARTITION_BYTES))
    return max(1, min(most, -(-wanted // cores) * cores))


@contextlib.contextmanager
def sql_settings(spark: SparkSession, settings: dict[str, str]) -> Iterator[None]:
    """Run with these SQL settings, then put back what the session had."""
    before = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, previous in before.items():
            if previous is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, previous)


def run(spark: SparkSession, args: FeatureJobArgs) -> dict[str, Any]:
    """Read, transform and write; returns the report. Outputs appear only if everything succeeded."""
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.UTC)
    staged = StagedOutput(spark, args.output)  # checks the output is a folder before any work
    log.info("reading %s (as of %s)", args.input, args.as_of or "no limit")
    raw, sources = read_raw(spark, args.input, args.limits)
    read = sum(s.bytes for s in sources)
    cores = spark.sparkContext.defaultParallelism
    partitions = shuffle_partitions(read, cores, int(spark.conf.get("spark.sql.shuffle.partitions") or 1))
    log.info("%.0f MiB read: shuffles in %d partitions (%d cores)", read / 2**20, partitions, cores)
    with sql_settings(spark, {**JOB_SQL_SETTINGS, "spark.sql.shuffle.partitions": str(partitions)}):
        cached: list[DataFrame] = []

        def cache(frame: DataFrame) -> DataFrame:
            cached.append(frame.persist(StorageLevel.MEMORY_AND_DISK))
            return frame

        try:
            checked, conflicts, features = job_frames(spark, raw, sources, args.as_of, cache)
            # Counted first, with every core on it: this fills the rows' caches before the outputs read
            # them (written concurrently, the features' plan would wait on the same cache blocks).
            step = time.perf_counter()
            shared = conflicts.count()
            log.info(
                "distinct rows parsed in %.1fs; %d loan_id(s) shared by different rows",
                time.perf_counter() - step,
                shared,
            )
            step = time.perf_counter()
            to_features_output(features).write.parquet(staged.path("features"))
            accepted_counts = feature_counts(features)
            log.info("features written and counted in %.1fs", time.perf_counter() - step)
            step = time.perf_counter()
            to_clients_output(features).write.parquet(staged.path("clients"))
            log.info("clients' history written in %.1fs", time.perf_counter() - step)
            step = time.perf_counter()
            rejected_obs = Observation("rejected")
            quarantine = to_quarantine_output(quarantine_metrics(rejected_rows(checked), rejected_obs))
            quarantine.write.parquet(staged.path("quarantine"))
            log.info("quarantine written in %.1fs", time.perf_counter() - step)
            report = {
                "input": args.input,
                "output": args.output,
                "as_of": args.as_of.isoformat() if args.as_of else None,
                **build_report(accepted_counts, rejected_obs.get),
                "files": source_report(sources),
                "started_at": started_at.isoformat(timespec="seconds"),
                "run_seconds": round(time.perf_counter() - started, 3),
                "spark_version": spark.version,
            }
            if report["rows_accepted"] == 0 and not args.allow_empty:
                raise InputError(
                    f"input {args.input} has no accepted row ({report['rows_read']} read, {report['rows_rejected']} "
                    f"rejected): the outputs in {args.output} were left as they were "
                    "(--allow-empty publishes empty ones)"
                )
            staged.write_text("report.json", json.dumps(report, indent=2) + "\n")
            staged.publish(["features", "quarantine", "clients", "report.json"])
        except BaseException:
            staged.discard()
            raise
        finally:
            for frame in reversed(cached):
                frame.unpersist()
        return report


# Above this share of the rows read, the rows whose loan_id is read twice are compared whole by the plain
# route (`distinct_parsed`): carrying them whole beside the narrow columns costs more than it saves.
# Measured at the challenge's size: with 10% of the rows read twice both routes take the same time; with
# every loan read twice the plain route is about 30% faster.
WHOLE_SHARE_LIMIT = 1 / 3


def job_frames(
    spark: SparkSession,
    raw: DataFrame,
    sources: Sequence[SourceFile],
    as_of: dt.date | None,
    cache: Callable[[DataFrame], DataFrame],
) -> tuple[DataFrame, DataFrame, DataFrame]:
    """What `run` writes its outputs from: the checked rows (`validate`'s: the rows compared whole, with
    `reason`; the quarantine's), the conflicting loan_ids and the features (`add_features` of the accepted
    rows, cached), by the job's route (see `key_rows`) or, when most rows would be compared whole anyway, by
    the plain one (`distinct_parsed`). `cache` persists a frame several steps read (and may be called from
    another thread; the plain route also unpersists the keyed route's frames it was given)."""
    step = time.perf_counter()
    # Small, and read by the keyed rows' plan: cached, the pass over the loan_ids runs once.
    read_twice = cache(loan_ids_read_twice(read_files(spark, sources, only="loan_id")))
    # The keyed route's frames are made (analyzed, and their caches planned: seconds of the driver's work on a
    # cold JVM) while the pass over the loan_ids keeps the cores busy, rather than after it: the sample's
    # feature job ended 1.2 to 1.6 s sooner on average (16 alternating runs: 11 sooner, 1 even, 4 later). The
    # plain route, rare, is made after, when the counts ask for it.
    planned: list[DataFrame] = []

    def plan_cache(frame: DataFrame) -> DataFrame:
        planned.append(frame)
        return cache(frame)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="features-plan") as planner:
        breaks = any(s.multiline for s in sources)
        keyed_route = planner.submit(keyed_frames, raw, read_twice, as_of, plan_cache, breaks)
        keys, rows = read_twice.agg(F.count(F.lit(1)), F.coalesce(F.sum("_rows"), F.lit(0))).first() or (0, 0)
        frames = keyed_route.result()
    read = sum(s.lines for s in sources) - len(sources)  # the records, when no value spans lines
    plain = rows > read * WHOLE_SHARE_LIMIT
    log.info("loan_ids read (and the plans made meanwhile) in %.1fs: %d held by more than one row, %d rows of "
             "about %d: %s", time.perf_counter() - step, keys, rows, read,
             "every row compared whole" if plain else "only those compared whole")  # fmt: skip
    if not plain:
        return frames
    for frame in planned:  # the keyed route's caches, never filled
        frame.unpersist()
    # Cached: both outputs and the conflict check read the distinct rows, parsed once.
    parsed = cache(distinct_parsed(raw))
    conflicts = cache(conflicting_loan_ids(parsed))
    checked = validate(parsed, as_of, conflicts)
    accepted = checked.where(F.col(REASON).isNull())
    # Cached as the features are written: the clients' history is their last rows, not a second window.
    return checked, conflicts, cache(add_features(accepted))


def keyed_frames(
    raw: DataFrame,
    read_twice: DataFrame,
    as_of: dt.date | None,
    cache: Callable[[DataFrame], DataFrame],
    breaks: bool = True,
) -> tuple[DataFrame, DataFrame, DataFrame]:
    """`job_frames` by the job's route: only the rows whose loan_id is read twice, or rejected on their own,
    compared whole. `breaks`: whether a value read may hold a line break (a file read whole)."""
    # Cached: both outputs and the conflict check read the keyed rows (and filters on the cache are not
    # pushed below its shuffle, where they would read the CSV once per filter).
    keyed = cache(key_rows(raw, read_twice, as_of, breaks))
    # Cached: the conflict check and both outputs read them (few, unless many loan_ids are read twice).
    whole = cache(whole_rows(keyed))
    conflicts = cache(conflicting_loan_ids(whole))
    checked = validate(whole, as_of, conflicts)
    accepted = accepted_rows(lone_rows(keyed), checked)
    # Cached as the features are written: the clients' history is their last rows, not a second window.
    return checked, conflicts, cache(add_features(accepted))


def parse_args(argv: Sequence[str] | None, settings: Settings) -> FeatureJobArgs:
    """Command arguments over the settings' defaults."""
    parser = argparse.ArgumentParser(prog="spark-submit.sh features", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default=settings.features.input,
                        help="raw CSV file or folder, or several separated by commas (history,landing)")  # fmt: skip
    parser.add_argument("--output", default=settings.features.output, help="output folder")
    parser.add_argument("--as-of", default=None, help="reject loans dated after this yyyy-MM-dd day")
    parser.add_argument("--allow-empty", action="store_true", help="publish outputs even with no accepted row")
    args = parser.parse_args(argv)
    as_of = settings.features.as_of
    if args.as_of:
        try:
            as_of = parse_setting_date(args.as_of)
        except SettingsError as exc:
            parser.error(f"--as-of: {exc}")
    limits = Limits(settings.features.max_record_lines, settings.features.max_line_chars)
    return FeatureJobArgs(args.input, args.output, as_of, limits, args.allow_empty)


def check(argv: Sequence[str]) -> int:
    """Before spark-submit starts a JVM: refuse bad arguments, and a local input or output that cannot work.

    Paths of other file systems (hdfs://, s3a://) are checked by the job itself, through Hadoop.
    """
    args = parse_args(argv, command_settings())
    inputs = paths_of(args.input)
    local = [p for p in (*inputs, args.output) if "://" not in p or p.startswith("file:")]
    if args.output in local:
        output = Path(args.output.removeprefix("file:"))
        blocking = next((p for p in (output, *output.parents) if p.exists()), None)
        if blocking is not None and not blocking.is_dir():
            where = "is a file" if blocking == output else f"lies under the file {blocking}"
            log.error("output %s %s: give a folder", args.output, where)
            return 2
    for one in inputs:
        if one in local and not glob.glob(one.removeprefix("file:")):
            log.error("cannot read input %s: no such file or folder", one)
            return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the feature job from the command line; 0 done, 2 bad input or arguments, 1 unexpected failure."""
    settings = command_settings()
    args = parse_args(argv, settings)
    spark = build_session(settings.spark, "features")
    try:
        report = run(spark, args)
    except (InputError, OutputError) as exc:
        failure: BaseException | None = exc
    except Exception as exc:
        log.debug("the feature job failed", exc_info=True)
        failure = exc
    else:
        failure = None
    finally:
        spark.stop()
    # The job's own message comes last, after Spark has stopped and said what it had to say.
    if isinstance(failure, InputError | OutputError):
        log.error("%s", failure)
        return 2
    if failure is not None:
        log.error("the feature job failed, nothing was published: %s", error_line(failure))
        return 1
    log.info("%s", summary(report).replace("\n", "; "))
    log.info("outputs in %s: features, quarantine, clients, report.json", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
