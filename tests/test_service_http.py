"""The service over HTTP under gunicorn (conf/gunicorn.conf.py, two workers) against a real Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.store import OnlineStore, connect
from tests.redis_servers import RedisServer, free_port
from tests.test_app import CLIENTS, publish

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


class Service:
    def __init__(self, port: int, process: subprocess.Popen) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.process = process

    def get(self, path: str) -> tuple[int, dict | str]:
        return self.request(urllib.request.Request(self.base + path))

    def post(self, path: str, body: object) -> tuple[int, dict | str]:
        data = json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data, {"Content-Type": "application/json"}, method="POST")
        return self.request(req)

    @staticmethod
    def request(req: urllib.request.Request) -> tuple[int, dict | str]:
        try:
            with urllib.request.urlopen(req, timeout=10) as answer:
                status, body, kind = answer.status, answer.read().decode(), answer.headers.get_content_type()
        except urllib.error.HTTPError as error:
            status, body, kind = error.code, error.read().decode(), error.headers.get_content_type()
        return status, json.loads(body) if kind == "application/json" else body


@pytest.fixture(scope="module")
def service(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """gunicorn with the project's config, two workers, reading the test Redis; stopped with SIGTERM."""
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_server.url, "BIND": f"127.0.0.1:{port}", "WEB_WORKERS": "2",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path_factory.mktemp("metrics")),
           "CREDIT_REDIS_VERSION_CACHE_SECONDS": "0.2"}  # fmt: skip
    log = (tmp_path_factory.mktemp("gunicorn") / "gunicorn.log").open("w")
    command = [sys.executable, "-m", "gunicorn", "-c", "conf/gunicorn.conf.py", "serving.app:create_app()"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    service = Service(port, process)
    deadline = time.monotonic() + 30
    while True:
        try:
            if service.get("/health")[0] == 200:
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not start; see {log.name}") from None
            time.sleep(0.1)
    yield service
    process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 0  # a clean, graceful stop
    log.close()


def test_http_every_endpoint_under_gunicorn(service: Service, redis_url: str) -> None:
    publish(redis_url, "v1", CLIENTS)
    time.sleep(0.3)  # the workers' version cache
    assert service.get("/ready") == (200, {"status": "ready", "version": "v1"})
    status, body = service.get("/online_feature_store/client_id=7")
    assert status == 200 and body["features"]["avg_amount_loans_previous"] == 2134.5 and body["version"] == "v1"
    status, body = service.get("/credit_risk/client_id=8")
    assert status == 200 and body["score"] == 0.03 and body["features"]["years_on_the_job"] is None
    assert service.get("/v1/clients/7/credit-risk")[1]["label"] == 1
    assert service.get("/v1/clients/8/features")[1]["loan_date"] == "2019-02-28"
    status, body = service.post("/v1/credit-risk/batch", {"client_ids": [7, 5]})
    assert status == 200 and [r.get("error") for r in body["results"]] == [None, "not_found"]
    assert service.get("/v1/clients/5/features")[0] == 404
    assert service.get("/v1/clients/-5/features")[0] == 400
    assert service.post("/v1/credit-risk/batch", {"client_ids": list(range(1, 1002))})[1]["error"]["code"] == (
        "batch_too_large"
    )
    assert service.get("/openapi.json")[1]["openapi"] == "3.1.0"
    assert "swagger-ui-bundle.js" in service.get("/docs")[1]


def test_http_republish_during_requests_never_gives_a_5xx_or_a_partial_answer(service: Service, redis_url: str) -> None:
    """Each version n stores age n for every client, so an answer mixing versions is caught."""

    def version_clients(n: int) -> dict[int, dict]:
        return {i: {**CLIENTS[7], "age": n, "model_version": f"m{n}"} for i in range(1, 51)}

    publish(redis_url, "v01", version_clients(1))
    time.sleep(0.3)
    answers: list[tuple[int, dict]] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            for client_id in (1, 25, 50):
                answers.append(service.get(f"/credit_risk/client_id={client_id}"))
            answers.append(service.post("/v1/credit-risk/batch", {"client_ids": [1, 2, 3, 50]}))

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        store = OnlineStore(connect(redis_url, 0.5, 2.0))
        for n in range(2, 8):
            time.sleep(0.15)
            publish(redis_url, f"v{n:02d}", version_clients(n))
            store.cleanup(grace_seconds=60)  # the previous version and any within the grace stay
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert len(answers) > 50
    assert {status for status, _ in answers} == {200}
    versions = set()
    for _, body in answers:
        for result in body.get("results", [body]):
            n = int(result["version"][1:])
            assert result["features"]["age"] == n and result["model_version"] == f"m{n}", result
            versions.add(n)
    assert {1, 7} <= versions


def test_http_503_while_redis_is_down_then_recovers(
    service: Service, redis_server: RedisServer, redis_url: str
) -> None:
    publish(redis_url, "v1", CLIENTS)
    time.sleep(0.3)
    assert service.get("/v1/clients/7/features")[0] == 200
    redis_server.stop()
    started = time.monotonic()
    for _ in range(4):  # both workers, several threads' connections
        status, body = service.get("/v1/clients/7/features")
        assert status == 503 and body["error"]["code"] == "redis_unavailable"
    assert service.get("/ready")[0] == 503
    assert time.monotonic() - started < 2
    redis_server.start()
    publish(redis_server.url, "v2", CLIENTS)
    time.sleep(0.3)
    assert [service.get("/v1/clients/7/features")[0] for _ in range(8)] == [200] * 8


def test_http_503_within_a_second_while_redis_hangs(
    service: Service, redis_server: RedisServer, redis_url: str
) -> None:
    publish(redis_url, "v1", CLIENTS)
    time.sleep(0.3)
    redis_server.pause()
    try:
        for path in ("/v1/clients/7/features", "/credit_risk/client_id=8", "/ready"):
            started = time.monotonic()
            assert service.get(path)[0] == 503
            assert time.monotonic() - started < 1.2, path
    finally:
        redis_server.resume()
    assert [service.get("/v1/clients/7/features")[0] for _ in range(8)] == [200] * 8


def test_http_metrics_add_up_every_worker(service: Service, redis_url: str) -> None:
    def count(text: str) -> float:
        prefix = 'credit_api_requests_total{endpoint="/health",method="GET",status="200"}'
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    before = count(service.get("/metrics")[1])
    for _ in range(40):  # spread over both workers by the kernel
        assert service.get("/health")[0] == 200
    text = service.get("/metrics")[1]
    assert count(text) == before + 40
    assert "credit_api_request_duration_seconds_bucket" in text


def test_http_schemathesis_finds_no_server_error(service: Service, redis_url: str, tmp_path: Path) -> None:
    """Fuzz every operation from the OpenAPI description; every check, including the answer shapes."""
    publish(redis_url, "v1", {i: CLIENTS[7] for i in range(1, 200)})
    time.sleep(0.3)
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{service.base}/openapi.json", "--checks", "all",
               "--max-examples", "40", "--seed", "1", "--generation-database", "none",
               "--report", "junit", "--report-dir", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-4000:]
