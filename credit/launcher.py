"""Run a Spark job of the pipeline under `spark-submit`, with the Spark installed beside this Python.

The project's packages travel to the executors as a zip (`--py-files`), so the same command runs on
a cluster unchanged. `SPARK_DRIVER_MEMORY` (default 6g) and `SPARK_SUBMIT_OPTS_EXTRA` (extra
spark-submit options, shell-quoted) tune the run. Spark merges the driver's stdout into its log, so
the job's log goes to stderr and its result (see `conf.command.emit`) is printed on stdout at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from conf.command import DRIVER_PID_ENV, RESULT_FILE_ENV

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("conf", "contract", "credit", "datagen", "model", "serving", "spark_jobs")
CODE_SUFFIXES = (".py", ".toml")
DRIVER = Path(__file__).with_name("spark_driver.py")
LOG_CONFIG = ROOT / "conf" / "log4j2.properties"
# The JVMs that do the work (the driver, which is also the executor in local mode, and a cluster's
# executors) collect garbage with the parallel collector: the jobs are batch work holding large caches,
# where it ends the feature job about 6% sooner than the default G1 (8M loans, 2 cores; a bare CSV
# read-and-write gains nothing). Their just-in-time compiler waits three times longer than its default
# before compiling a method: a job's JVM is cold, and on a few cores the compiler threads take time from
# the tasks for methods run only briefly (the sample's 780k loans: the job about 1 s sooner, 6 of 8
# alternating runs; 8M loans: no change). `--driver-java-options` or `spark.executor.extraJavaOptions`
# given in SPARK_SUBMIT_OPTS_EXTRA replace these.
JVM_OPTIONS = "-XX:+UseParallelGC -XX:CompileThresholdScaling=3"
# The driver's compiler also follows these directives: its optimizing compiler leaves alone the code that
# does a job's one-off work (Spark's code generator, serialization, bytecode tools; see the file). A file on
# the driver's machine, so a cluster's executors run without it. The JVM's note that it read them goes to
# its console, silenced with the rest of that console (`-XX:-DisplayVMOutput`: a SIGQUIT thread dump
# prints nothing; `jcmd PID Thread.print` gives one). Warnings and errors still reach stderr.
JIT_DIRECTIVES = ROOT / "conf" / "jit-directives.json"
# The driver JVM maps the classes Spark loads from this class-data sharing archive, parsed and verified
# once by `credit spark-classes` (`make install` runs it): see `credit.class_archive`. A JVM that cannot
# use it (another Java, other jars) ignores it, and its messages about that are silenced.
CLASS_ARCHIVE = Path(sys.prefix) / "spark-classes.jsa"
QUIET_CDS = "-Xlog:cds=off -Xlog:cds+dynamic=off"


def fingerprint_file(archive: Path) -> Path:
    return archive.with_name(archive.name + ".fingerprint")


def _stamp(path: Path) -> str:
    stat = path.stat()
    return f"{path} {stat.st_size} {stat.st_mtime_ns}"


def fingerprint() -> str:
    """What an archive belongs to, as spark-submit would start the driver now: the Java (`JAVA_HOME`'s, else
    the one on PATH) by its JVM library, and the Spark jars by name and size; "" when either is not found.
    Reading it costs about 2 ms (no JVM is started)."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    spark = importlib.util.find_spec("pyspark")
    if not java or not Path(java).exists() or spark is None or not spark.submodule_search_locations:
        return ""
    java_home = Path(java).resolve().parent.parent
    jvm = sorted(java_home.glob("lib/server/libjvm.*")) or [Path(java).resolve()]
    jars = sorted(Path(next(iter(spark.submodule_search_locations)), "jars").glob("*.jar"))
    listing = "\n".join(f"{jar.name} {jar.stat().st_size}" for jar in jars)
    return f"java {_stamp(jvm[0])}\njars {len(jars)} {hashlib.sha256(listing.encode()).hexdigest()[:16]}\n"


def stale(archive: Path) -> str:
    """Why the archive may not serve the driver a job would start now ("" when it does): recorded for another
    Java or other Spark jars, or before its fingerprint was kept beside it."""
    try:
        recorded = fingerprint_file(archive).read_text(encoding="utf-8")
    except OSError:
        return "has no fingerprint of the Java and Spark jars it was recorded for"
    return "" if recorded == fingerprint() else "was recorded for another Java or other Spark jars"


def class_archive_options(record_to: Path | None = None) -> str:
    """The driver's JVM options for the class archive: record it to `record_to` at exit, else map it when
    there is one (quoted: spark-submit splits these options at spaces outside quotes), saying so on stderr
    when it looks stale (the JVM would ignore it silently)."""
    if record_to is not None:
        return f'"-XX:ArchiveClassesAtExit={record_to}" {QUIET_CDS}'
    if CLASS_ARCHIVE.is_file() and '"' not in str(CLASS_ARCHIVE):
        if why := stale(CLASS_ARCHIVE):
            print(f"credit: the class archive {CLASS_ARCHIVE} {why}: Spark jobs may start about 3 s slower until "
                  "'./spark-submit.sh spark-classes' records it again (about 35 s)", file=sys.stderr)  # fmt: skip
        return f'"-XX:SharedArchiveFile={CLASS_ARCHIVE}" {QUIET_CDS}'
    return ""


def compiler_options() -> str:
    """The driver's JVM options for the compiler directives (quoted, as the class archive's), when the file is
    there."""
    if JIT_DIRECTIVES.is_file() and '"' not in str(JIT_DIRECTIVES):
        return f'-XX:+UnlockDiagnosticVMOptions -XX:-DisplayVMOutput "-XX:CompilerDirectivesFile={JIT_DIRECTIVES}"'
    return ""


def package_code(target: Path) -> Path:
    """Zip the project's packages (Python files and the settings file) for `--py-files`."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for package in PACKAGES:
            for path in sorted((ROOT / package).rglob("*")):
                if path.suffix in CODE_SUFFIXES and "__pycache__" not in path.parts:
                    archive.write(path, path.relative_to(ROOT).as_posix())
    return target


def spark_submit_command(
    job: str, args: Sequence[str], master: str, code: Path, record_classes: Path | None = None
) -> list[str]:
    """The spark-submit command of `job` (`record_classes`: record the driver's class archive there)."""
    spark_submit = Path(sys.executable).parent / "spark-submit"
    if not spark_submit.exists():
        raise FileNotFoundError(f"no spark-submit beside {sys.executable}: run 'make install' first")
    return [
        str(spark_submit), "--master", master,
        "--driver-memory", os.environ.get("SPARK_DRIVER_MEMORY", "6g"),
        "--conf", "spark.ui.showConsoleProgress=false",
        # A URI holds no space, so a checkout path with a space survives spark-submit's option splitting.
        "--driver-java-options",
        " ".join(filter(None, (JVM_OPTIONS, compiler_options(), class_archive_options(record_classes),
                               f"-Dlog4j2.configurationFile={LOG_CONFIG.as_uri()}"))),
        "--conf", f"spark.executor.extraJavaOptions={JVM_OPTIONS}",
        "--py-files", str(code),
        *shlex.split(os.environ.get("SPARK_SUBMIT_OPTS_EXTRA", "")),
        str(DRIVER), job, *args,
    ]  # fmt: skip


def submit(
    job: str, args: Sequence[str], master: str, graceful: bool = False, record_classes: Path | None = None,
    log: int | None = None,
) -> int:  # fmt: skip
    """Run `job` under spark-submit; its exit code. The job's result is printed on stdout at the end.
    `record_classes` records the class archive there (see `credit.class_archive`); `log` is the file
    descriptor spark-submit's output goes to (default stderr).

    `graceful`: the job stops cleanly on SIGTERM (a stream between micro-batches). spark-submit then runs
    in a session of its own, so that Ctrl-C reaches this process only, and both signals go to the job's
    driver (which wrote its pid): a signal to spark-submit would stop the JVM under the job at once.
    """
    from credit.commands import IN_SPARK_ENV

    with tempfile.TemporaryDirectory(prefix="credit-submit-") as work:
        result = Path(work) / "result.txt"
        result.touch()
        pid_file = Path(work) / "driver.pid"
        try:
            zipped = package_code(Path(work) / "credit_risk_code.zip")
            command = spark_submit_command(job, args, master, zipped, record_classes)
        except FileNotFoundError as exc:
            print(f"credit: {exc}", file=sys.stderr)
            return 2
        env = {
            **os.environ,
            "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
            "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable),
            "PYSPARK_DRIVER_PYTHON": os.environ.get("PYSPARK_DRIVER_PYTHON", sys.executable),
            IN_SPARK_ENV: "1",
            RESULT_FILE_ENV: str(result),
            **({DRIVER_PID_ENV: str(pid_file)} if graceful else {}),
        }
        process = subprocess.Popen(
            command, env=env, stdout=sys.stderr.fileno() if log is None else log, stderr=log, start_new_session=graceful
        )

        def forward(signum: int, frame: FrameType | None) -> None:
            driver = pid_file.read_text(encoding="utf-8").strip() if graceful and pid_file.exists() else ""
            if driver:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(driver), signal.SIGTERM)
            else:
                process.send_signal(signal.SIGTERM if graceful else signum)

        signals = (signal.SIGTERM, signal.SIGINT) if graceful else (signal.SIGTERM,)
        previous = {s: signal.signal(s, forward) for s in signals}
        try:
            code = process.wait()
        except KeyboardInterrupt:  # Ctrl-C reached spark-submit too (same process group): wait for it
            code = process.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        sys.stdout.write(result.read_text(encoding="utf-8"))
        sys.stdout.flush()
        return code
