"""Check the online store against the offline outputs, client by client (for operators):

    ./spark-submit.sh verify-online --features OUT/features [--clients OUT/clients] [--models MODELS] [--sample N]

Reads N clients (a seeded sample) from the active version and checks each stored field against what the
offline outputs say it must be: the latest loan's features and date, the history state, and the score and
label of the version's model (from the registry, its file checked against its card); and the version's
ONNX model against its recorded hash and against scikit-learn's scores. Prints every mismatch; exit code
0 when there is none, 1 when there is one, 2 when an input is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import redis

from conf import command_settings, emit
from contract import FEATURE_NAMES
from model import registry
from model.portable import PortableModel
from serving import embedded
from serving.store import LANDED_FIELD, OnlineStore, command_line_url

log = logging.getLogger(__name__)

# A stored score may differ from scikit-learn's by this much when it comes from the ONNX model.
PORTABLE_TOLERANCE = 1e-5


def expected_records(features: Path, clients: Path, ids: list[int], pipeline: Any, threshold: float,
                     model_version: str) -> dict[int, dict[str, Any]]:  # fmt: skip
    """What the store must hold for each client: computed from the offline outputs and the model."""
    history = {r["id"]: r for r in pq.read_table(clients, filters=[("id", "in", ids)]).to_pylist()}
    rows = pq.read_table(features, filters=[("id", "in", ids)]).to_pylist()
    latest = {}
    for row in sorted(rows, key=lambda r: (r["loan_date"], r["loan_id"])):
        latest[row["id"]] = row
    frame = pd.DataFrame([{n: latest[i][n] for n in FEATURE_NAMES} for i in ids]).astype("float64")
    scores = pipeline.predict_proba(frame)[:, 1] if ids else []
    expected = {}
    for client_id, score in zip(ids, scores, strict=True):
        row, state = latest[client_id], history[client_id]
        expected[client_id] = {
            **{n: row[n] for n in FEATURE_NAMES if row[n] is not None},
            "loan_date": row["loan_date"].isoformat(), "score": float(score), "label": int(score >= threshold),
            "model_version": model_version, "loans": state["loans"], "amount_sum": state["amount_sum"],
            "last_loan_id": state["last_loan_id"],
            **{k: state[k] for k in ("birthday", "job_start_date") if state[k] is not None},
        }  # fmt: skip
    return expected


def differences(client_id: int, stored: dict[str, Any] | None, expected: dict[str, Any]) -> list[str]:
    if stored is None:
        return [f"client {client_id}: missing from the store"]
    return [
        f"client {client_id}: {name} stored {stored.get(name)!r}, expected {expected.get(name)!r}"
        for name in sorted(set(stored) | set(expected))
        if stored.get(name) != expected.get(name)
    ]


def verify(store: OnlineStore, features: Path, clients: Path, models: Path, sample: int, seed: int) -> list[str]:
    """Every mismatch between the active version and the offline outputs, for `sample` clients."""
    version = store.active_version(fresh=True)
    if version is None:
        return ["no version is published"]
    meta = store.meta(version)
    pipeline, card = registry.load_version(models, meta["model_version"])
    all_ids = pq.read_table(clients, columns=["id"]).column("id").to_pylist()
    ids = sorted(random.Random(seed).sample(all_ids, min(sample, len(all_ids))))
    expected = expected_records(features, clients, ids, pipeline, card["threshold"]["value"], card["version"])
    _, records = store.read_many(ids) if ids else (version, [])
    # A client the stream applied landed loans to holds more than the feature run saw: not comparable.
    streamed = [i for i, r in zip(ids, records, strict=True) if r is not None and LANDED_FIELD in r]
    compared = [(i, r) for i, r in zip(ids, records, strict=True) if i not in streamed]
    problems = [p for i, r in compared for p in differences(i, r, expected[i])]
    if streamed:
        log.info("%d of the sampled clients hold loans landed since the feature run (the stream's): not compared",
                 len(streamed))  # fmt: skip
    onnx = store.model(version)
    if onnx is None:
        problems.append(f"version {version}: no model stored")
    else:
        if hashlib.sha256(onnx).hexdigest() != meta.get("model_sha256"):
            problems.append(f"version {version}: the stored model does not have the SHA-256 its meta records")
        portable = PortableModel(onnx, meta["feature_names"].split(","))
        onnx_scores = portable.scores([{n: expected[i].get(n) for n in FEATURE_NAMES} for i in ids]) if ids else []
        for client_id, score in zip(ids, onnx_scores, strict=True):
            if abs(score - expected[client_id]["score"]) > PORTABLE_TOLERANCE:
                problems.append(f"client {client_id}: the version's ONNX model scores {score}, "
                                f"scikit-learn {expected[client_id]['score']}")  # fmt: skip
    log.info("checked %d clients of version %s (model %s): %d mismatches", len(ids), version, card["version"],
             len(problems))  # fmt: skip
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    settings = command_settings()
    parser = argparse.ArgumentParser(prog="spark-submit.sh verify-online", description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", default=settings.features.features_dir, help="the feature job's features/")
    parser.add_argument("--clients", default=None, help="the feature job's clients/ (default: beside --features)")
    parser.add_argument("--models", default=settings.model.models_dir, help="the model registry folder")
    parser.add_argument("--sample", type=int, default=200, help="clients to check (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="of the sample (default %(default)s)")
    parser.add_argument("--redis-url", type=command_line_url, default="", help="without a password (default: [redis])")
    parser.add_argument("--prefix", default=settings.redis.prefix)
    args = parser.parse_args(argv)
    features = Path(args.features)
    clients = Path(args.clients) if args.clients else features.parent / "clients"
    for path in (features, clients):
        if not path.exists():
            log.error("no %s at %s: run the feature job first", path.name, path)
            return 2
    redis_settings = dataclasses.replace(settings.redis, url=args.redis_url or settings.redis.url, prefix=args.prefix)
    try:
        url = embedded.resolve_url(redis_settings, "service")
        store = OnlineStore.from_settings(redis_settings, url, version_cache_seconds=0)
        problems = verify(store, features, clients, Path(args.models), args.sample, args.seed)
    except registry.RegistryError as exc:
        log.error("%s", exc)
        return 2
    except (redis.RedisError, embedded.EmbeddedRedisError) as exc:
        log.error("Redis unreachable or refused a command: %s", exc)
        return 1
    for problem in problems:
        emit(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
