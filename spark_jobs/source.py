"""Reading the raw loans CSV (DESIGN §4): each file's header mapped by name, a broken structure never silent.

A first, cheap pass reads the input as lines, in parallel, and notes per file its line count and the
lines holding an odd number of double quotes: the lines where a quoted value opens or closes across a
line break (an escaped quote `""` counts two); the driver reads each file's header (its first line).
Then, per file:

* no such line: one record per line, so the file is read split into many tasks (`multiLine` off), and
  as lines when it can be (`SourceFile.by_lines`): a line without a double quote is cut at its commas,
  one with a quote goes through the CSV parser the CSV reader uses;
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
BLANK = "".join(map(chr, range(0x21)))  # what the CSV reader trims to tell a blank line (Java's String.trim)
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
    header_lines: int = 0  # lines equal to the first line of an input file (its own first line included)
    undecodable_lines: int = 0  # lines holding bytes that are not UTF-8
    quoted_lines: int = 0  # lines holding a double quote
    header_line: str | None = None  # the first line as read (a byte order mark dropped)
    bytes: int = 0  # the lines' bytes, each line break counted as one byte (uncompressed)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def multiline(self) -> bool:
        """Whether a quoted value spans lines (the file must be read whole by one task)."""
        return bool(self.odd_lines)

    @property
    def by_lines(self) -> bool:
        """Whether the file can be read as lines (see `read_files`): one record per line, no line but the first
        equal to its header (lines drop the header by its text, the CSV reader by its place), and nothing but
        UTF-8 (the CSV reader replaces other bytes by U+FFFD, lines keep them)."""
        return (
            not self.multiline
            and self.header_lines == 1
            and self.undecodable_lines == 0
            and _comparable(self.header_line)
        )


def _comparable(line: str | None) -> bool:
    """Whether a first line read on the driver equals the line as Spark reads it: bytes that are not UTF-8 are
    decoded on the driver (to U+FFFD) and kept as they are by Spark."""
    return line is not None and "\ufffd" not in line


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
    """Each file's first line (its header), read on the driver; then one parallel pass over the input's lines:
    per file, the line count and bytes, the odd-quote and long lines, and the counts `SourceFile.by_lines`
    decides on (lines equal to an input file's first line, lines that are not UTF-8, lines holding a quote).

    The pass is cheap on the lines that need no look (most of them): a line's quotes are counted only when
    it holds one, and its characters only when its bytes exceed the limit.
    """
    value = F.col("value")
    quoted = value.contains('"')
    quotes = F.length(value) - F.length(F.translate(value, '"', ""))
    odd = quoted & (quotes % 2 == 1)
    long = (F.octet_length(value) > limits.max_line_chars) & (F.length(value) > limits.max_line_chars)
    text = spark.read.text(paths)
    # Read before the pass, which counts the lines equal to one of them (`inputFiles` gives URIs).
    firsts = {_path_of(uri): _first_line(spark, uri, limits, uri=True) for uri in text.inputFiles()}
    headers = sorted({line for line in firsts.values() if line and _comparable(line)})
    header_like = value.isin(*headers) if headers else F.lit(False)
    lines = text.select(
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
            F.count_if(header_like).alias("header_lines"),
            F.count_if(~F.is_valid_utf8(value)).alias("undecodable_lines"),
            F.count_if(quoted).alias("quoted_lines"),
            F.sum(F.octet_length(value) + 1).alias("bytes"),
        )
        .collect()
    )
    by_file: dict[str, list[Any]] = defaultdict(list)
    for split in splits:
        by_file[split["file"]].append(split)
    files = [_source_file(file, parts) for file, parts in sorted(by_file.items())]
    # A first line too long to be a header is refused by `check_structure` without being used.
    return [_with_header(spark, f, firsts.get(f.path), limits) if not _long_first(f) else f for f in files]


def _with_header(spark: SparkSession, source: SourceFile, line: str | None, limits: Limits) -> SourceFile:
    """The file with its header: `line` as read before the pass, or read now (a path the listing and the
    pass spell differently)."""
    if line is None:
        line = _first_line(spark, source.path, limits) or ""
    return dataclasses.replace(source, header=tuple(next(csv.reader([line]), [])), header_line=line)


def _path_of(uri: str) -> str:
    """A file as `SourceFile.path` names it: a local file as a plain path, other schemes (hdfs://, s3a://) by
    their URI."""
    return unquote(urlsplit(uri).path) if urlsplit(uri).scheme == "file" else uri


def _long_first(source: SourceFile) -> bool:
    return bool(source.long_lines) and source.long_lines[0][0] == 1


def _first_line(spark: SparkSession, path: str, limits: Limits, uri: bool = False) -> str | None:
    """The first line of the file at `path` (a URI if `uri`), a byte order mark dropped, read through Hadoop
    (and its codec for a compressed file) as Spark reads the file; None when longer than `max_line_chars`."""
    path_class, fs = hadoop_fs(spark, path)  # raises when the session is stopped
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    hadoop_path = path_class(jvm.java.net.URI(path)) if uri else path_class(path)
    codec = jvm.org.apache.hadoop.io.compress.CompressionCodecFactory(fs.getConf()).getCodec(hadoop_path)
    stream = fs.open(hadoop_path)
    most = 4 * limits.max_line_chars + 3  # bytes: a byte order mark, then characters of up to 4 bytes each
    try:
        readable = codec.createInputStream(stream) if codec is not None else stream
        text = jvm.org.apache.hadoop.io.Text()
        jvm.org.apache.hadoop.util.LineReader(readable).readLine(text, most, most + 2)
    finally:
        stream.close()
    if text.getLength() >= most:
        return None
    line = str(text.toString()).removeprefix("\ufeff")
    return line if len(line) <= limits.max_line_chars else None


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
    path = _path_of(file)  # shown and read as a plain path when local
    counts = {name: sum(part[name] for part in parts)
              for name in ("header_lines", "undecodable_lines", "quoted_lines", "bytes")}  # fmt: skip
    return SourceFile(path, (), before, tuple(sorted(odd)), tuple(sorted(long)), **counts)


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


def read_files(
    spark: SparkSession, sources: Iterable[SourceFile], only: str | None = None, by_lines: bool = True
) -> DataFrame:
    """The contract's 24 columns as text plus `raw_record`, each file's columns taken by name from its header.

    A file that can be (`SourceFile.by_lines`, unless `by_lines` is off) is read as lines, with the
    result of Spark's CSV reader at about half its cost: a line without a double quote (nearly all of
    them) is cut at its commas, and a line with a quote goes through the CSV parser the reader uses
    (`from_csv`, with the same options). The other files are read by the CSV reader.

    With `only` (a contract column), just that column as the reader tokenizes it, with no check of the
    record's shape (a malformed record gives whatever its field at that place holds).
    """
    groups: dict[tuple[tuple[str, ...], bool, str | None], list[SourceFile]] = defaultdict(list)
    for source in sources:
        lines = by_lines and source.by_lines
        groups[(source.header, source.multiline, source.header_line if lines else None)].append(source)
    frames = []
    for (header, multiline, header_line), members in groups.items():
        indexes = column_indexes(members[0])
        paths = [m.path for m in members]
        if header_line is not None:
            quotes = any(m.quoted_lines for m in members)
            frames.append(_read_lines(spark, paths, header_line, len(header), indexes, only, quotes))
            how = "one record per line: split, cut at commas"
        else:
            frames.append(_read_csv(spark, paths, header, multiline, indexes, only))
            how = "quoted line breaks: one task per file" if multiline else "one record per line: split"
        if not only:
            log.info("reading %d file(s) %s (%s)", len(members), ", ".join(m.name for m in members[:5]), how)
    return reduce(DataFrame.unionAll, frames)


def _read_csv(
    spark: SparkSession, paths: list[str], header: Sequence[str], multiline: bool, indexes: dict[str, int],
    only: str | None,
) -> DataFrame:  # fmt: skip
    """`read_files` by Spark's CSV reader."""
    names = _field_names(header)
    record = [] if only else [T.StructField(RAW_RECORD, T.StringType())]
    schema = T.StructType([T.StructField(n, T.StringType()) for n in names] + record)
    frame = spark.read.csv(paths, schema=schema, header=True, multiLine=multiline, **READER_OPTIONS)
    if only:
        return frame.select(F.col(f"`{names[indexes[only]]}`").alias(only))
    broken = F.col(RAW_RECORD).isNotNull()
    # The columns of a malformed record are whatever its fields happened to be: left empty.
    return frame.select(*[F.when(~broken, F.col(f"`{names[indexes[c]]}`")).alias(c) for c in RAW_COLUMNS], RAW_RECORD)


def _read_lines(
    spark: SparkSession,
    paths: list[str],
    header_line: str,
    width: int,
    indexes: dict[str, int],
    only: str | None,
    quotes: bool,
) -> DataFrame:
    """`read_files` as lines: files of one record per line, whose header is their only line equal to it, and
    which hold a double quote if `quotes`.

    What the CSV reader does with such a line, done here the same way: a blank line (nothing but characters
    up to U+0020) is no record; the header line is dropped; a record with more or fewer fields than the
    header is malformed, its text in `raw_record`; nothing else is touched (no trimming, no comment
    lines). One difference: an empty field of a cut line is empty text, where the CSV reader gives null
    (turning it into null costs as much as the rest of the cut): every user of these rows normalizes
    them first (`spark_jobs.features.normalized`), which makes both null.
    """
    value = F.col("value")
    lines = spark.read.text(paths)
    quoted = value.contains('"')
    schema = ", ".join(f"_c{i} STRING" for i in range(width))
    if only:
        # Every line, the header and malformed records included: a loan_id too many only costs a row
        # compared whole.
        position = indexes[only]
        cut = F.substring_index(F.substring_index(value, ",", position + 1), ",", -1)
        if not quotes:
            return lines.select(cut.alias(only))
        field = F.from_csv(value, schema, READER_OPTIONS).getField(f"_c{position}")
        return lines.select(F.when(quoted, field).otherwise(cut).alias(only))
    # Most lines are not blank: the first character tells, without trimming the line.
    blank = (F.substring(value, 1, 1) <= F.lit(" ")) & (F.btrim(value, F.lit(BLANK)) == "")
    records = lines.where(~blank & (value != F.lit(header_line)))
    split = (records.where(~quoted) if quotes else records).select(value, F.split(value, ",", -1).alias("_cut"))
    fits = F.size("_cut") == width
    fields = split.select(F.when(fits, F.col("_cut")).alias("_cut"), F.when(~fits, value).alias(RAW_RECORD))
    plain = fields.select(*[F.get("_cut", indexes[c]).alias(c) for c in RAW_COLUMNS], RAW_RECORD)
    if not quotes:
        return plain
    # The quoted lines apart, each kept by its own read of the lines: one expression choosing between
    # cutting and parsing would make a generated method too large for the JIT to compile.
    parsed = records.where(quoted).select(
        F.from_csv(value, f"{schema}, {RAW_RECORD} STRING", READER_OPTIONS).alias("_csv")
    )
    broken = F.col(f"_csv.{RAW_RECORD}").isNotNull()
    by_parser = parsed.select(
        # The columns of a malformed record are whatever its fields happened to be: left empty.
        *[F.when(~broken, F.col(f"_csv._c{indexes[c]}")).alias(c) for c in RAW_COLUMNS],
        F.col(f"_csv.{RAW_RECORD}").alias(RAW_RECORD),
    )
    return plain.unionAll(by_parser)


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
