"""Configuration read from environment variables, with safe embedded defaults."""

import os
from pathlib import Path

INSTANCE_DIR = Path(__file__).resolve().parent.parent / "instance"
DEFAULT_SECRET_KEY = "dev-only-secret-key-change-me"


def _flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


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
    STRIPE_SECRET_KEY = os.environ.get("STRIPE_SECRET_KEY", "")
    STRIPE_WEBHOOK_SECRET = os.environ.get("STRIPE_WEBHOOK_SECRET", "")
    STRIPE_API_BASE = os.environ.get("STRIPE_API_BASE", "")
    MAIL_URL = os.environ.get("MAIL_URL", "")
    BABEL_DEFAULT_LOCALE = "en"
    BABEL_DEFAULT_TIMEZONE = "UTC"
    LANGUAGES = ["en"]
    WTF_CSRF_TIME_LIMIT = None
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    SESSION_COOKIE_SECURE = _flag("SESSION_COOKIE_SECURE")
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
    PER_PAGE = 20
    MAX_PER_PAGE = 100
    # Largest amount accepted anywhere, in major units of any currency.
    MAX_AMOUNT_MAJOR = 10**12
    PRODUCTION = False


class ProductionConfig(Config):
    """Settings for gunicorn on PostgreSQL with Redis."""

    PRODUCTION = True
    SESSION_COOKIE_SECURE = True


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
    STRIPE_SECRET_KEY = ""
    STRIPE_WEBHOOK_SECRET = ""
    MAIL_URL = ""
