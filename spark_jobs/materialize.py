"""Publish the latest features and a batch score of every client to Redis (DESIGN §8).

    ./spark-submit.sh materialize --features data/output/features --models data/models [--redis-url URL]

The latest loan of each client (by loan_date, then loan_id) is taken with a window, scored inside
Spark with the approved model (shipped to the executors as a broadcast), and written by the
executors into a new version namespace in pipelined, non-transactional batches. The namespace is
counted, then published by one SET of the pointer key; versions older than the previous one are
removed once their grace period has passed. A failure at any step leaves the active version as it was.
With no Redis URL configured, the embedded Redis (serving/embedded.py) is started or reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import io
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import redis
from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from conf import Settings, command_settings, emit
from conf.settings import RedisSettings
from contract import FEATURE_NAMES
from model import registry
from model.portable import PortableModel
from serving import embedded, landing
from serving.scoring import VersionModel
from serving.store import OnlineStore, StoreError, command_line_url, redacted
from spark_jobs.errors import error_line
from spark_jobs.session import build_session

log = logging.getLogger(__name__)

# Per Arrow batch written: its rows, and when its writes started and ended (epoch seconds).
WRITTEN_SCHEMA = T.StructType(
    [
        T.StructField("rows", T.LongType()),
        T.StructField("started", T.DoubleType()),
        T.StructField("ended", T.DoubleType()),
    ]
)
_MODELS: dict[str, Any] = {}  # per Python worker: the unpickled model of each version


class MaterializeError(RuntimeError):
    """The load could not be done; the active version was left as it was."""


def latest_with_history(features: DataFrame, clients: DataFrame) -> DataFrame:
    """One row per client: the features of its last loan and its history state (the feature job's
    `clients/` names the last loan), the date as yyyy-MM-dd text."""
    history = clients.select(
        "id", F.col("last_loan_id").alias("loan_id"), "loans", "amount_sum", "birthday", "job_start_date"
    )
    return features.select("id", "loan_id", "loan_date", *FEATURE_NAMES).join(history, ["id", "loan_id"]).select(
        "id", F.date_format("loan_date", "yyyy-MM-dd").alias("loan_date"), *FEATURE_NAMES,
        F.col("loan_id").alias("last_loan_id"), "loans", "amount_sum", "birthday", "job_start_date",
    )  # fmt: skip


def score_frame(frame: pd.DataFrame, model: Any, threshold: float, model_version: str) -> pd.DataFrame:
    """Add `score` (probability of the late class), `label` (score >= threshold) and `model_version`."""
    scores = model.predict_proba(frame[list(FEATURE_NAMES)].astype("float64"))[:, 1]
    return frame.assign(score=scores, label=(scores >= threshold).astype("int64"), model_version=model_version)


# The fields written per client, in order: the features, the record fields, the history state.
WRITTEN_FIELDS = (*FEATURE_NAMES, "loan_date", "score", "label", "model_version", "loans", "amount_sum",
                  "last_loan_id", "birthday", "job_start_date")  # fmt: skip


@dataclass(frozen=True)
class WriteTarget:
    """What an executor needs to write: where, which namespace, and with which model."""

    url: str
    redis: RedisSettings
    version: str
    model_version: str
    threshold: float


def write_scored(latest: DataFrame, target: WriteTarget, model_bytes: Any) -> DataFrame:
    """Score and write each Arrow batch from the executors; one row per batch (see WRITTEN_SCHEMA)."""

    def write_batches(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model = _MODELS.get(target.model_version)
        if model is None:
            model = _MODELS[target.model_version] = joblib.load(io.BytesIO(model_bytes.value))
        store = OnlineStore.from_settings(target.redis, target.url)
        try:
            for frame in frames:
                scored = score_frame(frame, model, target.threshold, target.model_version)
                started = time.time()
                rows = store.codec.encode_columns(scored, WRITTEN_FIELDS)
                store.write_encoded(target.version, rows, target.redis.batch_size)
                yield pd.DataFrame({"rows": [len(frame)], "started": [started], "ended": [time.time()]})
        finally:
            store.close()

    return latest.mapInPandas(write_batches, WRITTEN_SCHEMA)


@dataclass(frozen=True)
class MaterializeArgs:
    features: str
    models: str
    clients: str  # the feature job's clients/ (each client's history state)
    redis: RedisSettings  # with the URL to use (empty: the embedded Redis)


def run(spark: SparkSession, args: MaterializeArgs) -> dict[str, Any]:
    """Load, check, publish and clean up; returns the summary. MaterializeError when nothing was published."""
    pipeline, card = registry.load_approved(Path(args.models))
    portable, _ = registry.approved_portable(Path(args.models))
    url = embedded.resolve_url(args.redis, "writer")
    try:
        store = OnlineStore.from_settings(args.redis, url)
        store.ping()
        version = store.next_version(dt.datetime.now(dt.UTC))
        meta = {"source": _absolute(args.features), "model_version": card["version"],
                "feature_names": ",".join(FEATURE_NAMES)}  # fmt: skip
        store.begin(version, meta, lease_seconds=args.redis.lease_seconds)
    except redis.RedisError as exc:
        raise MaterializeError(f"Redis at {redacted(url)} is unreachable or refused the load: {exc}") from None
    log.info(
        "loading version %s into %s (prefix %s) with model %s", version, redacted(url), store.prefix, card["version"]
    )
    started = time.monotonic()
    try:
        with store.hold_lease(version, args.redis.lease_seconds):
            summary = _load(spark, args, store, url, version, pipeline, card, portable)
    except (StoreError, redis.RedisError, PySparkException, Py4JJavaError, MaterializeError) as exc:
        _discard(store, version)
        raise MaterializeError(
            f"load of version {version} failed, the active version is unchanged: {error_line(exc)}"
        ) from None
    summary["seconds"] = round(time.monotonic() - started, 3)
    summary["clients_per_second"] = round(summary["clients"] / max(summary["seconds"], 1e-9), 1)
    try:
        summary["removed"] = store.cleanup(args.redis.grace_period_seconds)
    except redis.RedisError as exc:  # published already: a failed cleanup is retried by the next load
        log.warning("cleanup of old versions failed (retried by the next load): %s", exc)
        summary["removed"] = []
    return summary


def _load(
    spark: SparkSession, args: MaterializeArgs, store: OnlineStore, url: str, version: str, pipeline: Any, card: dict,
    portable: bytes,
) -> dict[str, Any]:  # fmt: skip
    features = spark.read.parquet(args.features)
    clients = spark.read.parquet(args.clients)
    # The clients' state is small (one row per client): its totals are counted apart, before the load.
    stats = clients.agg(
        F.count(F.lit(1)).alias("clients"),
        F.coalesce(F.sum("loans"), F.lit(0)).alias("rows"),
        F.max("last_loan_date").alias("as_of"),
    ).first()
    if stats is None:  # an aggregate without grouping always has one row
        raise MaterializeError(f"{args.clients} gave no totals")
    expected = int(stats["clients"])
    model_bytes = io.BytesIO()
    joblib.dump(pipeline, model_bytes)
    broadcast = spark.sparkContext.broadcast(model_bytes.getvalue())
    target = WriteTarget(url, args.redis, version, card["version"], float(card["threshold"]["value"]))
    try:
        totals = (
            write_scored(latest_with_history(features, clients), target, broadcast)
            .agg(
                F.coalesce(F.sum("rows"), F.lit(0)).alias("rows"),
                F.min("started").alias("started"),
                F.max("ended").alias("ended"),
            )
            .first()
        )
    finally:
        broadcast.unpersist()
    if totals is None:  # an aggregate without grouping always has one row
        raise MaterializeError("the write step returned no totals")
    if int(totals["rows"]) != expected:
        raise MaterializeError(
            f"{args.clients} holds {expected} clients but {totals['rows']} match a last loan in {args.features}: "
            "the two are not from the same feature run"
        )
    # Landed loans applied by the stream since the feature run (DESIGN §13) stay visible: replayed into
    # the new version before it is published, and once more after (those that landed meanwhile).
    model = VersionModel(version, PortableModel(portable, FEATURE_NAMES), target.threshold, card["version"])
    before = store.active_version(fresh=True)
    replayed = replay_landed(store, version, before, features, model)
    store.set_model(version, portable)
    written = store.complete(version, int(totals["rows"]) + len(replayed.created))
    as_of = stats["as_of"].isoformat() if stats["as_of"] else ""
    store.set_meta(version, {"rows": stats["rows"], "as_of": as_of, "threshold": repr(target.threshold),
                             "model_sha256": hashlib.sha256(portable).hexdigest()})  # fmt: skip
    previous = store.publish(version)
    caught_up = replay_landed(store, version, previous, features, model)
    landed = replayed.count(landing.APPLIED) + caught_up.count(landing.APPLIED)
    load_seconds = (totals["ended"] - totals["started"]) if totals["started"] is not None else 0.0
    return {"version": version, "previous": previous, "clients": written, "rows": stats["rows"], "as_of": as_of,
            "model_version": card["version"], "prefix": store.prefix, "url": redacted(url), "landed_replayed": landed,
            "write_seconds": round(load_seconds, 3),
            "write_clients_per_second": round(written / load_seconds, 1) if load_seconds > 0 else None}  # fmt: skip


def replay_landed(
    store: OnlineStore, version: str, previous: str | None, features: DataFrame, model: VersionModel
) -> landing.Outcome:
    """Apply to `version` the landed loans registered in it or in the `previous` active version that its
    history (`features`) does not hold: the loans the stream applied after the feature run read the
    landing folder. They are registered in `version` too, so the next load finds them there."""
    entries: dict[int, landing.LandedLoan] = {}
    for source in (previous, version):
        if source:
            for loan_id, text in store.landed(source).items():
                entries.setdefault(loan_id, landing.LandedLoan.from_json(text))
    if not entries:
        return landing.Outcome()
    ids = features.sparkSession.createDataFrame([(i,) for i in sorted(entries)], "loan_id long")
    in_history = {row["loan_id"] for row in features.select("loan_id").join(F.broadcast(ids), "loan_id").collect()}
    loans = [loan for loan_id, loan in entries.items() if loan_id not in in_history]
    landing.register(store, [version], loans)
    outcome = landing.apply(store, version, model, loans)
    log.info("landed loans in version %s: %d in its history, %d applied, %d applied before", version,
             len(in_history), outcome.count(landing.APPLIED), outcome.count(landing.ALREADY_APPLIED))  # fmt: skip
    return outcome


def _absolute(path: str) -> str:
    """A local path made absolute (the stream reads a version's history from its meta), a URI as it is."""
    return path if "://" in path else str(Path(path.removeprefix("file:")).resolve())


def _discard(store: OnlineStore, version: str) -> None:
    """Remove a failed load's keys when Redis still answers; otherwise the cleanup of a later load will."""
    try:
        store.remove(version)
    except (redis.RedisError, StoreError) as exc:
        log.warning("could not remove the failed version %s now (a later load's cleanup will): %s", version, exc)


def parse_args(argv: Sequence[str] | None, settings: Settings) -> MaterializeArgs:
    parser = argparse.ArgumentParser(prog="spark-submit.sh materialize", description=__doc__.split("\n")[0])
    parser.add_argument("--features", default=settings.features.features_dir, help="the feature job's features/ folder")
    parser.add_argument("--models", default=settings.model.models_dir, help="the model registry folder")
    parser.add_argument("--clients", default=None,
                        help="the feature job's clients/ folder (default: beside --features)")  # fmt: skip
    parser.add_argument(
        "--redis-url", type=command_line_url, default="",
        help="redis:// or rediss:// URL without a password (default: [redis] url; none: the embedded Redis)",
    )  # fmt: skip
    parser.add_argument("--prefix", default=settings.redis.prefix, help="key prefix (default %(default)s)")
    parser.add_argument("--grace-seconds", type=float, default=settings.redis.grace_period_seconds,
                        help="how long a replaced version stays before removal (default %(default)s)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=settings.redis.batch_size, help="hashes per pipeline")
    ns = parser.parse_args(argv)
    changes = {"prefix": ns.prefix, "url": ns.redis_url or settings.redis.url, "grace_period_seconds": ns.grace_seconds,
               "batch_size": ns.batch_size}  # fmt: skip
    redis_settings = dataclasses.replace(settings.redis, **changes)
    clients = ns.clients or str(Path(ns.features.rstrip("/")).parent / "clients")
    return MaterializeArgs(ns.features, ns.models, clients, redis_settings)


def summary_line(summary: dict[str, Any]) -> str:
    return (
        f"published version {summary['version']} (previous {summary['previous'] or 'none'}): "
        f"{summary['clients']:,} clients from {summary['rows']:,} feature rows as of {summary['as_of']}, "
        f"model {summary['model_version']}, {summary['seconds']:.1f} s in all ({summary['clients_per_second']:,.0f} "
        f"clients/s), {summary['write_seconds']:.1f} s from first to last write"
        + (f"; {summary['landed_replayed']:,} landed loans replayed" if summary.get("landed_replayed") else "")
    )


def refusal(args: MaterializeArgs) -> str | None:
    """Why the load cannot start (no features, no approved model that matches its hash), found in plain Python."""
    for path, what in ((args.features, "features"), (args.clients, "clients' history")):
        if not Path(path).exists() and "://" not in path:
            return f"no {what} at {path}: run the feature job first"
    try:
        registry.approved_card(Path(args.models))
    except registry.RegistryError as exc:
        return str(exc)
    return None


def check(argv: Sequence[str]) -> int:
    """Before spark-submit starts a JVM: refuse bad arguments, missing features, no approved model (exit 2)."""
    why = refusal(parse_args(argv, command_settings()))
    if why:
        log.error("%s", why)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the load from the command line; 0 published, 1 failed (nothing changed), 2 bad input."""
    settings = command_settings()
    args = parse_args(argv, settings)
    why = refusal(args)
    if why:
        log.error("%s", why)
        return 2
    spark = build_session(settings.spark, "materialize")
    try:
        summary = run(spark, args)
    except registry.RegistryError as exc:
        log.error("%s", exc)
        return 2
    except (MaterializeError, embedded.EmbeddedRedisError) as exc:
        log.error("%s", exc)
        return 1
    finally:
        spark.stop()
    log.info("%s", summary_line(summary))
    if summary["removed"]:
        log.info("removed old versions: %s", ", ".join(summary["removed"]))
    emit(summary["version"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
