"""A real standalone Spark cluster for the tests: a master and workers of the Spark in .venv, on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyspark

from tests.redis_servers import free_port

SPARK_CLASS = Path(pyspark.__file__).parent / "bin" / "spark-class"


class SparkCluster:
    """`spark-class ...Master` and `...Worker` processes (1 core each), started and stopped by pid."""

    def __init__(self, folder: Path, workers: int = 2, memory: str = "1g") -> None:
        self.folder = folder
        self.workers = workers
        self.memory = memory
        self.port, self.ui_port = free_port(), free_port()
        self.processes: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def _start(self, name: str, *args: str) -> None:
        log = (self.folder / f"{name}.log").open("w")
        env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(self.folder)}
        command = [str(SPARK_CLASS), *args]
        self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env))

    def start(self) -> SparkCluster:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port",
                    str(self.port), "--webui-port", str(self.ui_port))  # fmt: skip
        for i in range(self.workers):
            work = self.folder / f"worker{i}"
            work.mkdir(exist_ok=True)
            self._start(f"worker{i}", "org.apache.spark.deploy.worker.Worker", self.url, "--host", "127.0.0.1",
                        "--cores", "1", "--memory", self.memory, "--webui-port", str(free_port()),
                        "--work-dir", str(work))  # fmt: skip
        deadline = time.monotonic() + 120
        while self.alive_workers() < self.workers:
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.processes):
                self.stop()
                raise RuntimeError(f"the test Spark cluster did not start: see the logs in {self.folder}")
            time.sleep(0.5)
        return self

    def alive_workers(self) -> int:
        """Workers registered with the master and alive (from its JSON status page)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=2) as answer:
                status = json.loads(answer.read())
        except (urllib.error.URLError, OSError, ValueError):
            return 0
        return sum(1 for w in status.get("workers", []) if w.get("state") == "ALIVE")

    def applications(self) -> list[dict]:
        """The applications the master ran (completed ones included)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=2) as answer:
            status = json.loads(answer.read())
        return list(status.get("activeapps", [])) + list(status.get("completedapps", []))

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
