"""Funder pages: the public list and profiles, and the donor's own profile form."""

import logging

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required
from sqlalchemy import Select, exists, or_, select
from sqlalchemy.orm import selectinload

from financing import reference
from financing.core.errors import Forbidden, ValidationFailed
from financing.extensions import db
from financing.funders.forms import FunderFilterForm, FunderProfileForm
from financing.funders.models import Funder, FunderPreference
from financing.funders.services import FunderInput, funder_for_user, get_funder, update_funder, validate
from financing.money import MoneyError, amount_text, check_currency, parse_amount
from financing.pledges.models import Pledge
from financing.projects.models import FundingNeed, Project
from financing.projects.services import PUBLIC, paginate

logger = logging.getLogger(__name__)

bp = Blueprint("funders", __name__)

# Pledge states shown on a funder's public profile; pending card payments and withdrawn
# pledges are left out.
PUBLIC_PLEDGE_STATES = ("pledged", "confirmed", "partly_disbursed", "disbursed")
# Larger page numbers are clamped to this, so OFFSET stays a small integer.
MAX_PAGE = 100_000


def page_arg() -> int:
    """Read the 1-based page number from the query string; bad values fall back to page 1."""
    page = request.args.get("page", 1, type=int)
    return min(max(page, 1), MAX_PAGE)


def per_page() -> int:
    return current_app.config["PER_PAGE"]


def _prefers(kind: str, codes) -> object:
    return exists().where(
        FunderPreference.funder_id == Funder.id, FunderPreference.kind == kind, FunderPreference.code.in_(codes)
    )


def funder_query(region: str | None, theme: str | None, kind: str | None) -> Select:
    """Build the funder list query; a country or sector preference counts for its region or theme."""
    query = select(Funder).options(selectinload(Funder.preferences))
    if kind:
        query = query.where(Funder.kind == kind)
    if region:
        countries = sorted(reference.regions()[region].countries)
        query = query.where(or_(_prefers("region", [region]), _prefers("country", countries)))
    if theme:
        sectors = sorted(reference.themes()[theme].sectors)
        query = query.where(or_(_prefers("theme", [theme]), _prefers("sector", sectors)))
    return query.order_by(Funder.name, Funder.id)


@bp.get("/funders")
def browse():
    form = FunderFilterForm(formdata=request.args)
    page = page_arg()
    if not form.validate():
        return render_template("funders/browse.html", form=form, funders=[], total=0, page=1, per_page=per_page(), args={}), 422

    filters = {name: form[name].data or None for name in ("region", "theme", "kind")}
    funders, total = paginate(funder_query(**filters), page, per_page())
    args = {name: value for name, value in filters.items() if value}
    return render_template("funders/browse.html", form=form, funders=funders, total=total, page=page, per_page=per_page(), args=args)


@bp.get("/funders/<int:funder_id>")
def detail(funder_id: int):
    funder = get_funder(funder_id)
    query = (
        select(Pledge)
        .join(FundingNeed, Pledge.need_id == FundingNeed.id)
        .join(Project, FundingNeed.project_id == Project.id)
        .where(Pledge.funder_id == funder.id, Project.status.in_(PUBLIC), Pledge.state.in_(PUBLIC_PLEDGE_STATES))
        .options(selectinload(Pledge.need).selectinload(FundingNeed.project))
        .order_by(Pledge.created_at.desc(), Pledge.id.desc())
    )
    page = page_arg()
    pledges, total = paginate(query, page, per_page())
    return render_template(
        "funders/detail.html", funder=funder, pledges=pledges, total=total, page=page, per_page=per_page(),
    )


def require_donor() -> None:
    if current_user.role != "donor":
        raise Forbidden(_("Only donor accounts have a funder profile."))


def initial_data(funder: Funder | None) -> dict:
    """Fill the profile form from the stored funder, or from the account for a new one."""
    if funder is None:
        organisation = current_user.organisation
        return {
            "name": organisation.name if organisation else (current_user.name or current_user.email),
            "kind": "institution" if organisation else "individual",
            "currency": "EUR",
        }
    data = {
        "name": funder.name, "kind": funder.kind, "description": funder.description,
        "currency": funder.currency,
        "decision_days": str(funder.decision_days) if funder.decision_days is not None else "",
        "regions": funder.regions, "countries": funder.countries,
        "themes": funder.themes, "sectors": funder.sectors,
    }
    for name, attribute in FunderProfileForm.AMOUNT_FIELDS.items():
        value = getattr(funder, attribute)
        data[name] = amount_text(value, funder.currency) if value is not None else ""
    return data


def add_errors(form: FunderProfileForm, fields: dict[str, str], message: str) -> None:
    """Put service errors next to their fields; errors without a field go above the form."""
    unplaced = False
    for name, text in fields.items():
        if name in form:
            form[name].errors = [*form[name].errors, text]
        else:
            unplaced = True
    if unplaced or not fields:
        form.form_errors.append(message)


def read_profile(form: FunderProfileForm) -> tuple[FunderInput, dict[str, str]]:
    """Build a FunderInput from the form, parsing amounts in the chosen currency."""
    errors: dict[str, str] = {}
    data = FunderInput(
        name=form.name.data or "", kind=form.kind.data, description=form.description.data or "",
        currency=(form.currency.data or "").strip(),
        regions=form.regions.data or [], countries=form.countries.data or [],
        themes=form.themes.data or [], sectors=form.sectors.data or [],
    )
    days = (form.decision_days.data or "").strip()
    if days:
        if days.isascii() and days.isdigit():
            data.decision_days = int(days)
        else:
            errors["decision_days"] = _("Decision time %(value)r is not a whole number of days.", value=days)

    try:
        currency = check_currency(data.currency)
    except MoneyError as error:
        errors["currency"] = error.message
        return data, errors
    for name, attribute in FunderProfileForm.AMOUNT_FIELDS.items():
        text = (form[name].data or "").strip()
        if not text:
            continue
        try:
            setattr(data, attribute, parse_amount(text, currency, name))
        except MoneyError as error:
            errors[name] = error.message
    return data, errors


def render_profile(form: FunderProfileForm, funder: Funder | None, status: int = 200):
    return render_template("funders/edit.html", form=form, funder=funder), status


@bp.route("/funders/profile", methods=["GET", "POST"])
@login_required
def edit_own():
    require_donor()
    funder = funder_for_user(current_user, create=False)
    if request.method == "GET":
        return render_profile(FunderProfileForm(data=initial_data(funder)), funder)

    form = FunderProfileForm()
    valid = form.validate_on_submit()
    data, errors = read_profile(form)
    if not valid or errors:
        # Run the service's checks too, so that every invalid field is reported at once.
        try:
            validate(data)
        except ValidationFailed as error:
            errors = {**error.fields, **errors}
        errors = {name: text for name, text in errors.items() if not (name in form and form[name].errors)}
        add_errors(form, errors, _("The funder profile has invalid fields."))
        return render_profile(form, funder, 422)

    try:
        funder = funder or funder_for_user(current_user)
        update_funder(current_user, funder, data)
    except ValidationFailed as error:
        db.session.rollback()
        logger.info("funder profile rejected user=%s: %s", current_user.id, error.message)
        add_errors(form, error.fields, error.message)
        return render_profile(form, funder_for_user(current_user, create=False), 422)
    db.session.commit()
    flash(_("Funder profile saved."), "success")
    return redirect(url_for("funders.detail", funder_id=funder.id))
