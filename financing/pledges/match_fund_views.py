"""Match fund pages: the list, a new fund, and a fund with its balance and the pledges it matched."""

import logging
from decimal import Decimal

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from financing.core.errors import Forbidden, ValidationFailed
from financing.extensions import db
from financing.funders.models import Funder
from financing.pledges.match_fund_forms import ActiveForm, MatchFundForm
from financing.pledges.match_funds import (
    create_match_fund,
    fund_status,
    funds_query,
    get_match_fund,
    matches_of_fund,
    set_active,
    validate_for,
)
from financing.pledges.models import MatchFund, Pledge
from financing.pledges.services import today_utc
from financing.projects.models import FundingNeed
from financing.projects.services import paginate

logger = logging.getLogger(__name__)

bp = Blueprint("match_funds", __name__)

MAX_PAGE = 100_000


@bp.app_template_filter("match_factor")
def factor_text(factor: Decimal) -> str:
    """Format a factor without trailing zeros: 2, 0.5, 1.25."""
    return format(factor.normalize(), "f")


def page_arg() -> int:
    page = request.args.get("page", 1, type=int)
    return min(max(page, 1), MAX_PAGE)


def per_page() -> int:
    return current_app.config["PER_PAGE"]


def require_fund_role() -> None:
    if current_user.role != "donor" and not current_user.is_coordinator:
        raise Forbidden(_("Only donors and coordinators have match funds."))


@bp.get("/match-funds")
@login_required
def index():
    require_fund_role()
    page = page_arg()
    query = funds_query(current_user).options(selectinload(MatchFund.funder), selectinload(MatchFund.rules))
    funds, total = paginate(query, page, per_page())
    return render_template(
        "match_funds/list.html", funds=funds, total=total, page=page, per_page=per_page(),
        today=today_utc(), fund_status=fund_status,
    )


def funder_choices() -> list[Funder] | None:
    """Return the funders a coordinator picks from, or None for a donor, whose fund is its own."""
    if not current_user.is_coordinator:
        return None
    return list(db.session.scalars(select(Funder).order_by(Funder.name, Funder.id)))


def add_field_errors(form: MatchFundForm, fields: dict[str, str]) -> None:
    """Put service errors next to their fields, skipping fields the form already rejected."""
    for name, text in fields.items():
        if name in form and not form[name].errors:
            form[name].errors = [*form[name].errors, text]
        elif name not in form:
            form.form_errors.append(text)


def render_form(form: MatchFundForm, status: int = 200):
    return render_template("match_funds/new.html", form=form), status


@bp.route("/match-funds/new", methods=["GET", "POST"])
@login_required
def new():
    require_fund_role()
    funders = funder_choices()
    form = MatchFundForm(funders=funders)
    if request.method == "GET":
        return render_form(form)

    valid = form.validate_on_submit()
    data = form.to_input()
    if not valid:
        # Run the service's checks too, so that every invalid field is reported at once.
        try:
            validate_for(current_user, data)
        except ValidationFailed as error:
            add_field_errors(form, error.fields)
        db.session.rollback()
        logger.info("match fund form rejected user=%s fields=%s", current_user.id, sorted(str(name) for name in form.errors))
        return render_form(form, 422)

    try:
        fund = create_match_fund(current_user, data)
    except ValidationFailed as error:
        db.session.rollback()
        logger.info("match fund rejected user=%s: %s %s", current_user.id, error.message, sorted(error.fields))
        add_field_errors(form, error.fields)
        return render_form(form, 422)
    db.session.commit()
    flash(_("Match fund %(name)s created.", name=fund.name), "success")
    return redirect(url_for("match_funds.detail", fund_id=fund.id))


@bp.get("/match-funds/<int:fund_id>")
@login_required
def detail(fund_id: int):
    fund = get_match_fund(current_user, fund_id)
    page = page_arg()
    query = matches_of_fund(fund.id).options(selectinload(Pledge.need).selectinload(FundingNeed.project))
    matches, total = paginate(query, page, per_page())
    donor_ids = [match.matches_pledge_id for match in matches if match.matches_pledge_id is not None]
    donor_pledges = {}
    if donor_ids:
        query = select(Pledge).where(Pledge.id.in_(donor_ids)).options(selectinload(Pledge.funder))
        donor_pledges = {pledge.id: pledge for pledge in db.session.scalars(query)}
    active_form = ActiveForm(formdata=None, data={"active": "0" if fund.active else "1"})
    return render_template(
        "match_funds/detail.html", fund=fund, matches=matches, donor_pledges=donor_pledges,
        total=total, page=page, per_page=per_page(), status=fund_status(fund, today_utc()),
        active_form=active_form,
    )


@bp.post("/match-funds/<int:fund_id>/active")
@login_required
def change_active(fund_id: int):
    fund = get_match_fund(current_user, fund_id)
    form = ActiveForm()
    if not form.validate_on_submit() or form.active.data not in ("0", "1"):
        logger.info("match fund pause or resume rejected id=%s user=%s active=%r", fund.id, current_user.id, form.active.data)
        flash(_("The form is incomplete (active %(value)r); submit it again.", value=form.active.data), "error")
        return redirect(url_for("match_funds.detail", fund_id=fund.id))
    set_active(current_user, fund, form.active.data == "1")
    db.session.commit()
    if fund.active:
        flash(_("Match fund %(name)s matches new pledges again.", name=fund.name), "success")
    else:
        flash(_("Match fund %(name)s is paused; it matches no new pledges.", name=fund.name), "success")
    return redirect(url_for("match_funds.detail", fund_id=fund.id))
