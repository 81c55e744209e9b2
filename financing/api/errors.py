"""Error responses of the API that the application-wide handlers do not produce.

Domain errors raised by services (422, 403, 404, 409) and HTTP errors are already turned into
{"error": {"code", "message", "fields"}} by financing.web; this module adds marshmallow's
ValidationError (422), malformed bodies (400), missing credentials (401), tokens without the
needed scope (403) and CSRF failures.
"""

import logging

from flask import jsonify, request
from flask_wtf.csrf import CSRFError
from marshmallow import ValidationError
from werkzeug.exceptions import Unauthorized

from financing.api import bp
from financing.api.schemas import READ_ONLY_FIELDS
from financing.core.errors import DomainError, Forbidden
from financing.core.http import error_body
from financing.extensions import db

logger = logging.getLogger(__name__)

BEARER_REALM = 'Bearer realm="financing"'


class MalformedBody(DomainError):
    """The request body is not a JSON object."""

    status = 400
    code = "malformed_json"


class ScopeMissing(Forbidden):
    """The request's API token lacks the scope that the operation needs."""

    code = "insufficient_scope"

    def __init__(self, scope: str):
        super().__init__(
            f"The API token lacks the {scope!r} scope that this request needs. "
            f"Create a token with the {scope!r} scope on your account page.",
            {"Authorization": f"Scope {scope!r} is missing."},
        )
        self.scope = scope


class NotAuthenticated(Unauthorized):
    """A request without valid credentials; `invalid_token` is set when a token was rejected."""

    def __init__(self, description: str, invalid_token: bool = False):
        super().__init__(description)
        self.invalid_token = invalid_token


def flatten_messages(messages, path: str = "") -> dict[str, str]:
    """Turn marshmallow's nested messages into {"needs.0.goal": "message"}."""
    if isinstance(messages, dict):
        flat: dict[str, str] = {}
        for key, value in messages.items():
            if key == "_schema":
                name = path or "body"
            else:
                name = f"{path}.{key}" if path else str(key)
            flat.update(flatten_messages(value, name))
        return flat
    if isinstance(messages, list):
        texts = [item for item in messages if isinstance(item, str)]
        flat = {path or "body": " ".join(texts)} if texts else {}
        for item in messages:
            if isinstance(item, dict):
                flat.update(flatten_messages(item, path))
        return flat
    return {path or "body": str(messages)}


def _explain_read_only(fields: dict[str, str]) -> dict[str, str]:
    for name, message in fields.items():
        leaf = name.rsplit(".", 1)[-1]
        if message == "Unknown field." and leaf in READ_ONLY_FIELDS:
            fields[name] = "Read-only field: the platform sets it, so leave it out of the request."
    return fields


@bp.errorhandler(ValidationError)
def invalid_fields(error: ValidationError):
    db.session.rollback()
    fields = _explain_read_only(flatten_messages(error.messages))
    logger.info("api request rejected path=%s fields=%s", request.path, ",".join(sorted(fields)))
    message = "Invalid fields: " + ", ".join(sorted(fields)) + "."
    return jsonify(error_body("invalid", message, fields)), 422


@bp.errorhandler(Unauthorized)
def unauthorized(error: Unauthorized):
    challenge = BEARER_REALM
    if getattr(error, "invalid_token", False):
        challenge += ', error="invalid_token"'
    return jsonify(error_body("unauthorized", error.description)), 401, {"WWW-Authenticate": challenge}


@bp.errorhandler(ScopeMissing)
def scope_missing(error: ScopeMissing):
    db.session.rollback()
    challenge = f'{BEARER_REALM}, error="insufficient_scope", scope="{error.scope}"'
    return jsonify(error_body(error.code, error.message, error.fields)), 403, {"WWW-Authenticate": challenge}


@bp.errorhandler(CSRFError)
def csrf_failed(error: CSRFError):
    logger.info("api csrf check failed path=%s: %s", request.path, error.description)
    message = (
        f"{error.description} Requests authenticated by the session cookie must send the "
        "CSRF token in the X-CSRFToken header; API clients should use a Bearer token instead."
    )
    return jsonify(error_body("csrf_failed", message)), 400
