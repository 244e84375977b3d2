"""The feature job's transforms on hand-written rows, compared as whole DataFrames.

Each table of cases is one DataFrame (one client or one loan id per case), so a table costs one
Spark job, not one per case.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType
from pyspark.testing import assertDataFrameEqual

from contract import OUTPUT_COLUMNS, RAW_COLUMNS, TRIMMED
from spark_jobs import features as fj

RAW_SCHEMA = StructType([StructField(c, StringType()) for c in (*RAW_COLUMNS, "raw_record")])
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
AS_OF = dt.date(2020, 12, 31)


def loan(loan_id: Any, client: Any, loan_date: str, amount: str = "100.0", **fields: Any) -> dict[str, Any]:
    return {**BASE, "loan_id": str(loan_id), "id": str(client), "loan_date": loan_date,
            "loan_amount": amount, **fields}  # fmt: skip


def raw(spark: SparkSession, *rows: dict[str, Any]) -> DataFrame:
    return spark.createDataFrame([tuple(r.get(c) for c in RAW_SCHEMA.names) for r in rows], RAW_SCHEMA)


def checked(spark: SparkSession, *rows: dict[str, Any], as_of: dt.date | None = None) -> DataFrame:
    parsed = raw(spark, *rows).transform(fj.normalize).transform(fj.drop_exact_duplicates)
    return fj.validate(parsed.transform(fj.parse_keys), as_of)


def featured(spark: SparkSession, *rows: dict[str, Any], as_of: dt.date | None = None) -> DataFrame:
    """The features with their `_null_<feature>` reasons."""
    return fj.add_features(checked(spark, *rows, as_of=as_of).where(F.col("reason").isNull()))


def features(spark: SparkSession, *rows: dict[str, Any], as_of: dt.date | None = None) -> DataFrame:
    return fj.to_features_output(featured(spark, *rows, as_of=as_of))


def d(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


# Padding a value may carry: each character up to U+0020 and DEL, alone, around, inside and mixed, and
# characters that look blank but are not trimmed (a no-break space, an em space, an ideographic space).
PADDED_TEXTS = [
    *(f"{pad}7" for pad in map(chr, [*range(0x21), 0x7F, 0xA0, 0x2003, 0x3000])),
    *(f"7{pad}" for pad in map(chr, [*range(0x21), 0x7F, 0xA0, 0x2003, 0x3000])),
    "", " ", "\t", "\r\n", " \t \r\n ", "7", " 7 ", "\t7\t", "\r\n7\r\n", " \t7 7\r ", " \t7 7 ", "7 \t", "\x0b7\x0b",
    " \x0b ", "\t\x0c\t", "a b", "a\tb", " a\tb\n", "\u00e9 ", "\t\u00e9", None,
]  # fmt: skip


@pytest.mark.parametrize("normalized", [fj.normalized, fj.normalized_in_line])
def test_normalized_trims_the_contract_s_characters_and_empty_is_null(
    spark: SparkSession, normalized: Callable[[str], Column]
) -> None:
    """Spark's normalized value is the contract's: trimmed of TRIMMED at both ends, nothing else, empty as
    missing; also by the plain `trim` the job takes for a value read from a line holding no tab."""
    texts = PADDED_TEXTS if normalized is fj.normalized else [t for t in PADDED_TEXTS if t is None or
                                                              not {"\r", "\n"} & set(t)]  # fmt: skip
    frame = spark.createDataFrame([(i, t) for i, t in enumerate(texts)], "i int, text string")
    got = {r.i: r.text for r in frame.select("i", normalized("text")).collect()}
    assert got == {i: (t.strip(TRIMMED) or None) if t is not None else None for i, t in enumerate(texts)}
    assert got[texts.index(" \t7 7 ")] == "7 7"  # inside: kept
    assert got[texts.index("\x0b7\x0b")] == "\x0b7\x0b"  # not a trimmed character


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
        spark.createDataFrame(
            [
                (1, 7, d("2020-01-01"), 0, None, 29, 4, 1, 0),
                (2, 7, d("2020-02-01"), 1, 100.0, 29, 4, 1, 0),
                (3, 7, d("2020-03-01"), 2, 150.0, 29, 5, 1, 0),
                (4, 8, d("2019-06-01"), 0, None, 29, 4, 1, 0),
            ],
            OUTPUT_SCHEMA,
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


# birthday, job start, loan date -> age, its null reason, years on the job, its null reason
AGE_AND_JOB_CASES = [
    ("1990-05-10", "3021-09-18", "2020-05-10", 30, None, None, "job_start_after_loan_date"),  # "not employed"
    ("1990-05-10", "2015-05-11", "2020-05-10", 30, None, 4, None),  # the day before anniversaries
    ("1992-02-29", "2016-02-29", "2021-02-28", 29, None, 5, None),  # Feb 29 turns a year on Feb 28 ...
    ("1992-02-29", "2016-02-29", "2021-02-27", 28, None, 4, None),
    ("1992-02-29", "2016-02-29", "2020-02-28", 27, None, 3, None),  # ... but not in a leap year
    ("1992-02-29", "2016-02-29", "2020-02-29", 28, None, 4, None),
    ("2020-06-01", "2015-03-01", "2020-05-10", None, "birthday_after_loan_date", None, "job_start_before_birthday"),
    ("1990-05-10", "1985-01-01", "2020-05-10", 30, None, None, "job_start_before_birthday"),
    ("1899-05-10", "1919-05-10", "2019-05-10", 120, None, 100, None),  # exactly 120 and 100 stay
    ("1899-05-10", "1919-05-10", "2020-05-10", None, "age_over_120", None, "years_on_the_job_over_100"),  # 121, 101
    ("1899-05-11", "1919-05-11", "2020-05-10", 120, None, 100, None),  # 121 and 101 only tomorrow
    ("1990-02-30", "2015-03-01", "2020-05-10", None, "birthday_invalid", 5, None),
    (None, "2020-13-01", "2020-05-10", None, "birthday_missing", None, "job_start_invalid"),
    ("1990-05-10", None, "2020-05-10", 30, None, None, "job_start_missing"),
    ("  1990-05-10 ", "2020-05-10", "2020-05-10", 30, None, 0, None),  # padded, started on the loan day
    ("1990-05-10", "1990-05-10", "2020-05-09", 29, None, 29, None),  # job start on the birthday is allowed
]


def test_features_age_and_years_on_the_job_as_of_the_loan_date(spark: SparkSession) -> None:
    rows = [loan(i, i, day, birthday=born, job_start_date=job)
            for i, (born, job, day, *_) in enumerate(AGE_AND_JOB_CASES, start=1)]  # fmt: skip
    result = featured(spark, *rows).select("id", "age", "_null_age", "years_on_the_job", "_null_years_on_the_job")
    assertDataFrameEqual(
        result,
        spark.createDataFrame(
            [(i, *expected) for i, (_, _, _, *expected) in enumerate(AGE_AND_JOB_CASES, start=1)],
            "id long, age int, _null_age string, years_on_the_job int, _null_years_on_the_job string",
        ),
    )


FLAG_CASES = [
    ("Y", 1, None), ("y", 1, None), (" N ", 0, None), ("n", 0, None), (None, None, "flag_own_car_missing"),
    ("", None, "flag_own_car_missing"), ("X", None, "flag_own_car_invalid"), ("yes", None, "flag_own_car_invalid"),
    # Upper-cased, these are not Y or N either (\u00ff is y with diaeresis, \uff4e a full-width n).
    ("\u00ff", None, "flag_own_car_invalid"), ("\uff4e", None, "flag_own_car_invalid"),
]  # fmt: skip


def test_features_flag_own_car(spark: SparkSession) -> None:
    rows = [loan(i, i, "2020-01-01", flag_own_car=flag) for i, (flag, _, _) in enumerate(FLAG_CASES, start=1)]
    assertDataFrameEqual(
        featured(spark, *rows).select("id", "flag_own_car", "_null_flag_own_car"),
        spark.createDataFrame(
            [(i, value, why) for i, (_, value, why) in enumerate(FLAG_CASES, start=1)],
            "id long, flag_own_car int, _null_flag_own_car string",
        ),
    )


# column, bad value, reason (with --as-of 2020-12-31)
REJECT_CASES = [
    ("id", "abc", "invalid_id"), ("id", "0", "invalid_id"), ("id", "-5", "invalid_id"),
    ("id", "12.0", "invalid_id"), ("id", "9223372036854775808", "invalid_id"), ("id", "", "invalid_id"),
    ("id", "+7", "invalid_id"), ("id", "1e3", "invalid_id"), ("id", "5 008", "invalid_id"),
    ("loan_id", "1e3", "invalid_loan_id"), ("loan_id", None, "invalid_loan_id"), ("loan_id", "0x1F", "invalid_loan_id"),
    ("loan_id", "7.0", "invalid_loan_id"), ("loan_id", "99999999999999999999", "invalid_loan_id"),
    ("loan_date", "2020-02-30", "invalid_loan_date"), ("loan_date", "2021-02-29", "invalid_loan_date"),
    ("loan_date", "2020-1-05", "invalid_loan_date"), ("loan_date", "0000-01-01", "invalid_loan_date"),
    ("loan_date", "20200105", "invalid_loan_date"), ("loan_date", "yesterday", "invalid_loan_date"),
    ("loan_date", "2020-06-31", "invalid_loan_date"), ("loan_date", "", "invalid_loan_date"),
    ("loan_amount", "abc", "invalid_loan_amount"), ("loan_amount", "0", "invalid_loan_amount"),
    ("loan_amount", "-0.0", "invalid_loan_amount"), ("loan_amount", "-1.5", "invalid_loan_amount"),
    ("loan_amount", "NaN", "invalid_loan_amount"), ("loan_amount", "Infinity", "invalid_loan_amount"),
    ("loan_amount", "1e400", "invalid_loan_amount"), ("loan_amount", "1,000", "invalid_loan_amount"),
    ("loan_amount", "1,000.50", "invalid_loan_amount"), ("loan_amount", "1_000", "invalid_loan_amount"),
    ("loan_amount", "12.5d", "invalid_loan_amount"), ("loan_amount", "12.5.1", "invalid_loan_amount"),
    ("loan_amount", "", "invalid_loan_amount"),
    ("status", "2", "invalid_status"), ("status", "0.0", "invalid_status"), ("status", "yes", "invalid_status"),
    ("status", "01", "invalid_status"), ("status", "-1", "invalid_status"), ("status", "true", "invalid_status"),
    ("loan_date", "2021-01-01", "future_loan_date"),
    ("status", "", None), ("loan_date", "2020-12-31", None), ("id", "007", None), ("loan_amount", "1e-3", None),
]  # fmt: skip


def test_validate_rejects_with_the_reason(spark: SparkSession) -> None:
    rows = [{**loan(i, i, "2020-02-01"), column: value} for i, (column, value, _) in enumerate(REJECT_CASES, start=1)]
    result = checked(spark, *rows, as_of=AS_OF).select("loan_id", "loan_date", "reason")
    assertDataFrameEqual(
        result,
        spark.createDataFrame(
            [(r["loan_id"], r["loan_date"] or None, why) for r, (_, _, why) in zip(rows, REJECT_CASES, strict=True)],
            "loan_id string, loan_date string, reason string",
        ),
    )


# A fault per reason, spelled here independently of the generator's.
FAULTS = {
    "invalid_id": {"id": "x"},
    "invalid_loan_id": {"loan_id": "-3"},
    "invalid_loan_date": {"loan_date": "2020-13-01"},
    "invalid_loan_amount": {"loan_amount": "-1"},
    "invalid_status": {"status": "7"},
    "future_loan_date": {"loan_date": "2021-06-30"},
}
ORDER = list(FAULTS)  # the contract's order


def test_validate_the_first_reason_wins_for_every_pair_of_faults(spark: SparkSession) -> None:
    pairs = [(a, b) for a, b in itertools.combinations(ORDER, 2) if FAULTS[a].keys().isdisjoint(FAULTS[b])]
    rows = [{**loan(100 + i, 100 + i, "2020-02-01"), **FAULTS[b], **FAULTS[a]} for i, (a, b) in enumerate(pairs)]
    result = checked(spark, *rows, as_of=AS_OF).select("id", "loan_id", "reason")
    expected = [(r["id"], r["loan_id"], a) for r, (a, _) in zip(rows, pairs, strict=True)]
    assertDataFrameEqual(result, spark.createDataFrame(expected, "id string, loan_id string, reason string"))
    assert len(pairs) == 14  # every pair but the two faults of loan_date


def test_validate_a_row_rejected_for_an_earlier_reason_still_counts_toward_duplicate_loan_id(
    spark: SparkSession,
) -> None:
    rows = [loan(1, 1, "2020-01-01"), {**loan(1, "x", "2020-01-01")},  # invalid_id shares loan_id 1
            loan(2, 2, "2020-01-01"), {**loan(2, 2, "2020-01-01"), "status": "9"},  # invalid_status shares 2
            loan(3, 3, "2020-01-01"), {**loan(3, 3, "2021-03-01")}]  # future (with --as-of) shares 3  # fmt: skip
    result = checked(spark, *rows, as_of=AS_OF).select("id", "loan_id", "reason")
    assertDataFrameEqual(
        result,
        spark.createDataFrame(
            [("1", "1", "duplicate_loan_id"), ("x", "1", "invalid_id"), ("2", "2", "duplicate_loan_id"),
             ("2", "2", "invalid_status"), ("3", "3", "duplicate_loan_id"), ("3", "3", "future_loan_date")],
            "id string, loan_id string, reason string",
        ),
    )  # fmt: skip


def test_validate_a_malformed_record_is_first_and_never_shares_a_loan_id(spark: SparkSession) -> None:
    malformed = {**{c: None for c in RAW_COLUMNS}, "raw_record": "1,2,3"}
    result = checked(spark, loan(1, 1, "2020-01-01"), malformed).select("loan_id", "reason", "raw_record")
    assertDataFrameEqual(
        result,
        spark.createDataFrame(
            [("1", None, None), (None, "malformed_record", "1,2,3")], "loan_id string, reason string, raw_record string"
        ),
    )


AMOUNT_CASES = [("1e3", 1000.0), ("+12.5", 12.5), (".5", 0.5), (" 118.25 ", 118.25), ("100", 100.0), ("5.", 5.0)]


def test_validate_accepts_plain_decimal_amounts(spark: SparkSession) -> None:
    rows = [loan(i, i, "2020-01-01", amount) for i, (amount, _) in enumerate(AMOUNT_CASES, start=1)]
    assertDataFrameEqual(
        checked(spark, *rows).select("_loan_id", "_loan_amount", "reason"),
        spark.createDataFrame(
            [(i, kept, None) for i, (_, kept) in enumerate(AMOUNT_CASES, start=1)],
            "_loan_id long, _loan_amount double, reason string",
        ),
    )


def test_validate_future_dates_only_rejected_with_as_of(spark: SparkSession) -> None:
    rows = (loan(1, 1, "2021-01-01"), loan(2, 1, "2020-12-31"))
    assertDataFrameEqual(
        checked(spark, *rows, as_of=AS_OF).select("loan_id", "reason"),
        spark.createDataFrame([("1", "future_loan_date"), ("2", None)], "loan_id string, reason string"),
    )
    assertDataFrameEqual(
        checked(spark, *rows).select("loan_id", "reason"),
        spark.createDataFrame([("1", None), ("2", None)], "loan_id string, reason string"),
    )


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


def test_features_empty_status_client_ids_written_differently_and_null_reasons(spark: SparkSession) -> None:
    result = featured(
        spark,
        loan(1, "0042", "2020-01-01", "10.0", status="", birthday=None, job_start_date="3021-09-18", flag_own_car="X"),
        loan(2, " 42", "2020-01-02", "30.0", status="1", birthday="2021-01-01", job_start_date="1980-01-01",
             flag_own_car=None),
    )  # fmt: skip
    assertDataFrameEqual(
        result.select("loan_id", "id", "status", "nb_previous_loans", "avg_amount_loans_previous",
                      "_null_avg_amount_loans_previous", "_null_age", "_null_years_on_the_job", "_null_flag_own_car"),
        spark.createDataFrame(
            [
                (1, 42, None, 0, None, "first_loan", "birthday_missing", "job_start_after_loan_date",
                 "flag_own_car_invalid"),
                (2, 42, 1, 1, 10.0, None, "birthday_after_loan_date", "job_start_before_birthday",
                 "flag_own_car_missing"),
            ],
            "loan_id long, id long, status int, nb_previous_loans int, avg_amount_loans_previous double, "
            "_null_avg_amount_loans_previous string, _null_age string, _null_years_on_the_job string, "
            "_null_flag_own_car string",
        ),
    )  # fmt: skip


@pytest.mark.parametrize("as_of", [None, AS_OF])
def test_validate_keeps_every_row_once(spark: SparkSession, as_of: dt.date | None) -> None:
    """Validation adds a reason; it never drops or repeats a distinct row."""
    rows = [{**loan(i, i, "2020-02-01"), column: value} for i, (column, value, _) in enumerate(REJECT_CASES, start=1)]
    assert checked(spark, *rows, as_of=as_of).count() == len(rows)


@pytest.mark.parametrize(
    ("input_bytes", "cores", "most", "partitions"),
    [
        (0, 2, 16, 2),  # an empty input: one per core
        (10 * 2**20, 2, 16, 2),  # a small file: one per core
        (129 * 2**20, 2, 16, 4),  # the sample: 3 of 64 MiB, rounded up to a multiple of the cores
        (1304 * 2**20, 2, 16, 16),  # 8M loans: 21 of 64 MiB, at most [spark] shuffle_partitions
        (129 * 2**20, 8, 200, 8),  # a cluster of 8 cores: one per core
        (64 * 2**20 * 10, 4, 200, 12),  # 10 of 64 MiB on 4 cores
        (129 * 2**20, 2, 1, 1),  # shuffle_partitions 1 holds
    ],
)
def test_shuffle_partitions_follow_the_input_size_per_core_up_to_the_setting(
    input_bytes: int, cores: int, most: int, partitions: int
) -> None:
    assert fj.shuffle_partitions(input_bytes, cores, most) == partitions
