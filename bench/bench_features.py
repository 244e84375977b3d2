"""Benchmark of the feature job, with every figure measured side by side in one run.

    .venv/bin/python -m bench.bench_features [--clients 36457] [--repeat 3] [--loop-sample 300] [--scale 10]

On the same generated CSV it times: the feature job (`spark_jobs.features.run`); a bare Spark
read-and-write of the same CSV with the same reader options; the data scientists' per-client loop
(notebook 1: for each client, for each loan, the mean of the amounts on strictly earlier dates),
timed on a sample of clients and scaled by the client count; and a vectorized pandas version of the
two window features. Spark figures are medians of `--repeat` alternating runs after one warm-up.
`--scale N` also runs `./spark-submit.sh features` on N times the data and reports how long it took.
Results are printed and written to `bench/results/features.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from pyspark.sql import SparkSession

from conf import load_settings
from datagen.generate import write_csv
from spark_jobs import features as fj
from spark_jobs.session import build_session

ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

WORK = ROOT / "var" / "bench"
RESULTS = ROOT / "bench" / "results" / "features.json"


def dataset(clients: int, seed: int = 42) -> Path:
    """The generated CSV for `clients` clients, made once and reused."""
    path = WORK / f"loans-{clients}-{seed}.csv"
    if not path.exists():
        started = time.perf_counter()
        rows = write_csv(path, clients, seed)
        print(f"generated {rows} rows for {clients} clients in {time.perf_counter() - started:.1f}s")
    return path


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def spark_figures(spark: SparkSession, source: Path, repeat: int) -> dict[str, float]:
    """Median seconds of the feature job and of a bare read-and-write, alternating, after a warm-up."""
    job_out, bare_out = WORK / "job-out", WORK / "bare-out"

    def job() -> None:
        fj.run(spark, fj.FeatureJobArgs(str(source), str(job_out), None))

    def bare() -> None:
        reader = spark.read.csv(
            str(source), header=True, multiLine=True, quote='"', escape='"', inferSchema=False, mode="PERMISSIVE"
        )
        reader.write.mode("overwrite").parquet(str(bare_out))

    job(), bare()  # warm-up: JIT and file cache
    jobs, bares = [], []
    for _ in range(repeat):
        bares.append(timed(bare))
        jobs.append(timed(job))
    return {"job_s": statistics.median(jobs), "bare_s": statistics.median(bares), "job_runs": jobs, "bare_runs": bares}


def notebook_loop(df: pd.DataFrame, clients: list[str]) -> list[float | None]:
    """Notebook 1's algorithm, as written there: filter the whole frame per client, then per loan."""
    averages: list[float | None] = []
    for client_id in clients:
        client = df[df["id"] == client_id]
        for _, row in client.iterrows():
            earlier = client[client["loan_date"] < row["loan_date"]]
            averages.append(earlier["loan_amount"].mean() if len(earlier) else None)
    return averages


def loop_figures(source: Path, sample: int) -> dict[str, float]:
    df = pd.read_csv(source, dtype=str, keep_default_na=False)
    df["loan_amount"] = df["loan_amount"].astype(float)
    df["loan_date"] = pd.to_datetime(df["loan_date"])
    clients = sorted(df["id"].unique())
    picked = clients[:: max(1, len(clients) // sample)][:sample]
    seconds = timed(lambda: notebook_loop(df, picked))
    return {"loop_sample_clients": len(picked), "loop_sample_s": seconds,
            "loop_s": seconds * len(clients) / len(picked)}  # fmt: skip


def pandas_figures(source: Path) -> dict[str, float]:
    """A vectorized pandas version of the two window features, CSV read included."""

    def vectorized() -> None:
        df = pd.read_csv(source, dtype=str, keep_default_na=False)
        df["loan_amount"] = pd.to_numeric(df["loan_amount"], errors="coerce")
        df["loan_id"] = pd.to_numeric(df["loan_id"], errors="coerce")
        df = df.sort_values(["id", "loan_date", "loan_id"])
        grouped = df.groupby("id", sort=False)["loan_amount"]
        df["nb_previous_loans"] = grouped.cumcount()
        previous_sum = grouped.cumsum() - df["loan_amount"]
        df["avg_amount_loans_previous"] = (previous_sum / df["nb_previous_loans"]).where(df["nb_previous_loans"] > 0)

    return {"pandas_s": timed(vectorized)}


def scale_figures(scale: int, clients: int) -> dict[str, object]:
    source = dataset(clients * scale)
    out = WORK / f"scale-{scale}-out"
    started = time.perf_counter()
    done = subprocess.run(["./spark-submit.sh", "features", "--input", str(source), "--output", str(out)],
                          cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    seconds = time.perf_counter() - started
    report = json.loads((out / "report.json").read_text()) if done.returncode == 0 else {}
    if done.returncode != 0:
        print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
    return {"scale": scale, "scale_exit_code": done.returncode, "scale_s": seconds,
            "scale_rows": report.get("rows_read"), "scale_clients": report.get("clients")}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=load_settings().sample.clients)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--loop-sample", type=int, default=300)
    parser.add_argument("--scale", type=int, default=0, help="also run on this many times the data (0: skip)")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    source = dataset(args.clients)

    (
        SparkSession.builder.master("local[*]")
        .config("spark.driver.memory", "6g")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark = build_session(load_settings().spark, "bench")
    figures: dict[str, object] = {"rows": sum(1 for _ in source.open()) - 1, "clients": args.clients}
    figures |= spark_figures(spark, source, args.repeat)
    spark.stop()
    figures |= loop_figures(source, args.loop_sample)
    figures |= pandas_figures(source)
    figures["loop_over_job"] = figures["loop_s"] / figures["job_s"]
    figures["job_over_bare"] = figures["job_s"] / figures["bare_s"]
    figures["pandas_over_job"] = figures["pandas_s"] / figures["job_s"]
    if args.scale:
        figures |= scale_figures(args.scale, args.clients)
    figures["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}

    print(f"\nfeature job on {figures['rows']} loans, {args.clients} clients ({os.cpu_count()} cores)")
    print(f"  feature job (median)        {figures['job_s']:8.2f} s")
    print(f"  bare Spark read+write       {figures['bare_s']:8.2f} s")
    print(f"  per-client loop (scaled)    {figures['loop_s']:8.2f} s   from {figures['loop_sample_s']:.2f}s "
          f"on {figures['loop_sample_clients']} clients")  # fmt: skip
    print(f"  vectorized pandas           {figures['pandas_s']:8.2f} s")
    print(f"  loop / job                  {figures['loop_over_job']:8.1f} x   (target >= 50)")
    print(f"  job / bare read+write       {figures['job_over_bare']:8.2f} x   (target <= 1.5)")
    print(f"  pandas / job                {figures['pandas_over_job']:8.2f} x")
    if args.scale:
        print(f"  {args.scale}x data: exit {figures['scale_exit_code']}, {figures['scale_rows']} rows, "
              f"{figures['scale_s']:.1f} s with ./spark-submit.sh")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    shutil.rmtree(WORK / "job-out", ignore_errors=True)
    shutil.rmtree(WORK / "bare-out", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
