"""Entry point of `spark-submit.sh`: `main.py JOB [ARGS...]`, each job a `main(argv) -> int`."""

from __future__ import annotations

import importlib
import sys

# Jobs that need Spark run under spark-submit; the others run in plain Python (see spark-submit.sh).
JOBS = {
    "features": "spark_jobs.features:main",
    "train": "model.train:main",
    "approve": "model.registry:main_approve",
    "models": "model.registry:main_models",
    "backtest": "model.backtest:main",
    "materialize": "spark_jobs.materialize:main",
    "versions": "serving.cli:main_versions",
    "publish": "serving.cli:main_publish",
    "sample-id": "serving.cli:main_sample_id",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in JOBS:
        print(f"usage: spark-submit.sh JOB [ARGS...]; JOB is one of: {', '.join(JOBS)}", file=sys.stderr)
        return 2
    module, function = JOBS[argv[0]].split(":")
    return int(getattr(importlib.import_module(module), function)(argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
