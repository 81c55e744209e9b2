"""The OpenAPI 3 document of the API, built by apispec from the routes and their schemas.

Paths come from the application's URL map, so every route of the blueprint is listed.
Each view's `Operation` (see financing.api.docs) supplies the schemas, statuses and security.
"""

import re

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask, current_app, jsonify

from financing.api import bp
from financing.api.docs import ID, MAX_ID, Operation, operation
from financing.api.fields import MoneyField
from financing.api.schemas import ErrorSchema, InputSchema, MoneyInputSchema, MoneySchema

CACHE_KEY = "financing.api.openapi"
_RULE_ARGUMENT = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
_CONVERTER_SCHEMAS = {
    "int": {"type": "integer"},
    "float": {"type": "number"},
    ID: {"type": "integer", "minimum": 0, "maximum": MAX_ID},
}

ERROR_DESCRIPTIONS = {
    400: "Malformed JSON, or a missing CSRF token on a cookie-authenticated request.",
    401: "No session and no valid Bearer token.",
    403: "The user's role may not do this, the object belongs to someone else, or the API token "
         "lacks the operation's scope (code insufficient_scope).",
    404: "Unknown, or not visible to this user (e.g. an unpublished project).",
    409: "Conflict with the current state, e.g. a pledge beyond the goal or a forbidden transition.",
    413: "The request body is larger than the API reads (1 MiB).",
    422: "Invalid fields; `fields` names each one.",
    502: "The payment provider (Stripe) failed; nothing was charged or refunded.",
    503: "A service the operation needs is unavailable or misconfigured.",
}
TAGS = (
    ("projects", "Projects with their funding needs, and the publishing workflow."),
    ("funders", "Funder profiles."),
    ("match-funds", "Funds that match eligible individual pledges."),
    ("pledges", "Pledges against funding needs and their state machine."),
    ("matches", "Match suggestions between projects and funders, and their review."),
    ("allocation", "Allocation runs that propose amounts for all open needs at once."),
    ("rates", "Exchange rates that convert pledges into the need's currency."),
    ("stats", "Aggregate figures."),
    ("tokens", "Personal API tokens of the authenticated user."),
    ("meta", "This document and its HTML reference."),
)
SCOPE_TEXT = {
    "read": "Token scope: read.",
    "pledge": "Token scope: pledge.",
    "manage": "Token scope: manage.",
}
PUBLIC_SECURITY = [{}, {"bearerAuth": []}, {"cookieAuth": []}]
REQUIRED_SECURITY = [{"bearerAuth": []}, {"cookieAuth": []}]


def _money_property(self, field, **kwargs) -> dict:
    """Describe a MoneyField as a reference to the Money or, in a request, MoneyInput schema."""
    if not isinstance(field, MoneyField):
        return {}
    name = "MoneyInput" if isinstance(field.parent, InputSchema) else "Money"
    return {"allOf": [{"$ref": f"#/components/schemas/{name}"}]}


def _openapi_path(rule: str) -> tuple[str, list[dict]]:
    """Convert "/api/v1/projects/<id:project_id>" to "/api/v1/projects/{project_id}" and its parameters."""
    parameters = [
        {
            "name": name, "in": "path", "required": True,
            "schema": _CONVERTER_SCHEMAS.get(converter or "", {"type": "string"}),
        }
        for converter, name in _RULE_ARGUMENT.findall(rule)
    ]
    return _RULE_ARGUMENT.sub(r"{\2}", rule), parameters


def _error_response(status: int) -> dict:
    return {"description": ERROR_DESCRIPTIONS[status], "content": {"application/json": {"schema": ErrorSchema}}}


def _success_response(doc: Operation, status: int, description: str) -> dict:
    response: dict = {"description": description}
    if doc.response is not None:
        response["content"] = {"application/json": {"schema": doc.response}}
    elif doc.content_type is not None:
        schema = {"type": "object"} if doc.content_type == "application/json" else {"type": "string"}
        response["content"] = {doc.content_type: {"schema": schema}}
    if status == doc.status and doc.response_headers:
        response["headers"] = dict(doc.response_headers)
    return response


def _operation(endpoint: str, doc: Operation, method: str, has_path_parameters: bool) -> dict:
    """Build one OpenAPI operation object from a view's Operation."""
    successes = {doc.status: doc.summary, **dict(doc.also)}
    responses = {str(status): _success_response(doc, status, text) for status, text in successes.items()}
    scope = doc.token_scope(method)
    description = " ".join(part for part in (doc.description, SCOPE_TEXT.get(scope or "", "")) if part)
    result: dict = {
        "summary": doc.summary,
        "operationId": endpoint.split(".", 1)[-1],
        "tags": [doc.tag],
        "security": REQUIRED_SECURITY if doc.auth == "required" else PUBLIC_SECURITY,
        "parameters": list(doc.headers),
        "responses": responses,
    }
    if description:
        result["description"] = description
    if scope is not None:
        result["x-token-scope"] = scope
    if doc.query is not None:
        result["parameters"].append({"in": "query", "schema": doc.query})
    if doc.body is not None:
        result["requestBody"] = {"required": doc.body_required, "content": {"application/json": {"schema": doc.body}}}

    errors = set(doc.errors)
    if doc.auth == "required":
        errors.add(401)
    if scope is not None:
        errors.add(403)
    if has_path_parameters:
        errors.add(404)
    if doc.body is not None:
        errors |= {400, 413, 422}
    if doc.query is not None or doc.headers:
        errors.add(422)
    for status in sorted(errors):
        result["responses"][str(status)] = _error_response(status)
    return result


def build_spec(app: Flask) -> dict:
    """Build the OpenAPI document for every route of the API blueprint."""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="Virtual financing platform API",
        version="1",
        openapi_version="3.0.3",
        plugins=[plugin],
        info={"description": "Projects, funding needs, funders, pledges and match suggestions. "
                             "Amounts travel as decimal strings with an ISO 4217 currency code."},
    )
    plugin.converter.add_attribute_function(_money_property)
    spec.components.schema("Money", schema=MoneySchema)
    spec.components.schema("MoneyInput", schema=MoneyInputSchema)
    spec.components.schema("Error", schema=ErrorSchema)
    spec.components.security_scheme("bearerAuth", {
        "type": "http", "scheme": "bearer",
        "description": "A personal API token, created on the account page, with `POST /api/v1/tokens` or "
                       "with `flask users token EMAIL`. Its scopes limit what it may do: read for GET "
                       "requests, pledge to create or cancel one's own pledges, manage for every other change. "
                       "Each operation names its scope in `x-token-scope`.",
    })
    spec.components.security_scheme("cookieAuth", {
        "type": "apiKey", "in": "cookie", "name": app.config.get("SESSION_COOKIE_NAME", "session"),
        "description": "The browser session; state-changing requests must also send the X-CSRFToken header.",
    })
    for name, description in TAGS:
        spec.tag({"name": name, "description": description})

    paths: dict[str, dict] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda rule: rule.rule):
        if not rule.endpoint.startswith(f"{bp.name}."):
            continue
        doc = getattr(app.view_functions[rule.endpoint], "api_operation", None)
        if doc is None:
            raise RuntimeError(f"API view {rule.endpoint} has no OpenAPI description; add @operation(...).")
        path, parameters = _openapi_path(rule.rule)
        entry = paths.setdefault(path, {"parameters": parameters, "operations": {}})
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            entry["operations"][method.lower()] = _operation(rule.endpoint, doc, method, bool(parameters))
    for path, entry in paths.items():
        spec.path(path=path, operations=entry["operations"], parameters=entry["parameters"])
    return spec.to_dict()


def cached_spec() -> dict:
    """Return the OpenAPI document of the current app, built on first use."""
    if CACHE_KEY not in current_app.extensions:
        current_app.extensions[CACHE_KEY] = build_spec(current_app)
    return current_app.extensions[CACHE_KEY]


@bp.get("/openapi.json")
@operation("This OpenAPI document", "meta", scope=None, content_type="application/json")
def openapi_document():
    return jsonify(cached_spec())
