"""Write a job's outputs to a staging folder, then move them into place at the end.

A failed run leaves the previous outputs as they were. Paths go through Hadoop's FileSystem API, so
the same code works for local paths, HDFS or an object store mounted by Hadoop.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


def hadoop_fs(spark: SparkSession, path: str) -> tuple[Any, Any]:
    """Hadoop's `Path` class and the `FileSystem` holding `path` (local, HDFS, an object store), via py4j."""
    context = spark.sparkContext
    if context._jvm is None or context._jsc is None:
        raise RuntimeError("the Spark session is stopped")
    path_class = context._jvm.org.apache.hadoop.fs.Path
    return path_class, path_class(path).getFileSystem(context._jsc.hadoopConfiguration())


class PublishError(RuntimeError):
    """The staged outputs could not be moved into place."""


class OutputError(ValueError):
    """The output location cannot hold the job's outputs (it is a file, or lies under one)."""


class StagedOutput:
    """A staging folder `OUT/_tmp-<run>` whose entries are moved to `OUT/<name>` by `publish`.

    Names starting with `_` are ignored by Spark and Hadoop readers, so a staging folder left by a
    killed run never shows up as data.
    """

    def __init__(self, spark: SparkSession, root: str) -> None:
        self._Path, self._fs = hadoop_fs(spark, root)
        self.root = self._Path(root)
        self._check(root)
        self.run_id = uuid.uuid4().hex[:12]
        self._staging = self._Path(self.root, f"_tmp-{self.run_id}")

    def _check(self, root: str) -> None:
        """An OutputError when the output, or the nearest existing folder above it, is a file."""
        path = self.root
        while path is not None:
            if self._fs.exists(path):
                if not self._fs.getFileStatus(path).isDirectory():
                    where = "is a file" if path == self.root else f"lies under the file {path.toString()}"
                    raise OutputError(f"output {root} {where}: give a folder")
                return
            path = path.getParent()

    def path(self, name: str) -> str:
        """The staging location of output `name`."""
        return self._Path(self._staging, name).toString()

    def write_text(self, name: str, text: str) -> None:
        """Write a small text file (such as a report) into the staging folder."""
        stream = self._fs.create(self._Path(self._staging, name), True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()

    def publish(self, names: Sequence[str]) -> None:
        """Move each staged entry into place, in order; on failure put the previous entries back."""
        backup = self._Path(self.root, f"_old-{self.run_id}")
        moved: list[str] = []
        replaced: list[str] = []
        try:
            self._fs.mkdirs(backup)
            for name in names:
                target = self._Path(self.root, name)
                if self._fs.exists(target):
                    self._rename(target, self._Path(backup, name))
                    replaced.append(name)
                self._rename(self._Path(self._staging, name), target)
                moved.append(name)
        except Exception:
            self._restore(moved, replaced, backup)
            raise
        self._fs.delete(backup, True)
        self._fs.delete(self._staging, True)
        log.info("published %s under %s", ", ".join(names), self.root.toString())

    def discard(self) -> None:
        """Remove the staging folder (after a failed run)."""
        if self._fs.exists(self._staging):
            self._fs.delete(self._staging, True)
            log.info("removed staging folder %s", self._staging.toString())

    def _rename(self, source: object, target: object) -> None:
        if not self._fs.rename(source, target):
            raise PublishError(f"could not move {source} to {target}")

    def _restore(self, moved: list[str], replaced: list[str], backup: object) -> None:
        for name in moved:
            self._fs.delete(self._Path(self.root, name), True)
        for name in replaced:
            self._fs.rename(self._Path(backup, name), self._Path(self.root, name))
        self._fs.delete(backup, True)
