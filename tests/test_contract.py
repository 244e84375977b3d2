"""The feature contract is the one home of the features: the stages derive their shapes from it."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from conf import load_settings
from contract import FEATURE_NAMES, FEATURES, Feature, Imputation
from model import train
from serving import schemas
from serving.app import create_app
from serving.store import Codec, OnlineStore

ROOT = Path(__file__).resolve().parent.parent
SIXTH = {
    int: Feature("nb_late_loans", int, "earlier loans paid late", ("first_loan",),
                 Imputation("constant", "a first loan has none", fill_value=0.0)),
    float: Feature("share_late_loans", float, "share of the earlier loans paid late", ("first_loan",),
                   Imputation("median", "the typical share")),
}  # fmt: skip


@pytest.fixture(params=[int, float], ids=["int", "float"])
def sixth(request: pytest.FixtureRequest) -> Feature:
    return SIXTH[request.param]


def test_contract_a_sixth_feature_is_encoded_and_decoded_with_its_type(sixth: Feature) -> None:
    codec = Codec.for_features((*FEATURES, sixth))
    value = 3 if sixth.type is int else 0.25
    fields = codec.encode({"nb_previous_loans": 4, sixth.name: value, "loan_date": "2020-01-01"})
    assert fields == {"nb_previous_loans": "4", sixth.name: str(value), "loan_date": "2020-01-01"}
    decoded = codec.decode(fields)
    assert decoded[sixth.name] == value and type(decoded[sixth.name]) is sixth.type
    assert type(Codec.for_features().decode(fields)[sixth.name]) is str  # unknown to the five-feature codec


def test_contract_a_sixth_feature_is_served_and_in_the_openapi_document(redis_url: str, sixth: Feature) -> None:
    features = (*FEATURES, sixth)
    store = OnlineStore.from_url(redis_url, codec=Codec.for_features(features), version_cache_seconds=0)
    value = 3 if sixth.type is int else 0.25
    store.begin("v1", {"source": "test"})
    store.write("v1", [(7, {"nb_previous_loans": 4, sixth.name: value, "loan_date": "2020-01-01", "score": 0.5,
                            "label": 1, "model_version": "m"})])  # fmt: skip
    store.complete("v1", 1)
    store.publish("v1")
    client = create_app({"REDIS_URL": redis_url, "VERSION_CACHE_SECONDS": 0.0, "FEATURES": features}).test_client()
    answer = client.get("/v1/clients/7/features").json
    assert list(answer["features"]) == [*FEATURE_NAMES, sixth.name]
    assert answer["features"][sixth.name] == value and type(answer["features"][sixth.name]) is sixth.type
    spec = client.get("/openapi.json").json["components"]["schemas"]["Features"]
    json_type = "integer" if sixth.type is int else "number"
    assert spec["properties"][sixth.name] == {
        "anyOf": [{"type": json_type}, {"type": "null"}], "description": sixth.description,
        "title": sixth.name.replace("_", " ").title(),
    }  # fmt: skip
    assert list(spec["properties"]) == [*FEATURE_NAMES, sixth.name]
    assert "nb_late_loans" not in str(schemas.openapi(10))  # the default document has the contract's five


def test_contract_the_training_pipeline_imputes_every_feature_by_its_rule(sixth: Feature) -> None:
    settings = load_settings(env={}).model
    imputation = train.build_pipeline(settings, (*FEATURES, sixth)).named_steps["impute"]
    steps = {name: (type(step).__name__, getattr(step, "strategy", None), getattr(step, "fill_value", None), columns)
             for name, step, columns in imputation.transformers}  # fmt: skip
    assert list(steps) == [*FEATURE_NAMES[:4], "years_on_the_job_missing", FEATURE_NAMES[4], sixth.name]
    rule = sixth.imputation
    assert steps[sixth.name] == ("SimpleImputer", rule.strategy, rule.fill_value, [sixth.name])
    assert steps["years_on_the_job"] == ("SimpleImputer", "constant", 0.0, ["years_on_the_job"])
    assert steps["years_on_the_job_missing"] == ("MissingIndicator", None, None, ["years_on_the_job"])


def test_contract_imputation_rules_read_as_the_model_card_states_them() -> None:
    assert {f.name: f.imputation.rule for f in FEATURES} == {
        "nb_previous_loans": "median", "avg_amount_loans_previous": "constant 0", "age": "median",
        "years_on_the_job": "constant 0, plus a 'missing' indicator", "flag_own_car": "most frequent",
    }  # fmt: skip
    assert dataclasses.replace(SIXTH[int].imputation, fill_value=1.5).rule == "constant 1.5"


@pytest.mark.parametrize("package", ["serving", "model", "contract"])
def test_contract_no_stage_imports_the_spark_jobs(package: str) -> None:
    """`serving/` and `model/` (and the contract itself) never import from `spark_jobs/`."""
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "spark_jobs"]
    assert offenders == []
