"""The feature job end to end: files in, the three outputs out, checked against the contract."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from contract import RAW_COLUMNS
from datagen.generate import write_csv
from spark_jobs import features as fj
from spark_jobs.output import StagedOutput
from tests import reference

ROOT = Path(__file__).resolve().parent.parent
HEADER = ",".join(RAW_COLUMNS)
TIMING_KEYS = ("started_at", "run_seconds")


def csv_line(loan_id: str, client: str, loan_date: str, amount: str, **over: str) -> str:
    values = {c: "" for c in RAW_COLUMNS}
    values.update(code_gender="M", flag_own_car="N", status="0", birthday="1980-01-15",
                  job_start_date="2010-06-01", occupation_type="Drivers")  # fmt: skip
    values.update(loan_id=loan_id, id=client, loan_date=loan_date, loan_amount=amount, **over)
    return ",".join(values[c] for c in RAW_COLUMNS)


SMALL_CSV = (
    "\n".join(
        [
            HEADER,
            csv_line("1", "10", "2020-01-05", "100"),
            csv_line("2", "10", "2020-01-05", "300", occupation_type='"Core staff, ""senior""\nlevel"'),
            csv_line("3", "10", "2020-02-01", "200"),
            csv_line("3", "10", "2020-02-01", "200"),  # exact duplicate
            csv_line("4", "11", "2019-12-31", "abc"),  # invalid amount
            csv_line("5", "11", "2020-02-30", "150"),  # impossible date
            csv_line("6", "11", "2020-03-01", "150", status="2"),
            csv_line("7", "11", "2020-03-01", "150", flag_own_car="y", job_start_date="3021-09-18"),
            csv_line("8", "x", "2020-03-01", "150"),
            csv_line("9", "12", "2020-03-01", "150"),
            csv_line("9", "12", "2020-03-01", "151"),  # conflicting loan_id
            csv_line("10", "12", "2021-03-01", "99.5", status=""),  # future when as of 2020-12-31
        ]
    )
    + "\n"
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def run(spark: SparkSession, source: Path, out: Path, as_of: dt.date | None = None) -> dict:
    return fj.run(spark, fj.FeatureJobArgs(str(source), str(out), as_of))


def without_timing(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in TIMING_KEYS}


def test_job_writes_features_quarantine_and_report(spark: SparkSession, tmp_path: Path) -> None:
    source = write(tmp_path / "in" / "loans.csv", SMALL_CSV)
    report = run(spark, source, tmp_path / "out", dt.date(2020, 12, 31))
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report
    assert without_timing(report) == {
        "input": str(source), "output": str(tmp_path / "out"), "as_of": "2020-12-31",
        "rows_read": 12, "duplicates_dropped": 1, "rows_accepted": 4, "rows_rejected": 7,
        "rejected_by_reason": {
            "invalid_id": 1, "invalid_loan_id": 0, "invalid_loan_date": 1, "invalid_loan_amount": 1,
            "invalid_status": 1, "future_loan_date": 1, "duplicate_loan_id": 2,
        },
        "nulls": {
            "nb_previous_loans": {},
            "avg_amount_loans_previous": {"first_loan": 2},
            "age": {"birthday_missing": 0, "birthday_invalid": 0, "birthday_after_loan_date": 0, "age_over_120": 0},
            "years_on_the_job": {
                "job_start_missing": 0, "job_start_invalid": 0, "job_start_after_loan_date": 1,
                "job_start_before_birthday": 0, "years_on_the_job_over_100": 0,
            },
            "flag_own_car": {"flag_own_car_missing": 0, "flag_own_car_invalid": 0},
        },
        "status_unknown": 0, "clients": 2, "first_loan_date": "2020-01-05", "last_loan_date": "2020-03-01",
        "spark_version": spark.version,
    }  # fmt: skip
    got = spark.read.parquet(str(tmp_path / "out" / "features"))
    assert got.schema.simpleString() == (
        "struct<loan_id:bigint,id:bigint,loan_date:date,nb_previous_loans:int,avg_amount_loans_previous:double,"
        "age:int,years_on_the_job:int,flag_own_car:int,status:int>"
    )
    d = dt.date
    assertDataFrameEqual(
        got,
        spark.createDataFrame(
            [
                (1, 10, d(2020, 1, 5), 0, None, 39, 9, 0, 0),
                (2, 10, d(2020, 1, 5), 1, 100.0, 39, 9, 0, 0),
                (3, 10, d(2020, 2, 1), 2, 200.0, 40, 9, 0, 0),
                (7, 11, d(2020, 3, 1), 0, None, 40, None, 1, 0),
            ],
            got.schema,
        ),
    )
    quarantine = spark.read.parquet(str(tmp_path / "out" / "quarantine"))
    assert quarantine.columns == [*RAW_COLUMNS, "reason"]
    assert sorted((r.loan_id, r.id, r.loan_amount, r.reason) for r in quarantine.collect()) == [
        ("10", "12", "99.5", "future_loan_date"),
        ("4", "11", "abc", "invalid_loan_amount"),
        ("5", "11", "150", "invalid_loan_date"),
        ("6", "11", "150", "invalid_status"),
        ("8", "x", "150", "invalid_id"),
        ("9", "12", "150", "duplicate_loan_id"),
        ("9", "12", "151", "duplicate_loan_id"),
    ]
    multiline = spark.read.parquet(str(tmp_path / "out" / "features")).count()
    assert multiline == 4  # the quoted value with a comma and a newline stayed one row


def test_job_rerun_gives_the_same_output(spark: SparkSession, tmp_path: Path) -> None:
    source = write(tmp_path / "loans.csv", SMALL_CSV)
    first = run(spark, source, tmp_path / "a")
    second = run(spark, source, tmp_path / "b")
    assert without_timing(first) | {"output": ""} == without_timing(second) | {"output": ""}
    for name in ("features", "quarantine"):
        assertDataFrameEqual(
            spark.read.parquet(str(tmp_path / "a" / name)), spark.read.parquet(str(tmp_path / "b" / name))
        )
    third = run(spark, source, tmp_path / "a")  # over its own previous output
    assert without_timing(third) == without_timing(first)
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if not p.name.startswith(".")) == [
        "features",
        "quarantine",
        "report.json",
    ]


def test_job_reads_a_folder_of_files(spark: SparkSession, tmp_path: Path) -> None:
    lines = SMALL_CSV.splitlines()
    write(tmp_path / "in" / "part1.csv", "\n".join(lines[:5]) + "\n")
    write(tmp_path / "in" / "part2.csv", "\n".join([lines[0], *lines[5:]]) + "\n")
    whole = run(spark, write(tmp_path / "whole.csv", SMALL_CSV), tmp_path / "o1")
    split = run(spark, tmp_path / "in", tmp_path / "o2")
    keys = ("rows_read", "rows_accepted", "rejected_by_reason", "nulls", "clients")
    assert {k: split[k] for k in keys} == {k: whole[k] for k in keys}


def test_job_failure_leaves_previous_output_intact(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    source = write(tmp_path / "loans.csv", SMALL_CSV)
    run(spark, source, out)
    before = (out / "report.json").read_text()
    rows_before = spark.read.parquet(str(out / "features")).collect()

    bigger = write(tmp_path / "bigger.csv", SMALL_CSV + csv_line("20", "13", "2020-04-01", "42") + "\n")

    def fail(self: StagedOutput, name: str, text: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(StagedOutput, "write_text", fail)  # fails after both Parquet outputs are staged
    with pytest.raises(OSError, match="disk full"):
        run(spark, bigger, out)
    assert (out / "report.json").read_text() == before
    assertDataFrameEqual(spark.read.parquet(str(out / "features")), rows_before)
    assert not [p for p in out.iterdir() if p.name.startswith("_")]  # no staging folder left behind


def test_job_missing_input_or_column_is_a_clear_error(spark: SparkSession, tmp_path: Path) -> None:
    with pytest.raises(fj.InputError, match=r"cannot read input .*nowhere\.csv"):
        run(spark, tmp_path / "nowhere.csv", tmp_path / "out")
    bad = write(tmp_path / "bad.csv", HEADER.replace(",loan_amount", "") + "\n1,2\n")
    with pytest.raises(fj.InputError, match="lacks column\\(s\\) loan_amount"):
        run(spark, bad, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_job_empty_input_gives_empty_outputs(spark: SparkSession, tmp_path: Path) -> None:
    report = run(spark, write(tmp_path / "empty.csv", HEADER + "\n"), tmp_path / "out")
    assert (report["rows_read"], report["rows_accepted"], report["clients"], report["first_loan_date"]) == (
        0,
        0,
        0,
        None,
    )
    assert spark.read.parquet(str(tmp_path / "out" / "features")).count() == 0


def test_job_matches_plain_python_contract_on_dirty_generated_data(spark: SparkSession, tmp_path: Path) -> None:
    source = tmp_path / "dirty.csv"
    write_csv(source, clients=250, seed=11, dirty=True)
    as_of = dt.date(2020, 12, 31)
    report = run(spark, source, tmp_path / "out", as_of)
    truth = reference.compute([source], as_of)

    got = {r.loan_id: tuple(r) for r in spark.read.parquet(str(tmp_path / "out" / "features")).collect()}
    assert got.keys() == truth.features.keys()
    mismatched = [(got[k], truth.features[k]) for k in got if got[k] != truth.features[k]]
    assert mismatched == []
    quarantine = sorted(
        (tuple(r) for r in spark.read.parquet(str(tmp_path / "out" / "quarantine")).collect()), key=repr
    )
    assert quarantine == sorted(truth.quarantine, key=repr)
    assert {k: report[k] for k in truth.report} == truth.report
    # The dirty data holds every rejection reason and every null reason the generator can make.
    assert all(n > 0 for n in report["rejected_by_reason"].values())
    assert report["duplicates_dropped"] > 0 and report["status_unknown"] > 0


@pytest.mark.slow
def test_spark_submit_runs_the_job_and_reports_bad_input(tmp_path: Path) -> None:
    source = tmp_path / "loans.csv"
    env = {**os.environ, "CREDIT_FEATURES_AS_OF": "2020-12-31"}
    subprocess.run([sys.executable, "-m", "datagen", "--output", str(source), "--clients", "40", "--dirty"],
                   cwd=ROOT, check=True, env=env)  # fmt: skip
    done = subprocess.run(
        ["./spark-submit.sh", "features", "--input", str(source), "--output", str(tmp_path / "out")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "accepted" in done.stdout + done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    truth = reference.compute([source], dt.date(2020, 12, 31))
    assert {k: report[k] for k in truth.report} == truth.report

    failed = subprocess.run(
        ["./spark-submit.sh", "features", "--input", str(tmp_path / "missing.csv"), "--output", str(tmp_path / "o2")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert failed.returncode == 2
    output = failed.stdout + failed.stderr
    assert "cannot read input" in output and "Traceback" not in output


@pytest.mark.parametrize(
    ("name", "text"),
    [("crlf", SMALL_CSV.replace("\n", "\r\n")), ("bom", "\ufeff" + SMALL_CSV)],
)
def test_job_reads_windows_line_ends_and_a_byte_order_mark(
    spark: SparkSession, tmp_path: Path, name: str, text: str
) -> None:
    plain = run(spark, write(tmp_path / "plain.csv", SMALL_CSV), tmp_path / "o1")
    source = tmp_path / f"{name}.csv"
    source.write_bytes(text.encode("utf-8"))
    other = run(spark, source, tmp_path / "o2")
    keys = ("rows_read", "duplicates_dropped", "rows_accepted", "rejected_by_reason", "nulls", "clients")
    assert {k: other[k] for k in keys} == {k: plain[k] for k in keys}
    assertDataFrameEqual(
        spark.read.parquet(str(tmp_path / "o2" / "features")), spark.read.parquet(str(tmp_path / "o1" / "features"))
    )
