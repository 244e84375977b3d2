"""The same commands on a real standalone Spark cluster (a master, two 1-core workers on loopback) give
what they give in local mode: the feature job's outputs, materialize's Redis fields, the stream's."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import redis
from pyspark.sql import SparkSession

from serving.store import OnlineStore
from spark_jobs import materialize as mz
from spark_jobs import stream as sj
from tests.conftest import AS_OF, DEFAULTS, Dirty, ModelRun
from tests.helpers import ROOT, clean_env
from tests.spark_cluster import SparkCluster
from tests.test_stream import TODAY, land, loan, raw_rows

pytestmark = pytest.mark.slow


def on_cluster(cluster: SparkCluster, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["./spark-submit.sh", "--master", cluster.url, *args], cwd=ROOT, env=clean_env(),
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def rows(folder: Path) -> list[dict]:
    return sorted(pq.read_table(folder).to_pylist(), key=lambda r: json.dumps(r, default=str, sort_keys=True))


def namespace(url: str, prefix: str) -> dict[str, dict[str, str]]:
    """Every client hash of the active version under `prefix`, by client id."""
    store = OnlineStore.from_url(url, prefix=prefix, version_cache_seconds=0)
    version = store.active_version()
    assert version is not None
    admin = redis.Redis.from_url(url, decode_responses=True)
    keys = sorted(admin.scan_iter(store.client_key(version, "*"), count=1000))
    return {key.rsplit(":", 1)[1]: admin.hgetall(key) for key in keys}


def test_features_materialize_and_stream_on_a_cluster_equal_local_mode(
    spark: SparkSession, spark_cluster: SparkCluster, dirty: Dirty, model_run: ModelRun, redis_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    # The feature job: the same features, clients and quarantine as the local run, the same counts.
    out = tmp_path / "cluster-out"
    on_cluster(spark_cluster, "features", "--input", str(dirty.source), "--output", str(out), "--as-of", str(AS_OF))
    for name in ("features", "clients", "quarantine"):
        assert rows(out / name) == rows(dirty.out / name), name
    timing = {"input", "output", "started_at", "run_seconds", "files"}
    local_report = json.loads((dirty.out / "report.json").read_text())
    cluster_report = json.loads((out / "report.json").read_text())
    assert {k: v for k, v in cluster_report.items() if k not in timing} == {
        k: v for k, v in local_report.items() if k not in timing
    }
    assert any(app["name"].endswith("-features") for app in spark_cluster.applications())  # it ran there

    # materialize: the executors write to a real Redis; every field equals the local load's.
    settings = dataclasses.replace(DEFAULTS.redis, url=redis_url, batch_size=50, prefix="local")
    mz.run(spark, mz.MaterializeArgs(str(out / "features"), str(model_run.models), str(out / "clients"), settings))
    on_cluster(spark_cluster, "materialize", "--features", str(out / "features"), "--models", str(model_run.models),
               "--redis-url", redis_url, "--prefix", "cluster")  # fmt: skip
    local, cluster = namespace(redis_url, "local"), namespace(redis_url, "cluster")
    assert len(cluster) == cluster_report["clients"] and cluster == local

    # stream --once: the same landed loans give the same hashes.
    history = raw_rows(dirty.source)
    templates = [r for r in history if r["loan_id"].strip().isdigit()][:30]
    landed = [loan(t, 7 * 10**12 + i, TODAY, f"{50 + i}.5") for i, t in enumerate(templates)]
    for base in (tmp_path / "local-stream", tmp_path / "cluster-stream"):
        land(base / "landing", "a.csv", landed)

    def stream_args(base: Path, prefix: str) -> list[str]:
        return ["--landing", str(base / "landing"), "--checkpoint", str(base / "ckpt"), "--quarantine",
                str(base / "q"), "--once", "--redis-url", redis_url, "--prefix", prefix]  # fmt: skip

    (report,) = sj.run(spark, sj.parse_args(stream_args(tmp_path / "local-stream", "local"), DEFAULTS))
    assert sum(report.applied.values()) > 0
    on_cluster(spark_cluster, "stream", *stream_args(tmp_path / "cluster-stream", "cluster"))
    local, cluster = namespace(redis_url, "local"), namespace(redis_url, "cluster")
    assert cluster == local
    touched = {r["id"].strip() for r in landed}
    assert all("landed" in local[c] for c in touched if c in local)
