"""The sample-data generator: deterministic, shaped like the original dataset, streamed."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import statistics
from collections import Counter, defaultdict
from pathlib import Path

from contract import RAW_COLUMNS
from datagen.generate import BAD_VALUES, NOT_EMPLOYED_DAYS, REFERENCE_DATE, write_csv


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_datagen_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    digests = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_csv(tmp_path / f"{name}.csv", clients=50, seed=seed, dirty=True)
        digests.append(hashlib.sha256((tmp_path / f"{name}.csv").read_bytes()).hexdigest())
    assert digests[0] == digests[1] != digests[2]


def test_datagen_clean_data_is_shaped_like_the_original(tmp_path: Path) -> None:
    path = tmp_path / "loans.csv"
    rows_written = write_csv(path, clients=3000, seed=42)
    rows = read(path)
    assert list(rows[0]) == list(RAW_COLUMNS)
    assert len(rows) == rows_written
    per_client = Counter(r["id"] for r in rows)
    assert len(per_client) == 3000
    assert min(per_client.values()) >= 1 and max(per_client.values()) <= 61
    assert 19 <= len(rows) / 3000 <= 24  # about 780k loans for 36,457 clients
    dates = [r["loan_date"] for r in rows]
    assert min(dates) >= "2019-01-01" and max(dates) <= "2020-12-30"
    assert dates != sorted(dates)  # file order is not chronological
    amounts = [float(r["loan_amount"]) for r in rows]
    assert min(amounts) >= 100 and 110 <= statistics.median(amounts) <= 126
    assert statistics.mean(amounts) > statistics.median(amounts)  # right-skewed
    not_employed = {r["id"] for r in rows if r["job_start_date"] == "3021-09-18"}
    assert 0.12 <= len(not_employed) / 3000 <= 0.20
    assert REFERENCE_DATE + dt.timedelta(days=NOT_EMPLOYED_DAYS) == dt.date(3021, 9, 18)
    late = sum(r["status"] == "1" for r in rows) / len(rows)
    assert 0.01 <= late <= 0.02
    same_day = Counter((r["id"], r["loan_date"]) for r in rows)
    assert max(same_day.values()) >= 2
    assert len({r["loan_id"] for r in rows}) == len(rows)


def test_datagen_status_depends_on_the_features(tmp_path: Path) -> None:
    path = tmp_path / "loans.csv"
    write_csv(path, clients=3000, seed=5)
    by_client: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in read(path):
        by_client[row["id"]].append(row)
    first, later = [], []
    for loans in by_client.values():
        loans.sort(key=lambda r: (r["loan_date"], int(r["loan_id"])))
        first.append(loans[0]["status"] == "1")
        later.extend(r["status"] == "1" for r in loans[5:])
    # First loans are riskier than a client's sixth and later ones in the generating model.
    assert statistics.mean(first) > 2 * statistics.mean(later)


def test_datagen_dirty_adds_bad_duplicate_odd_and_malformed_rows(tmp_path: Path) -> None:
    path = tmp_path / "dirty.csv"
    write_csv(path, clients=60, seed=1, dirty=True)
    with path.open(newline="", encoding="utf-8") as handle:
        records = list(csv.reader(handle))
    header, body = records[0], records[1:]
    assert header == list(RAW_COLUMNS)
    assert sorted(len(r) for r in body if len(r) != len(header)) == [len(header) - 1, len(header) + 1]  # malformed
    rows = [dict(zip(header, r, strict=True)) for r in body if len(r) == len(header)]
    for column, values in BAD_VALUES.items():  # every listed bad value is used
        assert set(values) <= {r[column] for r in rows}, column
    assert any(r["id"] == "12.5" and r["loan_id"] == "0x1F" for r in rows)  # two faults in one row
    keyed = Counter(tuple(r.values()) for r in rows)
    assert max(keyed.values()) >= 2  # exact duplicates
    assert any(r["birthday"].endswith("-02-29") for r in rows)
    assert any(r["flag_own_car"] in ("y", "n") for r in rows)
    assert any(r["job_start_date"] == "" for r in rows) and any(r["job_start_date"] == "2019-02-30" for r in rows)
    assert any("\n" in r["occupation_type"] and "," in r["occupation_type"] for r in rows)
    assert '"' in path.read_text(encoding="utf-8")
