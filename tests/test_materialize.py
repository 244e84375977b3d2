"""The materialize job on real local Spark into a real Redis and a real Redis Cluster."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import subprocess
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import redis
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from conf import load_settings
from contract import FEATURE_NAMES
from model import registry
from model import train as tr
from model.data import load_features
from serving.store import Codec, OnlineStore, connect
from spark_jobs import materialize as mz
from tests.redis_servers import RedisServer, free_port
from tests.synthetic import synthetic_features

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = load_settings(env={})
KEYS = OnlineStore(redis.Redis(), prefix=SETTINGS.redis.prefix)  # the key builders of the job's prefix
MODEL = dataclasses.replace(
    SETTINGS.model,
    classifier=dataclasses.replace(SETTINGS.model.classifier, n_estimators=10, max_depth=4, min_samples_leaf=5),
)


@pytest.fixture(scope="module")
def approved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Synthetic features of 300 clients and an approved model trained on them."""
    base = tmp_path_factory.mktemp("materialize")
    features = synthetic_features(base / "features", clients=300, seed=3)
    result = tr.train(MODEL, load_features(features), leaky=False)
    models = base / "models"
    registry.approve(models, registry.save(models, result.pipeline, result.card, result.plots()))
    return features, models


def job_args(features: Path, models: Path, url: str, **redis_changes: object) -> mz.MaterializeArgs:
    settings = dataclasses.replace(SETTINGS.redis, url=url, batch_size=50, **redis_changes)
    return mz.MaterializeArgs(str(features), str(models), url, settings)


def expected_latest(features: Path) -> dict[int, dict]:
    """The offline latest row of each client, computed in plain Python from the Parquet rows."""
    rows = pq.read_table(features).to_pylist()
    latest: dict[int, dict] = {}
    for row in sorted(rows, key=lambda r: (r["loan_date"], r["loan_id"])):
        latest[row["id"]] = row
    return latest


def test_latest_per_client_takes_the_last_date_then_the_highest_loan_id(spark: SparkSession) -> None:
    columns = ["loan_id", "id", "loan_date", *FEATURE_NAMES, "status"]
    d = dt.date
    rows = [
        (1, 10, d(2020, 1, 1), 0, None, 30, 2, 1, 0),
        (5, 10, d(2020, 3, 1), 1, 100.0, 30, None, 1, None),
        (4, 10, d(2020, 3, 1), 2, 150.0, 30, 2, 1, 1),  # same day as loan 5: loan 5 is later
        (2, 20, d(3021, 9, 18), 0, None, None, None, None, 0),  # a date pandas cannot hold
        (3, 30, d(2019, 5, 6), 0, None, 41, 0, 0, 1),
    ]
    features = spark.createDataFrame(rows, "loan_id long, id long, loan_date date, nb_previous_loans int, "
                                     "avg_amount_loans_previous double, age int, years_on_the_job int, "
                                     "flag_own_car int, status int")  # fmt: skip
    expected = spark.createDataFrame(
        [(10, "2020-03-01", 1, 100.0, 30, None, 1), (20, "3021-09-18", 0, None, None, None, None),
         (30, "2019-05-06", 0, None, 41, 0, 0)],
        "id long, loan_date string, nb_previous_loans int, avg_amount_loans_previous double, age int, "
        "years_on_the_job int, flag_own_car int",
    )  # fmt: skip
    assert columns == features.columns
    assertDataFrameEqual(mz.latest_per_client(features), expected)


def test_records_give_the_same_text_as_the_stores_encoder() -> None:
    import pandas as pd

    # As mapInPandas hands them over: whole-number columns with a null arrive as float64 with NaN.
    scored = pd.DataFrame({
        "id": [1, 2], "loan_date": ["2020-01-01", "3021-09-18"], "nb_previous_loans": [3, 0],
        "avg_amount_loans_previous": [2134.5, float("nan")], "age": [41.0, float("nan")],
        "years_on_the_job": [float("nan"), 7.0], "flag_own_car": [1.0, 0.0], "score": [0.1 + 0.2, 1e-20],
        "label": [1, 0], "model_version": ["m", "m"],
    })  # fmt: skip
    typed = [{"nb_previous_loans": 3, "avg_amount_loans_previous": 2134.5, "age": 41, "years_on_the_job": None,
              "flag_own_car": 1, "loan_date": "2020-01-01", "score": 0.1 + 0.2, "label": 1, "model_version": "m"},
             {"nb_previous_loans": 0, "avg_amount_loans_previous": None, "age": None, "years_on_the_job": 7,
              "flag_own_car": 0, "loan_date": "3021-09-18", "score": 1e-20, "label": 0,
              "model_version": "m"}]  # fmt: skip
    codec = Codec.for_features()
    encoded = codec.encode_columns(scored, mz.WRITTEN_FIELDS)
    got = [(i, dict(zip(fields[::2], fields[1::2], strict=True))) for i, fields in encoded]
    assert got == [(1, codec.encode(typed[0])), (2, codec.encode(typed[1]))]
    assert got[0][1]["age"] == "41" and "years_on_the_job" not in got[0][1] and got[1][1]["score"] == "1e-20"


def test_materialize_publishes_the_latest_rows_with_the_models_scores(
    spark: SparkSession, approved: tuple[Path, Path], redis_url: str
) -> None:
    features, models = approved
    summary = mz.run(spark, job_args(features, models, redis_url))
    pipeline, card = registry.load_approved(models)
    latest = expected_latest(features)
    assert summary["clients"] == len(latest) == 300 and summary["previous"] is None
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    version = client.get(KEYS.active_key)
    assert version == summary["version"] and client.zrange(KEYS.versions_key, 0, -1) == [version]
    ids = sorted(latest)
    frame = load_features(features).frame.iloc[:0]  # the model's column types
    import pandas as pd

    rows = pd.DataFrame([{name: latest[i][name] for name in FEATURE_NAMES} for i in ids]).astype(
        frame[list(FEATURE_NAMES)].dtypes
    )
    scores = pipeline.predict_proba(rows)[:, 1]
    threshold = card["threshold"]["value"]
    for client_id, score in zip(ids, scores, strict=True):
        row = latest[client_id]
        stored = client.hgetall(KEYS.client_key(version, client_id))
        want = {
            name: str(row[name])
            for name in FEATURE_NAMES
            if row[name] is not None and name != "avg_amount_loans_previous"
        }
        if row["avg_amount_loans_previous"] is not None:
            want["avg_amount_loans_previous"] = repr(row["avg_amount_loans_previous"])
        want |= {"loan_date": row["loan_date"].isoformat(), "score": repr(float(score)),
                 "label": str(int(score >= threshold)), "model_version": card["version"]}  # fmt: skip
        assert stored == want, client_id
    labels = [int(client.hget(KEYS.client_key(version, i), "label")) for i in ids]
    assert 0 < sum(labels) < len(labels)  # the threshold splits the clients
    meta = client.hgetall(KEYS.meta_key(version))
    assert meta["status"] == "complete" and meta["clients"] == "300" and meta["model_version"] == card["version"]
    assert meta["rows"] == str(pq.read_metadata(next(features.glob("*.parquet"))).num_rows)
    assert meta["as_of"] == max(r["loan_date"] for r in latest.values()).isoformat()
    assert meta["feature_names"] == ",".join(FEATURE_NAMES) and meta["source"] == str(features)


def test_materialize_republish_never_shows_a_reader_a_missing_or_partial_client(
    spark: SparkSession, approved: tuple[Path, Path], redis_url: str
) -> None:
    features, models = approved
    first = mz.run(spark, job_args(features, models, redis_url))
    reader = OnlineStore(connect(redis_url, 0.5, 1.0), version_cache_seconds=0.2)
    seen: set[str] = set()
    problems: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            for client_id in (1, 150, 300):
                version, record = reader.read(client_id)
                seen.add(version)
                if record is None or set(record) < {
                    "nb_previous_loans",
                    "loan_date",
                    "score",
                    "label",
                    "model_version",
                }:
                    problems.append(f"{version}:{client_id}:{record}")

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        second = mz.run(
            spark, job_args(features, models, redis_url, grace_period_seconds=0.5, version_cache_seconds=0.2)
        )
        time.sleep(0.5)
        third = mz.run(
            spark, job_args(features, models, redis_url, grace_period_seconds=0.5, version_cache_seconds=0.2)
        )
    finally:
        stop.set()
        poller.join()
    assert problems == []
    assert {first["version"], second["version"]} <= seen
    assert second["previous"] == first["version"] and third["previous"] == second["version"]
    assert third["removed"] == [first["version"]]
    store = OnlineStore(connect(redis_url, 0.5, 1.0), version_cache_seconds=0)
    assert store.versions() == [second["version"], third["version"]]
    assert store.count_clients(first["version"]) == 0 and store.count_clients(second["version"]) == 300
    store.publish(second["version"])  # rollback
    assert store.read(150)[0] == second["version"]


def test_materialize_fails_cleanly_when_redis_runs_out_mid_load_and_a_rerun_succeeds(
    spark: SparkSession, approved: tuple[Path, Path], redis_url: str, tmp_path: Path
) -> None:
    _, models = approved
    features = synthetic_features(tmp_path / "features", clients=3000, seed=4)  # ~1 MB in Redis
    first = mz.run(spark, job_args(features, models, redis_url))
    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    before = {key: admin.hgetall(key) for key in admin.scan_iter(KEYS.client_key(first["version"], "*"))}
    # Writes start failing (OOM) a few hundred clients in: a real Redis error in the middle of the load.
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) + 300_000)
    try:
        with pytest.raises(mz.MaterializeError, match=r"unchanged: redis\.exceptions\.OutOfMemoryError"):
            mz.run(spark, job_args(features, models, redis_url))
    finally:
        admin.config_set("maxmemory", 0)
    assert admin.get(KEYS.active_key) == first["version"]
    assert {key: admin.hgetall(key) for key in admin.scan_iter(KEYS.client_key(first["version"], "*"))} == before
    assert admin.zrange(KEYS.versions_key, 0, -1) == [first["version"]]  # the failed namespace was removed
    others = sorted(k for k in admin.scan_iter("*") if not k.startswith(KEYS.namespace(first["version"])))
    assert others == [KEYS.active_key, KEYS.versions_key]
    again = mz.run(spark, job_args(features, models, redis_url))
    assert again["previous"] == first["version"] and admin.get(KEYS.active_key) == again["version"]


def test_materialize_survives_redis_going_down_during_a_load(
    spark: SparkSession, approved: tuple[Path, Path], tmp_path: Path
) -> None:
    """Redis stops right after the load registered its version: the job fails, the active version is whole."""
    features, models = approved
    server = RedisServer(tmp_path / "redis", None, "--appendonly", "yes", "--appendfsync", "always").start()
    try:
        first = mz.run(spark, job_args(features, models, server.url))
        admin = redis.Redis.from_url(server.url, decode_responses=True)
        before = {key: admin.hgetall(key) for key in admin.scan_iter(KEYS.namespace(first["version"]) + "*")}

        def stop_when_the_next_load_begins() -> None:
            deadline = time.monotonic() + 60
            while admin.zcard(KEYS.versions_key) < 2 and time.monotonic() < deadline:
                time.sleep(0.002)
            server.stop()

        watcher = threading.Thread(target=stop_when_the_next_load_begins)
        watcher.start()
        with pytest.raises(mz.MaterializeError, match=r"active version is unchanged: .*(Connection|connecting)"):
            mz.run(spark, job_args(features, models, server.url))
        watcher.join()
        server.start()  # the append-only file brings the data back
        admin = redis.Redis.from_url(server.url, decode_responses=True)
        assert admin.get(KEYS.active_key) == first["version"]
        assert {key: admin.hgetall(key) for key in admin.scan_iter(KEYS.namespace(first["version"]) + "*")} == before
        again = mz.run(
            spark, job_args(features, models, server.url, grace_period_seconds=0.001, version_cache_seconds=0)
        )
        assert again["previous"] == first["version"] and admin.get(KEYS.active_key) == again["version"]
        assert len(again["removed"]) == 1  # the failed load's leftovers
        assert admin.zrange(KEYS.versions_key, 0, -1) == [first["version"], again["version"]]
    finally:
        server.stop()


def test_materialize_with_zero_clients_never_moves_the_pointer(
    spark: SparkSession, approved: tuple[Path, Path], redis_url: str, tmp_path: Path
) -> None:
    features, models = approved
    first = mz.run(spark, job_args(features, models, redis_url))
    empty = tmp_path / "empty"
    empty.mkdir()
    table = pq.read_table(features)
    pq.write_table(table.slice(0, 0), empty / "part-0.parquet")
    with pytest.raises(mz.MaterializeError, match="holds 0 clients, expected 0"):
        mz.run(spark, job_args(empty, models, redis_url))
    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    assert admin.get(KEYS.active_key) == first["version"]
    assert admin.zrange(KEYS.versions_key, 0, -1) == [first["version"]]


def test_materialize_with_redis_down_fails_fast_and_names_it(spark: SparkSession, approved: tuple[Path, Path]) -> None:
    features, models = approved
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    with pytest.raises(mz.MaterializeError, match=r"Redis at redis://:\*\*\*@127.0.0.1:\d+/0 is unreachable"):
        mz.run(spark, job_args(features, models, url))
    assert time.monotonic() - started < 5


def test_materialize_into_a_redis_cluster(spark: SparkSession, approved: tuple[Path, Path], redis_cluster) -> None:
    features, models = approved
    settings = job_args(features, models, redis_cluster.url, prefix=f"c{time.monotonic_ns()}")
    summary = mz.run(spark, settings)
    store = OnlineStore(connect(redis_cluster.url, 0.5, 1.0), prefix=settings.redis.prefix)
    assert store.clustered
    assert store.active_version() == summary["version"] and store.count_clients(summary["version"]) == 300
    latest = expected_latest(features)
    version, records = store.read_many(sorted(latest))
    assert version == summary["version"]
    assert [r["nb_previous_loans"] for r in records] == [latest[i]["nb_previous_loans"] for i in sorted(latest)]
    assert [r.get("age") for r in records] == [latest[i]["age"] for i in sorted(latest)]
    nodes_holding = [n for n in redis_cluster.nodes if redis.Redis(port=n.port).dbsize() > 0]
    assert len(nodes_holding) == 3  # the clients are spread over every primary


def test_materialize_command_publishes_and_refuses_without_an_approved_model(
    approved: tuple[Path, Path], redis_url: str, tmp_path: Path
) -> None:
    features, models = approved
    env = {**os.environ, "SPARK_DRIVER_MEMORY": "1g"}
    command = [str(ROOT / "spark-submit.sh"), "materialize", "--features", str(features), "--redis-url", redis_url]
    done = subprocess.run([*command, "--models", str(models)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    version = done.stdout.strip().splitlines()[-1]
    assert redis.Redis.from_url(redis_url, decode_responses=True).get(KEYS.active_key) == version
    logs = done.stdout + done.stderr  # spark-submit sends the driver's log lines to stdout
    assert f"published version {version} (previous none): 300 clients" in logs and "clients/s" in logs
    refused = subprocess.run(
        [*command, "--models", str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert refused.returncode == 2 and "no approved model" in refused.stdout + refused.stderr
