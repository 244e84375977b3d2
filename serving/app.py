"""The Flask service: features and credit risk of a client, read from the online store (DESIGN §9).

    gunicorn -c conf/gunicorn.conf.py "serving.app:create_app()"

Every answer the app gives is JSON. A request costs one Redis round trip (a batch: one pipelined
round trip); the scores were computed by the batch load with the approved model. Redis unreachable
or hung gives a 503 within the configured timeouts; after that, a circuit breaker answers 503 at once
and tries Redis again every `BREAKER_RETRY_SECONDS`, so the service recovers by itself (see
`serving.breaker`). `/health` never touches Redis.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import flask_swagger_ui
import orjson
import redis
from flask import Blueprint, Flask, Request, Response, current_app, jsonify, request, send_from_directory
from flask.json.provider import DefaultJSONProvider
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from conf import load_settings
from conf.command import configure_logging
from contract import FEATURES
from contract.raw import parse_whole_number
from serving import embedded, metrics, schemas
from serving.breaker import UNREACHABLE, CircuitBreaker, RateLimitedLog
from serving.coalesce import BatchedScores, gevent_patched
from serving.scoring import (
    HISTORY_FIELDS,
    Application,
    ApplicationRefused,
    ModelCache,
    Scorer,
    VersionModel,
    answers,
    prepare,
    score_directly,
    utc_today,
)
from serving.store import Codec, NotPublished, OnlineStore, check_url, redacted

log = logging.getLogger(__name__)
refusals = RateLimitedLog(log)

STORE = "credit_store"
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class AnswerJSON(DefaultJSONProvider):
    """JSON answers with orjson (several times faster than the standard library on a request's path); keys
    keep the order they are built in (client_id first, features in contract order)."""

    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj).decode()

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        return Response(response=orjson.dumps(obj), mimetype=self.mimetype)


class ServiceApp(Flask):
    json_provider_class = AnswerJSON

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}

    def full_dispatch_request(self) -> Response:
        """The answer, counted in the metrics by method, route template (never a raw path), status and time.

        Counted here rather than in before/after-request hooks: two hooks a request cost more than the
        metrics themselves (each hook call goes through `ensure_sync`, and the start time through `g`)."""
        started = time.perf_counter()
        try:
            response = super().full_dispatch_request()
        except BaseException:  # not answered by an error handler: Flask answers 500
            self._observe(500, started)
            raise
        self._observe(response.status_code, started)
        return response

    @staticmethod
    def _observe(status: int, started: float) -> None:
        current = request._get_current_object()  # type: ignore[attr-defined]  # one context lookup, not two
        rule = current.url_rule
        metrics.observe(current.method, rule.rule if rule else "unmatched", status, time.perf_counter() - started)

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """`func` as Flask runs it, looked up once per function rather than on every request (Flask checks
        whether each view is a coroutine function on every call)."""
        sync = self._sync.get(func)
        if sync is None:
            sync = self._sync[func] = super().ensure_sync(func)
        return sync

    def make_default_options_response(self) -> Response:
        """OPTIONS answers in JSON too, with the path's methods in `Allow`."""
        allow = super().make_default_options_response().allow
        response = jsonify({"allow": sorted(allow)})
        response.allow.update(allow)
        return response


class ApiError(Exception):
    """An error answer: HTTP status, stable code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# The fields a credit-risk answer reads besides the features (and `loan_date`, always read).
RISK_FIELDS = ("score", "label", "model_version")


class StoreHolder:
    """The app's one store, connected on first use so the app starts (and answers 503) while Redis is down.

    Every use goes through the circuit breaker (`run`).
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._config = config
        self._store: OnlineStore | None = None
        self._lock = threading.Lock()
        self.breaker = CircuitBreaker(config["BREAKER_RETRY_SECONDS"])
        self.models = ModelCache()
        # The fields a client's GET reads: the features, and with the credit risk the score's fields.
        self.feature_names: tuple[str, ...] = tuple(f.name for f in config["FEATURES"])
        self.risk_fields = self.feature_names + RISK_FIELDS
        # The request limits, read here once rather than from the config on each request.
        self.max_body: int = config["MAX_CONTENT_LENGTH"] if config["MAX_CONTENT_LENGTH"] is not None else sys.maxsize
        self.batch_limit: int = config["BATCH_LIMIT"]
        # Under gevent, the applications scored at the same moment share one run of their model.
        self.scorer: Scorer = BatchedScores().scores if gevent_patched() else score_directly

    def run(self, action: Callable[[OnlineStore], T]) -> T:
        """`action(store)`, or RedisUnavailable at once while the breaker is open."""
        return self.breaker.call(lambda: action(self.get()))

    def read(self, client_id: int, fields: tuple[str, ...]) -> tuple[str, dict[str, Any] | None]:
        """`OnlineStore.read` through the breaker: the path of every GET of a client, with no closure on it."""
        return self.breaker.call(self._read, client_id, fields)

    def _read(self, client_id: int, fields: tuple[str, ...]) -> tuple[str, dict[str, Any] | None]:
        return (self._store or self.get()).read(client_id, fields)

    def model(self, version: str) -> VersionModel:
        """The version's model (loaded from the store on first use) through the breaker."""
        return self.breaker.call(self._model, version)

    def _model(self, version: str) -> VersionModel:
        return self.models.get(self._store or self.get(), version)

    def preload(self, every: float) -> None:
        """Load the active version's model as soon as it is published, off the request path (a thread that
        ends with the app)."""
        holder = weakref.ref(self)

        def loop() -> None:
            while True:
                time.sleep(every)
                self = holder()
                if self is None:
                    return
                try:
                    active = self.run(lambda s: s.active_version(fresh=True))
                    if active is not None and active not in self.models:
                        self.run(functools.partial(self.models.get, version=active))
                except Exception as exc:  # Redis down, a version without a model: requests will say so
                    refusals.warning(f"preload:{type(exc).__name__}", f"could not preload the model: {exc}")
                del self

        threading.Thread(target=loop, name="model-preloader", daemon=True).start()

    def get(self) -> OnlineStore:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    c = self._config
                    self._store = OnlineStore.from_url(
                        redis_url(c), c["REDIS_CONNECT_TIMEOUT"], c["REDIS_SOCKET_TIMEOUT"],
                        prefix=c["REDIS_PREFIX"], version_cache_seconds=c["VERSION_CACHE_SECONDS"],
                        codec=Codec.for_features(c["FEATURES"]), coalesce=True,
                    )  # fmt: skip
        return self._store


def redis_url(config: Mapping[str, Any]) -> str:
    """The configured URL, or the embedded Redis's for the read-only `service` user (its secret read now)."""
    if config["REDIS_URL"]:
        return str(config["REDIS_URL"])
    return embedded.user_url(config["REDIS_SETTINGS"], "service")


def parse_client_id(text: str) -> int:
    """A client id from the path: a whole number in 1 .. 2^63-1, else a 400."""
    client_id = parse_whole_number(text)
    if client_id is not None:
        return client_id
    shown = text if len(text) <= 40 else text[:40] + "..."
    raise ApiError(400, "invalid_client_id", f"client id must be a whole number in 1 .. 2^63-1, got {shown!r}")


def features_answer(client_id: int, version: str, record: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {"client_id": client_id, "loan_date": record["loan_date"], "version": version,
            "features": {name: record.get(name) for name in names}}  # fmt: skip


def risk_answer(client_id: int, version: str, record: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {**features_answer(client_id, version, record, names), "score": record["score"], "label": record["label"],
            "model_version": record["model_version"]}  # fmt: skip


def store() -> StoreHolder:
    holder: StoreHolder = current_app.extensions[STORE]
    return holder


def read_client(raw_id: str, risk: bool = False) -> tuple[int, str, dict[str, Any], tuple[str, ...]]:
    """The client's id, the active version, the client's record in it (the features, and the score with
    `risk`), and the feature names; a 404 for a client the version does not hold."""
    client_id = parse_client_id(raw_id)
    holder = store()
    version, record = holder.read(client_id, holder.risk_fields if risk else holder.feature_names)
    if record is None:
        raise ApiError(404, "unknown_client", f"client {client_id} is not in the published version {version}")
    return client_id, version, record, holder.feature_names


def answer(obj: Any) -> Response:
    """A 200 JSON answer, made directly: `jsonify` finds the app's JSON provider through the app context first."""
    return Response(orjson.dumps(obj), content_type="application/json")


api = Blueprint("api", __name__)


@api.get("/online_feature_store/client_id=<raw_id>")
@api.get("/v1/clients/<raw_id>/features")
def features(raw_id: str) -> Response:
    return answer(features_answer(*read_client(raw_id)))


@api.get("/credit_risk/client_id=<raw_id>")
@api.get("/v1/clients/<raw_id>/credit-risk")
def credit_risk(raw_id: str) -> Response:
    return answer(risk_answer(*read_client(raw_id, risk=True)))


def json_body(expected: str, limit: int) -> Any:
    """The request's JSON body, else a 400 `invalid_body` saying what was expected."""
    current = request._get_current_object()  # type: ignore[attr-defined]  # one context lookup, not two
    if not current.is_json:
        raise ApiError(400, "invalid_body", f"the body must be JSON (Content-Type: application/json): {expected}")
    try:
        return orjson.loads(body_of(current, limit))
    except orjson.JSONDecodeError:  # also a body nested deeper than the parser goes
        raise ApiError(400, "invalid_body", f"the body is not valid JSON: {expected}") from None


def body_of(current: Request, limit: int) -> bytes:
    """The request's body. One of a declared length within `limit` (MAX_CONTENT_LENGTH) is read from the WSGI
    input at once: werkzeug's reader (a limited stream wrapped around it, the limit looked up in the app's
    config again) costs a small request about 40 Python calls more. Any other (chunked, too large: a 413)
    goes through werkzeug."""
    environ = current.environ
    declared = environ.get("CONTENT_LENGTH", "")
    if declared.isascii() and declared.isdigit() and int(declared) <= limit:  # not "²": a digit int() refuses
        return bytes(environ["wsgi.input"].read(int(declared)))
    return current.get_data()


def validated(model: type[M], body: Any, expected: str, batch: str | None = None, limit: int = 0) -> M:
    """The body as `model`, else a 400 naming the field (`batch_too_large` past `limit` items in `batch`)."""
    if batch and isinstance(body, dict) and isinstance(body.get(batch), list) and len(body[batch]) > limit:
        raise ApiError(
            400, "batch_too_large", f"{len(body[batch])} {batch.replace('_', ' ')}; at most {limit} per request"
        )
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise ApiError(400, "invalid_body", f"{where}: {first['msg']} (expected {expected})") from None


@api.post("/v1/credit-risk/batch")
def credit_risk_batch() -> Response:
    holder = store()
    body = json_body('{"client_ids": [1, 2, ...]}', holder.max_body)
    ids = validated(
        schemas.BatchRequest, body, '{"client_ids": [1, 2, ...]}', "client_ids", holder.batch_limit
    ).client_ids
    version, records = holder.run(lambda s: s.read_many(ids, holder.risk_fields))
    names = holder.feature_names
    results = [risk_answer(i, version, r, names) if r else {"client_id": i, "error": "not_found"}
               for i, r in zip(ids, records, strict=True)]  # fmt: skip
    return jsonify({"version": version, "results": results})


APPLICATION = '{"client_id": 1, "application_date": "2021-01-15"} (and birthday, job_start_date, flag_own_car)'


@api.post("/v1/applications/credit-risk")
def application_credit_risk() -> Response:
    holder = store()
    application = validated(schemas.ApplicationRequest, json_body(APPLICATION, holder.max_body), APPLICATION)
    version, record = holder.read(application.client_id, HISTORY_FIELDS)
    prepared = prepare(version, application.client_id, record, application, utc_today)
    model = holder.model(version)
    return answer(answers(model, [prepared], holder.scorer)[0])


@api.post("/v1/applications/credit-risk/batch")
def application_credit_risk_batch() -> Response:
    expected = '{"applications": [' + APPLICATION + ", ...]}"
    holder = store()
    body = json_body(expected, holder.max_body)
    batch = validated(schemas.ApplicationBatchRequest, body, expected, "applications", holder.batch_limit)
    ids = [a.client_id for a in batch.applications]
    version, records = holder.run(lambda s: s.read_many(ids, HISTORY_FIELDS))  # one pipelined round trip
    model = holder.model(version)
    prepared: list[Application | ApplicationRefused] = []
    for application, record in zip(batch.applications, records, strict=True):
        try:
            prepared.append(prepare(version, application.client_id, record, application, utc_today))
        except ApplicationRefused as refused:
            if refused.status >= 500:  # the version, not the application: the whole batch
                raise
            prepared.append(refused)
    scored = iter(answers(model, [p for p in prepared if isinstance(p, Application)], holder.scorer))
    results = [next(scored) if isinstance(p, Application) else
               {"client_id": a.client_id, "error": {"code": p.code, "message": p.message}}
               for a, p in zip(batch.applications, prepared, strict=True)]  # fmt: skip
    return jsonify({"version": version, "results": results})


ops = Blueprint("ops", __name__)


@ops.get("/health")
def health() -> Response:
    return jsonify({"status": "ok"})


@ops.get("/ready")
def ready() -> tuple[Response, int]:
    try:
        version = store().run(lambda s: s.active_version(fresh=True))
    except redis.RedisError as exc:
        return jsonify({"status": "not_ready", "reason": f"Redis unreachable: {type(exc).__name__}"}), 503
    if version is None:
        return jsonify({"status": "not_ready", "reason": "no version published"}), 503
    return jsonify({"status": "ready", "version": version}), 200


@ops.get("/openapi.json")
def openapi() -> Response:
    return jsonify(current_app.config["OPENAPI"])


DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Credit-risk API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/swagger-ui-standalone-preset.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui",
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset], layout: "StandaloneLayout"});</script>
</body></html>
"""


@ops.get("/docs")
def docs() -> Response:
    return Response(DOCS_PAGE, mimetype="text/html")


# Swagger UI 5 (it reads OpenAPI 3.1), shipped inside the flask-swagger-ui package: no internet needed.
SWAGGER_UI = Path(flask_swagger_ui.__file__).parent / "dist"


@ops.get("/docs/<path:asset>")
def docs_asset(asset: str) -> Response:
    """Swagger UI's files, served from the installed package so the page works with no internet."""
    return send_from_directory(SWAGGER_UI, asset, max_age=3600)


@ops.get("/metrics")
def metrics_page() -> Response:
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


def _error(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message}}), status


def register_errors(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> tuple[Response, int]:
        return _error(exc.status, exc.code, exc.message)

    @app.errorhandler(ApplicationRefused)
    def application_refused(exc: ApplicationRefused) -> tuple[Response, int]:
        return _error(exc.status, exc.code, exc.message)

    @app.errorhandler(NotPublished)
    def not_published(exc: NotPublished) -> tuple[Response, int]:
        return _error(503, "not_published", "no version of the online store is published yet")

    @app.errorhandler(redis.RedisError)
    def redis_down(exc: redis.RedisError) -> tuple[Response, int]:
        if not isinstance(exc, UNREACHABLE):  # the breaker logs unreachability; a refused command is logged here
            refusals.warning(type(exc).__name__, f"Redis refused a command ({type(exc).__name__}: {exc})")
        response, status = _error(503, "redis_unavailable", "the online store is unreachable; retry shortly")
        response.headers["Retry-After"] = "1"
        return response, status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        response, status = _error(exc.code or 500, exc.name.lower().replace(" ", "_"), exc.description or exc.name)
        for name, value in exc.get_response().headers.items():  # keeps Allow on a 405
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value
        return response, status

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _error(500, "internal_error", "unexpected error; it was logged")


def default_config() -> dict[str, Any]:
    """The settings file and environment (REDIS_URL overrides), as Flask config keys."""
    settings = load_settings()
    r = settings.redis
    return {
        # Empty: the embedded Redis, whose secret is read when the app connects (it may start after the app).
        "REDIS_URL": embedded.configured_url(r) if r.url else "", "REDIS_SETTINGS": r, "REDIS_PREFIX": r.prefix,
        "REDIS_CONNECT_TIMEOUT": r.connect_timeout, "REDIS_SOCKET_TIMEOUT": r.socket_timeout,
        "VERSION_CACHE_SECONDS": r.version_cache_seconds, "BATCH_LIMIT": settings.service.batch_limit,
        "MAX_CONTENT_LENGTH": 1024 * 1024, "FEATURES": FEATURES,
        "BREAKER_RETRY_SECONDS": settings.service.breaker_retry_seconds,
        # How often each worker checks for a newly published version to load its model (0: never).
        "MODEL_PRELOAD_SECONDS": max(r.version_cache_seconds, 0.5),
    }  # fmt: skip


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """The app: defaults, then the settings file and environment, then `test_config`, then blueprints."""
    configure_logging()
    app = ServiceApp(__name__)
    app.config.from_mapping(default_config())
    if test_config:
        app.config.from_mapping(test_config)
    if app.config["REDIS_URL"]:  # a malformed URL stops the start-up; an unreachable Redis gives 503s
        check_url(app.config["REDIS_URL"])
    app.config["OPENAPI"] = schemas.openapi(app.config["BATCH_LIMIT"], app.config["FEATURES"])
    app.extensions[STORE] = holder = StoreHolder(app.config)
    if app.config["MODEL_PRELOAD_SECONDS"] > 0:
        holder.preload(app.config["MODEL_PRELOAD_SECONDS"])
    register_errors(app)
    app.register_blueprint(api)
    app.register_blueprint(ops)
    where = redacted(app.config["REDIS_URL"]) if app.config["REDIS_URL"] else "the embedded Redis (user service)"
    log.info("serving the online store at %s (prefix %s)", where, app.config["REDIS_PREFIX"])
    return app
