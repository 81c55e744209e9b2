"""JSON API v1 under /api/v1 and its OpenAPI document at /api/openapi.json.

The blueprint is exempt from CSRFProtect's global check because financing.api.auth applies
its own: cookie-authenticated requests need the CSRF token, Bearer-token requests do not.
"""

from flask import Blueprint

from financing.api.docs import ID, IdConverter
from financing.extensions import csrf

bp = Blueprint("api", __name__, url_prefix="/api")
csrf.exempt(bp)
# Registered before the routes below, which use the converter, are added to the app.
bp.record_once(lambda state: state.app.url_map.converters.setdefault(ID, IdConverter))

# The modules below attach their handlers and routes to `bp`.
from financing.api import (  # noqa: E402,F401
    allocation,
    auth,
    errors,
    exports,
    funders,
    html_docs,
    match_funds,
    matches,
    openapi,
    pledges,
    projects,
    rates,
    stats,
    tokens,
)
