"""The backtest and drift report on the session's model, with a healthy, shuffled or shifted later window."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conf import load_settings
from credit.commands import main
from model import backtest as bt
from model import drift, registry
from tests.conftest import TRAINED_UNTIL, ModelRun
from tests.helpers import ROOT, clean_env

FLOORS = dataclasses.replace(load_settings(env={}).monitoring, min_roc_auc=0.6, min_average_precision=0.2,
                             min_recall=0.3, max_psi=0.25)  # fmt: skip
LATER = bt.Window(dt.date(2020, 1, 1), None)
# The README's exit codes, spelled here: a test must not agree with the code by reading its constants.
HEALTHY, FLOOR_BROKEN, DRIFT_ONLY, REFUSED = 0, 3, 4, 2


def rewrite_window(source: Path, target: Path, column: str, change: Callable[[np.ndarray], np.ndarray]) -> Path:
    """A copy of the features where `column` of the loans after TRAINED_UNTIL is replaced by change(values)."""
    table = pq.read_table(source)
    frame = table.to_pandas(date_as_object=True)
    later = frame["loan_date"] > TRAINED_UNTIL
    frame[column] = frame[column].astype("float64")
    frame.loc[later, column] = change(frame.loc[later, column].to_numpy())
    target.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(frame, schema=table.schema, preserve_index=False), target / "part-0.parquet")
    return target


def test_psi_is_zero_for_the_same_distribution_grows_with_a_shift_and_bins_empty_values() -> None:
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"x": rng.normal(size=5000)})
    bins = drift.reference(train, ["x"])
    assert len(bins["x"]["edges"]) == 9 and abs(sum(bins["x"]["shares"]) - 1) < 1e-9
    same = drift.drift(pd.DataFrame({"x": rng.normal(size=5000)}), bins)["x"]
    shifted = drift.drift(pd.DataFrame({"x": rng.normal(loc=1.0, size=5000)}), bins)["x"]
    assert same < 0.02 < 0.25 < shifted
    assert drift.psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert drift.psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * np.log(0.5) * -1 + 0.25 * np.log(1.5))
    # Empty values are a bin of their own: the same values, a fifth of them now empty, is drift.
    half_empty = pd.DataFrame({"x": [1.0, 2.0, None, None] * 10})
    with_empty = drift.reference(half_empty, ["x"])["x"]
    assert with_empty["missing_share"] == 0.5
    values = train["x"].to_numpy().copy()
    values[: len(values) // 5] = np.nan
    expected_psi = drift.psi([*bins["x"]["shares"], 0.0], [*[s * 0.8 for s in bins["x"]["shares"]], 0.2])
    assert drift.drift(pd.DataFrame({"x": values}), bins)["x"] == pytest.approx(expected_psi, rel=0.05)
    assert drift.drift(pd.DataFrame({"x": values}), bins)["x"] > 1.0


def test_backtest_healthy_later_window_passes(model_run: ModelRun, tmp_path: Path) -> None:
    pipeline, card = registry.load_approved(model_run.models)
    result = bt.backtest(model_run.features, pipeline, card, LATER, FLOORS)
    report = result.report
    assert (report["exit_code"], report["verdict"]) == (HEALTHY, "healthy")
    assert [c["passed"] for c in report["checks"]] == [True, True, True]
    assert max(report["drift"]["psi"].values()) < FLOORS.max_psi
    assert report["window"]["first_loan_date"] >= "2020-01-01" and report["model_version"] == model_run.version
    bt.write_report(tmp_path / "report", result)
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    for plot in ("scores.png", "roc.png", "drift.png"):
        assert (tmp_path / "report" / plot).read_bytes()[:4] == b"\x89PNG"
    assert "verdict: healthy (exit code 0)" in (tmp_path / "report" / "summary.txt").read_text()


def test_backtest_shuffled_labels_break_the_floors(model_run: ModelRun, tmp_path: Path) -> None:
    shuffled = rewrite_window(model_run.features, tmp_path / "shuffled", "status", np.random.default_rng(5).permutation)
    pipeline, card = registry.load_approved(model_run.models)
    report = bt.backtest(shuffled, pipeline, card, LATER, FLOORS).report
    assert report["exit_code"] == FLOOR_BROKEN
    assert report["metrics"]["roc_auc"] < FLOORS.min_roc_auc
    assert report["verdict"].startswith("floor broken: ") and report["drift"]["drifted"] == []


def test_backtest_training_end_falls_back_to_the_last_training_loan(model_run: ModelRun) -> None:
    pipeline, card = registry.load_approved(model_run.models)
    last = dt.date(2019, 11, 30)  # a card that has no --until: its last training loan is the end
    no_until = {**card, "training_data": {**card["training_data"], "until": None, "last_loan_date": last.isoformat()}}
    assert bt.training_end(no_until) == last and bt.training_end(card) == TRAINED_UNTIL
    with pytest.raises(bt.WindowError, match=f"trained on loans up to {last}"):
        bt.backtest(model_run.features, pipeline, no_until, bt.Window(last, None), FLOORS)
    after = bt.backtest(model_run.features, pipeline, no_until, bt.Window(last + dt.timedelta(days=1), None), FLOORS)
    assert after.report["model_trained_until"] == last.isoformat()


@pytest.mark.parametrize(
    ("window", "message"),
    [
        (bt.Window(dt.date(2019, 12, 31), None), "overlaps the training period .* up to 2019-12-31"),
        (bt.Window(dt.date(2019, 6, 1), dt.date(2020, 6, 1)), "overlaps the training period"),
        (bt.Window(dt.date(2030, 1, 1), None), "holds 0 labelled loans"),
        (bt.Window(dt.date(2020, 6, 1), dt.date(2020, 5, 1)), "ends .* before it starts"),
    ],
)
def test_backtest_refuses_dishonest_or_empty_windows(model_run: ModelRun, window: bt.Window, message: str) -> None:
    pipeline, card = registry.load_approved(model_run.models)
    with pytest.raises(bt.WindowError, match=message):
        bt.backtest(model_run.features, pipeline, card, window, FLOORS)


def test_backtest_command_exit_codes(
    model_run: ModelRun, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Through the command line (`credit.commands.main`, what `./spark-submit.sh backtest` runs)."""
    older = rewrite_window(model_run.features, tmp_path / "older", "age", lambda ages: ages + 25)

    def command(report: str, *args: str, features: Path = model_run.features, models: Path = model_run.models) -> int:
        capsys.readouterr()
        return main(["backtest", "--features", str(features), "--models", str(models), "--from", "2020-01-01",
                     "--report", str(tmp_path / report), *args])  # fmt: skip

    floors = ["--min-roc-auc", "0.6", "--min-average-precision", "0.2", "--min-recall", "0.3"]
    assert command("r1", *floors) == HEALTHY and "verdict: healthy" in capsys.readouterr().out
    assert command("r2", "--min-roc-auc", "0.99") == FLOOR_BROKEN and "BELOW FLOOR" in capsys.readouterr().out
    loose = ["--min-roc-auc", "0", "--min-average-precision", "0", "--min-recall", "0"]
    assert command("r3", *loose, features=older) == DRIFT_ONLY
    assert "verdict: drift: age (exit code 4)" in capsys.readouterr().out
    assert command("r4", "--min-roc-auc", "0.99", features=older) == FLOOR_BROKEN
    assert "and drift: age" in capsys.readouterr().out
    assert json.loads((tmp_path / "r4" / "report.json").read_text())["exit_code"] == FLOOR_BROKEN
    assert command("r5", "--from", "2019-06-01") == REFUSED and "overlaps the training period" in caplog.text
    assert command("r6", "--from", "2030-01-01") == REFUSED and "holds 0 labelled loans" in caplog.text
    assert not (tmp_path / "r5").exists() and not (tmp_path / "r6").exists()
    assert command("r7", models=tmp_path / "no-models") == REFUSED and "no approved model" in caplog.text


@pytest.mark.slow
def test_backtest_through_spark_submit(model_run: ModelRun, tmp_path: Path) -> None:
    args = ["--features", str(model_run.features), "--models", str(model_run.models), "--from", "2020-01-01",
            "--report", str(tmp_path / "r"), "--min-roc-auc", "0.99"]  # fmt: skip
    done = subprocess.run(["./spark-submit.sh", "backtest", *args], cwd=ROOT, env=clean_env(), capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == FLOOR_BROKEN, done.stderr
    assert done.stdout.splitlines()[-1] == f"report: {tmp_path / 'r' / 'report.json'}"
    assert "Traceback" not in done.stderr


def test_backtest_and_its_command_use_the_approved_version_when_there_are_several(
    model_run: ModelRun, tmp_path: Path
) -> None:
    import shutil

    models = tmp_path / "models"
    shutil.copytree(model_run.models, models)
    result = model_run.result
    newer = registry.save(models, result.pipeline, {**result.card, "threshold": {"value": 0.999, "rule": "x"}},
                          result.files())  # fmt: skip
    assert registry.versions(models)[-1] == newer  # a newer candidate, not approved
    pipeline, card = registry.load_approved(models)
    report = bt.backtest(model_run.features, pipeline, card, LATER, FLOORS).report
    assert report["model_version"] == model_run.version and report["threshold"] == result.card["threshold"]["value"]
