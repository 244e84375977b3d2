"""Reading the raw loans CSV (DESIGN §4): each file's header mapped by name, a broken structure never silent.

A first, cheap pass reads the input as lines, in parallel, and notes per file its line count and the
lines holding an odd number of double quotes: the lines where a quoted value opens or closes across a
line break (an escaped quote `""` counts two); the driver then reads each file's header (its first
line). Then, per file:

* no such line: one record per line, so the file is read split into many tasks (`multiLine` off);
* such lines pairing up within `max_record_lines`: quoted values hold line breaks, so the file is
  read whole by one task (`multiLine` on);
* a quote that never closes, a quoted value spanning more lines than that, or a line longer than
  `max_line_chars`: from there on no reader can tell where a record ends (reading on would swallow the
  rest of the file into one value), so the job stops with an `InputError` naming the file and line.

Within a file that reads, a record with more or fewer fields than its header is kept with its text in
`raw_record` (its columns left empty), and the job quarantines it as `malformed_record`.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from functools import reduce
from typing import Any
from urllib.parse import unquote, urlsplit

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from contract import RAW_COLUMNS
from spark_jobs.output import hadoop_fs

log = logging.getLogger(__name__)

RAW_RECORD = "raw_record"
PREVIEW_CHARS = 120
READER_OPTIONS = {"quote": '"', "escape": '"', "mode": "PERMISSIVE", "encoding": "UTF-8",
                  "columnNameOfCorruptRecord": RAW_RECORD}  # fmt: skip


class InputError(ValueError):
    """The job's input cannot be read as the raw loans CSV (the message names the file and line)."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a well-formed file never exceeds (`[features]` settings)."""

    max_record_lines: int
    max_line_chars: int


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """One input file as the line scan saw it."""

    path: str  # as Spark reads it
    header: tuple[str, ...]
    lines: int
    odd_lines: tuple[tuple[int, str], ...]  # (line number, its start) of lines with an odd number of quotes
    long_lines: tuple[tuple[int, int], ...]  # (line number, length) of lines over max_line_chars

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def multiline(self) -> bool:
        """Whether a quoted value spans lines (the file must be read whole by one task)."""
        return bool(self.odd_lines)


def check_exists(spark: SparkSession, path: str) -> None:
    """An InputError naming `path` when nothing matches it (before Spark would log its own warning)."""
    path_class, fs = hadoop_fs(spark, path)
    matches = fs.globStatus(path_class(path))
    if not matches:
        raise InputError(f"cannot read input {path}: no such file or folder")


def paths_of(spec: str) -> list[str]:
    """The input paths of a `--input` value: one path, or several separated by commas."""
    return [p for p in (part.strip() for part in spec.split(",")) if p]


def scan(spark: SparkSession, paths: str | list[str], limits: Limits) -> list[SourceFile]:
    """One parallel pass over the input's lines: per file, the line count and the odd-quote and long lines;
    then each file's header, its first line, read on the driver.

    The pass is cheap on the lines that need no look (most of them): a line's quotes are counted only when
    it holds one, and its characters only when its bytes exceed the limit.
    """
    value = F.col("value")
    quotes = F.length(value) - F.length(F.translate(value, '"', ""))
    odd = value.contains('"') & (quotes % 2 == 1)
    long = (F.octet_length(value) > limits.max_line_chars) & (F.length(value) > limits.max_line_chars)
    lines = spark.read.text(paths).select(
        F.col("_metadata.file_path").alias("file"),
        F.col("_metadata.file_block_start").alias("start"),
        # Within a task the ids of one file split are consecutive, so id - first id is the line's index.
        F.monotonically_increasing_id().alias("row"),
        value,
    )
    splits = (
        lines.groupBy("file", "start")
        .agg(
            F.count(F.lit(1)).alias("lines"),
            F.min("row").alias("first_row"),
            F.collect_list(F.when(odd, F.struct("row", F.substring(value, 1, PREVIEW_CHARS)))).alias("odd"),
            F.collect_list(F.when(long, F.struct("row", F.length(value)))).alias("long"),
        )
        .collect()
    )
    by_file: dict[str, list[Any]] = defaultdict(list)
    for split in splits:
        by_file[split["file"]].append(split)
    files = [_source_file(file, parts) for file, parts in sorted(by_file.items())]
    # A first line too long to be a header is refused by `check_structure` without being read.
    return [dataclasses.replace(f, header=_header(spark, f.path)) if not _long_first(f) else f for f in files]


def _long_first(source: SourceFile) -> bool:
    return bool(source.long_lines) and source.long_lines[0][0] == 1


def _header(spark: SparkSession, path: str) -> tuple[str, ...]:
    """The fields of the file's first line (a byte order mark dropped), read through Hadoop (and its codec
    for a compressed file), as Spark reads the file."""
    path_class, fs = hadoop_fs(spark, path)  # raises when the session is stopped
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    hadoop_path = path_class(path)
    codec = jvm.org.apache.hadoop.io.compress.CompressionCodecFactory(fs.getConf()).getCodec(hadoop_path)
    stream = fs.open(hadoop_path)
    try:
        readable = codec.createInputStream(stream) if codec is not None else stream
        line = jvm.java.io.BufferedReader(jvm.java.io.InputStreamReader(readable, "UTF-8")).readLine() or ""
    finally:
        stream.close()
    return tuple(next(csv.reader([line.lstrip("\ufeff")]), []))


def _source_file(file: str, parts: list[Any]) -> SourceFile:
    parts.sort(key=lambda p: p["start"])
    odd: list[tuple[int, str]] = []
    long: list[tuple[int, int]] = []
    before = 0
    for part in parts:
        first_line = before + 1 - part["first_row"]  # line number = first_line + row
        odd += [(first_line + row, text) for row, text in part["odd"]]
        long += [(first_line + row, chars) for row, chars in part["long"]]
        before += part["lines"]
    # A local file is shown and read as a plain path; other schemes (hdfs://, s3a://) keep their URI.
    path = unquote(urlsplit(file).path) if urlsplit(file).scheme == "file" else file
    return SourceFile(path, (), before, tuple(sorted(odd)), tuple(sorted(long)))


def check_structure(source: SourceFile, limits: Limits) -> None:
    """An InputError naming the file and line where its structure breaks (see the module docstring)."""
    if source.long_lines:
        number, chars = source.long_lines[0]
        raise InputError(
            f"{source.path} line {number}: {chars:,} characters, more than max_line_chars "
            f"({limits.max_line_chars:,}): not a loans CSV, or a file that lost its line breaks"
        )
    odd = source.odd_lines
    for (opens, text), (closes, _) in zip(odd[::2], odd[1::2], strict=False):
        if closes - opens + 1 > limits.max_record_lines:
            raise InputError(
                f"{source.path} line {opens}: a quoted value opens here and closes only on line {closes}, "
                f"{closes - opens + 1} lines on (more than max_record_lines, {limits.max_record_lines}): most "
                f"likely a quote that is never closed; the line starts {text!r}"
            )
    if len(odd) % 2:
        number, text = odd[-1]
        others = ", ".join(str(n) for n, _ in odd[-6:-1])
        raise InputError(
            f"{source.path} line {number}: a quoted value opens here and never closes (an unclosed quote); "
            f"the line starts {text!r}"
            + (f" (lines with an odd number of quotes before it: {others})" if others else "")
        )


def column_indexes(source: SourceFile) -> dict[str, int]:
    """Where each contract column is in the file's header (by name, any case and padding)."""
    positions: dict[str, list[int]] = defaultdict(list)
    for index, name in enumerate(source.header):
        positions[name.strip().lower()].append(index)
    missing = [c for c in RAW_COLUMNS if c not in positions]
    if missing:
        raise InputError(f"{source.path} lacks column(s) {', '.join(missing)}; its header: {list(source.header)}")
    twice = [c for c in RAW_COLUMNS if len(positions[c]) > 1]
    if twice:
        raise InputError(f"{source.path} has column(s) {', '.join(twice)} more than once in its header")
    extra = sorted(set(positions) - set(RAW_COLUMNS))
    if extra:
        log.warning("%s has extra column(s) %s, ignored", source.path, extra)
    return {c: positions[c][0] for c in RAW_COLUMNS}


def _field_names(header: Sequence[str]) -> list[str]:
    """Schema names: the header's own (so Spark's header check agrees), else positional when unusable."""
    seen = [name.strip().lower() for name in header]
    usable = [bool(name) and "`" not in name and seen.count(key) == 1 and key != RAW_RECORD
              for name, key in zip(header, seen, strict=True)]  # fmt: skip
    return [name if ok else f"_c{i}" for i, (name, ok) in enumerate(zip(header, usable, strict=True))]


def read_files(spark: SparkSession, sources: Iterable[SourceFile], only: str | None = None) -> DataFrame:
    """The contract's 24 columns as text plus `raw_record`, each file's columns taken by name from its header.

    With `only` (a contract column), just that column as the reader tokenizes it, with no check of the
    record's shape: the CSV reader then parses that one field of each record (a malformed record gives
    whatever its field at that place holds).
    """
    groups: dict[tuple[tuple[str, ...], bool], list[SourceFile]] = defaultdict(list)
    for source in sources:
        groups[(source.header, source.multiline)].append(source)
    frames = []
    for (header, multiline), members in groups.items():
        names = _field_names(header)
        record = [] if only else [T.StructField(RAW_RECORD, T.StringType())]
        schema = T.StructType([T.StructField(n, T.StringType()) for n in names] + record)
        indexes = column_indexes(members[0])
        frame = spark.read.csv(
            [m.path for m in members], schema=schema, header=True, multiLine=multiline, **READER_OPTIONS
        )
        if only:
            frames.append(frame.select(F.col(f"`{names[indexes[only]]}`").alias(only)))
            continue
        broken = F.col(RAW_RECORD).isNotNull()
        # The columns of a malformed record are whatever its fields happened to be: left empty.
        frames.append(frame.select(
            *[F.when(~broken, F.col(f"`{names[indexes[c]]}`")).alias(c) for c in RAW_COLUMNS], RAW_RECORD
        ))  # fmt: skip
        log.info("reading %d file(s) %s (%s)", len(members), ", ".join(m.name for m in members[:5]),
                 "quoted line breaks: one task per file" if multiline else "one record per line: split")  # fmt: skip
    return reduce(DataFrame.unionAll, frames)


def check_files(
    spark: SparkSession, paths: Sequence[str], limits: Limits
) -> tuple[list[SourceFile], list[tuple[str, InputError]]]:
    """Scan the files and check each (see the module docstring): those that read, and those refused with
    why. A file without a header line holds no data and is in neither list."""
    readable, refused = [], []
    for source in scan(spark, list(paths), limits):
        try:
            check_structure(source, limits)
            column_indexes(source)
        except InputError as exc:
            refused.append((source.path, exc))
        else:
            readable.append(source)
    return readable, refused


def read_raw(spark: SparkSession, path: str, limits: Limits) -> tuple[DataFrame, list[SourceFile]]:
    """The raw rows of a CSV file or folder of files (or several, separated by commas: the history and the
    landed files, say), checked (see the module docstring), and the files."""
    paths = paths_of(path)
    for one in paths:
        check_exists(spark, one)
    sources, refused = check_files(spark, paths, limits)
    if refused:
        raise refused[0][1]
    if not sources:
        raise InputError(f"input {path} holds no data: no file with a header line")
    return read_files(spark, sources), sources
