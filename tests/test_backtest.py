"""The backtest and drift report on synthetic features with a known healthy, shuffled or shifted window."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conf import load_settings
from model import backtest as bt
from model import drift, registry
from model import train as tr
from model.data import load_features
from tests.synthetic import synthetic_features

ROOT = Path(__file__).resolve().parent.parent
MODEL_SETTINGS = load_settings(env={}).model
SETTINGS = dataclasses.replace(
    MODEL_SETTINGS,
    classifier=dataclasses.replace(MODEL_SETTINGS.classifier, n_estimators=20, max_depth=5, min_samples_leaf=5),
)
FLOORS = dataclasses.replace(load_settings(env={}).monitoring, min_roc_auc=0.6, min_average_precision=0.2,
                             min_recall=0.3, max_psi=0.25)  # fmt: skip
UNTIL = dt.date(2019, 12, 31)
LATER = bt.Window(dt.date(2020, 1, 1), None)


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Synthetic features (no drift by construction) and a model trained up to 2019, approved."""
    base = tmp_path_factory.mktemp("backtest")
    features = synthetic_features(base / "features", clients=600, seed=1)
    result = tr.train(SETTINGS, load_features(features, UNTIL), leaky=False)
    models = base / "models"
    registry.approve(models, registry.save(models, result.pipeline, result.card, result.plots()))
    return features, models


def rewrite_window(source: Path, target: Path, column: str, change: Callable[[np.ndarray], np.ndarray]) -> Path:
    """A copy of the features where `column` of the loans after UNTIL is replaced by change(values)."""
    table = pq.read_table(source)
    frame = table.to_pandas(date_as_object=True)
    later = frame["loan_date"] > UNTIL
    frame[column] = frame[column].astype("float64")
    frame.loc[later, column] = change(frame.loc[later, column].to_numpy())
    target.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(frame, schema=table.schema, preserve_index=False), target / "part-0.parquet")
    return target


def test_psi_is_zero_for_the_same_distribution_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(0)
    import pandas as pd

    train = pd.DataFrame({"x": rng.normal(size=5000)})
    bins = drift.reference(train, ["x"])
    assert len(bins["x"]["edges"]) == 9 and abs(sum(bins["x"]["shares"]) - 1) < 1e-9
    same = drift.drift(pd.DataFrame({"x": rng.normal(size=5000)}), bins)["x"]
    shifted = drift.drift(pd.DataFrame({"x": rng.normal(loc=1.0, size=5000)}), bins)["x"]
    assert same < 0.02 < 0.25 < shifted
    assert drift.psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert drift.psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * np.log(0.5) * -1 + 0.25 * np.log(1.5))


def test_backtest_healthy_later_window_passes(registry_dir: tuple[Path, Path], tmp_path: Path) -> None:
    features, models = registry_dir
    pipeline, card = registry.load_approved(models)
    result = bt.backtest(features, pipeline, card, LATER, FLOORS)
    report = result.report
    assert report["exit_code"] == bt.HEALTHY and report["verdict"] == "healthy"
    assert all(c["passed"] for c in report["checks"])
    assert max(report["drift"]["psi"].values()) < FLOORS.max_psi
    assert report["window"]["first_loan_date"] >= "2020-01-01"
    bt.write_report(tmp_path / "report", result)
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["verdict"] == "healthy" and saved["metrics"]["roc_auc"] == report["metrics"]["roc_auc"]
    for plot in ("scores.png", "roc.png", "drift.png"):
        assert (tmp_path / "report" / plot).read_bytes()[:4] == b"\x89PNG"
    assert "verdict: healthy (exit code 0)" in (tmp_path / "report" / "summary.txt").read_text()


def test_backtest_shuffled_labels_break_the_floors(registry_dir: tuple[Path, Path], tmp_path: Path) -> None:
    features, models = registry_dir
    rng = np.random.default_rng(5)
    shuffled = rewrite_window(features, tmp_path / "shuffled", "status", rng.permutation)
    pipeline, card = registry.load_approved(models)
    report = bt.backtest(shuffled, pipeline, card, LATER, FLOORS).report
    assert report["exit_code"] == bt.FLOOR_BROKEN
    assert report["metrics"]["roc_auc"] < FLOORS.min_roc_auc
    assert report["verdict"].startswith("floor broken: ")
    assert report["drift"]["drifted"] == []  # the features did not move


def test_backtest_shifted_feature_is_drift(registry_dir: tuple[Path, Path], tmp_path: Path) -> None:
    features, models = registry_dir
    older = rewrite_window(features, tmp_path / "older", "age", lambda ages: ages + 25)
    pipeline, card = registry.load_approved(models)
    report = bt.backtest(older, pipeline, card, LATER, dataclasses.replace(FLOORS, min_roc_auc=0.0,
                         min_average_precision=0.0, min_recall=0.0)).report  # fmt: skip
    assert report["drift"]["drifted"] == ["age"]
    assert report["exit_code"] == bt.DRIFT and report["verdict"] == "drift: age"


@pytest.mark.parametrize(
    ("window", "message"),
    [
        (bt.Window(dt.date(2019, 12, 31), None), "overlaps the training period .* up to 2019-12-31"),
        (bt.Window(dt.date(2019, 6, 1), dt.date(2020, 6, 1)), "overlaps the training period"),
        (bt.Window(dt.date(2030, 1, 1), None), "holds 0 labelled loans"),
        (bt.Window(dt.date(2020, 6, 1), dt.date(2020, 5, 1)), "ends .* before it starts"),
    ],
)
def test_backtest_refuses_dishonest_or_empty_windows(
    registry_dir: tuple[Path, Path], window: bt.Window, message: str
) -> None:
    features, models = registry_dir
    pipeline, card = registry.load_approved(models)
    with pytest.raises(bt.WindowError, match=message):
        bt.backtest(features, pipeline, card, window, FLOORS)


@pytest.mark.slow
def test_backtest_command_exit_codes(registry_dir: tuple[Path, Path], tmp_path: Path) -> None:
    features, models = registry_dir

    def command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["./spark-submit.sh", "backtest", "--features", str(features), *args],
                              cwd=ROOT, env=dict(os.environ), capture_output=True, text=True)  # fmt: skip

    floors = ["--min-roc-auc", "0.6", "--min-average-precision", "0.2", "--min-recall", "0.3"]
    healthy = command("--models", str(models), "--from", "2020-01-01", "--report", str(tmp_path / "r"), *floors)
    assert healthy.returncode == 0, healthy.stderr
    assert "verdict: healthy" in healthy.stdout
    strict = command("--models", str(models), "--from", "2020-01-01", "--report", str(tmp_path / "r2"),
                     "--min-roc-auc", "0.99")  # fmt: skip
    assert strict.returncode == bt.FLOOR_BROKEN and "BELOW FLOOR" in strict.stdout
    refused = command("--models", str(models), "--from", "2019-06-01", "--report", str(tmp_path / "r3"))
    assert refused.returncode == 2 and "overlaps the training period" in refused.stderr
    assert not (tmp_path / "r3").exists()
    empty = command("--models", str(tmp_path / "no-models"), "--from", "2020-01-01", "--report", str(tmp_path / "r4"))
    assert empty.returncode == 2 and "no approved model" in empty.stderr and "Traceback" not in empty.stderr
