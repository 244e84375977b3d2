"""The feature job end to end: files in, the three outputs out, checked against the contract."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import logging
import subprocess
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from contract import RAW_COLUMNS
from datagen.generate import write_csv
from spark_jobs import features as fj
from spark_jobs.output import OutputError, StagedOutput
from spark_jobs.source import RAW_RECORD, InputError, Limits, read_files, read_raw, scan
from tests import reference
from tests.conftest import AS_OF, Dirty
from tests.helpers import ROOT, clean_env

HEADER = ",".join(RAW_COLUMNS)
# What may differ between two runs on the same data: when, how long, and where.
RUN_KEYS = ("started_at", "run_seconds", "input", "output", "files")


def csv_line(
    loan_id: str, client: str, loan_date: str, amount: str, columns: Sequence[str] = RAW_COLUMNS, **over: str
) -> str:
    values = {c: "" for c in RAW_COLUMNS}
    values.update(code_gender="M", flag_own_car="N", status="0", birthday="1980-01-15",
                  job_start_date="2010-06-01", occupation_type="Drivers")  # fmt: skip
    values.update(loan_id=loan_id, id=client, loan_date=loan_date, loan_amount=amount, **over)
    return ",".join(values[c] for c in columns)


SMALL_LINES = [
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
    csv_line("11", "13", "2020-04-01", "80") + ",one field too many",
    csv_line("12", "13", "2020-04-02", "80").rsplit(",", 1)[0],  # one field too few
]
SMALL_CSV = "\n".join([HEADER, *SMALL_LINES]) + "\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def run(spark: SparkSession, source: Path, out: Path, as_of: dt.date | None = AS_OF, **options: object) -> dict:
    return fj.run(spark, dataclasses.replace(fj.FeatureJobArgs(str(source), str(out), as_of), **options))


def entries(folder: Path) -> list[str]:
    """What a folder holds, without Hadoop's `.crc` checksum files."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def stable(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in RUN_KEYS}


OUTPUTS = ["clients", "features", "quarantine", "report.json"]


def outputs(spark: SparkSession, out: Path) -> tuple[DataFrame, DataFrame, DataFrame]:
    return tuple(spark.read.parquet(str(out / name)) for name in ("features", "quarantine", "clients"))  # type: ignore[return-value]


def assert_same_outputs(spark: SparkSession, got: Path, want: Path) -> None:
    for left, right in zip(outputs(spark, got), outputs(spark, want), strict=True):
        assertDataFrameEqual(left, right)
    report = json.loads((got / "report.json").read_text())
    assert stable(report) == stable(json.loads((want / "report.json").read_text()))


@dataclasses.dataclass(frozen=True)
class Run:
    source: Path
    out: Path
    report: dict


@pytest.fixture(scope="module")
def small(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The job on SMALL_CSV as of 2020-12-31, run once for the tests that compare with it."""
    base = tmp_path_factory.mktemp("small")
    source = write(base / "in" / "loans.csv", SMALL_CSV)
    return Run(source, base / "out", run(spark, source, base / "out"))


def test_job_writes_features_quarantine_and_report(spark: SparkSession, small: Run) -> None:
    assert json.loads((small.out / "report.json").read_text()) == small.report
    assert {k: small.report[k] for k in ("input", "output", "as_of")} == {
        "input": str(small.source), "output": str(small.out), "as_of": "2020-12-31"}  # fmt: skip
    assert small.report["files"] == [{"path": str(small.source), "lines": 16, "read": "whole (quoted line breaks)"}]
    assert stable(small.report) == {
        "as_of": "2020-12-31",
        "rows_read": 14, "duplicates_dropped": 1, "rows_accepted": 4, "rows_rejected": 9,
        "rejected_by_reason": {
            "malformed_record": 2, "invalid_id": 1, "invalid_loan_id": 0, "invalid_loan_date": 1,
            "invalid_loan_amount": 1, "invalid_status": 1, "future_loan_date": 1, "duplicate_loan_id": 2,
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
    features, quarantine, clients = outputs(spark, small.out)
    assert features.schema.simpleString() == (
        "struct<loan_id:bigint,id:bigint,loan_date:date,nb_previous_loans:int,avg_amount_loans_previous:double,"
        "age:int,years_on_the_job:int,flag_own_car:int,status:int>"
    )
    d = dt.date
    assertDataFrameEqual(
        features,
        spark.createDataFrame(
            [
                (1, 10, d(2020, 1, 5), 0, None, 39, 9, 0, 0),
                (2, 10, d(2020, 1, 5), 1, 100.0, 39, 9, 0, 0),  # the quoted value with a newline is one row
                (3, 10, d(2020, 2, 1), 2, 200.0, 40, 9, 0, 0),
                (7, 11, d(2020, 3, 1), 0, None, 40, None, 1, 0),
            ],
            features.schema,
        ),
    )
    assertDataFrameEqual(
        clients,
        spark.createDataFrame(
            [(10, 3, 600.0, 3, d(2020, 2, 1), "1980-01-15", "2010-06-01", 0),
             (11, 1, 150.0, 7, d(2020, 3, 1), "1980-01-15", "3021-09-18", 1)],
            clients.schema,
        ),
    )  # fmt: skip
    assert clients.columns == ["id", "loans", "amount_sum", "last_loan_id", "last_loan_date", "birthday",
                               "job_start_date", "flag_own_car"]  # fmt: skip
    assert quarantine.columns == [*RAW_COLUMNS, "reason", "raw_record"]
    assertDataFrameEqual(
        quarantine.select("loan_id", "id", "loan_amount", "reason", "raw_record"),
        spark.createDataFrame(
            [
                ("10", "12", "99.5", "future_loan_date", None),
                ("4", "11", "abc", "invalid_loan_amount", None),
                ("5", "11", "150", "invalid_loan_date", None),
                ("6", "11", "150", "invalid_status", None),
                ("8", "x", "150", "invalid_id", None),
                ("9", "12", "150", "duplicate_loan_id", None),
                ("9", "12", "151", "duplicate_loan_id", None),
                (None, None, None, "malformed_record", SMALL_LINES[12]),  # the record's text, kept whole
                (None, None, None, "malformed_record", SMALL_LINES[13]),
            ],
            "loan_id string, id string, loan_amount string, reason string, raw_record string",
        ),
    )


def test_job_rerun_gives_the_same_output(spark: SparkSession, small: Run, tmp_path: Path) -> None:
    again = tmp_path / "again"
    run(spark, small.source, again)
    assert_same_outputs(spark, again, small.out)
    run(spark, small.source, again)  # over its own previous output
    assert_same_outputs(spark, again, small.out)
    assert entries(again) == OUTPUTS


def reordered(text: str, order: list[int], rename: Callable[[str], str] = str, extra: bool = False) -> str:
    """The same CSV with its columns in another order (names changed by `rename`), maybe an extra column."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for i, record in enumerate(csv.reader(io.StringIO(text))):
        fields = [rename(record[j]) if i == 0 else record[j] for j in order]
        writer.writerow([*fields, "note" if i == 0 else "x"] if extra else fields)
    return out.getvalue()


def test_job_reads_a_folder_of_files_each_by_its_own_header(spark: SparkSession, small: Run, tmp_path: Path) -> None:
    good = "\n".join([HEADER, *SMALL_LINES[:6]]) + "\n"
    rest = "\n".join([HEADER, *SMALL_LINES[6:12]]) + "\n"  # the malformed records stay in the first file
    backwards = list(range(len(RAW_COLUMNS)))[::-1]
    write(tmp_path / "in" / "part1.csv", good + "\n".join(SMALL_LINES[12:]) + "\n")
    # Columns reversed, names upper-case and padded, and a column the contract does not know.
    write(tmp_path / "in" / "part2.csv", reordered(rest, backwards, lambda n: f" {n.upper()} ", extra=True))
    report = run(spark, tmp_path / "in", tmp_path / "out")
    assert_same_outputs(spark, tmp_path / "out", small.out)
    assert [f["path"].rsplit("/", 1)[1] for f in report["files"]] == ["part1.csv", "part2.csv"]


def test_a_large_file_is_parsed_by_several_tasks_with_the_same_output_as_one_task(
    spark: SparkSession, tmp_path: Path
) -> None:
    """A file without quoted line breaks is split across tasks (here 64 KB splits); one with them is read
    whole. Both in one input, the outputs equal those of a run reading each file in a single task."""
    folder = tmp_path / "in"
    write_csv(folder / "large.csv", clients=300, seed=5)
    write(folder / "quoted.csv", SMALL_CSV.replace(",10,", ",90000010,").replace(",11,", ",90000011,"))
    limits = Limits(20, 100_000)
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(64 * 1024))
    try:
        raw, sources = read_raw(spark, str(folder), limits)
        tasks = raw.rdd.getNumPartitions()
        many = run(spark, folder, tmp_path / "many", None)
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
    assert [s.multiline for s in sources] == [False, True]
    assert tasks > 10 and (folder / "large.csv").stat().st_size > 10 * 64 * 1024
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(1024**3))
    try:
        assert read_raw(spark, str(folder), limits)[0].rdd.getNumPartitions() == 2  # one task per file
        one = run(spark, folder, tmp_path / "one", None)
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
    assert_same_outputs(spark, tmp_path / "many", tmp_path / "one")
    assert stable(many) == stable(one) and many["rows_accepted"] > 5000 and many["rows_rejected"] > 0


def field_line(*first: str, fill: str = "x") -> str:
    """A line of the contract's width: these values first, then `fill`."""
    return ",".join([*first, *[fill] * (len(RAW_COLUMNS) - len(first))])


# What the CSV reader does its own way: blank lines of every kind (up to U+0020) dropped, other lines
# malformed; padding, control and non-ASCII characters kept; too few or too many fields; empty fields.
ODD_LINES = [
    field_line("1", "10"), field_line("", "", fill=""), field_line(" 2 ", "\t10\t"), ",,,",
    field_line("3", "10") + ",one too many", field_line("4").rsplit(",", 1)[0],
    "", "   ", "\t", "\x0b", "\x0c", "\x00", "\x1f \x1f", "\u00a0", "\u2003",
    "\x00" + field_line("5", "10"), "#" + field_line("6", "10"), field_line("7", "\x00"), field_line("8", "é漢字"),
    field_line("9", "10") + " ", " " + field_line("10", "10"), field_line("11", "10", "\x7f"), "x" * 5, ",",
    field_line("12", "10", "\\", "\\,"), field_line("13", "'q'"), field_line("14", "10"), field_line("14", "10"),
]  # fmt: skip
BLANK_LINES = 7
QUOTED_VALUES = [
    field_line("21", '"1,1"'), field_line("22", '"a""b"'), field_line("23", 'a"b"c'), field_line("24", '"x"y'),
    field_line('"25"', "10"), field_line("26", '"a,b"') + ',"one too many"',
]  # fmt: skip


def utf8(lines: Sequence[str], end: str = "\n") -> bytes:
    return end.join([HEADER, *lines, ""]).encode("utf-8")


RECORDS = len(ODD_LINES) - BLANK_LINES


@pytest.mark.parametrize(
    ("data", "by_lines", "records"),
    [
        (utf8(ODD_LINES), True, RECORDS),
        (utf8(ODD_LINES + QUOTED_VALUES), True, RECORDS + len(QUOTED_VALUES)),
        (b"\xef\xbb\xbf" + utf8(ODD_LINES + QUOTED_VALUES, "\r\n"), True, RECORDS + len(QUOTED_VALUES)),
        (utf8([*ODD_LINES, HEADER]), False, RECORDS + 1),  # the header again
        (utf8(ODD_LINES) + field_line("31", "10").encode() + b"\xff\n", False, RECORDS + 1),  # not UTF-8
    ],
    ids=["plain", "quoted values", "byte order mark, windows line ends", "the header again", "not UTF-8"],
)
def test_lines_are_read_as_the_csv_reader_reads_them(
    spark: SparkSession, tmp_path: Path, data: bytes, by_lines: bool, records: int
) -> None:
    """A file of one record per line is read as lines (cut at commas, the quoted ones parsed) with the CSV
    reader's rows, once empty fields are null; a file where that cannot hold is read by the CSV reader. The
    loan_id pass over the lines finds every loan_id the reader finds (a few more only cost rows compared
    whole)."""
    source = tmp_path / "loans.csv"
    source.write_bytes(data)
    (scanned,) = scan(spark, str(source), Limits(20, 100_000))
    assert scanned.by_lines is by_lines
    # What sizes the job's shuffles: the lines' bytes (a line break counts one, a byte order mark none).
    assert scanned.bytes == len(data.removeprefix(b"\xef\xbb\xbf")) - data.count(b"\r\n")
    columns = [F.nullif(F.col(c), F.lit("")).alias(c) for c in RAW_COLUMNS]
    lines = read_files(spark, [scanned]).select(*columns, RAW_RECORD)
    reader = read_files(spark, [scanned], by_lines=False).select(*columns, RAW_RECORD)
    plan = lines._jdf.queryExecution().executedPlan().toString()
    assert ("FileScan text" in plan and "FileScan csv" not in plan) is by_lines
    rows = reader.collect()
    assert len(rows) == records
    assert sum(r[RAW_RECORD] is not None for r in rows) >= 8  # the malformed records are there too
    assertDataFrameEqual(lines, rows)

    def loan_ids(frame: DataFrame) -> Counter[str]:
        return Counter(r[0] for r in frame.select(fj.normalized("loan_id")).collect() if r[0] is not None)

    by_reader = loan_ids(read_files(spark, [scanned], only="loan_id", by_lines=False))
    assert by_reader["14"] == 2 and not by_reader - loan_ids(read_files(spark, [scanned], only="loan_id"))


def test_job_refuses_a_file_whose_header_lacks_or_repeats_a_column(spark: SparkSession, tmp_path: Path) -> None:
    lacking = write(tmp_path / "bad.csv", HEADER.replace(",loan_amount", "") + "\n1,2\n")
    with pytest.raises(InputError, match=r"bad\.csv lacks column\(s\) loan_amount"):
        run(spark, lacking, tmp_path / "out")
    twice = write(tmp_path / "twice.csv", HEADER + ",ID\n" + SMALL_LINES[0] + ",7\n")
    with pytest.raises(InputError, match=r"twice\.csv has column\(s\) id more than once"):
        run(spark, twice, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("name", "text"), [("crlf", SMALL_CSV.replace("\n", "\r\n")), ("bom", "\ufeff" + SMALL_CSV)])
def test_job_reads_windows_line_ends_and_a_byte_order_mark(
    spark: SparkSession, small: Run, tmp_path: Path, name: str, text: str
) -> None:
    source = tmp_path / f"{name}.csv"
    source.write_bytes(text.encode("utf-8"))
    run(spark, source, tmp_path / "out")
    assert_same_outputs(spark, tmp_path / "out", small.out)


@pytest.fixture
def previous(spark: SparkSession, small: Run, tmp_path: Path) -> Path:
    """An output folder holding a good run's outputs, which a failed run must leave as they are."""
    out = tmp_path / "previous"
    run(spark, small.source, out)
    return out


def assert_untouched(spark: SparkSession, out: Path, small: Run) -> None:
    assert_same_outputs(spark, out, small.out)
    assert entries(out) == OUTPUTS  # no staging folder left


def generated_lines(tmp_path: Path, rows: int) -> list[str]:
    write_csv(tmp_path / "gen.csv", clients=150, seed=5)
    lines = (tmp_path / "gen.csv").read_text().splitlines()
    assert len(lines) > rows
    return lines[: rows + 1]


def test_job_refuses_an_unclosed_quote_naming_the_file_and_line(
    spark: SparkSession, small: Run, previous: Path, tmp_path: Path
) -> None:
    """The issue's reproduction: 2,000 rows, `"Laborers` with no closing quote on line 11."""
    lines = generated_lines(tmp_path, 2000)
    fields = lines[10].split(",")
    fields[RAW_COLUMNS.index("occupation_type")] = '"Laborers'
    lines[10] = ",".join(fields)
    source = write(tmp_path / "broken.csv", "\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"broken\.csv line 11: a quoted value opens here and never closes"):
        run(spark, source, previous)
    assert_untouched(spark, previous, small)


def test_job_refuses_a_quoted_value_spanning_too_many_lines(spark: SparkSession, tmp_path: Path) -> None:
    lines = generated_lines(tmp_path, 60)
    lines[5] = lines[5].replace(",Y,", ',"Y,', 1)  # a stray quote, closed by another 40 lines on
    lines[45] = lines[45].replace(",Y,", ',Y",', 1) if ",Y," in lines[45] else lines[45] + '"'
    source = write(tmp_path / "long.csv", "\n".join(lines) + "\n")
    limits = Limits(max_record_lines=20, max_line_chars=100_000)
    with pytest.raises(InputError, match=r"long\.csv line 6: a quoted value opens here and closes only on line 46"):
        run(spark, source, tmp_path / "out", limits=limits)
    short = dataclasses.replace(limits, max_line_chars=100)
    with pytest.raises(InputError, match=r"long\.csv line 1: \d+ characters, more than max_line_chars \(100\)"):
        run(spark, source, tmp_path / "out", limits=short)


def test_job_with_no_accepted_row_leaves_the_outputs_unless_allowed(
    spark: SparkSession, small: Run, previous: Path, tmp_path: Path
) -> None:
    header_only = write(tmp_path / "header.csv", HEADER + "\n")
    with pytest.raises(InputError, match=r"header\.csv has no accepted row \(0 read, 0 rejected\)"):
        run(spark, header_only, previous)
    assert_untouched(spark, previous, small)
    all_bad = write(tmp_path / "bad.csv", HEADER + "\n" + SMALL_LINES[4] + "\n")
    with pytest.raises(InputError, match=r"has no accepted row \(1 read, 1 rejected\)"):
        run(spark, all_bad, previous)
    report = run(spark, header_only, previous, allow_empty=True)
    assert (report["rows_read"], report["rows_accepted"], report["clients"]) == (0, 0, 0)
    counts = [spark.read.parquet(str(previous / name)).count() for name in ("features", "quarantine", "clients")]
    assert counts == [0, 0, 0]


def test_job_checks_the_output_before_any_work(spark: SparkSession, tmp_path: Path) -> None:
    a_file = write(tmp_path / "a-file", "x")
    # The input does not even exist: the output is refused first, before anything is read.
    with pytest.raises(OutputError, match=r"output .*a-file is a file: give a folder"):
        run(spark, tmp_path / "nowhere.csv", a_file)
    with pytest.raises(OutputError, match=r"output .*a-file/out lies under the file .*a-file"):
        run(spark, tmp_path / "nowhere.csv", a_file / "out")
    with pytest.raises(InputError, match=r"cannot read input .*nowhere\.csv: no such file or folder"):
        run(spark, tmp_path / "nowhere.csv", tmp_path / "out")


def test_job_failure_leaves_previous_output_intact(
    spark: SparkSession, small: Run, previous: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bigger = write(tmp_path / "bigger.csv", SMALL_CSV + csv_line("20", "13", "2020-04-01", "42") + "\n")

    def fail(self: StagedOutput, name: str, text: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(StagedOutput, "write_text", fail)  # fails after both Parquet outputs are staged
    with pytest.raises(OSError, match="disk full"):
        run(spark, bigger, previous)
    assert_untouched(spark, previous, small)


def test_job_matches_plain_python_contract_on_dirty_generated_data(spark: SparkSession, dirty: Dirty) -> None:
    features, quarantine, _ = outputs(spark, dirty.out)
    got = {r.loan_id: tuple(r) for r in features.collect()}
    assert got.keys() == dirty.truth.features.keys()
    assert [(got[k], dirty.truth.features[k]) for k in got if got[k] != dirty.truth.features[k]] == []
    assert sorted((tuple(r) for r in quarantine.collect()), key=repr) == sorted(dirty.truth.quarantine, key=repr)
    assert {k: dirty.report[k] for k in dirty.truth.report} == dirty.truth.report
    # Every rejection reason and every null reason of the contract occurs in the dirty data.
    assert list(dirty.report["rejected_by_reason"]) == list(reference.REJECT_REASONS)
    assert [r for r, n in dirty.report["rejected_by_reason"].items() if n == 0] == []
    assert [(f, r) for f, reasons in dirty.report["nulls"].items() for r, n in reasons.items() if n == 0] == []
    assert dirty.report["duplicates_dropped"] > 0 and dirty.report["status_unknown"] > 0


# HotSpot never compiles a method of more bytecode than this (`-XX:+DontCompileHugeMethods`, its default): a
# method of Spark's generated code that grows past it runs interpreted, silently. One more condition per
# column in the keyed rows' projection made warm runs of the whole job on the sample 1.7 times slower.
HUGE_METHOD_LIMIT = 8000


def generated_method_sizes(frame: DataFrame) -> list[tuple[int, str]]:
    """(largest method's bytecode size, the plan it runs) per generated code of the frame's physical plan."""
    stages = frame._jdf.queryExecution().debug().codegenToSeq()
    return [(stages.apply(i)._3().maxMethodCodeSize(), stages.apply(i)._1()) for i in range(stages.size())]


@pytest.mark.parametrize("route", ["narrow", "plain"])
@pytest.mark.parametrize("read", ["whole", "lines"])
def test_job_generated_code_stays_small_enough_to_be_compiled(
    spark: SparkSession, dirty: Dirty, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, route: str, read: str
) -> None:
    """Every method Spark generates for the job's plans as the job runs them (`job_frames`: each frame it
    caches, over the caches before it; then its outputs, the report's counts and the conflict check) is one
    the JIT compiles: on the dirty data (quoted line breaks: read whole) and on lines cut at their commas or
    parsed."""
    monkeypatch.setattr(fj, "WHOLE_SHARE_LIMIT", 1.0 if route == "narrow" else 0.0)
    quoted = csv_line("2", "10", "2020-01-05", "300", occupation_type='"Core staff, ""senior"""')
    lines = write(tmp_path / "lines.csv", "\n".join([HEADER, *SMALL_LINES[:1], quoted, *SMALL_LINES[2:]]) + "\n")
    sizes: dict[str, list[tuple[int, str]]] = {}
    cached: list[DataFrame] = []

    def cache(frame: DataFrame) -> DataFrame:
        sizes[f"cached {len(cached)}"] = generated_method_sizes(frame)
        cached.append(frame.persist())
        return frame

    try:
        with fj.sql_settings(spark, fj.JOB_SQL_SETTINGS):
            raw, sources = read_raw(spark, str(dirty.source if read == "whole" else lines), fj.DEFAULT_LIMITS)
            assert [(s.multiline, s.by_lines, s.quoted_lines > 0) for s in sources] == [
                (True, False, True) if read == "whole" else (False, True, True)]  # fmt: skip
            checked, conflicts, features = fj.job_frames(spark, raw, sources, AS_OF, cache)
            outputs = {
                "features": fj.to_features_output(features),
                "counts": fj.feature_counts_frame(features),
                "clients": fj.to_clients_output(features),
                "quarantine": fj.to_quarantine_output(fj.rejected_rows(checked)),
                "conflicts": conflicts,
            }
            sizes |= {name: generated_method_sizes(frame) for name, frame in outputs.items()}
    finally:
        for frame in cached:
            frame.unpersist()
    # The keyed route's 4 frames are made (while the loan_ids are counted) before the counts choose the route;
    # the plain route then caches 3 of its own.
    assert len(cached) == (5 if route == "narrow" else 8)
    assert sizes["cached 1"]  # the rows read and parsed: generated code
    assert {name: [(size, plan[:300]) for size, plan in stages if size > HUGE_METHOD_LIMIT]
            for name, stages in sizes.items()} == {name: [] for name in sizes}  # fmt: skip


def test_job_session_builds_column_expressions_in_one_call_to_the_jvm_each(
    spark: SparkSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The jobs' session records no Python call site per expression (`spark_jobs.session`): a column function
    costs the driver the JVM call that makes it, not the calls around it that look the session up and set
    and clear the call site."""
    from py4j.clientserver import ClientServerConnection
    from py4j.java_gateway import GatewayConnection

    assert spark.conf.get("spark.python.sql.dataFrameDebugging.enabled") == "false"
    assert spark.conf.get("spark.sql.dataFrameQueryContext.enabled") == "false"

    def build() -> Column:
        return F.nullif(F.btrim(F.col("id"), F.lit(" ")), F.lit(""))

    build()  # PySpark looks its settings up on the first expressions a process builds, once
    methods: list[str] = []
    for connection in (ClientServerConnection, GatewayConnection):

        def counted(self: object, command: str, send: Callable[..., str] = connection.send_command) -> str:
            kind, _, method, *_ = [*command.split("\n"), "", "", ""]
            if kind == "c":  # a method called on a JVM object (its name on the third line)
                methods.append(method)
            return send(self, command)

        monkeypatch.setattr(connection, "send_command", counted)
    expression = build()
    monkeypatch.undo()
    assert Counter(methods) == {"col": 1, "lit": 2, "btrim": 1, "nullif": 1}
    assert "nullif(btrim(id" in str(expression)


# Rows whose route through the job depends on their loan_id: read more than once or not, the same number
# written two ways, a field that only looks like a loan_id, rows rejected on their own.
ROUTE_LINES = [
    csv_line("1", "50", "2020-01-01", "100"),  # lone rows of a client whose other rows are checked whole
    csv_line("2", "50", "2020-02-01", "200"),
    csv_line("3", "50", "2020-01-15", "300"), csv_line(" 3", "50", "2020-01-15 ", "300", occupation_type=" Drivers"),
    csv_line("4", "51", "2020-01-01", "100"), csv_line("004", "51", "2020-01-01", "100"),  # one number, two texts
    csv_line("5", "52", "2020-01-01", "100"), "5,only,three",  # a malformed record that starts like loan 5
    csv_line("6", "53", "2020-01-01", "100"), csv_line("+6", "53", "2020-01-02", "100"),  # +6 is no loan_id
    csv_line("7", "54", "2020-02-30", "100"),  # rejected on its own, alone with its loan_id
    csv_line("8", "54", "2020-03-01", "100"), csv_line("8", "55", "2020-13-01", "100"),  # bad row shares it
    csv_line("9", "56", "2020-01-01", "100", status="3"), csv_line("9", "56", "2020-01-01", "100", status="3"),
    "only,a,malformed,record", "only,a,malformed,record",
    csv_line("", "57", "2020-01-01", "100"), csv_line("", "57", "2020-01-01", "100"),  # copies, no loan_id
    csv_line("", "58", "2020-01-01", "100"), csv_line("", "58", "2020-01-01", "200"),  # no loan_id, different
    csv_line("10", "59", "2020-01-01", "100"), csv_line("10", "59", "2020-01-01", "100"),
    csv_line("10", "59", "2020-01-01", "100"),  # three copies
    # Lone rows padded with tabs and spaces (trimmed) and with a vertical tab (not trimmed: no id).
    csv_line("\t11 ", " \t60\t", "2020-01-01\t", "\t150", birthday="\t1990-03-01 ", flag_own_car=" \ty", status="1\t"),
    csv_line("12", "\x0b61", "2020-01-01", "100"),
]  # fmt: skip


@pytest.mark.parametrize("route", ["narrow", "plain"])
def test_job_routes_every_row_to_the_contracts_outcome(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, route: str
) -> None:
    """Only rows whose loan_id is read more than once (or that are rejected on their own) are compared
    whole, unless they are most rows; each case here must end as the plain reading of the contract says,
    by either route."""
    monkeypatch.setattr(fj, "WHOLE_SHARE_LIMIT", 1.0 if route == "narrow" else 0.0)
    caplog.set_level(logging.INFO, logger="spark_jobs.features")
    source = write(tmp_path / "loans.csv", "\n".join([HEADER, *ROUTE_LINES]) + "\n")
    session = {key: spark.conf.get(key, None) for key in fj.JOB_SQL_SETTINGS}
    spark.catalog.clearCache()
    report = run(spark, source, tmp_path / "out")
    assert {key: spark.conf.get(key, None) for key in fj.JOB_SQL_SETTINGS} == session  # put back after the run
    # Every frame the job cached is released.
    assert spark._jsparkSession.sharedState().cacheManager().isEmpty()
    truth = reference.compute([source], AS_OF)
    features, quarantine, clients = outputs(spark, tmp_path / "out")
    assert {r.loan_id: tuple(r) for r in features.collect()} == truth.features
    assert sorted((tuple(r) for r in quarantine.collect()), key=repr) == sorted(truth.quarantine, key=repr)
    assert {k: report[k] for k in truth.report} == truth.report
    assert sorted(truth.features) == [1, 2, 3, 5, 6, 10, 11]  # the cases mean what they say
    assert truth.features[11][3:] == (0, None, 29, 9, 1, 1)  # padded: every value read
    assert report["duplicates_dropped"] == 6
    assert report["rejected_by_reason"] == {
        "malformed_record": 2, "invalid_id": 1, "invalid_loan_id": 4, "invalid_loan_date": 2,
        "invalid_loan_amount": 0, "invalid_status": 1, "future_loan_date": 0, "duplicate_loan_id": 3,
    }  # fmt: skip
    assert {r.id: r.loans for r in clients.collect()} == {50: 3, 52: 1, 53: 1, 59: 1, 60: 1}
    taken = "every row compared whole" if route == "plain" else "only those compared whole"
    assert f"7 held by more than one row, 15 rows of about 26: {taken}" in caplog.text


BACKWARDS = tuple(reversed(RAW_COLUMNS))  # loan_id last, after values that hold commas and quotes


def backwards_line(loan_id: str, client: str, occupation: str = "Drivers") -> str:
    return csv_line(loan_id, client, "2020-01-01", "100", BACKWARDS, occupation_type=occupation)


QUOTED_LINES = [
    backwards_line("1", "70", '"Core staff, senior"'), backwards_line('"1"', "70", '"Core staff, senior"'),  # copies
    backwards_line("2", "71", '"a ""b"", c"'), backwards_line("2", "72"),  # a conflict, one side quoted
    backwards_line("3", "73", '"x, y"'),  # lone, quoted before its loan_id
    backwards_line('"4"', "74"),  # lone, its loan_id quoted
    backwards_line('"5 "', "75"), backwards_line("5", "75"),  # copies once trimmed
    backwards_line("6", "76", '"a,b,c,d"'), backwards_line("6", "77", '"a,b,c,d"'),  # a conflict past 3 commas
    backwards_line("7", "78", '"a,b"') + ',"one too many"',  # malformed, quoted
]  # fmt: skip


def test_job_finds_the_loan_ids_read_twice_behind_quoted_values(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Which rows are compared whole is decided on the loan_ids as the CSV reader reads them: here loan_id
    is the last column, after quoted values holding commas and quotes, some loan_ids are quoted, and every
    case ends as the contract says."""
    monkeypatch.setattr(fj, "WHOLE_SHARE_LIMIT", 1.0)  # the route where the counts decide what is compared whole
    caplog.set_level(logging.INFO, logger="spark_jobs.features")
    source = write(tmp_path / "loans.csv", "\n".join([",".join(BACKWARDS), *QUOTED_LINES]) + "\n")
    report = run(spark, source, tmp_path / "out")
    truth = reference.compute([source], AS_OF)
    features, quarantine, _ = outputs(spark, tmp_path / "out")
    assert {r.loan_id: tuple(r) for r in features.collect()} == truth.features
    assert sorted((tuple(r) for r in quarantine.collect()), key=repr) == sorted(truth.quarantine, key=repr)
    assert {k: report[k] for k in truth.report} == truth.report
    assert sorted(truth.features) == [1, 3, 4, 5]  # the cases mean what they say
    assert report["duplicates_dropped"] == 2 and report["rejected_by_reason"]["duplicate_loan_id"] == 4
    assert report["rejected_by_reason"]["malformed_record"] == 1
    assert "4 held by more than one row, 8 rows of about 11: only those compared whole" in caplog.text


def submit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`./spark-submit.sh` as a user runs it: a clean environment, from the checkout."""
    return subprocess.run(["./spark-submit.sh", *args], cwd=ROOT, env=env or clean_env(), capture_output=True,
                          text=True, timeout=600)  # fmt: skip


@pytest.mark.slow
def test_spark_submit_exit_codes_with_the_jobs_message_last(small: Run, tmp_path: Path) -> None:
    missing = submit("features", "--input", str(tmp_path / "missing.csv"), "--output", str(tmp_path / "o"))
    assert missing.returncode == 2
    lines = missing.stderr.strip().splitlines()
    assert lines[-1].endswith(f"cannot read input {tmp_path / 'missing.csv'}: no such file or folder")
    assert len(lines) < 10 and "Traceback" not in missing.stderr and "\tat " not in missing.stderr
    # An unexpected failure (here a Parquet codec that does not exist): exit code 1, nothing published.
    env = clean_env(SPARK_SUBMIT_OPTS_EXTRA="--conf spark.sql.parquet.compression.codec=nonexistent")
    broken = submit("features", "--input", str(small.source), "--output", str(tmp_path / "o"), env=env)
    assert broken.returncode == 1, broken.stderr[-2000:]
    assert "the feature job failed, nothing was published" in broken.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
