"""The feature job's transforms on hand-written rows, compared as whole DataFrames."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType
from pyspark.testing import assertDataFrameEqual

from contract import OUTPUT_COLUMNS, RAW_COLUMNS
from spark_jobs import features as fj

RAW_SCHEMA = StructType([StructField(c, StringType()) for c in RAW_COLUMNS])
OUTPUT_SCHEMA = (
    "loan_id long, id long, loan_date date, nb_previous_loans int, avg_amount_loans_previous double, "
    "age int, years_on_the_job int, flag_own_car int, status int"
)
BASE = {
    "code_gender": "F", "flag_own_car": "Y", "flag_own_realty": "N", "cnt_children": "0",
    "amt_income_total": "112500.0", "name_income_type": "Working",
    "name_education_type": "Higher education", "name_family_status": "Married",
    "name_housing_type": "House / apartment", "days_birth": "-12000", "days_employed": "-1000",
    "flag_mobil": "1", "flag_work_phone": "0", "flag_phone": "0", "flag_email": "0",
    "occupation_type": "Managers", "cnt_fam_members": "2.0", "status": "0",
    "birthday": "1990-05-10", "job_start_date": "2015-03-01",
}  # fmt: skip


def loan(loan_id: Any, client: Any, loan_date: str, amount: str = "100.0", **fields: Any) -> dict[str, Any]:
    return {**BASE, "loan_id": str(loan_id), "id": str(client), "loan_date": loan_date,
            "loan_amount": amount, **fields}  # fmt: skip


def raw(spark: SparkSession, *rows: dict[str, Any]) -> DataFrame:
    return spark.createDataFrame([tuple(r.get(c) for c in RAW_COLUMNS) for r in rows], RAW_SCHEMA)


def checked(spark: SparkSession, *rows: dict[str, Any], as_of: dt.date | None = None) -> DataFrame:
    parsed = raw(spark, *rows).transform(fj.normalize).transform(fj.drop_exact_duplicates)
    return fj.validate(parsed.transform(fj.parse_keys), as_of)


def features(spark: SparkSession, *rows: dict[str, Any], as_of: dt.date | None = None) -> DataFrame:
    accepted = checked(spark, *rows, as_of=as_of).where(F.col("reason").isNull())
    return fj.to_features_output(fj.add_features(accepted))


def expected(spark: SparkSession, *rows: tuple) -> DataFrame:
    return spark.createDataFrame(list(rows), OUTPUT_SCHEMA)


def d(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def test_features_first_loan_and_averages_of_earlier_loans(spark: SparkSession) -> None:
    result = features(
        spark,
        loan(3, 7, "2020-03-01", "300.0"),
        loan(1, 7, "2020-01-01", "100.0"),
        loan(2, 7, "2020-02-01", "200.0"),
        loan(4, 8, "2019-06-01", "150.5"),
    )
    assertDataFrameEqual(
        result,
        expected(
            spark,
            (1, 7, d("2020-01-01"), 0, None, 29, 4, 1, 0),
            (2, 7, d("2020-02-01"), 1, 100.0, 29, 4, 1, 0),
            (3, 7, d("2020-03-01"), 2, 150.0, 29, 5, 1, 0),
            (4, 8, d("2019-06-01"), 0, None, 29, 4, 1, 0),
        ),
    )
    assert tuple(result.columns) == OUTPUT_COLUMNS


def test_features_same_day_loans_ordered_by_loan_id_with_one_frame(spark: SparkSession) -> None:
    result = features(
        spark,
        loan(12, 5, "2020-05-05", "120.0"),
        loan(11, 5, "2020-05-05", "110.0"),
        loan(10, 5, "2020-01-01", "100.0"),
        loan(13, 5, "2020-05-05", "130.0"),
    )
    assertDataFrameEqual(
        result.select("loan_id", "nb_previous_loans", "avg_amount_loans_previous"),
        spark.createDataFrame(
            [(10, 0, None), (11, 1, 100.0), (12, 2, 105.0), (13, 3, 110.0)],
            "loan_id long, nb_previous_loans int, avg_amount_loans_previous double",
        ),
    )


@pytest.mark.parametrize(
    ("birthday", "job_start", "loan_date", "age", "years"),
    [
        ("1990-05-10", "3021-09-18", "2020-05-10", 30, None),  # the "not employed" code
        ("1990-05-10", "2015-05-11", "2020-05-10", 30, 4),  # the day before anniversaries
        ("1992-02-29", "2016-02-29", "2021-02-28", 29, 5),  # Feb 29 turns a year on Feb 28 ...
        ("1992-02-29", "2016-02-29", "2021-02-27", 28, 4),
        ("1992-02-29", "2016-02-29", "2020-02-28", 27, 3),  # ... but not in a leap year
        ("1992-02-29", "2016-02-29", "2020-02-29", 28, 4),
        ("2020-06-01", "2015-03-01", "2020-05-10", None, None),  # birthday after the loan; job before birth
        ("1990-05-10", "1985-01-01", "2020-05-10", 30, None),  # job start before the birthday
        ("1890-01-01", "1905-03-01", "2020-05-10", None, None),  # age > 120, years > 100
        ("1899-05-10", "1919-05-11", "2019-05-10", 120, 99),  # exactly 120 and 99 stay
        ("1990-02-30", "2015-03-01", "2020-05-10", None, 5),  # impossible birthday
        (None, "2020-13-01", "2020-05-10", None, None),  # empty birthday, impossible job start
        ("  1990-05-10 ", "2020-05-10", "2020-05-10", 30, 0),  # padded, started on the loan day
    ],
)
def test_features_age_and_years_on_the_job_as_of_the_loan_date(
    spark: SparkSession, birthday: str | None, job_start: str, loan_date: str, age: int | None, years: int | None
) -> None:
    result = features(spark, loan(1, 1, loan_date, birthday=birthday, job_start_date=job_start))
    assertDataFrameEqual(
        result.select("age", "years_on_the_job"),
        spark.createDataFrame([(age, years)], "age int, years_on_the_job int"),
    )


@pytest.mark.parametrize(
    ("flag", "value"), [("Y", 1), ("y", 1), (" N ", 0), ("n", 0), (None, None), ("", None), ("X", None)]
)
def test_features_flag_own_car(spark: SparkSession, flag: str | None, value: int | None) -> None:
    result = features(spark, loan(1, 1, "2020-01-01", flag_own_car=flag))
    assertDataFrameEqual(result.select("flag_own_car"), spark.createDataFrame([(value,)], "flag_own_car int"))


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("id", "abc", "invalid_id"),
        ("id", "0", "invalid_id"),
        ("id", "-5", "invalid_id"),
        ("id", "12.0", "invalid_id"),
        ("id", "9223372036854775808", "invalid_id"),
        ("id", "", "invalid_id"),
        ("loan_id", "1e3", "invalid_loan_id"),
        ("loan_id", None, "invalid_loan_id"),
        ("loan_date", "2020-02-30", "invalid_loan_date"),
        ("loan_date", "2021-02-29", "invalid_loan_date"),
        ("loan_date", "2020-1-05", "invalid_loan_date"),
        ("loan_date", "0000-01-01", "invalid_loan_date"),
        ("loan_date", "20200105", "invalid_loan_date"),
        ("loan_amount", "abc", "invalid_loan_amount"),
        ("loan_amount", "0", "invalid_loan_amount"),
        ("loan_amount", "-1.5", "invalid_loan_amount"),
        ("loan_amount", "NaN", "invalid_loan_amount"),
        ("loan_amount", "Infinity", "invalid_loan_amount"),
        ("loan_amount", "1e400", "invalid_loan_amount"),
        ("loan_amount", "1,000", "invalid_loan_amount"),
        ("loan_amount", "1_000", "invalid_loan_amount"),
        ("loan_amount", "12.5d", "invalid_loan_amount"),
        ("status", "2", "invalid_status"),
        ("status", "0.0", "invalid_status"),
        ("status", "yes", "invalid_status"),
        ("loan_date", "2021-01-02", "future_loan_date"),
    ],
)
def test_validate_rejects_with_reason(spark: SparkSession, column: str, value: str | None, reason: str) -> None:
    good = loan(1, 1, "2020-01-01")
    bad = {**loan(2, 1, "2020-02-01"), column: value}
    result = checked(spark, good, bad, as_of=dt.date(2020, 12, 31))
    assertDataFrameEqual(
        result.select("loan_id", "reason"),
        spark.createDataFrame([("1", None), (bad["loan_id"], reason)], "loan_id string, reason string"),
    )


@pytest.mark.parametrize(
    ("amount", "kept"), [("1e3", 1000.0), ("+12.5", 12.5), (".5", 0.5), (" 118.25 ", 118.25), ("100", 100.0)]
)
def test_validate_accepts_plain_decimal_amounts(spark: SparkSession, amount: str, kept: float) -> None:
    result = checked(spark, loan(1, 1, "2020-01-01", amount))
    assertDataFrameEqual(
        result.select("_loan_amount", "reason"),
        spark.createDataFrame([(kept, None)], "_loan_amount double, reason string"),
    )


def test_validate_first_reason_that_applies_wins(spark: SparkSession) -> None:
    row = loan("x", "y", "bad", "-1", status="7")
    result = checked(spark, row)
    assert [r.reason for r in result.collect()] == ["invalid_id"]


def test_validate_future_dates_only_rejected_with_as_of(spark: SparkSession) -> None:
    rows = (loan(1, 1, "2021-01-01"), loan(2, 1, "2020-12-31"))
    assertDataFrameEqual(
        checked(spark, *rows, as_of=dt.date(2020, 12, 31)).select("loan_id", "reason"),
        spark.createDataFrame([("1", "future_loan_date"), ("2", None)], "loan_id string, reason string"),
    )
    assert checked(spark, *rows).where(F.col("reason").isNotNull()).count() == 0


def test_exact_duplicates_are_one_row_and_counted(spark: SparkSession) -> None:
    row = loan(1, 1, "2020-01-01")
    padded = {k: f" {v}\t" for k, v in row.items()}  # identical once trimmed
    result = raw(spark, row, row, padded, loan(2, 1, "2020-01-02")).transform(fj.normalize)
    result = result.transform(fj.drop_exact_duplicates)
    assertDataFrameEqual(
        result.select("loan_id", "_copies"),
        spark.createDataFrame([("1", 3), ("2", 1)], "loan_id string, _copies long"),
    )


def test_conflicting_loan_ids_are_all_rejected_and_left_out_of_features(spark: SparkSession) -> None:
    rows = (
        loan(1, 1, "2020-01-01", "100.0"),
        loan(2, 1, "2020-02-01", "200.0"),
        loan(2, 1, "2020-02-01", "201.0"),  # same loan_id, another amount
        loan("02", 9, "2020-03-01", "50.0"),  # the same loan_id written otherwise, another client
        loan(3, 1, "2020-03-01", "300.0"),
        loan(3, 1, "2020-03-01", "300.0"),  # an exact copy: not a conflict
    )
    assertDataFrameEqual(
        checked(spark, *rows).select("loan_id", "loan_amount", "reason"),
        spark.createDataFrame(
            [
                ("1", "100.0", None),
                ("2", "200.0", "duplicate_loan_id"),
                ("2", "201.0", "duplicate_loan_id"),
                ("02", "50.0", "duplicate_loan_id"),
                ("3", "300.0", None),
            ],
            "loan_id string, loan_amount string, reason string",
        ),
    )
    assertDataFrameEqual(
        features(spark, *rows).select("loan_id", "nb_previous_loans", "avg_amount_loans_previous"),
        spark.createDataFrame(
            [(1, 0, None), (3, 1, 100.0)], "loan_id long, nb_previous_loans int, avg_amount_loans_previous double"
        ),
    )


def test_features_empty_status_is_kept_as_null(spark: SparkSession) -> None:
    result = features(spark, loan(1, 1, "2020-01-01", status=""), loan(2, 1, "2020-01-02", status="1"))
    assertDataFrameEqual(
        result.select("loan_id", "status"), spark.createDataFrame([(1, None), (2, 1)], "loan_id long, status int")
    )


def test_features_client_ids_written_differently_are_one_client(spark: SparkSession) -> None:
    result = features(spark, loan(1, "0042", "2020-01-01", "10.0"), loan(2, " 42", "2020-01-02", "30.0"))
    assertDataFrameEqual(
        result.select("id", "nb_previous_loans", "avg_amount_loans_previous"),
        spark.createDataFrame(
            [(42, 0, None), (42, 1, 10.0)], "id long, nb_previous_loans int, avg_amount_loans_previous double"
        ),
    )


def test_features_null_reasons_are_recorded(spark: SparkSession) -> None:
    accepted = checked(
        spark,
        loan(1, 1, "2020-01-01", birthday=None, job_start_date="3021-09-18", flag_own_car="X"),
        loan(2, 1, "2020-01-02", birthday="2021-01-01", job_start_date="1980-01-01", flag_own_car=None),
    ).where(F.col("reason").isNull())
    result = fj.add_features(accepted).select(
        "loan_id", "_null_avg_amount_loans_previous", "_null_age", "_null_years_on_the_job", "_null_flag_own_car"
    )
    assertDataFrameEqual(
        result,
        spark.createDataFrame(
            [
                (1, "first_loan", "birthday_missing", "job_start_after_loan_date", "flag_own_car_invalid"),
                (2, None, "birthday_after_loan_date", "job_start_before_birthday", "flag_own_car_missing"),
            ],
            "loan_id long, _null_avg_amount_loans_previous string, _null_age string, "
            "_null_years_on_the_job string, _null_flag_own_car string",
        ),
    )
