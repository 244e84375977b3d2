"""Helpers shared by the tests: threads whose errors fail the test, an HTTP client, clean environments."""

from __future__ import annotations

import json
import os
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@contextmanager
def background(*targets: Callable[[threading.Event], None]) -> Iterator[threading.Event]:
    """Run each `target(stop)` in a thread until the block ends and sets `stop`; an exception raised in a
    thread is raised again here, so a failing reader fails the test instead of being a mere warning."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def guarded(target: Callable[[threading.Event], None]) -> None:
        try:
            target(stop)
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=guarded, args=(t,), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    try:
        yield stop
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    if errors:
        raise AssertionError(f"{len(errors)} background thread(s) failed; the first: {errors[0]!r}") from errors[0]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a command as a user would run it: no PYTHONPATH, nothing of the test run."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "JAVA_HOME", "USER")
    return {**{k: os.environ[k] for k in keep if k in os.environ}, "SPARK_DRIVER_MEMORY": "1g", **extra}


class Http:
    """A small JSON client of the service (urllib: one connection per request)."""

    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, path: str, method: str = "GET") -> tuple[int, dict | str]:
        return self.request(urllib.request.Request(self.base + path, method=method))

    def post(self, path: str, body: object) -> tuple[int, dict | str]:
        data = json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data, {"Content-Type": "application/json"}, method="POST")
        return self.request(req)

    @staticmethod
    def request(req: urllib.request.Request) -> tuple[int, dict | str]:
        try:
            with urllib.request.urlopen(req, timeout=10) as answer:
                status, body, kind = answer.status, answer.read().decode(), answer.headers.get_content_type()
        except urllib.error.HTTPError as error:
            status, body, kind = error.code, error.read().decode(), error.headers.get_content_type()
        return status, json.loads(body) if kind == "application/json" else body
