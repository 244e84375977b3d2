"""Concurrent reads in a gevent worker sent to Redis as one pipeline, and concurrent scorings run as one.

Under gunicorn's gevent workers every request is a greenlet, and a request's HMGET alone costs a
send, a readiness check and a receive on its socket, and the switches to the event loop around them:
on a busy worker these, not Redis, are most of a request's time. And a burst of requests each holding
a connection of its own would exhaust any pool. Here one greenlet of the batcher's own (the runner)
does the round trips: a request adds its keys and waits; the runner takes every key added so far,
sends them in one pipelined write, hands each greenlet its own answers (or its own error), and starts
over with the keys added meanwhile. One round trip is in flight at a time, so the busier the worker,
the more requests each one carries (a group commit), and no request waits for a later one: a lone
request is sent at the runner's next turn. Measured side by side under gunicorn (5 rounds, same Redis
and load), the runner took the features endpoint from 0.71 to 0.75 of the trivial endpoint's requests
per second (worker CPU per request 664 -> 620 us), where each request used to lead a round trip of its
own after one turn of the loop, several of them overlapping; the application endpoint moved by +6%, -7%
and +12% in three such runs (no change this machine can tell).

On a single Redis the round trip is written and read on a redis-py connection that the runner keeps
between round trips, the commands packed and the answers parsed by hiredis on its socket: the
client's pipeline object would add, per round trip, a readiness poll of the socket on checkout (a
system call) and its own bookkeeping; without them the features endpoint answers 6 to 15% more
requests per second on the same load (measured side by side under gunicorn). A connection that fails
is disconnected and handed back to the pool, so no half-read answer is ever left on the kept one; a
kept connection found broken (Redis restarted) is reconnected and the round trip sent again once, as
the client's own retry does.
A request that gives up waiting (its own timeout) leaves the round trip to finish: its answers go to
no one, never to a later request. On a Redis Cluster the batch goes through the cluster client's
pipeline, which routes each key to its node.

The applications scored while others are being scored share one run of their model the same way
(`BatchedScores`).

Outside gevent (threads, the command line, tests with a plain Flask client) a read goes straight to
Redis and a scoring straight to its model, as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import hiredis
import redis

from serving import metrics
from serving.breaker import UNREACHABLE


def gevent_patched() -> bool:
    """Whether this process runs under gevent's monkey-patching (a gunicorn gevent worker)."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a runtime dependency
        return False
    return bool(monkey.is_module_patched("socket"))


READ_SIZE = 65536  # bytes asked of the socket at a time

Entry = tuple[Any, Sequence[Any], Any]  # (what: a command or a model, its items: keys or rows, the waiter)


class Gathering:
    """Calls that greenlets make while others run, run together by a greenlet of the batcher's own (the
    runner): it waits for a first call, runs every call gathered by then (`_run`), each greenlet getting its
    own answers, and starts over; the calls made while it runs are gathered for its next run (see the
    module)."""

    def __init__(self) -> None:
        import gevent
        from gevent.event import AsyncResult, Event

        self._spawn = gevent.spawn
        self._waiter = AsyncResult
        self._called = Event()
        self._pending: list[Entry] = []
        self._runner: Any = None

    def _join(self, what: Any, items: Sequence[Any]) -> list[Any]:
        """The answers to `items` (one each, in order); an error answering any of them is raised."""
        waiter = self._waiter()
        self._pending.append((what, items, waiter))
        if self._runner is None or self._runner.dead:
            self._runner = self._spawn(self._run_calls)
        self._called.set()
        answers: list[Any] = waiter.get()
        return answers

    def _run_calls(self) -> None:
        """The runner: every call gathered, run in turn; calls it cannot run (the runner stopped) fail."""
        pending: list[Entry] = []
        try:
            while True:
                self._called.wait()
                self._called.clear()
                pending, self._pending = self._pending, []
                self._run(pending)
                pending = []
        except BaseException as exc:  # the greenlet killed (the worker stopping): no call is left waiting
            stopped, self._pending = pending + self._pending, []
            _fail(stopped, RuntimeError(f"the batcher stopped: {type(exc).__name__}"))
            raise

    def _run(self, pending: list[Entry]) -> None:
        raise NotImplementedError


def _fail(entries: list[Entry], error: Exception) -> None:
    """Each entry not answered yet gets `error`."""
    for _, _, waiter in entries:
        if not waiter.ready():
            waiter.set_exception(error)


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
        # The pool of a single Redis (None for a cluster client), and the connection kept between round trips.
        self._pool: Any = getattr(client, "connection_pool", None)
        self._connection: Any = None
        # The parser of the kept connection's answers, and the socket it parses (see `_exchange`).
        self._reader: Any = None
        self._reader_sock: Any = None

    @property
    def kept_connections(self) -> int:
        """The connections kept between round trips now: 0 or 1 (for tests)."""
        return int(self._connection is not None)

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
        unreachable: Exception | None = None
        for batch in _batches(pending, self._batch_limit):
            if unreachable is None:
                unreachable = self._send(batch)
            else:
                _fail(batch, unreachable)
        if unreachable is not None:
            # The reads added while that round trip waited on a Redis that does not answer would wait as long
            # again: they fail with it (and the circuit breaker refuses the next ones at once).
            added, self._pending = self._pending, []
            _fail(added, unreachable)

    def _send(self, batch: list[Entry]) -> Exception | None:
        """One round trip for the batch, each entry answered; the error when Redis could not be reached."""
        self.batches += 1
        commands = [(command[0], key, *command[1:]) for command, keys, _ in batch for key in keys]
        self.reads += len(commands)
        try:
            answers = self._round_trip(commands) if self._pool is not None else self._pipelined(commands)
        except Exception as exc:
            _fail(batch, exc)
            return exc if isinstance(exc, UNREACHABLE) else None
        _hand_out(batch, answers)
        return None

    def _round_trip(self, commands: list[tuple[str, ...]]) -> list[Any]:
        """The answers (an error reply as its exception) on the batcher's connection, taken from the pool on first
        use and kept: one round trip at a time uses it."""
        kept = self._connection is not None
        connection = self._connection if kept else self._pool.get_connection()
        self._connection = None
        try:
            try:
                answers = self._exchange(connection, commands)
            except redis.ConnectionError:
                if not kept:  # a fresh connection that fails: Redis is down, no second try
                    raise
                connection.disconnect()  # kept, then broken (a restarted Redis): once more, reconnected
                answers = self._exchange(connection, commands)
        except BaseException:  # an error or an interrupted round trip: the answers may be half read
            connection.disconnect()
            self._pool.release(connection)
            raise
        self._connection = connection
        return answers

    def _exchange(self, connection: Any, commands: list[tuple[str, ...]]) -> list[Any]:
        """The commands written at once on the connection, then their answers read in order; an error reply
        is its exception in the list. A `HGETALL` answer is a dict, as the client gives it.

        Packed and parsed by hiredis (the parser the client itself uses), called directly: the client's
        `pack_commands` and `read_response` add about 30 Python calls per command (argument checks, a
        timeout and a host name per read) to a request of about 800."""
        if connection._sock is None:  # new, or disconnected after an error
            connection.connect()
        sock = connection._sock
        if self._reader_sock is not sock:  # a new socket: a new parser, nothing left of the old one
            self._reader = hiredis.Reader(encoding="utf-8", replyError=redis.ResponseError)
            self._reader_sock = sock
        reader = self._reader
        answers: list[Any] = []
        try:
            pack: Any = hiredis.pack_command  # its stub types the command as a one-item tuple
            sock.sendall(b"".join([pack(command) for command in commands]))
            while len(answers) < len(commands):
                answer = reader.gets()
                if answer is False:
                    data = sock.recv(READ_SIZE)
                    if not data:
                        raise redis.ConnectionError("Redis closed the connection")
                    reader.feed(data)
                else:
                    answers.append(answer)
        except TimeoutError:
            raise redis.TimeoutError("Timeout reading from Redis") from None
        except (OSError, hiredis.ProtocolError) as exc:
            raise redis.ConnectionError(f"Error talking to Redis: {exc}") from None
        for i, command in enumerate(commands):
            if command[0] == "HGETALL" and isinstance(answers[i], list):  # RESP2: field, value, ...
                fields = iter(answers[i])
                answers[i] = dict(zip(fields, fields, strict=True))
        return answers

    def _pipelined(self, commands: list[tuple[str, ...]]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        answers: list[Any] = pipe.execute(raise_on_error=False)
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
    score by the runner's next turn go through one run of each model they use. A run's fixed cost
    (onnxruntime's call, its input, the trees brought into the cache) is shared: one row alone costs 20 to
    30 us in-process, four different rows about 90 us. Rows are only ever scored by their own model (grouped by
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
                scores: list[Any] = metrics.model_run(entries[0][0], rows)
            except Exception as exc:
                scores = [exc] * len(rows)
            _hand_out(entries, scores)
