"""Fail fast while Redis is down or hung: a circuit breaker in front of the online store.

Once a read fails to connect or times out, the breaker opens: every request answers 503 at once
instead of waiting its own timeout on a Redis that does not answer. While open, one request every
`retry_seconds` goes through to Redis as a trial; the first that succeeds closes the breaker, so the
service recovers by itself within about `retry_seconds` of Redis coming back. The log says when the
breaker opens and closes, and how many requests were refused meanwhile, every `report_seconds`:
never one line per refused request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis

log = logging.getLogger(__name__)

T = TypeVar("T")
# Errors that say Redis is not there (down, hung, unreachable), as opposed to refusing one command.
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)


class RedisUnavailable(redis.ConnectionError):
    """Redis was found unreachable a moment ago; the request is refused without trying it."""


class CircuitBreaker:
    def __init__(
        self,
        retry_seconds: float = 0.25,
        report_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.retry_seconds = retry_seconds
        self.report_seconds = report_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._opened_at: float | None = None
        self._next_trial = 0.0
        self._refused = 0  # since the last report
        self._refused_total = 0  # since the breaker opened
        self._reported_at = 0.0
        self._cause = ""

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def call(self, action: Callable[..., T], *args: Any) -> T:
        """`action(*args)` unless the breaker is open and it is not time for a trial (RedisUnavailable)."""
        if self._opened_at is not None and not self._trial():
            raise RedisUnavailable(f"Redis was unreachable ({self._cause}); retrying every {self.retry_seconds} s")
        try:
            result = action(*args)
        except UNREACHABLE as exc:
            self._trip(exc)
            raise
        if self._opened_at is not None:
            self._close()
        return result

    def _trial(self) -> bool:
        now = self._clock()
        with self._lock:
            if now >= self._next_trial:
                self._next_trial = now + self.retry_seconds
                return True
            self._refused += 1
            self._refused_total += 1
            if now - self._reported_at >= self.report_seconds and self._opened_at is not None:
                log.warning("Redis still unreachable after %.0f s (%s): %d requests answered 503 in the last %.0f s",
                            now - self._opened_at, self._cause, self._refused, now - self._reported_at)  # fmt: skip
                self._refused, self._reported_at = 0, now
        return False

    def _trip(self, exc: BaseException) -> None:
        now = self._clock()
        with self._lock:
            self._cause = f"{type(exc).__name__}: {exc}"
            self._next_trial = now + self.retry_seconds
            if self._opened_at is None:
                self._opened_at, self._reported_at = now, now
                self._refused = self._refused_total = 0
                log.warning("Redis unreachable (%s): answering 503 at once, trying Redis again every %s s",
                            self._cause, self.retry_seconds)  # fmt: skip

    def _close(self) -> None:
        with self._lock:
            if self._opened_at is None:
                return
            log.warning("Redis is back after %.1f s; %d requests were answered 503 meanwhile",
                        self._clock() - self._opened_at, self._refused_total)  # fmt: skip
            self._opened_at = None


class RateLimitedLog:
    """One log line per kind of event and period, with how many happened: never a line per request."""

    def __init__(self, logger: logging.Logger, period_seconds: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self._log, self._period, self._clock = logger, period_seconds, clock
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, kind: str, message: str) -> None:
        now = self._clock()
        with self._lock:
            last, count = self._last.get(kind, (-self._period, 0))
            if now - last < self._period:
                self._last[kind] = (last, count + 1)
                return
            self._last[kind] = (now, 0)
        more = f" (and {count} more like it in the last {now - last:.0f} s)" if count else ""
        self._log.warning("%s%s", message, more)
