#!/usr/bin/env bash
# Run a batch job of the pipeline with the Spark installed in .venv:
#
#   ./spark-submit.sh [--master URL] JOB [ARGS...]      JOB: features, train, approve, models,
#                                                       backtest, materialize, versions, publish, sample-id
#
# The master is local[*] unless SPARK_MASTER or --master says otherwise; the project's code is
# shipped to the executors as a zip (--py-files). SPARK_DRIVER_MEMORY (default 6g) and
# SPARK_SUBMIT_OPTS_EXTRA (extra spark-submit options, space separated) tune the run.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv=${VENV:-$root/.venv}
if [[ ! -x "$venv/bin/spark-submit" ]]; then
    echo "spark-submit.sh: no Spark in $venv; run 'make install' first" >&2
    exit 2
fi

master=${SPARK_MASTER:-local[*]}
if [[ "${1:-}" == "--master" ]]; then
    master=${2:?--master needs a URL}
    shift 2
fi
if [[ $# -lt 1 ]]; then
    "$venv/bin/python" "$root/spark_jobs/main.py"  # prints the usage
    exit 2
fi

case "$1" in
    train|approve|models|backtest|versions|publish|sample-id)
        # No Spark needed: the model stages read Parquet with pyarrow, the online-store commands talk to
        # Redis; they run in plain Python.
        export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
        exec "$venv/bin/python" "$root/spark_jobs/main.py" "$@"
        ;;
esac

export SPARK_LOCAL_IP=${SPARK_LOCAL_IP:-127.0.0.1}
export PYSPARK_PYTHON=${PYSPARK_PYTHON:-$venv/bin/python}
export PYSPARK_DRIVER_PYTHON=${PYSPARK_DRIVER_PYTHON:-$venv/bin/python}

code_zip="$root/var/dist/credit_risk_code.zip"
"$venv/bin/python" "$root/tools/package_code.py" "$code_zip"

# shellcheck disable=SC2086
exec "$venv/bin/spark-submit" \
    --master "$master" \
    --driver-memory "${SPARK_DRIVER_MEMORY:-6g}" \
    --conf spark.ui.showConsoleProgress=false \
    --driver-java-options "-Dlog4j2.configurationFile=file:$root/conf/log4j2.properties" \
    --py-files "$code_zip" \
    ${SPARK_SUBMIT_OPTS_EXTRA:-} \
    "$root/spark_jobs/main.py" "$@"
