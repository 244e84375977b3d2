"""The Flask service through its test client, against a real Redis (stopped, hung and restarted too)."""

from __future__ import annotations

import logging
import time

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest

from serving import metrics
from serving.app import create_app
from serving.breaker import CircuitBreaker, RedisUnavailable
from serving.store import OnlineStore
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
BATCH_LIMIT = 5


def publish(url: str, version: str, clients: dict[int, dict]) -> None:
    store = OnlineStore.from_url(url, 0.5, 2.0)
    store.begin(version, {"source": "test"})
    store.write(version, clients.items())
    store.complete(version, len(clients))
    store.publish(version)


def app_config(url: str, **changes: object) -> dict[str, object]:
    return {"REDIS_URL": url, "VERSION_CACHE_SECONDS": 0.0, "BATCH_LIMIT": BATCH_LIMIT, "TESTING": True,
            "MODEL_PRELOAD_SECONDS": 0, **changes}  # fmt: skip


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
    assert list(answer.json) == ["client_id", "loan_date", "version", "features"]  # in the order built


@pytest.mark.parametrize(
    "path", ["/credit_risk/client_id=8", "/v1/clients/8/credit-risk", "/v1/clients/0008/credit-risk"]
)
def test_app_credit_risk_answer_with_null_features(client: FlaskClient, path: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 200
    assert answer.json == {"client_id": 8, "loan_date": "2019-02-28", "version": "20261127T061500Z",
                           "features": FEATURES_8, "score": 0.03, "label": 0, "model_version": "m1"}  # fmt: skip


BAD_IDS = ["0", "-1", "abc", "1.5", "+7", "%207", "7%20", "9223372036854775808", "99999999999999999999", "0x10",
           "१२", "1e3", "7%0A", "9" * 5000]  # fmt: skip


@pytest.mark.parametrize("raw", BAD_IDS, ids=lambda raw: raw[:20])
def test_app_rejects_an_id_that_is_not_a_positive_64_bit_whole_number(client: FlaskClient, raw: str) -> None:
    for path in (f"/credit_risk/client_id={raw}", f"/v1/clients/{raw}/features"):
        answer = client.get(path)
        assert answer.status_code == 400, path
        assert answer.json["error"]["code"] == "invalid_client_id"
        assert len(answer.json["error"]["message"]) < 200  # a huge id is not echoed whole


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
    assert body["results"] == [
        client.get("/credit_risk/client_id=8").json, {"client_id": 99, "error": "not_found"},
        client.get("/credit_risk/client_id=7").json, client.get("/credit_risk/client_id=8").json,
    ]  # fmt: skip
    whole = client.post("/v1/credit-risk/batch", json={"client_ids": [7.0, 1e3]})  # JSON Schema integers
    assert [r["client_id"] for r in whole.json["results"]] == [7, 1000]


def test_app_batch_limit_is_exact(client: FlaskClient) -> None:
    at_limit = client.post("/v1/credit-risk/batch", json={"client_ids": list(range(1, BATCH_LIMIT + 1))})
    assert at_limit.status_code == 200 and len(at_limit.json["results"]) == BATCH_LIMIT
    over = client.post("/v1/credit-risk/batch", json={"client_ids": list(range(1, BATCH_LIMIT + 2))})
    message = f"{BATCH_LIMIT + 1} client ids; at most {BATCH_LIMIT} per request"
    assert over.status_code == 400 and over.json["error"] == {"code": "batch_too_large", "message": message}


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[7, 8]",
        '{"ids": [7]}',
        '{"client_ids": [7], "extra": 1}',
        '{"client_ids": []}',
        '{"client_ids": "7"}',
        '{"client_ids": ["7"]}',
        '{"client_ids": [true]}',
        '{"client_ids": [7.5]}',
        '{"client_ids": [null]}',
        '{"client_ids": [0]}',
        f'{{"client_ids": [{2**63}]}}',
        '{"client_ids":' + "[" * 990,
        '{"client_ids":' + "[" * 100_000 + "]" * 100_000 + "}",
        "",
        '{"client_ids": [1]',
    ],
    ids=lambda b: b[:30],
)
def test_app_batch_rejects_a_bad_body_with_a_json_400(client: FlaskClient, body: str) -> None:
    answer = client.post("/v1/credit-risk/batch", data=body, content_type="application/json")
    assert answer.status_code == 400 and answer.json["error"]["code"] == "invalid_body", answer.json


def test_app_batch_wants_a_json_content_type(client: FlaskClient) -> None:
    answer = client.post("/v1/credit-risk/batch", data='{"client_ids": [7]}', content_type="text/plain")
    assert answer.status_code == 400 and "Content-Type: application/json" in answer.json["error"]["message"]


def test_app_every_answer_is_json_options_and_odd_methods_included(client: FlaskClient) -> None:
    assert client.get("/nowhere").json["error"]["code"] == "not_found"
    wrong_method = client.delete("/v1/clients/7/features")
    assert wrong_method.status_code == 405 and wrong_method.json["error"]["code"] == "method_not_allowed"
    assert set(wrong_method.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    options = client.options("/v1/clients/7/features")
    assert options.status_code == 200 and options.mimetype == "application/json"
    assert options.json == {"allow": ["GET", "HEAD", "OPTIONS"]}
    assert set(options.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    made_up = client.open("/v1/clients/7/features", method="BREW")
    assert made_up.status_code == 405 and made_up.mimetype == "application/json"
    huge = client.post("/v1/credit-risk/batch", data=b"[" + b"1," * 600_000 + b"1]", content_type="application/json")
    assert huge.status_code == 413 and huge.json["error"]["code"] == "request_entity_too_large"


@pytest.mark.parametrize("length", ["19", "", "²", "19x", "99999999999999999999999"])
def test_app_body_read_by_its_declared_length_or_by_werkzeug(client: FlaskClient, length: str) -> None:
    """A body of a valid declared length within the limit is read at once; any other Content-Length (none, a
    digit int() refuses, garbage, past the limit) goes through werkzeug: a 400 or a 413, never a 500."""
    body = b'{"client_ids": [7]} '  # 19 bytes of JSON, then a space the declared length leaves out
    answer = client.post("/v1/credit-risk/batch", data=body, content_type="application/json",
                         environ_overrides={"CONTENT_LENGTH": length})  # fmt: skip
    if length == "19":
        assert answer.status_code == 200 and answer.json["results"][0]["client_id"] == 7
    elif length.startswith("9999"):
        assert answer.status_code == 413
    else:
        assert answer.status_code == 400 and answer.json["error"]["code"] == "invalid_body"


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


def test_app_answers_503_while_redis_is_down_without_trying_it_and_recovers(
    redis_server: RedisServer, app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    client = app.test_client()
    holder = app.extensions["credit_store"]
    assert client.get("/v1/clients/7/features").status_code == 200
    redis_server.stop()
    caplog.set_level(logging.WARNING, "serving")
    down = client.get("/v1/clients/7/features")
    assert down.status_code == 503 and down.json["error"]["code"] == "redis_unavailable"
    assert down.headers["Retry-After"] == "1" and holder.breaker.is_open
    refused = [client.get("/v1/clients/7/features") for _ in range(50)]
    assert {r.status_code for r in refused} == {503}
    assert client.get("/ready").status_code == 503 and client.get("/health").status_code == 200
    # One line when the breaker opened, not one per 503.
    assert len([r for r in caplog.records if "Redis" in r.getMessage()]) == 1
    redis_server.start()  # an empty Redis again (no persistence): publish and read once more
    publish(redis_server.url, "v2", CLIENTS)
    time.sleep(holder.breaker.retry_seconds)
    assert client.get("/v1/clients/7/features").json["version"] == "v2"
    assert not holder.breaker.is_open
    assert "Redis is back after" in caplog.records[-1].getMessage()


def test_app_while_redis_hangs_only_trials_wait_on_it(redis_server: RedisServer, redis_url: str) -> None:
    publish(redis_url, "v1", CLIENTS)
    # A socket timeout of 2 s: a request that waits on the hung Redis is told apart from one that does not.
    app = create_app(app_config(redis_url, REDIS_SOCKET_TIMEOUT=2.0, BREAKER_RETRY_SECONDS=30.0))
    client = app.test_client()
    assert client.get("/credit_risk/client_id=7").status_code == 200
    redis_server.pause()  # SIGSTOP: the socket accepts, nothing answers
    try:
        started = time.monotonic()
        assert client.get("/credit_risk/client_id=7").status_code == 503  # waits its timeout, opens the breaker
        assert time.monotonic() - started >= 2.0
        for path in ("/credit_risk/client_id=7", "/ready", "/v1/credit-risk/batch"):
            started = time.monotonic()
            answer = client.post(path, json={"client_ids": [7]}) if "batch" in path else client.get(path)
            assert answer.status_code == 503
            assert time.monotonic() - started < 1.0, path  # well under the 2 s it would wait on Redis
    finally:
        redis_server.resume()


def test_breaker_opens_refuses_tries_again_on_time_closes_and_logs_state_changes_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    breaker = CircuitBreaker(retry_seconds=0.25, report_seconds=10.0, clock=lambda: now[0])
    calls: list[str] = []

    def down() -> str:
        calls.append("down")
        raise redis.TimeoutError("Timeout reading from socket")

    def up() -> str:
        calls.append("up")
        return "ok"

    caplog.set_level(logging.WARNING, "serving.breaker")
    with pytest.raises(redis.TimeoutError):
        breaker.call(down)
    assert breaker.is_open and calls == ["down"]
    for _ in range(100):
        with pytest.raises(RedisUnavailable):
            breaker.call(up)  # refused at once: Redis is not tried
    assert calls == ["down"]
    now[0] = 100.25
    with pytest.raises(redis.TimeoutError):
        breaker.call(down)  # the trial, on time; it fails
    now[0] = 110.0
    with pytest.raises(redis.TimeoutError):
        breaker.call(down)  # another trial
    now[0] = 110.1
    with pytest.raises(RedisUnavailable):
        breaker.call(up)  # refused: 10 s since the breaker opened, the count is logged
    now[0] = 110.35
    assert breaker.call(up) == "ok" and not breaker.is_open and calls == ["down", "down", "down", "up"]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert messages[0].startswith("Redis unreachable (TimeoutError: Timeout reading from socket): answering 503")
    assert messages[1].startswith("Redis still unreachable after 10 s") and "101 requests answered 503" in messages[1]
    assert messages[2] == "Redis is back after 10.3 s; 101 requests were answered 503 meanwhile"
    with pytest.raises(redis.ResponseError):  # a refused command is no outage: the breaker stays closed
        breaker.call(lambda: (_ for _ in ()).throw(redis.ResponseError("NOPERM")))
    assert not breaker.is_open


def test_app_starts_while_redis_is_down() -> None:
    client = create_app(app_config(f"redis://127.0.0.1:{free_port()}/0")).test_client()
    assert client.get("/health").status_code == 200
    assert client.get("/v1/clients/7/credit-risk").status_code == 503


def test_app_refuses_to_start_with_a_malformed_redis_url() -> None:
    with pytest.raises(ValueError, match=r"bad Redis URL 'http://:\*\*\*@host:1/0'"):
        create_app(app_config("http://:secret@host:1/0"))


def test_app_costs_one_hmget_per_request_and_one_round_trip_per_batch(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's claims, checked with Redis's own command counts and the client's socket writes."""
    publish(redis_url, "v1", CLIENTS)
    client = create_app(app_config(redis_url, VERSION_CACHE_SECONDS=60.0)).test_client()
    assert client.get("/v1/clients/7/features").status_code == 200  # connects and caches the version
    admin = redis.Redis.from_url(redis_url)

    def calls() -> dict[str, int]:
        stats = admin.info("commandstats")
        return {name: value["calls"] for name, value in stats.items() if name != "cmdstat_info"}

    sends: list[int] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: object, command: object, check_health: bool = True) -> None:
        sends.append(1)
        original(self, command, check_health)

    before = calls()
    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    assert client.get("/credit_risk/client_id=8").status_code == 200
    one = len(sends)
    assert client.post("/v1/credit-risk/batch", json={"client_ids": [7, 8, 99, 7]}).status_code == 200
    monkeypatch.undo()
    after = calls()
    assert {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)} == {"cmdstat_hmget": 5}
    assert (one, len(sends)) == (1, 2)  # one write to the socket per request, the batch's pipelined


def metric(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def test_metrics_latencies_added_in_one_update_read_as_one_observation_each() -> None:
    """The flush adds a worker's latencies to the histogram bucket by bucket: the page shows what one
    `observe` per answer would (bucket edges included: a value equal to a bound is in that bound's bucket)."""
    bounds = (0.001, 0.01, 0.1)
    values = [0.0, 0.0005, 0.001, 0.0010001, 0.01, 0.05, 0.1, 0.2, 7.0, 0.003]
    one_by_one, at_once = CollectorRegistry(), CollectorRegistry()
    expected = Histogram("latency", "x", ["endpoint"], buckets=bounds, registry=one_by_one)
    for value in values:
        expected.labels("/a").observe(value)
    added = Histogram("latency", "x", ["endpoint"], buckets=bounds, registry=at_once)
    metrics._observe_many(added.labels("/a"), values)

    def page(registry: CollectorRegistry) -> list[str]:  # without the creation times
        return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]

    assert page(at_once) == page(one_by_one)
    assert 'latency_bucket{endpoint="/a",le="0.001"} 3.0' in page(at_once)


def test_app_metrics_written_by_the_flusher_without_a_page(client: FlaskClient) -> None:
    """A process's answers reach the metrics within FLUSH_SECONDS with no page rendered (another worker's
    page reads them from its file)."""
    prefix = 'credit_api_requests_total{endpoint="/v1/clients/<raw_id>/features",method="GET",status="200"}'
    metrics.flush()  # the earlier tests' answers
    before = metric(generate_latest(REGISTRY).decode(), prefix)
    client.get("/v1/clients/7/features")
    deadline = time.monotonic() + metrics.FLUSH_SECONDS + 3
    while metric(generate_latest(REGISTRY).decode(), prefix) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(generate_latest(REGISTRY).decode(), prefix) == before + 1


def test_app_metrics_count_requests_latency_and_errors_with_bounded_labels(client: FlaskClient) -> None:
    before = client.get("/metrics").get_data(as_text=True)
    client.get("/v1/clients/7/features")
    client.get("/v1/clients/404404/features")
    client.get("/v1/clients/x/features")
    for method in ("BREW", "PROPFIND", "X-CUSTOM-1", "X-CUSTOM-2"):  # made-up methods: one label, "other"
        client.open(f"/nowhere/{method}", method=method)
    page = client.get("/metrics")
    assert page.status_code == 200 and page.mimetype == "text/plain"
    text = page.get_data(as_text=True)
    ok = 'credit_api_requests_total{endpoint="/v1/clients/<raw_id>/features",method="GET",status="200"}'
    assert metric(text, ok) == metric(before, ok) + 1
    for status in ("404", "400"):
        err = f'credit_api_errors_total{{status="{status}"}}'
        assert metric(text, err) == metric(before, err) + (1 if status == "400" else 5)
    count = 'credit_api_request_duration_seconds_count{endpoint="/v1/clients/<raw_id>/features"}'
    assert metric(text, count) == metric(before, count) + 3
    other = 'credit_api_requests_total{endpoint="unmatched",method="other",status="404"}'
    assert metric(text, other) == metric(before, other) + 4
    for made_up in ("BREW", "PROPFIND", "X-CUSTOM", "/nowhere/"):
        assert made_up not in text  # neither the methods nor the raw paths became labels


def test_app_openapi_describes_every_route_and_docs_work_offline(app: Flask, client: FlaskClient) -> None:
    spec = client.get("/openapi.json").json
    assert spec["openapi"].startswith("3.1")
    documented = {path.replace("{client_id}", "<raw_id>") for path in spec["paths"]}
    routes = {rule.rule for rule in app.url_map.iter_rules()} - {"/static/<path:filename>", "/openapi.json", "/docs",
                                                                  "/docs/<path:asset>"}  # fmt: skip
    assert routes == documented
    assert spec["components"]["schemas"]["BatchRequest"]["properties"]["client_ids"]["maxItems"] == BATCH_LIMIT
    page = client.get("/docs").get_data(as_text=True)
    assert "/openapi.json" in page and "http" not in page.replace("/openapi.json", "")
    for asset in ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"):
        assert asset in page
        served = client.get(f"/docs/{asset}")
        assert served.status_code == 200 and len(served.data) > 1000
    assert client.get("/docs/../app.py").status_code == 404
