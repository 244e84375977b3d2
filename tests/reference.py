"""A plain-Python implementation of the input and feature contract (DESIGN §4, §5), for the tests.

Written from the contract, independently of the Spark job (and of the project's lists of columns and
reasons: it spells its own, so a reason missing from the project's is caught), one row at a time, so
that the job's output can be compared with it cell by cell.
"""

from __future__ import annotations

import calendar
import csv
import datetime as dt
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

RAW_COLUMNS = (
    "loan_id", "id", "code_gender", "flag_own_car", "flag_own_realty", "cnt_children", "amt_income_total",
    "name_income_type", "name_education_type", "name_family_status", "name_housing_type", "days_birth",
    "days_employed", "flag_mobil", "flag_work_phone", "flag_phone", "flag_email", "occupation_type",
    "cnt_fam_members", "status", "birthday", "job_start_date", "loan_date", "loan_amount",
)  # fmt: skip
REJECT_REASONS = (
    "malformed_record", "invalid_id", "invalid_loan_id", "invalid_loan_date", "invalid_loan_amount",
    "invalid_status", "future_loan_date", "duplicate_loan_id",
)  # fmt: skip
NULL_REASONS = {
    "nb_previous_loans": (),
    "avg_amount_loans_previous": ("first_loan",),
    "age": ("birthday_missing", "birthday_invalid", "birthday_after_loan_date", "age_over_120"),
    "years_on_the_job": ("job_start_missing", "job_start_invalid", "job_start_after_loan_date",
                         "job_start_before_birthday", "years_on_the_job_over_100"),
    "flag_own_car": ("flag_own_car_missing", "flag_own_car_invalid"),
}  # fmt: skip

TRIM = " \t\r\n"
MAX_LONG = 2**63 - 1


def _whole(text: str | None) -> int | None:
    if text is None or not re.fullmatch(r"[0-9]+", text):
        return None
    value = int(text)
    return value if 1 <= value <= MAX_LONG else None


def _date(text: str | None) -> dt.date | None:
    if text is None or not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
        return None
    try:
        return dt.date(int(text[:4]), int(text[5:7]), int(text[8:]))
    except ValueError:
        return None


def _decimal(text: str | None) -> float | None:
    if text is None or not re.fullmatch(r"[+-]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][+-]?[0-9]+)?", text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def whole_years(start: dt.date, end: dt.date) -> int:
    """Whole years from start to end; a Feb 29 start has its anniversary on Feb 28 in other years."""
    years = end.year - start.year
    day = start.day
    if start.month == 2 and day == 29 and not calendar.isleap(start.year + years):
        day = 28
    if (end.month, end.day) < (start.month, day):
        years -= 1
    return years


@dataclass
class Result:
    features: dict[int, tuple] = field(default_factory=dict)  # loan_id -> output row
    quarantine: list[tuple] = field(default_factory=list)  # raw values, reason, raw_record
    report: dict = field(default_factory=dict)


def read_rows(paths: list[Path]) -> list[tuple]:
    """Every record as its trimmed values in contract order (None for empty) plus None, or, for a record
    with more or fewer fields than its header, 24 Nones plus the record's text."""
    rows = []
    for path in paths:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            consumed: list[str] = []

            def lines(consumed: list[str] = consumed) -> Iterator[str]:
                for line in handle:
                    consumed.append(line)
                    yield line

            reader = csv.reader(lines())
            header = [h.strip().lower() for h in next(reader)]
            index = [header.index(c) for c in RAW_COLUMNS]
            consumed.clear()
            for record in reader:
                text = "".join(consumed).rstrip("\r\n")
                consumed.clear()
                if not record:
                    continue
                if len(record) != len(header):
                    rows.append((*[None] * len(RAW_COLUMNS), text))
                    continue
                rows.append((*[record[i].strip(TRIM) or None for i in index], None))
    return rows


def compute(paths: list[Path], as_of: dt.date | None = None) -> Result:
    rows = read_rows(paths)
    copies = Counter(rows)
    col = {c: i for i, c in enumerate(RAW_COLUMNS)}
    distinct = list(copies)
    loan_ids = Counter(_whole(r[col["loan_id"]]) for r in distinct if r[-1] is None)
    result = Result()
    rejected_by = Counter()
    accepted = []
    for row in distinct:
        client, loan_id = _whole(row[col["id"]]), _whole(row[col["loan_id"]])
        loan_date, amount = _date(row[col["loan_date"]]), _decimal(row[col["loan_amount"]])
        status = row[col["status"]]
        if row[-1] is not None:
            reason = "malformed_record"
        elif client is None:
            reason = "invalid_id"
        elif loan_id is None:
            reason = "invalid_loan_id"
        elif loan_date is None:
            reason = "invalid_loan_date"
        elif amount is None or amount <= 0:
            reason = "invalid_loan_amount"
        elif status not in (None, "0", "1"):
            reason = "invalid_status"
        elif as_of is not None and loan_date > as_of:
            reason = "future_loan_date"
        elif loan_ids[loan_id] > 1:
            reason = "duplicate_loan_id"
        else:
            reason = None
        if reason:
            result.quarantine.append((*row[:-1], reason, row[-1]))
            rejected_by[reason] += 1
        else:
            accepted.append((client, loan_date, loan_id, amount, row))

    nulls = {f: Counter() for f in NULL_REASONS}
    by_client: dict[int, list] = defaultdict(list)
    for item in accepted:
        by_client[item[0]].append(item)
    for client, loans in by_client.items():
        loans.sort(key=lambda x: (x[1], x[2]))
        total = 0.0
        for k, (_, loan_date, loan_id, amount, row) in enumerate(loans):
            avg = total / k if k else None
            if k == 0:
                nulls["avg_amount_loans_previous"]["first_loan"] += 1
            total += amount
            age, age_reason = _age(row[col["birthday"]], loan_date)
            job, job_reason = _job(row[col["job_start_date"]], row[col["birthday"]], loan_date)
            car_text = row[col["flag_own_car"]]
            car = {"Y": 1, "N": 0}.get(car_text.upper()) if car_text else None
            car_reason = (
                None if car is not None else ("flag_own_car_missing" if car_text is None else "flag_own_car_invalid")
            )
            for feature, why in (("age", age_reason), ("years_on_the_job", job_reason), ("flag_own_car", car_reason)):
                if why:
                    nulls[feature][why] += 1
            status = row[col["status"]]
            result.features[loan_id] = (
                loan_id, client, loan_date, k, avg, age, job, car, int(status) if status else None,
            )  # fmt: skip
    feats = result.features.values()
    result.report = {
        "rows_read": len(rows),
        "duplicates_dropped": len(rows) - len(distinct),
        "rows_accepted": len(accepted),
        "rows_rejected": len(result.quarantine),
        "rejected_by_reason": {r: rejected_by[r] for r in REJECT_REASONS},
        "nulls": {f: {r: nulls[f][r] for r in reasons} for f, reasons in NULL_REASONS.items()},
        "status_unknown": sum(1 for f in feats if f[8] is None),
        "clients": len(by_client),
        "first_loan_date": min((f[2] for f in feats), default=None),
        "last_loan_date": max((f[2] for f in feats), default=None),
    }
    for key in ("first_loan_date", "last_loan_date"):
        value = result.report[key]
        result.report[key] = value.isoformat() if value else None
    return result


def _age(text: str | None, loan_date: dt.date) -> tuple[int | None, str | None]:
    if text is None:
        return None, "birthday_missing"
    birthday = _date(text)
    if birthday is None:
        return None, "birthday_invalid"
    if birthday > loan_date:
        return None, "birthday_after_loan_date"
    age = whole_years(birthday, loan_date)
    return (None, "age_over_120") if age > 120 else (age, None)


def _job(text: str | None, birthday_text: str | None, loan_date: dt.date) -> tuple[int | None, str | None]:
    if text is None:
        return None, "job_start_missing"
    start = _date(text)
    if start is None:
        return None, "job_start_invalid"
    if start > loan_date:
        return None, "job_start_after_loan_date"
    birthday = _date(birthday_text)
    if birthday is not None and start < birthday:
        return None, "job_start_before_birthday"
    years = whole_years(start, loan_date)
    return (None, "years_on_the_job_over_100") if years > 100 else (years, None)
