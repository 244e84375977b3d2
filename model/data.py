"""The labelled loans a model is trained and checked on: the feature job's `features/` Parquet.

Read with pyarrow in plain Python (no Spark); dates stay `datetime.date`, so 3021-09-18 is a date too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from contract import FEATURE_NAMES

LABEL = "status"


class FeaturesError(ValueError):
    """The features folder is missing, unreadable, or not the feature job's output."""


@dataclass(frozen=True)
class Dataset:
    frame: pd.DataFrame  # the feature columns, `id`, `loan_date` and `status`
    location: str
    until: dt.date | None

    @cached_property
    def fingerprint(self) -> str:
        """Hashed only when asked (the model card); the backtest reads features without it."""
        return fingerprint(Path(self.location))


def fingerprint(folder: Path) -> str:
    """SHA-256 over the names and bytes of the Parquet files of a folder."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.parquet")):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def load_features(folder: str | Path, until: dt.date | None = None, allow_empty: bool = False) -> Dataset:
    """The labelled loans of the feature job's output, up to `until` (dates stay `datetime.date`)."""
    path = Path(folder)
    if not path.is_dir() or not any(path.rglob("*.parquet")):
        raise FeaturesError(f"no features at {path}: expected the feature job's features/ folder of Parquet files")
    try:
        table = pq.read_table(path, columns=["id", "loan_date", *FEATURE_NAMES, LABEL])
    except (pa.ArrowException, OSError) as exc:
        raise FeaturesError(f"cannot read features at {path}: {exc}") from None
    frame = table.to_pandas(date_as_object=True)
    frame = frame[frame[LABEL].notna()]
    if until is not None:
        frame = frame[frame["loan_date"] <= until]
    if not allow_empty and (frame.empty or frame[LABEL].nunique() < 2):
        raise FeaturesError(f"features at {path} (until {until}) hold no labelled loans of both classes")
    frame = frame.astype({name: "float64" for name in FEATURE_NAMES}).astype({LABEL: "int64"})
    return Dataset(frame.reset_index(drop=True), str(path), until)
