"""The Spark forms of the contract: reading raw values, the whole-years rule, the features (DESIGN §4, §5).

Column -> Column helpers and one DataFrame -> DataFrame transform, with no reads or writes, used by
the Spark jobs. The Python forms of the same rules are in `contract.raw` and `contract.features`.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from contract.features import FEATURE_NAMES, MAX_AGE_YEARS, MAX_YEARS_ON_THE_JOB

# The parsed key columns the job adds to a raw row (see `spark_jobs.features.parse_keys`).
CLIENT, LOAN_ID, LOAN_DATE, LOAN_AMOUNT = "_id", "_loan_id", "_loan_date", "_loan_amount"


def parse_whole_number(value: Column) -> Column:
    """A whole number in 1 .. 2^63-1 written as plain digits, else null."""
    # Exactly the WHOLE_NUMBER pattern, without running it on every value (a pattern match costs more than
    # the cast): the cast reads plain digits, and also a sign or padding (whitespace), which a digit at both
    # ends rules out.
    number = value.try_cast("long")
    digits = _is_digit(F.substring(value, 1, 1)) & _is_digit(F.substring(value, -1, 1))
    return F.when((number >= 1) & digits, number)


def parse_date(value: Column) -> Column:
    """A real calendar date written `yyyy-MM-dd` (years 0001 .. 9999), else null."""
    # Exactly the ISO_DATE pattern and a real day, without running the pattern on every value: the cast
    # reads an impossible day as null, and also reads `2020-1-5`, `+2020-01-05` or `2020-01-05T10`; a
    # date in years 1 .. 9999 is written back as `yyyy-MM-dd`, so it equals the text only when the text
    # is that form.
    date = value.try_cast("date")
    return F.when((F.year(date) >= 1) & (F.year(date) <= 9999) & (date.cast("string") == value), date)


def parse_decimal(value: Column) -> Column:
    """A finite decimal number (optionally with an exponent), else null."""
    # Exactly the DECIMAL_NUMBER pattern, without running it on every value: the cast reads Java's
    # floating-point literals, which are the pattern's plus padding, `Infinity` and `NaN`, a type suffix
    # (`1.5d`) and hexadecimal (`0x1p3`). Of those, a literal that starts with a digit, sign or point, ends
    # with a digit or point and holds no `x` is the pattern's.
    number = value.try_cast("double")
    first, last = F.substring(value, 1, 1), F.substring(value, -1, 1)
    shape = (
        (_is_digit(first) | first.isin("+", "-", "."))
        & (_is_digit(last) | (last == "."))
        & ~value.contains("x")
        & ~value.contains("X")
    )
    return F.when(shape & ~F.isnan(number) & (F.abs(number) < F.lit(float("inf"))), number)


def _is_digit(character: Column) -> Column:
    return (character >= F.lit("0")) & (character <= F.lit("9"))


def whole_years(start: Column, end: Column) -> Column:
    """Whole years from `start` to `end` as people count age (Feb 29 turns a year on Feb 28)."""
    years = F.year(end) - F.year(start)
    # add_months clamps to the month's last day, so Feb 29 + 1 year is Feb 28.
    return F.when(F.add_months(start, years * 12) > end, years - 1).otherwise(years)


def first_reason(*cases: tuple[Column, str]) -> Column:
    """The first reason whose condition holds, else null."""
    result = F.when(cases[0][0], cases[0][1])
    for condition, name in cases[1:]:
        result = result.when(condition, name)
    return result


def age_null_reason(birthday_text: Column, birthday: Column, on: Column, years: Column) -> Column:
    """Why `age` is null on date `on` (DESIGN §5), in the order checked; null when it has a value."""
    return first_reason(
        (birthday_text.isNull(), "birthday_missing"),
        (birthday.isNull(), "birthday_invalid"),
        (birthday > on, "birthday_after_loan_date"),
        (years > MAX_AGE_YEARS, "age_over_120"),
    )


def job_null_reason(job_text: Column, job_start: Column, birthday: Column, on: Column, years: Column) -> Column:
    """Why `years_on_the_job` is null on date `on` (the 3021-09-18 code is after it), in the order checked."""
    return first_reason(
        (job_text.isNull(), "job_start_missing"),
        (job_start.isNull(), "job_start_invalid"),
        (job_start > on, "job_start_after_loan_date"),
        (job_start < birthday, "job_start_before_birthday"),
        (years > MAX_YEARS_ON_THE_JOB, "years_on_the_job_over_100"),
    )


def car_null_reason(flag_text: Column, flag: Column) -> Column:
    """Why `flag_own_car` is null: missing, or not Y/N in any case."""
    return first_reason((flag_text.isNull(), "flag_own_car_missing"), (~flag.isin("Y", "N"), "flag_own_car_invalid"))


def with_attributes(rows: DataFrame, on: Column) -> DataFrame:
    """Add the attribute features as of date `on`, with their null reasons: `_birthday`, `_job_start` (dates),
    `_car`, `_age_years`, `_job_years`, `_null_age`, `_null_years_on_the_job`, `_null_flag_own_car`.

    `rows` holds the text columns `birthday`, `job_start_date` and `flag_own_car` (trimmed, empty as null).
    """
    # Staged selects: each parsed value is a column, computed once, not an expression repeated in
    # every condition that uses it.
    dated = rows.select(
        "*",
        parse_date(F.col("birthday")).alias("_birthday"),
        parse_date(F.col("job_start_date")).alias("_job_start"),
        upper_flag(F.col("flag_own_car")).alias("_car"),
    )
    aged = dated.select(
        "*",
        whole_years(F.col("_birthday"), on).alias("_age_years"),
        whole_years(F.col("_job_start"), on).alias("_job_years"),
    )
    birthday, job_start = F.col("_birthday"), F.col("_job_start")
    return aged.select(
        "*",
        age_null_reason(F.col("birthday"), birthday, on, F.col("_age_years")).alias("_null_age"),
        job_null_reason(F.col("job_start_date"), job_start, birthday, on, F.col("_job_years")).alias(
            "_null_years_on_the_job"
        ),
        car_null_reason(F.col("flag_own_car"), F.col("_car")).alias("_null_flag_own_car"),
    )


def upper_flag(flag: Column) -> Column:
    """`flag` upper-cased as far as the Y/N rule can tell: `y` and `n` (no other text upper-cases to `Y` or
    `N`). Spark's `upper` would load a case-mapping library on its first use, about a second of every run."""
    return F.when(flag.isin("Y", "y"), "Y").when(flag.isin("N", "n"), "N").otherwise(flag)


def attribute_values() -> dict[str, Column]:
    """The attribute features' values from `with_attributes`' columns (null where a reason says so)."""
    car = F.col("_car")
    return {
        "age": F.when(F.col("_null_age").isNull(), F.col("_age_years")).cast("int"),
        "years_on_the_job": F.when(F.col("_null_years_on_the_job").isNull(), F.col("_job_years")).cast("int"),
        "flag_own_car": F.when(car == "Y", 1).when(car == "N", 0).cast("int"),
    }


# The history state of a client (DESIGN §8), as columns of its loans' rows; kept on its last loan.
HISTORY = ("_amount_sum", "_last", "_birthday", "_job_start")


def add_features(accepted: DataFrame, *keep: str) -> DataFrame:
    """The features of each accepted loan as of its own date, with `_null_<feature>` reasons (DESIGN §5).

    `accepted` holds the raw text columns and the parsed keys (`_id`, `_loan_id`, `_loan_date`,
    `_loan_amount`); the result has `loan_id, id, loan_date`, the features, `status`, the null
    reasons, the history columns (`HISTORY`: the amounts summed up to this loan, whether it is the
    client's last, the dates parsed) and the `keep` columns. One window per client ordered by
    (loan_date, loan_id), with an explicit frame of all earlier rows, so same-day loans are ordered
    and both window features agree.
    """
    client = Window.partitionBy(CLIENT).orderBy(LOAN_DATE, LOAN_ID)
    earlier = client.rowsBetween(Window.unboundedPreceding, -1)
    so_far = client.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    reasons = with_attributes(accepted, F.col(LOAN_DATE))
    previous = F.count(F.lit(1)).over(earlier)
    features = {
        "nb_previous_loans": previous.cast("int"),
        "avg_amount_loans_previous": F.avg(LOAN_AMOUNT).over(earlier),
        **attribute_values(),
    }
    if tuple(features) != FEATURE_NAMES:
        raise RuntimeError(f"contract/spark.py has expressions for {tuple(features)}, the contract {FEATURE_NAMES}")
    return reasons.select(
        F.col(LOAN_ID).alias("loan_id"),
        F.col(CLIENT).alias("id"),
        F.col(LOAN_DATE).alias("loan_date"),
        *[column.alias(name) for name, column in features.items()],
        F.col("status").try_cast("int").alias("status"),
        F.when(previous == 0, "first_loan").alias("_null_avg_amount_loans_previous"),
        "_null_age",
        "_null_years_on_the_job",
        "_null_flag_own_car",
        # Summed in the window's order, as the next loan's average would sum them: the same double.
        F.sum(LOAN_AMOUNT).over(so_far).alias("_amount_sum"),
        F.lead(LOAN_ID).over(client).isNull().alias("_last"),
        "_birthday",
        "_job_start",
        *keep,
    )
