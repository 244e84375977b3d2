"""Train a candidate model on the offline features with an honest protocol, and write its model card.

    ./spark-submit.sh train --features data/output/features --models data/models [--until 2020-06-30]

Protocol (DESIGN §7): only labelled loans up to `--until`; clients split into training, validation
and test parts (no client in two parts); `id` and `loan_id` are never features; imputation and SMOTE
are steps of an imbalanced-learn `Pipeline`, so both are fitted on the training rows only; the decision
threshold is the one that maximises F1 on the validation clients; the card's metrics come from the test
clients, never seen in fitting or in choosing the threshold. The card also reports what the original
notebook's protocol (SMOTE on every row, then a random row split, `id` as a feature) claims on the same
data. The last line printed is the new version.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from imblearn.over_sampling import SMOTE
from imblearn.pipeline import Pipeline
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)
from sklearn.model_selection import GroupShuffleSplit, train_test_split

from conf import SettingsError, command_settings
from conf.settings import ModelSettings, parse_date
from model import drift, registry
from spark_jobs.schema import FEATURE_NAMES

log = logging.getLogger(__name__)

LABEL = "status"
THRESHOLD_RULE = "the threshold that maximises F1 on the validation clients (ties: the lowest)"
# How each feature's empty values are filled, and why; fitted on the training rows only.
IMPUTATION = {
    "nb_previous_loans": ("median", "never empty; kept for safety"),
    "avg_amount_loans_previous": ("constant 0", "empty means a first loan: no earlier amount"),
    "age": ("median", "empty means an unknown or impossible birthday: the typical age"),
    "years_on_the_job": ("constant 0, plus a 'missing' indicator", "empty mostly means not employed"),
    "flag_own_car": ("most frequent", "empty means the source did not say: the common answer"),
}


class FeaturesError(ValueError):
    """The features folder is missing, unreadable, or not the feature job's output."""


@dataclass(frozen=True)
class Dataset:
    frame: pd.DataFrame  # the feature columns, `id` and `status`
    location: str
    until: dt.date | None

    @cached_property
    def fingerprint(self) -> str:
        """Hashed only when asked (the model card); the backtest reads features without it."""
        return fingerprint(Path(self.location))


def fingerprint(folder: Path) -> str:
    """SHA-256 over the names and bytes of the Parquet files of a folder."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.parquet")):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def load_features(folder: str | Path, until: dt.date | None = None, allow_empty: bool = False) -> Dataset:
    """The labelled loans of the feature job's output, up to `until` (dates stay `datetime.date`)."""
    path = Path(folder)
    if not path.is_dir() or not any(path.rglob("*.parquet")):
        raise FeaturesError(f"no features at {path}: expected the feature job's features/ folder of Parquet files")
    try:
        table = pq.read_table(path, columns=["id", "loan_date", *FEATURE_NAMES, LABEL])
    except (pa.ArrowException, OSError) as exc:
        raise FeaturesError(f"cannot read features at {path}: {exc}") from None
    frame = table.to_pandas(date_as_object=True)
    frame = frame[frame[LABEL].notna()]
    if until is not None:
        frame = frame[frame["loan_date"] <= until]
    if not allow_empty and (frame.empty or frame[LABEL].nunique() < 2):
        raise FeaturesError(f"features at {path} (until {until}) hold no labelled loans of both classes")
    frame = frame.astype({name: "float64" for name in FEATURE_NAMES}).astype({LABEL: "int64"})
    return Dataset(frame.reset_index(drop=True), str(path), until)


def build_pipeline(settings: ModelSettings) -> Pipeline:
    """Imputation, then SMOTE, then the forest: every step is fitted on the rows given to `fit` only."""
    imputer = ColumnTransformer(
        [
            ("nb_previous_loans", SimpleImputer(strategy="median"), ["nb_previous_loans"]),
            ("avg_amount_loans_previous", SimpleImputer(strategy="constant", fill_value=0.0),
             ["avg_amount_loans_previous"]),
            ("age", SimpleImputer(strategy="median"), ["age"]),
            ("years_on_the_job", SimpleImputer(strategy="constant", fill_value=0.0, add_indicator=True),
             ["years_on_the_job"]),
            ("flag_own_car", SimpleImputer(strategy="most_frequent"), ["flag_own_car"]),
        ],
        verbose_feature_names_out=False,
    )  # fmt: skip
    forest = RandomForestClassifier(
        n_estimators=settings.n_estimators, max_depth=settings.max_depth,
        min_samples_leaf=settings.min_samples_leaf, n_jobs=-1, random_state=settings.seed,
    )  # fmt: skip
    smote = SMOTE(k_neighbors=settings.smote_k_neighbors, random_state=settings.seed)
    return Pipeline([("impute", imputer), ("smote", smote), ("forest", forest)])


def split_by_client(frame: pd.DataFrame, share: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows so that every client's loans fall on one side; `share` of the clients go right."""
    splitter = GroupShuffleSplit(n_splits=1, test_size=share, random_state=seed)
    left, right = next(splitter.split(frame, groups=frame["id"]))
    return frame.iloc[left], frame.iloc[right]


def choose_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold with the best F1 on these labels."""
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    predicted = (scores >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    return {
        "roc_auc": float(roc_auc_score(labels, scores)),
        "average_precision": float(average_precision_score(labels, scores)),
        "precision": float(precision_score(labels, predicted, zero_division=0)),
        "recall": float(recall_score(labels, predicted, zero_division=0)),
        "f1": float(f1_score(labels, predicted, zero_division=0)),
        "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
        "base_rate": float(np.mean(labels)),
        "rows": len(labels),
    }


def leaky_protocol(frame: pd.DataFrame, settings: ModelSettings) -> dict[str, Any]:
    """What the original notebook's protocol claims: SMOTE on all rows, a random row split, `id` a feature."""
    columns = ["id", *FEATURE_NAMES]
    x = SimpleImputer(strategy="median").fit_transform(frame[columns])
    x_all, y_all = SMOTE(k_neighbors=settings.smote_k_neighbors, random_state=settings.seed).fit_resample(
        x, frame[LABEL].to_numpy()
    )
    x_train, x_test, y_train, y_test = train_test_split(
        x_all, y_all, test_size=settings.test_clients, random_state=settings.seed
    )
    forest = build_pipeline(settings).named_steps["forest"]
    forest.fit(x_train, y_train)
    forest.set_params(n_jobs=1)  # see train(): a deterministic sum over the trees
    scores = forest.predict_proba(x_test)[:, 1]
    return {
        "protocol": "SMOTE on every row before a random row split, client id among the features",
        "features": columns,
        **metrics(y_test, scores, 0.5),
    }


@dataclass(frozen=True)
class TrainResult:
    pipeline: Pipeline
    card: dict[str, Any]
    curves: dict[str, tuple[np.ndarray, np.ndarray]]


def train(settings: ModelSettings, data: Dataset, leaky: bool = True) -> TrainResult:
    """Split by client, fit the pipeline, choose the threshold, evaluate on held-out clients."""
    started = time.perf_counter()
    rest, test = split_by_client(data.frame, settings.test_clients, settings.seed)
    fit_part, validation = split_by_client(rest, settings.validation_clients, settings.seed)
    for name, part in (("training", fit_part), ("validation", validation), ("test", test)):
        if part[LABEL].nunique() < 2:
            raise FeaturesError(f"the {name} clients hold a single class: not enough labelled data to train")
    pipeline = build_pipeline(settings)
    columns = list(FEATURE_NAMES)
    pipeline.fit(fit_part[columns], fit_part[LABEL])
    # Trees are fitted in parallel, deterministically; a parallel predict_proba adds the trees' votes in
    # thread completion order, so scores could differ in the last bits from run to run. One thread
    # keeps the same data and seed giving the same scores, threshold and metrics.
    pipeline.named_steps["forest"].set_params(n_jobs=1)
    threshold = choose_threshold(validation[LABEL].to_numpy(), pipeline.predict_proba(validation[columns])[:, 1])
    test_scores = pipeline.predict_proba(test[columns])[:, 1]
    test_labels = test[LABEL].to_numpy()
    fit_seconds = time.perf_counter() - started
    card: dict[str, Any] = {
        "features": columns,
        "label": LABEL,
        "imputation": {name: {"rule": rule, "why": why} for name, (rule, why) in IMPUTATION.items()},
        "training_data": {
            "location": data.location, "fingerprint": data.fingerprint,
            "until": data.until.isoformat() if data.until else None,
            "rows": len(data.frame), "clients": int(data.frame["id"].nunique()),
            "first_loan_date": min(data.frame["loan_date"]).isoformat(),
            "last_loan_date": max(data.frame["loan_date"]).isoformat(),
        },
        "split": {
            "rule": "by client (GroupShuffleSplit on id): no client in two parts",
            "training": {"rows": len(fit_part), "clients": int(fit_part["id"].nunique())},
            "validation": {"rows": len(validation), "clients": int(validation["id"].nunique())},
            "test": {"rows": len(test), "clients": int(test["id"].nunique())},
        },
        "parameters": {
            "seed": settings.seed, "test_clients": settings.test_clients,
            "validation_clients": settings.validation_clients,
            "smote": {"k_neighbors": settings.smote_k_neighbors, "fitted_on": "training rows only"},
            "forest": {k: v for k, v in pipeline.named_steps["forest"].get_params().items()
                       if isinstance(v, (int, float, str, bool, type(None)))},
        },
        "threshold": {"value": threshold, "rule": THRESHOLD_RULE},
        "metrics": metrics(test_labels, test_scores, threshold),
        # Bins for the backtest's drift measure, taken from the training data now.
        "drift_reference": drift.reference(data.frame, columns),
        "training_seconds": round(fit_seconds, 1),
    }  # fmt: skip
    if leaky:
        card["leaky_protocol"] = leaky_protocol(data.frame, settings)
    roc = roc_curve(test_labels, test_scores)
    pr = precision_recall_curve(test_labels, test_scores)
    return TrainResult(pipeline, card, {"roc": (roc[0], roc[1]), "pr": (pr[1], pr[0])})


def parse_args(argv: Sequence[str] | None, models_dir: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="spark-submit.sh train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", default="data/output/features", help="the feature job's features/ folder")
    parser.add_argument("--models", default=models_dir, help="the model registry folder")
    parser.add_argument("--until", default=None, help="train on loans dated up to this yyyy-MM-dd day")
    parser.add_argument("--no-leaky", action="store_true", help="skip the leaky-protocol comparison")
    args = parser.parse_args(argv)
    if args.until:
        try:
            args.until = parse_date(args.until)
        except SettingsError as exc:
            parser.error(f"--until: {exc}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Train, write the version folder, print the headline metrics and, last, the version."""
    loaded = command_settings()
    if loaded is None:
        return 2
    settings = loaded.model
    args = parse_args(argv, settings.models_dir)
    try:
        data = load_features(args.features, args.until)
        log.info("training on %d labelled loans of %d clients from %s", len(data.frame),
                 data.frame["id"].nunique(), data.location)  # fmt: skip
        result = train(settings, data, leaky=not args.no_leaky)
        version = registry.save(Path(args.models), result.pipeline, result.card, result.curves)
    except (FeaturesError, registry.RegistryError) as exc:
        log.error("%s", exc)
        return 2
    m = result.card["metrics"]
    log.info("candidate %s: ROC AUC %.3f, average precision %.3f, recall %.3f at threshold %.3f",
             version, m["roc_auc"], m["average_precision"], m["recall"], result.card["threshold"]["value"])  # fmt: skip
    if "leaky_protocol" in result.card:
        leak = result.card["leaky_protocol"]
        log.info("the notebook's leaky protocol would claim ROC AUC %.3f, average precision %.3f",
                 leak["roc_auc"], leak["average_precision"])  # fmt: skip
    print(version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
