"""The one command line: `credit` and `./spark-submit.sh`, as a user runs them."""

from __future__ import annotations

import itertools
import json
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import SimpleNamespace

import pytest

from credit import launcher
from credit.commands import COMMANDS, main
from tests.conftest import Dirty
from tests.helpers import BIN, ROOT, clean_env
from tests.test_features_job import stable


def credit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "credit"), *args], env=env or clean_env(), capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_cli_lists_every_command_once_and_refuses_an_unknown_one() -> None:
    listing = credit()
    assert listing.returncode == 2 and listing.stdout == ""
    listed = [line.split()[0] for line in listing.stderr.splitlines()[1:]]
    assert listed == list(COMMANDS)
    spark_jobs = {line.split()[0] for line in listing.stderr.splitlines()[1:] if "(Spark)" in line}
    assert spark_jobs == {name for name, c in COMMANDS.items() if c.spark} == {"features", "materialize", "stream"}
    assert credit("--help").returncode == 0
    unknown = credit("nope")
    assert unknown.returncode == 2 and "unknown command 'nope'" in unknown.stderr
    assert credit("--master").returncode == 2
    same = subprocess.run(["./spark-submit.sh"], cwd=ROOT, env=clean_env(), capture_output=True, text=True)
    assert (same.returncode, same.stderr) == (listing.returncode, listing.stderr)


def test_spark_jobs_run_with_the_parallel_collector_unless_the_user_says_otherwise(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SPARK_SUBMIT_OPTS_EXTRA", "--conf spark.executor.extraJavaOptions=-XX:+UseG1GC")
    monkeypatch.setattr(launcher, "CLASS_ARCHIVE", tmp_path / "no archive.jsa")
    command = launcher.spark_submit_command("features", ["--input", "x"], "local[*]", tmp_path / "code.zip")
    driver = shlex.split(command[command.index("--driver-java-options") + 1])
    assert driver[:2] == ["-XX:+UseParallelGC", "-XX:CompileThresholdScaling=3"]
    assert driver[2:5] == ["-XX:+UnlockDiagnosticVMOptions", "-XX:-DisplayVMOutput",
                           f"-XX:CompilerDirectivesFile={launcher.JIT_DIRECTIVES}"]  # fmt: skip
    assert driver[5].startswith("-Dlog4j2.configurationFile=file:")
    assert len(driver) == 6  # no class archive, none named
    executors = [value for flag, value in itertools.pairwise(command)
                 if flag == "--conf" and value.startswith("spark.executor.extraJavaOptions=")]  # fmt: skip
    # spark-submit keeps the last value given: the user's.
    assert executors == ["spark.executor.extraJavaOptions=-XX:+UseParallelGC -XX:CompileThresholdScaling=3",
                         "spark.executor.extraJavaOptions=-XX:+UseG1GC"]  # fmt: skip
    assert command[-4:] == [str(launcher.DRIVER), "features", "--input", "x"]


def test_spark_jobs_map_the_class_archive_when_there_is_one_and_record_it_when_asked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The driver's options name the archive as one option (spark-submit splits them at spaces outside
    quotes), the JVM's messages about an unusable one silenced; recording names the file to write."""
    archive = tmp_path / "a venv" / "spark-classes.jsa"
    archive.parent.mkdir()
    archive.write_bytes(b"")
    monkeypatch.setattr(launcher, "CLASS_ARCHIVE", archive)

    def driver_options(record: Path | None = None) -> list[str]:
        command = launcher.spark_submit_command("features", [], "local[*]", tmp_path / "code.zip", record)
        return shlex.split(command[command.index("--driver-java-options") + 1])

    assert driver_options()[5:8] == [f"-XX:SharedArchiveFile={archive}", "-Xlog:cds=off", "-Xlog:cds+dynamic=off"]
    recorded = tmp_path / "new one.jsa"
    assert driver_options(recorded)[5] == f"-XX:ArchiveClassesAtExit={recorded}"
    archive.unlink()
    assert not any("Archive" in option for option in driver_options())


def test_a_class_archive_recorded_for_another_java_or_other_jars_is_named_with_the_command_that_records_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The JVM ignores such an archive silently (its messages are off): the launcher says so, still passing
    it (the JVM decides). The fingerprint follows the Java spark-submit would run (JAVA_HOME's, else PATH's)
    and the Spark jars."""
    archive = tmp_path / "spark-classes.jsa"
    archive.write_bytes(b"")
    monkeypatch.setattr(launcher, "CLASS_ARCHIVE", archive)

    def warning() -> str:
        options = launcher.class_archive_options()
        assert options.startswith(f'"-XX:SharedArchiveFile={archive}"')
        return capsys.readouterr().err

    assert "has no fingerprint" in warning() and "'./spark-submit.sh spark-classes'" in warning()
    fingerprint = launcher.fingerprint()
    assert fingerprint.startswith("java /") and "\njars " in fingerprint
    launcher.fingerprint_file(archive).write_text(fingerprint, encoding="utf-8")
    assert warning() == ""
    # Another Java: a JAVA_HOME of its own (its JVM library another file).
    other = tmp_path / "other java"
    (other / "bin").mkdir(parents=True)
    (other / "lib" / "server").mkdir(parents=True)
    (other / "bin" / "java").write_text("")
    (other / "lib" / "server" / "libjvm.so").write_bytes(b"jvm")
    monkeypatch.setenv("JAVA_HOME", str(other))
    assert f"java {other / 'lib' / 'server' / 'libjvm.so'} 3 " in launcher.fingerprint()
    assert "was recorded for another Java or other Spark jars" in warning()
    monkeypatch.delenv("JAVA_HOME")
    assert warning() == ""
    # Other jars: one more in Spark's folder changes the fingerprint.
    jars = tmp_path / "pyspark"
    (jars / "jars").mkdir(parents=True)
    (jars / "jars" / "spark-core.jar").write_bytes(b"x")
    monkeypatch.setattr(launcher.importlib.util, "find_spec",
                        lambda name: SimpleNamespace(submodule_search_locations=[str(jars)]))  # fmt: skip
    assert "\njars 1 " in launcher.fingerprint()  # the one jar of that folder, not Spark's 279
    assert "was recorded for another Java or other Spark jars" in warning()


def test_the_driver_s_compiler_directives_are_read_by_java_and_its_note_about_them_silenced(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The directives file is one directive the JVM accepts (a file it cannot read or parse stops it), read
    from a path with a space; the JVM's note that it read them is not printed. No file: no options."""
    java = shutil.which("java")
    assert java is not None
    directives = tmp_path / "a checkout" / "jit-directives.json"
    directives.parent.mkdir()
    shutil.copy(launcher.JIT_DIRECTIVES, directives)
    monkeypatch.setattr(launcher, "JIT_DIRECTIVES", directives)
    options = shlex.split(launcher.compiler_options())
    assert options[-1] == f"-XX:CompilerDirectivesFile={directives}"
    shown = [option for option in options if option != "-XX:-DisplayVMOutput"]
    printed = subprocess.run([java, *shown, "-XX:+CompilerDirectivesPrint", "-version"], capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.startswith("1 compiler directives added\n")
    assert "matching: " in printed.stdout and "org/codehaus/*.*" in printed.stdout
    assert "Exclude:true" in printed.stdout.split("c2 directives:")[1]
    quiet = subprocess.run([java, *options, "-version"], capture_output=True, text=True, timeout=60)
    assert quiet.returncode == 0 and quiet.stdout == "" and "version" in quiet.stderr
    directives.write_text("[{ match: }]")
    broken = subprocess.run([java, *options, "-version"], capture_output=True, text=True, timeout=60)
    assert broken.returncode != 0  # why the launcher gives the options only for a file that is there
    directives.unlink()
    assert launcher.compiler_options() == ""


def test_cli_a_bad_setting_is_exit_code_2_naming_it() -> None:
    bad = credit("models", env=clean_env(CREDIT_MODEL_SEED="many"))
    assert bad.returncode == 2 and "CREDIT_MODEL_SEED: expected a whole number, got 'many'" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_spark_submit_runs_the_job_from_a_checkout_whose_path_has_a_space_then_report_prints_it(
    dirty: Dirty, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A copy of the checkout under a path with a space, with a Python that sees it first, runs the feature
    job on the dirty data as a user would: the same report as the job run in-process."""
    checkout = tmp_path / "a checkout" / "credit risk"
    ignore = shutil.ignore_patterns(".venv", ".git", "data", "var", "__pycache__", "*.egg-info", ".*_cache")
    shutil.copytree(ROOT, checkout, ignore=ignore)
    venv = tmp_path / "a venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    # The copy first, then the project's installed libraries (not its editable install of the original).
    (site / "checkout.pth").write_text(f"{checkout}\n{sysconfig.get_path('purelib')}\n")
    # A shebang cannot hold a space: pip writes this sh trampoline for a venv whose path has one.
    python = venv / "bin" / "python"
    trampoline = f"#!/bin/sh\n'''exec' \"{python}\" \"$0\" \"$@\"\n' '''\n"
    (venv / "bin" / "credit").write_text(
        f"{trampoline}import sys\nfrom credit.commands import main\nsys.exit(main())\n"
    )
    (venv / "bin" / "credit").chmod(0o755)
    (venv / "bin" / "spark-submit").symlink_to(BIN / "spark-submit")
    # The class archive `make install` recorded, mapped from a path with a space.
    assert launcher.CLASS_ARCHIVE.is_file(), "no class archive: make install records it (credit spark-classes)"
    (venv / launcher.CLASS_ARCHIVE.name).symlink_to(launcher.CLASS_ARCHIVE)
    fingerprint = launcher.fingerprint_file(launcher.CLASS_ARCHIVE)
    assert fingerprint.is_file(), "the class archive has no fingerprint: record it again (credit spark-classes)"
    launcher.fingerprint_file(venv / launcher.CLASS_ARCHIVE.name).symlink_to(fingerprint)
    source = tmp_path / "in put" / "loans.csv"
    source.parent.mkdir()
    shutil.copy(dirty.source, source)
    pyspark_home = Path(sysconfig.get_path("purelib")) / "pyspark"
    # Each JVM (spark-submit's launcher, then the driver) lists where its classes came from.
    loaded = tmp_path / "classes"
    loaded.mkdir()
    env = clean_env(VENV=str(venv), SPARK_HOME=str(pyspark_home),
                    JAVA_TOOL_OPTIONS=f"-Xlog:class+load=info:file={loaded}/%p.txt")  # fmt: skip
    out = tmp_path / "out put"
    command = [str(checkout / "spark-submit.sh"), "features", "--input", str(source), "--output", str(out),
               "--as-of", "2020-12-31"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == "" and f"reading {source}" in done.stderr  # the log goes to stderr; no result
    report = json.loads((out / "report.json").read_text())
    assert stable(report) == stable(dirty.report)
    # The project's log4j settings were found (Spark's default profile announces itself otherwise).
    assert "Using Spark's default log4j profile" not in done.stderr
    assert "driver garbage collector PS MarkSweep/PS Scavenge" in done.stderr  # the launcher's JVM options
    assert "compiler directives" not in done.stderr  # read from this checkout (the JVM stops on a bad path)
    assert "class archive" not in done.stderr  # recorded for this Java and these jars
    # A small input: its shuffles in one partition per core, not the 16 of [spark] shuffle_partitions.
    shuffled = re.search(r"shuffles in (\d+) partitions \((\d+) cores\)", done.stderr)
    assert shuffled is not None and shuffled[1] == shuffled[2], done.stderr[-2000:]
    assert len(list((out / "features").glob("part-*.parquet"))) == int(shuffled[1])
    driver = max(loaded.iterdir(), key=lambda f: f.stat().st_size).read_text()
    assert driver.count("source: shared objects file (top)") > 5000  # Spark's classes, from the archive
    written = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert written == ["clients", "features", "quarantine", "report.json"]
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    shown = capsys.readouterr().out
    assert shown.splitlines()[:3] == [f"features:   {out / 'features'}", f"quarantine: {out / 'quarantine'}",
                                      f"report:     {out / 'report.json'}"]  # fmt: skip
    assert f"read {report['rows_read']} rows: {report['rows_accepted']} accepted" in shown
    assert main(["report", str(tmp_path / "nowhere")]) == 1 and "no report at" in capsys.readouterr().err
