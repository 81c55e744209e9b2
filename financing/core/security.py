"""Security settings applied to every request: headers, rate limits, proxy and production checks.

CSRF protection is split three ways:

- HTML forms: Flask-WTF's CSRFProtect checks the `csrf_token` field of every POST, PUT, PATCH
  and DELETE request (financing.extensions.csrf, on unless WTF_CSRF_ENABLED is false).
- The JSON API under /api/ is exempt from that global hook and checks the credentials itself
  (financing.api.auth). A request with a Bearer token needs no CSRF token, because browsers
  never attach that header on their own. A write authenticated by the session cookie must
  send the page's CSRF token in the X-CSRFToken header.
- The Stripe webhook (payments.stripe_webhook) is exempt, because Stripe cannot know the token.
  It verifies the Stripe-Signature header of the raw body instead.

The security headers are written here by hand instead of with Flask-Talisman, whose last
release (1.1.0) dates from August 2023. They are six fixed values and fit in a few lines.
"""

import logging
import re
from collections.abc import Callable, Iterator
from urllib.parse import unquote, urlsplit

from flask import Flask, current_app, g, render_template, request
from flask_babel import gettext as _
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import current_user
from werkzeug.middleware.proxy_fix import ProxyFix

from financing.config import DEFAULT_SECRET_KEY
from financing.core.http import error_body, wants_json

logger = logging.getLogger(__name__)

# Minimum SECRET_KEY length in production. `python -c "import secrets; print(secrets.token_hex())"`
# prints a key of 64 characters.
MIN_SECRET_KEY_LENGTH = 32

PERMISSIONS_POLICY = "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), microphone=(), payment=(), usb=()"

# Characters that PostgreSQL text columns cannot store (NUL) or that cannot be encoded as
# UTF-8 at all (unpaired surrogates, which a JSON "\ud800" escape produces). SQLite would
# store the first and fail on the second, so both are rejected before any database work.
UNSTORABLE_TEXT = re.compile("[\x00\ud800-\udfff]")

# Endpoints whose JSON body is read by another check (the Stripe signature) and never stored as is.
RAW_BODY_ENDPOINTS = frozenset({"payments.stripe_webhook"})

# Enough rounds to undo any realistic multiple percent-encoding of a redirect target.
MAX_UNQUOTE_ROUNDS = 5


class ConfigurationError(RuntimeError):
    """The settings are unsafe for the selected environment; the message names each setting."""


def check_production(app: Flask) -> None:
    """Raise ConfigurationError listing every unsafe setting when PRODUCTION is on."""
    problems = production_problems(app.config) if app.config.get("PRODUCTION") else []
    if problems:
        for problem in problems:
            logger.error("unsafe production setting: %s", problem)
        raise ConfigurationError("Cannot start with unsafe production settings:\n- " + "\n- ".join(problems))


def init_security(app: Flask) -> None:
    """Install the proxy fix, the input check, the security headers and the rate limits.

    Call it after the blueprints are registered, because the limits wrap their views.
    """
    hops = proxy_hops(app.config)
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)
        logger.info("trusting X-Forwarded-For and X-Forwarded-Proto from %s proxy hop(s)", hops)

    app.before_request(reject_unstorable_text)
    policy = content_security_policy(app.config)
    transport = app.config.get("STRICT_TRANSPORT_SECURITY", "")

    @app.after_request
    def set_security_headers(response):
        headers = response.headers
        headers.setdefault("Content-Security-Policy", policy)
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Referrer-Policy", "strict-origin-when-cross-origin")
        headers.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
        headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        if transport:
            headers.setdefault("Strict-Transport-Security", transport)
        return response

    init_rate_limits(app)


# Production settings ------------------------------------------------------------------------

def production_problems(config) -> list[str]:
    """Return one message per unsafe production setting, naming the setting and the fix."""
    problems = []
    secret = config.get("SECRET_KEY") or ""
    if not secret:
        problems.append("SECRET_KEY is empty: set it to a random value of at least 32 characters.")
    elif secret == DEFAULT_SECRET_KEY:
        problems.append("SECRET_KEY is the development default: set a random value of at least 32 characters.")
    elif len(secret) < MIN_SECRET_KEY_LENGTH:
        problems.append(f"SECRET_KEY has {len(secret)} characters: use a random value of at least {MIN_SECRET_KEY_LENGTH}.")

    if config.get("SESSION_COOKIE_SECURE") is not True:
        problems.append("SESSION_COOKIE_SECURE is off: production serves HTTPS only, so session cookies must be Secure.")
    if config.get("REMEMBER_COOKIE_SECURE") is not True:
        problems.append("REMEMBER_COOKIE_SECURE is off: production serves HTTPS only, so remember-me cookies must be Secure.")
    if config.get("PREFERRED_URL_SCHEME") != "https":
        problems.append(f"PREFERRED_URL_SCHEME is {config.get('PREFERRED_URL_SCHEME')!r}: set it to 'https'.")

    if config.get("PROXY_HOPS") in (None, ""):
        problems.append(
            "PROXY_HOPS is not set: give the number of reverse proxies in front of the app, "
            "or 0 when gunicorn terminates HTTPS itself."
        )
    else:
        try:
            proxy_hops(config)
        except ConfigurationError as error:
            problems.append(str(error))

    database = str(config.get("SQLALCHEMY_DATABASE_URI") or "")
    if database.startswith("sqlite"):
        problems.append("DATABASE_URL points at SQLite: production needs PostgreSQL (postgresql+psycopg://...).")
    return problems


def proxy_hops(config) -> int:
    """Return PROXY_HOPS as an integer, 0 when unset; raise ConfigurationError for a bad value."""
    value = config.get("PROXY_HOPS")
    if value in (None, ""):
        return 0
    try:
        hops = int(value)
    except (TypeError, ValueError):
        hops = -1
    if hops < 0:
        raise ConfigurationError(f"PROXY_HOPS is {value!r}: use a whole number of proxies, 0 or more.")
    return hops


# Headers ------------------------------------------------------------------------------------

def content_security_policy(config) -> str:
    """Build the Content-Security-Policy header from CONTENT_SECURITY_POLICY and CSP_FORM_ACTION_ORIGINS."""
    directives = dict(config["CONTENT_SECURITY_POLICY"])
    extra = [origin for origin in config.get("CSP_FORM_ACTION_ORIGINS", []) if origin]
    if extra:
        directives["form-action"] = " ".join([directives.get("form-action", "'self'"), *extra])
    return "; ".join(f"{name} {value}" for name, value in directives.items())


# Input --------------------------------------------------------------------------------------

def reject_unstorable_text():
    """Return a 422 response when a form field, query parameter or JSON string contains unstorable characters.

    A NUL makes PostgreSQL raise where SQLite stores it, so without this check the same input
    would be a 500 on one database and stored on the other.
    """
    if request.endpoint in RAW_BODY_ENDPOINTS:
        return None
    for name, value in _request_strings():
        if UNSTORABLE_TEXT.search(value):
            logger.info("request rejected path=%s field=%s: unstorable character", request.path, name)
            message = _("Field %(field)r contains a NUL character or an invalid Unicode code point. Remove it and try again.", field=name)
            if wants_json():
                return error_body("invalid", message, {name: message}), 422
            return render_template("error.html", status=422, message=message), 422
    return None


def _request_strings() -> Iterator[tuple[str, str]]:
    """Yield (field name, value) for every query parameter, form field and JSON string."""
    yield from request.args.items(multi=True)
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    yield from request.form.items(multi=True)
    if request.is_json:
        try:
            body = request.get_json(silent=True)
        except RecursionError:
            # Nested too deep to parse. The view returns 400 when it reads the body.
            return
        yield from _json_strings(body)


def _json_strings(body) -> Iterator[tuple[str, str]]:
    """Yield (dotted path, value) for every string in a JSON document, without recursion."""
    stack = [("", body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            yield path or "body", value
        elif isinstance(value, dict):
            stack.extend((f"{path}.{key}" if path else str(key), item) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}.{index}" if path else str(index), item) for index, item in enumerate(value))


# Redirects ----------------------------------------------------------------------------------

def is_safe_redirect_path(target: str | None) -> bool:
    """Return True when target is a path on this site, such as "/projects?page=2".

    Rejected: empty values, anything with a scheme or host, and protocol-relative "//host".
    Backslashes are rejected because browsers read "/\\host" as "//host". Control characters
    are rejected because browsers drop tabs and newlines inside URLs (so "/\\t/host" becomes
    "//host"), and raw spaces too. The same checks apply after each round of percent-decoding,
    so encoding hides none of them. An encoded space ("%20") is fine.
    """
    if not target:
        return False
    decoded = target
    for round_number in range(MAX_UNQUOTE_ROUNDS):
        if not _is_plain_local_path(decoded, allow_space=round_number > 0):
            return False
        undone = unquote(decoded)
        if undone == decoded:
            return True
        decoded = undone
    # A real link is never percent-encoded that many times over.
    return False


def _is_plain_local_path(value: str, allow_space: bool) -> bool:
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        return False
    if any(ord(char) < 32 or ord(char) == 127 or (char.isspace() and not allow_space) for char in value):
        return False
    parts = urlsplit(value)
    return not parts.scheme and not parts.netloc


# Rate limits --------------------------------------------------------------------------------

def _account_or_address() -> str:
    # The API authenticates Bearer tokens itself into g.api_user (financing.api.auth).
    user = g.get("api_user") or (current_user if current_user.is_authenticated else None)
    if user is not None:
        return f"user:{user.id}"
    return get_remote_address()


# Endpoint, config key of its limit, methods counted, key function, message on a breach.
RATE_LIMITS: tuple[tuple[str, str, list[str], Callable[[], str], Callable[[], str]], ...] = (
    ("accounts.login", "RATELIMIT_LOGIN", ["POST"], get_remote_address,
     lambda: _("Too many login attempts from your network. Wait a few minutes, then try again.")),
    ("accounts.register", "RATELIMIT_REGISTER", ["POST"], get_remote_address,
     lambda: _("Too many accounts registered from your network. Try again in an hour.")),
    ("accounts.create_api_token", "RATELIMIT_TOKEN", ["POST"], _account_or_address,
     lambda: _("Too many API tokens created. Try again in an hour, or use one of your existing tokens.")),
    ("api.create_token_view", "RATELIMIT_TOKEN", ["POST"], _account_or_address,
     lambda: _("Too many API tokens created. Try again in an hour, or use one of your existing tokens.")),
)


def init_rate_limits(app: Flask) -> Limiter | None:
    """Attach a Flask-Limiter instance of this app's own to the login, registration and token views.

    Each app gets its own Limiter because the extension keeps its storage and its enabled
    flag on the instance. A shared one would carry one app's counts and settings into every
    other app of the process, such as the apps that tests build.
    """
    if not app.config.get("RATELIMIT_ENABLED", True):
        logger.info("rate limits disabled")
        return None
    limiter = Limiter(key_func=get_remote_address, app=app)
    for endpoint, config_key, methods, key_func, message in RATE_LIMITS:
        view = app.view_functions.get(endpoint)
        if view is None:
            raise ConfigurationError(f"Rate limit {config_key} names endpoint {endpoint!r}, which the app does not have.")
        limit = limiter.limit(_config_value(config_key), methods=methods, key_func=key_func, error_message=message)
        app.view_functions[endpoint] = limit(view)
    logger.info("rate limits on storage=%s", str(app.config["RATELIMIT_STORAGE_URI"]).split(":", 1)[0])
    return limiter


def _config_value(key: str) -> Callable[[], str]:
    return lambda: current_app.config[key]
