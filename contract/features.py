"""The five features of DESIGN §5: what each is, when it is null and why, how the model fills it.

For each client, the accepted loans are ordered by (`loan_date`, `loan_id`); every feature of the
k-th loan is computed as of that loan's date from loans 1 .. k-1 and the client's attributes. The
Spark form of each feature is in `contract.spark`; the definitions here are what every stage derives
its columns, types and descriptions from.

Adding a feature: a `Feature` entry below with its Python form in `features_of_a_new_loan` (what
the service computes for an application), and its Spark expression in `contract/spark.py`. The Parquet
columns, the model's columns and imputation, the store's field types and the API's shapes follow from
this list.
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
from typing import Literal

from contract.raw import parse_date

MAX_AGE_YEARS = 120
MAX_YEARS_ON_THE_JOB = 100


@dataclasses.dataclass(frozen=True)
class Imputation:
    """How the model fills an empty value of a feature, fitted on the training rows only."""

    strategy: Literal["median", "constant", "most_frequent"]
    why: str
    fill_value: float | None = None
    add_indicator: bool = False

    @property
    def rule(self) -> str:
        """The rule in words, as the model card states it."""
        text = {"median": "median", "most_frequent": "most frequent"}.get(self.strategy)
        if text is None:
            text = f"constant {self.fill_value:g}"
        return text + (", plus a 'missing' indicator" if self.add_indicator else "")


@dataclasses.dataclass(frozen=True)
class Feature:
    """One feature: its name, value type, meaning, null reasons (in the order checked), imputation."""

    name: str
    type: type[int] | type[float]
    description: str
    null_reasons: tuple[str, ...]
    imputation: Imputation

    @property
    def spark_type(self) -> str:
        """Its column type in the features Parquet (`int` or `double`)."""
        return "int" if self.type is int else "double"


FEATURES: tuple[Feature, ...] = (
    Feature(
        "nb_previous_loans", int, "loans of the client before this one", (),
        Imputation("median", "never empty; kept for safety"),
    ),
    Feature(
        "avg_amount_loans_previous", float, "mean amount of the earlier loans; null for a first loan",
        ("first_loan",),
        Imputation("constant", "empty means a first loan: no earlier amount", fill_value=0.0),
    ),
    Feature(
        "age", int, "whole years from birthday to the loan date",
        ("birthday_missing", "birthday_invalid", "birthday_after_loan_date", "age_over_120"),
        Imputation("median", "empty means an unknown or impossible birthday: the typical age"),
    ),
    Feature(
        "years_on_the_job", int, "whole years from job start to the loan date; null if not employed",
        ("job_start_missing", "job_start_invalid", "job_start_after_loan_date", "job_start_before_birthday",
         "years_on_the_job_over_100"),
        Imputation("constant", "empty mostly means not employed", fill_value=0.0, add_indicator=True),
    ),
    Feature(
        "flag_own_car", int, "1 owns a car, 0 does not", ("flag_own_car_missing", "flag_own_car_invalid"),
        Imputation("most_frequent", "empty means the source did not say: the common answer"),
    ),
)  # fmt: skip

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
# Why a feature is null, per feature, in the order the reasons are checked.
NULL_REASONS: dict[str, tuple[str, ...]] = {f.name: f.null_reasons for f in FEATURES}
# The columns of the feature job's `features/` output, in order.
OUTPUT_COLUMNS: tuple[str, ...] = ("loan_id", "id", "loan_date", *FEATURE_NAMES, "status")


def whole_years(start: dt.date, end: dt.date) -> int:
    """Whole years from `start` to `end` as people count age: a Feb 29 start turns a year on Feb 28."""
    years = end.year - start.year
    day = start.day
    if start.month == 2 and day == 29 and not calendar.isleap(start.year + years):
        day = 28
    return years - 1 if (end.month, end.day) < (start.month, day) else years


# ---------------------------------------------------------------- Python forms (the service's applications)
# The same rules as `contract.spark`, on one client's values: a value and the reason it is null.
Valued = tuple[int | None, str | None]


def age_on(birthday: str | None, on: dt.date) -> Valued:
    """`age` on date `on`: whole years from the birthday (`yyyy-MM-dd` text), or None and why (DESIGN §5)."""
    born = parse_date(birthday)
    if birthday is None:
        return None, "birthday_missing"
    if born is None:
        return None, "birthday_invalid"
    if born > on:
        return None, "birthday_after_loan_date"
    years = whole_years(born, on)
    return (None, "age_over_120") if years > MAX_AGE_YEARS else (years, None)


def years_on_the_job_on(job_start: str | None, birthday: str | None, on: dt.date) -> Valued:
    """`years_on_the_job` on date `on` (the 3021-09-18 "not employed" code is after it), or None and why."""
    start, born = parse_date(job_start), parse_date(birthday)
    if job_start is None:
        return None, "job_start_missing"
    if start is None:
        return None, "job_start_invalid"
    if start > on:
        return None, "job_start_after_loan_date"
    if born is not None and start < born:
        return None, "job_start_before_birthday"
    years = whole_years(start, on)
    return (None, "years_on_the_job_over_100") if years > MAX_YEARS_ON_THE_JOB else (years, None)


def car_flag(flag: str | None) -> Valued:
    """`flag_own_car`: 1 for Y, 0 for N (any case), or None and why."""
    if flag is None:
        return None, "flag_own_car_missing"
    value = {"Y": 1, "N": 0}.get(flag.upper())
    return (value, None) if value is not None else (None, "flag_own_car_invalid")


@dataclasses.dataclass(frozen=True)
class History:
    """What the online store keeps of a client (DESIGN §8): enough to compute a new loan's features."""

    loans: int
    amount_sum: float
    last_loan_date: dt.date | None
    birthday: str | None  # yyyy-MM-dd when valid, else None
    job_start_date: str | None
    flag_own_car: int | None


def features_of_a_new_loan(history: History, on: dt.date) -> dict[str, int | float | None]:
    """The features the feature job would compute for a new loan of the client dated `on`, with a
    `loan_id` larger than every other (DESIGN §12): every accepted loan so far is an earlier loan."""
    features: dict[str, int | float | None] = {
        "nb_previous_loans": history.loans,
        # The same sum, in the same order, as the job's window: the same division, the same double.
        "avg_amount_loans_previous": history.amount_sum / history.loans if history.loans else None,
        "age": age_on(history.birthday, on)[0],
        "years_on_the_job": years_on_the_job_on(history.job_start_date, history.birthday, on)[0],
        "flag_own_car": history.flag_own_car,
    }
    if tuple(features) != FEATURE_NAMES:
        raise RuntimeError(
            f"contract/features.py computes {tuple(features)} for a new loan, the contract {FEATURE_NAMES}"
        )
    return features


def features_with_an_earlier_loan(
    latest: dict[str, int | float | None], amount: float
) -> dict[str, int | float | None]:
    """The features of a client's latest loan once a loan dated before it (by `loan_date`, `loan_id`) is
    added to the history: one more previous loan, its amount in the mean (DESIGN §13, late data); the
    attribute features, as of the latest loan's own date, do not change."""
    before = int(latest["nb_previous_loans"] or 0)
    mean = latest["avg_amount_loans_previous"]
    # The mean times the count gives back the earlier sum to within an ulp or so: the stored history
    # does not keep the latest loan's own amount, which an exact sum would need.
    total = (float(mean) * before if mean is not None and before else 0.0) + amount
    return {**latest, "nb_previous_loans": before + 1, "avg_amount_loans_previous": total / (before + 1)}
