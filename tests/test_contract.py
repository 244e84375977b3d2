"""The feature contract is the one home of the features: the stages derive their shapes from it."""

from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from conf import load_settings
from contract import FEATURE_NAMES, FEATURES, Feature, Imputation, raw
from contract import spark as contract_spark
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


# Values a reader of ids and dates meets: valid ones at the edges, and what a cast alone would accept.
WHOLE_NUMBER_TEXTS = [
    "7", "007", "00000000000000000000000001", "9223372036854775807", "9223372036854775808", "0", "00", "+7", "-7",
    "7 ", "07\t", "\t07", "7\r",
    "7.0", "7.", "1e3", "0x10", " 7", "7\x0b", "\x0c7", "12 3", "1_000", "\u0663", "",
]  # fmt: skip
DATE_TEXTS = [
    "2020-02-29", "0001-01-01", "0999-12-31", "1582-10-10", "9999-12-31", "3021-09-18", "2021-02-29", "2020-13-01",
    "2020-00-10", "0000-01-01", "2020-1-05", "2020-01-5", "+2020-01-05", "-2020-01-05", "20200-01-05",
    "10000-01-01", "2020-01-05T10", "2020-01-5T", "2020-01-05T", "2020-01-05 ", "2020-01-05\x0b", "\x0c2020-01-05",
    "2020", "2020-01", "1-01-01", "\u0662\u0660\u0662\u0660-01-05", "",
    # Ten bytes, not the pattern: a sign, a short month or day, a `T` or a character of two bytes.
    "+020-01-05", "2020-1-5T1", "2020-1-05T", "2020-01-0T", "202-1-5T\u00e9", "2020-01-0\u0665", "0000-12-31",
]  # fmt: skip

DECIMAL_TEXTS = [
    "100", "1.5", "1.", ".5", "+.5e-3", "-0.0", "1e5", "1E-5", "00.5", "1e400", ".", "1e", "1e+", "e5", "+", "5..",
    "1.5.2", "++1", "1d", "1.5f", "1e5D", "0x1p3", "0X10", "Infinity", "-Infinity", "NaN", "inf", "+inf", " 1",
    "1 ", "\x0b1", "1\x0b", "1,000", "1_000", "\u0661", "",
]  # fmt: skip
READERS = {
    "whole": (WHOLE_NUMBER_TEXTS, contract_spark.parse_whole_number, raw.parse_whole_number),
    "date": (DATE_TEXTS, contract_spark.parse_date, raw.parse_date),
    "decimal": (DECIMAL_TEXTS, contract_spark.parse_decimal, raw.parse_decimal),
}


def test_contract_ids_dates_and_amounts_read_the_same_in_spark_and_in_python(spark: SparkSession) -> None:
    """The Spark reading of a whole number, a date and a decimal (a cast checked against the text) is the
    pattern's reading, which the Python form applies literally."""
    cases = [(kind, text) for kind, (texts, _, _) in READERS.items() for text in texts]
    frame = spark.createDataFrame(cases, "kind string, text string")
    value = F.to_json(F.struct(*[
        F.when(F.col("kind") == kind, read(F.col("text"))).alias(kind) for kind, (_, read, _) in READERS.items()
    ]))  # fmt: skip
    rows = frame.select("kind", "text", value.alias("value")).collect()
    got = {(r.kind, r.text): json.loads(r.value).get(r.kind) for r in rows}
    want = {(kind, text): READERS[kind][2](text) for kind, text in cases}
    want = {key: v.isoformat() if isinstance(v, dt.date) else v for key, v in want.items()}
    assert got == want
    # The valid ones above, read as such.
    assert {kind: sum(v is not None for (k, _), v in want.items() if k == kind) for kind in READERS} == {
        "whole": 4, "date": 6, "decimal": 9}  # fmt: skip
