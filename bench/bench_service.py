"""Benchmark of the service, with every figure measured side by side in one run.

    .venv/bin/python -m bench.bench_service [--clients 100000] [--seconds 10] [--connections 16] [--rounds 3]

Two gunicorn servers run with the same settings (conf/gunicorn.conf.py): the service, reading a
fresh redis-server holding `--clients` published clients, and a trivial Flask app answering a fixed
JSON object (bench/trivial_app.py). The same wrk load (`--connections` keep-alive connections, two
threads) is put on: the trivial endpoint, the features endpoint and the credit-risk endpoint (random
client ids from a Lua script), alternating over `--rounds` rounds; the medians are reported with
their ratios to the trivial endpoint. It needs wrk on PATH (Debian: apt-get install wrk).
Results are printed and written to `bench/results/service.json`.
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

from serving.store import OnlineStore
from tests.redis_servers import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent

WORK = ROOT / "var" / "bench" / "service"
RESULTS = ROOT / "bench" / "results" / "service.json"
RECORD = {"nb_previous_loans": 12, "avg_amount_loans_previous": 2134.56789, "age": 41, "years_on_the_job": 7,
          "flag_own_car": 1, "loan_date": "2020-11-05", "score": 0.4123456789, "label": 0,
          "model_version": "m1"}  # fmt: skip
LUA = """
math.randomseed(%d)
request = function()
  return wrk.format("GET", string.format("%s", math.random(1, %d)))
end
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


def wrk(url_path: str, port: int, clients: int, seconds: int, connections: int) -> dict[str, float]:
    """Requests per second and latency percentiles (ms) of one wrk run."""
    script = WORK / "load.lua"
    script.write_text(LUA % (42, url_path, clients))
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
        store = OnlineStore.from_url(server.url, 1.0, 10.0)
        store.begin("bench", {"source": "bench"})
        store.write("bench", ((i, RECORD) for i in range(1, args.clients + 1)))
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
    for name in ("features", "credit_risk"):
        figures[f"{name}_rps_vs_trivial"] = median[name]["rps"] / median["trivial"]["rps"]
        figures[f"{name}_p99_vs_trivial"] = median[name]["p99_ms"] / median["trivial"]["p99_ms"]
    figures["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"gunicorn (conf/gunicorn.conf.py), wrk 2 threads {args.connections} connections, "
          f"{args.rounds} x {args.seconds} s per endpoint, medians")  # fmt: skip
    print(f"{'endpoint':<12} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}  vs trivial (rps, p99)")
    for name, m in median.items():
        ratio = "" if name == "trivial" else (f"  {figures[f'{name}_rps_vs_trivial']:.2f} (target >= 0.80), "
                                               f"{figures[f'{name}_p99_vs_trivial']:.2f} (target <= 2.0)")  # fmt: skip
        print(f"{name:<12} {m['rps']:>9,.0f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} {m['non_2xx']:>8.0f}{ratio}")
    print(f"written to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
