"""The registry's commands:

./spark-submit.sh models --models data/models
./spark-submit.sh approve VERSION --models data/models     (approving an older version rolls back)
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from conf import command_settings, emit
from model import registry

log = logging.getLogger(__name__)


def main_approve(argv: Sequence[str] | None = None) -> int:
    """`approve VERSION --models DIR [--by NAME]`."""
    settings = command_settings()
    parser = argparse.ArgumentParser(prog="spark-submit.sh approve", description="Approve a model version.")
    parser.add_argument("version")
    parser.add_argument("--models", default=settings.model.models_dir, help="the model registry folder")
    parser.add_argument("--by", default=None, help="who approves (default: the current user)")
    args = parser.parse_args(argv)
    try:
        record = registry.approve(Path(args.models), args.version, args.by)
    except registry.RegistryError as exc:
        log.error("%s", exc)
        return 2
    emit(f"approved {record['version']}")
    return 0


def main_models(argv: Sequence[str] | None = None) -> int:
    """`models --models DIR`."""
    settings = command_settings()
    parser = argparse.ArgumentParser(prog="spark-submit.sh models", description="List the model versions.")
    parser.add_argument("--models", default=settings.model.models_dir, help="the model registry folder")
    args = parser.parse_args(argv)
    try:
        emit(registry.table(Path(args.models)))
    except registry.RegistryError as exc:
        log.error("%s", exc)
        return 2
    return 0
