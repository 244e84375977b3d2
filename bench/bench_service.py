"""Benchmark of the service, with every figure measured side by side in one run.

    .venv/bin/python -m bench.bench_service [--clients 100000] [--seconds 10] [--connections 16] [--rounds 3]

Three gunicorn servers run with the same settings (conf/gunicorn.conf.py): the service, reading a fresh
redis-server holding `--clients` published clients (random, consistent records); a trivial Flask app
answering a fixed JSON object (bench/trivial_app.py); and the service again with its hot routes off
(`[service] hot_routes = false`: every request through Flask's dispatch, `via_flask`), to show what they
save. The same wrk load (`--connections` keep-alive connections, two threads) is put on: the trivial
endpoint, the features endpoint (of both services), the credit-risk endpoint and the application endpoint
(POST, as of a fixed date; uniform random client ids from a Lua script), alternating over `--rounds`
rounds; the medians are reported with their ratios to the trivial endpoint. The published version holds
the configured model (a forest trained on synthetic features) as ONNX, and the model time per
application is measured in-process (every application a different row, and one row over and over), and
in the workers under the application load (the service's model-run metrics).
Where a request's time goes is measured too: the CPU time per request of the gunicorn workers, of
redis-server and of wrk over each run (from /proc; the machine is saturated, so an endpoint's requests per
second follow the sum). It needs wrk on PATH (Debian: apt-get install wrk). Results are printed and written to
`bench/results/service.json`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench.procfs import cpu_seconds, tree
from conf import load_settings
from contract import FEATURE_NAMES
from model import registry
from model import train as tr
from model.data import load_features
from model.portable import PortableModel
from serving.metrics import FLUSH_SECONDS
from serving.store import OnlineStore
from tests.redis_servers import RedisServer, free_port
from tests.synthetic import synthetic_features

ROOT = Path(__file__).resolve().parent.parent

WORK = ROOT / "var" / "bench" / "service"
RESULTS = ROOT / "bench" / "results" / "service.json"


def client_record(rng: random.Random) -> dict[str, object]:
    """One client's record as `materialize` writes it (latest loan's features, score, history state), random
    but consistent: clients differ, as their paths through the model's trees do."""
    loans = rng.randrange(1, 30)
    amount_sum = round(sum(rng.uniform(50, 8000) for _ in range(loans)), 2)
    last_loan = dt.date(2015, 1, 1) + dt.timedelta(days=rng.randrange(0, 6 * 365))
    birthday = dt.date(1945, 1, 1) + dt.timedelta(days=rng.randrange(0, 55 * 365))
    job_start = birthday + dt.timedelta(days=rng.randrange(18 * 365, 40 * 365)) if rng.random() > 0.2 else None
    score = rng.random()
    record: dict[str, object] = {
        "nb_previous_loans": loans - 1,
        "age": (last_loan - birthday).days // 365,
        "flag_own_car": rng.randrange(0, 2),
        "loan_date": last_loan.isoformat(),
        "score": score,
        "label": int(score >= 0.5),
        "model_version": "m1",
        "loans": loans,
        "amount_sum": amount_sum,
        "last_loan_id": rng.randrange(1, 10**9),
        "birthday": birthday.isoformat(),
    }
    if loans > 1:
        record["avg_amount_loans_previous"] = round(amount_sum / loans, 5)
    if job_start is not None and job_start <= last_loan:
        record["years_on_the_job"] = (last_loan - job_start).days // 365
    if job_start is not None:
        record["job_start_date"] = job_start.isoformat()
    return record


# Per endpoint: its targets against the trivial endpoint (requests per second at least, p99 at most).
TARGETS = {"features": (0.8, 2.0), "credit_risk": (0.8, 2.0), "application": (0.6, 2.5)}


def target(name: str, which: int, sense: str, spec: str) -> str:
    """The endpoint's target as printed beside its ratio; `via_flask` has none (it is there for comparison)."""
    return f" (target {sense} {format(TARGETS[name][which], spec)})" if name in TARGETS else ""


def portable_model() -> tuple[bytes, float, str]:
    """The configured model (a 100-tree forest by default) trained on synthetic features, as ONNX."""
    models = WORK / "models"
    if not registry.approved(models):
        features = synthetic_features(WORK / "synthetic" / "features", clients=3000, seed=2)
        result = tr.train(load_settings().model, load_features(features), leaky=False)
        registry.approve(models, registry.save(models, result.pipeline, result.card, result.files()))
    onnx, card = registry.approved_portable(models)
    return onnx, card["threshold"]["value"], card["version"]


def model_microseconds(onnx: bytes, laps: int = 20, per_lap: int = 1000) -> dict[str, float]:
    """Median time of one application's scoring (features already computed), in-process: every application
    a different row (`distinct`, the service's case: each row walks its own paths through the trees, which
    the cache does not hold), and the same row over and over (`same_row`, the best case)."""
    model = PortableModel(onnx, FEATURE_NAMES)
    rng = random.Random(7)
    rows = [
        {name: record.get(name) for name in FEATURE_NAMES} for record in (client_record(rng) for _ in range(per_lap))
    ]
    figures = {}
    for name, lap_rows in (("same_row", [rows[0]] * per_lap), ("distinct", rows)):
        for row in lap_rows:  # warm-up
            model.scores([row])
        times = []
        for _ in range(laps):
            started = time.perf_counter()
            for row in lap_rows:
                model.scores([row])
            times.append((time.perf_counter() - started) / per_lap * 1e6)
        figures[name] = statistics.median(times)
    return figures


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


def model_runs(port: int) -> dict[str, float]:
    """The service's model runs so far, from its metrics (every worker's): runs, rows, seconds."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    return {"runs": samples.get("credit_model_run_duration_seconds_count", 0.0),
            "rows": samples.get("credit_model_rows_total", 0.0),
            "seconds": samples.get("credit_model_run_duration_seconds_sum", 0.0)}  # fmt: skip


# A run's CPU time per request (us), by where it is spent: the gunicorn workers, redis-server, wrk.
CPU_PARTS = ("workers_cpu_us", "redis_cpu_us", "wrk_cpu_us")


def children_cpu_seconds() -> float:
    """The CPU time of this process's children that have ended (wrk's, once it has exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measured_run(url_path: str, port: int, clients: int, seconds: int, connections: int, master: int,
                 redis_pid: int) -> dict[str, float]:  # fmt: skip
    """One wrk run (`wrk`) with the CPU time per request, in microseconds, of the workers of the gunicorn
    `master`, of the Redis server and of wrk itself."""
    workers = tree(master)[1:]
    before = (sum(cpu_seconds(w) for w in workers), cpu_seconds(redis_pid), children_cpu_seconds())
    result = wrk(url_path, port, clients, seconds, connections)
    after = (sum(cpu_seconds(w) for w in workers), cpu_seconds(redis_pid), children_cpu_seconds())
    requests = max(result["rps"] * seconds, 1.0)
    for key, start, end in zip(CPU_PARTS, before, after, strict=True):
        result[key] = (end - start) / requests * 1e6
    return result


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
        rng = random.Random(42)
        store.write("bench", ((i, client_record(rng)) for i in range(1, args.clients + 1)))
        store.set_model("bench", onnx)
        store.set_meta("bench", {"threshold": repr(threshold)})
        store.complete("bench", args.clients)
        store.publish("bench")
        env = {**os.environ, "REDIS_URL": server.url}
        service_port, trivial_port = free_port(), free_port()
        processes.append(start_gunicorn("serving.app:create_app()", service_port, env, WORK / "service.log"))
        processes.append(start_gunicorn("bench.trivial_app:create_app()", trivial_port, env, WORK / "trivial.log"))
        flask_port = free_port()  # the same service with every request through Flask's dispatch
        processes.append(
            start_gunicorn(
                "serving.app:create_app()",
                flask_port,
                {**env, "CREDIT_SERVICE_HOT_ROUTES": "false"},
                WORK / "service-flask.log",
            )
        )
        targets = {
            "trivial": ("/trivial?id=%d", trivial_port),
            "features": ("/v1/clients/%d/features", service_port),
            "via_flask": ("/v1/clients/%d/features", flask_port),
            "credit_risk": ("/credit_risk/client_id=%d", service_port),
            "application": ("application", service_port),
        }
        for path, port in targets.values():  # warm-up: connections, imports, caches
            wrk(path, port, args.clients, 2, args.connections)
        masters = {service_port: processes[0].pid, trivial_port: processes[1].pid, flask_port: processes[2].pid}
        assert server.process is not None
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        time.sleep(FLUSH_SECONDS + 0.5)  # the warm-up's runs in the metrics of every worker
        model_before = model_runs(service_port)
        for _ in range(args.rounds):
            for name, (path, port) in targets.items():
                runs[name].append(measured_run(path, port, args.clients, args.seconds, args.connections,
                                               masters[port], server.process.pid))  # fmt: skip
        time.sleep(FLUSH_SECONDS + 0.5)  # every worker's last runs in the metrics
        under_load = {key: after - model_before[key] for key, after in model_runs(service_port).items()}
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
    figures["model_under_load"] = {  # the service's own metrics over the application rounds
        "runs": under_load["runs"],
        "rows_per_run": under_load["rows"] / max(under_load["runs"], 1),
        "us_per_run": under_load["seconds"] / max(under_load["runs"], 1) * 1e6,
        "us_per_application": under_load["seconds"] / max(under_load["rows"], 1) * 1e6,
    }
    for name in (name for name in runs if name != "trivial"):
        figures[f"{name}_rps_vs_trivial"] = median[name]["rps"] / median["trivial"]["rps"]
        figures[f"{name}_p99_vs_trivial"] = median[name]["p99_ms"] / median["trivial"]["p99_ms"]
    figures["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"gunicorn (conf/gunicorn.conf.py), wrk 2 threads {args.connections} connections, "
          f"{args.rounds} x {args.seconds} s per endpoint, medians")  # fmt: skip
    print(f"{'endpoint':<12} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}  vs trivial (rps, p99)")
    for name, m in median.items():
        ratio = "" if name == "trivial" else (
            f"  {figures[f'{name}_rps_vs_trivial']:.2f}{target(name, 0, '>=', '.2f')}, "
            f"{figures[f'{name}_p99_vs_trivial']:.2f}{target(name, 1, '<=', '.1f')}")  # fmt: skip
        print(f"{name:<12} {m['rps']:>9,.0f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} {m['non_2xx']:>8.0f}{ratio}")
    print("CPU time per request (us; medians): where a request's time goes, and how much more than a trivial one's")
    print(f"{'endpoint':<12} {'workers':>9} {'redis':>7} {'wrk':>7} {'total':>7} {'vs trivial':>11}")
    trivial_total = sum(median["trivial"][part] for part in CPU_PARTS)
    for name, m in median.items():
        total = sum(m[part] for part in CPU_PARTS)
        extra = "" if name == "trivial" else f"{total - trivial_total:>+11.0f}"
        spent = f"{m['workers_cpu_us']:>9.0f} {m['redis_cpu_us']:>7.1f} {m['wrk_cpu_us']:>7.0f} {total:>7.0f}"
        print(f"{name:<12} {spent} {extra}")
    print(
        f"model time per application, in-process: {figures_model_us['distinct']:.1f} us with every application "
        f"a different row (target < 50), {figures_model_us['same_row']:.1f} us for one row over and over"
    )
    load = figures["model_under_load"]
    print(
        f"model under the application load, in the workers: {load['us_per_run']:.0f} us per run of "
        f"{load['rows_per_run']:.1f} applications on average, {load['us_per_application']:.0f} us per application"
    )
    print(f"written to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
