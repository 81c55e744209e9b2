"""Authentication of API requests: a personal API token, or the session cookie plus CSRF token.

Why the CSRF check depends on the credentials: a browser attaches the session cookie to
requests that other sites make it send, such as a form posted with enctype="text/plain"
whose body is valid JSON, and this API reads the body whatever its Content-Type. So a
state-changing request authenticated by the cookie must carry the CSRF token in the
X-CSRFToken header, like every HTML form. A browser never adds a Bearer token by itself.
A page on another origin cannot set an Authorization header without a CORS preflight, and
this app grants none, so token requests skip the CSRF check. The blueprint is exempt from
CSRFProtect's global hook because `authenticate` applies the check itself.

A token also carries scopes (financing.accounts.services.TOKEN_SCOPES): read for GET
requests, pledge to create or cancel one's own pledges, manage for every other change. Each
view's Operation names the scope it needs; a session has every scope.
"""

import logging

from flask import current_app, g, request
from flask_login import current_user

from financing.accounts.models import User
from financing.accounts.services import find_token, token_scopes
from financing.api import bp
from financing.api.errors import NotAuthenticated, ScopeMissing
from financing.core.errors import Forbidden
from financing.extensions import csrf

logger = logging.getLogger(__name__)


def bearer_token() -> str | None:
    """Return the token of an `Authorization: Bearer` header, "" for an empty one, else None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


def operation_scope() -> str | None:
    """Return the token scope that the requested operation needs, or None when it needs none or its view checks it."""
    view = current_app.view_functions.get(request.endpoint) if request.endpoint else None
    doc = getattr(view, "api_operation", None)
    if doc is None or doc.scope_in_view:
        return None
    return doc.token_scope(request.method)


@bp.before_request
def authenticate() -> None:
    """Set g.api_user from the Bearer token or the session, and check the token's scope.

    An unknown or revoked token gets 401, and a token without the operation's scope 403.
    """
    g.api_scopes = None
    token = bearer_token()
    if token is not None:
        row = find_token(token) if token else None
        if row is None:
            logger.info("api token rejected path=%s", request.path)
            raise NotAuthenticated("The API token is unknown or revoked.", invalid_token=True)
        g.api_user = row.user
        g.api_token_id = row.id
        g.api_scopes = token_scopes(row)
        needed = operation_scope()
        if needed is not None:
            require_scope(needed)
        return

    g.api_user = current_user._get_current_object() if current_user.is_authenticated else None
    if g.api_user is not None and current_app.config.get("WTF_CSRF_ENABLED", True):
        csrf.protect()


def viewer() -> User | None:
    """Return the authenticated user of this request, or None for an anonymous one."""
    return g.get("api_user")


def granted_scopes() -> frozenset[str] | None:
    """Return the scopes of the request's token, or None for a session or anonymous request."""
    return g.get("api_scopes")


def require_scope(scope: str) -> None:
    """Raise 403 when the request's token lacks `scope`; sessions have every scope."""
    scopes = granted_scopes()
    if scopes is not None and scope not in scopes:
        logger.info("api token id=%s rejected path=%s: scope %s missing", g.get("api_token_id"), request.path, scope)
        raise ScopeMissing(scope)


def require_user() -> User:
    """Return the authenticated user, or raise 401."""
    user = viewer()
    if user is None:
        raise NotAuthenticated("Log in, or send a personal API token as 'Authorization: Bearer <token>'.")
    return user


def require_coordinator() -> User:
    """Return the authenticated coordinator, or raise 401 or 403."""
    user = require_user()
    if not user.is_coordinator:
        raise Forbidden("Only coordinators can do this.")
    return user
