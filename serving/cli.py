"""Commands on the online store, in plain Python (no Spark):

    ./spark-submit.sh versions [--redis-url URL]            the versions, their meta, which one is active
    ./spark-submit.sh publish VERSION [--redis-url URL]     point readers at a complete version (rollback)
    ./spark-submit.sh sample-id [--redis-url URL]           one client id of the active version (for examples)

With no Redis URL configured, they use the embedded Redis (started when needed).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence

import redis

from conf import Settings, command_settings, emit
from serving import embedded
from serving.store import OnlineStore, StoreError, command_line_url

log = logging.getLogger(__name__)


def _store(settings: Settings, argv: Sequence[str] | None, name: str, version: bool = False) -> tuple[OnlineStore, str]:
    parser = argparse.ArgumentParser(prog=f"spark-submit.sh {name}")
    if version:
        parser.add_argument("version", help="a version listed by 'spark-submit.sh versions'")
    parser.add_argument("--redis-url", type=command_line_url, default="",
                        help="redis:// or rediss:// URL without a password (default: [redis] url)")  # fmt: skip
    parser.add_argument("--prefix", default=settings.redis.prefix)
    args = parser.parse_args(argv)
    redis_settings = dataclasses.replace(settings.redis, url=args.redis_url or settings.redis.url)
    # Publishing moves the pointer: the writer; listing and sampling only read.
    url = embedded.resolve_url(redis_settings, "writer" if version else "service")
    store = OnlineStore.from_settings(settings.redis, url, prefix=args.prefix, version_cache_seconds=0)
    return store, getattr(args, "version", "")


def versions_table(store: OnlineStore) -> str:
    """The versions, oldest first, with what the stream applied to each (loans, the last one, when)."""
    active = store.active_version()
    lines = [f"{'version':<20} {'status':<9} {'clients':>9} {'as_of':<10}  {'model':<20} {'published_at':<20}  "
             "streamed (last loan_id at)"]  # fmt: skip
    for version in store.versions():
        meta = store.meta(version)
        status = "ACTIVE" if version == active else meta.get("status", "?")
        last = f"{meta.get('stream_last_loan_id', '-')} at {meta.get('stream_applied_at', '-')}"
        streamed = f"{meta['stream_loans']} ({last})" if meta.get("stream_loans") else "-"
        lines.append(f"{version:<20} {status:<9} {meta.get('clients', '-'):>9} {meta.get('as_of', '-'):<10}  "
                     f"{meta.get('model_version', '-'):<20} {meta.get('published_at', '-'):<20}  "
                     f"{streamed}")  # fmt: skip
    return "\n".join(lines)


def _run(
    argv: Sequence[str] | None, name: str, action: Callable[[OnlineStore, str], int], version: bool = False
) -> int:
    settings = command_settings()
    try:
        store, chosen = _store(settings, argv, name, version)
        return action(store, chosen)
    except (StoreError, embedded.EmbeddedRedisError) as exc:
        log.error("%s", exc)
        return 1
    except redis.RedisError as exc:
        log.error("Redis unreachable or refused the command: %s", exc)
        return 1


def main_versions(argv: Sequence[str] | None = None) -> int:
    def show(store: OnlineStore, _: str) -> int:
        emit(versions_table(store))
        return 0

    return _run(argv, "versions", show)


def main_publish(argv: Sequence[str] | None = None) -> int:
    def publish(store: OnlineStore, version: str) -> int:
        previous = store.publish(version)
        log.info("published version %s (was %s)", version, previous or "none")
        return 0

    return _run(argv, "publish", publish, version=True)


def main_sample_id(argv: Sequence[str] | None = None) -> int:
    def sample(store: OnlineStore, _: str) -> int:
        version = store.active_version()
        if version is None:
            log.error("no version published: run 'spark-submit.sh materialize' first")
            return 1
        client_id = store.sample_client_id(version)
        if client_id is None:
            log.error("version %s holds no client", version)
            return 1
        emit(str(client_id))
        return 0

    return _run(argv, "sample-id", sample)


if __name__ == "__main__":
    sys.exit(main_versions())
