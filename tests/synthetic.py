"""Small synthetic features shaped like the feature job's output, for fast model tests."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def synthetic_features(folder: Path, clients: int = 300, seed: int = 0) -> Path:
    """A features/ folder shaped like the job's output, with a label that depends on the features."""
    rng = np.random.default_rng(seed)
    rows = []
    loan_id = 1
    for client in range(1, clients + 1):
        age0, car = int(rng.integers(20, 70)), int(rng.random() < 0.4)
        employed = rng.random() < 0.8
        start = dt.date(2019, 1, 1)
        total = 0.0
        for k in range(int(rng.integers(3, 25))):
            loan_date = start + dt.timedelta(days=int(rng.integers(0, 700)))
            amount = float(100 + rng.lognormal(3, 1))
            risk = -2.2 + 1.5 * (k == 0) + 0.04 * max(0, 35 - age0) + 0.8 * (not employed) - 0.5 * car
            late = int(rng.random() < 1 / (1 + np.exp(-risk)))
            rows.append((loan_id, client, loan_date, k, total / k if k else None,
                         age0 if rng.random() > 0.02 else None, int(rng.integers(0, 20)) if employed else None,
                         car, late))  # fmt: skip
            total += amount
            loan_id += 1
    schema = pa.schema([("loan_id", pa.int64()), ("id", pa.int64()), ("loan_date", pa.date32()),
                        ("nb_previous_loans", pa.int32()), ("avg_amount_loans_previous", pa.float64()),
                        ("age", pa.int32()), ("years_on_the_job", pa.int32()), ("flag_own_car", pa.int32()),
                        ("status", pa.int32())])  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([dict(zip(schema.names, r, strict=True)) for r in rows], schema)
    pq.write_table(table, folder / "part-00000.parquet")
    return folder
