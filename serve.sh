#!/usr/bin/env bash
# Serve the API under gunicorn (conf/gunicorn.conf.py) on ${BIND:-127.0.0.1:8000}.
#
#   ./serve.sh
#
# With no REDIS_URL (or [redis] url) configured, the embedded Redis is started (or reused) and is shut
# down, saving its data to var/redis, when the service stops (Ctrl-C); KEEP_REDIS=1 leaves it running.
# Prints example requests with a real client id.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$root"
venv=${VENV:-$root/.venv}
if [[ ! -x "$venv/bin/gunicorn" ]]; then
    echo "serve.sh: no gunicorn in $venv; run 'make install' first" >&2
    exit 2
fi
bind=${BIND:-127.0.0.1:8000}
export BIND=$bind

mode=$("$venv/bin/credit" redis ensure)
stop_redis() {
    if [[ "$mode" == embedded && -z "${KEEP_REDIS:-}" ]]; then
        "$venv/bin/credit" redis stop
    fi
}
trap stop_redis EXIT

if id=$("$venv/bin/credit" sample-id 2>/dev/null); then
    cat <<EXAMPLES

Serving on http://$bind (Ctrl-C stops it). Try:
  curl http://$bind/ready
  curl http://$bind/online_feature_store/client_id=$id
  curl http://$bind/credit_risk/client_id=$id
  curl http://$bind/v1/clients/$id/credit-risk
  curl -X POST -H 'Content-Type: application/json' -d '{"client_ids": [$id, 1]}' http://$bind/v1/credit-risk/batch
  # a new loan application of this client today (its features as of today, scored on the request):
  curl -X POST -H 'Content-Type: application/json' -d '{"client_id": $id}' http://$bind/v1/applications/credit-risk
  # a first-time applicant, and an application on a given date with the request's attributes:
  curl -X POST -H 'Content-Type: application/json' -d '{"applications": [{"client_id": 9000000001, "birthday": "1990-05-10", "job_start_date": "2018-03-01", "flag_own_car": "N"}, {"client_id": $id, "application_date": "2030-01-15", "flag_own_car": "Y"}]}' http://$bind/v1/applications/credit-risk/batch
  API description: http://$bind/docs   metrics: http://$bind/metrics

EXAMPLES
else
    echo "No version is published yet: /ready answers 503 until './spark-submit.sh materialize' runs." >&2
fi

# Not exec: the EXIT trap stops the embedded Redis once gunicorn has shut down.
"$venv/bin/gunicorn" -c conf/gunicorn.conf.py "serving.app:create_app()" || true
