"""The model registry: one folder per version, a model card each, and one approved version.

Storage and approval only; the commands are in `model.cli`. Layout of MODELS:
    <version>/model.joblib      the fitted pipeline; `predict_proba` takes the card's feature columns
    <version>/model.onnx        the same model as ONNX (imputation and classifier), for scoring on a request
    <version>/model_card.json   the model card (DESIGN §7)
    <version>/roc.png, pr.png   ROC and precision-recall curves on the held-out clients
    <version>/split.csv         id, part: the clients used for training, validation (threshold) and test
    <version>/held_out.csv      id, loan_date, status, score: the test clients' loans as the model scored them
    approved.json               {"version": ..., "approved_at": ..., "history": [...]}

Versions are UTC timestamps (`20261127T081500Z`), so they sort by age. A version folder appears whole
(written aside, then renamed); `approved.json` is replaced in one rename.

Unpickling runs code, so a model file is never loaded on trust: the card records the SHA-256 of
`model.joblib` when it is written, `approve` checks the file against it and records it in
`approved.json`, and every load checks the file against both before unpickling it.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
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
PORTABLE_FILE = "model.onnx"
CARD_FILE = "model_card.json"
APPROVED_FILE = "approved.json"
VERSION = re.compile(r"^\d{8}T\d{6}Z(-\d+)?$")
# The plots of a version: what they show -> file name.
PLOTS = {"roc": "roc.png", "precision_recall": "pr.png"}
# Its other files: which client went to which part, and the held-out clients' scores.
FILES = {"split": "split.csv", "held_out": "held_out.csv"}


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


def save(models: Path, pipeline: Any, card: dict[str, Any], files: Mapping[str, bytes]) -> str:
    """Write a new candidate version (pipeline, card, and its files by name) and return its version."""
    models.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    version = _new_version(models, now)
    full_card = {
        "version": version,
        "created_at": now.isoformat(timespec="seconds"),
        **card,
        "library_versions": _library_versions(),
        "plots": dict(PLOTS),
        "files": dict(FILES),
    }
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=models))
    staging.chmod(0o755)  # mkdtemp makes it private; a registry folder is meant to be read by others
    try:
        joblib.dump(pipeline, staging / MODEL_FILE)
        for name, content in files.items():
            (staging / name).write_bytes(content)
        full_card["artifact"] = {"file": MODEL_FILE, "sha256": sha256_of(staging / MODEL_FILE)}
        if (staging / PORTABLE_FILE).exists():
            portable = {"portable_file": PORTABLE_FILE, "portable_sha256": sha256_of(staging / PORTABLE_FILE)}
            full_card["artifact"] |= portable
        (staging / CARD_FILE).write_text(json.dumps(full_card, indent=2) + "\n", encoding="utf-8")
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


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_hash(models: Path, version: str, card: dict[str, Any], *expected: str) -> Path:
    """The path of `model.joblib` of `version`, when its SHA-256 is the card's (and each of `expected`)."""
    path = models / version / MODEL_FILE
    recorded = card.get("artifact", {}).get("sha256")
    if not recorded:
        raise RegistryError(f"model card of {version} in {models} records no SHA-256 of {MODEL_FILE}: retrain it")
    try:
        actual = sha256_of(path)
    except OSError as exc:
        raise RegistryError(f"model of {version} in {models} is unreadable: {exc}") from None
    for wanted, source in ((recorded, "its model card"), *((e, APPROVED_FILE) for e in expected)):
        if actual != wanted:
            raise RegistryError(
                f"{path} has SHA-256 {actual}, but {source} records {wanted}: the file changed after it was "
                "written or approved; refusing to load it"
            )
    return path


def _verified_model(models: Path, version: str, card: dict[str, Any], *expected: str) -> Any:
    """Unpickle `model.joblib` of `version` only if its SHA-256 is the card's (and each of `expected`)."""
    path = _check_hash(models, version, card, *expected)
    try:
        return joblib.load(path)
    except Exception as exc:  # joblib raises many kinds on a damaged file
        raise RegistryError(f"model of {version} in {models} does not load: {exc}") from None


def approve(models: Path, version: str, by: str | None = None) -> dict[str, Any]:
    """Mark `version` approved (also the way to roll back); its file must match its card, and load."""
    card = read_card(models, version)
    _verified_model(models, version, card)
    previous = approved(models)
    entry = {
        "version": version,
        "sha256": card["artifact"]["sha256"],
        "approved_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "approved_by": by or getpass.getuser(),
    }
    record = {**entry, "history": [*(previous or {}).get("history", []), entry]}
    tmp = models / f".{APPROVED_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, models / APPROVED_FILE)
    log.info("approved %s (was %s)", version, previous["version"] if previous else "none")
    return record


def _approved_record(models: Path) -> dict[str, Any]:
    record = approved(models)
    if record is None:
        raise RegistryError(f"no approved model in {models}: approve one with 'spark-submit.sh approve VERSION'")
    if not record.get("sha256"):
        raise RegistryError(f"{models / APPROVED_FILE} records no SHA-256 for {record['version']}: approve it again")
    return record


def approved_card(models: Path) -> dict[str, Any]:
    """The approved version's card, once its model file is checked against both hashes (not unpickled)."""
    record = _approved_record(models)
    card = read_card(models, record["version"])
    _check_hash(models, record["version"], card, record["sha256"])
    return card


def load_version(models: Path, version: str) -> tuple[Any, dict[str, Any]]:
    """A version's pipeline and card (approved or not), once its file is checked against its card's hash."""
    card = read_card(models, version)
    return _verified_model(models, version, card), card


def approved_portable(models: Path) -> tuple[bytes, dict[str, Any]]:
    """The approved version's ONNX model and its card, once the version's files are checked against the
    hashes recorded at training and approval."""
    card = approved_card(models)
    recorded = card["artifact"].get("portable_sha256")
    path = models / card["version"] / PORTABLE_FILE
    if not recorded or not path.is_file():
        raise RegistryError(f"model {card['version']} in {models} has no {PORTABLE_FILE}: retrain it")
    content = path.read_bytes()
    if hashlib.sha256(content).hexdigest() != recorded:
        raise RegistryError(f"{path} does not have the SHA-256 its model card records: the file changed")
    return content, card


def load_approved(models: Path) -> tuple[Any, dict[str, Any]]:
    """The approved pipeline and its card; a RegistryError when nothing is approved or its file changed."""
    record = _approved_record(models)
    card = read_card(models, record["version"])
    return _verified_model(models, record["version"], card, record["sha256"]), card


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
