"""Wire blueprints, login, error pages and template helpers into the app."""

import logging
from importlib import import_module

from flask import Flask, g, jsonify, render_template, request
from flask_babel import format_date
from flask_login import AnonymousUserMixin
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from werkzeug.exceptions import HTTPException, InternalServerError, TooManyRequests

from financing import reference
from financing.core.errors import DomainError
from financing.core.health import health_report
from financing.core.http import error_body, wants_json
from financing.core.markdown import render_markdown
from financing.extensions import db, login_manager
from financing.jobs import run_ready_jobs
from financing.money import format_compact, format_money

logger = logging.getLogger(__name__)

BLUEPRINTS = (
    "financing.reporting.views",
    "financing.accounts.views",
    # Before projects, so that its /review page wins over the older project list at that path.
    "financing.review.views",
    "financing.projects.views",
    "financing.projects.import_views",
    "financing.funders.views",
    "financing.pledges.views",
    "financing.pledges.match_fund_views",
    "financing.payments.views",
    "financing.matching.views",
    "financing.matching.allocation_views",
    "financing.rates.views",
    "financing.audit.views",
    "financing.notifications.views",
    "financing.api",
)


class Anonymous(AnonymousUserMixin):
    role = None
    is_coordinator = False
    organisation_id = None
    id = None


def register_web(app: Flask) -> None:
    for name in BLUEPRINTS:
        app.register_blueprint(import_module(name).bp)
    _register_login(app)
    _register_errors(app)
    _register_template_helpers(app)

    @app.after_request
    def start_ready_jobs(response):
        run_ready_jobs()
        return response

    @app.teardown_request
    def roll_back_failed_request(error):
        # A request that raised commits nothing, even when the app context outlives it.
        if error is not None:
            _roll_back()

    @app.get("/healthz")
    def healthz():
        report, healthy = health_report(app.config.get("REDIS_URL", ""))
        return jsonify(report), 200 if healthy else 503


def _register_login(app: Flask) -> None:
    from financing.accounts.models import User
    from financing.accounts.services import find_token, token_scopes

    login_manager.login_view = "accounts.login"
    login_manager.anonymous_user = Anonymous

    @login_manager.user_loader
    def load_user(user_id: str):
        user = db.session.get(User, int(user_id))
        return user if user is not None and user.active else None

    @login_manager.request_loader
    def load_user_from_token(req):
        """Log a page request in by its Bearer token when the token's scopes allow the method.

        Pages need the read scope for GET and HEAD, and manage for anything else. The API
        checks tokens itself (financing.api.auth), with finer scopes per operation.
        """
        header = req.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or req.path.startswith("/api/"):
            return None
        row = find_token(header.removeprefix("Bearer ").strip())
        if row is None:
            return None
        needed = "read" if req.method in ("GET", "HEAD", "OPTIONS") else "manage"
        if needed not in token_scopes(row):
            logger.info("page request with token id=%s rejected: scope %s missing", row.id, needed)
            return None
        return row.user

    @login_manager.unauthorized_handler
    def unauthorized():
        if wants_json():
            return jsonify(error_body("unauthorized", "Log in or send an API token.")), 401
        from flask import redirect, url_for
        return redirect(url_for("accounts.login", next=request.full_path.rstrip("?")))


def _register_errors(app: Flask) -> None:
    @app.errorhandler(DomainError)
    def domain_error(error: DomainError):
        db.session.rollback()
        if wants_json():
            return jsonify(error_body(error.code, error.message, error.fields)), error.status
        return render_template("error.html", status=error.status, message=error.message), error.status

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        if wants_json():
            code = (error.name or "error").lower().replace(" ", "_")
            return jsonify(error_body(code, error.description or error.name)), error.code
        return render_template("error.html", status=error.code, message=error.description), error.code

    @app.errorhandler(TooManyRequests)
    def rate_limited(error: TooManyRequests):
        logger.warning("rate limit reached path=%s limit=%s", request.path, getattr(error, "limit", None))
        message = error.description or "Too many requests. Try again later."
        if wants_json() or request.accept_mimetypes.best_match(["text/html", "application/json"]) == "application/json":
            return jsonify(error_body("rate_limited", message)), 429
        return render_template("error.html", status=429, message=message), 429

    @app.errorhandler(InternalServerError)
    def server_error(error: InternalServerError):
        _roll_back()
        logger.error("request failed path=%s: %r", request.path, error.original_exception)
        message = "Something went wrong on our side and nothing was saved. Try again, or report the problem if it persists."
        if wants_json():
            return jsonify(error_body("internal_error", message)), 500
        return render_template("error.html", status=500, message=message), 500

    @app.errorhandler(OperationalError)
    def database_down(error: OperationalError):
        _roll_back()
        logger.error("database error on %s: %s", request.path, error.__class__.__name__)
        message = "The database is unavailable. Try again in a minute."
        if wants_json():
            return jsonify(error_body("unavailable", message)), 503
        # The page must not query the database again, so it is rendered for an anonymous
        # viewer, who needs no user row and no navigation counts. Flask-Login caches the user in g._login_user.
        g._login_user = login_manager.anonymous_user()
        return render_template("error.html", status=503, message=message), 503


def _roll_back() -> None:
    try:
        db.session.rollback()
    except SQLAlchemyError as error:
        logger.warning("rollback failed: %s", error.__class__.__name__)


def _register_template_helpers(app: Flask) -> None:
    app.jinja_env.filters["markdown"] = render_markdown
    app.jinja_env.filters["money"] = lambda minor, currency: format_money(minor, currency)
    app.jinja_env.filters["compact_money"] = format_compact
    app.jinja_env.filters["date"] = lambda value: format_date(value, "medium") if value else ""

    @app.context_processor
    def reference_data():
        return {
            "ref_regions": reference.regions(),
            "ref_themes": reference.themes(),
            "ref_countries": reference.countries(),
            "ref_sectors": reference.sectors(),
            "card_payments_enabled": bool(app.config.get("STRIPE_SECRET_KEY")),
        }
