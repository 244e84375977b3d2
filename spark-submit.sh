#!/usr/bin/env bash
# The pipeline's command line with the Spark installed in .venv (the same as `.venv/bin/credit`):
#
#   ./spark-submit.sh [--master URL] JOB [ARGS...]      ./spark-submit.sh alone lists the jobs
#
# Spark jobs run under spark-submit, local[*] unless SPARK_MASTER or --master says otherwise, with the
# project's code shipped to the executors as a zip; the others run in plain Python (the table of
# commands, and which need Spark, is credit/commands.py). SPARK_DRIVER_MEMORY (default 6g) and
# SPARK_SUBMIT_OPTS_EXTRA (extra spark-submit options) tune a Spark run.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv=${VENV:-$root/.venv}
if [[ ! -x "$venv/bin/credit" ]]; then
    echo "spark-submit.sh: the project is not installed in $venv; run 'make install' first" >&2
    exit 2
fi
exec "$venv/bin/credit" "$@"
