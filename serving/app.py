"""The Flask service: features and credit risk of a client, read from the online store (DESIGN §9).

    gunicorn -c conf/gunicorn.conf.py "serving.app:create_app()"

Every answer the app gives is JSON. A request costs one Redis round trip (a batch: one pipelined
round trip); the scores were computed by the batch load with the approved model. Redis unreachable
or hung gives a 503 within the configured timeouts; after that, a circuit breaker answers 503 at once
and tries Redis again every `BREAKER_RETRY_SECONDS`, so the service recovers by itself (see
`serving.breaker`). `/health` never touches Redis. The requests most clients make are answered in front of
Flask's dispatch by the same functions as their Flask views (`HotRoutes`).
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import flask_swagger_ui
import orjson
import redis
from flask import Blueprint, Flask, Request, Response, current_app, jsonify, request, send_from_directory
from flask.json.provider import DefaultJSONProvider
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

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

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

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


# The app's hooks that run around a request's view in Flask's dispatch, which the hot routes skip.
REQUEST_HOOKS = ("before_request_funcs", "after_request_funcs", "teardown_request_funcs", "url_value_preprocessors",
                 "teardown_appcontext_funcs")  # fmt: skip


class ServiceApp(Flask):
    json_provider_class = AnswerJSON

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}
        self.hot: HotRoutes | None = None  # set by create_app

    def wsgi_app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """The hot routes' requests answered in front of Flask's dispatch (see `HotRoutes`); all others by Flask."""
        if self.hot is not None:
            if self.request_hooks():  # the hot routes would skip them: every request goes through Flask
                log.warning("hot routes off: the app has request hooks (%s), which they would skip",
                            ", ".join(self.request_hooks()))  # fmt: skip
                self.hot = None
            else:
                answered = self.hot(environ, start_response)
                if answered is not None:
                    return answered
        return super().wsgi_app(environ, start_response)

    def request_hooks(self) -> list[str]:
        """The kinds of hook registered that Flask runs around a request's view (none, unless one is added)."""
        return [kind for kind in REQUEST_HOOKS if getattr(self, kind)]

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


def client_answer(holder: StoreHolder, client_id: int, risk: bool) -> dict[str, Any]:
    """The answer about a client (its features, and its credit risk with `risk`) in the active version; a 404
    for a client the version does not hold."""
    version, record = holder.read(client_id, holder.risk_fields if risk else holder.feature_names)
    if record is None:
        raise ApiError(404, "unknown_client", f"client {client_id} is not in the published version {version}")
    return (risk_answer if risk else features_answer)(client_id, version, record, holder.feature_names)


JSON = "application/json"


def answer(obj: Any) -> Response:
    """A 200 JSON answer, made directly: `jsonify` finds the app's JSON provider through the app context first."""
    return Response(orjson.dumps(obj), content_type=JSON)


# The routes the hot path answers too (`HotRoutes`), each rule written once.
FEATURES_RULES = ("/online_feature_store/client_id=<raw_id>", "/v1/clients/<raw_id>/features")
RISK_RULES = ("/credit_risk/client_id=<raw_id>", "/v1/clients/<raw_id>/credit-risk")
APPLICATION_RULE = "/v1/applications/credit-risk"

api = Blueprint("api", __name__)


def features(raw_id: str) -> Response:
    return answer(client_answer(store(), parse_client_id(raw_id), risk=False))


def credit_risk(raw_id: str) -> Response:
    return answer(client_answer(store(), parse_client_id(raw_id), risk=True))


for _rule in FEATURES_RULES:
    api.add_url_rule(_rule, view_func=features, methods=["GET"])
for _rule in RISK_RULES:
    api.add_url_rule(_rule, view_func=credit_risk, methods=["GET"])


def json_body(expected: str, limit: int) -> Any:
    """The request's JSON body, else a 400 `invalid_body` saying what was expected."""
    return decode_json(json_bytes(expected, limit), expected)


def json_bytes(expected: str, limit: int) -> bytes:
    """The request's body, which says it is JSON, else a 400 `invalid_body` saying what was expected."""
    current = request._get_current_object()  # type: ignore[attr-defined]  # one context lookup, not two
    if not current.is_json:
        raise ApiError(400, "invalid_body", f"the body must be JSON (Content-Type: application/json): {expected}")
    return body_of(current, limit)


def decode_json(body: bytes, expected: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:  # also a body nested deeper than the parser goes
        raise ApiError(400, "invalid_body", f"the body is not valid JSON: {expected}") from None


def declared_length(environ: Mapping[str, Any], limit: int) -> int | None:
    """The body's declared length when it is ASCII digits within `limit` (MAX_CONTENT_LENGTH), else None
    (str.isdigit() alone also accepts "²", a digit int() refuses)."""
    declared = environ.get("CONTENT_LENGTH", "")
    if declared.isascii() and declared.isdigit() and int(declared) <= limit:
        return int(declared)
    return None


def body_of(current: Request, limit: int) -> bytes:
    """The request's body. One of a declared length within `limit` is read from the WSGI input at once:
    werkzeug's reader (a limited stream wrapped around it, the limit looked up in the app's config again)
    costs a small request about 40 Python calls more. Any other (chunked, too large: a 413) goes through
    werkzeug."""
    environ = current.environ
    length = declared_length(environ, limit)
    return current.get_data() if length is None else bytes(environ["wsgi.input"].read(length))


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


def application_answer(holder: StoreHolder, body: bytes) -> dict[str, Any]:
    """The answer to one application, given its JSON body (DESIGN §12)."""
    application = validated(schemas.ApplicationRequest, decode_json(body, APPLICATION), APPLICATION)
    version, record = holder.read(application.client_id, HISTORY_FIELDS)
    prepared = prepare(version, application.client_id, record, application, utc_today)
    return answers(holder.model(version), [prepared], holder.scorer)[0]


@api.post(APPLICATION_RULE)
def application_credit_risk() -> Response:
    holder = store()
    return answer(application_answer(holder, json_bytes(APPLICATION, holder.max_body)))


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


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


# The errors a request's handling raises on purpose; `problem` says how each is answered.
KNOWN_ERRORS = (ApiError, ApplicationRefused, NotPublished, redis.RedisError)


def problem(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The answer to one of KNOWN_ERRORS (status, JSON body, extra headers), for Flask's error handlers and the
    hot routes alike."""
    if isinstance(exc, (ApiError, ApplicationRefused)):
        return exc.status, error_body(exc.code, exc.message), {}
    if isinstance(exc, NotPublished):
        return 503, error_body("not_published", "no version of the online store is published yet"), {}
    if not isinstance(exc, UNREACHABLE):  # the breaker logs unreachability; a refused command is logged here
        refusals.warning(type(exc).__name__, f"Redis refused a command ({type(exc).__name__}: {exc})")
    return 503, error_body("redis_unavailable", "the online store is unreachable; retry shortly"), {"Retry-After": "1"}


def unexpected_problem(method: str, path: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The answer to an error nobody expected, logged with its stack trace (called where it is handled)."""
    log.exception("unexpected error on %s %s", method, path)
    return 500, error_body("internal_error", "unexpected error; it was logged"), {}


def error_response(status: int, body: dict[str, Any], headers: Mapping[str, str]) -> Response:
    return Response(orjson.dumps(body), status=status, headers=dict(headers), content_type=JSON)


def register_errors(app: Flask) -> None:
    def known_error(exc: Exception) -> Response:
        return error_response(*problem(exc))

    for kind in KNOWN_ERRORS:
        app.register_error_handler(kind, known_error)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = exc.name.lower().replace(" ", "_")
        response = error_response(exc.code or 500, error_body(code, exc.description or exc.name), {})
        for name, value in exc.get_response().headers.items():  # keeps Allow on a 405
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        return error_response(*unexpected_problem(request.method, request.path))


# A status line as werkzeug writes it, by status.
STATUS_LINES = {code: f"{code} {name.upper()}" for code, name in HTTP_STATUS_CODES.items()}


class HotRoutes:
    """The answers most requests ask for (a client's features or credit risk, one application), given in front
    of Flask's dispatch.

    Flask's machinery around a request (request and app contexts, URL matching, a response object) costs more
    CPU than the Redis read the request makes: under gunicorn, about 110 us of the 275 us a worker spends on a
    features request through Flask. Here such a request calls the same functions as the Flask views, its
    errors are answered by the same `problem`, and it is counted in the same metrics under the same route
    template. Anything else (another method or path, an id that is not a whole number, a body that is not
    `application/json` of a declared length within the limit) is left untouched to Flask, which answers it as
    before. An app given a request hook (`before_request` and the like, which the app itself has none of)
    sends every request through Flask from then on, saying so in the log. Flask's request signals
    (`request_started` and the like, which nothing in the service listens to) are not sent for their answers.
    """

    def __init__(self, holder: StoreHolder) -> None:
        self.holder = holder
        self.client_routes: list[tuple[str, str, str, bool]] = []  # path prefix and suffix, rule, risk
        for rules, risk in ((FEATURES_RULES, False), (RISK_RULES, True)):
            for rule in rules:
                prefix, suffix = rule.split("<raw_id>")
                self.client_routes.append((prefix, suffix, rule, risk))

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes] | None:
        """The answer, or None for Flask to answer (nothing read from the request)."""
        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
        if method == "GET":
            for prefix, suffix, rule, risk in self.client_routes:
                if path.startswith(prefix) and path.endswith(suffix):
                    client_id = parse_whole_number(path[len(prefix) : len(path) - len(suffix)])
                    if client_id is None:  # not a client id (Flask says why), or not this route at all
                        return None
                    return self.answer(start_response, method, path, rule, client_answer, client_id, risk)
        elif method == "POST" and path == APPLICATION_RULE:
            length = declared_length(environ, self.holder.max_body)
            if length is None or environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower() != JSON:
                return None
            body = bytes(environ["wsgi.input"].read(length))
            return self.answer(start_response, method, path, APPLICATION_RULE, application_answer, body)
        return None

    def answer(self, start_response: StartResponse, method: str, path: str, rule: str,
               handler: Callable[..., dict[str, Any]], *args: Any) -> list[bytes]:  # fmt: skip
        started = time.perf_counter()
        headers: dict[str, str]
        try:
            status, obj, headers = 200, handler(self.holder, *args), {}
        except KNOWN_ERRORS as exc:
            status, obj, headers = problem(exc)
        except Exception:
            status, obj, headers = unexpected_problem(method, path)
        except BaseException:  # the worker stopping this request: counted as Flask counts it
            metrics.observe(method, rule, 500, time.perf_counter() - started)
            raise
        body = orjson.dumps(obj)
        metrics.observe(method, rule, status, time.perf_counter() - started)
        start_response(STATUS_LINES[status], [("Content-Type", JSON), ("Content-Length", str(len(body))),
                                              *headers.items()])  # fmt: skip
        return [body]


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
        "HOT_ROUTES": settings.service.hot_routes,
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
    if app.config["HOT_ROUTES"]:
        app.hot = HotRoutes(holder)
    register_errors(app)
    app.register_blueprint(api)
    app.register_blueprint(ops)
    where = redacted(app.config["REDIS_URL"]) if app.config["REDIS_URL"] else "the embedded Redis (user service)"
    log.info("serving the online store at %s (prefix %s)", where, app.config["REDIS_PREFIX"])
    return app
