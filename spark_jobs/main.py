"""Entry point that `spark-submit.sh` hands to `spark-submit`: `main.py JOB [ARGS...]`."""

from __future__ import annotations

import importlib
import sys

# Each job is a module with `main(argv) -> int`.
JOBS = {
    "features": "spark_jobs.features",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in JOBS:
        print(f"usage: spark-submit.sh JOB [ARGS...]; JOB is one of: {', '.join(JOBS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(JOBS[argv[0]])
    return int(module.main(argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
