"""Small synthetic features shaped like the feature job's outputs, for fast model and store tests."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FEATURES_SCHEMA = pa.schema([
    ("loan_id", pa.int64()), ("id", pa.int64()), ("loan_date", pa.date32()), ("nb_previous_loans", pa.int32()),
    ("avg_amount_loans_previous", pa.float64()), ("age", pa.int32()), ("years_on_the_job", pa.int32()),
    ("flag_own_car", pa.int32()), ("status", pa.int32()),
])  # fmt: skip
CLIENTS_SCHEMA = pa.schema([
    ("id", pa.int64()), ("loans", pa.int32()), ("amount_sum", pa.float64()), ("last_loan_id", pa.int64()),
    ("last_loan_date", pa.date32()), ("birthday", pa.string()), ("job_start_date", pa.string()),
    ("flag_own_car", pa.int32()),
])  # fmt: skip


def synthetic_features(folder: Path, clients: int = 300, seed: int = 0) -> Path:
    """A features/ folder shaped like the job's output, with a label that depends on the features, and its
    clients/ history state beside it (as the feature job writes both)."""
    rng = np.random.default_rng(seed)
    rows, history = [], []
    loan_id = 1
    for client in range(1, clients + 1):
        age0, car = int(rng.integers(20, 70)), int(rng.random() < 0.4)
        employed = rng.random() < 0.8
        start = dt.date(2019, 1, 1)
        total = 0.0
        loans = []
        for k in range(int(rng.integers(3, 25))):
            # Dates drawn apart from k, so that a later window has no more history than an earlier one: the
            # features do not drift with time (the backtest tests rely on it).
            loan_date = start + dt.timedelta(days=int(rng.integers(0, 700)))
            amount = float(100 + rng.lognormal(3, 1))
            risk = -2.2 + 1.5 * (k == 0) + 0.04 * max(0, 35 - age0) + 0.8 * (not employed) - 0.5 * car
            late = int(rng.random() < 1 / (1 + np.exp(-risk)))
            rows.append((loan_id, client, loan_date, k, total / k if k else None,
                         age0 if rng.random() > 0.02 else None, int(rng.integers(0, 20)) if employed else None,
                         car, late))  # fmt: skip
            loans.append((loan_date, loan_id, amount))
            total += amount
            loan_id += 1
        loans.sort()
        amount_sum = 0.0
        for _, _, amount in loans:  # summed in (loan_date, loan_id) order, as the feature job sums them
            amount_sum += amount
        first, (last_date, last_id, _) = loans[0][0], loans[-1]
        birthday = dt.date(first.year - age0, 6, 15).isoformat()
        job_start = (first - dt.timedelta(days=1500)).isoformat() if employed else "3021-09-18"
        history.append((client, len(loans), amount_sum, last_id, last_date, birthday, job_start, car))
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([dict(zip(FEATURES_SCHEMA.names, r, strict=True)) for r in rows], FEATURES_SCHEMA)
    pq.write_table(table, folder / "part-00000.parquet")
    clients_folder = folder.parent / "clients"
    clients_folder.mkdir(parents=True, exist_ok=True)
    state = pa.Table.from_pylist([dict(zip(CLIENTS_SCHEMA.names, r, strict=True)) for r in history], CLIENTS_SCHEMA)
    pq.write_table(state, clients_folder / "part-00000.parquet")
    return folder
