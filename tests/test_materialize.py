"""The materialize job on real local Spark into a real Redis and a real Redis Cluster."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import redis
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from conf import load_settings
from contract import FEATURE_NAMES
from credit.commands import main
from model import registry
from serving.store import Codec, OnlineStore
from spark_jobs import materialize as mz
from tests.conftest import ModelRun
from tests.helpers import ROOT, background, clean_env
from tests.redis_servers import RedisServer, free_port
from tests.synthetic import synthetic_features

SETTINGS = load_settings(env={})
CLIENTS = 600  # in the session model's features
WHOLE = {"nb_previous_loans", "loan_date", "score", "label", "model_version"}  # in every client's hash


def keys(url: str) -> OnlineStore:
    """The store with the job's prefix, for its key builders and reads."""
    return OnlineStore.from_url(url, prefix=SETTINGS.redis.prefix, version_cache_seconds=0)


def job_args(features: Path, models: Path, url: str, **redis_changes: object) -> mz.MaterializeArgs:
    settings = dataclasses.replace(SETTINGS.redis, url=url, batch_size=50, **redis_changes)
    return mz.MaterializeArgs(str(features), str(models), str(features.parent / "clients"), settings)


def expected_latest(features: Path) -> dict[int, dict]:
    """The offline latest row of each client, computed in plain Python from the Parquet rows."""
    rows = pq.read_table(features).to_pylist()
    latest: dict[int, dict] = {}
    for row in sorted(rows, key=lambda r: (r["loan_date"], r["loan_id"])):
        latest[row["id"]] = row
    return latest


def expected_fields(run: ModelRun, models: Path | None = None) -> dict[int, dict[str, str]]:
    """Every client's hash as the contract says it is stored, from the approved model's predict_proba and
    the clients' history state."""
    pipeline, card = registry.load_approved(models or run.models)
    latest = expected_latest(run.features)
    history = {row["id"]: row for row in pq.read_table(run.features.parent / "clients").to_pylist()}
    ids = sorted(latest)
    frame = pd.DataFrame([{name: latest[i][name] for name in FEATURE_NAMES} for i in ids]).astype("float64")
    scores = pipeline.predict_proba(frame)[:, 1]
    expected = {}
    for client_id, score in zip(ids, scores, strict=True):
        row = latest[client_id]
        fields = {name: str(row[name]) for name in FEATURE_NAMES if row[name] is not None}
        if row["avg_amount_loans_previous"] is not None:
            fields["avg_amount_loans_previous"] = repr(row["avg_amount_loans_previous"])
        state = history[client_id]
        assert state["last_loan_id"] == row["loan_id"]
        expected[client_id] = fields | {
            "loan_date": row["loan_date"].isoformat(), "score": repr(float(score)),
            "label": str(int(score >= card["threshold"]["value"])), "model_version": card["version"],
            "loans": str(state["loans"]), "amount_sum": repr(state["amount_sum"]),
            "last_loan_id": str(row["loan_id"]), "birthday": state["birthday"],
            "job_start_date": state["job_start_date"],
        }  # fmt: skip
    return expected


def contents(admin: redis.Redis, pattern: str) -> dict[str, object]:
    """Every key matching the pattern with its value (a hash's fields, a string's text)."""
    return {
        key: admin.hgetall(key) if admin.type(key) == "hash" else admin.get(key) for key in admin.scan_iter(pattern)
    }


def stored(url: str, version: str, ids: list[int]) -> dict[int, dict[str, str]]:
    store = keys(url)
    admin = redis.Redis.from_url(url, decode_responses=True)
    return {i: admin.hgetall(store.client_key(version, i)) for i in ids}


def test_latest_with_history_joins_each_clients_last_loan_with_its_state(spark: SparkSession) -> None:
    d = dt.date
    rows = [
        (1, 10, d(2020, 1, 1), 0, None, 30, 2, 1, 0),
        (5, 10, d(2020, 3, 1), 2, 150.0, 30, None, 1, None),
        (4, 10, d(2020, 3, 1), 1, 100.0, 30, 2, 1, 1),  # same day as loan 5: loan 5 is later
        (2, 20, d(3021, 9, 18), 0, None, None, None, None, 0),  # a date pandas cannot hold
    ]
    features = spark.createDataFrame(rows, "loan_id long, id long, loan_date date, nb_previous_loans int, "
                                     "avg_amount_loans_previous double, age int, years_on_the_job int, "
                                     "flag_own_car int, status int")  # fmt: skip
    clients = spark.createDataFrame(
        [(10, 3, 450.0, 5, d(2020, 3, 1), "1990-01-01", None, 1), (20, 1, 99.5, 2, d(3021, 9, 18), None, None, None)],
        "id long, loans int, amount_sum double, last_loan_id long, last_loan_date date, birthday string, "
        "job_start_date string, flag_own_car int",
    )  # fmt: skip
    expected = spark.createDataFrame(
        [(10, "2020-03-01", 2, 150.0, 30, None, 1, 5, 3, 450.0, "1990-01-01", None),
         (20, "3021-09-18", 0, None, None, None, None, 2, 1, 99.5, None, None)],
        "id long, loan_date string, nb_previous_loans int, avg_amount_loans_previous double, age int, "
        "years_on_the_job int, flag_own_car int, last_loan_id long, loans int, amount_sum double, birthday string, "
        "job_start_date string",
    )  # fmt: skip
    assertDataFrameEqual(mz.latest_with_history(features, clients), expected)


def test_records_give_the_same_text_as_the_stores_encoder() -> None:
    # As mapInPandas hands them over: whole-number columns with a null arrive as float64 with NaN.
    scored = pd.DataFrame({
        "id": [1, 2], "loan_date": ["2020-01-01", "3021-09-18"], "nb_previous_loans": [3, 0],
        "avg_amount_loans_previous": [2134.5, float("nan")], "age": [41.0, float("nan")],
        "years_on_the_job": [float("nan"), 7.0], "flag_own_car": [1.0, 0.0], "score": [0.1 + 0.2, 1e-20],
        "label": [1, 0], "model_version": ["m", "m"], "loans": [4, 1], "amount_sum": [8538.0 + 0.1, 12.5],
        "last_loan_id": [17, 2**62], "birthday": ["1980-02-29", None], "job_start_date": [None, "3021-09-18"],
    })  # fmt: skip
    typed = [{"nb_previous_loans": 3, "avg_amount_loans_previous": 2134.5, "age": 41, "years_on_the_job": None,
              "flag_own_car": 1, "loan_date": "2020-01-01", "score": 0.1 + 0.2, "label": 1, "model_version": "m",
              "loans": 4, "amount_sum": 8538.0 + 0.1, "last_loan_id": 17, "birthday": "1980-02-29",
              "job_start_date": None},
             {"nb_previous_loans": 0, "avg_amount_loans_previous": None, "age": None, "years_on_the_job": 7,
              "flag_own_car": 0, "loan_date": "3021-09-18", "score": 1e-20, "label": 0, "model_version": "m",
              "loans": 1, "amount_sum": 12.5, "last_loan_id": 2**62, "birthday": None,
              "job_start_date": "3021-09-18"}]  # fmt: skip
    codec = Codec.for_features()
    encoded = codec.encode_columns(scored, mz.WRITTEN_FIELDS)
    got = [(i, dict(zip(fields[::2], fields[1::2], strict=True))) for i, fields in encoded]
    assert got == [(1, codec.encode(typed[0])), (2, codec.encode(typed[1]))]
    assert got[0][1]["age"] == "41" and "years_on_the_job" not in got[0][1] and got[1][1]["score"] == "1e-20"


def test_materialize_publishes_the_latest_rows_with_the_models_scores(
    spark: SparkSession, model_run: ModelRun, redis_url: str
) -> None:
    summary = mz.run(spark, job_args(model_run.features, model_run.models, redis_url))
    store = keys(redis_url)
    version = summary["version"]
    assert summary["clients"] == CLIENTS and summary["previous"] is None
    assert store.active_version() == version and store.versions() == [version]
    expected = expected_fields(model_run)
    assert stored(redis_url, version, sorted(expected)) == expected
    labels = [int(fields["label"]) for fields in expected.values()]
    assert 0 < sum(labels) < len(labels)  # the threshold splits the clients
    meta = store.meta(version)
    assert {k: meta[k] for k in ("status", "clients", "model_version", "rows", "as_of", "feature_names", "source")} == {
        "status": "complete", "clients": str(CLIENTS), "model_version": model_run.version,
        "rows": str(pq.read_metadata(next(model_run.features.glob("*.parquet"))).num_rows),
        "as_of": max(r["loan_date"] for r in expected_latest(model_run.features).values()).isoformat(),
        "feature_names": ",".join(FEATURE_NAMES), "source": str(model_run.features),
    }  # fmt: skip
    assert (
        store.count_clients(version) == CLIENTS
        and redis.Redis.from_url(redis_url).exists(store.lease_key(version)) == 0
    )


def test_materialize_uses_the_approved_version_when_there_are_several(
    spark: SparkSession, model_run: ModelRun, redis_url: str, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(model_run.models, models)
    other = dataclasses.replace(
        model_run.result, card={**model_run.result.card, "threshold": {"value": 0.0, "rule": "x"}}
    )
    newer = registry.save(models, other.pipeline, other.card, other.files())  # a newer candidate
    summary = mz.run(spark, job_args(model_run.features, models, redis_url))
    assert summary["model_version"] == model_run.version != newer
    expected = expected_fields(model_run, models)
    assert stored(redis_url, summary["version"], sorted(expected)) == expected


def test_materialize_republish_never_shows_a_reader_a_missing_or_partial_client(
    spark: SparkSession, model_run: ModelRun, redis_url: str
) -> None:
    args = job_args(
        model_run.features, model_run.models, redis_url, grace_period_seconds=0.5, version_cache_seconds=0.2
    )
    first = mz.run(spark, args)
    reader = OnlineStore.from_url(redis_url, version_cache_seconds=0.2)
    reads: dict[str, int] = {}
    problems: list[str] = []

    def poll(stop: threading.Event) -> None:
        while not stop.is_set():
            for client_id in (1, 300, 600):
                version, record = reader.read(client_id)
                reads[version] = reads.get(version, 0) + 1
                if record is None or not {"nb_previous_loans", "loan_date", "score", "label", "model_version"} <= set(
                    record
                ):
                    problems.append(f"{version}:{client_id}:{record}")

    with background(poll):
        second = mz.run(spark, args)
        time.sleep(0.5)
        third = mz.run(spark, args)
        time.sleep(0.3)
    assert problems == []
    assert all(reads.get(v["version"], 0) >= 10 for v in (first, second, third)), reads  # every version was read
    assert second["previous"] == first["version"] and third["previous"] == second["version"]
    assert third["removed"] == [first["version"]]
    store = keys(redis_url)
    assert store.versions() == [second["version"], third["version"]]
    assert store.count_clients(first["version"]) == 0 and store.count_clients(second["version"]) == CLIENTS
    store.publish(second["version"])  # rollback
    assert store.read(300)[0] == second["version"]


def test_materialize_removes_a_dead_loads_leftovers_at_once(
    spark: SparkSession, model_run: ModelRun, redis_url: str
) -> None:
    store = keys(redis_url)
    store.begin("20200101T000000Z", {"source": "a load killed mid-way"}, lease_seconds=0.1)
    store.write("20200101T000000Z", [(1, {"age": 1})])
    time.sleep(0.2)  # its lease has expired: nobody renews it
    summary = mz.run(spark, job_args(model_run.features, model_run.models, redis_url))  # grace: 600 s
    assert summary["removed"] == ["20200101T000000Z"]
    assert store.versions() == [summary["version"]] and store.count_clients("20200101T000000Z") == 0


def test_materialize_fails_cleanly_when_redis_runs_out_mid_load_and_a_rerun_succeeds(
    spark: SparkSession, model_run: ModelRun, redis_url: str, tmp_path: Path
) -> None:
    features = synthetic_features(tmp_path / "features", clients=3000, seed=4)  # ~1 MB in Redis
    first = mz.run(spark, job_args(features, model_run.models, redis_url))
    store = keys(redis_url)
    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    before = {key: admin.hgetall(key) for key in admin.scan_iter(store.client_key(first["version"], "*"))}
    # Writes start failing (OOM) a few hundred clients in: a real Redis error in the middle of the load.
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) + 300_000)
    try:
        with pytest.raises(mz.MaterializeError, match=r"unchanged: redis\.exceptions\.OutOfMemoryError") as caught:
            mz.run(spark, job_args(features, model_run.models, redis_url))
    finally:
        admin.config_set("maxmemory", 0)
    assert "HSET" not in str(caught.value) and "nb_previous_loans" not in str(caught.value)  # no client's values
    assert store.active_version() == first["version"]
    assert {key: admin.hgetall(key) for key in admin.scan_iter(store.client_key(first["version"], "*"))} == before
    assert store.versions() == [first["version"]]  # the failed namespace was removed
    others = sorted(k for k in admin.scan_iter("*") if not k.startswith(store.namespace(first["version"])))
    assert others == [store.active_key, store.versions_key]
    again = mz.run(spark, job_args(features, model_run.models, redis_url))
    assert again["previous"] == first["version"] and store.active_version() == again["version"]


def test_materialize_survives_redis_going_down_during_a_load(
    spark: SparkSession, model_run: ModelRun, tmp_path: Path
) -> None:
    """Redis stops right after the load registered its version: the job fails, the active version is whole."""
    server = RedisServer(tmp_path / "redis", None, "--appendonly", "yes", "--appendfsync", "always").start()
    try:
        first = mz.run(spark, job_args(model_run.features, model_run.models, server.url))
        store = keys(server.url)
        admin = redis.Redis.from_url(server.url, decode_responses=True)
        before = contents(admin, store.namespace(first["version"]) + "*")

        def stop_when_the_next_load_begins(_: threading.Event) -> None:
            deadline = time.monotonic() + 60
            while admin.zcard(store.versions_key) < 2 and time.monotonic() < deadline:
                time.sleep(0.002)
            server.stop()

        with (
            background(stop_when_the_next_load_begins),
            pytest.raises(mz.MaterializeError, match=r"active version is unchanged: .*(Connection|connecting)"),
        ):
            mz.run(spark, job_args(model_run.features, model_run.models, server.url, lease_seconds=0.5))
        server.start()  # the append-only file brings the data back
        time.sleep(0.6)  # the failed load's lease expires: it is provably dead
        store = keys(server.url)
        admin = redis.Redis.from_url(server.url, decode_responses=True)
        assert store.active_version() == first["version"]
        assert contents(admin, store.namespace(first["version"]) + "*") == before
        quick = {"grace_period_seconds": 0.001, "version_cache_seconds": 0}
        again = mz.run(spark, job_args(model_run.features, model_run.models, server.url, **quick))
        assert again["previous"] == first["version"] and store.active_version() == again["version"]
        assert len(again["removed"]) == 1  # the failed load's leftovers
        assert store.versions() == [first["version"], again["version"]]
    finally:
        server.stop()


def test_materialize_with_zero_clients_never_moves_the_pointer(
    spark: SparkSession, model_run: ModelRun, redis_url: str, tmp_path: Path
) -> None:
    first = mz.run(spark, job_args(model_run.features, model_run.models, redis_url))
    empty = tmp_path / "empty" / "features"
    for name in ("features", "clients"):
        (empty.parent / name).mkdir(parents=True)
        source = model_run.features.parent / name
        pq.write_table(pq.read_table(source).slice(0, 0), empty.parent / name / "part-0.parquet")
    with pytest.raises(mz.MaterializeError, match="holds 0 clients, expected 0"):
        mz.run(spark, job_args(empty, model_run.models, redis_url))
    store = keys(redis_url)
    assert store.active_version() == first["version"] and store.versions() == [first["version"]]


def test_materialize_with_redis_down_fails_fast_and_names_it(spark: SparkSession, model_run: ModelRun) -> None:
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    with pytest.raises(mz.MaterializeError, match=r"Redis at redis://:\*\*\*@127.0.0.1:\d+/0 is unreachable"):
        mz.run(spark, job_args(model_run.features, model_run.models, url))
    assert time.monotonic() - started < 10


def test_materialize_into_a_redis_cluster(spark: SparkSession, model_run: ModelRun, redis_cluster) -> None:
    args = job_args(model_run.features, model_run.models, redis_cluster.url, prefix=f"c{time.monotonic_ns()}")
    summary = mz.run(spark, args)
    store = OnlineStore.from_url(redis_cluster.url, prefix=args.redis.prefix, version_cache_seconds=0)
    assert store.clustered and store.active_version() == summary["version"]
    expected = expected_fields(model_run)
    cluster = redis.RedisCluster.from_url(redis_cluster.url, decode_responses=True)
    got = {i: cluster.hgetall(store.client_key(summary["version"], i)) for i in sorted(expected)}
    assert got == expected
    nodes_holding = [n for n in redis_cluster.nodes if redis.Redis(port=n.port).dbsize() > 0]
    assert len(nodes_holding) == 3  # the clients are spread over every primary


@pytest.mark.slow
def test_materialize_command_prints_the_version_alone_and_exits_1_or_2_on_failure(
    model_run: ModelRun, redis_url: str, tmp_path: Path
) -> None:
    def command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["./spark-submit.sh", "materialize", "--features", str(model_run.features),
                               "--redis-url", redis_url, *args], cwd=ROOT, env=clean_env(), capture_output=True,
                              text=True, timeout=300)  # fmt: skip

    done = command("--models", str(model_run.models))
    assert done.returncode == 0, done.stderr[-2000:]
    version = done.stdout.strip()
    assert done.stdout == f"{version}\n" and keys(redis_url).active_version() == version  # stdout: the version only
    assert f"published version {version} (previous none): {CLIENTS} clients" in done.stderr
    refused = command("--models", str(tmp_path))
    assert refused.returncode == 2 and "no approved model" in refused.stderr and refused.stdout == ""
    # Redis evicting keys mid-load: the count does not match the rows written, the job fails with 1.
    admin = redis.Redis.from_url(redis_url)
    admin.config_set("maxmemory-policy", "allkeys-random")
    admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) + 30_000)
    try:
        evicted = command("--models", str(model_run.models))
    finally:
        admin.config_set("maxmemory", 0)
        admin.config_set("maxmemory-policy", "noeviction")
    assert evicted.returncode == 1 and evicted.stdout == ""
    last = evicted.stderr.strip().splitlines()[-1]
    assert "failed, the active version is unchanged" in last, last
    assert keys(redis_url).active_version() in (version, None)  # never the failed load (None: the pointer evicted)


def test_verify_online_finds_no_mismatch_then_names_each_one(
    spark: SparkSession, model_run: ModelRun, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = mz.run(spark, job_args(model_run.features, model_run.models, redis_url))
    command = ["verify-online", "--features", str(model_run.features), "--models", str(model_run.models),
               "--redis-url", redis_url, "--sample", "600"]  # fmt: skip
    capsys.readouterr()
    assert main(command) == 0 and capsys.readouterr().out == ""
    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    store = keys(redis_url)
    admin.hset(store.client_key(summary["version"], 17), "score", "0.5")
    admin.hdel(store.client_key(summary["version"], 300), "loans")
    admin.hset(store.client_key(summary["version"], 450), "birthday", "1900-01-01")
    assert main(command) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[0].startswith("client 17: score stored 0.5, expected ")
    assert out[1] == f"client 300: loans stored None, expected {int(expected_fields(model_run)[300]['loans'])}"
    assert out[2].startswith("client 450: birthday stored '1900-01-01', expected '")
    assert main([*command[:-2], "--features", str(model_run.features.parent / "nowhere")]) == 2
