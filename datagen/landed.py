"""Write a CSV of new loans into the stream's landing folder: a feed for the demo and the benchmark.

    credit land [--landing data/landing] [--loans 20] [--new-clients 0] [--client-id ID] [--date YYYY-MM-DD]

Each loan goes to a client of the sample (ids 5008804 ..), `--new-clients` of them to clients the sample
does not hold (their first loan), or all to `--client-id` (with its birthday, job start and car as the
online store's active version holds them), with the 24 raw columns of DESIGN §4, dated `--date` (default today,
UTC) and loan ids from `--first-loan-id` (default: from the clock, so that runs do not collide). The file
is written beside its final name and renamed into place, as anything feeding the landing folder must:
the stream reads `*.csv` files only, each once. Prints the file's path.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from conf import Settings, command_settings, emit
from contract import RAW_COLUMNS
from datagen.generate import FIRST_CLIENT_ID, _fmt_float, _line, _make_client

# Landed loan ids start far above the sample's (1 .. ~10^6, and 10^12 .. for its bad rows).
LANDED_LOAN_IDS = 2 * 10**12


def landed_rows(loans: int, seed: int, first_loan_id: int, on: dt.date, clients: int, new_clients: int = 0
                ) -> list[dict[str, str]]:  # fmt: skip
    """`loans` new loans (the last `new_clients` of them to clients beyond the sample's `clients`)."""
    rng = random.Random(seed)
    rows = []
    for index in range(loans):
        first_time = index >= loans - new_clients
        client_id = FIRST_CLIENT_ID + clients + index if first_time else FIRST_CLIENT_ID + rng.randrange(clients)
        row = dict(_make_client(rng, client_id).fields)
        amount = round(100 + rng.lognormvariate(2.9, 1.1), 2)
        row.update(loan_id=str(first_loan_id + index), status="", loan_date=on.isoformat(),
                   loan_amount=_fmt_float(amount))  # fmt: skip
        rows.append(row)
    return rows


def of_client(rows: list[dict[str, str]], client_id: int, settings: Settings) -> list[dict[str, str]]:
    """The rows given to one client, with its attributes from the online store's active version."""
    from serving import embedded
    from serving.store import OnlineStore

    store = OnlineStore.from_settings(settings.redis, embedded.resolve_url(settings.redis, "service"))
    try:
        _, record = store.read(client_id)
    finally:
        store.close()
    if record is None:
        raise SystemExit(f"credit land: client {client_id} is not in the active version")
    car = {1: "Y", 0: "N"}.get(record.get("flag_own_car", -1), "")
    attributes = {"id": str(client_id), "birthday": record.get("birthday", ""),
                  "job_start_date": record.get("job_start_date", ""), "flag_own_car": car}  # fmt: skip
    return [row | attributes for row in rows]


def write_landed(folder: Path, rows: Sequence[dict[str, str]], name: str) -> Path:
    """Write rows as `folder/name` atomically (a hidden temporary file, then a rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    tmp = folder / f".{name}.tmp"
    with tmp.open("w", encoding="utf-8", newline="") as out:
        out.write(",".join(RAW_COLUMNS) + "\n")
        out.writelines(_line(row) for row in rows)
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    settings = command_settings()
    parser = argparse.ArgumentParser(prog="credit land", description=__doc__.split("\n\n")[0])
    parser.add_argument("--landing", type=Path, default=Path(settings.stream.landing), help="the landing folder")
    parser.add_argument("--loans", type=int, default=20, help="loans in the file")
    parser.add_argument("--new-clients", type=int, default=0, help="of which first loans of new clients")
    parser.add_argument("--client-id", type=int, default=None, help="give every loan to this client")
    parser.add_argument("--clients", type=int, default=settings.sample.clients, help="clients in the sample")
    parser.add_argument("--date", default=None, help="the loans' date, yyyy-MM-dd (default today, UTC)")
    parser.add_argument("--first-loan-id", type=int, default=None, help="the first loan id (default: from the clock)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock)")
    args = parser.parse_args(argv)
    if args.loans < 1 or not 0 <= args.new_clients <= args.loans:
        parser.error("--loans must be at least 1, --new-clients between 0 and --loans")
    try:
        on = dt.date.fromisoformat(args.date) if args.date else dt.datetime.now(dt.UTC).date()
    except ValueError:
        parser.error(f"--date: expected yyyy-MM-dd, got {args.date!r}")
    stamp = time.time_ns() // 1000
    first = args.first_loan_id if args.first_loan_id is not None else LANDED_LOAN_IDS + stamp % 10**11 * 100
    seed = args.seed if args.seed is not None else stamp
    rows = landed_rows(args.loans, seed, first, on, args.clients, args.new_clients)
    if args.client_id is not None:
        rows = of_client(rows, args.client_id, settings)
    emit(str(write_landed(args.landing, rows, f"loans-{first}.csv")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
