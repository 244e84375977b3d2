"""gunicorn settings of the service: `gunicorn -c conf/gunicorn.conf.py "serving.app:create_app()"`.

Environment: BIND (default 127.0.0.1:8000), WEB_WORKERS (default: the CPU count), WEB_CONNECTIONS
(default 1000 per worker), PROMETHEUS_MULTIPROC_DIR (default var/prometheus), ACCESS_LOG.

The workers are gevent's: each connection is a cheap greenlet, so slow or idle clients (a client
trickling its headers, an idle keep-alive) hold a greenlet, never a worker or a thread, and requests
waiting on Redis do not queue behind each other. `worker_connections` bounds the connections per
worker; beyond it, new ones wait in the listen backlog.
"""

import os
import shutil
from pathlib import Path

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_WORKERS", os.cpu_count() or 1))
worker_class = "gevent"
worker_connections = int(os.environ.get("WEB_CONNECTIONS", "1000"))
timeout = 30
graceful_timeout = 10
keepalive = 5
accesslog = os.environ.get("ACCESS_LOG") or None  # "-" logs every request to stdout
errorlog = "-"
control_socket_disable = True  # not used; it would otherwise be created in the home folder
# Every method reaches the app, which answers in JSON (a 405 with Allow), instead of gunicorn's HTML 400.
permit_unconventional_http_method = True
loglevel = "info"

# Each worker keeps its metrics in this folder; /metrics adds them up (prometheus_client multiprocess mode).
metrics_dir = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(Path("var") / "prometheus"))).resolve()
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)


def on_starting(server):
    """Start with empty metrics: values of an earlier run's workers would be added up otherwise."""
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)


def worker_exit(server, worker):
    """The worker's last answers into its metrics file (they are written there at least every second)."""
    from serving import metrics

    metrics.flush()


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
