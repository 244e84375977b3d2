"""Scoring a new application as of its date (DESIGN §12): the endpoints through the Flask test client on a
real Redis, the contract's two engines against each other, and the answers against the feature job."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import random
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from flask import Flask, Response, request
from flask.testing import FlaskClient
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from contract import FEATURE_NAMES, RAW_COLUMNS, age_on, car_flag, years_on_the_job_on
from contract import spark as contract_spark
from datagen.generate import write_csv
from model import registry
from model.portable import PortableModel
from serving.app import create_app
from serving.store import OnlineStore
from spark_jobs import features as fj
from spark_jobs import materialize as mz
from tests.conftest import DEFAULTS, ModelRun
from tests.helpers import BIN, ROOT, clean_env
from tests.redis_servers import RedisServer
from tests.test_app import app_config, metric

TODAY = dt.datetime.now(dt.UTC).date()
# Clients of the published version: a history of 3 loans, and one with attributes the store lacks.
HISTORY = {
    7: {"nb_previous_loans": 2, "avg_amount_loans_previous": 150.0, "age": 39, "years_on_the_job": 9,
        "flag_own_car": 1, "loan_date": "2020-03-01", "score": 0.5, "label": 1, "model_version": "m",
        "loans": 3, "amount_sum": 500.0, "last_loan_id": 3, "birthday": "1980-05-10", "job_start_date": "2010-06-01"},
    8: {"nb_previous_loans": 0, "loan_date": "2020-01-05", "score": 0.1, "label": 0, "model_version": "m",
        "loans": 1, "amount_sum": 80.5, "last_loan_id": 11},
}  # fmt: skip


def publish_with_model(url: str, version: str, clients: dict[int, dict], run: ModelRun) -> OnlineStore:
    """A complete, published version holding the clients and the session model (ONNX, its threshold)."""
    onnx, card = registry.approved_portable(run.models)
    store = OnlineStore.from_url(url, version_cache_seconds=0)
    meta = {"source": "test", "model_version": card["version"], "feature_names": ",".join(FEATURE_NAMES)}
    store.begin(version, meta)
    store.write(version, clients.items())
    store.set_model(version, onnx)
    store.set_meta(version, {"threshold": repr(card["threshold"]["value"])})
    store.complete(version, len(clients))
    store.publish(version)
    return store


@pytest.fixture
def client(redis_url: str, model_run: ModelRun) -> FlaskClient:
    publish_with_model(redis_url, "v1", HISTORY, model_run)
    return create_app(app_config(redis_url)).test_client()


def session_model(run: ModelRun) -> tuple[PortableModel, float]:
    onnx, card = registry.approved_portable(run.models)
    return PortableModel(onnx, FEATURE_NAMES), card["threshold"]["value"]


def test_application_of_a_known_client_counts_every_loan_and_ages_it_to_the_date(
    client: FlaskClient, model_run: ModelRun
) -> None:
    answer = client.post("/v1/applications/credit-risk", json={"client_id": 7, "application_date": "2021-05-10"})
    assert answer.status_code == 200, answer.json
    features = {"nb_previous_loans": 3, "avg_amount_loans_previous": 500.0 / 3, "age": 41, "years_on_the_job": 10,
                "flag_own_car": 1}  # fmt: skip
    model, threshold = session_model(model_run)
    score = model.scores([features])[0]
    assert answer.json == {
        "client_id": 7, "application_date": "2021-05-10", "version": "v1", "features": features, "score": score,
        "label": int(score >= threshold), "model_version": model_run.version,
        "history": {"loans": 3, "last_loan_date": "2020-03-01"},
    }  # fmt: skip
    assert list(answer.json["features"]) == list(FEATURE_NAMES)


def test_application_defaults_to_today_and_the_request_wins_over_the_stored_attributes(client: FlaskClient) -> None:
    today = client.post("/v1/applications/credit-risk", json={"client_id": 7}).json
    born = dt.date(1980, 5, 10)
    assert today["application_date"] == TODAY.isoformat()
    assert today["features"]["age"] == TODAY.year - born.year - ((TODAY.month, TODAY.day) < (born.month, born.day))
    given = {"client_id": 7, "application_date": "2021-05-10", "birthday": "2000-02-29", "job_start_date": "3021-09-18",
             "flag_own_car": "n"}  # fmt: skip
    answer = client.post("/v1/applications/credit-risk", json=given).json
    assert answer["features"] == {"nb_previous_loans": 3, "avg_amount_loans_previous": 500.0 / 3, "age": 21,
                                  "years_on_the_job": None, "flag_own_car": 0}  # fmt: skip
    # A client whose store holds no attributes: nulls, unless the request gives them.
    bare = client.post("/v1/applications/credit-risk", json={"client_id": 8, "application_date": "2020-01-05"}).json
    assert bare["features"] == {"nb_previous_loans": 1, "avg_amount_loans_previous": 80.5, "age": None,
                                "years_on_the_job": None, "flag_own_car": None}  # fmt: skip


def test_application_first_time_applicant_needs_attributes_else_404(client: FlaskClient) -> None:
    body = {"client_id": 99, "application_date": "2021-02-28", "birthday": "2000-02-29", "flag_own_car": "Y"}
    first = client.post("/v1/applications/credit-risk", json=body)
    assert first.status_code == 200
    assert first.json["features"] == {"nb_previous_loans": 0, "avg_amount_loans_previous": None, "age": 21,
                                      "years_on_the_job": None, "flag_own_car": 1}  # fmt: skip
    assert first.json["history"] == {"loans": 0, "last_loan_date": None}
    unknown = client.post("/v1/applications/credit-risk", json={"client_id": 99})
    assert unknown.status_code == 404 and unknown.json["error"]["code"] == "unknown_client"


def test_application_before_the_last_loan_is_422_and_on_its_day_is_scored(client: FlaskClient) -> None:
    before = client.post("/v1/applications/credit-risk", json={"client_id": 7, "application_date": "2020-02-29"})
    assert before.status_code == 422 and before.json["error"]["code"] == "application_before_last_loan"
    same_day = client.post("/v1/applications/credit-risk", json={"client_id": 7, "application_date": "2020-03-01"})
    assert same_day.status_code == 200 and same_day.json["features"]["nb_previous_loans"] == 3


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"application_date": "2021-01-01"}, "client_id"),
        ({"client_id": 0}, "client_id"),
        ({"client_id": "7"}, "client_id"),
        ({"client_id": 7, "application_date": "2021-02-29"}, "application_date"),
        ({"client_id": 7, "application_date": "2021-1-5"}, "application_date"),
        ({"client_id": 7, "application_date": 20210105}, "application_date"),
        ({"client_id": 7, "birthday": "1985-02-30"}, "birthday"),
        ({"client_id": 7, "job_start_date": "yesterday"}, "job_start_date"),
        ({"client_id": 7, "flag_own_car": "yes"}, "flag_own_car"),
        ({"client_id": 7, "flag_own_car": 1}, "flag_own_car"),
        ({"client_id": 7, "income": 5}, "income"),
    ],
)
def test_application_a_bad_field_is_a_400_naming_it(client: FlaskClient, body: dict, field: str) -> None:
    answer = client.post("/v1/applications/credit-risk", json=body)
    assert answer.status_code == 400 and answer.json["error"]["code"] == "invalid_body"
    assert answer.json["error"]["message"].startswith(f"{field}:"), answer.json


def test_application_batch_answers_in_order_with_one_error_each_and_an_exact_limit(client: FlaskClient) -> None:
    applications = [
        {"client_id": 8, "application_date": "2021-01-01"}, {"client_id": 99},
        {"client_id": 7, "application_date": "2019-01-01"}, {"client_id": 7, "application_date": "2021-05-10"},
        {"client_id": 98, "flag_own_car": "y"},
    ]  # fmt: skip
    answer = client.post("/v1/applications/credit-risk/batch", json={"applications": applications})
    assert answer.status_code == 200
    results = answer.json["results"]
    assert [r["client_id"] for r in results] == [8, 99, 7, 7, 98] and answer.json["version"] == "v1"
    assert [r.get("error", {}).get("code") for r in results] == [None, "unknown_client", "application_before_last_loan",
                                                                 None, None]  # fmt: skip
    single = client.post("/v1/applications/credit-risk", json=applications[3]).json
    assert results[3] == single  # the batch scores as the single endpoint does
    over = client.post("/v1/applications/credit-risk/batch", json={"applications": [{"client_id": 7}] * 6})
    assert over.status_code == 400 and over.json["error"]["code"] == "batch_too_large"
    bad = client.post(
        "/v1/applications/credit-risk/batch", json={"applications": [{"client_id": 7}, {"client_id": -1}]}
    )
    assert bad.status_code == 400 and bad.json["error"]["message"].startswith("applications.1.client_id:")


def test_application_model_runs_are_timed_and_counted_in_the_metrics(client: FlaskClient) -> None:
    def counted() -> tuple[float, float, float]:
        text = client.get("/metrics").get_data(as_text=True)
        runs, rows, seconds = (metric(text, f"credit_model_{name}") for name in
                               ("run_duration_seconds_count", "rows_total", "run_duration_seconds_sum"))  # fmt: skip
        return runs, rows, seconds

    before = counted()
    assert client.post("/v1/applications/credit-risk", json={"client_id": 7}).status_code == 200
    applications = [{"client_id": 7}, {"client_id": 99}, {"client_id": 8}]  # 99: refused, not scored
    assert client.post("/v1/applications/credit-risk/batch", json={"applications": applications}).status_code == 200
    assert client.post("/v1/applications/credit-risk", json={"client_id": 99}).status_code == 404
    after = counted()
    assert (after[0] - before[0], after[1] - before[1]) == (2, 3)  # one run per request, the batch's two rows in one
    assert 0 < after[2] - before[2] < 5


def test_application_on_a_version_without_a_model_is_503_and_redis_down_too(
    redis_url: str, redis_server: RedisServer
) -> None:
    store = OnlineStore.from_url(redis_url, version_cache_seconds=0)
    store.begin("old", {"source": "test"})
    store.write("old", HISTORY.items())
    store.complete("old", len(HISTORY))
    store.publish("old")
    client = create_app(app_config(redis_url)).test_client()
    answer = client.post("/v1/applications/credit-risk", json={"client_id": 7})
    assert answer.status_code == 503 and answer.json["error"]["code"] == "model_unavailable"
    redis_server.stop()
    down = client.post("/v1/applications/credit-risk", json={"client_id": 7})
    assert down.status_code == 503 and down.json["error"]["code"] == "redis_unavailable"


def test_application_on_a_version_whose_stored_model_cannot_be_loaded_is_503_logged_once(
    redis_url: str, model_run: ModelRun, caplog: pytest.LogCaptureFixture
) -> None:
    client = create_app(app_config(redis_url)).test_client()
    broken = {  # what a version's model key and meta may hold that is not a model of its features
        "bytes": lambda s, v: s.set_model(v, b"not an ONNX model"),
        "text": lambda s, v: s._client.set(s.model_key(v), "%%% not base64 %%%"),
        "features": lambda s, v: s.set_meta(v, {"feature_names": ",".join(reversed(FEATURE_NAMES[1:]))}),
        "threshold": lambda s, v: s.set_meta(v, {"threshold": "high"}),
    }
    for version, spoil in broken.items():
        spoil(publish_with_model(redis_url, version, HISTORY, model_run), version)
        caplog.clear()
        for _ in range(3):
            answer = client.post("/v1/applications/credit-risk", json={"client_id": 7})
            assert answer.status_code == 503, (version, answer.json)
            assert answer.json["error"]["code"] == "model_unavailable" and version in answer.json["error"]["message"]
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and f"version {version} cannot be loaded" in errors[0], (version, errors)
        batch = client.post("/v1/applications/credit-risk/batch", json={"applications": [{"client_id": 7}]})
        assert batch.status_code == 503 and batch.json["error"]["code"] == "model_unavailable"
        assert client.get("/v1/clients/7/credit-risk").status_code == 200  # the stored scores still answer
    publish_with_model(redis_url, "fixed", HISTORY, model_run)  # the operator's fix: a new version
    answer = client.post("/v1/applications/credit-risk", json={"client_id": 7})
    assert answer.status_code == 200 and answer.json["version"] == "fixed"


def test_application_model_is_preloaded_off_the_request_path(redis_url: str, model_run: ModelRun) -> None:
    app = create_app(app_config(redis_url, MODEL_PRELOAD_SECONDS=0.05))
    publish_with_model(redis_url, "v1", HISTORY, model_run)
    holder = app.extensions["credit_store"]
    deadline = dt.datetime.now() + dt.timedelta(seconds=10)
    while "v1" not in holder.models and dt.datetime.now() < deadline:
        time.sleep(0.01)
    assert "v1" in holder.models  # loaded before any application arrived


GEVENT_SCORES = """
from gevent import monkey

monkey.patch_all()
import json
import sys

import gevent

from contract import FEATURE_NAMES
from model.portable import PortableModel
from serving.coalesce import BatchedScores

real = PortableModel(open(sys.argv[1], "rb").read(), FEATURE_NAMES)
rows = json.loads(sys.argv[2])


class Shifted:  # another version's model: every score 1 higher
    def scores(self, rows):
        return [score + 1 for score in real.scores(rows)]


class Broken:
    def scores(self, rows):
        raise RuntimeError("broken model")


models = [real, Shifted(), Broken()]
batched = BatchedScores()


def score(i):
    try:
        return batched.scores(models[i % 3], rows[i % 7 : i % 7 + 1 + i % 2])
    except RuntimeError as exc:
        return str(exc)


greenlets = [gevent.spawn(score, i) for i in range(60)]
gevent.joinall(greenlets)
from prometheus_client import REGISTRY

from serving import metrics as service_metrics

service_metrics.flush()  # what the flusher or the metrics page would do

metrics = {name: REGISTRY.get_sample_value(name) for name in
           ("credit_model_run_duration_seconds_count", "credit_model_rows_total")}
print(json.dumps({"answers": [g.value for g in greenlets], "runs": batched.runs, "rows": batched.rows,
                  "metrics": metrics}))
"""


def test_application_scorings_under_gevent_share_runs_of_their_own_model_only(
    model_run: ModelRun, tmp_path: Path
) -> None:
    """Concurrent requests' rows are scored together, each by its own model (never another version's), with
    the scores they get alone; a model that fails fails its own requests only."""
    onnx, _ = registry.approved_portable(model_run.models)
    (tmp_path / "model.onnx").write_bytes(onnx)
    rows = [{"nb_previous_loans": n, "avg_amount_loans_previous": 100.0 * n + 0.5, "age": None if n == 3 else 20 + n,
             "years_on_the_job": None if n % 2 else n, "flag_own_car": n % 2} for n in range(8)]  # fmt: skip
    script = tmp_path / "scores.py"
    script.write_text(GEVENT_SCORES)
    run = subprocess.run([str(BIN / "python"), str(script), str(tmp_path / "model.onnx"), json.dumps(rows)],
                         cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    model, _ = session_model(model_run)
    expected: list[object] = []
    for i in range(60):
        own = rows[i % 7 : i % 7 + 1 + i % 2]
        alone = [model.scores([row])[0] for row in own]  # each row scored on its own
        expected.append([alone, [s + 1 for s in alone], "broken model"][i % 3])
    assert result["answers"] == expected
    assert result["rows"] == sum(1 + i % 2 for i in range(60))
    assert 3 <= result["runs"] <= 9  # a run per model and turn of the loop, not one per request
    # The metrics count the runs that scored (the broken model's did not), one per run, not per request.
    counted = result["metrics"]
    assert counted["credit_model_rows_total"] == sum(1 + i % 2 for i in range(60) if i % 3 != 2)
    assert 2 <= counted["credit_model_run_duration_seconds_count"] <= result["runs"] - 1


@pytest.mark.parametrize("on", ["2019-02-28", "2020-02-28", "2020-02-29", "2021-02-28", "2019-05-10", "2020-05-09"])
def test_contract_one_rule_two_engines_for_ages_and_years_on_the_job(spark: SparkSession, on: str) -> None:
    """The Spark form (what the feature job runs) and the Python form (what the service runs) agree."""
    cases = [
        ("1992-02-29", "2016-02-29"), ("1899-05-10", "1919-05-10"), ("1898-05-10", "1918-05-10"),
        ("1899-05-11", "1919-05-11"), ("1990-05-10", "3021-09-18"), ("1990-05-10", "1985-01-01"),
        ("2020-06-01", "2015-03-01"), ("1990-02-30", "2015-03-01"), (None, "2020-13-01"), ("1990-05-10", None),
        ("1990-05-10", "1990-05-10"), ("2000-02-29", "2019-02-28"), ("0001-01-01", "0001-01-01"),
    ]  # fmt: skip
    flags = ["Y", "y", "N", "n", None, "X", "yes", "Y", "n", None, "N", "y", "x"]
    date = dt.date.fromisoformat(on)
    rows = [(i, born, job, flag) for i, ((born, job), flag) in enumerate(zip(cases, flags, strict=True))]
    frame = spark.createDataFrame(rows, "i int, birthday string, job_start_date string, flag_own_car string")
    spark_form = contract_spark.with_attributes(frame, F.lit(date)).select(
        "i", *[column.alias(name) for name, column in contract_spark.attribute_values().items()],
        "_null_age", "_null_years_on_the_job", "_null_flag_own_car",
    )  # fmt: skip
    python_form = [
        (i, *(age_on(born, date)[:1]), *years_on_the_job_on(job, born, date)[:1], car_flag(flag)[0],
         age_on(born, date)[1], years_on_the_job_on(job, born, date)[1], car_flag(flag)[1])
        for i, born, job, flag in rows
    ]  # fmt: skip
    assertDataFrameEqual(spark_form, spark.createDataFrame(python_form, spark_form.schema))


@dataclasses.dataclass(frozen=True)
class Applied:
    request: dict
    answer: dict
    row: dict[str, str]  # the hypothetical loan, as a raw CSV row


def raw_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [dict(zip(RAW_COLUMNS, r, strict=True)) for r in csv.reader(handle) if len(r) == len(RAW_COLUMNS)][1:]


def test_applications_equal_the_feature_job_on_a_hypothetical_loan_and_the_model_on_its_row(
    spark: SparkSession, model_run: ModelRun, redis_url: str, tmp_path: Path
) -> None:
    """For a sample of clients (and new ones), a loan dated d with the largest loan_id, appended to the raw
    CSV, gets from the feature job exactly the features the application endpoint gives as of d, and the
    endpoint's score is the approved model's predict_proba on that row."""
    source = tmp_path / "loans.csv"
    write_csv(source, clients=150, seed=21, dirty=True)
    fj.run(spark, fj.FeatureJobArgs(str(source), str(tmp_path / "out"), None))
    redis_settings = dataclasses.replace(DEFAULTS.redis, url=redis_url, batch_size=50)
    args = mz.MaterializeArgs(str(tmp_path / "out" / "features"), str(model_run.models),
                              str(tmp_path / "out" / "clients"), redis_settings)  # fmt: skip
    mz.run(spark, args)
    client = create_app(app_config(redis_url, BATCH_LIMIT=1000)).test_client()

    history = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "clients").to_pylist()}
    rows = raw_rows(source)
    by_loan = {r["loan_id"].strip(): r for r in rows}
    rng = random.Random(5)
    next_loan = 10**15
    applied: list[Applied] = []
    for client_id in rng.sample(sorted(history), 40):
        state = history[client_id]
        on = state["last_loan_date"] + dt.timedelta(days=rng.choice([0, 1, 45, 400, 3000]))
        request: dict = {"client_id": client_id, "application_date": on.isoformat()}
        base = by_loan[str(state["last_loan_id"])]
        row = dict(base, loan_id=str(next_loan), loan_date=on.isoformat(), loan_amount="100", status="")
        if rng.random() < 0.3:  # the request's attributes win
            request |= {"birthday": "1999-02-28", "flag_own_car": "y"}
            row |= {"birthday": "1999-02-28", "flag_own_car": "y"}
        next_loan += 1
        applied.append(Applied(request, {}, row))
    for new_client in (9_000_001, 9_000_002):  # first-time applicants
        request = {"client_id": new_client, "application_date": "2021-03-01", "birthday": "1980-02-29",
                   "job_start_date": "2020-03-01", "flag_own_car": "N"}  # fmt: skip
        row = dict(rows[0], id=str(new_client), loan_id=str(next_loan), loan_date="2021-03-01", loan_amount="100",
                   birthday="1980-02-29", job_start_date="2020-03-01", flag_own_car="N", status="")  # fmt: skip
        next_loan += 1
        applied.append(Applied(request, {}, row))
    batch = client.post("/v1/applications/credit-risk/batch", json={"applications": [a.request for a in applied]})
    assert batch.status_code == 200
    answers = batch.json["results"]
    assert [a.get("error") for a in answers] == [None] * len(applied)

    extended = tmp_path / "extended.csv"
    text = source.read_text(encoding="utf-8")
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([[a.row[c] for c in RAW_COLUMNS] for a in applied])
    extended.write_text(text + out.getvalue(), encoding="utf-8")
    fj.run(spark, fj.FeatureJobArgs(str(extended), str(tmp_path / "out2"), None))
    job = {r["loan_id"]: r for r in pq.read_table(tmp_path / "out2" / "features").to_pylist()}
    for application, answer in zip(applied, answers, strict=True):
        expected = {name: job[int(application.row["loan_id"])][name] for name in FEATURE_NAMES}
        assert answer["features"] == expected, (application.request, answer["features"], expected)

    pipeline, card = registry.load_approved(model_run.models)
    frame = pd.DataFrame([a["features"] for a in answers]).astype("float64")
    expected_scores = pipeline.predict_proba(frame[list(FEATURE_NAMES)])[:, 1]
    scores = np.array([a["score"] for a in answers])
    assert np.max(np.abs(scores - expected_scores)) < 1e-5
    assert [a["label"] for a in answers] == [int(s >= card["threshold"]["value"]) for s in scores]


# Requests to the hot routes' paths: (method, path, body, content type, answered in front of Flask).
APPLY = "/v1/applications/credit-risk"
HOT_ROUTE_REQUESTS = [
    ("GET", "/v1/clients/7/features", None, None, True),
    ("GET", "/online_feature_store/client_id=7", None, None, True),
    ("GET", "/v1/clients/8/credit-risk", None, None, True),
    ("GET", "/credit_risk/client_id=0007?x=1", None, None, True),
    ("GET", "/v1/clients/404404/features", None, None, True),  # 404
    ("GET", "/v1/clients/9223372036854775808/credit-risk", None, None, False),  # 400
    ("GET", "/v1/clients/abc/features", None, None, False),  # 400
    ("GET", "/v1/clients/7/features/", None, None, False),  # 404
    ("GET", "/v1/clients//features", None, None, False),
    ("GET", "/v1/clients/7/x/features", None, None, False),
    ("HEAD", "/v1/clients/7/features", None, None, False),
    ("DELETE", "/v1/clients/7/features", None, None, False),  # 405
    ("POST", APPLY, '{"client_id": 7, "application_date": "2021-05-10"}', "application/json", True),
    ("POST", APPLY, '{"client_id": 99, "birthday": "2000-02-29", "flag_own_car": "Y"}', "application/json", True),
    ("POST", APPLY, '{"client_id": 99}', "application/json", True),  # 404
    ("POST", APPLY, '{"client_id": 7, "application_date": "2020-02-29"}', "application/json", True),  # 422
    ("POST", APPLY, '{"client_id": 7, "birthday": "2001-02-30"}', "application/json", True),  # 400
    ("POST", APPLY, '{"client_id": 7, "salary": 1}', "application/json", True),  # 400: unknown field
    ("POST", APPLY, "nope", "application/json", True),  # 400: not JSON
    ("POST", APPLY, '{"client_id": 7}', "Application/JSON; charset=utf-8", True),
    ("POST", APPLY, '{"client_id": 7}', "application/vnd.credit+json", False),
    ("POST", APPLY, '{"client_id": 7}', "text/plain", False),  # 400
    ("POST", APPLY + "/", '{"client_id": 7}', "application/json", False),  # 404
    ("GET", APPLY, None, None, False),  # 405
]


def flask_dispatches(app: Flask) -> list[str]:
    """The paths the app answers through Flask's dispatch from now on."""
    seen: list[str] = []
    dispatch = app.full_dispatch_request

    def counted() -> Response:
        seen.append(request.path)
        return dispatch()

    app.full_dispatch_request = counted  # type: ignore[method-assign]
    return seen


def exchange(app: Flask, method: str, path: str, body: str | None, content_type: str | None) -> tuple:
    answer = app.test_client().open(path, method=method, data=body, content_type=content_type)
    return answer.status, sorted(answer.headers.items()), answer.get_data()


@pytest.mark.parametrize(("method", "path", "body", "content_type", "hot"), HOT_ROUTE_REQUESTS)
def test_hot_routes_answer_exactly_as_flask_does(
    redis_url: str, model_run: ModelRun, method: str, path: str, body: str | None, content_type: str | None, hot: bool
) -> None:
    """The same request to the app with and without its hot routes: the same status line, headers and bytes;
    answered in front of Flask exactly when the route, id and body are the hot routes' own."""
    publish_with_model(redis_url, "v1", HISTORY, model_run)
    fast, slow = create_app(app_config(redis_url)), create_app(app_config(redis_url, HOT_ROUTES=False))
    through_flask, always_flask = flask_dispatches(fast), flask_dispatches(slow)
    assert exchange(fast, method, path, body, content_type) == exchange(slow, method, path, body, content_type)
    assert len(always_flask) == 1 and len(through_flask) == (0 if hot else 1)


@pytest.mark.parametrize("problem", ["redis_down", "not_published", "unexpected"])
def test_hot_routes_answer_a_failure_exactly_as_flask_does(
    redis_url: str, redis_server: RedisServer, model_run: ModelRun, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    publish_with_model(redis_url, "v1", HISTORY, model_run)
    config = app_config(redis_url, REDIS_PREFIX="unpublished" if problem == "not_published" else "credit")
    fast, slow = create_app(config), create_app({**config, "HOT_ROUTES": False})
    if problem == "redis_down":
        redis_server.stop()
    if problem == "unexpected":  # a bug in the read, not Redis's behaviour
        for app in (fast, slow):
            app.extensions["credit_store"].read = lambda *args: 1 / 0
    code = {"redis_down": "redis_unavailable", "not_published": "not_published", "unexpected": "internal_error"}
    through_flask = flask_dispatches(fast)
    for method, path, body in [("GET", "/v1/clients/7/credit-risk", None), ("POST", APPLY, '{"client_id": 7}')]:
        answer = exchange(fast, method, path, body, "application/json")
        assert answer == exchange(slow, method, path, body, "application/json")
        assert json.loads(answer[2])["error"]["code"] == code[problem]
        assert answer[0] == ("500 INTERNAL SERVER ERROR" if problem == "unexpected" else "503 SERVICE UNAVAILABLE")
        assert (("Retry-After", "1") in answer[1]) == (problem == "redis_down")
    assert through_flask == []
    if problem == "unexpected":  # logged with its stack trace, by either path
        logged = [r for r in caplog.records if r.getMessage().startswith("unexpected error on")]
        assert len(logged) == 4 and all(r.exc_info for r in logged)


def test_hot_routes_give_way_to_a_request_hook(redis_url: str, model_run: ModelRun, caplog: pytest.LogCaptureFixture
                                               ) -> None:  # fmt: skip
    """A hook added to the app (which has none of its own) runs on every request: the hot routes would skip it,
    so they stop, once, and say so."""
    publish_with_model(redis_url, "v1", HISTORY, model_run)
    app = create_app(app_config(redis_url))
    client = app.test_client()
    assert client.get("/v1/clients/7/features").status_code == 200
    seen: list[str] = []
    app.before_request(lambda: seen.append(request.path))
    for path in ("/v1/clients/7/features", "/v1/clients/8/credit-risk"):
        assert client.get(path).status_code == 200
    assert client.post(APPLY, json={"client_id": 7}).status_code == 200
    assert seen == ["/v1/clients/7/features", "/v1/clients/8/credit-risk", APPLY]
    stopped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("hot routes off")]
    assert stopped == ["hot routes off: the app has request hooks (before_request_funcs), which they would skip"]
