"""The online store against a real Redis server and a real three-node Redis Cluster."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from conf import load_settings
from credit.commands import main
from serving import embedded
from serving.store import (
    Codec,
    NotPublished,
    OnlineStore,
    StoreError,
    command_line_url,
    connect,
    has_password,
    redacted,
    with_password,
)
from tests.helpers import BIN, ROOT, clean_env
from tests.redis_servers import RedisServer, TlsProxy, free_port


def load(store: OnlineStore, version: str, clients: dict[int, dict], now: float | None = None) -> None:
    store.begin(version, {"source": "test"}, now=now)
    store.write(version, clients.items(), batch_size=7)
    store.complete(version, len(clients))


@pytest.fixture(params=["redis", "cluster"])
def store_url(request: pytest.FixtureRequest) -> str:
    """One Redis, then a three-node Redis Cluster."""
    if request.param == "redis":
        return request.getfixturevalue("redis_url")
    return request.getfixturevalue("redis_cluster").url


@pytest.fixture
def store(store_url: str) -> Iterator[OnlineStore]:
    """The store on `store_url` under a fresh prefix, with no version cache."""
    store = OnlineStore.from_url(store_url, 0.5, 1.0, prefix=f"t{time.monotonic_ns()}", version_cache_seconds=0)
    yield store
    store.close()


def test_encode_leaves_nulls_out_and_decode_restores_types() -> None:
    record = {"nb_previous_loans": 3, "avg_amount_loans_previous": 2134.5, "age": None,
              "years_on_the_job": float("nan"), "flag_own_car": 0, "loan_date": dt.date(3021, 9, 18),
              "score": 0.1 + 0.2, "label": 1, "model_version": "v"}  # fmt: skip
    codec = Codec.for_features()
    fields = codec.encode(record)
    assert fields == {"nb_previous_loans": "3", "avg_amount_loans_previous": "2134.5", "flag_own_car": "0",
                      "loan_date": "3021-09-18", "score": "0.30000000000000004", "label": "1",
                      "model_version": "v"}  # fmt: skip
    assert codec.decode(fields) == {"nb_previous_loans": 3, "avg_amount_loans_previous": 2134.5, "flag_own_car": 0,
                              "loan_date": "3021-09-18", "score": 0.1 + 0.2, "label": 1,
                              "model_version": "v"}  # fmt: skip


def test_store_reads_one_whole_published_version(store: OnlineStore, store_url: str) -> None:
    with pytest.raises(NotPublished, match="no version published"):
        store.read(1)
    load(store, "v1", {i: {"nb_previous_loans": i, "loan_date": "2020-01-01"} for i in range(1, 51)})
    assert store.publish("v1") is None
    assert store.read(7) == ("v1", {"nb_previous_loans": 7, "loan_date": "2020-01-01"})
    assert store.read(51) == ("v1", None)
    version, many = store.read_many([3, 99, 50])
    assert version == "v1" and many == [{"nb_previous_loans": 3, "loan_date": "2020-01-01"}, None,
                                        {"nb_previous_loans": 50, "loan_date": "2020-01-01"}]  # fmt: skip
    raw = connect(store_url, 0.5, 1.0)
    assert raw.hgetall(store.client_key("v1", 7)) == {"nb_previous_loans": "7", "loan_date": "2020-01-01"}
    meta = store.meta("v1")
    assert meta["status"] == "complete" and meta["clients"] == "50" and meta["source"] == "test"
    assert "published_at" in meta


def test_store_reads_named_fields_with_loan_date_telling_a_known_client(store: OnlineStore) -> None:
    """A read of named fields (one HMGET) gives those fields, typed, with `loan_date` always; an absent field is
    left out as a whole read leaves it out; a hash without `loan_date` is no client's record."""
    load(store, "v1", {1: {"nb_previous_loans": 2, "age": None, "score": 0.25, "loan_date": "2020-01-01"},
                       2: {"nb_previous_loans": 5, "score": 0.5}})  # fmt: skip
    store.publish("v1")
    fields = ("nb_previous_loans", "age", "score")
    assert store.read(1, fields) == ("v1", {"loan_date": "2020-01-01", "nb_previous_loans": 2, "score": 0.25})
    assert store.read(1, ["loan_date", "score"]) == ("v1", {"loan_date": "2020-01-01", "score": 0.25})
    assert store.read(2, fields) == ("v1", None) and store.read(3, fields) == ("v1", None)
    assert store.read(2) == ("v1", {"nb_previous_loans": 5, "score": 0.5})  # the whole hash is still readable
    version, many = store.read_many([3, 1, 2, 1], ("score",))
    assert version == "v1" and many == [None, {"loan_date": "2020-01-01", "score": 0.25}, None,
                                        {"loan_date": "2020-01-01", "score": 0.25}]  # fmt: skip
    assert store.read_many([], fields) == ("v1", [])


def test_store_refuses_to_publish_an_empty_miscounted_or_incomplete_load(store: OnlineStore) -> None:
    load(store, "v1", {1: {"age": 30}})
    store.publish("v1")
    store.begin("v2", {"source": "test"})
    with pytest.raises(StoreError, match="not a complete load"):
        store.publish("v2")
    with pytest.raises(StoreError, match="holds 0 clients, expected 0"):
        store.complete("v2", 0)
    store.write("v2", [(1, {"age": 31}), (2, {"age": 40})])
    with pytest.raises(StoreError, match="holds 2 clients, expected 3"):
        store.complete("v2", 3)
    with pytest.raises(StoreError, match="already exists"):
        store.begin("v1", {"source": "test"})
    assert store.active_version() == "v1" and store.read(1) == ("v1", {"age": 30})


def test_store_rollback_is_one_publish_of_the_previous_version(store: OnlineStore) -> None:
    load(store, "v1", {1: {"age": 30}})
    store.publish("v1")
    load(store, "v2", {1: {"age": 31}})
    assert store.publish("v2") == "v1"
    assert store.read(1) == ("v2", {"age": 31})
    assert store.publish("v1") == "v2"
    assert store.read(1) == ("v1", {"age": 30})
    assert "superseded_at" in store.meta("v2")


def test_store_cleanup_keeps_active_and_previous_and_waits_for_the_grace(store: OnlineStore) -> None:
    for n in range(1, 5):
        load(store, f"v{n}", {i: {"age": n} for i in range(1, 21)}, now=time.time() - 10)
        store.publish(f"v{n}")
    load(store, "v5", {1: {"age": 5}}, now=time.time() - 10)  # loaded, never published
    later = time.time() + 6  # the cleanup runs 6 s after the versions were replaced
    store.begin("v6", {"source": "test"}, now=later - 3)  # a load that started 3 s before it, still running
    assert store.cleanup(grace_seconds=3600) == []
    assert store.cleanup(grace_seconds=5, now=later) == ["v1", "v2", "v5"]
    assert store.versions() == ["v3", "v4", "v6"]
    assert store.count_clients("v1") == 0 and store.meta("v1") == {}
    assert store.count_clients("v3") == 20 and store.read(1) == ("v4", {"age": 4})
    with pytest.raises(StoreError, match="is active"):
        store.remove("v4")


def test_store_reader_keeps_the_resolved_version_for_the_configured_time(redis_url: str) -> None:
    now = [100.0]
    writer = OnlineStore(connect(redis_url, 0.5, 1.0), version_cache_seconds=0)
    reader = OnlineStore(connect(redis_url, 0.5, 1.0), version_cache_seconds=2.0, clock=lambda: now[0])
    load(writer, "v1", {1: {"age": 30}})
    writer.publish("v1")
    assert reader.read(1) == ("v1", {"age": 30})
    load(writer, "v2", {1: {"age": 31}})
    writer.publish("v2")
    now[0] += 1.9
    assert reader.read(1) == ("v1", {"age": 30})  # the previous version is kept, so this stays whole
    now[0] += 0.2
    assert reader.read(1) == ("v2", {"age": 31})


def test_store_connect_names_an_unreachable_server_quickly() -> None:
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        connect(f"redis://127.0.0.1:{free_port()}/0", 0.5, 0.5)
    assert time.monotonic() - started < 2


def test_store_connect_uses_the_password_in_the_url(redis_url: str) -> None:
    redis.Redis.from_url(redis_url).config_set("requirepass", "s3cret")  # the fixture restarts a locked server
    with pytest.raises(redis.AuthenticationError):
        connect(redis_url, 0.5, 0.5)
    assert connect(redis_url.replace("redis://", "redis://:s3cret@"), 0.5, 0.5).ping() is True
    assert connect(f"{redis_url}?password=s3cret", 0.5, 0.5).ping() is True


def test_store_connects_over_tls_with_a_password_from_a_rediss_url(redis_url: str, tmp_path: Path) -> None:
    admin = redis.Redis.from_url(redis_url)
    admin.config_set("requirepass", "s3cret")
    proxy = TlsProxy(tmp_path / "tls", admin.connection_pool.connection_kwargs["port"])
    try:
        store = OnlineStore.from_url(proxy.url("s3cret"), 0.5, 1.0, version_cache_seconds=0)
        load(store, "v1", {7: {"age": 41, "loan_date": "2020-01-01"}})
        store.publish("v1")
        assert store.read(7) == ("v1", {"age": 41, "loan_date": "2020-01-01"})
        untrusted = proxy.url("s3cret").split("?")[0]  # the self-signed certificate is not trusted
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            connect(untrusted, 0.5, 1.0)
    finally:
        proxy.close()
        admin.close()


@pytest.mark.parametrize(
    ("url", "shown", "secret"),
    [
        ("redis://h:6379/0", "redis://h:6379/0", False),
        ("redis://:pw1@h:6379/0", "redis://:***@h:6379/0", True),
        ("redis://writer:pw2@h/0?ssl_ca_certs=/a/b.pem", "redis://writer:***@h/0?ssl_ca_certs=/a/b.pem", True),
        ("redis://h:6379/0?password=pw3", "redis://h:6379/0?password=***", True),
        ("rediss://u@h:1/0?ssl_password=pw4&db=2", "rediss://u@h:1/0?ssl_password=***&db=2", True),
    ],
)
def test_store_redacts_every_form_of_password(url: str, shown: str, secret: bool) -> None:
    assert redacted(url) == shown and "pw" not in redacted(url)
    assert has_password(url) is secret
    if secret:
        with pytest.raises(argparse.ArgumentTypeError, match="anyone can read in `ps`"):
            command_line_url(url)
    else:
        assert command_line_url(url) == url
    assert with_password("redis://writer@h:6379/0", "p@ss:w/rd") == "redis://writer:p%40ss%3Aw%2Frd@h:6379/0"
    assert connect_kwargs(with_password("redis://writer@h:6379/0", "p@ss:w/rd"))["password"] == "p@ss:w/rd"


def connect_kwargs(url: str) -> dict:
    return redis.ConnectionPool.from_url(url).connection_kwargs


def test_store_a_write_error_never_echoes_the_values_it_carried(redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) + 100_000)
    store = OnlineStore.from_url(redis_url, version_cache_seconds=0)
    secret_age = 987_654_321
    rows = [(i, ["age", str(secret_age), "loan_date", "2020-01-01", "pad", "x" * 500]) for i in range(1, 2000)]
    with pytest.raises(redis.exceptions.OutOfMemoryError) as caught:
        store.write_encoded("v1", rows, batch_size=50)
    assert str(caught.value) == "a pipelined command failed: command not allowed when used memory > 'maxmemory'."
    assert str(secret_age) not in str(caught.value) and "HSET" not in str(caught.value)


def test_store_a_dead_load_is_removed_at_once_a_running_one_never(store: OnlineStore) -> None:
    load(store, "v1", {1: {"age": 30}})
    store.publish("v1")
    store.begin("dead", {"source": "test"}, lease_seconds=0.2)  # a load killed mid-way: nobody renews
    store.write("dead", [(1, {"age": 1})])
    store.begin("running", {"source": "test"}, lease_seconds=0.2)
    store.write("running", [(1, {"age": 2})])
    with store.hold_lease("running", 0.2):
        time.sleep(0.5)  # both leases would have expired by now; the running one is renewed
        assert store.cleanup(grace_seconds=3600) == ["dead"]
        assert store.versions() == ["v1", "running"] and store.count_clients("dead") == 0
    assert store.count_clients("running") == 1
    store.complete("running", 1)  # a complete load ends its lease and follows the grace period
    time.sleep(0.3)
    assert store.cleanup(grace_seconds=3600) == [] and store.versions() == ["v1", "running"]


def test_embedded_redis_is_locked_and_each_user_does_only_its_job(tmp_path: Path) -> None:
    port, folder = free_port(), tmp_path / "redis"
    try:
        embedded.start(port, folder, prefix="credit")
        assert oct(folder.stat().st_mode & 0o777) == "0o700"
        for name in ("secrets.json", "users.acl"):
            assert oct((folder / name).stat().st_mode & 0o777) == "0o600", name
        found = embedded.read_secrets(folder)
        assert found is not None and found["service"] not in (folder / "users.acl").read_text()  # hashes only
        with pytest.raises(redis.RedisError, match=r"(?i)auth"):
            redis.Redis(port=port, protocol=2).get("credit:active")  # the default user is off
        service, writer, admin = (redis.Redis.from_url(embedded.url_for(port, user, found[user]), decode_responses=True)
                                  for user in ("service", "writer", "admin"))  # fmt: skip
        store = OnlineStore(writer, prefix="credit", version_cache_seconds=0)
        load(store, "v1", {7: {"age": 41, "loan_date": "2020-01-01"}})
        store.publish("v1")
        assert OnlineStore(service, prefix="credit").read(7) == ("v1", {"age": 41, "loan_date": "2020-01-01"})
        for client in (service, writer):
            for command in (("CONFIG", "SET", "dir", "/tmp"), ("CONFIG", "GET", "dir"), ("FLUSHALL",), ("FLUSHDB",),
                            ("DEBUG", "SLEEP", "0"), ("MODULE", "LIST"), ("SHUTDOWN", "NOSAVE"), ("KEYS", "*"),
                            ("SAVE",), ("ACL", "LIST")):  # fmt: skip
                with pytest.raises(redis.exceptions.NoPermissionError):
                    client.execute_command(*command)
        with pytest.raises(redis.exceptions.NoPermissionError):
            service.hset("credit:v1:client:7", "age", "99")  # the service only reads
        with pytest.raises(redis.exceptions.NoPermissionError):
            service.set("credit:active", "v0")
        with pytest.raises(redis.exceptions.NoPermissionError):
            writer.set("other:key", "x")  # the writer writes under the prefix only
        assert admin.config_get("dir")["dir"] == str(folder.resolve())  # the admin is embedded's own
        # Reused with another prefix: the ACL follows it.
        embedded.start(port, folder, prefix="other")
        assert writer.set("other:key", "x") is True
    finally:
        embedded.stop(port, folder)


def test_embedded_redis_commands_start_reuse_keep_data_and_stop(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(CREDIT_REDIS_EMBEDDED_PORT=str(port), CREDIT_REDIS_EMBEDDED_DIR=str(tmp_path / "redis"))
    credit = [str(BIN / "credit"), "redis"]

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*credit, *args], env={**env, **extra}, capture_output=True, text=True, timeout=30)

    try:
        ensure = run("ensure", REDIS_URL="redis://127.0.0.1:1/0")
        assert ensure.stdout.strip() == "configured" and not (tmp_path / "redis").exists()
        assert run("ensure").stdout.strip() == "embedded"
        started = run("start")
        assert started.returncode == 0 and started.stdout.strip() == f"redis://127.0.0.1:{port}/0"
        assert "reusing" in started.stderr
        writer_url = embedded.user_url(load_settings(env=env).redis, "writer")
        writer = redis.Redis.from_url(writer_url)
        active_key = OnlineStore(writer).active_key
        writer.set(active_key, "v1")
        cli = run("cli", "GET", active_key)
        assert cli.stdout.strip() == "v1" and "Warning" not in cli.stderr  # the secret went by the environment
        assert run("stop").returncode == 0 and run("status").returncode == 1
        assert (tmp_path / "redis" / "dump.rdb").exists()
        embedded.start(port, tmp_path / "redis")
        assert redis.Redis.from_url(writer_url).get(active_key) == b"v1"  # the snapshot was loaded again
    finally:
        embedded.stop(port, tmp_path / "redis")


def test_embedded_redis_refuses_a_foreign_server_on_its_port(redis_server: RedisServer, tmp_path: Path) -> None:
    redis_server.ensure_running()
    with pytest.raises(embedded.EmbeddedRedisError, match="does not take the secrets"):
        embedded.start(redis_server.port, tmp_path / "redis")
    with pytest.raises(embedded.EmbeddedRedisError, match="is not the embedded one: not stopping it"):
        embedded.stop(redis_server.port, tmp_path / "redis")
    assert redis.Redis.from_url(redis_server.url).ping()


def test_store_commands_list_versions_and_roll_back(
    redis_url: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    store = OnlineStore.from_url(redis_url, version_cache_seconds=0)
    load(store, "20261127T000001Z", {5: {"age": 30}})
    store.publish("20261127T000001Z")
    load(store, "20261127T000002Z", {5: {"age": 31}})
    store.publish("20261127T000002Z")
    listed = subprocess.run([str(ROOT / "spark-submit.sh"), "versions", "--redis-url", redis_url], capture_output=True,
                            text=True, timeout=60, env=clean_env())  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[1].split()[:3] == ["20261127T000001Z", "complete", "1"]
    assert lines[2].split()[:3] == ["20261127T000002Z", "ACTIVE", "1"]

    caplog.set_level(logging.INFO)

    def command(*args: str) -> int:  # the same command line, in this process
        capsys.readouterr()
        return main([*args, "--redis-url", redis_url])

    assert command("sample-id") == 0 and capsys.readouterr().out == "5\n"
    assert command("publish", "20261127T000001Z") == 0 and "was 20261127T000002Z" in caplog.text
    assert store.read(5) == ("20261127T000001Z", {"age": 30})
    assert command("publish", "20990101T000000Z") == 1 and "not a complete load" in caplog.text
    with pytest.raises(SystemExit) as refused:
        main(["versions", "--redis-url", "redis://:pw@127.0.0.1:1/0"])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "anyone can read in `ps`" in err and "pw@" not in err


GEVENT_READS = """
from gevent import monkey

monkey.patch_all()
import json
import sys

import gevent

from serving.store import OnlineStore

url, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = OnlineStore.from_url(url, 0.5, 2.0, prefix=prefix, coalesce=True)


def read(client_id):
    try:  # even clients: named fields (HMGET), odd ones: whole hashes (HGETALL), in the same round trips
        return store.read(client_id, ("nb_previous_loans",) if client_id % 2 == 0 else None)
    except Exception as exc:
        return type(exc).__name__


def read_many(client_ids, fields=None):
    try:
        return store.read_many(client_ids, fields)
    except Exception as exc:
        return type(exc).__name__


greenlets = [gevent.spawn(read, i) for i in range(1, count + 1)]
batches = [gevent.spawn(read_many, ids) for ids in ([1, 2, 999], [6, 7, 8], [])]
batches.append(gevent.spawn(read_many, [3, 999, 4], ("nb_previous_loans",)))
gevent.joinall(greenlets + batches)
print(json.dumps({"answers": [g.value for g in greenlets], "many": [g.value for g in batches],
                  "batches": store.coalescing.batches, "reads": store.coalescing.reads}))
"""


def test_store_concurrent_reads_under_gevent_share_round_trips_each_with_its_own_answer(
    store: OnlineStore, store_url: str, tmp_path: Path
) -> None:
    records = {i: {"nb_previous_loans": i, "loan_date": f"2020-01-{i % 28 + 1:02d}"} for i in range(1, 120)}
    load(store, "v1", records)
    store.publish("v1")
    # Two clients' keys hold a string: those reads alone fail (WRONGTYPE), the others are answered.
    connect(store_url, 0.5, 1.0).set(store.client_key("v1", 7), "not a hash")
    connect(store_url, 0.5, 1.0).set(store.client_key("v1", 8), "not a hash")
    script = tmp_path / "reads.py"
    script.write_text(GEVENT_READS)
    run = subprocess.run([str(BIN / "python"), str(script), store_url, store.prefix, "150"], cwd=ROOT,
                         env=clean_env(), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    expected = ["ResponseError" if i in (7, 8) else ["v1", records.get(i)] for i in range(1, 151)]
    assert result["answers"] == expected
    # A request reading several clients gets its own answers in order, or its own error.
    assert result["many"] == [["v1", [records[1], records[2], None]], "ResponseError", ["v1", []],
                              ["v1", [records[3], None, records[4]]]]  # fmt: skip
    # Each greenlet reads the active version (nothing cached yet), then its clients: 154 + 150 + 9 reads,
    # sharing a handful of pipelines rather than 306 round trips (and as many connections: beyond
    # redis-py's pool of 100).
    assert result["reads"] == 154 + 150 + 9
    assert 2 <= result["batches"] <= 10


KEPT_CONNECTION = """
from gevent import monkey

monkey.patch_all()
import json
import sys

import gevent

from serving.store import OnlineStore

store = OnlineStore.from_url(sys.argv[1], 0.5, 2.0, prefix=sys.argv[2], version_cache_seconds=0, coalesce=True)
for line in sys.stdin:
    action, client_id = line.split()
    try:
        with gevent.Timeout(0.5 if action == "hurry" else None):
            answer = store.read(int(client_id))
    except BaseException as exc:
        answer = type(exc).__name__
    print(json.dumps(answer), flush=True)
"""


def test_store_kept_connection_survives_a_restart_and_never_gives_a_stale_answer(
    redis_server: RedisServer, redis_url: str, tmp_path: Path
) -> None:
    """The batcher keeps its connection between round trips: a Redis restarted in between is reconnected
    (no error), and a request that gives up on a hung Redis (its own timeout) leaves its round trip to
    finish, so the late answer never becomes the next request's answer."""
    prefix = f"t{time.monotonic_ns()}"
    records = {i: {"nb_previous_loans": i, "loan_date": f"2020-01-{i:02d}"} for i in range(1, 6)}

    def published() -> None:
        store = OnlineStore.from_url(redis_url, 0.5, 1.0, prefix=prefix)
        load(store, "v1", records)
        store.publish("v1")
        store.close()

    published()
    script = tmp_path / "kept.py"
    script.write_text(KEPT_CONNECTION)
    reader = subprocess.Popen([str(BIN / "python"), str(script), redis_url, prefix], cwd=ROOT, env=clean_env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert reader.stdin is not None and reader.stdout is not None

    def ask(action: str, client_id: int) -> object:
        reader.stdin.write(f"{action} {client_id}\n")
        reader.stdin.flush()
        return json.loads(reader.stdout.readline())

    try:
        assert ask("read", 1) == ["v1", records[1]]
        redis_server.stop()
        redis_server.start()
        published()
        assert ask("read", 2) == ["v1", records[2]]  # the kept connection was broken: reconnected, sent again
        redis_server.pause()
        assert ask("hurry", 3) == "Timeout"  # its request gave up; the answers are still to come
        redis_server.resume()
        assert ask("read", 4) == ["v1", records[4]]  # its own answers, not client 3's
        assert ask("read", 5) == ["v1", records[5]]
    finally:
        redis_server.resume()
        reader.stdin.close()
        reader.wait(10)


DURING_A_ROUND_TRIP = """
from gevent import monkey

monkey.patch_all()
import json
import sys

import gevent
import redis

from serving.store import OnlineStore

url, prefix, socket_timeout, sleep = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
store = OnlineStore.from_url(url, 0.5, socket_timeout, prefix=prefix, coalesce=True)
store.read(1)  # the version, then cached: two round trips


def read(client_id):
    try:
        return store.read(client_id)
    except Exception as exc:
        return type(exc).__name__


sleeper = gevent.spawn(redis.Redis.from_url(url).execute_command, "DEBUG", "SLEEP", sleep)
gevent.sleep(0.05)
waves = []
for wave in range(12):  # the first wave's round trip waits on the sleeping Redis; the others are added meanwhile
    waves += [gevent.spawn(read, wave * 3 + i) for i in range(1, 4)]
    gevent.sleep(0.01)
gevent.joinall([sleeper, *waves], raise_error=True)
pool = store._client.connection_pool
print(json.dumps({"answers": [g.value for g in waves], "created": len(pool._connections),
                  "kept": store.coalescing.kept_connections, "free": sum(c is not None for c in pool.pool.queue),
                  "batches": store.coalescing.batches, "reads": store.coalescing.reads}))
"""


DURING_RECORDS = {i: {"nb_previous_loans": i, "loan_date": "2020-01-01"} for i in range(1, 40)}


def during_a_round_trip(url: str, socket_timeout: float, sleep: float, tmp_path: Path) -> dict:
    """What `DURING_A_ROUND_TRIP` saw: reads of a published version holding `DURING_RECORDS`, made while Redis
    sleeps `sleep` seconds (DEBUG SLEEP)."""
    store = OnlineStore.from_url(url, 0.5, 1.0, prefix=f"t{time.monotonic_ns()}")
    load(store, "v1", DURING_RECORDS)
    store.publish("v1")
    script = tmp_path / "during.py"
    script.write_text(DURING_A_ROUND_TRIP)
    run = subprocess.run([str(BIN / "python"), str(script), url, store.prefix, str(socket_timeout), str(sleep)],
                         cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    result: dict = json.loads(run.stdout)
    return result


def test_store_batcher_sends_the_reads_made_during_a_round_trip_together_in_the_next(
    redis_url: str, tmp_path: Path
) -> None:
    """One round trip at a time (a group commit): while one waits on a slow Redis, the reads made meanwhile
    gather, and go out together when it ends, on the one connection the batcher keeps. (A single Redis: on a
    cluster the batch goes through the cluster client's pipeline.)"""
    result = during_a_round_trip(redis_url, 5.0, 0.5, tmp_path)
    assert result["answers"] == [["v1", DURING_RECORDS[i]] for i in range(1, 37)]
    # The version and client 1; the first wave; the eleven waves added while it waited, in one round trip.
    assert (result["batches"], result["reads"]) == (4, 2 + 36)
    assert (result["created"], result["kept"], result["free"]) == (1, 1, 0)


def test_store_batcher_fails_the_reads_made_during_a_round_trip_that_times_out_with_it(
    redis_url: str, tmp_path: Path
) -> None:
    """A round trip that times out (a Redis that does not answer) fails the reads made while it waited at the
    same moment, rather than sending them to wait as long again; its connection goes back to the pool."""
    result = during_a_round_trip(redis_url, 0.6, 1.5, tmp_path)
    assert result["answers"] == ["TimeoutError"] * 36
    assert (result["batches"], result["reads"]) == (3, 2 + 3)  # the first wave's round trip only
    assert (result["created"], result["kept"], result["free"]) == (1, 0, 1)


def test_store_reads_go_straight_to_redis_outside_gevent(redis_url: str) -> None:
    store = OnlineStore.from_url(redis_url, 0.5, 1.0, coalesce=True)
    assert store.coalescing is None
