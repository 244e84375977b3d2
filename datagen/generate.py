"""Generate the raw loans CSV of DESIGN §4, deterministic from a seed, streamed to disk.

    credit sample --output data/raw/loans.csv [--clients 36457] [--seed 42] [--dirty]

The default is shaped like the original dataset: 36,457 clients, about 780k loans, 1 to 61 loans per
client dated 2019-01-01 .. 2020-12-30, right-skewed amounts of at least 100 (median about 118), about
16% of clients "not employed" (job start 3021-09-18), same-day loans, rows not in date order, and a
`status` about 1.5% positive that depends on the features. `--dirty` adds rows that must be rejected
(every reason of DESIGN §4, every listed bad value, two faults in one row for each pair of reasons,
malformed records with a field too many or too few), exact duplicates, and valid but odd values (Feb 29
birthdays, `y` for `Y`, padded values, quoted text with commas and newlines, empty or impossible
birthdays and job starts) so that every null reason occurs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from conf import command_settings
from contract import RAW_COLUMNS

log = logging.getLogger(__name__)

COLUMNS = RAW_COLUMNS

# The source counts days from this date; 365243 days after it is the "not employed" code 3021-09-18.
REFERENCE_DATE = dt.date(2021, 9, 17)
NOT_EMPLOYED_DAYS = 365243
FIRST_LOAN_DATE = dt.date(2019, 1, 1)
LOAN_DATE_SPAN_DAYS = 730  # 2019-01-01 .. 2020-12-30
FIRST_CLIENT_ID = 5008804
CHUNK_CLIENTS = 2000
# Intercept of the status model, tuned so that about 1.5% of loans are late.
STATUS_INTERCEPT = -5.6

INCOME_TYPES = ("Working", "Commercial associate", "State servant", "Student")
EDUCATION = ("Secondary / secondary special", "Higher education", "Incomplete higher",
             "Lower secondary", "Academic degree")  # fmt: skip
FAMILY = ("Married", "Single / not married", "Civil marriage", "Separated", "Widow")
HOUSING = ("House / apartment", "With parents", "Municipal apartment", "Rented apartment",
           "Office apartment", "Co-op apartment")  # fmt: skip
OCCUPATIONS = ("", "Laborers", "Core staff", "Sales staff", "Managers", "Drivers",
               "High skill tech staff", "Accountants", "Medicine staff", "Cooking staff")  # fmt: skip

# Values each rejection reason is tried with (rejected whatever `--as-of`, except the future dates).
BAD_VALUES = {
    "id": ("abc", "0", "-7", "9223372036854775808", "", "12.5", "1e3", "5 008"),
    "loan_id": ("abc", "0", "-3", "99999999999999999999", "", "7.0", "0x1F"),
    "loan_date": ("2020-02-30", "2019-13-01", "20200115", "", "2020-1-5", "yesterday",
                  "2021-02-29", "0000-01-01", "2020-06-31"),
    "loan_amount": ("abc", "-50", "0", "NaN", "Infinity", "1,000.50", "", "1e400", "12.5.1", "-0.0"),
    "status": ("2", "yes", "0.0", "-1", "01", "true"),
}  # fmt: skip
FUTURE_DATES = ("2021-01-10", "2021-03-01", "2021-06-30")


@dataclass(frozen=True)
class Client:
    """The attributes of one client, repeated on every one of their loans."""

    id: int
    fields: dict[str, str]
    birthday: dt.date | None
    job_start: dt.date | None
    owns_car: bool


def _fmt_float(x: float) -> str:
    return repr(float(x))


def _make_client(rng: random.Random, client_id: int) -> Client:
    days_birth = -rng.randint(21 * 365, 68 * 365)
    birthday = REFERENCE_DATE + dt.timedelta(days=days_birth)
    age_now = -days_birth / 365.25
    pensioner = (age_now > 55 and rng.random() < 0.45) or rng.random() < 0.04
    if pensioner:
        days_employed = NOT_EMPLOYED_DAYS
        income_type = "Pensioner"
    else:
        days_employed = -rng.randint(30, int(min(40.0, age_now - 18) * 365))
        income_type = rng.choice(INCOME_TYPES)
    job_start = REFERENCE_DATE + dt.timedelta(days=days_employed)
    owns_car = rng.random() < 0.38
    children = rng.choices((0, 1, 2, 3), weights=(70, 20, 8, 2))[0]
    family = rng.choices(FAMILY, weights=(68, 13, 8, 6, 5))[0]
    income = round(math.exp(rng.gauss(math.log(160000), 0.45)) / 2250) * 2250
    fields = {
        "id": str(client_id),
        "code_gender": "F" if rng.random() < 0.67 else "M",
        "flag_own_car": "Y" if owns_car else "N",
        "flag_own_realty": "Y" if rng.random() < 0.67 else "N",
        "cnt_children": str(children),
        "amt_income_total": _fmt_float(max(27000, income)),
        "name_income_type": income_type,
        "name_education_type": rng.choices(EDUCATION, weights=(68, 27, 4, 1, 0.1))[0],
        "name_family_status": family,
        "name_housing_type": rng.choices(HOUSING, weights=(89, 5, 3, 2, 0.5, 0.5))[0],
        "days_birth": str(days_birth),
        "days_employed": str(days_employed),
        "flag_mobil": "1",
        "flag_work_phone": str(int(rng.random() < 0.22)),
        "flag_phone": str(int(rng.random() < 0.29)),
        "flag_email": str(int(rng.random() < 0.09)),
        "occupation_type": "" if pensioner else rng.choice(OCCUPATIONS),
        "cnt_fam_members": _fmt_float(1 + children + (family in ("Married", "Civil marriage"))),
        "birthday": birthday.isoformat(),
        "job_start_date": job_start.isoformat(),
    }
    return Client(client_id, fields, birthday, job_start, owns_car)


def _whole_years(start: dt.date, end: dt.date) -> int:
    years = end.year - start.year
    if (end.month, end.day) < (start.month, start.day):
        years -= 1
    return years


def _late_probability(client: Client, loan_date: dt.date, nb_previous: int, amount: float,
                      previous_mean: float | None) -> float:  # fmt: skip
    """The generating model of `status`: younger, newer in the job, fewer loans, larger loan = riskier."""
    z = STATUS_INTERCEPT
    if client.birthday is not None:
        age = _whole_years(client.birthday, loan_date)
        z += 0.06 * max(0, 40 - age)
    if client.job_start is not None and client.job_start <= loan_date:
        z += 0.9 * math.exp(-_whole_years(client.job_start, loan_date) / 2)
    else:
        z += 0.4
    z += 0.0 if client.owns_car else 0.35
    z += 1.6 * math.exp(-nb_previous / 3)
    if previous_mean is not None:
        z += 0.8 * min(3.0, max(0.0, amount / previous_mean - 1.0))
    return 1.0 / (1.0 + math.exp(-z))


def _client_loans(rng: random.Random, client: Client, next_loan_id: int) -> list[dict[str, str]]:
    """Every loan of one client, with `status` drawn from the generating model."""
    share = rng.betavariate(1.7, 3.3)
    count = 1 + sum(rng.random() < share for _ in range(60))  # 1 .. 61, mean about 21
    days = [rng.randrange(LOAN_DATE_SPAN_DAYS) for _ in range(count)]
    amounts = [round(100 + math.exp(rng.gauss(math.log(18), 1.1)), 2) for _ in range(count)]
    loans = [(FIRST_LOAN_DATE + dt.timedelta(days=d), next_loan_id + i, a)
             for i, (d, a) in enumerate(zip(days, amounts, strict=True))]  # fmt: skip
    rows = []
    total = 0.0
    for k, (loan_date, loan_id, amount) in enumerate(sorted(loans)):
        mean = total / k if k else None
        late = rng.random() < _late_probability(client, loan_date, k, amount, mean)
        total += amount
        row = dict(client.fields)
        row.update(loan_id=str(loan_id), status=str(int(late)), loan_date=loan_date.isoformat(),
                   loan_amount=_fmt_float(amount))  # fmt: skip
        rows.append(row)
    return rows


def _oddify(rng: random.Random, client: Client, kind: int) -> Client:
    """Give a client values that are valid but odd, or that null a feature (dirty data only)."""
    f = dict(client.fields)
    birthday, job_start = client.birthday, client.job_start
    match kind:
        case 0:
            birthday = dt.date(1988, 2, 29)
        case 1:
            f["flag_own_car"] = rng.choice(("y", "n", " Y ", "n "))
        case 2:
            f["occupation_type"] = 'Managers, "core"\nstaff'
            f["name_family_status"] = "Single,\r\nnot married"
        case 3:
            birthday = dt.date(2020, 6, 1)  # after most loans: age is null
        case 4:
            job_start = (birthday or dt.date(1990, 1, 1)) - dt.timedelta(days=400)
        case 5:
            f["birthday"] = "1985-02-30"
            birthday = None
        case 6:
            f["birthday"] = ""
            birthday = None
        case 7:
            f["flag_own_car"] = ""
        case 8:
            f["flag_own_car"] = "X"
        case 9:
            birthday, job_start = dt.date(1890, 1, 1), dt.date(1905, 3, 1)  # age > 120, job > 100 years
        case 10:
            birthday = dt.date(2000, 2, 29)
            job_start = dt.date(2019, 2, 28)
        case 11:
            f["job_start_date"] = ""
            job_start = None
        case 12:
            f["job_start_date"] = "2019-02-30"
            job_start = None
    if kind in (0, 3, 4, 9, 10):
        f["birthday"] = birthday.isoformat() if birthday else f["birthday"]
        f["job_start_date"] = job_start.isoformat() if job_start else f["job_start_date"]
    return Client(client.id, f, birthday, job_start, client.owns_car)


ODD_KINDS = 13
# One fault per rejection reason, as the changes that give a row that reason (malformed records and
# conflicting loan_ids are made separately).
FAULTS: dict[str, dict[str, str]] = {
    "invalid_id": {"id": "12.5"},
    "invalid_loan_id": {"loan_id": "0x1F"},
    "invalid_loan_date": {"loan_date": "2020-06-31"},
    "invalid_loan_amount": {"loan_amount": "1,000.50"},
    "invalid_status": {"status": "yes"},
    "future_loan_date": {"loan_date": FUTURE_DATES[0]},
}


def _dirty_rows(rng: random.Random, rows: list[dict[str, str]], first_loan_id: int,
                per_kind: int) -> list[dict[str, str] | str]:  # fmt: skip
    """Extra rows: some to reject, exact copies to drop, valid ones written oddly, and malformed lines."""
    extras: list[dict[str, str] | str] = []
    loan_id = first_loan_id

    def fresh(row: dict[str, str]) -> dict[str, str]:
        nonlocal loan_id
        loan_id += 1
        return dict(row, loan_id=str(loan_id))

    for column, values in BAD_VALUES.items():  # every listed bad value, once
        extras.extend(dict(fresh(rng.choice(rows)), **{column: value}) for value in values)
    # Two faults in one row, for every pair of reasons that can meet: the earlier reason wins.
    reasons = list(FAULTS)
    for i, first in enumerate(reasons):
        for second in reasons[i + 1 :]:
            if FAULTS[first].keys().isdisjoint(FAULTS[second]):
                extras.append(dict(fresh(rng.choice(rows)), **FAULTS[first], **FAULTS[second]))
        if first != "invalid_loan_id":
            # A row rejected for an earlier reason shares its loan_id with a good row: both are counted
            # as sharing it, so the good row is rejected as duplicate_loan_id.
            good = fresh(rng.choice(rows))
            extras += [good, dict(good, **FAULTS[first], loan_id=good["loan_id"])]
    for i in range(per_kind):
        extras.append(dict(fresh(rng.choice(rows)), loan_date=FUTURE_DATES[i % len(FUTURE_DATES)]))
        original = rng.choice(rows)
        extras.append(dict(original))  # an exact copy: dropped and counted
        if i % 2 == 0:
            extras.append(dict(original))  # a third copy
        conflicting = fresh(rng.choice(rows))
        extras.append(conflicting)
        extras.append(dict(conflicting, loan_amount=_fmt_float(float(conflicting["loan_amount"]) + 1)))
        extras.append(dict(fresh(rng.choice(rows)), status=""))  # outcome not known yet: accepted
        padded = fresh(rng.choice(rows))
        extras.append({k: f"  {v} " if k in ("id", "loan_amount", "loan_date") else v
                       for k, v in padded.items()})  # fmt: skip
    # Malformed records: one field too many, one too few (quarantined with their text).
    extras.append(_line(fresh(rng.choice(rows))).rstrip("\n") + ",an extra field\n")
    extras.append(_line(fresh(rng.choice(rows))).rstrip("\n").rsplit(",", 1)[0] + "\n")
    return extras


def _quote(value: str, always: bool) -> str:
    if always or any(c in value for c in ',"\n\r'):
        return '"' + value.replace('"', '""') + '"'
    return value


def _line(row: dict[str, str], quote_all: bool = False) -> str:
    return ",".join(_quote(row[c], quote_all) for c in COLUMNS) + "\n"


def generate_rows(clients: int, seed: int, dirty: bool = False, per_kind: int = 3) -> Iterator[str]:
    """Yield the CSV lines (header first), chunk by chunk, each chunk in shuffled order."""
    rng = random.Random(seed)
    yield ",".join(COLUMNS) + "\n"
    next_loan_id = 1
    for start in range(0, clients, CHUNK_CLIENTS):
        rows: list[dict[str, str]] = []
        for index in range(start, min(clients, start + CHUNK_CLIENTS)):
            client = _make_client(rng, FIRST_CLIENT_ID + index)
            if dirty and index < 3 * ODD_KINDS:
                client = _oddify(rng, client, index % ODD_KINDS)
            loans = _client_loans(rng, client, next_loan_id)
            next_loan_id += len(loans)
            rows.extend(loans)
        extras: list[dict[str, str] | str] = []
        if dirty and start == 0:
            extras = _dirty_rows(rng, rows, 10**12, per_kind)
        lines = [_line(r) for r in rows] + [
            r if isinstance(r, str) else _line(r, quote_all=i % 4 == 0) for i, r in enumerate(extras)
        ]
        rng.shuffle(lines)
        yield from lines


def write_csv(path: Path, clients: int, seed: int, dirty: bool = False) -> int:
    """Write the CSV atomically (temporary file then rename); return the number of data rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    count = -1
    with tmp.open("w", encoding="utf-8", newline="") as out:
        for count, line in enumerate(generate_rows(clients, seed, dirty)):  # noqa: B007
            out.write(line)
    tmp.replace(path)
    return count


def main(argv: list[str] | None = None) -> int:
    loaded = command_settings()
    settings = loaded.sample
    parser = argparse.ArgumentParser(prog="credit sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path(settings.output), help="CSV file to write")
    parser.add_argument("--clients", type=int, default=settings.clients, help="number of clients")
    parser.add_argument("--seed", type=int, default=settings.seed, help="random seed")
    parser.add_argument("--dirty", action="store_true", help="add malformed, duplicate and odd rows")
    args = parser.parse_args(argv)
    if args.clients < 1:
        parser.error(f"--clients must be at least 1, got {args.clients}")
    started = time.perf_counter()
    rows = write_csv(args.output, args.clients, args.seed, args.dirty)
    log.info("wrote %d rows for %d clients to %s in %.1fs", rows, args.clients, args.output,
             time.perf_counter() - started)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
