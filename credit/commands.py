"""Every command of the pipeline, listed once: `credit [--master URL] JOB [ARGS...]`.

    credit                       lists the commands
    credit JOB --help            a command's arguments

Jobs marked Spark run under `spark-submit` with the Spark installed beside this Python (the code is
shipped to the executors as a zip; `--master` or SPARK_MASTER picks the cluster, default local[*]);
the others run in plain Python and start no JVM. `./spark-submit.sh` is this command.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from conf import SettingsError
from conf.command import configure_logging

log = logging.getLogger(__name__)

# Set by the launcher in the environment of the spark-submit it starts: run the job in this process.
IN_SPARK_ENV = "CREDIT_IN_SPARK_SUBMIT"


@dataclasses.dataclass(frozen=True)
class Command:
    target: str  # "module:function", a `main(argv) -> int`
    spark: bool  # runs under spark-submit (needs a JVM)
    help: str
    # For a Spark job: "module:function" `check(argv) -> int`, run in plain Python before spark-submit
    # so that bad arguments or missing inputs are refused without starting a JVM.
    check: str | None = None
    # A Spark job that stops cleanly on SIGTERM or Ctrl-C (see `credit.launcher.submit`).
    graceful: bool = False


COMMANDS: dict[str, Command] = {
    "sample": Command("datagen.generate:main", False, "generate a sample loans CSV"),
    "features": Command(
        "spark_jobs.features:main", True, "raw loans CSV -> features, quarantine, report", "spark_jobs.features:check"
    ),
    "land": Command("datagen.landed:main", False, "write a CSV of new loans into the stream's landing folder"),
    "report": Command("spark_jobs.report:main", False, "print a feature run's outputs and report summary"),
    "train": Command("model.train:main", False, "train a candidate model and write its card; prints the version"),
    "approve": Command("model.cli:main_approve", False, "approve a model version (also the rollback)"),
    "models": Command("model.cli:main_models", False, "list the model versions and which one is approved"),
    "backtest": Command("model.backtest:main", False, "score a later window with the approved model; drift"),
    "materialize": Command(
        "spark_jobs.materialize:main",
        True,
        "publish every client's latest features to Redis",
        "spark_jobs.materialize:check",
    ),
    "stream": Command(
        "spark_jobs.stream:main",
        True,
        "apply loans landing as CSV files to the online state, exactly once",
        "spark_jobs.stream:check",
        graceful=True,
    ),
    "versions": Command("serving.cli:main_versions", False, "list the online store's versions"),
    "publish": Command("serving.cli:main_publish", False, "point readers at another complete version (rollback)"),
    "sample-id": Command("serving.cli:main_sample_id", False, "print one client id of the active version"),
    "verify-online": Command("serving.verify:main", False, "check stored clients against the offline outputs"),
    "redis": Command("serving.embedded:main", False, "the embedded Redis: start|stop|status|url|ensure|cli"),
    "spark-classes": Command(
        "credit.class_archive:main", False, "record the class archive Spark jobs start from (make install runs it)"
    ),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {'(Spark) ' if c.spark else ''}{c.help}" for name, c in COMMANDS.items()]
    return "usage: credit [--master URL] JOB [ARGS...]; JOB is one of:\n" + "\n".join(lines)


def run(name: str, argv: Sequence[str], target: str | None = None) -> int:
    """Run command `name` (or its `target` function) in this process; a settings error is exit code 2."""
    module, function = (target or COMMANDS[name].target).split(":")
    try:
        return int(getattr(importlib.import_module(module), function)(list(argv)))
    except SettingsError as exc:
        configure_logging()
        log.error("bad settings: %s", exc)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    master = os.environ.get("SPARK_MASTER", "local[*]")
    if args[:1] == ["--master"]:
        if len(args) < 2:
            print("credit: --master needs a URL", file=sys.stderr)
            return 2
        master, args = args[1], args[2:]
    if not args or args[0] in ("-h", "--help"):
        print(usage(), file=sys.stderr if not args else sys.stdout)
        return 2 if not args else 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"credit: unknown command {name!r}\n{usage()}", file=sys.stderr)
        return 2
    command = COMMANDS[name]
    if command.spark and not os.environ.get(IN_SPARK_ENV):
        from credit import launcher

        if command.check and (refused := run(name, rest, command.check)):
            return refused
        return launcher.submit(name, rest, master, command.graceful)
    return run(name, rest)


if __name__ == "__main__":
    sys.exit(main())
