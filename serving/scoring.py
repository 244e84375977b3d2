"""Scoring a new application as of its date (DESIGN §12) with the model of the store's version.

The features come from the client's history state in the version (`contract.features_of_a_new_loan`)
and the score from that same version's ONNX model, so a request never mixes one version's features
with another's model. Each version's model is loaded once per process and kept while it may still be
read (the last few versions); a preloader loads the active version's model as soon as it is published,
so a request seldom waits for a load.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any

from contract import History, car_flag, features_of_a_new_loan
from model.portable import PortableModel
from serving import metrics
from serving.store import OnlineStore

log = logging.getLogger(__name__)


class ApplicationRefused(Exception):
    """The application cannot be scored: HTTP status, stable code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclasses.dataclass(frozen=True)
class VersionModel:
    version: str
    model: PortableModel
    threshold: float
    model_version: str


class ModelCache:
    """Each version's model, loaded from the store once per process; the last `keep` versions are kept.

    A version whose stored model cannot be loaded is remembered as such (a version's model is written once,
    before the version is published): its requests get the same 503 at once, and it is logged once.
    """

    def __init__(self, keep: int = 3) -> None:
        self._keep = keep
        self._models: collections.OrderedDict[str, VersionModel | ApplicationRefused] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, store: OnlineStore, version: str) -> VersionModel:
        found = self._models.get(version)
        if found is None:
            with self._lock:  # one load per version, however many requests want it at once
                found = self._models.get(version)
                if found is None:
                    found = self._models[version] = loaded(store, version)
                    while len(self._models) > self._keep:
                        self._models.popitem(last=False)
        if isinstance(found, ApplicationRefused):  # a new one each time: a raised exception keeps its traceback
            raise ApplicationRefused(found.status, found.code, found.message)
        return found

    def __contains__(self, version: str) -> bool:
        """The version's model is loaded, or known not to load."""
        return version in self._models


def loaded(store: OnlineStore, version: str) -> VersionModel | ApplicationRefused:
    """`load`, logged; a stored model that cannot be loaded as the refusal its requests get."""
    try:
        model = load(store, version)
    except StoredModelError as exc:
        log.error("the model stored in version %s cannot be loaded: %s", version, exc)
        return ApplicationRefused(
            503, "model_unavailable", f"the model stored in version {version} cannot be loaded (logged): "
            "publish a new version with materialize",
        )  # fmt: skip
    log.info("loaded the model of version %s (model %s)", version, model.model_version)
    return model


class StoredModelError(Exception):
    """A version's stored model or its meta cannot be read as a model."""


def load(store: OnlineStore, version: str) -> VersionModel:
    """The version's ONNX model with its threshold and feature order, from the store; ApplicationRefused when
    the version holds none, StoredModelError when what it holds cannot be loaded."""
    meta = store.meta(version)
    try:
        onnx = store.model(version)
    except ValueError as exc:  # binascii.Error: the key's text is not base64
        raise StoredModelError(f"the model key does not hold base64 ({exc})") from exc
    if onnx is None or "threshold" not in meta:
        raise ApplicationRefused(
            503, "model_unavailable", f"version {version} holds no model: publish a new version with materialize"
        )
    try:
        features = meta["feature_names"].split(",")
        threshold = float(meta["threshold"])
        return VersionModel(version, PortableModel(onnx, features), threshold, meta["model_version"])
    except Exception as exc:  # onnxruntime's errors have no common base; Redis errors happened above
        raise StoredModelError(f"{type(exc).__name__}: {exc}") from exc


# The fields of a client's record that its history is made of (besides `loan_date`, always read).
HISTORY_FIELDS = ("loans", "amount_sum", "birthday", "job_start_date", "flag_own_car")


def history_of(version: str, client_id: int, record: dict[str, Any] | None, request: Any) -> History:
    """The client's history in the version with the request's attributes winning; a first-time applicant
    when there is none but the request gives attributes; refused when there is neither."""
    given = {"birthday": request.birthday, "job_start_date": request.job_start_date}
    flag = car_flag(request.flag_own_car)[0] if request.flag_own_car is not None else None
    if record is None:
        if request.birthday is None and request.job_start_date is None and request.flag_own_car is None:
            raise ApplicationRefused(
                404, "unknown_client", f"client {client_id} has no history in version {version} and the application "
                "gives no attribute (birthday, job_start_date, flag_own_car) to score it as a first-time applicant",
            )  # fmt: skip
        return History(0, 0.0, None, given["birthday"], given["job_start_date"], flag)
    if "loans" not in record:
        raise ApplicationRefused(
            503, "no_history", f"version {version} holds no history state: publish a new version with materialize"
        )
    return History(
        loans=record["loans"],
        amount_sum=record["amount_sum"],
        last_loan_date=dt.date.fromisoformat(record["loan_date"]),
        birthday=given["birthday"] if given["birthday"] is not None else record.get("birthday"),
        job_start_date=given["job_start_date"] if given["job_start_date"] is not None else record.get("job_start_date"),
        flag_own_car=flag if flag is not None else record.get("flag_own_car"),
    )


@dataclasses.dataclass(frozen=True)
class Application:
    """An application's features, ready to be scored with its version's model."""

    client_id: int
    on: dt.date
    history: History
    features: dict[str, int | float | None]


def prepare(version: str, client_id: int, record: dict[str, Any] | None, request: Any,
            today: Callable[[], dt.date]) -> Application:  # fmt: skip
    """The features of one application as of its date (DESIGN §12), or ApplicationRefused."""
    history = history_of(version, client_id, record, request)
    on = dt.date.fromisoformat(request.application_date) if request.application_date else today()
    if history.last_loan_date is not None and on < history.last_loan_date:
        raise ApplicationRefused(
            422, "application_before_last_loan", f"application date {on} is before client {client_id}'s latest loan "
            f"({history.last_loan_date}): the store holds totals, not the history before it",
        )  # fmt: skip
    return Application(client_id, on, history, features_of_a_new_loan(history, on))


Scorer = Callable[[PortableModel, list[dict[str, Any]]], list[float]]


def score_directly(model: PortableModel, rows: list[dict[str, Any]]) -> list[float]:
    return metrics.model_run(model, rows)


def answers(model: VersionModel, applications: list[Application], scorer: Scorer = score_directly
            ) -> list[dict[str, Any]]:  # fmt: skip
    """The answers to applications, scored together in one run of the version's model (`scorer`: through
    `serving.coalesce.BatchedScores` in a gevent worker, so concurrent requests share runs)."""
    scores = scorer(model.model, [a.features for a in applications]) if applications else []
    return [
        {
            "client_id": a.client_id,
            "application_date": a.on.isoformat(),
            "version": model.version,
            "features": a.features,
            "score": score,
            "label": int(score >= model.threshold),
            "model_version": model.model_version,
            "history": {
                "loans": a.history.loans,
                "last_loan_date": a.history.last_loan_date.isoformat() if a.history.last_loan_date else None,
            },
        }
        for a, score in zip(applications, scores, strict=True)
    ]


def utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()
