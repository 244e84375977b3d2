"""The raw loans CSV (DESIGN §4): its columns, how a value is read, and why a row is rejected.

Every value is read as text and trimmed of `TRIMMED`; an empty value is missing. The patterns below
are the whole definition of a well-formed value: the Spark job (`contract.spark`) and the Python
readers (the service's ids) both use them.
"""

from __future__ import annotations

import datetime as dt
import math
import re

RAW_COLUMNS: tuple[str, ...] = (
    "loan_id", "id", "code_gender", "flag_own_car", "flag_own_realty", "cnt_children",
    "amt_income_total", "name_income_type", "name_education_type", "name_family_status",
    "name_housing_type", "days_birth", "days_employed", "flag_mobil", "flag_work_phone",
    "flag_phone", "flag_email", "occupation_type", "cnt_fam_members", "status", "birthday",
    "job_start_date", "loan_date", "loan_amount",
)  # fmt: skip

# Rejection reasons in the order they are checked: a row gets the first that applies. A malformed
# record (more or fewer fields than its file's header) has no reliable column to check.
REJECT_REASONS: tuple[str, ...] = (
    "malformed_record", "invalid_id", "invalid_loan_id", "invalid_loan_date", "invalid_loan_amount", "invalid_status",
    "future_loan_date", "duplicate_loan_id",
)  # fmt: skip

# Ids (`id`, `loan_id`, the service's client ids) are whole numbers in 1 .. MAX_ID (a signed 64-bit long).
MAX_ID = 2**63 - 1
# Characters trimmed from both ends of every raw value.
TRIMMED = " \t\r\n"

# A whole number is plain digits (`007` is 7; `7.0`, `+7`, `1e3` are not whole numbers).
WHOLE_NUMBER = r"^[0-9]+$"
# A decimal is plain digits with an optional sign, point and exponent (`1,000`, `NaN` are not).
DECIMAL_NUMBER = r"^[+-]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][+-]?[0-9]+)?$"
# A date is `yyyy-MM-dd` and a real calendar day in years 0001 .. 9999.
ISO_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"

# Compiled once: the service parses a client id and dates on every request (a pattern's text looked up in
# `re`'s cache costs about as much as the match).
_WHOLE_NUMBER, _DECIMAL_NUMBER, _ISO_DATE = (re.compile(p, re.ASCII) for p in (WHOLE_NUMBER, DECIMAL_NUMBER, ISO_DATE))


def parse_whole_number(text: str | None) -> int | None:
    """The Python form of a whole number in 1 .. MAX_ID (plain ASCII digits), else None."""
    if text is None or not _WHOLE_NUMBER.fullmatch(text):
        return None
    significant = text.lstrip("0")
    if len(significant) > len(str(MAX_ID)):  # also keeps int() away from huge strings
        return None
    value = int(significant or "0")
    return value if 1 <= value <= MAX_ID else None


def parse_decimal(text: str | None) -> float | None:
    """The Python form of a finite decimal number (optionally with an exponent), else None."""
    if text is None or not _DECIMAL_NUMBER.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def parse_date(text: str | None) -> dt.date | None:
    """The Python form of a real calendar date written `yyyy-MM-dd` (years 0001 .. 9999), else None."""
    if text is None or not _ISO_DATE.fullmatch(text):
        return None
    try:
        return dt.date(int(text[:4]), int(text[5:7]), int(text[8:]))
    except ValueError:
        return None
