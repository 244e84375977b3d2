"""Prometheus metrics of the service: requests, latency histogram, errors by status, model runs.

Under gunicorn the workers are separate processes: when PROMETHEUS_MULTIPROC_DIR is set (the
gunicorn config in conf/ sets it), each worker writes its values there and /metrics adds them up.

A request's answer is not written to the metrics on the request's path: it is appended to this
process's list of answers (one append), and the answers are added to the metrics at least every
`FLUSH_SECONDS` (a thread of the process, a greenlet under gevent), when this process renders the
page, and when a gunicorn worker exits. In multiprocess mode each metric update costs a lock, a
check of the process id (a system call) and a write to the shared file, three of them per request:
measured under gunicorn with the features endpoint, 35 of a request's 800 Python calls and about
2% of the trivial endpoint's requests per second. So /metrics shows another worker's requests at
most `FLUSH_SECONDS` late (Prometheus scrapes every 15 s or more); the process's own are always there.
"""

from __future__ import annotations

import bisect
import collections
import functools
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter("credit_api_requests_total", "HTTP requests answered", ["method", "endpoint", "status"])
ERRORS = Counter("credit_api_errors_total", "HTTP answers with status 400 or more", ["status"])
LATENCY = Histogram(
    "credit_api_request_duration_seconds", "time to answer a request, by endpoint", ["endpoint"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)  # fmt: skip

MODEL_RUNS = Histogram(
    "credit_model_run_duration_seconds", "time of one run of a version's model (it scores one or more applications)",
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025),
)  # fmt: skip
MODEL_ROWS = Counter("credit_model_rows_total", "applications scored by the model runs")


# Label values are bounded: a made-up HTTP method is counted as "other", never as a new series.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


FLUSH_SECONDS = 1.0
# The answers not yet added to the metrics: (method, endpoint, status, seconds). A deque's append and
# popleft are atomic, so requests on several threads append while another thread flushes.
_answers: collections.deque[tuple[str, str, int, float]] = collections.deque()
# The model runs not yet added: (seconds, rows scored).
_runs: collections.deque[tuple[float, int]] = collections.deque()
_flush_lock = threading.Lock()
_flusher: threading.Thread | None = None
# Beyond this many answers waiting (a flusher that cannot run), the request that adds one flushes.
MAX_WAITING = 50_000


def observe(method: str, endpoint: str, status: int, seconds: float) -> None:
    """Count one answer; `endpoint` is a route template (or "unmatched"), never a raw path. Added to the
    metrics by the next flush (see the module)."""
    _answers.append((method, endpoint, status, seconds))
    if _flusher is None or len(_answers) > MAX_WAITING:
        _start_or_flush()


def flush() -> int:
    """Add the answers observed so far to the metrics; how many."""
    with _flush_lock:
        counts: collections.Counter[tuple[str, str, int]] = collections.Counter()
        latencies: dict[str, list[float]] = {}
        popleft = _answers.popleft
        taken = 0
        while True:
            try:
                method, endpoint, status, seconds = popleft()
            except IndexError:
                break
            taken += 1
            counts[(method if method in METHODS else "other", endpoint, status)] += 1
            latencies.setdefault(endpoint, []).append(seconds)
        for (method, endpoint, status), count in counts.items():
            requests, errors = _counters(method, endpoint, status)
            requests.inc(count)
            if errors is not None:
                errors.inc(count)
        for endpoint, observed in latencies.items():
            _observe_many(LATENCY.labels(endpoint), observed)
        runs = [_runs.popleft() for _ in range(len(_runs))]  # only this flush pops: len() is a floor
        if runs:
            _observe_many(MODEL_RUNS, [seconds for seconds, _ in runs])
            MODEL_ROWS.inc(sum(rows for _, rows in runs))
        return taken


def _observe_many(histogram: Any, observed: Sequence[float]) -> None:
    """`histogram.observe(x)` for each x, with one update of each bucket and of the sum (prometheus_client has
    no public call for it; a test checks the result against `observe`)."""
    bounds = histogram._upper_bounds  # the last is +Inf: every duration falls in a bucket
    buckets = [0] * len(bounds)
    for seconds in observed:
        buckets[bisect.bisect_left(bounds, seconds)] += 1
    histogram._sum.inc(sum(observed))
    for value, count in zip(histogram._buckets, buckets, strict=True):
        if count:
            value.inc(count)


def _start_or_flush() -> None:
    """The first answer starts this process's flusher (a gunicorn worker: after the fork); with too many
    answers waiting, flush here."""
    global _flusher
    if _flusher is None:
        with _flush_lock:
            if _flusher is None:
                _flusher = threading.Thread(target=_flush_every, args=(FLUSH_SECONDS,), name="metrics-flusher",
                                            daemon=True)  # fmt: skip
                _flusher.start()
    if len(_answers) > MAX_WAITING:
        flush()


def _forget_in_child() -> None:
    """A forked child starts with no answers (they are its parent's to count) and no flusher."""
    global _flusher
    _flusher = None
    _answers.clear()
    _runs.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def _flush_every(seconds: float) -> None:
    while True:
        time.sleep(seconds)
        try:
            flush()
        except Exception:  # a full disk for the metrics folder: the next flush tries again
            logging.getLogger(__name__).exception("could not write the metrics")


def model_run(model: Any, rows: Sequence[Any]) -> list[float]:
    """`model.scores(rows)`: one run of a model over `rows` applications, timed and counted (by the next flush,
    as the answers)."""
    started = time.perf_counter()
    scores: list[float] = model.scores(rows)
    _runs.append((time.perf_counter() - started, len(rows)))
    return scores


@functools.cache
def _counters(method: str, endpoint: str, status: int) -> tuple[Any, Any]:
    """The counters' children of one label set, looked up once (`labels()` costs microseconds a call): the
    label values are bounded, so is this cache."""
    error = ERRORS.labels(str(status)) if status >= 400 else None
    return REQUESTS.labels(method, endpoint, str(status)), error


def render() -> tuple[bytes, str]:
    """The metrics page: this process's, or every worker's in multiprocess mode."""
    flush()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
