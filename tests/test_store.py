"""The online store against a real Redis server and a real three-node Redis Cluster."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from serving import embedded
from serving.store import Codec, NotPublished, OnlineStore, StoreError, connect
from tests.redis_servers import TlsProxy, free_port

ROOT = Path(__file__).resolve().parent.parent


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
    admin = redis.Redis.from_url(redis_url)
    admin.config_set("requirepass", "s3cret")
    try:
        with pytest.raises(redis.AuthenticationError):
            connect(redis_url, 0.5, 0.5)
        client = connect(redis_url.replace("redis://", "redis://:s3cret@"), 0.5, 0.5)
        assert client.ping() is True
        client.config_set("requirepass", "")
    finally:
        admin.close()


def test_store_connects_over_tls_with_a_password_from_a_rediss_url(redis_url: str, tmp_path: Path) -> None:
    admin = redis.Redis.from_url(redis_url)
    admin.config_set("requirepass", "s3cret")
    proxy = TlsProxy(tmp_path / "tls", admin.connection_pool.connection_kwargs["port"])
    try:
        store = OnlineStore(connect(proxy.url("s3cret"), 0.5, 1.0), version_cache_seconds=0)
        load(store, "v1", {7: {"age": 41, "loan_date": "2020-01-01"}})
        store.publish("v1")
        assert store.read(7) == ("v1", {"age": 41, "loan_date": "2020-01-01"})
        untrusted = proxy.url("s3cret").split("?")[0]  # the self-signed certificate is not trusted
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            connect(untrusted, 0.5, 1.0)
    finally:
        proxy.close()
        redis.Redis.from_url(redis_url, password="s3cret").config_set("requirepass", "")
        admin.close()


def test_embedded_redis_starts_on_loopback_keeps_data_and_stops(tmp_path: Path) -> None:
    port = free_port()
    env = {"CREDIT_REDIS_EMBEDDED_PORT": str(port), "CREDIT_REDIS_EMBEDDED_DIR": str(tmp_path / "redis"),
           "PATH": "/usr/bin:/bin"}  # fmt: skip
    run = [str(Path(sys.executable).with_name("credit")), "redis"]
    try:
        configured = {**env, "REDIS_URL": "redis://127.0.0.1:1/0"}
        ensure = subprocess.run([*run, "ensure"], env=configured, capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert ensure.stdout.strip() == "configured" and not (tmp_path / "redis").exists()
        started = subprocess.run([*run, "ensure"], env=env, capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert started.stdout.strip() == "embedded"
        started = subprocess.run([*run, "start"], env=env, capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert started.returncode == 0, started.stderr
        assert started.stdout.strip() == f"redis://127.0.0.1:{port}/0"
        client = redis.Redis(port=port)
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        active_key = OnlineStore(client).active_key
        client.set(active_key, "v1")
        again = subprocess.run([*run, "start"], env=env, capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert "reusing" in again.stderr and client.get(active_key) == b"v1"
        cli = subprocess.run([*run, "cli", "GET", active_key], env=env, capture_output=True, text=True, cwd=ROOT)
        assert cli.stdout.strip() == "v1"
        assert subprocess.run([*run, "stop"], env=env, cwd=ROOT, capture_output=True).returncode == 0
        assert subprocess.run([*run, "status"], env=env, cwd=ROOT, capture_output=True).returncode == 1
        assert (tmp_path / "redis" / "dump.rdb").exists()
        assert embedded.start(port, tmp_path / "redis") == f"redis://127.0.0.1:{port}/0"
        assert redis.Redis(port=port).get(active_key) == b"v1"  # the snapshot was loaded again
    finally:
        embedded.stop(port)


def test_store_commands_list_versions_and_roll_back(redis_url: str) -> None:
    store = OnlineStore(connect(redis_url, 0.5, 1.0), version_cache_seconds=0)
    load(store, "20261127T000001Z", {5: {"age": 30}})
    store.publish("20261127T000001Z")
    load(store, "20261127T000002Z", {5: {"age": 31}})
    store.publish("20261127T000002Z")

    def command(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(ROOT / "spark-submit.sh"), *args, "--redis-url", redis_url], capture_output=True,
                              text=True, timeout=60)  # fmt: skip

    listed = command("versions")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[1].split()[:3] == ["20261127T000001Z", "complete", "1"]
    assert lines[2].split()[:3] == ["20261127T000002Z", "ACTIVE", "1"]
    assert command("sample-id").stdout.strip() == "5"
    rolled = command("publish", "20261127T000001Z")
    assert rolled.returncode == 0 and "was 20261127T000002Z" in rolled.stderr
    assert store.read(5) == ("20261127T000001Z", {"age": 30})
    refused = command("publish", "20990101T000000Z")
    assert refused.returncode == 1 and "not a complete load" in refused.stderr
