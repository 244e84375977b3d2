"""The service over HTTP under gunicorn (conf/gunicorn.conf.py, two gevent workers) against a real Redis."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict

from contract import FEATURE_NAMES
from model import registry
from model import train as tr
from model.portable import PortableModel
from serving.metrics import FLUSH_SECONDS
from serving.store import OnlineStore
from tests.conftest import ModelRun
from tests.helpers import ROOT, Http, background
from tests.load import hammer, percentile
from tests.redis_servers import RedisServer, free_port
from tests.test_app import CLIENTS, publish
from tests.test_applications import HISTORY, publish_with_model

pytestmark = pytest.mark.slow
CACHE_SECONDS = 0.2  # the workers' version cache in these tests


class Service(Http):
    def __init__(self, port: int, process: subprocess.Popen, log: Path, metrics: Path) -> None:
        super().__init__(f"http://127.0.0.1:{port}")
        self.port, self.process, self.log, self.metrics = port, process, log, metrics

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def raw(self, data: bytes) -> bytes:
        """Send bytes as they are on a new connection; the answer's bytes."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(data)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)


@pytest.fixture(scope="module")
def service(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """gunicorn with the project's config, two workers, reading the test Redis; stopped with SIGTERM."""
    port = free_port()
    metrics = tmp_path_factory.mktemp("metrics")
    env = {
        **os.environ, "REDIS_URL": redis_server.url, "BIND": f"127.0.0.1:{port}", "WEB_WORKERS": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics), "CREDIT_REDIS_VERSION_CACHE_SECONDS": str(CACHE_SECONDS),
    }  # fmt: skip
    log = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    command = [sys.executable, "-m", "gunicorn", "-c", "conf/gunicorn.conf.py", "serving.app:create_app()"]
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    service = Service(port, process, log, metrics)
    deadline = time.monotonic() + 30
    while True:
        try:
            if service.get("/health")[0] == 200:
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not start; see {log}") from None
            time.sleep(0.1)
    yield service
    process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 0  # a clean, graceful stop


def published(url: str, version: str, clients: dict[int, dict] = CLIENTS) -> None:
    publish(url, version, clients)
    time.sleep(CACHE_SECONDS + 0.1)  # the workers' version cache


def test_http_every_endpoint_under_gunicorn(service: Service, redis_url: str) -> None:
    published(redis_url, "v1")
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
    status, body = service.get("/v1/clients/7/features", method="OPTIONS")
    assert status == 200 and body == {"allow": ["GET", "HEAD", "OPTIONS"]}


@pytest.mark.parametrize(
    "request_line",
    [
        b"get /health HTTP/1.1",
        b"BREW /health HTTP/1.1",
        b"DELETE /v1/clients/7/features HTTP/1.1",
        b"OPTIONS /health HTTP/1.1",
        b"POST /v1/credit-risk/batch HTTP/1.1",
    ],
)
def test_http_every_answer_the_app_gives_is_json(service: Service, redis_url: str, request_line: bytes) -> None:
    body = b'{"client_ids":' + b"[" * 990 if request_line.startswith(b"POST") else b""
    headers = b"Content-Type: application/json\r\n" if body else b""
    framing = b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    answer = service.raw(request_line + b"\r\nHost: x\r\n" + headers + framing + body)
    head, _, content = answer.partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head, answer[:300]
    assert content.startswith(b"{") and b"Traceback" not in content
    if request_line.startswith(b"POST"):  # deeply nested JSON: a 400, not a 500
        assert head.startswith(b"HTTP/1.1 400") and b'"invalid_body"' in content


def test_http_republish_during_requests_never_gives_a_5xx_or_a_partial_answer(service: Service, redis_url: str) -> None:
    """Readers hammer the service while six versions are published and cleaned up one after another. Each
    version stores a different age, so an answer mixing versions would be caught."""

    def version_clients(n: int) -> dict[int, dict]:
        return {i: {**CLIENTS[7], "age": n, "model_version": f"m{n}"} for i in range(1, 51)}

    published(redis_url, "v01", version_clients(1))
    answers: list[tuple[int, dict]] = []

    def read(stop: threading.Event) -> None:
        while not stop.is_set():
            for client_id in (1, 25, 50):
                answers.append(service.get(f"/credit_risk/client_id={client_id}"))
            answers.append(service.post("/v1/credit-risk/batch", {"client_ids": [1, 2, 3, 50]}))

    store = OnlineStore.from_url(redis_url, 0.5, 2.0)
    with background(read, read, read):
        for n in range(2, 8):
            time.sleep(0.3)
            publish(redis_url, f"v{n:02d}", version_clients(n))
            store.cleanup(grace_seconds=60)  # the previous version and any within the grace stay
        time.sleep(0.5)
    assert {status for status, _ in answers} == {200}
    per_version: dict[int, int] = {}
    for _, body in answers:
        for result in body.get("results", [body]):
            n = int(result["version"][1:])
            assert result["features"]["age"] == n and result["model_version"] == f"m{n}", result
            per_version[n] = per_version.get(n, 0) + 1
    assert sorted(per_version) == list(range(1, 8)) and min(per_version.values()) >= 5, per_version


def test_http_a_hung_redis_under_load_fails_fast_and_recovers(
    service: Service, redis_server: RedisServer, redis_url: str
) -> None:
    """64 connections; Redis stopped (SIGSTOP) for 5 s in the middle: answers stay fast, /health never
    waits, 200s come back within a second of Redis resuming, and the log does not flood."""
    published(redis_url, "v1", {i: CLIENTS[7] for i in range(1, 101)})
    log_before = len(service.log_lines())
    events: dict[str, float] = {}

    def outage(stop: threading.Event) -> None:
        time.sleep(1.5)
        events["paused"] = time.monotonic()
        redis_server.pause()
        time.sleep(5.0)
        redis_server.resume()
        events["resumed"] = time.monotonic()

    with background(outage):
        answers = hammer(service.port, 64, 9.0, lambda n: f"/v1/clients/{n % 100 + 1}/features", probe="/health")
    statuses = {a.status for a in answers}
    assert statuses <= {200, 503}, statuses  # no failed connection, no other error
    assert percentile([a.seconds for a in answers], 0.99) <= 1.0
    health = [a.seconds for a in answers if a.path == "/health"]
    assert len(health) > 100 and {a.status for a in answers if a.path == "/health"} == {200}
    assert percentile(health, 0.99) < 0.1, sorted(health)[-5:]
    # Answered while Redis was stopped (a trial under way when it resumed may succeed: it is not counted).
    stopped = (events["paused"] + 1.0, events["resumed"])
    during = [
        a for a in answers if stopped[0] < a.started and a.started + a.seconds < stopped[1] and a.path != "/health"
    ]
    assert during and {a.status for a in during} == {503}
    after = [a for a in answers if a.started > events["resumed"] + 1.0 and a.path != "/health"]
    assert len(after) > 100 and {a.status for a in after} == {200}
    redis_lines = [line for line in service.log_lines()[log_before:] if "Redis" in line]
    assert 2 <= len(redis_lines) <= 8, redis_lines  # per worker: opened, back (and maybe a count); never per 503


def test_http_a_burst_beyond_the_redis_connection_pool_is_answered_200(service: Service, redis_url: str) -> None:
    """400 connections on two workers, single and batch reads: more requests at once than redis-py's pool
    has connections (100). Their reads share pipelines and wait for a connection: no 503, no breaker."""
    published(redis_url, "v1", {i: CLIENTS[7] for i in range(1, 101)})
    log_before = len(service.log_lines())

    def path(n: int) -> str:
        if n % 3:
            return f"/v1/clients/{n % 100 + 1}/credit-risk"
        ids = ", ".join(str((n + i) % 100 + 1) for i in range(20))
        return f'/v1/credit-risk/batch {{"client_ids": [{ids}]}}'

    answers = hammer(service.port, 400, 4.0, path)
    assert len(answers) > 1000 and {a.status for a in answers} == {200}
    assert [line for line in service.log_lines()[log_before:] if "Redis" in line] == []


def test_http_slow_clients_cannot_hold_the_workers(service: Service) -> None:
    """16 connections trickle a header line per second; /health keeps answering at once."""
    trickling = [socket.create_connection(("127.0.0.1", service.port)) for _ in range(16)]
    try:
        for sock in trickling:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: slow\r\n")
        latencies = []
        deadline = time.monotonic() + 5
        line = 0
        while time.monotonic() < deadline:
            if int(time.monotonic() * 1) != line:  # one more header line per second on every slow connection
                line = int(time.monotonic())
                for sock in trickling:
                    sock.sendall(f"X-Slow-{line}: 1\r\n".encode())
            started = time.monotonic()
            assert service.get("/health")[0] == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.05)
    finally:
        for sock in trickling:
            sock.close()
    assert len(latencies) > 40 and percentile(latencies, 0.9) < 0.1 and max(latencies) < 1.0, sorted(latencies)[-5:]


def test_http_503_while_redis_is_down_then_recovers(
    service: Service, redis_server: RedisServer, redis_url: str
) -> None:
    published(redis_url, "v1")
    assert service.get("/v1/clients/7/features")[0] == 200
    redis_server.stop()
    for _ in range(8):  # both workers, several connections
        status, body = service.get("/v1/clients/7/features")
        assert status == 503 and body["error"]["code"] == "redis_unavailable"
    assert service.get("/ready")[0] == 503 and service.get("/health")[0] == 200
    redis_server.start()
    published(redis_server.url, "v2")
    time.sleep(0.3)  # the breaker's next trial
    assert [service.get("/v1/clients/7/features")[0] for _ in range(8)] == [200] * 8


def worker_counts(service: Service, *labels: str) -> dict[int, float]:
    """Requests with these label values counted by each worker (its own file in the metrics folder), by pid."""
    counts = {}
    for path in service.metrics.glob("counter_*.db"):
        values = MmapedDict.read_all_values_from_file(str(path))
        total = sum(value for key, value, *_ in values
                    if "credit_api_requests_total" in key and all(f'"{label}"' in key for label in labels))  # fmt: skip
        counts[int(path.stem.rsplit("_", 1)[1])] = total
    return counts


def test_http_metrics_add_up_every_worker(service: Service) -> None:
    def count(text: str) -> float:
        prefix = 'credit_api_requests_total{endpoint="/health",method="GET",status="200"}'
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    time.sleep(FLUSH_SECONDS + 0.5)  # every worker's earlier answers written
    before, per_worker_before = count(service.get("/metrics")[1]), worker_counts(service, "/health", "GET", "200")
    for _ in range(200):  # new connections, spread over both workers by the kernel
        assert service.get("/health")[0] == 200
    # Each worker writes its answers at least every FLUSH_SECONDS; the one rendering the page, its own at once.
    deadline = time.monotonic() + FLUSH_SECONDS + 3
    while True:
        text = service.get("/metrics")[1]
        per_worker = worker_counts(service, "/health", "GET", "200")
        if count(text) == before + 200 == sum(per_worker.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    answered = {pid: per_worker[pid] - per_worker_before.get(pid, 0) for pid in per_worker}
    assert count(text) == before + 200 == sum(per_worker.values())
    assert len([pid for pid, n in answered.items() if n > 0]) == 2, answered  # both workers answered
    assert "credit_api_request_duration_seconds_bucket" in text


def test_http_schemathesis_finds_no_server_error(
    service: Service, redis_url: str, tmp_path: Path, model_run: ModelRun
) -> None:
    """Fuzz every operation from the OpenAPI description; every check, including the answer shapes."""
    publish_with_model(redis_url, "v1", {i: HISTORY[7] for i in range(1, 200)}, model_run)
    time.sleep(CACHE_SECONDS + 0.1)
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{service.base}/openapi.json", "--checks", "all",
               "--max-examples", "40", "--seed", "1", "--generation-database", "none",
               "--report", "junit", "--report-dir", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-4000:]


def test_http_applications_during_a_republish_with_another_model_never_mix_versions(
    service: Service, redis_url: str, model_run: ModelRun
) -> None:
    """Application requests hammer the service while versions alternate between two models: every answer's
    score is its own version's model's score for its features, never the other model's."""
    other = tr.train(dataclasses.replace(model_run.settings, seed=99), model_run.data, leaky=False)
    models = {
        "A": (registry.approved_portable(model_run.models)[0], model_run.version, model_run.result.card),
        "B": (other.portable, "other-model", other.card),
    }
    scorers = {name: PortableModel(onnx, FEATURE_NAMES) for name, (onnx, _, _) in models.items()}
    clients = {i: HISTORY[7] for i in range(1, 21)}

    def publish_model(version: str, name: str) -> None:
        onnx, model_version, card = models[name]
        store = OnlineStore.from_url(redis_url, version_cache_seconds=0)
        store.begin(
            version, {"source": "test", "model_version": model_version, "feature_names": ",".join(FEATURE_NAMES)}
        )
        store.write(version, clients.items())
        store.set_model(version, onnx)
        store.set_meta(version, {"threshold": repr(card["threshold"]["value"])})
        store.complete(version, len(clients))
        store.publish(version)

    publish_model("v00", "A")
    time.sleep(CACHE_SECONDS + 0.1)
    answers: list[tuple[int, dict]] = []

    def apply(stop: threading.Event) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            answers.append(service.post("/v1/applications/credit-risk",
                                        {"client_id": n % 20 + 1, "application_date": "2021-06-30"}))  # fmt: skip
            body = {"applications": [{"client_id": 1}, {"client_id": 2, "birthday": "1990-01-01"}]}
            answers.append(service.post("/v1/applications/credit-risk/batch", body))

    with background(apply, apply, apply):
        for n in range(1, 7):
            time.sleep(0.3)
            publish_model(f"v{n:02d}", "AB"[n % 2])
        time.sleep(0.5)
    assert {status for status, _ in answers} == {200}
    per_version: dict[str, int] = {}
    for _, body in answers:
        for result in body.get("results", [body]):
            name = "AB"[int(result["version"][1:]) % 2]
            assert result["model_version"] == models[name][1], result
            assert result["score"] == scorers[name].scores([result["features"]])[0], result
            per_version[result["version"]] = per_version.get(result["version"], 0) + 1
    assert len(per_version) == 7 and min(per_version.values()) >= 3, per_version
    assert scorers["A"].scores([HISTORY[7]]) != scorers["B"].scores([HISTORY[7]])  # the two models differ
