"""Backtest the approved model on a later window of labelled loans, and measure feature drift.

    ./spark-submit.sh backtest --features data/output/features --models data/models --from 2020-10-01 \\
        [--to 2020-12-31] --report data/backtest [--min-roc-auc X] [--min-average-precision X] \\
        [--min-recall X] [--max-psi X]

Scores the window's labelled loans with the approved model, compares ROC AUC, average precision and
recall at the model's threshold with the model card and with floors, and each feature's population
stability index against the bins saved from the training data. Writes `report.json`, `summary.txt`
and PNG plots to the report folder. Exit code: 0 healthy, 3 a floor broken, 4 drift past the limit
(3 when both), 2 bad arguments, a refused window or no approved model.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from conf import SettingsError, command_settings, emit
from conf.settings import MonitoringSettings, parse_date
from model import drift, plots, registry
from model.data import LABEL, FeaturesError, load_features
from model.evaluation import metrics

log = logging.getLogger(__name__)

HEALTHY, FLOOR_BROKEN, DRIFT = 0, 3, 4


class WindowError(ValueError):
    """The backtest window is empty or overlaps the model's training period."""


@dataclass(frozen=True)
class Window:
    start: dt.date
    end: dt.date | None


@dataclass(frozen=True)
class BacktestResult:
    """The report (written as report.json) and the window's scores and labels (for the plots)."""

    report: dict[str, Any]
    scores: np.ndarray
    labels: np.ndarray

    @property
    def exit_code(self) -> int:
        return int(self.report["exit_code"])


def training_end(card: dict[str, Any]) -> dt.date:
    """The last day the model may have seen: its `--until`, else its last training loan date."""
    data = card["training_data"]
    return dt.date.fromisoformat(data["until"] or data["last_loan_date"])


def backtest(features: str | Path, pipeline: Any, card: dict[str, Any], window: Window,
             floors: MonitoringSettings) -> BacktestResult:  # fmt: skip
    """Score the window, compare with the card and the floors, measure drift; return the report."""
    if "drift_reference" not in card:
        raise registry.RegistryError(f"model {card['version']} has no drift reference in its card: retrain it")
    seen_until = training_end(card)
    if window.start <= seen_until:
        raise WindowError(
            f"window starting {window.start} overlaps the training period of model {card['version']} "
            f"(trained on loans up to {seen_until}): start the backtest after {seen_until}"
        )
    if window.end is not None and window.end < window.start:
        raise WindowError(f"window ends ({window.end}) before it starts ({window.start})")
    frame = load_features(features, window.end, allow_empty=True).frame
    frame = frame[frame["loan_date"] >= window.start]
    if frame.empty or frame[LABEL].nunique() < 2:
        raise WindowError(
            f"window {window.start} .. {window.end or 'end'} holds {len(frame)} labelled loans"
            f"{'' if frame.empty else ' of a single class'}: nothing to backtest"
        )
    scores = pipeline.predict_proba(frame[card["features"]])[:, 1]
    labels = frame[LABEL].to_numpy()
    threshold = card["threshold"]["value"]
    observed = metrics(labels, scores, threshold)
    checks = [
        _check("roc_auc", observed, card, floors.min_roc_auc),
        _check("average_precision", observed, card, floors.min_average_precision),
        _check("recall", observed, card, floors.min_recall),
    ]
    psi = drift.drift(frame, card["drift_reference"])
    drifted = sorted(name for name, value in psi.items() if value > floors.max_psi)
    broken = [c["metric"] for c in checks if not c["passed"]]
    code = FLOOR_BROKEN if broken else DRIFT if drifted else HEALTHY
    verdict = " and ".join([*(["floor broken: " + ", ".join(broken)] if broken else []),
                            *(["drift: " + ", ".join(drifted)] if drifted else [])]) or "healthy"  # fmt: skip
    report = {
        "model_version": card["version"],
        "window": {
            "from": window.start.isoformat(),
            "to": window.end.isoformat() if window.end else None,
            "first_loan_date": min(frame["loan_date"]).isoformat(),
            "last_loan_date": max(frame["loan_date"]).isoformat(),
            "clients": int(frame["id"].nunique()),
        },
        "model_trained_until": seen_until.isoformat(),
        "threshold": threshold,
        "metrics": observed,
        "checks": checks,
        "drift": {"psi": psi, "max_psi": floors.max_psi, "drifted": drifted},
        "verdict": verdict,
        "exit_code": code,
    }
    return BacktestResult(report, scores, labels)


def _check(metric: str, observed: dict[str, Any], card: dict[str, Any], floor: float) -> dict[str, Any]:
    value = observed[metric]
    return {"metric": metric, "value": value, "card": card["metrics"][metric],
            "change": value - card["metrics"][metric], "floor": floor, "passed": value >= floor}  # fmt: skip


def summary(report: dict[str, Any]) -> str:
    w = report["window"]
    lines = [f"backtest of model {report['model_version']} (trained up to {report['model_trained_until']}) "
             f"on {report['metrics']['rows']} labelled loans of {w['clients']} clients, "
             f"{w['first_loan_date']} .. {w['last_loan_date']}"]  # fmt: skip
    for c in report["checks"]:
        lines.append(f"  {c['metric']:<18} {c['value']:.3f}  (card {c['card']:.3f}, floor {c['floor']:.3f})  "
                     f"{'ok' if c['passed'] else 'BELOW FLOOR'}")  # fmt: skip
    limit = report["drift"]["max_psi"]
    for name, value in report["drift"]["psi"].items():
        lines.append(f"  psi {name:<25} {value:.3f}  (limit {limit:.2f})  {'ok' if value <= limit else 'DRIFT'}")
    lines.append(f"verdict: {report['verdict']} (exit code {report['exit_code']})")
    return "\n".join(lines)


def write_report(folder: Path, result: BacktestResult) -> None:
    """Write report.json, summary.txt and the plots aside, then move them into the folder."""
    report = result.report
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-backtest-", dir=folder))
    try:
        (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (staging / "summary.txt").write_text(summary(report) + "\n", encoding="utf-8")
        (staging / "scores.png").write_bytes(plots.scores(result.scores, result.labels, report["threshold"]))
        fpr, tpr, _ = roc_curve(result.labels, result.scores)
        title = f"ROC in the backtest window (AUC {report['metrics']['roc_auc']:.3f})"
        (staging / "roc.png").write_bytes(plots.curve(fpr, tpr, "false positive rate", "true positive rate", title))
        (staging / "drift.png").write_bytes(plots.drift(report["drift"]["psi"], report["drift"]["max_psi"]))
        for path in staging.iterdir():
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    settings = command_settings()
    floors = settings.monitoring
    parser = argparse.ArgumentParser(prog="spark-submit.sh backtest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", default=settings.features.features_dir, help="the feature job's features/ folder")
    parser.add_argument("--models", default=settings.model.models_dir, help="the model registry folder")
    parser.add_argument("--from", dest="start", required=True, help="first loan date of the window")
    parser.add_argument("--to", dest="end", default=None, help="last loan date of the window (default: all)")
    parser.add_argument("--report", required=True, help="folder for report.json, summary.txt and plots")
    parser.add_argument("--min-roc-auc", type=float, default=floors.min_roc_auc)
    parser.add_argument("--min-average-precision", type=float, default=floors.min_average_precision)
    parser.add_argument("--min-recall", type=float, default=floors.min_recall)
    parser.add_argument("--max-psi", type=float, default=floors.max_psi)
    args = parser.parse_args(argv)
    try:
        window = Window(parse_date(args.start), parse_date(args.end) if args.end else None)
    except SettingsError as exc:
        parser.error(str(exc))
    limits = MonitoringSettings(args.min_roc_auc, args.min_average_precision, args.min_recall, args.max_psi)
    try:
        pipeline, card = registry.load_approved(Path(args.models))
        result = backtest(args.features, pipeline, card, window, limits)
        write_report(Path(args.report), result)
    except (WindowError, FeaturesError, registry.RegistryError) as exc:
        log.error("%s", exc)
        return 2
    emit(summary(result.report))
    emit(f"report: {Path(args.report) / 'report.json'}")
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
