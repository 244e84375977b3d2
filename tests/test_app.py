"""The Flask service through its test client, against a real Redis (stopped, hung and restarted too)."""

from __future__ import annotations

import time

import pytest
from flask import Flask
from flask.testing import FlaskClient

from serving.app import create_app
from serving.store import OnlineStore, connect
from tests.redis_servers import RedisServer, free_port

CLIENTS = {
    7: {"nb_previous_loans": 3, "avg_amount_loans_previous": 2134.5, "age": 41, "years_on_the_job": 7,
        "flag_own_car": 1, "loan_date": "2020-11-05", "score": 0.8125, "label": 1, "model_version": "m1"},
    8: {"nb_previous_loans": 0, "age": 30, "loan_date": "2019-02-28", "score": 0.03, "label": 0,
        "model_version": "m1"},  # a first loan: no average, no job, no car flag
}  # fmt: skip
FEATURES_7 = {"nb_previous_loans": 3, "avg_amount_loans_previous": 2134.5, "age": 41, "years_on_the_job": 7,
              "flag_own_car": 1}  # fmt: skip
FEATURES_8 = {"nb_previous_loans": 0, "avg_amount_loans_previous": None, "age": 30, "years_on_the_job": None,
              "flag_own_car": None}  # fmt: skip


def publish(url: str, version: str, clients: dict[int, dict]) -> None:
    store = OnlineStore(connect(url, 0.5, 2.0))
    store.begin(version, {"source": "test"})
    store.write(version, clients.items())
    store.complete(version, len(clients))
    store.publish(version)


def app_config(url: str, **changes: object) -> dict[str, object]:
    return {"REDIS_URL": url, "VERSION_CACHE_SECONDS": 0.0, "BATCH_LIMIT": 5, "TESTING": True, **changes}


@pytest.fixture
def app(redis_url: str) -> Flask:
    publish(redis_url, "20261127T061500Z", CLIENTS)
    return create_app(app_config(redis_url))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.mark.parametrize("path", ["/online_feature_store/client_id=7", "/v1/clients/7/features"])
def test_app_features_answer(client: FlaskClient, path: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 200 and answer.mimetype == "application/json"
    assert answer.json == {"client_id": 7, "loan_date": "2020-11-05", "version": "20261127T061500Z",
                           "features": FEATURES_7}  # fmt: skip


@pytest.mark.parametrize("path", ["/credit_risk/client_id=8", "/v1/clients/8/credit-risk"])
def test_app_credit_risk_answer_with_null_features(client: FlaskClient, path: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 200
    assert answer.json == {"client_id": 8, "loan_date": "2019-02-28", "version": "20261127T061500Z",
                           "features": FEATURES_8, "score": 0.03, "label": 0, "model_version": "m1"}  # fmt: skip


@pytest.mark.parametrize(
    "raw", ["0", "-1", "abc", "1.5", "+7", "%207", "7%20", "9223372036854775808", "99999999999999999999", "0x10", "१२"]
)
def test_app_rejects_an_id_that_is_not_a_positive_64_bit_whole_number(client: FlaskClient, raw: str) -> None:
    for path in (f"/credit_risk/client_id={raw}", f"/v1/clients/{raw}/features"):
        answer = client.get(path)
        assert answer.status_code == 400, path
        assert answer.json["error"]["code"] == "invalid_client_id"


def test_app_largest_id_is_valid_and_unknown(client: FlaskClient) -> None:
    answer = client.get("/v1/clients/9223372036854775807/credit-risk")
    assert answer.status_code == 404
    assert answer.json == {"error": {"code": "unknown_client", "message": "client 9223372036854775807 is not in the "
                                     "published version 20261127T061500Z"}}  # fmt: skip


def test_app_batch_answers_one_result_per_id_in_order(client: FlaskClient) -> None:
    answer = client.post("/v1/credit-risk/batch", json={"client_ids": [8, 99, 7, 8]})
    assert answer.status_code == 200
    body = answer.json
    assert body["version"] == "20261127T061500Z"
    assert [r["client_id"] for r in body["results"]] == [8, 99, 7, 8]
    assert body["results"][1] == {"client_id": 99, "error": "not_found"}
    assert body["results"][2]["features"] == FEATURES_7 and body["results"][2]["score"] == 0.8125
    assert body["results"][0] == body["results"][3] == client.get("/credit_risk/client_id=8").json
    whole = client.post("/v1/credit-risk/batch", json={"client_ids": [7.0, 1e3]})  # JSON Schema integers
    assert [r["client_id"] for r in whole.json["results"]] == [7, 1000]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("not json", "invalid_body"),
        ([7, 8], "invalid_body"),
        ({"ids": [7]}, "invalid_body"),
        ({"client_ids": [7], "extra": 1}, "invalid_body"),
        ({"client_ids": []}, "invalid_body"),
        ({"client_ids": "7"}, "invalid_body"),
        ({"client_ids": ["7"]}, "invalid_body"),
        ({"client_ids": [True]}, "invalid_body"),
        ({"client_ids": [7.5]}, "invalid_body"),
        ({"client_ids": [None]}, "invalid_body"),
        ({"client_ids": [0]}, "invalid_body"),
        ({"client_ids": [2**63]}, "invalid_body"),
        ({"client_ids": [1, 2, 3, 4, 5, 6]}, "batch_too_large"),
    ],
)
def test_app_batch_rejects_a_bad_body(client: FlaskClient, body: object, code: str) -> None:
    if isinstance(body, str):
        answer = client.post("/v1/credit-risk/batch", data=body, content_type="application/json")
    else:
        answer = client.post("/v1/credit-risk/batch", json=body)
    assert answer.status_code == 400 and answer.json["error"]["code"] == code, answer.json


def test_app_every_error_is_json(client: FlaskClient) -> None:
    assert client.get("/nowhere").json["error"]["code"] == "not_found"
    wrong_method = client.delete("/v1/clients/7/features")
    assert wrong_method.status_code == 405 and wrong_method.json["error"]["code"] == "method_not_allowed"
    assert set(wrong_method.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    huge = client.post("/v1/credit-risk/batch", data=b"[" + b"1," * 600_000 + b"1]", content_type="application/json")
    assert huge.status_code == 413 and huge.json["error"]["code"] == "request_entity_too_large"


def test_app_reports_not_ready_until_a_version_is_published(redis_url: str) -> None:
    client = create_app(app_config(redis_url)).test_client()
    assert client.get("/health").json == {"status": "ok"}
    assert client.get("/ready").status_code == 503
    assert client.get("/ready").json == {"status": "not_ready", "reason": "no version published"}
    unpublished = client.get("/v1/clients/7/features")
    assert unpublished.status_code == 503 and unpublished.json["error"]["code"] == "not_published"
    publish(redis_url, "v1", CLIENTS)
    assert client.get("/ready").json == {"status": "ready", "version": "v1"}
    assert client.get("/v1/clients/7/features").status_code == 200


def test_app_answers_503_fast_while_redis_is_down_and_recovers(redis_server: RedisServer, app: Flask) -> None:
    client = app.test_client()
    assert client.get("/v1/clients/7/features").status_code == 200
    redis_server.stop()
    started = time.monotonic()
    down = client.get("/v1/clients/7/features")
    assert down.status_code == 503 and down.json["error"]["code"] == "redis_unavailable"
    assert down.headers["Retry-After"] == "1"
    assert client.get("/ready").status_code == 503 and client.get("/health").status_code == 200
    assert time.monotonic() - started < 1.0
    redis_server.start()  # an empty Redis again (no persistence): publish and read once more
    publish(redis_server.url, "v2", CLIENTS)
    assert client.get("/v1/clients/7/features").json["version"] == "v2"


def test_app_answers_503_within_a_second_while_redis_hangs(redis_server: RedisServer, app: Flask) -> None:
    client = app.test_client()
    assert client.get("/credit_risk/client_id=7").status_code == 200
    redis_server.pause()  # SIGSTOP: the socket accepts, nothing answers
    try:
        for path in ("/credit_risk/client_id=7", "/ready"):
            started = time.monotonic()
            assert client.get(path).status_code == 503
            assert time.monotonic() - started < 1.2, path
    finally:
        redis_server.resume()
    assert client.get("/credit_risk/client_id=7").status_code == 200


def test_app_starts_while_redis_is_down() -> None:
    client = create_app(app_config(f"redis://127.0.0.1:{free_port()}/0")).test_client()
    assert client.get("/health").status_code == 200
    assert client.get("/v1/clients/7/credit-risk").status_code == 503


def test_app_refuses_to_start_with_a_malformed_redis_url() -> None:
    with pytest.raises(ValueError, match=r"bad Redis URL 'http://:\*\*\*@host:1/0'"):
        create_app(app_config("http://:secret@host:1/0"))


def test_app_metrics_count_requests_latency_and_errors(client: FlaskClient) -> None:
    def value(text: str, prefix: str) -> float:
        lines = [line for line in text.splitlines() if line.startswith(prefix)]
        return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0

    before = client.get("/metrics").get_data(as_text=True)
    client.get("/v1/clients/7/features")
    client.get("/v1/clients/404404/features")
    client.get("/v1/clients/x/features")
    page = client.get("/metrics")
    assert page.status_code == 200 and page.mimetype == "text/plain"
    text = page.get_data(as_text=True)
    ok = 'credit_api_requests_total{endpoint="/v1/clients/<raw_id>/features",method="GET",status="200"}'
    assert value(text, ok) == value(before, ok) + 1
    for status in ("404", "400"):
        err = f'credit_api_errors_total{{status="{status}"}}'
        assert value(text, err) == value(before, err) + 1
    count = 'credit_api_request_duration_seconds_count{endpoint="/v1/clients/<raw_id>/features"}'
    assert value(text, count) == value(before, count) + 3


def test_app_openapi_describes_every_route_and_docs_work_offline(app: Flask, client: FlaskClient) -> None:
    spec = client.get("/openapi.json").json
    assert spec["openapi"].startswith("3.1")
    documented = {path.replace("{client_id}", "<raw_id>") for path in spec["paths"]}
    routes = {rule.rule for rule in app.url_map.iter_rules()} - {"/static/<path:filename>", "/openapi.json", "/docs",
                                                                  "/docs/<path:asset>"}  # fmt: skip
    assert routes == documented
    assert spec["components"]["schemas"]["BatchRequest"]["properties"]["client_ids"]["maxItems"] == 5
    page = client.get("/docs").get_data(as_text=True)
    assert "/openapi.json" in page and "http" not in page.replace("/openapi.json", "")
    for asset in ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"):
        assert asset in page
        served = client.get(f"/docs/{asset}")
        assert served.status_code == 200 and len(served.data) > 1000
    assert client.get("/docs/../app.py").status_code == 404
