"""Record the Spark driver's class archive: `credit spark-classes` (run by `make install`).

Every Spark job's JVM spends seconds of its start reading, parsing and verifying the 9,000-odd classes of
Spark's jars it uses. Java's class-data sharing keeps them, parsed and verified, in an archive that later
JVMs map at start: the launcher passes it to the driver (`credit.launcher.class_archive_options`), and a
Spark job starts about 3 s sooner (measured on 2 cores: the feature job, and a plain CSV read-and-write,
on the sample's 780k loans). This command records the archive by running the feature job on two small
generated samples with `-XX:ArchiveClassesAtExit`, into `.venv/spark-classes.jsa` (about 190 MB).

The archive belongs to this venv's jars and this Java: a JVM that cannot use it (another Java, other
jars) loads its classes as usual, so a stale archive only costs the seconds it saved. Beside it, the
fingerprint of both as recorded (`credit.launcher.fingerprint`); when Spark jobs would start with
another, the launcher says so, naming this command, which records the archive again.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from conf.command import configure_logging
from credit import launcher
from datagen.generate import write_csv

log = logging.getLogger(__name__)

# The samples' clients: a file of one record per line (read as lines) and a small dirty one (quoted line
# breaks, so read whole by the CSV reader; malformed records, duplicates, conflicting loan_ids), with few
# enough loan_ids in common that the job takes its usual route (only the rows read twice compared whole).
SAMPLES = {"lines.csv": (200, False), "dirty.csv": (5, True)}


def record(archive: Path) -> int:
    """Run the feature job on the `SAMPLES` with the JVM recording its classes into `archive`; 0 when
    recorded (replacing the previous archive only then), else 1 with the job's log shown."""
    with tempfile.TemporaryDirectory(prefix="credit-classes-") as work:
        samples = [Path(work) / name for name in SAMPLES]
        for seed, (sample, (clients, dirty)) in enumerate(zip(samples, SAMPLES.values(), strict=True)):
            write_csv(sample, clients, seed=seed, dirty=dirty)
        recorded = Path(work) / archive.name
        arguments = ["--input", ",".join(map(str, samples)), "--output", str(Path(work) / "out")]
        with (Path(work) / "job.log").open("w+") as job_log:
            code = launcher.submit("features", arguments, "local[*]", record_classes=recorded, log=job_log.fileno())
            job_log.seek(0)
            output = job_log.read()
        if code != 0 or not recorded.is_file():
            log.error("could not record the class archive (the feature job exited with %d):\n%s", code, output[-3000:])
            return 1
        archive.parent.mkdir(parents=True, exist_ok=True)
        os.replace(recorded, archive)
        launcher.fingerprint_file(archive).write_text(launcher.fingerprint(), encoding="utf-8")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="credit spark-classes", description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    configure_logging()
    started = time.perf_counter()
    if code := record(launcher.CLASS_ARCHIVE):
        return code
    size = launcher.CLASS_ARCHIVE.stat().st_size / 2**20
    log.info("recorded the Spark driver's class archive %s (%.0f MiB) in %.0fs: Spark jobs map it at start",
             launcher.CLASS_ARCHIVE, size, time.perf_counter() - started)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
