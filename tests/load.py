"""A small HTTP load generator for the service tests: many keep-alive connections from one asyncio loop.

Each connection sends GET (or POST) requests one after the other (HTTP/1.1, keep-alive) and records when each
started, how long it took and its status. One thread and one event loop carry all the connections,
so 64 connections cost the test little CPU.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Callable, Iterator


@dataclasses.dataclass(frozen=True)
class Answer:
    started: float  # time.monotonic()
    seconds: float
    status: int  # 0: the connection failed
    path: str


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    """GET `path`, or POST the JSON after a space (`/v1/credit-risk/batch {"client_ids": [1]}`); the status."""
    path, _, body = path.partition(" ")
    if body:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n{body}".encode())  # fmt: skip
    else:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def _connection(port: int, paths: Iterator[str], until: float, answers: list[Answer], pause: float) -> None:
    reader = writer = None
    while time.monotonic() < until:
        path = next(paths)
        started = time.monotonic()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert reader is not None
            status = await asyncio.wait_for(_get(reader, writer, path), timeout=30)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            status = 0
            if writer is not None:
                writer.close()
            reader = writer = None
        answers.append(Answer(started, time.monotonic() - started, status, path))
        if pause:
            await asyncio.sleep(pause)
    if writer is not None:
        writer.close()


def hammer(port: int, connections: int, seconds: float, path: Callable[[int], str], probe: str | None = None,
           probe_every: float = 0.02) -> list[Answer]:  # fmt: skip
    """`connections` connections requesting `path(n)` back to back for `seconds`, plus one connection
    requesting `probe` every `probe_every` seconds; every answer, in the order they ended."""

    async def run() -> list[Answer]:
        answers: list[Answer] = []
        until = time.monotonic() + seconds
        counter = itertools.count()
        tasks = [_connection(port, (path(next(counter)) for _ in itertools.count()), until, answers, 0.0)
                 for _ in range(connections)]  # fmt: skip
        if probe:
            tasks.append(_connection(port, itertools.repeat(probe), until, answers, probe_every))
        await asyncio.gather(*tasks)
        return answers

    return asyncio.run(run())


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]
