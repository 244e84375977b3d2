"""The driver program that `spark-submit` runs: `spark_driver.py JOB [ARGS...]` (see `credit.launcher`)."""

import sys

from credit.commands import run

if __name__ == "__main__":
    sys.exit(run(sys.argv[1], sys.argv[2:]))
