"""The API's request and answer shapes (pydantic), and the OpenAPI 3.1 description built from them.

The features' shape is built from the feature contract (names, types, descriptions), so a feature
added to the contract is in the API description with no edit here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, create_model
from pydantic.json_schema import models_json_schema

from contract import FEATURES, MAX_ID, Feature
from contract.raw import parse_date


def _whole_number(value: Any) -> Any:
    """JSON Schema's integer: 7 and 7.0 are whole numbers; "7", true and 7.5 are not."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected a whole number")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("expected a whole number")
        return int(value)
    return value


# The bounds come before the validator so that they appear in the JSON schema as minimum and maximum.
ClientId = Annotated[
    int,
    Field(ge=1, le=MAX_ID, description="a client id: a whole number in 1 .. 2^63-1"),
    BeforeValidator(_whole_number),
]


FEATURES_DOC = "The client's features as of its latest loan; null where the feature has no value."


class Features(BaseModel):
    """One value per feature of the contract; its properties are filled from the contract (`features_model`)."""

    model_config = ConfigDict(extra="allow")


def features_model(features: Sequence[Feature] = FEATURES) -> type[BaseModel]:
    """The `Features` object of the answers: one nullable field per feature of the contract, in order."""
    fields: dict[str, Any] = {f.name: (f.type | None, Field(description=f.description)) for f in features}
    return create_model("Features", __doc__=FEATURES_DOC, **fields)


class FeaturesAnswer(BaseModel):
    client_id: int
    loan_date: str = Field(description="the date (yyyy-MM-dd) of the loan the features are as of")
    version: str = Field(description="the published online-store version the answer was read from")
    features: Features


class CreditRiskAnswer(FeaturesAnswer):
    score: float = Field(ge=0, le=1, description="probability of late payment, computed in the batch load")
    label: int = Field(ge=0, le=1, description="1 when score >= the model's decision threshold")
    model_version: str = Field(description="the approved model version that computed the score")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    client_ids: list[ClientId] = Field(min_length=1, description="the clients to score (at most the batch limit)")


class BatchMiss(BaseModel):
    client_id: int
    error: str = Field(description="not_found")


class BatchAnswer(BaseModel):
    version: str
    results: list[CreditRiskAnswer | BatchMiss] = Field(description="one result per requested id, in request order")


def _real_date(text: str) -> str:
    if parse_date(text) is None:
        raise ValueError("expected a real calendar date written yyyy-MM-dd")
    return text


# A date as the contract reads one: yyyy-MM-dd, and a real calendar day.
DateText = Annotated[str, Field(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", json_schema_extra={"format": "date"}),
                     AfterValidator(_real_date)]  # fmt: skip
CarFlag = Annotated[str, Field(pattern="^[YyNn]$", description="Y owns a car, N does not (any case)")]


class ApplicationRequest(BaseModel):
    """A loan application: scored with the features the client would have for a new loan on its date."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"client_id": 5008804, "application_date": "2021-01-15"},
        {"client_id": 9000001, "birthday": "1990-05-10", "job_start_date": "2018-03-01", "flag_own_car": "N"},
    ]})  # fmt: skip

    client_id: ClientId
    application_date: DateText | None = Field(None, description="the application's date; default: today (UTC)")
    birthday: DateText | None = Field(None, description="wins over the stored birthday")
    job_start_date: DateText | None = Field(None, description="wins over the stored one; 3021-09-18: not employed")
    flag_own_car: CarFlag | None = Field(None, description="wins over the client's latest loan's car flag")


class ApplicationBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    applications: list[ApplicationRequest] = Field(min_length=1, description="at most the batch limit")


class ApplicationHistory(BaseModel):
    loans: int = Field(description="the client's accepted loans before the application (0: a first-time applicant)")
    last_loan_date: str | None = Field(description="the date of its latest loan (null: a first-time applicant)")


class ApplicationAnswer(BaseModel):
    client_id: int
    application_date: str = Field(description="the date the features are as of (yyyy-MM-dd)")
    version: str = Field(description="the online-store version the history and the model were read from")
    features: Features
    score: float = Field(ge=0, le=1, description="probability of late payment, computed on the request")
    label: int = Field(ge=0, le=1, description="1 when score >= the version's model's decision threshold")
    model_version: str = Field(description="the model (of the same version) that computed the score")
    history: ApplicationHistory


class ErrorBody(BaseModel):
    code: str = Field(description="a stable, machine-readable error code")
    message: str


class ErrorAnswer(BaseModel):
    error: ErrorBody


class ApplicationFailure(BaseModel):
    client_id: int
    error: ErrorBody = Field(description="unknown_client or application_before_last_loan")


class ApplicationBatchAnswer(BaseModel):
    version: str
    results: list[ApplicationAnswer | ApplicationFailure] = Field(description="one per application, in order")


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    version: str | None = None
    reason: str | None = None


MODELS = (
    ApplicationRequest,
    ApplicationBatchRequest,
    ApplicationHistory,
    ApplicationAnswer,
    ApplicationFailure,
    ApplicationBatchAnswer,
    Features,
    FeaturesAnswer,
    CreditRiskAnswer,
    BatchRequest,
    BatchMiss,
    BatchAnswer,
    ErrorBody,
    ErrorAnswer,
    Health,
    Ready,
)


REF_TEMPLATE = "#/components/schemas/{model}"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF_TEMPLATE.format(model=model.__name__)}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {400: "the id or body is not valid", 404: "unknown client",
            422: "application_before_last_loan: the application is dated before the client's latest loan",
            503: "Redis unreachable, nothing published, or the version holds no model"}  # fmt: skip
    return {str(status): _json(ErrorAnswer, text[status]) for status in statuses}


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(model)}}}


def openapi(batch_limit: int, features: Sequence[Feature] = FEATURES) -> dict[str, Any]:
    """The complete OpenAPI 3.1 description of the service, with the features of `features`."""
    _, definitions = models_json_schema([(model, "validation") for model in MODELS], ref_template=REF_TEMPLATE)
    schemas = definitions["$defs"]
    schemas["Features"] = features_model(features).model_json_schema(ref_template=REF_TEMPLATE)
    schemas["BatchRequest"]["properties"]["client_ids"]["maxItems"] = batch_limit
    schemas["ApplicationBatchRequest"]["properties"]["applications"]["maxItems"] = batch_limit
    client_id = {
        "name": "client_id",
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
    }

    def read(summary: str, answer: type[BaseModel], operation_id: str) -> dict[str, Any]:
        return {
            "get": {
                "summary": summary,
                "operationId": operation_id,
                "parameters": [client_id],
                "responses": {"200": _json(answer, summary), **_errors(400, 404, 503)},
            }
        }

    latest, risk = "the client's latest features", "the client's features and credit risk"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Credit-risk online features and scores",
            "version": "1.0.0",
            "description": "Reads the latest published version in Redis; scores were computed in the batch "
            "load with the approved model.",
        },
        "paths": {
            "/online_feature_store/client_id={client_id}": read(latest, FeaturesAnswer, "challengeFeatures"),
            "/credit_risk/client_id={client_id}": read(risk, CreditRiskAnswer, "challengeCreditRisk"),
            "/v1/clients/{client_id}/features": read(latest, FeaturesAnswer, "getFeatures"),
            "/v1/clients/{client_id}/credit-risk": read(risk, CreditRiskAnswer, "getCreditRisk"),
            "/v1/credit-risk/batch": {
                "post": {
                    "summary": f"credit risk of up to {batch_limit} clients in one request",
                    "operationId": "batchCreditRisk",
                    "requestBody": _body(BatchRequest),
                    "responses": {"200": _json(BatchAnswer, "one result per id"), **_errors(400, 503)},
                }
            },
            "/v1/applications/credit-risk": {
                "post": {
                    "summary": "credit risk of a new loan application, as of its date, scored on the request",
                    "operationId": "applicationCreditRisk",
                    "requestBody": _body(ApplicationRequest),
                    "responses": {
                        "200": _json(ApplicationAnswer, "the application's features and score"),
                        **_errors(400, 404, 422, 503),
                    },
                }
            },
            "/v1/applications/credit-risk/batch": {
                "post": {
                    "summary": f"credit risk of up to {batch_limit} applications, one result or error each, in order",
                    "operationId": "batchApplicationCreditRisk",
                    "requestBody": _body(ApplicationBatchRequest),
                    "responses": {
                        "200": _json(ApplicationBatchAnswer, "one result per application"),
                        **_errors(400, 503),
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "liveness",
                    "operationId": "health",
                    "responses": {"200": _json(Health, "the process answers")},
                }
            },
            "/ready": {
                "get": {
                    "summary": "readiness: Redis reachable and a version published",
                    "operationId": "ready",
                    "responses": {"200": _json(Ready, "ready"), "503": _json(Ready, "not ready")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "operationId": "metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
        "components": {"schemas": schemas},
    }
