"""Training, the model card and the registry, checked against what is computed here independently.

The session's model (`model_run`: 600 synthetic clients, trained up to 2019-12-31) is trained once;
what the card claims is recomputed from the saved split and held-out scores with scikit-learn's
metrics or by brute force, never with the pipeline's own parts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import math
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import joblib
import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from sklearn import metrics as skm

from contract import FEATURE_NAMES
from credit.commands import main
from model import registry
from model import train as tr
from model.data import FeaturesError, fingerprint, load_features
from model.portable import MATRIX, PROBABILITIES, PortableModel, one_input
from tests.conftest import MODEL_SETTINGS, TRAINED_UNTIL, Dirty, ModelRun
from tests.helpers import ROOT, clean_env
from tests.synthetic import synthetic_features


def saved(run: ModelRun, name: str) -> pd.DataFrame:
    return pd.read_csv(run.models / run.version / name, float_precision="round_trip")


def parts(run: ModelRun) -> dict[str, pd.DataFrame]:
    """The training, validation and test rows, as the saved split says."""
    split = saved(run, "split.csv")
    return {name: run.data.frame[run.data.frame["id"].isin(split.loc[split["part"] == name, "id"])]
            for name in ("training", "validation", "test")}  # fmt: skip


def test_split_puts_each_client_in_one_part(model_run: ModelRun) -> None:
    split = saved(model_run, "split.csv")
    assert split["id"].is_unique and set(split["id"]) == set(model_run.data.frame["id"])
    counts = split["part"].value_counts().to_dict()
    clients = len(split)
    assert counts["test"] == math.ceil(clients * 0.2)
    assert counts["validation"] == math.ceil((clients - counts["test"]) * 0.2)
    rows = {name: len(frame) for name, frame in parts(model_run).items()}
    assert sum(rows.values()) == len(model_run.data.frame)
    assert model_run.result.card["split"] == {
        "rule": "by client (GroupShuffleSplit on id): no client in two parts",
        **{name: {"rows": rows[name], "clients": counts[name]} for name in ("training", "validation", "test")},
    }


def test_smote_is_fitted_on_the_training_rows_only_after_imputation(model_run: ModelRun) -> None:
    """SMOTE saw exactly the training rows, imputed by the contract's rules computed here."""
    assert len(model_run.smote_inputs) == 2  # the honest fit, then the leaky comparison's
    training = parts(model_run)["training"][list(FEATURE_NAMES)]
    medians = training.median()
    mode = training["flag_own_car"].value_counts().sort_index().idxmax()  # ties: the smallest value
    expected = np.column_stack([
        training["nb_previous_loans"].fillna(medians["nb_previous_loans"]),
        training["avg_amount_loans_previous"].fillna(0.0),
        training["age"].fillna(medians["age"]),
        training["years_on_the_job"].fillna(0.0),
        training["years_on_the_job"].isna().astype(float),  # the 'missing' indicator
        training["flag_own_car"].fillna(mode),
    ])  # fmt: skip

    def rows(matrix: np.ndarray) -> np.ndarray:
        return matrix[np.lexsort(matrix.T[::-1])]

    np.testing.assert_array_equal(rows(model_run.smote_inputs[0]), rows(expected))


def test_no_identifier_is_a_feature(model_run: ModelRun) -> None:
    card = model_run.result.card
    assert card["features"] == list(FEATURE_NAMES)
    assert list(model_run.result.pipeline.feature_names_in_) == list(FEATURE_NAMES)
    assert card["leaky_protocol"]["features"] == ["id", *FEATURE_NAMES]  # only the leaky comparison uses it


def test_card_metrics_recomputed_from_the_saved_held_out_scores(model_run: ModelRun) -> None:
    card = json.loads((model_run.models / model_run.version / "model_card.json").read_text())
    held_out = saved(model_run, "held_out.csv")
    test = parts(model_run)["test"]
    assert len(held_out) == len(test) and set(held_out["id"]) == set(test["id"])
    labels, scores = held_out["status"].to_numpy(), held_out["score"].to_numpy()
    threshold = card["threshold"]["value"]
    predicted = (scores >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(labels, predicted).ravel()
    assert card["metrics"] == {
        "roc_auc": skm.roc_auc_score(labels, scores),
        "average_precision": skm.average_precision_score(labels, scores),
        "precision": tp / (tp + fp), "recall": tp / (tp + fn), "f1": 2 * tp / (2 * tp + fp + fn),
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "base_rate": labels.mean(), "rows": len(labels),
    }  # fmt: skip
    # The held-out scores are the model's own: scoring the test rows again gives them exactly.
    rescored = model_run.result.pipeline.predict_proba(test[list(FEATURE_NAMES)])[:, 1]
    assert sorted(rescored.tolist()) == sorted(scores.tolist())


def test_threshold_maximises_f1_on_the_validation_clients(model_run: ModelRun) -> None:
    validation = parts(model_run)["validation"]
    labels = validation["status"].to_numpy()
    scores = model_run.result.pipeline.predict_proba(validation[list(FEATURE_NAMES)])[:, 1]

    def f1(threshold: float) -> Fraction:  # exact, so that ties are ties
        predicted = scores >= threshold
        tp, fp = int((predicted & (labels == 1)).sum()), int((predicted & (labels == 0)).sum())
        fn = int((~predicted & (labels == 1)).sum())
        return Fraction(2 * tp, 2 * tp + fp + fn)

    candidates = np.unique(scores)
    best = max(f1(t) for t in candidates)
    winners = [t for t in candidates if f1(t) == best]
    threshold = model_run.result.card["threshold"]
    assert threshold["value"] == min(winners)
    assert threshold["rule"] == "the threshold that maximises F1 on the validation clients (ties: the lowest)"


def test_saved_version_holds_card_model_and_plots_and_reloads_to_the_same_scores(model_run: ModelRun) -> None:
    folder = model_run.models / model_run.version
    card = json.loads((folder / "model_card.json").read_text())
    assert card["version"] == model_run.version and registry.VERSION.match(model_run.version)
    assert card["training_data"] == {
        "location": str(model_run.features), "fingerprint": fingerprint(model_run.features),
        "until": TRAINED_UNTIL.isoformat(), "rows": len(model_run.data.frame),
        "clients": model_run.data.frame["id"].nunique(),
        "first_loan_date": min(model_run.data.frame["loan_date"]).isoformat(),
        "last_loan_date": max(model_run.data.frame["loan_date"]).isoformat(),
    }  # fmt: skip
    assert (
        max(model_run.data.frame["loan_date"])
        <= TRAINED_UNTIL
        < max(load_features(model_run.features).frame["loan_date"])
    )
    assert card["imputation"]["years_on_the_job"]["rule"] == "constant 0, plus a 'missing' indicator"
    assert card["parameters"]["classifier"]["n_estimators"] == MODEL_SETTINGS.classifier.n_estimators
    hashes = {name: registry.sha256_of(folder / name) for name in ("model.joblib", "model.onnx")}
    assert card["artifact"] == {"file": "model.joblib", "sha256": hashes["model.joblib"],
                                "portable_file": "model.onnx", "portable_sha256": hashes["model.onnx"]}  # fmt: skip
    assert card["library_versions"]["scikit-learn"] and card["created_at"]
    for plot in ("roc.png", "pr.png"):
        assert (folder / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sample = model_run.data.frame[card["features"]].head(200)
    reloaded = joblib.load(folder / "model.joblib").predict_proba(sample)
    np.testing.assert_array_equal(reloaded, model_run.result.pipeline.predict_proba(sample))
    # The ONNX model scores as scikit-learn does, to far better than 1e-5 (the card says how close).
    rows = [{k: None if v != v else v for k, v in row.items()} for row in sample.to_dict("records")]
    onnx = PortableModel((folder / "model.onnx").read_bytes(), card["features"]).scores(rows)
    difference = np.max(np.abs(np.asarray(onnx) - reloaded[:, 1]))
    assert (
        difference < 1e-5 and card["portable"]["max_score_difference"] < 1e-5 and card["portable"]["format"] == "ONNX"
    )


def test_portable_model_scores_its_one_matrix_input_as_the_exported_model_scores_its_columns(
    model_run: ModelRun,
) -> None:
    exported = (model_run.models / model_run.version / "model.onnx").read_bytes()
    features = model_run.result.card["features"]
    rng = np.random.default_rng(5)
    # Every feature null in some rows, and the features given in another order than the model's.
    values = rng.uniform(0, 5000, size=(500, len(features))).round(2)
    rows = [{name: None if rng.random() < 0.2 else float(v) for name, v in zip(features, row, strict=True)}
            for row in values]  # fmt: skip
    rows = [dict(reversed(row.items())) for row in rows]
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # trees summed in one order, as the service
    columns = ort.InferenceSession(exported, options, providers=["CPUExecutionProvider"])
    assert [i.name for i in columns.get_inputs()] == features  # the registry keeps one input per feature
    column = {name: np.array([[np.nan if r[name] is None else r[name]] for r in rows], dtype=np.float32)
              for name in features}  # fmt: skip
    by_columns = columns.run([PROBABILITIES], column)[0][:, 1]
    model = PortableModel(exported, features)
    assert model.scores(rows) == by_columns.tolist()  # to the bit
    assert [model.scores([row])[0] for row in rows] == by_columns.tolist()  # one row: the bound buffers
    # The export's per-column imputation runs as nodes over the whole matrix.
    fused = onnx.load_from_string(one_input(exported, features))
    assert [node.op_type for node in fused.graph.node] == [
        "Imputer", "IsNaN", "Cast", "Concat", "Gather", "TreeEnsembleClassifier"
    ]  # fmt: skip
    # Shapes recorded for the values the fusion removes (the indicator's) go with them.
    inferred = onnx.shape_inference.infer_shapes(onnx.load_from_string(exported))
    assert inferred.graph.value_info
    fused_inferred = onnx.load_from_string(one_input(inferred.SerializeToString(), features)).graph
    made = {name for node in fused_inferred.node for name in node.output}
    assert {info.name for info in fused_inferred.value_info} <= made
    # A graph of another shape (here, an imputed column is also an output) is given a Split of the matrix
    # instead, and scores the same; from opset 18, Split takes its number of parts as an attribute.
    for opset_version in (17, 18):
        other = onnx.load_from_string(exported)
        imputed = next(node.output[0] for node in other.graph.node if node.op_type == "Imputer")
        other.graph.output.append(onnx.helper.make_tensor_value_info(imputed, onnx.TensorProto.FLOAT, [None, 1]))
        for opset in other.opset_import:
            if opset.domain in ("", "ai.onnx"):
                opset.version = opset_version
        split = one_input(other.SerializeToString(), features)
        assert [node.op_type for node in onnx.load_from_string(split).graph.node][:2] == ["Split", "Imputer"]
        model = PortableModel(other.SerializeToString(), features)
        assert model.scores(rows) == by_columns.tolist()
        assert [model.scores([row])[0] for row in rows[:50]] == by_columns[:50].tolist()
    # A model whose inputs are not one column of floats per feature is refused, not run half-right.
    with pytest.raises(ValueError, match="not a column of floats"):
        one_input(one_input(exported, features), [MATRIX])
    with pytest.raises(ValueError, match="are not the features"):
        PortableModel(exported, features[1:])


def test_portable_model_scores_single_rows_from_several_threads_at_once(model_run: ModelRun) -> None:
    """One row's buffers serve one thread at a time; the others score through the general path, and every
    thread gets its own rows' scores."""
    exported = (model_run.models / model_run.version / "model.onnx").read_bytes()
    features = model_run.result.card["features"]
    rng = np.random.default_rng(11)
    ranges = {"nb_previous_loans": 40, "avg_amount_loans_previous": 5000, "age": 90, "years_on_the_job": 40}
    rows = [{name: None if rng.random() < 0.1 else float(rng.integers(0, ranges.get(name, 2) + 1)) for name in features}
            for _ in range(400)]  # fmt: skip
    model = PortableModel(exported, features)
    expected = model.scores(rows)
    assert len(set(expected)) > 100  # rows that score differently, so a row given another's score shows

    def score_all(offset: int) -> list[float]:
        turned = rows[offset:] + rows[:offset]
        return [model.scores([row])[0] for row in turned for _ in range(3)][::3]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(score_all, (0, 100, 200, 300)))
    for offset, scores in zip((0, 100, 200, 300), results, strict=True):
        assert scores == expected[offset:] + expected[:offset]


def test_train_same_data_and_seed_same_card(model_run: ModelRun) -> None:
    again = tr.train(MODEL_SETTINGS, model_run.data)
    for key in ("metrics", "threshold", "split", "leaky_protocol", "drift_reference"):
        assert again.card[key] == model_run.result.card[key], key
    other = tr.split_by_client(model_run.data.frame, 0.2, seed=7)[1]
    assert set(other["id"]) != set(parts(model_run)["test"]["id"])  # another seed, other clients held out


def test_honest_protocol_learns_something_and_leaky_claims_more(model_run: ModelRun) -> None:
    honest, leaky = model_run.result.card["metrics"], model_run.result.card["leaky_protocol"]
    assert honest["roc_auc"] > 0.6
    assert leaky["roc_auc"] > honest["roc_auc"] + 0.1


def test_features_missing_or_corrupt_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FeaturesError, match=r"no features at .*nowhere"):
        load_features(tmp_path / "nowhere")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "part-0.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(FeaturesError, match="cannot read features at"):
        load_features(corrupt)
    with pytest.raises(FeaturesError, match="no labelled loans"):
        load_features(synthetic_features(tmp_path / "f", clients=20), dt.date(2000, 1, 1))


@pytest.fixture
def registry_copy(model_run: ModelRun, tmp_path: Path) -> Path:
    """A copy of the session's registry, free to change."""
    models = tmp_path / "models"
    shutil.copytree(model_run.models, models)
    return models


def test_approve_rollback_and_listing(model_run: ModelRun, registry_copy: Path) -> None:
    result = model_run.result
    second = registry.save(registry_copy, result.pipeline, result.card, result.files())
    assert registry.versions(registry_copy) == [model_run.version, second]
    registry.approve(registry_copy, second, by="bob")
    assert registry.load_approved(registry_copy)[1]["version"] == second
    record = registry.approve(registry_copy, model_run.version, by="alice")  # the rollback
    assert [h["version"] for h in record["history"]] == [model_run.version, second, model_run.version]
    assert [h["approved_by"] for h in record["history"]] == ["tests", "bob", "alice"]
    assert record["sha256"] == registry.sha256_of(registry_copy / model_run.version / "model.joblib")
    listing = registry.table(registry_copy).splitlines()
    assert [line.split()[:2] for line in listing[1:]] == [[model_run.version, "APPROVED"], [second, "candidate"]]


def test_a_model_file_changed_after_approval_is_never_loaded(model_run: ModelRun, registry_copy: Path) -> None:
    model = registry_copy / model_run.version / "model.joblib"
    other = io.BytesIO()
    joblib.dump({"not": "the approved model"}, other)  # loads fine: only the hash tells it apart
    model.write_bytes(other.getvalue())
    with pytest.raises(registry.RegistryError, match=r"model\.joblib has SHA-256 \w+, but its model card records"):
        registry.load_approved(registry_copy)
    with pytest.raises(registry.RegistryError, match="but its model card records"):
        registry.approve(registry_copy, model_run.version)
    # A card edited to match the new file still disagrees with what was approved.
    card_path = registry_copy / model_run.version / "model_card.json"
    card = json.loads(card_path.read_text())
    card["artifact"]["sha256"] = registry.sha256_of(model)
    card_path.write_text(json.dumps(card))
    with pytest.raises(registry.RegistryError, match=r"but approved\.json records"):
        registry.load_approved(registry_copy)


def test_unknown_or_damaged_version_is_refused(model_run: ModelRun, registry_copy: Path) -> None:
    with pytest.raises(registry.RegistryError, match=f"unknown model version '20990101T000000Z'.*{model_run.version}"):
        registry.approve(registry_copy, "20990101T000000Z")
    card_path = registry_copy / model_run.version / "model_card.json"
    card = json.loads(card_path.read_text())
    (registry_copy / model_run.version / "model.joblib").write_bytes(b"garbage")
    card["artifact"]["sha256"] = registry.sha256_of(registry_copy / model_run.version / "model.joblib")
    card_path.write_text(json.dumps(card))
    with pytest.raises(registry.RegistryError, match="does not load"):
        registry.approve(registry_copy, model_run.version)


@pytest.mark.slow
def test_commands_train_approve_and_list(
    model_run: ModelRun, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    env = clean_env(CREDIT_MODEL_CLASSIFIER_N_ESTIMATORS="10", CREDIT_MODEL_CLASSIFIER_MAX_DEPTH="4")
    models = tmp_path / "models"
    args = ["train", "--features", str(model_run.features), "--models", str(models), "--until", "2020-06-30"]
    done = subprocess.run(["./spark-submit.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    version = done.stdout.strip()  # the version alone on stdout
    assert done.stdout == f"{version}\n"
    card = json.loads((models / version / "model_card.json").read_text())
    assert card["parameters"]["classifier"]["n_estimators"] == 10 and card["training_data"]["until"] == "2020-06-30"
    # The rest through the command line in this process (what ./spark-submit.sh runs).
    capsys.readouterr()
    assert main(["approve", version, "--models", str(models)]) == 0
    assert capsys.readouterr().out == f"approved {version}\n"
    assert main(["models", "--models", str(models)]) == 0
    listing = capsys.readouterr().out
    assert f"{version}     APPROVED" in listing and "2020-06-30" in listing
    assert main(["approve", "nope", "--models", str(models)]) == 2 and "unknown model version 'nope'" in caplog.text
    assert main(["train", "--features", str(tmp_path / "none"), "--models", str(models)]) == 2
    assert "no features at" in caplog.text


def test_train_on_the_feature_jobs_output(dirty: Dirty) -> None:
    data = load_features(dirty.out / "features")
    labelled = sum(1 for f in dirty.truth.features.values() if f[8] is not None)
    assert len(data.frame) == labelled and set(pd.unique(data.frame["status"])) == {0, 1}
    result = tr.train(MODEL_SETTINGS, data, leaky=False)
    assert result.card["training_data"]["clients"] == dirty.report["clients"]
    assert result.card["metrics"]["rows"] == result.card["split"]["test"]["rows"] > 0


def test_model_settings_reject_bad_shares() -> None:
    with pytest.raises(ValueError, match="test_clients: expected a share between 0 and 1"):
        dataclasses.replace(MODEL_SETTINGS, test_clients=1.5)
