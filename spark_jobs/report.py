"""Print where a feature run's outputs are and its report's summary: `credit report OUT`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def summary(report: dict[str, Any]) -> str:
    """A few readable lines from a feature job's report."""
    rejected = ", ".join(f"{r} {n}" for r, n in report["rejected_by_reason"].items() if n) or "none"
    nulls = "; ".join(
        f"{feature}: " + ", ".join(f"{r} {n}" for r, n in reasons.items() if n)
        for feature, reasons in report["nulls"].items()
        if any(reasons.values())
    )
    return (
        f"read {report['rows_read']} rows: {report['rows_accepted']} accepted, "
        f"{report['duplicates_dropped']} exact duplicates dropped, {report['rows_rejected']} rejected "
        f"({rejected})\n{report['clients']} clients, loans {report['first_loan_date']} .. "
        f"{report['last_loan_date']}, {report['status_unknown']} without a known status\n"
        f"null features: {nulls or 'none'}\nrun time {report['run_seconds']}s"
    )


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: credit report OUTPUT_FOLDER", file=sys.stderr)
        return 2
    out = Path(argv[0])
    path = out / "report.json"
    if not path.is_file():
        print(f"no report at {path}: run the feature job first", file=sys.stderr)
        return 1
    report = json.loads(path.read_text(encoding="utf-8"))
    print(
        f"features:   {out / 'features'}\nquarantine: {out / 'quarantine'}\nreport:     {path}\n"
        f"clients:    {out / 'clients'}"
    )
    print(summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
