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
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from imblearn.over_sampling import SMOTE
from imblearn.pipeline import Pipeline
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import MissingIndicator, SimpleImputer
from sklearn.metrics import precision_recall_curve, roc_curve
from sklearn.model_selection import GroupShuffleSplit, train_test_split

from conf import SettingsError, command_settings, emit
from conf.settings import ClassifierSettings, ModelSettings, parse_date
from contract import FEATURE_NAMES, FEATURES, Feature
from model import drift, plots, portable, registry
from model.data import LABEL, Dataset, FeaturesError, load_features
from model.evaluation import choose_threshold, metrics

log = logging.getLogger(__name__)

THRESHOLD_RULE = "the threshold that maximises F1 on the validation clients (ties: the lowest)"


def imputation_steps(feature: Feature) -> list[tuple[str, Any, list[str]]]:
    """The feature's imputation rule of the contract, as ColumnTransformer steps: the imputer, then (when the
    rule says so) a 'missing' indicator column, kept as its own step so that the model exports to ONNX."""
    rule = feature.imputation
    steps: list[tuple[str, Any, list[str]]] = [
        (feature.name, SimpleImputer(strategy=rule.strategy, fill_value=rule.fill_value), [feature.name])
    ]
    if rule.add_indicator:
        steps.append((f"{feature.name}_missing", MissingIndicator(features="all"), [feature.name]))
    return steps


def classifier(settings: ClassifierSettings, seed: int) -> RandomForestClassifier:
    """The estimator, with its parameters from `[model.classifier]`."""
    return RandomForestClassifier(
        n_estimators=settings.n_estimators, max_depth=settings.max_depth,
        min_samples_leaf=settings.min_samples_leaf, n_jobs=-1, random_state=seed,
    )  # fmt: skip


def build_pipeline(settings: ModelSettings, features: Sequence[Feature] = FEATURES) -> Pipeline:
    """Imputation, then SMOTE, then the classifier: every step is fitted on the rows given to `fit` only."""
    steps = [step for f in features for step in imputation_steps(f)]
    imputation = ColumnTransformer(steps, verbose_feature_names_out=False)
    smote = SMOTE(k_neighbors=settings.smote_k_neighbors, random_state=settings.seed)
    return Pipeline(
        [("impute", imputation), ("smote", smote), ("classifier", classifier(settings.classifier, settings.seed))]
    )


def split_by_client(frame: pd.DataFrame, share: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows so that every client's loans fall on one side; `share` of the clients go right."""
    splitter = GroupShuffleSplit(n_splits=1, test_size=share, random_state=seed)
    left, right = next(splitter.split(frame, groups=frame["id"]))
    return frame.iloc[left], frame.iloc[right]


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
    model = classifier(settings.classifier, settings.seed)
    model.fit(x_train, y_train)
    model.set_params(n_jobs=1)  # see train(): a deterministic sum over the trees
    scores = model.predict_proba(x_test)[:, 1]
    return {
        "protocol": "SMOTE on every row before a random row split, client id among the features",
        "features": columns,
        **metrics(y_test, scores, 0.5),
    }


@dataclass(frozen=True)
class TrainResult:
    pipeline: Pipeline
    card: dict[str, Any]
    curves: dict[str, tuple[np.ndarray, np.ndarray]]  # "roc": (fpr, tpr), "pr": (recall, precision)
    split: pd.DataFrame  # id, part (training, validation, test): which clients were used for what
    held_out: pd.DataFrame  # id, loan_date, status, score: the test clients' loans, scored
    portable: bytes  # the model as ONNX (see model.portable)

    def files(self) -> dict[str, bytes]:
        """The version's files beside the model and card: ONNX, plots, the split and the held-out scores."""
        return {
            registry.PORTABLE_FILE: self.portable,
            **self.plots(),
            registry.FILES["split"]: self.split.to_csv(index=False).encode(),
            # Scores in Python's round-trip form, so the card's metrics can be recomputed exactly.
            registry.FILES["held_out"]: self.held_out.assign(score=self.held_out["score"].map(repr))
            .to_csv(index=False)
            .encode(),
        }

    def plots(self) -> dict[str, bytes]:
        """The version's PNG plots by file name: ROC and precision-recall on the held-out clients."""
        m = self.card["metrics"]
        return {
            registry.PLOTS["roc"]: plots.curve(*self.curves["roc"], "false positive rate", "true positive rate",
                                               f"ROC on held-out clients (AUC {m['roc_auc']:.3f})"),
            registry.PLOTS["precision_recall"]: plots.curve(
                *self.curves["pr"], "recall", "precision",
                f"Precision-recall on held-out clients (AP {m['average_precision']:.3f})"),
        }  # fmt: skip


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
    pipeline.named_steps["classifier"].set_params(n_jobs=1)
    validation_scores = pipeline.predict_proba(validation[columns])[:, 1]
    threshold = choose_threshold(validation[LABEL].to_numpy(), validation_scores)
    onnx_model, difference = export_portable(pipeline, validation[columns], validation_scores)
    test_scores = pipeline.predict_proba(test[columns])[:, 1]
    test_labels = test[LABEL].to_numpy()
    fit_seconds = time.perf_counter() - started
    card: dict[str, Any] = {
        "features": columns,
        "label": LABEL,
        "imputation": {f.name: {"rule": f.imputation.rule, "why": f.imputation.why} for f in FEATURES},
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
            "classifier": {k: v for k, v in pipeline.named_steps["classifier"].get_params().items()
                           if isinstance(v, (int, float, str, bool, type(None)))},
        },
        "threshold": {"value": threshold, "rule": THRESHOLD_RULE},
        "portable": {"format": "ONNX", "file": registry.PORTABLE_FILE, "max_score_difference": difference,
                     "checked_on": "the validation clients' loans"},
        "metrics": metrics(test_labels, test_scores, threshold),
        # Bins for the backtest's drift measure, taken from the training data now.
        "drift_reference": drift.reference(data.frame, columns),
        "training_seconds": round(fit_seconds, 1),
    }  # fmt: skip
    if leaky:
        card["leaky_protocol"] = leaky_protocol(data.frame, settings)
    roc = roc_curve(test_labels, test_scores)
    pr = precision_recall_curve(test_labels, test_scores)
    split = pd.concat(
        [pd.DataFrame({"id": part["id"].unique(), "part": name})
         for name, part in (("training", fit_part), ("validation", validation), ("test", test))]
    ).sort_values("id", ignore_index=True)  # fmt: skip
    held_out = test[["id", "loan_date", LABEL]].assign(score=test_scores).reset_index(drop=True)
    curves = {"roc": (roc[0], roc[1]), "pr": (pr[1], pr[0])}
    return TrainResult(pipeline, card, curves, split, held_out, onnx_model)


# The ONNX model's scores agree with scikit-learn's to about 1e-7; more means the export went wrong.
PORTABLE_TOLERANCE = 1e-5


def export_portable(pipeline: Pipeline, rows: pd.DataFrame, expected: np.ndarray) -> tuple[bytes, float]:
    """The model as ONNX, and the largest difference of its scores from `expected` on `rows`."""
    exported = portable.export(pipeline, list(rows.columns))
    scores = portable.PortableModel(exported, list(rows.columns)).scores(
        [{str(k): None if v != v else v for k, v in row.items()} for row in rows.to_dict("records")]
    )
    difference = float(np.max(np.abs(np.asarray(scores) - expected))) if len(scores) else 0.0
    if difference > PORTABLE_TOLERANCE:
        raise RuntimeError(f"the ONNX export scores {difference:g} away from scikit-learn: not exported")
    return exported, difference


def parse_args(argv: Sequence[str] | None, features: str, models_dir: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="spark-submit.sh train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", default=features, help="the feature job's features/ folder")
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
    settings = loaded.model
    args = parse_args(argv, loaded.features.features_dir, settings.models_dir)
    try:
        data = load_features(args.features, args.until)
        log.info("training on %d labelled loans of %d clients from %s", len(data.frame),
                 data.frame["id"].nunique(), data.location)  # fmt: skip
        result = train(settings, data, leaky=not args.no_leaky)
        version = registry.save(Path(args.models), result.pipeline, result.card, result.files())
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
    emit(version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
