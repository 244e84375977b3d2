"""Benchmark of the feature job, with every figure measured side by side in one run.

    .venv/bin/python -m bench.bench_features [--clients 36457] [--repeat 3] [--loop-sample 300] [--scale 10]
        [--copies 5]

On the same generated CSV it times: the feature job (`spark_jobs.features.run`); a bare Spark
read-and-write of the same CSV with the same reader options (Spark's floor), also started from the
class archive the job's driver maps when there is one (`credit/class_archive.py`); the five features
computed the naive way (`bench/naive_features.py`: no validation, ties and ages wrong); the data
scientists' per-client loop
(notebook 1: for each client, for each loan, the mean of the amounts on strictly earlier dates),
timed on a sample of clients and scaled by the client count; and a vectorized pandas version of the
two window features. Spark figures are medians of `--repeat` alternating runs after one warm-up.
`--scale N` also runs the three Spark jobs once on N times the data, `--copies P` once on the data with
P% of its loans read twice (exact copies appended), which the job compares whole.
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

from bench.procfs import rss_kib, tree
from conf import load_settings
from credit.launcher import class_archive_options
from datagen.generate import write_csv

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


def with_copies(source: Path, percent: int) -> Path:
    """`source` with `percent`% of its loans read twice (every n-th data line appended again): the rows
    the job compares whole, as a lender's export with duplicates has them. Made once and reused."""
    path = source.with_name(f"{source.stem}-copies{percent}{source.suffix}")
    if not path.exists():
        step = max(1, round(100 / percent))
        with source.open(encoding="utf-8") as lines, path.open("w", encoding="utf-8") as out:
            header = next(lines)
            out.write(header)
            copies = []
            for index, line in enumerate(lines):
                out.write(line)
                if index % step == 0:
                    copies.append(line)
            out.writelines(copies)
    return path


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def peak_rss_mib(process: subprocess.Popen, poll: float = 0.1) -> float:
    """Wait for the process; the peak of the summed resident memory of it and its descendants (MiB)."""
    peak = 0
    while process.poll() is None:
        peak = max(peak, sum(rss_kib(pid) for pid in tree(process.pid)))
        time.sleep(poll)
    return peak / 1024


def end_to_end(command: list[str], what: str) -> tuple[float, float]:
    """Seconds and peak memory (MiB) of a command, run from the checkout as a user would."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = peak_rss_mib(process)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        sys.exit(f"{what} failed ({process.returncode}): {process.stderr.read()[-2000:] if process.stderr else ''}")
    return seconds, peak


def spark_figures(source: Path, repeat: int, label: str = "") -> dict[str, object]:
    """Median seconds and peak memory of the feature job, of the bare read-and-write and of the naive
    feature job, all end to end through spark-submit (JVM start included, as a user sees them),
    alternating, after a warm-up."""
    job_out, bare_out, naive_out = WORK / "job-out", WORK / "bare-out", WORK / "naive-out"
    spark_submit = Path(sys.executable).parent / "spark-submit"
    memory = os.environ.get("SPARK_DRIVER_MEMORY", "6g")

    def submitted(script: str, out: Path, *options: str) -> list[str]:
        return [str(spark_submit), "--master", "local[*]", "--driver-memory", memory, "--conf",
                "spark.ui.showConsoleProgress=false", *options, str(ROOT / "bench" / script), str(source),
                str(out)]  # fmt: skip

    commands = {
        "bare": (submitted("bare_read_write.py", bare_out), "the bare read-and-write"),
        "job": (["./spark-submit.sh", "features", "--input", str(source), "--output", str(job_out)], "the feature job"),
        "naive": (submitted("naive_features.py", naive_out), "the naive feature job"),
    }
    if archived := class_archive_options():
        # The job's driver maps the class archive (credit/class_archive.py); so does this floor, which tells
        # what of the job's time against the plain floor is the archive's.
        bare = submitted("bare_read_write.py", bare_out, "--driver-java-options", archived)
        commands["bare_archived"] = (bare, "the bare read-and-write, from the class archive")
    end_to_end(*commands["bare"])  # warm-up: the CSV in the file cache
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, (command, what) in commands.items():
            runs[name].append(end_to_end(command, what))
    for out in (job_out, bare_out, naive_out):
        shutil.rmtree(out, ignore_errors=True)
    seconds = {name: statistics.median(s for s, _ in measured) for name, measured in runs.items()}
    figures: dict[str, object] = {}
    for name, measured in runs.items():
        figures[f"{label}{name}_s"] = seconds[name]
        figures[f"{label}{name}_peak_mib"] = max(m for _, m in measured)
        figures[f"{label}{name}_runs"] = [s for s, _ in measured]
    for slower, faster in (("job", "bare"), ("naive", "bare"), ("job", "naive"), ("job", "bare_archived")):
        if faster in seconds:
            figures[f"{label}{slower}_over_{faster}"] = seconds[slower] / seconds[faster]
    return figures


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=load_settings().sample.clients)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--loop-sample", type=int, default=300)
    parser.add_argument("--scale", type=int, default=0, help="also run on this many times the data (0: skip)")
    parser.add_argument("--copies", type=int, default=5,
                        help="also run on the data with this percentage of loans read twice (0: skip)")  # fmt: skip
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    source = dataset(args.clients)

    figures: dict[str, object] = {"rows": sum(1 for _ in source.open()) - 1, "clients": args.clients}
    figures |= spark_figures(source, args.repeat)
    loop, vectorized = loop_figures(source, args.loop_sample), pandas_figures(source)
    figures |= loop | vectorized
    job_s = figures["job_s"]
    assert isinstance(job_s, float)
    figures["loop_over_job"] = loop["loop_s"] / job_s
    figures["pandas_over_job"] = vectorized["pandas_s"] / job_s
    if args.scale:
        big = dataset(args.clients * args.scale)
        figures[f"scale_{args.scale}_rows"] = sum(1 for _ in big.open()) - 1
        figures |= spark_figures(big, 1, f"scale_{args.scale}_")
    if args.copies:
        figures |= spark_figures(with_copies(source, args.copies), 1, f"copies_{args.copies}_")
    figures["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}

    print(f"\nfeature job on {figures['rows']} loans, {args.clients} clients ({os.cpu_count()} cores)")
    print(f"  feature job, end to end     {figures['job_s']:8.2f} s   peak memory {figures['job_peak_mib']:,.0f} MiB")
    print(f"  bare read+write, end to end {figures['bare_s']:8.2f} s   peak memory {figures['bare_peak_mib']:,.0f} MiB")
    naive_s, naive_mib = figures["naive_s"], figures["naive_peak_mib"]
    print(f"  naive features, end to end  {naive_s:8.2f} s   peak memory {naive_mib:,.0f} MiB")
    print(f"  per-client loop (scaled)    {figures['loop_s']:8.2f} s   from {figures['loop_sample_s']:.2f}s "
          f"on {figures['loop_sample_clients']} clients")  # fmt: skip
    print(f"  vectorized pandas           {figures['pandas_s']:8.2f} s")
    print(f"  loop / job                  {figures['loop_over_job']:8.1f} x")
    print(f"  job / bare read+write       {figures['job_over_bare']:8.2f} x   (target <= 1.5)")
    if "job_over_bare_archived" in figures:
        print(f"  job / bare from the archive {figures['job_over_bare_archived']:8.2f} x   (the floor from the "
              f"same class archive: {figures['bare_archived_s']:.2f} s)")  # fmt: skip
    print(f"  naive / bare read+write     {figures['naive_over_bare']:8.2f} x   (no validation, ties and ages wrong)")
    print(f"  job / naive                 {figures['job_over_naive']:8.2f} x")
    print(f"  pandas / job                {figures['pandas_over_job']:8.2f} x")
    if args.scale:
        k = f"scale_{args.scale}_"
        print(f"  {args.scale}x data ({figures[k + 'rows']:,} loans): job {figures[k + 'job_s']:.1f} s "
              f"({figures[k + 'job_peak_mib']:,.0f} MiB), bare {figures[k + 'bare_s']:.1f} s "
              f"({figures[k + 'bare_peak_mib']:,.0f} MiB): {figures[k + 'job_over_bare']:.2f} x "
              f"(target <= 1.5); naive {figures[k + 'naive_s']:.1f} s: {figures[k + 'naive_over_bare']:.2f} x "
              f"bare, job / naive {figures[k + 'job_over_naive']:.2f} x")  # fmt: skip
        if k + "job_over_bare_archived" in figures:
            print(f"    bare from the class archive {figures[k + 'bare_archived_s']:.1f} s: job / it "
                  f"{figures[k + 'job_over_bare_archived']:.2f} x")  # fmt: skip
    if args.copies:
        k = f"copies_{args.copies}_"
        print(f"  {args.copies}% of the loans read twice: job {figures[k + 'job_s']:.1f} s, bare "
              f"{figures[k + 'bare_s']:.1f} s: {figures[k + 'job_over_bare']:.2f} x; naive "
              f"{figures[k + 'naive_s']:.1f} s, job / naive {figures[k + 'job_over_naive']:.2f} x")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
