"""Configuration read from environment variables, with safe embedded defaults."""

import os
from datetime import timedelta
from pathlib import Path

INSTANCE_DIR = Path(__file__).resolve().parent.parent / "instance"
DEFAULT_SECRET_KEY = "dev-only-secret-key-change-me"


def _flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _rate_limit_storage() -> str:
    """Return the Flask-Limiter storage URI: RATELIMIT_STORAGE_URI, else REDIS_URL, else memory."""
    return os.environ.get("RATELIMIT_STORAGE_URI") or os.environ.get("REDIS_URL") or "memory://"


class Config:
    """Settings for the embedded default: SQLite under instance/, jobs inline."""

    SECRET_KEY = os.environ.get("SECRET_KEY", DEFAULT_SECRET_KEY)
    SQLALCHEMY_DATABASE_URI = os.environ.get(
        "DATABASE_URL", f"sqlite:///{INSTANCE_DIR / 'financing.sqlite'}"
    )
    SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}
    REDIS_URL = os.environ.get("REDIS_URL", "")
    # Jobs run inline in the request unless a Redis URL is configured.
    JOBS_INLINE = not os.environ.get("REDIS_URL")
    # Cached public pages and list counts (financing.core.cache) live in Redis when REDIS_URL
    # is set, so every worker and host shares them. Otherwise they live in this process's
    # memory, which suits the single process of `flask run`.
    CACHE_TYPE = os.environ.get("CACHE_TYPE") or ("RedisCache" if REDIS_URL else "SimpleCache")
    CACHE_REDIS_URL = REDIS_URL
    # The number names the format of the stored entries and generations. Raise it when they
    # change, so that a deployment never reads what an older version stored.
    CACHE_KEY_PREFIX = "financing:cache:2:"
    CACHE_DEFAULT_TIMEOUT = int(os.environ.get("CACHE_TIMEOUT", "300"))
    # Entries that the memory cache keeps before it drops some (Flask-Caching's default is
    # 500). The demo's 1,300 projects each have a page and a generation.
    CACHE_THRESHOLD = 5000
    # NullCache switches the cache off, and init_cache logs that in place of Flask-Caching's warning.
    CACHE_NO_NULL_WARNING = True
    # Seconds that the cached anonymous pages of totals across projects (home, /stats) may
    # lag behind pledges; 0 keeps them exact.
    CACHE_TOTALS_LAG = int(os.environ.get("CACHE_TOTALS_LAG", "0"))
    STRIPE_SECRET_KEY = os.environ.get("STRIPE_SECRET_KEY", "")
    STRIPE_WEBHOOK_SECRET = os.environ.get("STRIPE_WEBHOOK_SECRET", "")
    STRIPE_API_BASE = os.environ.get("STRIPE_API_BASE", "")
    MAIL_URL = os.environ.get("MAIL_URL", "")
    MAIL_FROM = os.environ.get("MAIL_FROM", "ICT Financing Platform <noreply@localhost>")
    # Scheme and host put before the links in emails, such as https://financing.example.org.
    SITE_URL = os.environ.get("SITE_URL", "")
    BABEL_DEFAULT_LOCALE = "en"
    BABEL_DEFAULT_TIMEZONE = "UTC"
    LANGUAGES = ["en"]
    # Security settings, applied by financing.core.security (headers, rate limits, proxy).
    # Every form needs a CSRF token, and the API checks tokens itself (financing.api.auth).
    WTF_CSRF_ENABLED = True
    WTF_CSRF_TIME_LIMIT = None
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    SESSION_COOKIE_SECURE = _flag("SESSION_COOKIE_SECURE")
    # Flask rejects a session cookie signed longer ago than this, even a browser-session one,
    # so a copied cookie stops working at the latest this long after it was last set.
    PERMANENT_SESSION_LIFETIME = timedelta(hours=int(os.environ.get("SESSION_LIFETIME_HOURS", "12")))
    # Flask-Login "basic": a session used from another IP address or browser is marked not
    # fresh. "strong" would log the user out instead, which also happens to mobile users
    # whose address changes; set SESSION_PROTECTION=strong to prefer that.
    SESSION_PROTECTION = os.environ.get("SESSION_PROTECTION", "basic")
    REMEMBER_COOKIE_HTTPONLY = True
    REMEMBER_COOKIE_SAMESITE = "Lax"
    REMEMBER_COOKIE_SECURE = SESSION_COOKIE_SECURE
    REMEMBER_COOKIE_DURATION = timedelta(days=14)
    PREFERRED_URL_SCHEME = os.environ.get("PREFERRED_URL_SCHEME", "http")
    # Number of reverse proxies in front of the app whose X-Forwarded-For and
    # X-Forwarded-Proto headers are trusted. Unset or 0 trusts none.
    PROXY_HOPS = os.environ.get("PROXY_HOPS")
    # Content-Security-Policy directives. Pages have no inline scripts or style attributes.
    CONTENT_SECURITY_POLICY = {
        "default-src": "'self'",
        "script-src": "'self'",
        "style-src": "'self'",
        "img-src": "'self' data:",
        "frame-ancestors": "'none'",
        "form-action": "'self'",
        "base-uri": "'none'",
    }
    # Origins that a form may be sent or redirected to besides this site. The app responds to
    # a card pledge form with a redirect to Stripe Checkout, and browsers apply form-action to it.
    CSP_FORM_ACTION_ORIGINS = os.environ.get("CSP_FORM_ACTION_ORIGINS", "https://checkout.stripe.com").split()
    # Strict-Transport-Security header value. An empty value sends no header, because
    # plain-HTTP development hosts must not be pinned to HTTPS.
    STRICT_TRANSPORT_SECURITY = os.environ.get("STRICT_TRANSPORT_SECURITY", "")
    # Flask-Limiter: limits per client IP address (per account for token creation), kept in
    # Redis when REDIS_URL is set so that every gunicorn worker and host shares the counts.
    RATELIMIT_ENABLED = _flag("RATELIMIT_ENABLED", True)
    RATELIMIT_STORAGE_URI = _rate_limit_storage()
    RATELIMIT_KEY_PREFIX = "financing"
    RATELIMIT_HEADERS_ENABLED = True
    # When Redis is down, count in process memory instead of failing the request.
    RATELIMIT_IN_MEMORY_FALLBACK_ENABLED = True
    RATELIMIT_SWALLOW_ERRORS = True
    RATELIMIT_LOGIN = os.environ.get("RATELIMIT_LOGIN", "10 per minute;60 per hour")
    RATELIMIT_REGISTER = os.environ.get("RATELIMIT_REGISTER", "10 per hour")
    RATELIMIT_TOKEN = os.environ.get("RATELIMIT_TOKEN", "20 per hour")
    # Matching: weights of the score parts (merged over engine.DEFAULT_WEIGHTS, which the
    # quality benchmark chose), the lowest score kept as a suggestion, and the number of
    # suggestions kept per project.
    MATCH_WEIGHTS: dict[str, float] = {}
    MATCH_MIN_SCORE = float(os.environ.get("MATCH_MIN_SCORE", "0.2"))
    MATCH_MAX_PER_PROJECT = int(os.environ.get("MATCH_MAX_PER_PROJECT", "20"))
    # Allocation runs: "auto" solves the LP relaxation and, for small instances, the MILP with
    # binary ticket indicators, keeping the better proposal.
    ALLOCATION_METHOD = os.environ.get("ALLOCATION_METHOD", "auto")
    ALLOCATION_TIME_LIMIT = int(os.environ.get("ALLOCATION_TIME_LIMIT", "120"))
    ALLOCATION_UNBUDGETED_TICKETS = 1
    ALLOCATION_MIP_GAP = 1e-4
    ALLOCATION_MILP_MAX_INDICATORS = 10_000
    # Largest IATI file accepted by `iati import`, in bytes.
    IATI_MAX_FILE_BYTES = int(os.environ.get("IATI_MAX_FILE_BYTES", str(200 * 1024 * 1024)))
    # The reporting-org of the IATI export: this platform's IATI organisation identifier, name
    # and OrganisationType code. "XX" is no registered identifier prefix, so a platform that
    # publishes its export sets its own identifier. The importer skips activities reported
    # under this identifier, because this database is their source.
    IATI_REPORTING_ORG_REF = os.environ.get("IATI_REPORTING_ORG_REF", "XX-FINANCING-PLATFORM")
    IATI_REPORTING_ORG_NAME = os.environ.get("IATI_REPORTING_ORG_NAME", "ICT Financing Platform")
    IATI_REPORTING_ORG_TYPE = os.environ.get("IATI_REPORTING_ORG_TYPE", "90")
    # ISO 4217 code the dashboards convert amounts into unless the request selects another.
    REPORTING_CURRENCY = os.environ.get("REPORTING_CURRENCY", "EUR")
    PER_PAGE = 20
    MAX_PER_PAGE = 100
    # Largest amount accepted anywhere, in major units of any currency.
    MAX_AMOUNT_MAJOR = 10**12
    PRODUCTION = False


class ProductionConfig(Config):
    """Settings for gunicorn on PostgreSQL with Redis."""

    PRODUCTION = True
    # create_app raises ConfigurationError when any of these is switched off.
    # financing.core.security.production_problems lists every check.
    SESSION_COOKIE_SECURE = _flag("SESSION_COOKIE_SECURE", True)
    REMEMBER_COOKIE_SECURE = SESSION_COOKIE_SECURE
    PREFERRED_URL_SCHEME = os.environ.get("PREFERRED_URL_SCHEME", "https")
    STRICT_TRANSPORT_SECURITY = os.environ.get("STRICT_TRANSPORT_SECURITY", "max-age=31536000")
    # Each gunicorn worker would keep its own memory cache and miss the others' writes, so
    # without Redis nothing is cached.
    CACHE_TYPE = os.environ.get("CACHE_TYPE") or ("RedisCache" if Config.REDIS_URL else "NullCache")
    # Computing /stats takes about 3 s and the home page 0.1 s at 100,000 projects, and a
    # platform in use takes pledges every few seconds (docs/benchmarks.md).
    CACHE_TOTALS_LAG = int(os.environ.get("CACHE_TOTALS_LAG", "30"))


class TestConfig(Config):
    """Settings for the test suite: a throwaway database, jobs inline.

    CSRF is off so that tests can post forms directly; tests of CSRF itself build an app
    with WTF_CSRF_ENABLED=True.
    """

    TESTING = True
    WTF_CSRF_ENABLED = False
    SECRET_KEY = "test-secret-key"
    SQLALCHEMY_DATABASE_URI = os.environ.get("TEST_DATABASE_URL", "sqlite://")
    JOBS_INLINE = True
    # Tests of the limits themselves build an app with RATELIMIT_ENABLED=True.
    RATELIMIT_ENABLED = False
    RATELIMIT_STORAGE_URI = "memory://"
    STRIPE_SECRET_KEY = ""
    STRIPE_WEBHOOK_SECRET = ""
    MAIL_URL = ""
