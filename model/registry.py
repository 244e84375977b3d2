"""The model registry: one folder per version, a model card each, and one approved version.

Storage and approval only; the commands are in `model.cli`. Layout of MODELS:
    <version>/model.joblib      the fitted pipeline; `predict_proba` takes the card's feature columns
    <version>/model_card.json   the model card (DESIGN §7)
    <version>/roc.png, pr.png   ROC and precision-recall curves on the held-out clients
    approved.json               {"version": ..., "approved_at": ..., "history": [...]}

Versions are UTC timestamps (`20261127T081500Z`), so they sort by age. A version folder appears whole
(written aside, then renamed); `approved.json` is replaced in one rename.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn

log = logging.getLogger(__name__)

MODEL_FILE = "model.joblib"
CARD_FILE = "model_card.json"
APPROVED_FILE = "approved.json"
VERSION = re.compile(r"^\d{8}T\d{6}Z(-\d+)?$")
# The plots of a version: what they show -> file name.
PLOTS = {"roc": "roc.png", "precision_recall": "pr.png"}


class RegistryError(ValueError):
    """A model version is unknown, incomplete or unreadable, or nothing is approved."""


def _library_versions() -> dict[str, str]:
    import imblearn
    import pandas
    import pyarrow

    return {
        "python": sys.version.split()[0], "scikit-learn": sklearn.__version__,
        "imbalanced-learn": imblearn.__version__, "numpy": np.__version__, "pandas": pandas.__version__,
        "pyarrow": pyarrow.__version__, "joblib": joblib.__version__,
    }  # fmt: skip


def _new_version(models: Path, now: dt.datetime) -> str:
    base = now.strftime("%Y%m%dT%H%M%SZ")
    version, n = base, 1
    while (models / version).exists():
        n += 1
        version = f"{base}-{n}"
    return version


def save(models: Path, pipeline: Any, card: dict[str, Any], plots: Mapping[str, bytes]) -> str:
    """Write a new candidate version (pipeline, card, PNG plots by file name) and return its version."""
    models.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    version = _new_version(models, now)
    full_card = {
        "version": version,
        "created_at": now.isoformat(timespec="seconds"),
        **card,
        "library_versions": _library_versions(),
        "plots": dict(PLOTS),
    }
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=models))
    staging.chmod(0o755)  # mkdtemp makes it private; a registry folder is meant to be read by others
    try:
        joblib.dump(pipeline, staging / MODEL_FILE)
        (staging / CARD_FILE).write_text(json.dumps(full_card, indent=2) + "\n", encoding="utf-8")
        for name, png in plots.items():
            (staging / name).write_bytes(png)
        staging.rename(models / version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote candidate %s to %s", version, models / version)
    return version


def versions(models: Path) -> list[str]:
    """The complete versions in the registry, oldest first."""
    if not models.is_dir():
        return []
    return sorted(p.name for p in models.iterdir() if VERSION.match(p.name) and (p / CARD_FILE).is_file())


def read_card(models: Path, version: str) -> dict[str, Any]:
    """The model card of `version`, or a RegistryError naming what is wrong."""
    if not VERSION.match(version) or not (models / version).is_dir():
        known = ", ".join(versions(models)) or "none"
        raise RegistryError(f"unknown model version {version!r} in {models}; known versions: {known}")
    try:
        return json.loads((models / version / CARD_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RegistryError(f"model card of {version} in {models} is unreadable: {exc}") from None


def approved(models: Path) -> dict[str, Any] | None:
    """The approval record, or None when no version was ever approved."""
    path = models / APPROVED_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{path} is unreadable: {exc}") from None


def approve(models: Path, version: str, by: str | None = None) -> dict[str, Any]:
    """Mark `version` approved (also the way to roll back); the model must load."""
    read_card(models, version)
    try:
        joblib.load(models / version / MODEL_FILE)
    except Exception as exc:  # joblib raises many kinds on a damaged file
        raise RegistryError(f"model of {version} in {models} does not load: {exc}") from None
    previous = approved(models)
    entry = {
        "version": version,
        "approved_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "approved_by": by or getpass.getuser(),
    }
    record = {**entry, "history": [*(previous or {}).get("history", []), entry]}
    tmp = models / f".{APPROVED_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, models / APPROVED_FILE)
    log.info("approved %s (was %s)", version, previous["version"] if previous else "none")
    return record


def load_approved(models: Path) -> tuple[Any, dict[str, Any]]:
    """The approved pipeline and its card; a RegistryError when nothing is approved."""
    record = approved(models)
    if record is None:
        raise RegistryError(f"no approved model in {models}: approve one with 'spark-submit.sh approve VERSION'")
    card = read_card(models, record["version"])
    return joblib.load(models / record["version"] / MODEL_FILE), card


def table(models: Path) -> str:
    """The versions with their headline metrics and which one is approved."""
    record = approved(models)
    current = record["version"] if record else None
    lines = [f"{'version':<20} {'status':<9} {'roc_auc':>7} {'avg_prec':>8} {'recall':>6} {'thresh':>6}  until"]
    for version in versions(models):
        card = read_card(models, version)
        m = card.get("metrics", {})
        lines.append(
            f"{version:<20} {'APPROVED' if version == current else 'candidate':<9} {m.get('roc_auc', 0):7.3f} "
            f"{m.get('average_precision', 0):8.3f} {m.get('recall', 0):6.3f} {card['threshold']['value']:6.3f}  "
            f"{card['training_data'].get('until') or '-'}"
        )
    return "\n".join(lines)
