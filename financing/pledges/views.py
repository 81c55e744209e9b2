"""Pledge pages: pledging against a need, a pledge with its ledger, and the coordinator's queue."""

import logging
from datetime import timedelta
from uuid import uuid4

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_babel import format_date
from flask_babel import gettext as _
from flask_babel import ngettext
from flask_login import current_user, login_required
from sqlalchemy import Select, select
from sqlalchemy.orm import selectinload
from wtforms.fields.choices import SelectChoice

from financing import reference
from financing.accounts.models import User
from financing.core.errors import Conflict, DomainError, Forbidden, NotFound, ValidationFailed
from financing.core.time import utcnow
from financing.extensions import db
from financing.funders.models import Funder
from financing.funders.services import funder_for_user
from financing.money import MoneyError, amount_text, check_currency, format_money, parse_amount
from financing.pledges.forms import ACTION_FORMS, KIND_LABELS, ActionForm, BulkActionForm, CancelForm, DisburseForm, PledgeForm, ReviewFilterForm
from financing.pledges.match_funds import matched_by, offer_for_need, preview_match
from financing.pledges.models import Pledge
from financing.pledges.services import (
    AWAITING_CONFIRMATION,
    TRANSITIONS,
    act,
    act_on_many,
    create_pledge,
    deadline_passed,
    get_pledge,
    need_totals,
)
from financing.projects.models import FundingNeed, Project
from financing.projects.services import PUBLIC, paginate
from financing.rates.services import currencies_with_rate_to, current_rates, rate_text

logger = logging.getLogger(__name__)

bp = Blueprint("pledges", __name__)

# States in the coordinator's two queues.
AWAITING_DISBURSEMENT = ("confirmed", "partly_disbursed")
# Largest "older than" filter, in days.
MAX_AGE_DAYS = 36_500
# Longest id accepted from a form; 18 digits stay inside a signed 64-bit integer.
MAX_ID_DIGITS = 18
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


def currency_options(need: FundingNeed) -> list[str]:
    """Return the need's currency, then the currencies with a rate into it valid today."""
    return [need.currency, *(code for code in currencies_with_rate_to(need.currency) if code != need.currency)]


def cards_enabled() -> bool:
    return bool(current_app.config.get("STRIPE_SECRET_KEY"))


def kind_options() -> list[str]:
    return ["commitment", "card"] if cards_enabled() else ["commitment"]


def render_pledge_form(need: FundingNeed, form: PledgeForm, status: int = 200, errors: list[str] | None = None, amount_minor: int | None = None):
    currencies = currency_options(need)
    form.currency.choices = [SelectChoice(code, f"{code} · {reference.currency(code).name}") for code in currencies]
    if form.currency.data not in currencies:
        # A currency without a rate cannot be selected again; its error names it.
        form.currency.data = need.currency
    form.kind.choices = [SelectChoice(kind, KIND_LABELS[kind]) for kind in kind_options()]
    if form.kind.data not in kind_options():
        form.kind.data = "commitment"
    rates = [rate for rate in current_rates() if rate.quote == need.currency and rate.base in currencies]
    funder = funder_for_user(current_user, create=False)
    fund_preview = preview_match(need, amount_minor, funder, form.currency.data) if amount_minor else None
    return render_template(
        "pledges/new.html", need=need, project=need.project, form=form, errors=errors or [],
        closed_reason=closed_reason(need), totals=need_totals(need.id), rates=rates,
        fund_offer=offer_for_need(need, funder), fund_preview=fund_preview,
    ), status


def check_kind(form: PledgeForm) -> bool:
    """Put an error on the kind field unless the posted kind is offered; return whether it is."""
    kind = form.kind.data
    if kind in kind_options():
        return True
    if kind == "card":
        form.kind.errors = [*form.kind.errors, _("Card payments are switched off on this platform.")]
    else:
        form.kind.errors = [*form.kind.errors, _("Unknown kind of pledge %(value)r: choose Commitment or Card payment.", value=kind)]
    return False


def start_card_pledge(need: FundingNeed, amount_minor: int, currency: str, idempotency_key: str) -> tuple[Pledge, str | None, bool]:
    """Create a card pledge and its Stripe Checkout Session; return (pledge, checkout URL, created)."""
    # Imported here because the payments package is only needed when card payments are on.
    from financing.payments.services import create_card_pledge
    from financing.payments.views import checkout_return_urls

    success_url, cancel_url = checkout_return_urls()
    return create_card_pledge(current_user, need.id, amount_minor, currency, idempotency_key, success_url, cancel_url)


def pledge_recorded_message(pledge: Pledge) -> str:
    amount = format_money(pledge.amount_minor, pledge.currency)
    if pledge.currency == pledge.need.currency:
        return _("Thank you: your pledge of %(amount)s is recorded.", amount=amount)
    return _(
        "Thank you: your pledge of %(amount)s is recorded. It counts as %(converted)s against the goal, at 1 %(base)s = %(rate)s %(quote)s.",
        amount=amount, converted=format_money(pledge.need_amount_minor, pledge.need.currency),
        base=pledge.currency, quote=pledge.need.currency, rate=rate_text(pledge.rate),
    )


@bp.route("/needs/<int:need_id>/pledge", methods=["GET", "POST"])
@login_required
def new(need_id: int):
    require_donor()
    need = visible_need(need_id)
    if request.method == "GET":
        typed = request.args.get("amount", "")[:40]
        form = PledgeForm(data={"currency": need.currency, "kind": "commitment", "idempotency_key": str(uuid4()), "amount": typed})
        try:
            amount_minor = parse_amount(typed, need.currency) if typed else None
        except MoneyError:
            amount_minor = None
        return render_pledge_form(need, form, amount_minor=amount_minor)

    form = PledgeForm()
    valid = form.validate_on_submit()
    valid = check_kind(form) and valid
    currency = (form.currency.data or "").strip().upper()
    amount_minor = None
    try:
        amount_minor = parse_amount(form.amount.data, currency, "amount")
    except MoneyError as error:
        add_field_errors(form, {error.field: error.message})
    if not valid or amount_minor is None:
        if form.idempotency_key.errors:
            # The posted key is unusable, so the corrected form gets a new one.
            renew_key(form)
        return render_pledge_form(need, form, 422, amount_minor=amount_minor)

    checkout_url = None
    try:
        if form.kind.data == "card":
            pledge, checkout_url, created = start_card_pledge(need, amount_minor, currency, form.idempotency_key.data)
        else:
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
        return render_pledge_form(need, form, 409, place_errors(form, error))
    except ValidationFailed as error:
        db.session.rollback()
        logger.info("pledge rejected need=%s user=%s status=422: %s", need.id, current_user.id, error.message)
        return render_pledge_form(need, form, 422, add_field_errors(form, error.fields))
    except (Forbidden, NotFound):
        raise
    except DomainError as error:
        # Stripe failed: the payments service has cancelled and committed the pledge made
        # with this key, so a retry needs a new key to make a new pledge.
        db.session.rollback()
        logger.warning("card pledge failed need=%s user=%s status=%s: %s", need.id, current_user.id, error.status, error.message)
        renew_key(form)
        return render_pledge_form(need, form, error.status, [error.message])
    db.session.commit()

    if checkout_url:
        return redirect(checkout_url, code=303)
    if created:
        flash(pledge_recorded_message(pledge), "success")
        matched = matched_by(pledge)
        if matched is not None:
            fund, match = matched
            flash(_("The %(fund)s match fund adds %(amount)s to your pledge.", fund=fund.name, amount=format_money(match.amount_minor, match.currency)), "success")
    else:
        flash(_("This pledge was already recorded; it was not made a second time."), "info")
    return redirect(url_for("pledges.detail", pledge_id=pledge.id))


def place_errors(form, error: DomainError) -> list[str]:
    """Put an error's messages next to the form's fields.

    Return the error's whole message, for the top of the page, when some of them belong to no
    field or the error names no field.
    """
    unplaced = add_field_errors(form, error.fields)
    return [error.message] if unplaced or not error.fields else []


def renew_key(form: PledgeForm) -> None:
    form.idempotency_key.raw_data = None
    form.idempotency_key.data = str(uuid4())


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


# The coordinator's review queues and bulk reconciliation


def parse_id(value: object) -> int | None:
    """Return a posted database id as an int, or None unless it is 1 to 18 ASCII digits."""
    text = str(value if value is not None else "").strip()
    if text.isascii() and text.isdigit() and len(text) <= MAX_ID_DIGITS:
        return int(text)
    return None


def review_filters(form: ReviewFilterForm) -> dict:
    """Read the queue filters; a bad value gets an error on its field and is not applied."""
    filters: dict = {}
    for name in ("project", "funder"):
        value = (form[name].data or "").strip()
        if value and parse_id(value) is None:
            form[name].errors = [*form[name].errors, _("%(field)s %(value)r is not an id.", field=form[name].label.text, value=value)]
        elif value:
            filters[name] = parse_id(value)
    currency = (form.currency.data or "").strip()
    if currency:
        try:
            filters["currency"] = check_currency(currency)
        except MoneyError as error:
            form.currency.errors = [*form.currency.errors, error.message]
    older_than = (form.older_than.data or "").strip()
    if older_than and not (older_than.isascii() and older_than.isdigit() and int(older_than) <= MAX_AGE_DAYS):
        form.older_than.errors = [*form.older_than.errors, _("Older than %(value)r is not a number of days from 0 to %(max)s.", value=older_than, max=MAX_AGE_DAYS)]
    elif older_than:
        filters["older_than"] = int(older_than)
    return filters


def awaiting_confirmation(filters: dict) -> Select:
    query = select(Pledge).where(Pledge.state.in_(AWAITING_CONFIRMATION))
    if "project" in filters:
        query = query.join(FundingNeed, Pledge.need_id == FundingNeed.id).where(FundingNeed.project_id == filters["project"])
    if "funder" in filters:
        query = query.where(Pledge.funder_id == filters["funder"])
    if "currency" in filters:
        query = query.where(Pledge.currency == filters["currency"])
    if "older_than" in filters:
        query = query.where(Pledge.created_at <= utcnow() - timedelta(days=filters["older_than"]))
    return query.order_by(Pledge.created_at.asc(), Pledge.id.asc())


def set_filter_choices(form: ReviewFilterForm) -> None:
    """Offer the projects, funders and currencies of the pledges awaiting confirmation."""
    waiting = Pledge.state.in_(AWAITING_CONFIRMATION)
    projects = db.session.execute(
        select(Project.id, Project.title).join(FundingNeed, FundingNeed.project_id == Project.id)
        .join(Pledge, Pledge.need_id == FundingNeed.id).where(waiting).distinct().order_by(Project.title, Project.id)
    ).all()
    funders = db.session.execute(
        select(Funder.id, Funder.name).join(Pledge, Pledge.funder_id == Funder.id).where(waiting).distinct().order_by(Funder.name, Funder.id)
    ).all()
    currencies = db.session.scalars(select(Pledge.currency).where(waiting).distinct().order_by(Pledge.currency)).all()
    anything = [SelectChoice("", _("Any"))]
    form.project.choices = anything + [SelectChoice(str(row.id), row.title) for row in projects]
    form.funder.choices = anything + [SelectChoice(str(row.id), row.name) for row in funders]
    form.currency.choices = anything + [SelectChoice(code, code) for code in currencies]
    # A filter value that matches no waiting pledge stays selected, so the form shows it.
    for field in (form.project, form.funder, form.currency):
        value = field.data or ""
        if value and value not in {choice.value for choice in field.choices}:
            field.choices.append(SelectChoice(value, value))


def render_review(bulk: BulkActionForm | None = None, status: int = 200, errors: list[str] | None = None):
    filter_form = ReviewFilterForm(formdata=request.args)
    filter_form.validate()
    set_filter_choices(filter_form)
    filters = review_filters(filter_form)
    if any(field.errors for field in filter_form) and status == 200:
        status = 422
    filter_args = {name: request.args[name] for name in ("project", "funder", "currency", "older_than") if request.args.get(name)}

    page = page_arg()
    to_confirm, confirm_total = pledge_list(awaiting_confirmation(filters), page)
    oldest_first = (Pledge.created_at.asc(), Pledge.id.asc())
    to_disburse, disburse_total = pledge_list(
        select(Pledge).where(Pledge.state.in_(AWAITING_DISBURSEMENT)).order_by(*oldest_first), page
    )
    forms = {pledge.id: action_forms(pledge) for pledge in [*to_confirm, *to_disburse]}
    for pledge_forms in forms.values():
        for form in pledge_forms.values():
            form.return_to.data = "review"

    if bulk is None:
        bulk = BulkActionForm(formdata=None)
    if request.method == "GET" and request.args.get("select") == "page":
        selected = {pledge.id for pledge in to_confirm}
    else:
        selected = {parse_id(value) for value in bulk.pledge.data or []} - {None}
    return render_template(
        "pledges/review.html", to_confirm=to_confirm, confirm_total=confirm_total,
        to_disburse=to_disburse, disburse_total=disburse_total, forms=forms, page=page,
        per_page=current_app.config["PER_PAGE"], total=max(confirm_total, disburse_total),
        filter_form=filter_form, filter_args=filter_args, filtered=bool(filters), bulk=bulk,
        selected=selected, errors=errors or [],
    ), status


@bp.get("/pledges/review")
@login_required
def review():
    require_coordinator()
    return render_review()


@bp.post("/pledges/review")
@login_required
def review_bulk():
    require_coordinator()
    bulk = BulkActionForm()
    if not bulk.validate_on_submit():
        return render_review(bulk, 422)

    pledge_ids = []
    for value in bulk.pledge.data or []:
        pledge_id = parse_id(value)
        if pledge_id is None:
            bulk.pledge.errors = [*bulk.pledge.errors, _("Pledge id %(value)r is not a number.", value=value)]
            continue
        pledge_ids.append(pledge_id)
    if bulk.pledge.errors:
        return render_review(bulk, 422, list(bulk.pledge.errors))

    action = bulk.action.data or ""
    try:
        pledges = act_on_many(current_user, pledge_ids, action, bulk.reason.data or "")
    except (ValidationFailed, Conflict) as error:
        db.session.rollback()
        logger.info("bulk pledge %s rejected ids=%s user=%s status=%s: %s", action, pledge_ids, current_user.id, error.status, error.message)
        add_field_errors(bulk, {name: text for name, text in error.fields.items() if name == "reason"})
        return render_review(bulk, error.status, [error.message])
    db.session.commit()

    if action == "confirm":
        flash(ngettext("Confirmed %(num)d pledge.", "Confirmed %(num)d pledges.", len(pledges)), "success")
    else:
        flash(ngettext("Cancelled %(num)d pledge.", "Cancelled %(num)d pledges.", len(pledges)), "success")
    filter_args = {name: request.args[name] for name in ("project", "funder", "currency", "older_than", "page") if request.args.get(name)}
    return redirect(url_for("pledges.review", **filter_args))
