"""What the benchmarks read of other processes: their tree and CPU time (`bench.procfs`), and ended children's."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.bench_service import children_cpu_seconds
from bench.procfs import cpu_seconds, tree

BUSY = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\ntime.sleep(30)"


def test_cpu_seconds_reads_a_process_cpu_time_and_tree_finds_it() -> None:
    child = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        deadline = time.monotonic() + 20
        while cpu_seconds(child.pid) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        used = cpu_seconds(child.pid)
        assert 0.3 <= used < 2.0  # it burnt 0.3 s of CPU, then sleeps
        time.sleep(0.2)
        assert cpu_seconds(child.pid) - used < 0.05  # asleep: no more
        assert child.pid in tree(os.getpid())[1:]
        assert tree(child.pid) == [child.pid]
    finally:
        child.kill()
        child.wait()
    assert cpu_seconds(child.pid) == 0.0  # gone: nothing to read


def test_children_cpu_seconds_counts_a_child_once_it_has_ended() -> None:
    before = children_cpu_seconds()
    subprocess.run([sys.executable, "-c", BUSY.replace("time.sleep(30)", "")], check=True)
    assert children_cpu_seconds() - before >= 0.3
