"""Benchmark of the stream: how fresh the application answer is, and how fast loans are applied.

    .venv/bin/python -m bench.bench_stream [--clients 36457] [--seconds 60] [--files-per-second 1]
                                           [--loans-per-file 10] [--burst 50000]

1. A sample history of `--clients` clients (as `make demo`) through `./spark-submit.sh features`; a model
   (a forest trained on synthetic features, as bench_service); `./spark-submit.sh materialize` into a
   fresh redis-server: the batch load rate (clients per second, from its summary).
2. `./spark-submit.sh stream` with the default trigger (conf/settings.toml) on an empty landing folder.
3. Freshness: for `--seconds`, a file of `--loans-per-file` new loans (each of a client not used before)
   lands every 1/`--files-per-second` s, renamed into the folder. A poller asks the application endpoint
   (the Flask app in this process, on the same Redis) for each loan's client until its history counts
   the loan: the time from the file's rename to that answer. p50, p95, max.
4. Rate: one file of `--burst` loans lands; the time until the version's meta counts them all gives the
   loans per second the stream applies (reading, checking and applying), next to the batch load rate.

Results are printed and written to `bench/results/stream.json`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.bench_service import portable_model
from datagen.generate import FIRST_CLIENT_ID, write_csv
from datagen.landed import LANDED_LOAN_IDS, landed_rows, write_landed
from serving.app import create_app
from serving.store import OnlineStore
from tests.redis_servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "var" / "bench" / "stream"
RESULTS = ROOT / "bench" / "results" / "stream.json"
TARGET_P95_SECONDS = 10.0


def run(command: list[str], log: Path) -> str:
    """Run a pipeline command as a user would; its stderr (also kept in `log`)."""
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    log.write_text(done.stderr)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[:2])} failed ({done.returncode}), see {log}")
    return done.stderr


def history(clients: int) -> Path:
    """The feature job's outputs for a sample of `clients` clients (kept between runs)."""
    out = WORK / f"out-{clients}"
    if not (out / "report.json").exists():
        raw = WORK / f"raw-{clients}" / "loans.csv"
        write_csv(raw, clients, seed=42)
        run(["./spark-submit.sh", "features", "--input", str(raw), "--output", str(out)], WORK / "features.log")
    return out


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=36457)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--files-per-second", type=float, default=1.0)
    parser.add_argument("--loans-per-file", type=int, default=10)
    parser.add_argument("--burst", type=int, default=50_000)
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    out = history(args.clients)
    portable_model()  # the approved model of bench_service's registry
    models = ROOT / "var" / "bench" / "service" / "models"
    for folder in ("landing", "checkpoint", "quarantine", "redis"):
        shutil.rmtree(WORK / folder, ignore_errors=True)
    server = RedisServer(WORK / "redis").start()
    stream = None
    try:
        url = server.url
        loaded = run(["./spark-submit.sh", "materialize", "--features", str(out / "features"), "--models", str(models),
                      "--redis-url", url], WORK / "materialize.log")  # fmt: skip
        batch_rate = float(re.search(r"\(([\d,]+) clients/s\)", loaded).group(1).replace(",", ""))  # type: ignore[union-attr]
        store = OnlineStore.from_url(url, version_cache_seconds=0)
        version = store.active_version()
        assert version is not None
        landing = WORK / "landing"
        landing.mkdir()
        log = (WORK / "stream.log").open("w")
        stream = subprocess.Popen(["./spark-submit.sh", "stream", "--landing", str(landing), "--checkpoint",
                                   str(WORK / "checkpoint"), "--quarantine", str(WORK / "quarantine"), "--redis-url",
                                   url], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
        app = create_app({"REDIS_URL": url}).test_client()
        today = dt.datetime.now(dt.UTC).date()
        rng = random.Random(1)
        fresh = iter(rng.sample(range(FIRST_CLIENT_ID, FIRST_CLIENT_ID + args.clients), args.clients))
        next_id = iter(range(LANDED_LOAN_IDS, LANDED_LOAN_IDS + 10**9))

        def loans_of(client_id: int) -> int:
            answer = app.post("/v1/applications/credit-risk", json={"client_id": client_id})
            return int(answer.json["history"]["loans"]) if answer.status_code == 200 else -1  # type: ignore[index]

        def land(count: int, clients: list[int] | None = None) -> tuple[float, list[tuple[int, int]]]:
            rows = landed_rows(count, rng.randrange(10**9), next(next_id), today, args.clients)
            for _ in range(count - 1):
                next(next_id)
            expected = []
            if clients is not None:
                for row, client_id in zip(rows, clients, strict=True):
                    row["id"] = str(client_id)
                    expected.append((client_id, loans_of(client_id) + 1))
            write_landed(landing, rows, f"loans-{rows[0]['loan_id']}.csv")
            return time.monotonic(), expected

        def wait_visible(expected: list[tuple[int, int]], since: float, timeout: float) -> float:
            while any(loans_of(c) < n for c, n in expected):
                if time.monotonic() - since > timeout:
                    raise TimeoutError(f"landed loans not visible after {timeout:.0f} s (see {WORK / 'stream.log'})")
                time.sleep(0.02)
            return time.monotonic() - since

        print("stream started; warming up (the first micro-batch reads the version's history)", flush=True)
        landed_at, expected = land(1, [next(fresh)])
        print(f"first loan visible after {wait_visible(expected, landed_at, 300):.1f} s", flush=True)

        latencies: list[float] = []
        pending: list[tuple[float, list[tuple[int, int]]]] = []
        lock = threading.Lock()
        done = threading.Event()

        def poll() -> None:
            # The store in one pipelined read for every pending loan (cheap: the poller must not take the
            # stream's CPU), then the application endpoint once per file, for the answer itself.
            while not done.is_set() or pending:
                with lock:
                    items = list(pending)
                clients = [c for _, expected in items for c, _ in expected]
                records = store.read_version_many(version, clients) if clients else []
                loans = {c: (r or {}).get("loans", 0) for c, r in zip(clients, records, strict=True)}
                for item in items:
                    since, expected = item
                    first, count = expected[0]
                    if all(loans[c] >= n for c, n in expected) and loans_of(first) >= count:
                        latencies.append(time.monotonic() - since)
                        with lock:
                            pending.remove(item)
                    elif time.monotonic() - since > 120:
                        raise TimeoutError("a landed file was not visible after 120 s")
                time.sleep(0.05)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        interval = 1.0 / args.files_per_second
        started = time.monotonic()
        files = 0
        while time.monotonic() - started < args.seconds:
            item = land(args.loans_per_file, [next(fresh) for _ in range(args.loans_per_file)])
            with lock:
                pending.append(item)
            files += 1
            time.sleep(max(0.0, started + files * interval - time.monotonic()))
        done.set()
        poller.join(180)

        before = int(store.meta(version).get("stream_loans", 0))
        burst_at, _ = land(args.burst)
        while int(store.meta(version).get("stream_loans", 0)) < before + args.burst:
            if time.monotonic() - burst_at > 900:
                raise TimeoutError("the burst was not applied within 900 s")
            time.sleep(0.1)
        burst_seconds = time.monotonic() - burst_at
    finally:
        if stream is not None and stream.poll() is None:
            stream.send_signal(signal.SIGTERM)
            stream.wait(120)
        server.stop()

    trigger = re.search(r"every ([\d.]+) s", (WORK / "stream.log").read_text())
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "clients": args.clients,
        "trigger_seconds": float(trigger.group(1)) if trigger else None,
        "files": files,
        "loans_per_file": args.loans_per_file,
        "freshness_seconds": {
            "p50": round(statistics.median(latencies), 3),
            "p95": round(percentile(latencies, 0.95), 3),
            "max": round(max(latencies), 3),
        },
        "freshness_target_p95_seconds": TARGET_P95_SECONDS,
        "burst_loans": args.burst,
        "burst_seconds": round(burst_seconds, 2),
        "stream_loans_per_second": round(args.burst / burst_seconds, 1),
        "batch_load_clients_per_second": batch_rate,
    }
    f = result["freshness_seconds"]
    print(f"freshness over {files} files of {args.loans_per_file} loans (trigger {result['trigger_seconds']} s): "
          f"p50 {f['p50']:.2f} s, p95 {f['p95']:.2f} s (target <= {TARGET_P95_SECONDS:.0f} s: "
          f"{'met' if f['p95'] <= TARGET_P95_SECONDS else 'NOT met'}), max {f['max']:.2f} s")  # fmt: skip
    print(f"a burst of {args.burst:,} loans applied in {burst_seconds:.1f} s: {result['stream_loans_per_second']:,.0f} "
          f"loans/s by the stream, against {batch_rate:,.0f} clients/s written by the batch load")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
