"""Wire blueprints, login, error pages and template helpers into the app."""

import logging
from importlib import import_module

from flask import Flask, jsonify, render_template, request
from flask_babel import format_date
from flask_login import AnonymousUserMixin
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from financing import reference
from financing.core.errors import DomainError
from financing.core.http import error_body, wants_json
from financing.core.markdown import render_markdown
from financing.extensions import db, login_manager
from financing.jobs import run_ready_jobs
from financing.money import format_compact, format_money

logger = logging.getLogger(__name__)

BLUEPRINTS = (
    "financing.reporting.views",
    "financing.accounts.views",
    "financing.projects.views",
    "financing.funders.views",
    "financing.pledges.views",
    "financing.pledges.match_fund_views",
    "financing.payments.views",
    "financing.matching.views",
    "financing.matching.allocation_views",
    "financing.rates.views",
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

    @app.get("/healthz")
    def healthz():
        try:
            db.session.execute(text("SELECT 1"))
        except OperationalError as error:
            logger.error("health check failed: database unavailable: %s", error.__class__.__name__)
            return jsonify(status="unavailable", database="down"), 503
        return jsonify(status="ok", database="up")


def _register_login(app: Flask) -> None:
    from financing.accounts.models import User
    from financing.accounts.services import user_for_token

    login_manager.login_view = "accounts.login"
    login_manager.anonymous_user = Anonymous

    @login_manager.user_loader
    def load_user(user_id: str):
        user = db.session.get(User, int(user_id))
        return user if user is not None and user.active else None

    @login_manager.request_loader
    def load_user_from_token(req):
        header = req.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return user_for_token(header.removeprefix("Bearer ").strip())
        return None

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

    @app.errorhandler(OperationalError)
    def database_down(error: OperationalError):
        db.session.rollback()
        logger.error("database error on %s: %s", request.path, error.__class__.__name__)
        message = "The database is unavailable. Try again in a minute."
        if wants_json():
            return jsonify(error_body("unavailable", message)), 503
        return render_template("error.html", status=503, message=message), 503


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
