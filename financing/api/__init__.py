"""JSON API v1 under /api/v1 and its OpenAPI document at /api/openapi.json.

The blueprint is exempt from CSRFProtect's global check because financing.api.auth applies
its own: cookie-authenticated requests need the CSRF token, Bearer-token requests do not.
"""

from flask import Blueprint

from financing.extensions import csrf

bp = Blueprint("api", __name__, url_prefix="/api")
csrf.exempt(bp)

# The modules below attach their handlers and routes to `bp`.
from financing.api import auth, errors, funders, matches, openapi, pledges, projects, stats  # noqa: E402,F401
