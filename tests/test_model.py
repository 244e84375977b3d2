"""Training, the model card and the registry, on small synthetic features (fast) and on the job's output."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from imblearn.over_sampling import SMOTE

from conf import load_settings
from conf.settings import ModelSettings
from contract import FEATURE_NAMES
from model import registry
from model import train as tr
from model.data import fingerprint, load_features
from tests.synthetic import synthetic_features

ROOT = Path(__file__).resolve().parent.parent
MODEL_SETTINGS = load_settings(env={}).model
SETTINGS = dataclasses.replace(
    MODEL_SETTINGS,
    classifier=dataclasses.replace(MODEL_SETTINGS.classifier, n_estimators=12, max_depth=4, min_samples_leaf=5),
)


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_features(tmp_path_factory.mktemp("features") / "features")


@pytest.fixture(scope="module")
def trained(features: Path) -> tr.TrainResult:
    return tr.train(SETTINGS, load_features(features))


def test_split_by_client_puts_each_client_on_one_side(features: Path) -> None:
    frame = load_features(features).frame
    left, right = tr.split_by_client(frame, 0.2, seed=3)
    assert set(left["id"]).isdisjoint(set(right["id"]))
    assert len(left) + len(right) == len(frame)
    assert 0.1 < right["id"].nunique() / frame["id"].nunique() < 0.3


def test_smote_is_fitted_on_training_clients_only(features: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[np.ndarray] = []
    original = SMOTE.fit_resample

    def recording(self: SMOTE, x: np.ndarray, y: np.ndarray, **kw: object) -> tuple:
        seen.append(np.asarray(x).copy())
        return original(self, x, y, **kw)

    monkeypatch.setattr(SMOTE, "fit_resample", recording)
    data = load_features(features)
    result = tr.train(SETTINGS, data, leaky=False)
    rest, test = tr.split_by_client(data.frame, SETTINGS.test_clients, SETTINGS.seed)
    fit_part, validation = tr.split_by_client(rest, SETTINGS.validation_clients, SETTINGS.seed)
    assert len(seen) == 1
    expected = result.pipeline.named_steps["impute"].transform(fit_part[list(FEATURE_NAMES)])

    def rows(matrix: np.ndarray) -> np.ndarray:
        return matrix[np.lexsort(matrix.T[::-1])]

    assert seen[0].shape == expected.shape
    np.testing.assert_array_equal(rows(seen[0]), rows(np.asarray(expected)))
    assert len(seen[0]) < len(data.frame) - len(test) - len(validation) + 1


def test_no_identifier_is_a_feature(trained: tr.TrainResult) -> None:
    assert trained.card["features"] == list(FEATURE_NAMES)
    names = list(trained.pipeline.feature_names_in_)
    assert names == list(FEATURE_NAMES) and "id" not in names and "loan_id" not in names
    assert "id" in trained.card["leaky_protocol"]["features"]  # only the leaky comparison uses it


def test_train_writes_card_model_and_plots(trained: tr.TrainResult, features: Path, tmp_path: Path) -> None:
    version = registry.save(tmp_path, trained.pipeline, trained.card, trained.plots())
    folder = tmp_path / version
    card = json.loads((folder / "model_card.json").read_text())
    for key in ("version", "created_at", "training_data", "features", "parameters", "library_versions",
                "threshold", "split", "metrics", "imputation", "leaky_protocol"):  # fmt: skip
        assert key in card, key
    assert card["version"] == version and registry.VERSION.match(version)
    assert card["training_data"]["location"] == str(features)
    assert card["training_data"]["fingerprint"] == fingerprint(features)
    assert set(card["metrics"]) >= {"roc_auc", "average_precision", "precision", "recall", "f1",
                                    "confusion_matrix", "base_rate"}  # fmt: skip
    assert sum(card["metrics"]["confusion_matrix"].values()) == card["split"]["test"]["rows"]
    assert 0 < card["threshold"]["value"] < 1 and "F1" in card["threshold"]["rule"]
    assert card["library_versions"]["scikit-learn"]
    for plot in ("roc.png", "pr.png"):
        assert (folder / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = joblib.load(folder / "model.joblib")
    sample = load_features(features).frame[card["features"]].head(50)
    scores = model.predict_proba(sample)[:, 1]
    assert scores.shape == (50,) and ((scores >= 0) & (scores <= 1)).all()


def test_train_same_data_and_seed_same_metrics(features: Path, trained: tr.TrainResult) -> None:
    again = tr.train(SETTINGS, load_features(features))
    assert again.card["metrics"] == trained.card["metrics"]
    assert again.card["threshold"] == trained.card["threshold"]
    assert again.card["leaky_protocol"] == trained.card["leaky_protocol"]
    other = tr.train(dataclasses.replace(SETTINGS, seed=7), load_features(features), leaky=False)
    assert other.card["split"] != trained.card["split"]


def test_honest_protocol_learns_something_and_leaky_claims_more(trained: tr.TrainResult) -> None:
    honest, leaky = trained.card["metrics"], trained.card["leaky_protocol"]
    assert honest["roc_auc"] > 0.6
    assert leaky["roc_auc"] > honest["roc_auc"]


def test_until_keeps_loans_up_to_the_date(features: Path) -> None:
    until = dt.date(2019, 12, 31)
    data = load_features(features, until)
    assert max(data.frame["loan_date"]) <= until < max(load_features(features).frame["loan_date"])
    card = tr.train(SETTINGS, data, leaky=False).card
    assert card["training_data"]["until"] == "2019-12-31"
    assert card["training_data"]["last_loan_date"] <= "2019-12-31"


def test_features_missing_or_corrupt_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(tr.FeaturesError, match=r"no features at .*nowhere"):
        load_features(tmp_path / "nowhere")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "part-0.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(tr.FeaturesError, match="cannot read features at"):
        load_features(corrupt)
    with pytest.raises(tr.FeaturesError, match="no labelled loans"):
        load_features(synthetic_features(tmp_path / "f", clients=20), dt.date(2000, 1, 1))


def test_approve_rollback_and_listing(trained: tr.TrainResult, tmp_path: Path) -> None:
    first = registry.save(tmp_path, trained.pipeline, trained.card, trained.plots())
    second = registry.save(tmp_path, trained.pipeline, trained.card, trained.plots())
    assert registry.versions(tmp_path) == [first, second]
    with pytest.raises(registry.RegistryError, match="no approved model"):
        registry.load_approved(tmp_path)
    registry.approve(tmp_path, first, by="alice")
    registry.approve(tmp_path, second, by="bob")
    assert registry.load_approved(tmp_path)[1]["version"] == second
    record = registry.approve(tmp_path, first, by="alice")  # the rollback
    assert record["version"] == first
    assert [h["version"] for h in record["history"]] == [first, second, first]
    assert registry.load_approved(tmp_path)[1]["version"] == first
    listing = registry.table(tmp_path).splitlines()
    assert [line.split()[:2] for line in listing[1:]] == [[first, "APPROVED"], [second, "candidate"]]


def test_unknown_or_damaged_version_is_refused(trained: tr.TrainResult, tmp_path: Path) -> None:
    version = registry.save(tmp_path, trained.pipeline, trained.card, trained.plots())
    with pytest.raises(registry.RegistryError, match=f"unknown model version '20990101T000000Z'.*{version}"):
        registry.approve(tmp_path, "20990101T000000Z")
    (tmp_path / version / "model.joblib").write_bytes(b"garbage")
    with pytest.raises(registry.RegistryError, match="does not load"):
        registry.approve(tmp_path, version)
    assert registry.approved(tmp_path) is None


@pytest.mark.slow
def test_commands_train_approve_and_list(features: Path, tmp_path: Path) -> None:
    env = {**os.environ, "CREDIT_MODEL_CLASSIFIER_N_ESTIMATORS": "10", "CREDIT_MODEL_CLASSIFIER_MAX_DEPTH": "4"}
    models = tmp_path / "models"

    def command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["./spark-submit.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True)

    done = command("train", "--features", str(features), "--models", str(models), "--until", "2020-06-30")
    assert done.returncode == 0, done.stderr
    version = done.stdout.strip().splitlines()[-1]
    assert (models / version / "model_card.json").is_file()
    assert command("approve", version, "--models", str(models)).returncode == 0
    listing = command("models", "--models", str(models)).stdout
    assert f"{version}     APPROVED" in listing and "2020-06-30" in listing
    refused = command("approve", "nope", "--models", str(models))
    assert refused.returncode == 2 and "unknown model version 'nope'" in refused.stderr
    missing = command("train", "--features", str(tmp_path / "none"), "--models", str(models))
    assert missing.returncode == 2 and "no features at" in missing.stderr and "Traceback" not in missing.stderr


def test_train_on_the_feature_jobs_output(spark: object, tmp_path: Path) -> None:
    from datagen.generate import write_csv
    from spark_jobs import features as fj

    source = tmp_path / "loans.csv"
    write_csv(source, clients=600, seed=3, dirty=True)
    fj.run(spark, fj.FeatureJobArgs(str(source), str(tmp_path / "out"), dt.date(2020, 12, 31)))  # type: ignore[arg-type]
    data = load_features(tmp_path / "out" / "features")
    assert len(data.frame) > 10000 and set(pd.unique(data.frame["status"])) == {0, 1}
    result = tr.train(
        dataclasses.replace(SETTINGS, classifier=dataclasses.replace(SETTINGS.classifier, n_estimators=20)),
        data,
        leaky=False,
    )
    assert result.card["training_data"]["clients"] == 600
    assert 0 <= result.card["metrics"]["roc_auc"] <= 1


def test_model_settings_reject_bad_shares() -> None:
    with pytest.raises(ValueError, match="test_clients: expected a share between 0 and 1"):
        dataclasses.replace(SETTINGS, test_clients=1.5)
    assert isinstance(SETTINGS, ModelSettings)
