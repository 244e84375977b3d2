"""The online store: the one place that knows how clients are laid out in Redis (DESIGN §8).

Keys, with the prefix P (default `credit`):

    P:active                    string   the published version, e.g. 20261127T061500Z
    P:<version>:client:<id>     hash     the client's latest features (a null feature is an absent field),
                                         loan_date (yyyy-MM-dd), score, label, model_version, and its
                                         history: loans, amount_sum, last_loan_id, birthday, job_start_date;
                                         `landed`: the landed loans applied to it by the stream (DESIGN §13)
    P:<version>:meta            hash     source, as_of, rows, clients, model_version, feature_names,
                                         status (loading, complete), created_at, published_at,
                                         superseded_at; from the stream: stream_loans, stream_new_clients,
                                         stream_last_loan_id, stream_applied_at
    P:versions                  zset     every version a load started, scored by its start time
    P:<version>:model           string   the model that scored the version, ONNX as base64 (threshold in meta)
    P:<version>:lease           string   present (with a TTL) while the load writing the version runs
    P:<version>:landed          hash     the registry of landed loans: loan_id -> the loan as JSON (see
                                         serving/landing.py), written once per loan_id

A load writes a new namespace, is counted, then `SET P:active <version>` publishes it in one command.
Every command touches one key (no MULTI, no multi-key DEL; the one script, APPLY_LANDED, reads and
writes a single client hash), so the same code runs against one Redis or a Redis Cluster. Field values
are plain text: whole numbers as digits, decimals in Python's shortest round-trip form.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import datetime as dt
import functools
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from conf.settings import RedisSettings
from contract import FEATURES, Feature
from serving.coalesce import BatchedReads, gevent_patched

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

# The fields a client hash holds beside its features, and their types: the latest loan's date and score,
# and the history state an application is scored from (DESIGN §8).
RECORD_FIELDS: dict[str, type] = {
    "loan_date": str, "score": float, "label": int, "model_version": str,
    "loans": int, "amount_sum": float, "last_loan_id": int, "birthday": str, "job_start_date": str,
}  # fmt: skip
LOADING, COMPLETE = "loading", "complete"
SCAN_COUNT = 5000

Client = redis.Redis | RedisCluster


class StoreError(RuntimeError):
    """The online store cannot do what was asked (nothing published, an incomplete version, ...)."""


# Connections per process (per node of a cluster); a command beyond them waits for one to be free.
MAX_CONNECTIONS = 64


class NotPublished(StoreError):
    """No version is active yet."""


def connect(url: str, connect_timeout: float, socket_timeout: float) -> Client:
    """A client for the URL (password and TLS included); a Redis Cluster node gives a cluster client."""
    options: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": socket_timeout,
        "decode_responses": True,
        "health_check_interval": 0,
        # No retries with backoff (redis-py's default): a down or hung Redis must fail within the timeouts.
        # One immediate retry on a broken connection only, so a restarted Redis is used again at once.
        "retry": Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    }
    # A full pool makes a command wait (cooperatively, under gevent) for a connection, up to the timeouts:
    # redis-py's default pool raises at once instead, a ConnectionError that a burst of requests would
    # turn into 503s while Redis is fine.
    pooling = {"max_connections": MAX_CONNECTIONS, "timeout": connect_timeout + socket_timeout}
    single = redis.Redis.from_pool(redis.BlockingConnectionPool.from_url(url, **pooling, **options))
    try:
        clustered = single.info("cluster").get("cluster_enabled") == 1
    except redis.ResponseError:  # a server or proxy that does not know INFO cluster
        clustered = False
    if not clustered:
        return single
    single.close()
    return RedisCluster.from_url(url, connection_pool_class=redis.BlockingConnectionPool, **pooling, **options)


def check_url(url: str) -> None:
    """A ValueError naming the URL (without its password) when it is not a Redis URL redis-py can use."""
    try:
        redis.ConnectionPool.from_url(url).disconnect()
    except ValueError as exc:
        raise ValueError(f"bad Redis URL {redacted(url)!r}: {exc}") from None


class Codec:
    """Typed values <-> the text fields of a client hash: an absent field is a null value.

    Whole numbers are digits, decimals Python's shortest round-trip form, dates `yyyy-MM-dd`; a field
    the codec does not know stays text. The field types come from the feature contract.
    """

    def __init__(self, types: Mapping[str, type]) -> None:
        self.types = dict(types)
        self.int_fields = frozenset(name for name, kind in self.types.items() if kind is int)
        self.float_fields = frozenset(name for name, kind in self.types.items() if kind is float)
        # How a field's text is read back: whole numbers and decimals typed, anything else (dates) kept as text.
        self._parsers: dict[str, Callable[[str], Any]] = {
            name: kind if kind in (int, float) else str for name, kind in self.types.items()
        }
        self._read_parsers: dict[tuple[str, ...], tuple[tuple[str, Callable[[str], Any]], ...]] = {}

    @classmethod
    def for_features(cls, features: Sequence[Feature] = FEATURES) -> Codec:
        """The codec of a client hash: the contract's features plus the record fields."""
        return cls({**{f.name: f.type for f in features}, **RECORD_FIELDS})

    def encode(self, record: Mapping[str, Any]) -> dict[str, str]:
        """A record as hash fields: absent for None or NaN, plain text otherwise."""
        fields = {}
        for name, value in record.items():
            if hasattr(value, "item"):  # numpy scalars
                value = value.item()
            if value is None or (isinstance(value, float) and value != value):
                continue
            if isinstance(value, dt.date):
                fields[name] = value.isoformat()
            elif isinstance(value, float):
                fields[name] = repr(value)
            else:
                fields[name] = str(value)
        return fields

    def decode(self, fields: Mapping[str, str]) -> dict[str, Any]:
        """Hash fields back to typed values; unknown fields stay text."""
        parse = self._parsers
        return {name: parse.get(name, str)(text) for name, text in fields.items()}

    def decode_values(self, names: tuple[str, ...], values: Sequence[str | None]) -> dict[str, Any]:
        """The values of named fields (an HMGET's answer) as `decode` types them; absent fields are left out."""
        parsers = self._read_parsers.get(names)
        if parsers is None:  # the field lists a service reads are few: each one's parsers are kept (64 at most)
            parse = self._parsers
            parsers = tuple((name, parse.get(name, str)) for name in names)
            if len(self._read_parsers) < 64:
                self._read_parsers[names] = parsers
        return {name: parse(text) for (name, parse), text in zip(parsers, values, strict=True) if text is not None}

    def encode_columns(self, frame: pd.DataFrame, names: Sequence[str]) -> Iterator[tuple[int, list[str]]]:
        """(client id `frame.id`, [field, text, field, text, ...]) per row, for the bulk writer.

        The same text as `encode`, made a column at a time rather than a value at a time: whole-number
        columns holding a null arrive from pandas as float64 with NaN, and are written as whole numbers.
        """
        columns: list[list[Any]] = []
        for name in names:
            values = frame[name]
            if name in self.int_fields:
                digits = values.fillna(0).astype("int64").astype(str).to_numpy(dtype=object)
                digits[values.isna().to_numpy()] = None
                columns.append(digits.tolist())
            elif name in self.float_fields:
                columns.append([None if v != v else repr(v) for v in values.astype("float64").tolist()])
            else:
                columns.append(values.tolist())
        for client_id, *row in zip(frame["id"].tolist(), *columns, strict=True):
            yield (
                int(client_id),
                [x for name, value in zip(names, row, strict=True) if value is not None for x in (name, value)],
            )


# Apply one landed loan to a client's hash (DESIGN §13): one key, atomic, idempotent.
# KEYS[1] the client hash. ARGV: the loan_id; the `loans` and `landed` values the update was computed
# from; then field/value pairs to set (an empty value removes the field: a null feature).
# Returns 0 when the hash's `landed` field lists the loan already (a replay changes nothing), -1 when the
# hash changed since it was read (read it again and recompute), else sets the fields, adds the loan to
# `landed` and returns 1.
APPLY_LANDED = """
local landed = redis.call('HGET', KEYS[1], 'landed') or ''
if string.find(',' .. landed .. ',', ',' .. ARGV[1] .. ',', 1, true) then return 0 end
if (redis.call('HGET', KEYS[1], 'loans') or '0') ~= ARGV[2] or landed ~= ARGV[3] then return -1 end
for i = 4, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
if landed == '' then landed = ARGV[1] else landed = landed .. ',' .. ARGV[1] end
redis.call('HSET', KEYS[1], 'landed', landed)
return 1
"""
LANDED_FIELD = "landed"


@dataclasses.dataclass(frozen=True)
class LandedUpdate:
    """A landed loan's effect on its client's hash, computed from the state read (`expected_*`)."""

    client_id: int
    loan_id: int
    expected_loans: int
    expected_landed: str
    fields: dict[str, str | None]  # None removes the field (a null feature)


class OnlineStore:
    """Reads and writes of the client hashes; a miss returns None (see the module docstring).

    The only code that holds a Redis client or spells a key: callers use the methods below.
    """

    def __init__(
        self,
        client: Client,
        prefix: str = "credit",
        version_cache_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        codec: Codec | None = None,
        coalesce: bool = False,
    ) -> None:
        """`coalesce`: under gevent, concurrent reads (the active version, a client's hash) share pipelined
        round trips (`serving.coalesce`); the service sets it."""
        self._client = client
        self._reads = BatchedReads(client) if coalesce and gevent_patched() else None
        self.prefix = prefix
        self.version_cache_seconds = version_cache_seconds
        self.codec = codec or Codec.for_features()
        self._clock = clock
        self._cached: tuple[str, float] | None = None

    @classmethod
    def from_url(
        cls, url: str, connect_timeout: float = 0.5, socket_timeout: float = 0.5, **options: Any
    ) -> OnlineStore:
        """A store on the Redis (or Redis Cluster) at `url`, with these timeouts in seconds."""
        return cls(connect(url, connect_timeout, socket_timeout), **options)

    @classmethod
    def from_settings(cls, settings: RedisSettings, url: str, **options: Any) -> OnlineStore:
        """A store with the settings' prefix and timeouts, on `url`."""
        return cls.from_url(
            url, settings.connect_timeout, settings.socket_timeout, **{"prefix": settings.prefix, **options}
        )

    @property
    def clustered(self) -> bool:
        """Whether the store runs on a Redis Cluster."""
        return isinstance(self._client, RedisCluster)

    @property
    def coalescing(self) -> BatchedReads | None:
        """The batcher of concurrent reads, when on (`coalesce` under gevent), with its counts."""
        return self._reads

    def ping(self) -> bool:
        return bool(self._client.ping())

    def close(self) -> None:
        self._client.close()

    # keys
    @property
    def active_key(self) -> str:
        return f"{self.prefix}:active"

    @property
    def versions_key(self) -> str:
        return f"{self.prefix}:versions"

    def client_key(self, version: str, client_id: int | str) -> str:
        return f"{self.prefix}:{version}:client:{client_id}"

    def meta_key(self, version: str) -> str:
        return f"{self.prefix}:{version}:meta"

    def model_key(self, version: str) -> str:
        return f"{self.prefix}:{version}:model"

    def landed_key(self, version: str) -> str:
        return f"{self.prefix}:{version}:landed"

    def lease_key(self, version: str) -> str:
        return f"{self.prefix}:{version}:lease"

    def namespace(self, version: str) -> str:
        """The start of every key of a version (`P:<version>:`); `namespace(v) + "*"` matches them all."""
        return f"{self.prefix}:{version}:"

    # reads
    def active_version(self, fresh: bool = False) -> str | None:
        """The published version, kept for `version_cache_seconds` so most reads skip this lookup."""
        now = self._clock()
        if not fresh and self._cached and now - self._cached[1] < self.version_cache_seconds:
            return self._cached[0]
        version = cast(str | None, (self._reads or self._client).get(self.active_key))
        self._cached = (version, now) if version else None
        return version

    def _version(self) -> str:
        version = self.active_version()
        if version is None:
            raise NotPublished(f"no version published: {self.active_key} is not set")
        return version

    def read(self, client_id: int, fields: Sequence[str] | None = None) -> tuple[str, dict[str, Any] | None]:
        """The active version and the client's record in it (None when unknown): one HGETALL, or one HMGET
        of `fields` (see `read_version`)."""
        version = self._version()
        return version, self.read_version(version, client_id, fields)

    def read_version(self, version: str, client_id: int, fields: Sequence[str] | None = None
                     ) -> dict[str, Any] | None:  # fmt: skip
        """The client's record in a given version (None when unknown): all its fields (one HGETALL), or only
        `fields` and `loan_date` (one HMGET: fewer values to send, parse and decode on a request's path). A
        record always holds `loan_date`, so a client whose `loan_date` is absent is an unknown one."""
        key = self.client_key(version, client_id)
        names = _read_names(fields)
        reader = self._reads or self._client
        return self._record(names, reader.hmget(key, names) if names else reader.hgetall(key))

    def read_many(self, client_ids: Sequence[int], fields: Sequence[str] | None = None
                  ) -> tuple[str, list[dict[str, Any] | None]]:  # fmt: skip
        """The records of many clients from one version, in one pipelined round trip (`fields`: as `read`)."""
        version = self._version()
        return version, self.read_version_many(version, client_ids, fields)

    def read_version_many(self, version: str, client_ids: Sequence[int], fields: Sequence[str] | None = None
                          ) -> list[dict[str, Any] | None]:  # fmt: skip
        """The records of many clients in a given version, in one pipelined round trip (`fields`: as
        `read_version`)."""
        keys = [self.client_key(version, client_id) for client_id in client_ids]
        if not keys:
            return []
        names = _read_names(fields)
        command = "HMGET" if names else "HGETALL"
        if self._reads:
            answers = self._reads.many(command, keys, names)
        else:
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.execute_command(command, key, *names)
            answers = _execute(pipe)
        return [self._record(names, answer) for answer in answers]

    def _record(self, names: tuple[str, ...], answer: Any) -> dict[str, Any] | None:
        """A client's record from a read's answer: an HMGET's values of `names`, or (no names) an HGETALL's
        fields; None for an unknown client (no `loan_date`, or no hash at all)."""
        if names:
            return self.codec.decode_values(names, answer) if answer[0] is not None else None
        return self.codec.decode(answer) if answer else None

    def loading_versions(self) -> list[str]:
        """The versions a load is writing now (status loading, lease held), oldest first."""
        versions = self.versions()
        pipe = self._client.pipeline(transaction=False)
        for version in versions:
            pipe.hget(self.meta_key(version), "status")
            pipe.exists(self.lease_key(version))
        answers = _execute(pipe)
        return [v for v, status, lease in zip(versions, answers[::2], answers[1::2], strict=True)
                if status == LOADING and lease]  # fmt: skip

    def register_landed(self, version: str, entries: Mapping[int, str]) -> dict[int, str | None]:
        """Record landed loans in the version's registry unless there already; per loan, the entry found
        there before (None: it is new). One pipelined round trip, two for the ones already there."""
        ids = list(entries)
        pipe = self._client.pipeline(transaction=False)
        for loan_id in ids:
            pipe.hsetnx(self.landed_key(version), str(loan_id), entries[loan_id])
        created = _execute(pipe)
        known = [i for i, new in zip(ids, created, strict=True) if not new]
        found: dict[int, str | None] = dict.fromkeys(ids)
        if known:
            values = cast(list[str | None], self._client.hmget(self.landed_key(version), [str(i) for i in known]))
            found.update(zip(known, values, strict=True))
        return found

    def landed(self, version: str) -> dict[int, str]:
        """The version's registry of landed loans: loan_id -> its entry."""
        entries = cast(dict[str, str], self._client.hgetall(self.landed_key(version)))
        return {int(k): v for k, v in entries.items()}

    def apply_landed(self, version: str, updates: Sequence[LandedUpdate]) -> list[int]:
        """Apply landed loans to their clients' hashes, one script per loan (a single key each), pipelined
        in order: per update 1 applied, 0 applied before, -1 the hash changed since read (see APPLY_LANDED).

        EVAL rather than EVALSHA: a cluster pipeline cannot load scripts, and Redis caches it compiled.
        """
        pipe = self._client.pipeline(transaction=False)
        for u in updates:
            flat = [x for name, value in u.fields.items() for x in (name, "" if value is None else value)]
            key = self.client_key(version, u.client_id)
            pipe.execute_command("EVAL", APPLY_LANDED, 1, key, u.loan_id, u.expected_loans, u.expected_landed, *flat)
        return [int(x) for x in _execute(pipe)]

    def note_landed(self, version: str, applied: int, new_clients: int, last_loan_id: int | None) -> None:
        """Count landed loans applied to a version in its meta, with the last one and when (one key)."""
        if not applied:
            return
        pipe = self._client.pipeline(transaction=False)
        pipe.hincrby(self.meta_key(version), "stream_loans", applied)
        pipe.hincrby(self.meta_key(version), "stream_new_clients", new_clients)
        last: dict[Any, Any] = {"stream_last_loan_id": str(last_loan_id), "stream_applied_at": _utc_now()}
        pipe.hset(self.meta_key(version), mapping=last)
        _execute(pipe)

    def meta(self, version: str) -> dict[str, str]:
        return cast(dict[str, str], self._client.hgetall(self.meta_key(version)))

    def versions(self) -> list[str]:
        """Every version a load started, oldest first."""
        return cast(list[str], self._client.zrange(self.versions_key, 0, -1))

    def count_clients(self, version: str) -> int:
        """Client hashes in a version's namespace, counted by SCAN over every node."""
        return sum(1 for _ in self._keys(version, "client:*"))

    def model(self, version: str) -> bytes | None:
        """The version's model (ONNX), or None when the version has none."""
        text = cast(str | None, self._client.get(self.model_key(version)))
        return base64.b64decode(text) if text else None

    def sample_client_id(self, version: str) -> int | None:
        """One client id of the version (for examples), or None when it holds none."""
        for key in self._keys(version, "client:*"):
            return int(key.rsplit(":", 1)[1])
        return None

    # writes
    def next_version(self, now: dt.datetime) -> str:
        """A sortable UTC version name not used before in this store."""
        base = now.strftime("%Y%m%dT%H%M%SZ")
        taken = set(self.versions())
        version, n = base, 1
        while version in taken or self._client.exists(self.meta_key(version)):
            n += 1
            version = f"{base}-{n}"
        return version

    def begin(
        self, version: str, meta: Mapping[str, Any], now: float | None = None, lease_seconds: float = 30.0
    ) -> None:
        """Register a new version as loading, with a lease; refuses a version that already exists."""
        if self._client.exists(self.meta_key(version)):
            raise StoreError(f"version {version} already exists in {self.prefix}")
        self.renew_lease(version, lease_seconds)
        self._client.zadd(self.versions_key, {version: time.time() if now is None else now})
        self.set_meta(version, {**meta, "status": LOADING, "created_at": _utc_now()})

    def renew_lease(self, version: str, lease_seconds: float) -> None:
        """Say the load of `version` is alive for `lease_seconds` more (see `hold_lease`)."""
        self._client.set(self.lease_key(version), str(os.getpid()), px=max(1, int(lease_seconds * 1000)))

    @contextlib.contextmanager
    def hold_lease(self, version: str, lease_seconds: float) -> Iterator[None]:
        """Renew the load's lease every third of `lease_seconds` while the block runs.

        A load killed mid-way stops renewing; once its lease expires, `cleanup` removes its namespace
        at once instead of after the grace period.
        """
        done = threading.Event()

        def renew() -> None:
            while not done.wait(lease_seconds / 3):
                try:
                    self.renew_lease(version, lease_seconds)
                except redis.RedisError as exc:  # the load itself will fail on Redis too, and say so
                    log.warning("could not renew the lease of version %s: %s", version, exc)

        thread = threading.Thread(target=renew, name=f"lease-{version}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def set_model(self, version: str, model: bytes) -> None:
        """Store the version's model (ONNX bytes, as base64 text: readable by any client)."""
        self._client.set(self.model_key(version), base64.b64encode(model).decode("ascii"))

    def set_meta(self, version: str, fields: Mapping[str, Any]) -> None:
        """Record facts about a version in its meta hash (text values, see `Codec.encode`)."""
        mapping: dict[Any, Any] = self.codec.encode(fields)
        self._client.hset(self.meta_key(version), mapping=mapping)

    def write(self, version: str, records: Iterable[tuple[int, Mapping[str, Any]]], batch_size: int = 1000) -> int:
        """HSET each (client id, record) into the version, `batch_size` per non-transactional pipeline."""
        encode = self.codec.encode
        flat = ((client_id, list(itertools.chain(*encode(record).items()))) for client_id, record in records)
        return self.write_encoded(version, flat, batch_size)

    def write_encoded(self, version: str, rows: Iterable[tuple[int, Sequence[str]]], batch_size: int = 1000) -> int:
        """Like `write`, for fields already encoded as [name, text, name, text, ...] (the bulk writer's path)."""
        written = 0
        pipe = self._client.pipeline(transaction=False)
        for client_id, fields in rows:
            if not fields:
                raise StoreError(f"client {client_id} has no field to write (every value is empty)")
            # HSET key f1 v1 f2 v2 ... directly: hset(mapping=...) costs ~10% more per client in bulk.
            pipe.execute_command("HSET", self.client_key(version, client_id), *fields)
            if len(pipe) >= batch_size:
                written += len(_execute(pipe))
        if len(pipe):
            written += len(_execute(pipe))
        return written

    def complete(self, version: str, expected_clients: int) -> int:
        """Count the version's clients and mark it complete (its lease ends); a StoreError if not as expected."""
        counted = self.count_clients(version)
        if expected_clients == 0 or counted != expected_clients:
            raise StoreError(
                f"version {version} holds {counted} clients, expected {expected_clients} (and more than 0)"
            )
        self.set_meta(version, {"status": COMPLETE, "clients": counted})
        self._client.delete(self.lease_key(version))
        return counted

    def publish(self, version: str) -> str | None:
        """Point readers at a complete version in one SET; returns the version it replaced."""
        meta = self.meta(version)
        if meta.get("status") != COMPLETE:
            raise StoreError(f"version {version} is not a complete load (status {meta.get('status', 'unknown')})")
        previous = cast(str | None, self._client.set(self.active_key, version, get=True))
        stamp = _utc_now()
        self._client.hset(self.meta_key(version), "published_at", stamp)
        if previous and previous != version:
            self._client.hset(self.meta_key(previous), "superseded_at", stamp)
        self._cached = None
        return previous

    def remove(self, version: str, batch_size: int = 1000) -> int:
        """Delete a version's keys (never the active one), one UNLINK per key in pipelined batches."""
        if version == self._client.get(self.active_key):
            raise StoreError(f"version {version} is active: publish another one before removing it")
        removed = 0
        pipe = self._client.pipeline(transaction=False)
        for key in self._keys(version, "*"):
            pipe.unlink(key)
            if len(pipe) >= batch_size:
                removed += sum(pipe.execute())
        if len(pipe):
            removed += sum(pipe.execute())
        self._client.zrem(self.versions_key, version)
        return removed

    def cleanup(self, grace_seconds: float, now: float | None = None) -> list[str]:
        """Remove versions neither active nor the previous published one, once the grace has passed.

        A replaced version goes `grace_seconds` after it was replaced, a complete load never published
        `grace_seconds` after it started. A load still marked loading goes at once when its lease has
        expired (the load died), and never while the lease is held (the load runs).
        """
        now = time.time() if now is None else now
        active = self._client.get(self.active_key)
        started = dict(cast(list[tuple[str, float]], self._client.zrange(self.versions_key, 0, -1, withscores=True)))
        metas = {version: self.meta(version) for version in started}
        published = [v for v in sorted(started) if v != active and metas[v].get("published_at")]
        keep = {active, published[-1] if published else None}
        removed = []
        for version, start in sorted(started.items()):
            if version in keep:
                continue
            if metas[version].get("status", LOADING) == LOADING:
                if self._client.exists(self.lease_key(version)):
                    continue  # a load still running
                log.info("version %s was left loading by a load that died (no lease)", version)
                log.info("removing version %s (%d keys)", version, self.remove(version))
                removed.append(version)
                continue
            superseded = metas[version].get("superseded_at")
            since = _parse_utc(superseded) if superseded else start
            if now - since >= grace_seconds:
                log.info("removing version %s (%d keys)", version, self.remove(version))
                removed.append(version)
        return removed

    def _keys(self, version: str, pattern: str) -> Iterator[str]:
        keys = self._client.scan_iter(match=self.namespace(version) + pattern, count=SCAN_COUNT)
        yield from cast(Iterator[str], keys)


def _read_names(fields: Sequence[str] | None) -> tuple[str, ...]:
    """The fields a read asks for: none for a whole hash, else `loan_date` first (it tells a known client from
    an unknown one), then the other fields asked for."""
    return () if fields is None else _with_loan_date(tuple(fields))


@functools.lru_cache(maxsize=64)
def _with_loan_date(fields: tuple[str, ...]) -> tuple[str, ...]:
    return ("loan_date", *(name for name in fields if name != "loan_date"))


def _execute(pipe: Any) -> list[Any]:
    """Run a pipeline; an error names the command's kind, never echoes the values it carried.

    redis-py prefixes a pipeline error with the failing command and its arguments (a client's
    features, for a write): that text must not reach a log.
    """
    try:
        return list(pipe.execute())
    except redis.RedisError as exc:
        message = str(exc.args[0]) if exc.args else ""
        cause = message.split(" of pipeline caused error: ", 1)[-1]
        try:
            clean: Exception = type(exc)(f"a pipelined command failed: {cause}")
        except Exception:  # an error class with another constructor
            clean = StoreError(f"a pipelined command failed: {type(exc).__name__}: {cause}")
        raise clean from None


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_utc(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


def _secret_parameter(name: str) -> bool:
    return "password" in name.lower() or "secret" in name.lower()


def redacted(url: str) -> str:
    """The URL without any password (`:secret@` or `?password=secret`), for logs and messages."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        pairs = [(k, "***" if _secret_parameter(k) else v) for k, v in parse_qsl(parts.query, True)]
        query = urlencode(pairs, safe="*/:,")
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:  # not a URL at all: show nothing of it that could be a secret
        return "<unparsable URL>"


def has_password(url: str) -> bool:
    """Whether the URL carries a password, in its user part or its query."""
    parts = urlsplit(url)
    return parts.password is not None or any(_secret_parameter(k) for k, _ in parse_qsl(parts.query, True))


def with_password(url: str, password: str) -> str:
    """The URL with `password` in its user part (kept as it is when it holds one already)."""
    if has_password(url):
        return url
    parts = urlsplit(url)
    user = quote(parts.username or "", safe="")
    netloc = f"{user}:{quote(password, safe='')}@{parts.netloc.rsplit('@', 1)[-1]}"
    return urlunsplit(parts._replace(netloc=netloc))


def command_line_url(url: str) -> str:
    """An argparse type for `--redis-url`: a password on a command line is visible to anyone in `ps`."""
    if has_password(url):
        raise argparse.ArgumentTypeError(
            "the URL holds a password, which anyone can read in `ps`: give the URL in REDIS_URL or [redis] url, "
            "or the password in the file named by [redis] password_file (CREDIT_REDIS_PASSWORD_FILE)"
        )
    return url
