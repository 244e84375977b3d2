"""Concurrent reads in a gevent worker sent to Redis as one pipeline, and concurrent scorings run as one.

Under gunicorn's gevent workers every request is a greenlet, and a request's HMGET alone costs a
send, a readiness check and a receive on its socket: on a busy worker those system calls, not Redis,
are most of a request's time. And a burst of requests each holding a connection of its own would
exhaust any pool. Here the greenlets that read while a batch is being gathered share one round trip
and one connection: the first (the leader) yields once to the event loop, so that the requests
already readable in this turn of the loop add their keys, then sends every key gathered in one
pipelined write and hands each greenlet its own answers (or its own error). No request waits for a
later one: a lone request is sent after that single yield.

On a single Redis the round trip is written and read on a redis-py connection that the batcher keeps
between round trips (`pack_commands`, `send_packed_command`, `read_response`): the client's pipeline
object would add, per round trip, a readiness poll of the socket on checkout (a system call) and its
own bookkeeping; without them the features endpoint answers 6 to 15% more requests per second on the
same load (measured side by side under gunicorn). A connection that fails is disconnected and handed
back to the pool, so no half-read answer is ever left on a kept one; a kept connection found broken
(Redis restarted) is reconnected and the round trip sent again once, as the client's own retry does.
On a Redis Cluster the batch goes through the cluster client's pipeline, which routes each key to its
node.

The applications scored in the same turn of the loop share one run of their model the same way
(`BatchedScores`).

Outside gevent (threads, the command line, tests with a plain Flask client) a read goes straight to
Redis and a scoring straight to its model, as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import redis


def gevent_patched() -> bool:
    """Whether this process runs under gevent's monkey-patching (a gunicorn gevent worker)."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a runtime dependency
        return False
    return bool(monkey.is_module_patched("socket"))


# The connections a batcher keeps between round trips: more than a few round trips at once are overlapping
# ones (Redis slow to answer), whose connections go back to the pool, which the store's other commands
# (a model's load, the active version) share.
KEPT_CONNECTIONS = 4

Entry = tuple[Any, Sequence[Any], Any]  # (what: a command or a model, its items: keys or rows, the waiter)


class Gathering:
    """The calls that greenlets make in the same turn of the event loop, run together: the first (the
    leader) yields once, then runs every call gathered meanwhile (`_run`) and each greenlet gets its own
    answers (see the module)."""

    def __init__(self) -> None:
        import gevent
        from gevent.event import AsyncResult

        self._yield = gevent.sleep
        self._waiter = AsyncResult
        self._pending: list[Entry] = []
        self._gathering = False

    def _join(self, what: Any, items: Sequence[Any]) -> list[Any]:
        """The answers to `items` (one each, in order); an error answering any of them is raised."""
        waiter = self._waiter()
        self._pending.append((what, items, waiter))
        if not self._gathering:
            self._gathering = True
            try:
                self._yield(0)  # the greenlets readable in this turn of the loop add their calls
            finally:
                pending, self._pending = self._pending, []
                self._gathering = False
                # Run even when the leader is interrupted (a timeout): the others wait on these answers.
                self._run(pending)
        answers: list[Any] = waiter.get()
        return answers

    def _run(self, pending: list[Entry]) -> None:
        raise NotImplementedError


def _hand_out(entries: list[Entry], answers: list[Any]) -> None:
    """Each entry's own slice of the answers to all their items, in order; an entry with an error among its
    answers gets that error."""
    start = 0
    for _, items, waiter in entries:
        own = answers[start : start + len(items)]
        start += len(items)
        error = next((a for a in own if isinstance(a, Exception)), None)
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set(own)


class BatchedReads(Gathering):
    """Read commands on single keys (`GET`, `HGETALL`, `HMGET`) of a redis-py client, batched across greenlets
    (see the module). A request reading several keys (a batch endpoint) joins with all of them."""

    def __init__(self, client: Any, batch_limit: int = 1024) -> None:
        super().__init__()
        self._client = client
        self._batch_limit = batch_limit
        self.batches = 0  # round trips sent (for tests and benchmarks)
        self.reads = 0  # commands they carried
        # The pool of a single Redis (None for a cluster client), and its connections kept between round trips.
        self._pool: Any = getattr(client, "connection_pool", None)
        self._kept: list[Any] = []

    @property
    def kept_connections(self) -> int:
        """The connections kept between round trips now (for tests)."""
        return len(self._kept)

    def get(self, key: str) -> Any:
        return self.many("GET", [key])[0]

    def hgetall(self, key: str) -> Any:
        return self.many("HGETALL", [key])[0]

    def hmget(self, key: str, fields: Sequence[str]) -> Any:
        return self.many("HMGET", [key], fields)[0]

    def many(self, command: str, keys: Sequence[str], args: Sequence[str] = ()) -> list[Any]:
        """`command key *args` for each key, in order; an error answering any of them is raised."""
        return self._join((command, *args), keys)

    def _run(self, pending: list[Entry]) -> None:
        for batch in _batches(pending, self._batch_limit):
            self._send(batch)

    def _send(self, batch: list[Entry]) -> None:
        self.batches += 1
        commands = [(command[0], key, *command[1:]) for command, keys, _ in batch for key in keys]
        self.reads += len(commands)
        try:
            answers = self._round_trip(commands) if self._pool is not None else self._pipelined(commands)
        except Exception as exc:
            answers = [exc] * len(commands)
        _hand_out(batch, answers)

    def _round_trip(self, commands: list[tuple[str, ...]]) -> list[Any]:
        """The answers (an error reply as its exception) on a kept connection of the pool."""
        kept = bool(self._kept)
        connection = self._kept.pop() if kept else self._pool.get_connection()
        try:
            try:
                answers = _exchange(connection, commands)
            except redis.ConnectionError:
                if not kept:  # a fresh connection that fails: Redis is down, no second try
                    raise
                connection.disconnect()  # kept, then broken (a restarted Redis): once more, reconnected
                answers = _exchange(connection, commands)
        except BaseException:  # an error or an interrupted greenlet: the answers may be half read
            connection.disconnect()
            self._pool.release(connection)
            raise
        if len(self._kept) < KEPT_CONNECTIONS:
            self._kept.append(connection)
        else:  # round trips that overlapped (a slow Redis) used more: back to the pool for the other callers
            self._pool.release(connection)
        return answers

    def _pipelined(self, commands: list[tuple[str, ...]]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        answers: list[Any] = pipe.execute(raise_on_error=False)
        return answers


def _exchange(connection: Any, commands: list[tuple[str, ...]]) -> list[Any]:
    """The commands written at once on the connection, then their answers read in order; an error reply is
    its exception in the list. A `HGETALL` answer is a dict, as the client gives it."""
    connection.send_packed_command(connection.pack_commands(commands), check_health=False)
    answers: list[Any] = []
    for command in commands:
        try:
            answer = connection.read_response()
        except redis.ResponseError as error:
            answer = error
        if command[0] == "HGETALL" and isinstance(answer, list):  # RESP2 gives field, value, ...; RESP3 a map
            fields = iter(answer)
            answer = dict(zip(fields, fields, strict=True))
        answers.append(answer)
    return answers


def _batches(pending: list[Entry], limit: int) -> Iterator[list[Entry]]:
    """The pending reads in pipelines of about `limit` commands (a request's keys are never split)."""
    batch: list[Entry] = []
    size = 0
    for entry in pending:
        if batch and size + len(entry[1]) > limit:
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += len(entry[1])
    if batch:
        yield batch


class BatchedScores(Gathering):
    """Scoring runs of a model, batched across greenlets: the rows that concurrent application requests
    score in the same turn of the loop go through one run of each model they use. A run's fixed cost
    (onnxruntime's call, its inputs, the trees brought into the cache) is shared: one row alone costs
    about 22 us, four rows together about 48 us. Rows are only ever scored by their own model (grouped by
    the model object, so one version's rows never meet another's model), and a row's score is the same
    alone or in a batch (a tree ensemble scores each row on its own)."""

    def __init__(self) -> None:
        super().__init__()
        self.runs = 0  # model runs (for tests and benchmarks)
        self.rows = 0  # rows they scored

    def scores(self, model: Any, rows: Sequence[Any]) -> list[float]:
        """`model.scores(rows)`, run together with the other greenlets' rows for the same model."""
        return self._join(model, rows) if rows else []

    def _run(self, pending: list[Entry]) -> None:
        by_model: dict[int, list[Entry]] = {}
        for entry in pending:
            by_model.setdefault(id(entry[0]), []).append(entry)
        for entries in by_model.values():
            rows = [row for _, own, _ in entries for row in own]
            self.runs += 1
            self.rows += len(rows)
            try:
                scores: list[Any] = entries[0][0].scores(rows)
            except Exception as exc:
                scores = [exc] * len(rows)
            _hand_out(entries, scores)
