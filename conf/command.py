"""Start-up of a command: logging configured once, the settings loaded; and where its result goes.

A command logs to stderr and prints its result (a version, a table) on stdout, so that
`v=$(./spark-submit.sh materialize ...)` gets the version alone. Under spark-submit, the driver's
stdout and stderr are merged by Spark, so the launcher names a result file in `CREDIT_RESULT_FILE`
and prints it on stdout once the job is done (see `credit.launcher`).
"""

from __future__ import annotations

import logging
import os

from conf.settings import Settings, load_settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
RESULT_FILE_ENV = "CREDIT_RESULT_FILE"
# Set by the launcher for a job that stops gracefully (the stream): the driver writes its pid to this
# file, and the launcher passes SIGTERM and Ctrl-C to it rather than to spark-submit.
DRIVER_PID_ENV = "CREDIT_DRIVER_PID_FILE"


def configure_logging() -> None:
    """INFO and above to stderr, once per process; py4j's connection chatter kept out."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("py4j").setLevel(logging.WARNING)


def command_settings() -> Settings:
    """Configure logging and load the settings; a SettingsError (exit code 2) names a wrong value."""
    configure_logging()
    return load_settings()


def emit(text: str) -> None:
    """The command's result: on stdout, or into the launcher's result file under spark-submit."""
    path = os.environ.get(RESULT_FILE_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(text + "\n")
    else:
        print(text, flush=True)
