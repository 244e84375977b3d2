"""The stream (DESIGN §13): landed loans applied to the online state exactly once, as the batch computes them.

Real Spark (the session's, or `./spark-submit.sh stream` as a user runs it), real Redis servers; the
expected state always comes from the feature job run over the history plus the loans that were applied.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import math
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

from conf.settings import RedisSettings
from contract import FEATURE_NAMES, RAW_COLUMNS
from datagen.generate import write_csv
from model import registry
from serving import landing
from serving.app import create_app
from serving.cli import versions_table
from serving.scoring import load as load_model
from serving.store import LandedUpdate, OnlineStore
from spark_jobs import features as fj
from spark_jobs import materialize as mz
from spark_jobs import stream as sj
from spark_jobs.source import Limits
from tests.conftest import DEFAULTS, ModelRun
from tests.helpers import ROOT, background, clean_env
from tests.redis_servers import RedisClusterServers, RedisServer
from tests.test_app import app_config

TODAY = dt.datetime.now(dt.UTC).date()
LANDED_IDS = 5 * 10**12  # landed loan ids: far from the history's


@dataclasses.dataclass(frozen=True)
class History:
    """A raw history through the feature job: its rows and outputs."""

    source: Path
    out: Path
    rows: list[dict[str, str]]
    clients: dict[int, dict]  # the feature job's clients/ rows by id

    def template(self, client_id: int) -> dict[str, str]:
        """The raw row of the client's last loan (its attributes), to build new loans from."""
        last = str(self.clients[client_id]["last_loan_id"])
        return next(dict(r) for r in self.rows if r["loan_id"].strip() == last)


def raw_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [dict(zip(RAW_COLUMNS, r, strict=True)) for r in csv.reader(handle) if len(r) == len(RAW_COLUMNS)][1:]


@pytest.fixture(scope="module")
def history(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> History:
    base = tmp_path_factory.mktemp("stream-history")
    source = base / "raw" / "loans.csv"
    write_csv(source, clients=120, seed=41, dirty=True)
    fj.run(spark, fj.FeatureJobArgs(str(source), str(base / "out"), None))
    clients = {r["id"]: r for r in pq.read_table(base / "out" / "clients").to_pylist()}
    return History(source, base / "out", raw_rows(source), clients)


def redis_settings(url: str, prefix: str = "credit") -> RedisSettings:
    return dataclasses.replace(DEFAULTS.redis, url=url, batch_size=50, prefix=prefix)


def publish(spark: SparkSession, out: Path, model_run: ModelRun, url: str, prefix: str = "credit") -> str:
    settings = redis_settings(url, prefix)
    args = mz.MaterializeArgs(str(out / "features"), str(model_run.models), str(out / "clients"), settings)
    return str(mz.run(spark, args)["version"])


def stream_args(base: Path, url: str, prefix: str = "credit") -> sj.StreamArgs:
    return sj.StreamArgs(str(base / "landing"), str(base / "checkpoint"), str(base / "quarantine"), True, 0.5, 1000,
                         Limits(20, 100_000), 0, redis_settings(url, prefix))  # fmt: skip


def land(folder: Path, name: str, rows: list[dict[str, str]], extra_lines: tuple[str, ...] = ()) -> Path:
    """Write rows as a landing file the way a feed must: beside it, then renamed in."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(RAW_COLUMNS)
        writer.writerows([[r[c] for c in RAW_COLUMNS] for r in rows])
        handle.writelines(line + "\n" for line in extra_lines)
    tmp.replace(folder / name)
    return folder / name


def loan(template: dict[str, str], loan_id: int, on: dt.date, amount: str, **changes: str) -> dict[str, str]:
    return {**template, "loan_id": str(loan_id), "loan_date": on.isoformat(), "loan_amount": amount, "status": "",
            **changes}  # fmt: skip


def expected_state(spark: SparkSession, history: History, applied: list[dict[str, str]], base: Path) -> Path:
    """The feature job's outputs over the history plus the applied loans: what the stream must reach."""
    extra = land(base / "applied", "applied.csv", applied)
    fj.run(spark, fj.FeatureJobArgs(f"{history.source},{extra}", str(base / "expected"), None))
    return base / "expected"


def assert_matches_batch(
    url: str, version: str, out: Path, model_run: ModelRun, ids: list[int], prefix: str = "credit"
) -> None:
    """Each client's hash holds what the feature job computed (features, history state) and the approved
    model's score of its latest features. Sums and means may differ in the last bits (another order)."""
    pipeline, card = registry.load_approved(model_run.models)
    features = pq.read_table(out / "features").to_pylist()
    latest: dict[int, dict] = {}
    for row in sorted(features, key=lambda r: (r["loan_date"], r["loan_id"])):
        latest[row["id"]] = row
    states = {r["id"]: r for r in pq.read_table(out / "clients").to_pylist()}
    store = OnlineStore.from_url(url, prefix=prefix, version_cache_seconds=0)
    frame = pd.DataFrame([{n: latest[i][n] for n in FEATURE_NAMES} for i in ids]).astype("float64")
    scores = pipeline.predict_proba(frame[list(FEATURE_NAMES)])[:, 1]
    for client_id, score in zip(ids, scores, strict=True):
        stored = store.read_version(version, client_id)
        assert stored is not None, client_id
        row, state = latest[client_id], states[client_id]
        want = {
            "loans": state["loans"], "last_loan_id": row["loan_id"], "loan_date": row["loan_date"].isoformat(),
            "birthday": state["birthday"], "job_start_date": state["job_start_date"],
            **{n: row[n] for n in FEATURE_NAMES if n != "avg_amount_loans_previous"},
        }  # fmt: skip
        assert {k: stored.get(k) for k in want} == want, client_id
        for name, value in (("avg_amount_loans_previous", row["avg_amount_loans_previous"]),
                            ("amount_sum", state["amount_sum"])):  # fmt: skip
            if value is None:
                assert stored.get(name) is None, (client_id, name)
            else:
                assert math.isclose(stored[name], value, rel_tol=1e-12), (client_id, name, stored[name], value)
        assert abs(stored["score"] - score) < 1e-5, client_id
        assert stored["label"] == int(stored["score"] >= card["threshold"]["value"])
        assert stored["model_version"] == card["version"]


def quarantined(folder: Path) -> Counter:
    """(batch, reason) -> rows in the stream's quarantine."""
    table = pq.read_table(folder).to_pylist() if folder.exists() else []
    return Counter((int(r["batch"]), r["reason"]) for r in table)


# ---------------------------------------------------------------- the rules, in the session's Spark


def test_stream_applies_landed_loans_as_the_feature_job_computes_them_exactly_once(
    spark: SparkSession, history: History, model_run: ModelRun, redis_url: str, tmp_path: Path
) -> None:
    version = publish(spark, history.out, model_run, redis_url)
    ids = sorted(history.clients)
    rng = random.Random(3)
    chosen = rng.sample(ids, 12)
    state = {c: history.clients[c] for c in chosen}
    next_id = iter(range(LANDED_IDS, LANDED_IDS + 1000))
    applied: list[dict[str, str]] = []
    # The latest loan: the same day as the last one (a larger loan_id is later), a day and a year on.
    for client_id, days in zip(chosen[:3], (0, 1, 365), strict=True):
        applied.append(loan(history.template(client_id), next(next_id), state[client_id]["last_loan_date"]
                            + dt.timedelta(days=days), "250.5"))  # fmt: skip
    # Late data: dated before the client's latest loan, it counts in the totals and the latest's history.
    late = [loan(history.template(c), next(next_id), state[c]["last_loan_date"] - dt.timedelta(days=40), "99.99")
            for c in chosen[3:6]]  # fmt: skip
    applied += late
    # Two loans of one client in one file (a late one, then the latest, listed in the other order), with new
    # attributes on the latest: the 3021 "not employed" date, and an impossible birthday.
    c = chosen[6]
    two = [loan(history.template(c), next(next_id), TODAY, "1000", job_start_date="3021-09-18",
                birthday="1990-02-30", flag_own_car="y"),
           loan(history.template(c), next(next_id), state[c]["last_loan_date"] - dt.timedelta(days=1),
                "10")]  # fmt: skip
    applied += two
    # A first loan of a client the history does not hold.
    newcomer = loan(history.template(chosen[7]), next(next_id), TODAY - dt.timedelta(days=3), "500", id="999000001")
    applied.append(newcomer)
    # Already in the history (the same row again): counted once, by the history.
    in_history = dict(history.template(chosen[8]))
    # Bad rows, quarantined with the batch's reasons; one conflicting with a history loan (another client).
    t = history.template(chosen[9])
    bad = [loan(t, next(next_id), TODAY, "abc"), loan(t, next(next_id), TODAY + dt.timedelta(days=2), "10"),
           loan(t, next(next_id), dt.date(2021, 2, 28), "10", loan_date="2021-02-30"),
           loan(t, int(history.clients[chosen[10]]["last_loan_id"]), TODAY, "10")]  # fmt: skip
    rows = [*applied, applied[0], in_history, *bad]  # applied[0] twice in the file: an exact duplicate
    malformed = ",".join(["1"] * (len(RAW_COLUMNS) + 1))
    landing_dir = tmp_path / "landing"
    first = land(landing_dir, "a.csv", rows, (malformed,))
    # The same file dropped twice, under another name.
    land(landing_dir, "a-again.csv", rows, (malformed,))

    reports = sj.run(spark, stream_args(tmp_path, redis_url))
    assert len(reports) == 1
    report = reports[0]
    assert (report.files, report.accepted, report.in_history, report.already_applied) == (2, len(applied) + 1, 1, 0)
    assert report.applied == {version: len(applied)} and report.new_clients == 1
    assert report.rejected == {"invalid_loan_amount": 1, "future_loan_date": 1, "invalid_loan_date": 1,
                               "malformed_record": 1, "duplicate_loan_id": 1}  # fmt: skip
    assert report.rows_read == 2 * (len(rows) + 1)

    # A later batch: the same loans again (another file), a conflicting row for a landed loan_id, and the
    # second loan of the new client.
    second = loan(newcomer, next(next_id), TODAY - dt.timedelta(days=1), "300")
    conflicting = dict(applied[1], loan_amount="1.5")
    land(landing_dir, "b.csv", [applied[0], applied[2], conflicting, second])
    again = sj.run(spark, stream_args(tmp_path, redis_url))
    assert len(again) == 1 and again[0].batch == 1
    assert (again[0].already_applied, again[0].applied, again[0].new_clients) == (2, {version: 1}, 0)
    assert again[0].rejected == {"duplicate_loan_id": 1}
    applied.append(second)
    # As in the batch, the quarantine holds distinct rows (the copies in the second file are the same rows).
    assert quarantined(tmp_path / "quarantine") == Counter({
        (0, "invalid_loan_amount"): 1, (0, "future_loan_date"): 1, (0, "invalid_loan_date"): 1,
        (0, "malformed_record"): 1, (0, "duplicate_loan_id"): 1, (1, "duplicate_loan_id"): 1,
    })  # fmt: skip

    # Nothing lands: a run finds nothing to do and changes nothing.
    assert sj.run(spark, stream_args(tmp_path, redis_url)) == []

    expected = expected_state(spark, history, applied, tmp_path)
    touched = sorted({int(r["id"]) for r in applied})
    assert_matches_batch(redis_url, version, expected, model_run, touched)
    untouched = [i for i in ids if i not in touched]
    assert_matches_batch(redis_url, version, history.out, model_run, untouched)

    store = OnlineStore.from_url(redis_url, version_cache_seconds=0)
    meta = store.meta(version)
    assert (meta["stream_loans"], meta["stream_new_clients"]) == (str(len(applied)), "1")
    assert meta["stream_last_loan_id"] == second["loan_id"]
    assert f"{len(applied)} ({second['loan_id']} at " in versions_table(store)
    assert set(store.landed(version)) == {int(r["loan_id"]) for r in applied} | {int(conflicting["loan_id"])}
    assert first.exists()  # landed files stay where they are

    # The application endpoint sees the new loans at once.
    app = create_app(app_config(redis_url)).test_client()
    answer = app.post("/v1/applications/credit-risk", json={"client_id": 999000001}).json
    assert answer["history"] == {"loans": 2, "last_loan_date": second["loan_date"]} and answer["version"] == version
    assert answer["features"]["nb_previous_loans"] == 2 and answer["features"]["avg_amount_loans_previous"] == 400.0


def test_stream_refuses_a_broken_landed_file_and_applies_the_others(
    spark: SparkSession, history: History, model_run: ModelRun, redis_url: str, tmp_path: Path
) -> None:
    version = publish(spark, history.out, model_run, redis_url)
    client_id = sorted(history.clients)[0]
    good = loan(history.template(client_id), LANDED_IDS + 1, TODAY, "42")
    land(tmp_path / "landing", "good.csv", [good])
    broken = tmp_path / "landing" / "broken.csv"
    broken.write_text(",".join(RAW_COLUMNS) + '\n1,2,"an unclosed quote\n' + "x\n" * 30, encoding="utf-8")
    (report,) = sj.run(spark, stream_args(tmp_path, redis_url))
    assert (report.files, report.files_refused, report.applied) == (2, 1, {version: 1})
    rows = pq.read_table(tmp_path / "quarantine").to_pylist()
    assert [r["reason"] for r in rows] == [sj.UNREADABLE_FILE]
    assert "broken.csv line 2" in rows[0]["raw_record"] and "never closes" in rows[0]["raw_record"]
    stored = OnlineStore.from_url(redis_url, version_cache_seconds=0).read_version(version, client_id)
    assert stored is not None and stored["loans"] == history.clients[client_id]["loans"] + 1


def test_stream_with_nothing_published_stops_and_says_so(spark: SparkSession, redis_url: str, tmp_path: Path) -> None:
    land(tmp_path / "landing", "a.csv", [])
    (tmp_path / "landing" / "a.csv").write_text(",".join(RAW_COLUMNS) + "\n" + ",".join(["1"] * 24) + "\n")
    with pytest.raises(sj.StreamError, match="no version is published"):
        sj.run(spark, stream_args(tmp_path, redis_url))


def test_landed_update_on_a_changed_hash_is_refused_and_a_replay_changes_nothing(
    model_run: ModelRun, redis_url: str, spark: SparkSession, history: History
) -> None:
    """The script's two guards, on a real Redis: a hash changed since read (-1), a loan applied before (0)."""
    version = publish(spark, history.out, model_run, redis_url)
    store = OnlineStore.from_url(redis_url, version_cache_seconds=0)
    client_id = sorted(history.clients)[1]
    before = store.read_version(version, client_id)
    assert before is not None
    model = load_model(store, version)
    one = landing.LandedLoan(LANDED_IDS + 7, client_id, TODAY, 10.0, None, None, "N", "d1")
    two = dataclasses.replace(one, loan_id=LANDED_IDS + 8, digest="d2")
    stale, _ = landing.plan(client_id, before, [two], model, store)
    assert landing.apply(store, version, model, [one]).by_loan == {one.loan_id: landing.APPLIED}
    assert store.apply_landed(version, stale) == [-1]  # computed before `one` was applied
    assert landing.apply(store, version, model, [one, two]).by_loan == {one.loan_id: landing.ALREADY_APPLIED,
                                                                       two.loan_id: landing.APPLIED}  # fmt: skip
    after = store.read_version(version, client_id)
    assert (
        after is not None
        and after["loans"] == before["loans"] + 2
        and after["landed"] == f"{one.loan_id},{two.loan_id}"
    )
    assert after["nb_previous_loans"] == before["loans"] + 1 and after["last_loan_id"] == two.loan_id
    update = LandedUpdate(client_id, one.loan_id, 0, "", {"loans": "1"})
    assert store.apply_landed(version, [update]) == [0]


def test_stream_into_a_redis_cluster(
    spark: SparkSession, history: History, model_run: ModelRun, redis_cluster: RedisClusterServers, tmp_path: Path
) -> None:
    url, prefix = redis_cluster.url, f"s{time.monotonic_ns()}"
    version = publish(spark, history.out, model_run, url, prefix)
    chosen = sorted(history.clients)[:20]
    rows = [loan(history.template(c), LANDED_IDS + i, TODAY, "77") for i, c in enumerate(chosen)]
    land(tmp_path / "landing", "a.csv", rows)
    (report,) = sj.run(spark, stream_args(tmp_path, url, prefix))
    assert report.applied == {version: 20}
    expected = expected_state(spark, history, rows, tmp_path)
    assert_matches_batch(url, version, expected, model_run, chosen, prefix)
    assert sj.run(spark, stream_args(tmp_path, url, prefix)) == []  # each file once


# ---------------------------------------------------------------- the command, killed, stopped, republished


def stream_command(base: Path, url: str, *extra: str) -> list[str]:
    return ["./spark-submit.sh", "stream", "--landing", str(base / "landing"), "--checkpoint", str(base / "ckpt"),
            "--quarantine", str(base / "quarantine"), "--redis-url", url, *extra]  # fmt: skip


def totals(store: OnlineStore, version: str, ids: list[int]) -> dict[int, int]:
    return {i: (r or {}).get("loans", 0) for i, r in zip(ids, store.read_version_many(version, ids), strict=True)}


def many_loans(history: History, count: int, first_id: int) -> list[dict[str, str]]:
    """`count` new loans spread over the history's clients, dated today."""
    ids = sorted(history.clients)
    templates = {c: history.template(c) for c in ids}
    return [loan(templates[ids[i % len(ids)]], first_id + i, TODAY, f"{100 + i % 50}.25") for i in range(count)]


def kill_job(marker: Path) -> None:
    """kill -9 every process of the job (the launcher, spark-submit's JVM, the Python driver)."""
    subprocess.run(["pkill", "-9", "-f", str(marker)], check=False)


def wait_until(condition, seconds: float, what: str, poll: float = 0.02) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")
        time.sleep(poll)


def assert_each_loan_once(store: OnlineStore, version: str, history: History, landed: list[dict[str, str]]) -> None:
    """Every client counts its history and each of its landed loans once; each landed loan listed once."""
    ids = sorted(history.clients)
    per_client = Counter(int(r["id"]) for r in landed)
    assert totals(store, version, ids) == {i: history.clients[i]["loans"] + per_client[i] for i in ids}
    listed = [x for r in store.read_version_many(version, ids) for x in (r or {}).get("landed", "").split(",") if x]
    assert sorted(listed) == sorted(r["loan_id"] for r in landed)


@dataclasses.dataclass(frozen=True)
class BigBatch:
    """A published version, 30,000 landed loans, and `stream --once` started on them, applying already."""

    version: str
    store: OnlineStore
    ids: list[int]
    before: int  # the loans of every client before
    landed: list[dict[str, str]]
    job: subprocess.Popen

    def applied(self) -> int:
        return sum(totals(self.store, self.version, self.ids).values()) - self.before


def big_batch_applying(spark: SparkSession, history: History, model_run: ModelRun, url: str, base: Path) -> BigBatch:
    version = publish(spark, history.out, model_run, url)
    store = OnlineStore.from_url(url, version_cache_seconds=0)
    ids = sorted(history.clients)
    landed = many_loans(history, 30_000, LANDED_IDS)
    land(base / "landing", "big.csv", landed)
    batch = BigBatch(version, store, ids, sum(totals(store, version, ids).values()), landed,
                     start(stream_command(base, url, "--once"), base / "stream.log"))  # fmt: skip
    try:
        wait_until(lambda: batch.applied() > 0, 240, "the first loans applied")
    except BaseException:
        kill_job(base / "ckpt")
        raise
    return batch


def restart(base: Path, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(stream_command(base, url, "--once"), cwd=ROOT, env=clean_env(), capture_output=True,
                          text=True, timeout=300)  # fmt: skip


@pytest.mark.slow
def test_stream_killed_mid_batch_then_restarted_applies_each_loan_once(
    spark: SparkSession, history: History, model_run: ModelRun, redis_url: str, tmp_path: Path
) -> None:
    batch = big_batch_applying(spark, history, model_run, redis_url, tmp_path)
    try:
        kill_job(tmp_path / "ckpt")
        batch.job.wait(30)
    finally:
        kill_job(tmp_path / "ckpt")
    # A Python worker holding a task's rows may apply a few more before it finds its JVM gone: wait for quiet.
    applied = [-1, batch.applied()]
    while applied[-1] != applied[-2]:
        time.sleep(1.0)
        applied.append(batch.applied())
    partial = applied[-1]
    assert 0 < partial < len(batch.landed), partial  # killed mid-batch
    assert not (tmp_path / "ckpt" / "commits" / "0").exists()  # the micro-batch was not committed
    done = restart(tmp_path, redis_url)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"applied: {len(batch.landed) - partial} to {batch.version}" in done.stderr
    assert f"{partial} already applied" in done.stderr
    assert_each_loan_once(batch.store, batch.version, history, batch.landed)


@pytest.mark.slow
def test_stream_with_redis_hung_mid_batch_fails_then_a_restart_converges(
    spark: SparkSession, history: History, model_run: ModelRun, redis_url: str, redis_server: RedisServer,
    tmp_path: Path,
) -> None:  # fmt: skip
    batch = big_batch_applying(spark, history, model_run, redis_url, tmp_path)
    try:
        redis_server.pause()
        started = time.monotonic()
        batch.job.wait(120)
        failed_after = time.monotonic() - started
    finally:
        redis_server.resume()
        kill_job(tmp_path / "ckpt")
    stderr = (tmp_path / "stream.log").read_text()
    assert batch.job.returncode == 1, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert "the stream stopped" in last and "nothing is applied twice" in last, last
    assert "Traceback" not in last
    assert failed_after < 60
    assert 0 < batch.applied() < len(batch.landed)
    done = restart(tmp_path, redis_url)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_each_loan_once(batch.store, batch.version, history, batch.landed)


@pytest.mark.slow
def test_republish_while_loans_land_keeps_every_landed_loan_once_and_sigterm_stops_cleanly(
    spark: SparkSession, history: History, model_run: ModelRun, redis_url: str, tmp_path: Path
) -> None:
    """The stream runs; files land all along; the feature job reads the history with the landing folder and
    materialize republishes meanwhile. The new version counts every landed loan exactly once, whether the
    feature run read it, the load replayed it, or the stream applied it after the publish."""
    first = publish(spark, history.out, model_run, redis_url)
    store = OnlineStore.from_url(redis_url, version_cache_seconds=0)
    landing_dir = tmp_path / "landing"
    landing_dir.mkdir()
    log = tmp_path / "stream.log"
    job = start(stream_command(tmp_path, redis_url, "--trigger-seconds", "0.2"), log)
    landed: list[dict[str, str]] = []
    ids = sorted(history.clients)
    templates = {c: history.template(c) for c in ids}
    rng = random.Random(8)

    def feed(stop: threading.Event) -> None:
        n = 0
        while not stop.is_set():
            rows = [loan(templates[rng.choice(ids)], LANDED_IDS + n + i, TODAY, "12.5") for i in range(5)]
            land(landing_dir, f"feed-{n:06d}.csv", rows)
            landed.extend(rows)
            n += 5
            time.sleep(0.1)

    def counted(version: str) -> bool:
        per_client = Counter(int(r["id"]) for r in landed)
        return totals(store, version, ids) == {i: history.clients[i]["loans"] + per_client[i] for i in ids}

    try:
        with background(feed):
            wait_until(lambda: store.meta(first).get("stream_loans"), 240, "the stream to apply loans", 0.2)
            out2 = tmp_path / "out2"
            fj.run(spark, fj.FeatureJobArgs(f"{history.source},{landing_dir}", str(out2), None))
            # Loans the feature run did not read, applied to the first version only, their micro-batch committed
            # before the load starts: the load must replay them.
            wait_until(lambda: len(set(store.landed(first)) - _in_features(out2)) >= 10, 120,
                       "loans applied after the feature run read the landing folder", 0.2)  # fmt: skip
            running = max(int(p.name) for p in (tmp_path / "ckpt" / "offsets").iterdir() if p.name.isdigit())
            wait_until((tmp_path / "ckpt" / "commits" / str(running)).exists, 120, "the micro-batch committed", 0.1)
            second = publish(spark, out2, model_run, redis_url)
            wait_until(lambda: store.meta(second).get("stream_loans"), 120, "the stream to apply to the new version")
        wait_until(lambda: counted(second), 120, "every landed loan counted in the new version", 0.2)
        job.send_signal(signal.SIGTERM)
        job.wait(120)
    finally:
        if job.poll() is None:
            kill_job(tmp_path / "ckpt")
    stderr = log.read_text()
    assert job.returncode == 0, stderr[-3000:]
    assert "stop requested (SIGTERM)" in stderr and "stream stopped after" in stderr
    assert store.active_version() == second
    counted_by_batch = _in_features(out2)
    assert counted_by_batch and len(counted_by_batch) < len(landed)  # the feature run read some, not all
    assert counted(second)
    listed = [int(x) for r in store.read_version_many(second, ids) for x in (r or {}).get("landed", "").split(",") if x]
    assert len(listed) == len(set(listed)) and set(listed).isdisjoint(counted_by_batch)
    assert set(listed) | counted_by_batch == {int(r["loan_id"]) for r in landed}


def _in_features(out: Path) -> set[int]:
    return {i for i in pq.read_table(out / "features", columns=["loan_id"]).column(0).to_pylist() if i >= LANDED_IDS}


def start(command: list[str], log: Path) -> subprocess.Popen:
    """Start a command as a user would, its stderr into `log`."""
    with log.open("w") as handle:
        return subprocess.Popen(command, cwd=ROOT, env=clean_env(), stdout=subprocess.DEVNULL, stderr=handle)
