"""Pledge pages: pledging against a need, a pledge with its ledger, and the coordinator's queue."""

import logging
from uuid import uuid4

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_babel import format_date
from flask_babel import gettext as _
from flask_login import current_user, login_required
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from financing.accounts.models import User
from financing.core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from financing.extensions import db
from financing.funders.services import funder_for_user
from financing.money import MoneyError, amount_text, format_money, parse_amount
from financing.pledges.forms import ACTION_FORMS, ActionForm, CancelForm, DisburseForm, PledgeForm
from financing.pledges.models import Pledge
from financing.pledges.services import TRANSITIONS, act, create_pledge, deadline_passed, get_pledge, need_totals
from financing.projects.models import FundingNeed
from financing.projects.services import PUBLIC, paginate

logger = logging.getLogger(__name__)

bp = Blueprint("pledges", __name__)

# States in the coordinator's two queues.
AWAITING_CONFIRMATION = ("pledged",)
AWAITING_DISBURSEMENT = ("confirmed", "partly_disbursed")
MAX_PAGE = 100_000


def page_arg() -> int:
    page = request.args.get("page", 1, type=int)
    return min(max(page, 1), MAX_PAGE)


def require_donor() -> None:
    if current_user.role != "donor":
        raise Forbidden(_("Only donor accounts can pledge."))


def require_coordinator() -> None:
    if not current_user.is_coordinator:
        raise Forbidden(_("Only coordinators can confirm, cancel or disburse pledges."))


def add_field_errors(form, fields: dict[str, str]) -> list[str]:
    """Put errors next to their fields; return the messages that belong to no field."""
    unplaced = []
    for name, text in fields.items():
        if name in form:
            form[name].errors = [*form[name].errors, text]
        else:
            unplaced.append(text)
    return unplaced


# Pledging


def visible_need(need_id: int) -> FundingNeed:
    need = db.session.get(FundingNeed, need_id)
    if need is None or need.project.status not in PUBLIC:
        raise NotFound(_("Funding need %(id)s not found.", id=need_id))
    return need


def closed_reason(need: FundingNeed) -> str | None:
    """Explain why a need takes no pledges, or return None when it does."""
    if need.project.status != "published":
        return _("This project no longer accepts pledges.")
    if need.status == "closed":
        return _("This funding need is closed.")
    if need.status == "funded" and not need.allow_overfunding:
        return _("This funding need is fully funded.")
    if deadline_passed(need):
        return _("This funding need stopped accepting pledges at the end of %(date)s (UTC).", date=format_date(need.deadline, "medium"))
    return None


def render_pledge_form(need: FundingNeed, form: PledgeForm, status: int = 200, errors: list[str] | None = None):
    # A rejected currency is reset to the need's, because the field is read-only.
    form.currency.raw_data = None
    form.currency.data = need.currency
    return render_template(
        "pledges/new.html", need=need, project=need.project, form=form, errors=errors or [],
        closed_reason=closed_reason(need), totals=need_totals(need.id),
    ), status


@bp.route("/needs/<int:need_id>/pledge", methods=["GET", "POST"])
@login_required
def new(need_id: int):
    require_donor()
    need = visible_need(need_id)
    if request.method == "GET":
        form = PledgeForm(data={"currency": need.currency, "idempotency_key": str(uuid4())})
        return render_pledge_form(need, form)

    form = PledgeForm()
    valid = form.validate_on_submit()
    currency = (form.currency.data or "").strip()
    amount_minor = None
    try:
        amount_minor = parse_amount(form.amount.data, currency, "amount")
    except MoneyError as error:
        add_field_errors(form, {error.field: error.message})
    if not valid or amount_minor is None:
        if form.idempotency_key.errors:
            # The posted key is unusable, so the corrected form gets a new one.
            form.idempotency_key.raw_data = None
            form.idempotency_key.data = str(uuid4())
        return render_pledge_form(need, form, 422)

    try:
        pledge, created = create_pledge(
            current_user, need.id, amount_minor, currency, form.kind.data,
            idempotency_key=form.idempotency_key.data,
        )
    except Conflict as error:
        db.session.rollback()
        logger.info("pledge rejected need=%s user=%s status=409: %s", need.id, current_user.id, error.message)
        if "amount" in error.fields:
            remaining = format_money(need.remaining_minor, need.currency)
            form.amount.errors = [_("The amount is more than the need still requires (remaining: %(remaining)s).", remaining=remaining)]
            return render_pledge_form(need, form, 409)
        return render_pledge_form(need, form, 409, [error.message])
    except ValidationFailed as error:
        db.session.rollback()
        logger.info("pledge rejected need=%s user=%s status=422: %s", need.id, current_user.id, error.message)
        return render_pledge_form(need, form, 422, add_field_errors(form, error.fields))
    db.session.commit()

    if created:
        flash(_("Thank you: your pledge of %(amount)s is recorded.", amount=format_money(pledge.amount_minor, pledge.currency)), "success")
    else:
        flash(_("This pledge was already recorded; it was not made a second time."), "info")
    return redirect(url_for("pledges.detail", pledge_id=pledge.id))


# One pledge and the coordinator's actions


def action_forms(pledge: Pledge) -> dict[str, ActionForm]:
    """Build a blank form for each action the pledge's state allows."""
    forms: dict[str, ActionForm] = {}
    for action, form_class in ACTION_FORMS.items():
        if (pledge.state, action) not in TRANSITIONS:
            continue
        if action == "cancel" and pledge.kind == "card" and pledge.state == "confirmed":
            continue  # a paid card pledge is refunded through Stripe, not cancelled
        form = form_class(pledge.id, formdata=None)
        if isinstance(form, DisburseForm):
            form.amount.data = amount_text(pledge.need_amount_minor - pledge.disbursed_minor, pledge.need.currency)
        forms[action] = form
    return forms


def render_detail(pledge: Pledge, failed: ActionForm | None = None, status: int = 200, errors: list[str] | None = None):
    forms = action_forms(pledge) if current_user.is_coordinator else {}
    errors = list(errors or [])
    if failed is not None and failed.action in forms:
        forms[failed.action] = failed
    elif failed is not None:
        # The state no longer offers this action, so its form is not shown: list its errors on top.
        errors += [text for name, texts in failed.errors.items() if name != "return_to" for text in texts if text not in errors]
    events = list(pledge.events)
    actor_ids = {event.actor_id for event in events if event.actor_id is not None}
    actors = {user.id: user for user in db.session.scalars(select(User).where(User.id.in_(actor_ids)))} if actor_ids else {}
    return render_template(
        "pledges/detail.html", pledge=pledge, need=pledge.need, project=pledge.need.project,
        events=events, actors=actors, forms=forms, errors=errors,
    ), status


@bp.get("/pledges/<int:pledge_id>")
@login_required
def detail(pledge_id: int):
    return render_detail(get_pledge(current_user, pledge_id))[0]


@bp.post("/pledges/<int:pledge_id>/<any(confirm, cancel, disburse):action>")
@login_required
def act_on(pledge_id: int, action: str):
    require_coordinator()
    pledge = get_pledge(current_user, pledge_id)
    form = ACTION_FORMS[action](pledge.id)
    if not form.validate_on_submit():
        return render_detail(pledge, form, 422)

    amount_minor = None
    if isinstance(form, DisburseForm):
        try:
            amount_minor = parse_amount(form.amount.data, pledge.need.currency, "amount")
        except MoneyError as error:
            form.amount.errors = [*form.amount.errors, error.message]
            return render_detail(pledge, form, 422)
    reason = form.reason.data.strip() if isinstance(form, CancelForm) and form.reason.data else ""

    try:
        act(current_user, pledge.id, action, amount_minor, reason)
    except (ValidationFailed, Conflict) as error:
        db.session.rollback()
        logger.info("pledge %s rejected id=%s user=%s status=%s: %s", action, pledge_id, current_user.id, error.status, error.message)
        unplaced = add_field_errors(form, {name: text for name, text in error.fields.items() if name != "state"})
        return render_detail(pledge, form, error.status, [error.message] if unplaced or "state" in error.fields else [])
    db.session.commit()

    messages = {
        "confirm": _("Pledge %(id)s confirmed.", id=pledge.id),
        "cancel": _("Pledge %(id)s cancelled.", id=pledge.id),
        "disburse": _("Disbursement of %(amount)s recorded on pledge %(id)s.", id=pledge.id, amount=format_money(amount_minor or 0, pledge.need.currency)),
    }
    flash(messages[action], "success")
    if form.return_to.data == "review":
        return redirect(url_for("pledges.review"))
    return redirect(url_for("pledges.detail", pledge_id=pledge.id))


# Lists


def pledge_list(query, page: int) -> tuple[list[Pledge], int]:
    query = query.options(selectinload(Pledge.need).selectinload(FundingNeed.project), selectinload(Pledge.funder))
    return paginate(query, page, current_app.config["PER_PAGE"])


@bp.get("/pledges/mine")
@login_required
def mine():
    require_donor()
    page = page_arg()
    funder = funder_for_user(current_user, create=False)
    pledges, total = [], 0
    if funder is not None:
        query = select(Pledge).where(Pledge.funder_id == funder.id).order_by(Pledge.created_at.desc(), Pledge.id.desc())
        pledges, total = pledge_list(query, page)
    return render_template(
        "pledges/mine.html", funder=funder, pledges=pledges, total=total, page=page,
        per_page=current_app.config["PER_PAGE"],
    )


@bp.get("/pledges/review")
@login_required
def review():
    require_coordinator()
    page = page_arg()
    oldest_first = (Pledge.created_at.asc(), Pledge.id.asc())
    to_confirm, confirm_total = pledge_list(
        select(Pledge).where(Pledge.state.in_(AWAITING_CONFIRMATION)).order_by(*oldest_first), page
    )
    to_disburse, disburse_total = pledge_list(
        select(Pledge).where(Pledge.state.in_(AWAITING_DISBURSEMENT)).order_by(*oldest_first), page
    )
    forms = {pledge.id: action_forms(pledge) for pledge in [*to_confirm, *to_disburse]}
    for pledge_forms in forms.values():
        for form in pledge_forms.values():
            form.return_to.data = "review"
    return render_template(
        "pledges/review.html", to_confirm=to_confirm, confirm_total=confirm_total,
        to_disburse=to_disburse, disburse_total=disburse_total, forms=forms, page=page,
        per_page=current_app.config["PER_PAGE"], total=max(confirm_total, disburse_total),
    )
