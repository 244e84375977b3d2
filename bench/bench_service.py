"""Benchmark of the service, with every figure measured side by side in one run.

    .venv/bin/python -m bench.bench_service [--clients 100000] [--seconds 10] [--connections 16] [--rounds 3]

Two gunicorn servers run with the same settings (conf/gunicorn.conf.py): the service, reading a
fresh redis-server holding `--clients` published clients, and a trivial Flask app answering a fixed
JSON object (bench/trivial_app.py). The same wrk load (`--connections` keep-alive connections, two
threads) is put on: the trivial endpoint, the features endpoint, the credit-risk endpoint and the
application endpoint (POST, as of a fixed date; uniform random client ids from a Lua script),
alternating over `--rounds` rounds; the medians are reported with their ratios to the trivial endpoint.
The published version holds the configured model (a forest trained on synthetic features) as ONNX, and
the model time per application is measured in-process. It needs wrk on PATH (Debian: apt-get install
wrk). Results are printed and written to `bench/results/service.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from conf import load_settings
from contract import FEATURE_NAMES
from model import registry
from model import train as tr
from model.data import load_features
from model.portable import PortableModel
from serving.store import OnlineStore
from tests.redis_servers import RedisServer, free_port
from tests.synthetic import synthetic_features

ROOT = Path(__file__).resolve().parent.parent

WORK = ROOT / "var" / "bench" / "service"
RESULTS = ROOT / "bench" / "results" / "service.json"
RECORD = {"nb_previous_loans": 12, "avg_amount_loans_previous": 2134.56789, "age": 41, "years_on_the_job": 7,
          "flag_own_car": 1, "loan_date": "2020-11-05", "score": 0.4123456789, "label": 0, "model_version": "m1",
          "loans": 13, "amount_sum": 27749.38257, "last_loan_id": 123456, "birthday": "1979-03-01",
          "job_start_date": "2013-06-01"}  # fmt: skip


# Per endpoint: its targets against the trivial endpoint (requests per second at least, p99 at most).
TARGETS = {"features": (0.8, 2.0), "credit_risk": (0.8, 2.0), "application": (0.6, 2.5)}


def portable_model() -> tuple[bytes, float, str]:
    """The configured model (a 100-tree forest by default) trained on synthetic features, as ONNX."""
    models = WORK / "models"
    if not registry.approved(models):
        features = synthetic_features(WORK / "synthetic" / "features", clients=3000, seed=2)
        result = tr.train(load_settings().model, load_features(features), leaky=False)
        registry.approve(models, registry.save(models, result.pipeline, result.card, result.files()))
    onnx, card = registry.approved_portable(models)
    return onnx, card["threshold"]["value"], card["version"]


def model_microseconds(onnx: bytes, rows: int = 20_000) -> float:
    """Median time of one application's scoring (features already computed), in-process."""
    model = PortableModel(onnx, FEATURE_NAMES)
    row = {"nb_previous_loans": 13, "avg_amount_loans_previous": 2134.5, "age": 42, "years_on_the_job": None,
           "flag_own_car": 1}  # fmt: skip
    for _ in range(1000):
        model.scores([row])
    laps = []
    for _ in range(rows // 1000):
        started = time.perf_counter()
        for _ in range(1000):
            model.scores([row])
        laps.append((time.perf_counter() - started) / 1000 * 1e6)
    return statistics.median(laps)


LUA = """
math.randomseed(%d)
request = function()
  return wrk.format("GET", string.format("%s", math.random(1, %d)))
end
%s
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%d %%d %%f %%f\\n", summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.duration, latency:percentile(50), latency:percentile(99)))
end
"""


def start_gunicorn(app: str, port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    env = {**env, "BIND": f"127.0.0.1:{port}", "PROMETHEUS_MULTIPROC_DIR": str(WORK / f"metrics-{port}")}
    command = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "conf" / "gunicorn.conf.py"), app]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn {app} did not start; see {log}") from None
            time.sleep(0.2)


APPLICATION = """
request = function()
  local body = string.format('{"client_id": %%d, "application_date": "2021-06-30"}', math.random(1, %d))
  return wrk.format("POST", "/v1/applications/credit-risk", {["Content-Type"] = "application/json"}, body)
end
"""


def wrk(url_path: str, port: int, clients: int, seconds: int, connections: int) -> dict[str, float]:
    """Requests per second and latency percentiles (ms) of one wrk run (a POST application when url_path is
    "application")."""
    script = WORK / "load.lua"
    post = APPLICATION % clients if url_path == "application" else ""
    script.write_text(LUA % (42, "/" if post else url_path, clients, post))
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script),
                          f"http://127.0.0.1:{port}"], check=True, capture_output=True, text=True).stdout  # fmt: skip
    requests, bad_status, socket_errors, duration_us, p50, p99 = re.search(r"RESULT (.*)", out).group(1).split()
    return {"rps": int(requests) / (int(duration_us) / 1e6), "p50_ms": float(p50) / 1000, "p99_ms": float(p99) / 1000,
            "non_2xx": int(bad_status), "socket_errors": int(socket_errors)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: install Debian's wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    WORK.mkdir(parents=True, exist_ok=True)
    server = RedisServer(WORK / "redis").start()
    processes: list[subprocess.Popen] = []
    try:
        onnx, threshold, model_version = portable_model()
        figures_model_us = model_microseconds(onnx)
        store = OnlineStore.from_url(server.url, 1.0, 10.0)
        store.begin(
            "bench", {"source": "bench", "model_version": model_version, "feature_names": ",".join(FEATURE_NAMES)}
        )
        store.write("bench", ((i, RECORD) for i in range(1, args.clients + 1)))
        store.set_model("bench", onnx)
        store.set_meta("bench", {"threshold": repr(threshold)})
        store.complete("bench", args.clients)
        store.publish("bench")
        env = {**os.environ, "REDIS_URL": server.url}
        service_port, trivial_port = free_port(), free_port()
        processes.append(start_gunicorn("serving.app:create_app()", service_port, env, WORK / "service.log"))
        processes.append(start_gunicorn("bench.trivial_app:create_app()", trivial_port, env, WORK / "trivial.log"))
        targets = {
            "trivial": ("/trivial?id=%d", trivial_port),
            "features": ("/v1/clients/%d/features", service_port),
            "credit_risk": ("/credit_risk/client_id=%d", service_port),
            "application": ("application", service_port),
        }
        for path, port in targets.values():  # warm-up: connections, imports, caches
            wrk(path, port, args.clients, 2, args.connections)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        for _ in range(args.rounds):
            for name, (path, port) in targets.items():
                runs[name].append(wrk(path, port, args.clients, args.seconds, args.connections))
    finally:
        for process in processes:
            process.terminate()
            process.wait(15)
        server.stop()
    figures: dict[str, object] = {"clients": args.clients, "seconds": args.seconds, "connections": args.connections,
                                  "rounds": args.rounds, "workers": os.cpu_count(), "runs": runs}  # fmt: skip
    median = {name: {key: statistics.median(r[key] for r in results) for key in results[0]}
              for name, results in runs.items()}  # fmt: skip
    figures["median"] = median
    figures["model_us_per_application"] = figures_model_us
    for name in TARGETS:
        figures[f"{name}_rps_vs_trivial"] = median[name]["rps"] / median["trivial"]["rps"]
        figures[f"{name}_p99_vs_trivial"] = median[name]["p99_ms"] / median["trivial"]["p99_ms"]
    figures["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"gunicorn (conf/gunicorn.conf.py), wrk 2 threads {args.connections} connections, "
          f"{args.rounds} x {args.seconds} s per endpoint, medians")  # fmt: skip
    print(f"{'endpoint':<12} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}  vs trivial (rps, p99)")
    for name, m in median.items():
        rps_target, p99_target = TARGETS.get(name, (0, 0))
        ratio = "" if name == "trivial" else (
            f"  {figures[f'{name}_rps_vs_trivial']:.2f} (target >= {rps_target:.2f}), "
            f"{figures[f'{name}_p99_vs_trivial']:.2f} (target <= {p99_target:.1f})")  # fmt: skip
        print(f"{name:<12} {m['rps']:>9,.0f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} {m['non_2xx']:>8.0f}{ratio}")
    print(f"model time per application, in-process: {figures_model_us:.1f} us (target < 50)")
    print(f"written to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
