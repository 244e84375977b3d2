"""Prometheus metrics of the service: requests, latency histogram, errors by status, model runs.

Under gunicorn the workers are separate processes: when PROMETHEUS_MULTIPROC_DIR is set (the
gunicorn config in conf/ sets it), each worker writes its values there and /metrics adds them up.
"""

from __future__ import annotations

import functools
import os
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


def observe(method: str, endpoint: str, status: int, seconds: float) -> None:
    """Count one answer; `endpoint` is a route template (or "unmatched"), never a raw path."""
    counters = _children(method if method in METHODS else "other", endpoint, status)
    counters[0].inc()
    counters[1].observe(seconds)
    if counters[2] is not None:
        counters[2].inc()


def model_run(model: Any, rows: Sequence[Any]) -> list[float]:
    """`model.scores(rows)`: one run of a model over `rows` applications, timed and counted."""
    started = time.perf_counter()
    scores: list[float] = model.scores(rows)
    MODEL_RUNS.observe(time.perf_counter() - started)
    MODEL_ROWS.inc(len(rows))
    return scores


@functools.cache
def _children(method: str, endpoint: str, status: int) -> tuple[Any, Any, Any]:
    """The metrics' children of one label set, looked up once (`labels()` costs microseconds a call):
    the label values are bounded, so is this cache."""
    error = ERRORS.labels(str(status)) if status >= 400 else None
    return REQUESTS.labels(method, endpoint, str(status)), LATENCY.labels(endpoint), error


def render() -> tuple[bytes, str]:
    """The metrics page: this process's, or every worker's in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
