"""Pages for logging in and out, registering, and the account page with API tokens."""

import logging

from flask import Blueprint, flash, g, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required, login_user, logout_user
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from financing.accounts.forms import SCOPE_LABELS, LoginForm, RegisterForm, TokenForm
from financing.accounts.models import ApiToken, Organisation
from financing.accounts.services import authenticate, create_token, create_user, list_tokens, revoke_token
from financing.core.errors import Conflict, ValidationFailed
from financing.core.security import is_safe_redirect_path
from financing.extensions import db

logger = logging.getLogger(__name__)

bp = Blueprint("accounts", __name__)


def is_safe_next(target: str | None) -> bool:
    """Return True when target is a path on this site; see is_safe_redirect_path."""
    return is_safe_redirect_path(target)


def _next_or_home(target: str | None) -> str:
    if is_safe_next(target):
        return target
    if target:
        logger.info("login redirect rejected: next is not a local path")
    return url_for("reporting.home")


def _start_session(user) -> None:
    # A fresh session on every login, so that a session value planted before the login
    # (session fixation) does not survive it. The CSRF token goes with it, and Flask-WTF's
    # copy in g too, so pages after the login get a new one.
    session.clear()
    g.pop("csrf_token", None)
    login_user(user)


@bp.route("/login", methods=["GET", "POST"])
def login():
    form = LoginForm()
    if request.method == "GET":
        form.next.data = request.args.get("next", "")
    if current_user.is_authenticated and request.method == "GET":
        return redirect(_next_or_home(form.next.data))

    if form.validate_on_submit():
        user = authenticate(form.email.data, form.password.data)
        if user is not None:
            target = _next_or_home(form.next.data)
            _start_session(user)
            logger.info("login user=%s", user.id)
            flash(_("You are logged in."), "success")
            return redirect(target)
        form.form_errors.append(_("Wrong email or password. Check both and try again."))
    status = 422 if request.method == "POST" else 200
    return render_template("accounts/login.html", form=form), status


@bp.post("/logout")
def logout():
    # CSRFProtect has checked the form's token before this view runs.
    user_id = current_user.id
    logout_user()
    session.clear()
    g.pop("csrf_token", None)
    # NOTE: sessions are signed cookies and the server keeps no list of them to revoke. So a
    # copy of the cookie taken before this logout stays valid until PERMANENT_SESSION_LIFETIME
    # after it was issued.
    if user_id is not None:
        logger.info("logout user=%s", user_id)
    flash(_("You are logged out."), "success")
    return redirect(url_for("reporting.home"))


@bp.route("/register", methods=["GET", "POST"])
def register():
    form = RegisterForm()
    if request.method == "GET":
        form.role.data = request.args.get("role") if request.args.get("role") in ("owner", "donor") else None

    if form.validate_on_submit():
        user = _register(form)
        if user is not None:
            _start_session(user)
            flash(_("Welcome, %(name)s. Your account is ready.", name=user.name or user.email), "success")
            return redirect(url_for("accounts.account"))
    status = 422 if request.method == "POST" else 200
    return render_template("accounts/register.html", form=form), status


def _register(form: RegisterForm):
    """Create the account from a valid form; return the user, or None with errors on the form."""
    organisation = (form.organisation.data or "").strip() or None
    if organisation and _organisation_exists(organisation):
        # Joining an existing organisation would give this account the right to act for it
        # (edit its projects, pledge for its funder), so self-registration only creates new ones.
        form.organisation.errors.append(
            _("An organisation named %(name)r already has accounts. Ask a coordinator to add you to it, or check the spelling.", name=organisation)
        )
        return None
    try:
        user = create_user(
            form.email.data, form.password.data, form.role.data,
            name=form.name.data, organisation=organisation,
        )
        db.session.commit()
    except (ValidationFailed, Conflict) as error:
        db.session.rollback()
        logger.info("registration rejected fields=%s", ",".join(sorted(error.fields)))
        _show_errors(form, error)
        return None
    except IntegrityError:
        # Two registrations raced for the same email or organisation name.
        db.session.rollback()
        logger.warning("registration hit a unique constraint; asking the user to retry")
        form.form_errors.append(_("That email or organisation was registered a moment ago. Check both and try again."))
        return None
    logger.info("registered user=%s role=%s", user.id, user.role)
    return user


def _organisation_exists(name: str) -> bool:
    query = select(Organisation.id).where(func.lower(Organisation.name) == name.lower())
    return db.session.scalar(query) is not None


def _show_errors(form, error) -> None:
    placed = False
    for name, message in error.fields.items():
        field = getattr(form, name, None)
        if field is not None and hasattr(field, "errors"):
            field.errors = [*field.errors, message]
            placed = True
    if not placed:
        form.form_errors.append(error.message)


def _render_account(token_form: TokenForm, new_token: str | None = None, new_row: ApiToken | None = None, status: int = 200):
    response = render_template(
        "accounts/account.html",
        token_form=token_form,
        tokens=list_tokens(current_user),
        new_token=new_token,
        new_row=new_row,
        scope_labels=SCOPE_LABELS,
    )
    return response, status, {"Cache-Control": "no-store"}


@bp.get("/account")
@login_required
def account():
    return _render_account(TokenForm(formdata=None))


@bp.post("/account/tokens")
@login_required
def create_api_token():
    form = TokenForm()
    if not form.validate_on_submit():
        return _render_account(form, status=422)
    try:
        row, token = create_token(current_user, name=form.name.data, scopes=form.scopes.data)
    except ValidationFailed as error:
        db.session.rollback()
        logger.info("api token rejected user=%s fields=%s", current_user.id, ",".join(sorted(error.fields)))
        _show_errors(form, error)
        return _render_account(form, status=422)
    db.session.commit()
    # The token text is shown in this response only; it is stored as a hash.
    flash(_("Token %(name)r created. Copy it now: it will not be shown again.", name=row.name), "success")
    return _render_account(TokenForm(formdata=None), new_token=token, new_row=row, status=201)


@bp.post("/account/tokens/<int:token_id>/revoke")
@login_required
def revoke_api_token(token_id: int):
    row = revoke_token(current_user, token_id)
    db.session.commit()
    flash(_("Token %(name)r is revoked.", name=row.name), "success")
    return redirect(url_for("accounts.account"))
