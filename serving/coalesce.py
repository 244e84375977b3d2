"""Concurrent reads in a gevent worker, sent to Redis as one pipeline.

Under gunicorn's gevent workers every request is a greenlet, and a request's HGETALL alone costs a
send, a readiness check and a receive on its socket: on a busy worker those system calls, not Redis,
are most of a request's time. And a burst of requests each holding a connection of its own would
exhaust any pool. Here the greenlets that read while a batch is being gathered share one round trip
and one connection: the first (the leader) yields once to the event loop, so that the requests
already readable in this turn of the loop add their keys, then sends every key gathered in one
non-transactional pipeline and hands each greenlet its own answers (or its own error). No request
waits for a later one: a lone request is sent after that single yield.

Outside gevent (threads, the command line, tests with a plain Flask client) a read goes straight to
Redis, as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any


def gevent_patched() -> bool:
    """Whether this process runs under gevent's monkey-patching (a gunicorn gevent worker)."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a runtime dependency
        return False
    return bool(monkey.is_module_patched("socket"))


class BatchedReads:
    """Read commands on single keys (`GET`, `HGETALL`) of a redis-py client, batched across greenlets
    through its `pipeline()` (see the module). A request reading several keys (a batch endpoint) joins
    with all of them."""

    def __init__(self, client: Any, batch_limit: int = 1024) -> None:
        import gevent
        from gevent.event import AsyncResult

        self._yield = gevent.sleep
        self._waiter = AsyncResult
        self._client = client
        self._batch_limit = batch_limit
        self._pending: list[tuple[str, Sequence[str], Any]] = []
        self._gathering = False
        self.batches = 0  # round trips sent (for tests and benchmarks)
        self.reads = 0  # commands they carried

    def get(self, key: str) -> Any:
        return self.many("get", [key])[0]

    def hgetall(self, key: str) -> Any:
        return self.many("hgetall", [key])[0]

    def many(self, command: str, keys: Sequence[str]) -> list[Any]:
        """`command` on each key, in order; an error answering any of them is raised."""
        waiter = self._waiter()
        self._pending.append((command, keys, waiter))
        if not self._gathering:
            self._gathering = True
            try:
                self._yield(0)  # the greenlets readable in this turn of the loop add their keys
            finally:
                pending, self._pending = self._pending, []
                self._gathering = False
                # Sent even when the leader is interrupted (a timeout): the others wait on these answers.
                for batch in _batches(pending, self._batch_limit):
                    self._send(batch)
        answers: list[Any] = waiter.get()
        return answers

    def _send(self, batch: list[tuple[str, Sequence[str], Any]]) -> None:
        self.batches += 1
        self.reads += sum(len(keys) for _, keys, _ in batch)
        if len(batch) == 1 and len(batch[0][1]) == 1:
            command, (key,), waiter = batch[0]
            try:
                waiter.set([getattr(self._client, command)(key)])
            except Exception as exc:
                waiter.set_exception(exc)
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for command, keys, _ in batch:
                for key in keys:
                    getattr(pipe, command)(key)
            answers = pipe.execute(raise_on_error=False)
        except Exception as exc:
            for *_, waiter in batch:
                waiter.set_exception(exc)
            return
        start = 0
        for _, keys, waiter in batch:
            own = answers[start : start + len(keys)]
            start += len(keys)
            error = next((a for a in own if isinstance(a, Exception)), None)
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set(own)


def _batches(
    pending: list[tuple[str, Sequence[str], Any]], limit: int
) -> Iterator[list[tuple[str, Sequence[str], Any]]]:
    """The pending reads in pipelines of about `limit` commands (a request's keys are never split)."""
    batch: list[tuple[str, Sequence[str], Any]] = []
    size = 0
    for entry in pending:
        if batch and size + len(entry[1]) > limit:
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += len(entry[1])
    if batch:
        yield batch
