"""Pledge rules: creation within the goal, the one transition function, and the ledger."""

import logging
from datetime import date, datetime, timezone
from decimal import Decimal

from sqlalchemy import Select, false, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from financing.accounts.models import User
from financing.audit import services as audit
from financing.audit.snapshots import pledge_fields
from financing.core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from financing.core.time import utcnow
from financing.extensions import db
from financing.jobs import enqueue_after_commit
from financing.funders.models import Funder
from financing.funders.services import funder_for_user
from financing.money import MAX_MAJOR_UNITS, MoneyError, check_currency, convert, minor_units
from financing.notifications import events as notifications
from financing.pledges import match_funds
from financing.pledges.models import RELEASED_STATES, ExchangeRate, Pledge, PledgeEvent
from financing.projects.models import FundingNeed, Project
from financing.projects.services import refresh_status

logger = logging.getLogger(__name__)

# (state, action) -> next state. Disbursement picks partly_disbursed or disbursed by amount,
# and a refund of part of a pledge keeps it confirmed.
TRANSITIONS: dict[tuple[str, str], str] = {
    ("pledged", "confirm"): "confirmed",
    ("pledged", "cancel"): "cancelled",
    ("confirmed", "cancel"): "cancelled",
    ("confirmed", "disburse"): "disbursed",
    ("partly_disbursed", "disburse"): "disbursed",
    ("pending_payment", "pay"): "confirmed",
    ("pending_payment", "expire"): "cancelled",
    ("confirmed", "refund"): "refunded",
    ("confirmed", "dispute_open"): "confirmed",
    ("confirmed", "dispute_won"): "confirmed",
    ("confirmed", "dispute_lost"): "refunded",
}
# States that count as confirmed money for the "funded" mark on a need.
CONFIRMED_STATES = ("confirmed", "partly_disbursed", "disbursed")


def deadline_passed(need: FundingNeed, now: datetime | None = None) -> bool:
    """Return True once the end of the need's deadline day, in UTC, has passed."""
    if need.deadline is None:
        return False
    today = (now or utcnow()).astimezone(timezone.utc).date()
    return today > need.deadline


def _check_need_open(need: FundingNeed) -> Project:
    project = need.project
    if project.status != "published":
        raise Conflict(f"Project {project.id} is {project.status} and does not accept pledges.", {"need_id": f"Project is {project.status}."})
    if need.status == "closed" or (need.status == "funded" and not need.allow_overfunding):
        raise Conflict(f"Need {need.id} is {need.status} and does not accept pledges.", {"need_id": f"Need is {need.status}."})
    if deadline_passed(need):
        raise Conflict(
            f"Need {need.id} stopped accepting pledges at the end of {need.deadline.isoformat()} (UTC).",
            {"need_id": f"Deadline {need.deadline.isoformat()} has passed."},
        )
    return project


def record(pledge: Pledge, actor: User | None, from_state: str | None, to_state: str, amount_minor: int, reason: str = "") -> PledgeEvent:
    """Append one ledger row; call in the same transaction as the state change."""
    event = PledgeEvent(
        pledge=pledge, actor_id=actor.id if actor else None, from_state=from_state,
        to_state=to_state, amount_minor=amount_minor, reason=reason, at=utcnow(),
    )
    db.session.add(event)
    return event


def reserve(need_id: int, amount_minor: int) -> bool:
    """Add an amount to the need's pledged total unless that passes the goal.

    One conditional UPDATE: concurrent pledges on PostgreSQL wait on the row lock and
    re-check the condition, so the goal holds without a read-modify-write race.
    """
    result = db.session.execute(
        update(FundingNeed)
        .where(
            FundingNeed.id == need_id,
            or_(FundingNeed.allow_overfunding.is_(True), FundingNeed.pledged_minor + amount_minor <= FundingNeed.goal_minor),
        )
        .values(pledged_minor=FundingNeed.pledged_minor + amount_minor)
        .execution_options(synchronize_session=False, cache_row=need_id)
    )
    return result.rowcount == 1


def release(need_id: int, amount_minor: int) -> None:
    db.session.execute(
        update(FundingNeed)
        .where(FundingNeed.id == need_id)
        .values(pledged_minor=FundingNeed.pledged_minor - amount_minor)
        .execution_options(synchronize_session=False, cache_row=need_id)
    )


def find_by_idempotency_key(user: User, key: str) -> Pledge | None:
    return db.session.scalar(select(Pledge).where(Pledge.created_by_id == user.id, Pledge.idempotency_key == key))


def create_pledge(
    user: User, need_id: int, amount_minor: int, currency: str, kind: str = "commitment",
    idempotency_key: str | None = None, funder: Funder | None = None, reason: str = "",
) -> tuple[Pledge, bool]:
    """Create a pledge against a need; return (pledge, created).

    Repeating a request with the same idempotency key returns the first pledge and False.
    Coordinators record pledges only for a named `funder`, because without one the pledge
    would go to a funder profile made for the coordinator's own account.
    """
    if user.role != "donor" and not user.is_coordinator:
        raise Forbidden("Only donors can pledge.")
    if funder is None and user.role != "donor":
        raise Forbidden("Only donors can pledge. Coordinators can record a pledge only for a named funder.")
    if idempotency_key:
        if len(idempotency_key) > 200:
            raise ValidationFailed("Idempotency key is too long.", {"Idempotency-Key": "At most 200 characters."})
        existing = find_by_idempotency_key(user, idempotency_key)
        if existing is not None:
            return existing, False
    if amount_minor <= 0:
        raise ValidationFailed("Amount must be greater than zero.", {"amount": f"Amount {amount_minor} minor units must be greater than zero."})
    if kind not in ("commitment", "card"):
        raise ValidationFailed(f"Unknown pledge kind {kind!r}.", {"kind": f"Kind {kind!r} must be commitment or card."})
    need = db.session.get(FundingNeed, need_id)
    if need is None or need.project.status not in ("published", "funded", "closed"):
        raise NotFound(f"Funding need {need_id} not found.", {"need_id": f"Unknown need {need_id}."})
    try:
        currency = check_currency(currency)
    except MoneyError as error:
        raise ValidationFailed(error.message, {"currency": error.message})
    rate = Decimal(1)
    need_amount = amount_minor
    if currency != need.currency:
        rate = find_rate(currency, need.currency, today_utc())
        if rate is None:
            message = f"No exchange rate from {currency} to {need.currency} is stored; pledge in {need.currency} or ask a coordinator to add the rate."
            raise ValidationFailed(message, {"currency": message})
        need_amount = convert(amount_minor, currency, need.currency, rate)
        if need_amount <= 0:
            raise ValidationFailed("Amount is too small once converted.", {"amount": f"Amount is worth less than one minor unit of {need.currency}."})
    if amount_minor > MAX_MAJOR_UNITS * 10 ** minor_units(currency):
        raise ValidationFailed("Amount is too large.", {"amount": f"Amount is larger than the maximum of {MAX_MAJOR_UNITS:,} {currency}."})
    _check_need_open(need)
    funder = funder or funder_for_user(user)

    state = "pending_payment" if kind == "card" else "pledged"
    try:
        with db.session.begin_nested():
            if not reserve(need.id, need_amount):
                # A concurrent request with the same key may have filled the need and committed
                # while this one waited on the row lock. Its pledge is then the first result.
                existing = find_by_idempotency_key(user, idempotency_key) if idempotency_key else None
                if existing is not None:
                    return existing, False
                raise Conflict(
                    f"A pledge of this amount would exceed the goal of need {need.id}.",
                    {"amount": "The amount is more than the need still requires."},
                )
            pledge = Pledge(
                need_id=need.id, funder_id=funder.id, kind=kind, state=state,
                amount_minor=amount_minor, currency=currency, need_amount_minor=need_amount, rate=rate,
                idempotency_key=idempotency_key, created_by_id=user.id,
            )
            db.session.add(pledge)
            record(pledge, user, None, state, need_amount, reason)
            db.session.flush()
    except IntegrityError:
        # A concurrent request with the same idempotency key won the insert.
        existing = find_by_idempotency_key(user, idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return existing, False
    audit.record(user, "create", "pledge", pledge.id, after={
        "state": state, "kind": kind, "amount": audit.money(amount_minor, currency),
        "need_amount": audit.money(need_amount, need.currency), "need_id": need.id, "funder_id": funder.id,
    }, reason=reason)
    if state == "pledged":
        notifications.pledge_event(pledge, "pledge_made", amount_minor, currency)
    match_funds.match_pledge(pledge, user)
    db.session.refresh(need)
    enqueue_after_commit("match.project", project_id=need.project_id)
    logger.info("pledge created id=%s need=%s funder=%s amount=%s %s user=%s", pledge.id, need.id, funder.id, amount_minor, currency, user.id)
    return pledge, True


def _lock(pledge_id: int) -> Pledge:
    pledge = db.session.scalar(select(Pledge).where(Pledge.id == pledge_id).with_for_update())
    if pledge is None:
        raise NotFound(f"Pledge {pledge_id} not found.")
    db.session.refresh(pledge)
    return pledge


def find_rate(base: str, quote: str, on: date) -> Decimal | None:
    """Return the latest stored rate from base to quote valid on a day, or None."""
    return db.session.scalar(
        select(ExchangeRate.rate)
        .where(ExchangeRate.base == base, ExchangeRate.quote == quote, ExchangeRate.valid_from <= on)
        .order_by(ExchangeRate.valid_from.desc())
        .limit(1)
    )


def confirmed_total(need_id: int) -> int:
    return db.session.scalar(
        select(func.coalesce(func.sum(Pledge.need_amount_minor - Pledge.refunded_minor), 0)).where(
            Pledge.need_id == need_id, Pledge.state.in_(CONFIRMED_STATES)
        )
    ) or 0


def _refresh_need(need: FundingNeed) -> None:
    """Mark a need funded when confirmed pledges reach its goal, and open again when not."""
    db.session.refresh(need)
    if need.status == "closed":
        return
    need.status = "funded" if confirmed_total(need.id) >= need.goal_minor else "open"
    refresh_status(need.project)


def transition(pledge_id: int, action: str, actor: User | None, amount_minor: int | None = None, reason: str = "") -> Pledge:
    """Apply one state-machine action to a pledge and write its ledger row.

    `amount_minor` is in the need's minor units: the tranche of a disbursement or the part
    of a refund; None means all that is left. Forbidden transitions raise Conflict and
    change nothing.
    """
    pledge = _lock(pledge_id)
    target = TRANSITIONS.get((pledge.state, action))
    if target is None:
        raise Conflict(f"Cannot {action.replace('_', ' ')} a pledge that is {pledge.state}.", {"state": pledge.state})
    if action == "cancel" and pledge.kind == "card" and pledge.state == "confirmed":
        raise Conflict("A paid card pledge is refunded, not cancelled.", {"state": pledge.state})
    before = pledge_fields(pledge)

    amount = pledge.active_minor
    if action == "disburse":
        amount, target = _disburse(pledge, amount_minor)
    elif action == "refund":
        amount, target = _refund(pledge, amount_minor)
    elif action == "dispute_open":
        pledge.disputed = True
    elif action in ("dispute_won", "dispute_lost"):
        pledge.disputed = False
    if target in RELEASED_STATES:
        release(pledge.need_id, pledge.active_minor)

    from_state = pledge.state
    pledge.state = target
    record(pledge, actor, from_state, target, amount, reason)
    changed_before, changed_after = audit.changes(before, pledge_fields(pledge))
    audit.record(actor, action, "pledge", pledge.id, changed_before, {**changed_after, "amount": audit.money(amount, pledge.need.currency)}, reason)
    notifications.pledge_transition(pledge, action, amount)
    db.session.flush()
    _refresh_need(pledge.need)
    enqueue_after_commit("match.project", project_id=pledge.need.project_id)
    logger.info("pledge %s id=%s from=%s to=%s amount=%s actor=%s", action, pledge.id, from_state, target, amount, actor.id if actor else None)
    match_funds.after_transition(pledge, action, actor)
    return pledge


def _disburse(pledge: Pledge, amount_minor: int | None) -> tuple[int, str]:
    outstanding = pledge.active_minor - pledge.disbursed_minor
    amount = outstanding if amount_minor is None else amount_minor
    if amount <= 0:
        raise ValidationFailed("Disbursement must be greater than zero.", {"amount": "Must be greater than zero."})
    if amount > outstanding:
        raise Conflict(
            f"Disbursement exceeds the {outstanding} minor units not yet disbursed.",
            {"amount": "More than the amount not yet disbursed."},
        )
    pledge.disbursed_minor += amount
    return amount, "disbursed" if pledge.disbursed_minor == pledge.active_minor else "partly_disbursed"


def _refund(pledge: Pledge, amount_minor: int | None) -> tuple[int, str]:
    """Refund all or part of a confirmed pledge; a partial refund releases only that part."""
    refundable = pledge.active_minor
    amount = refundable if amount_minor is None else amount_minor
    if amount <= 0:
        raise ValidationFailed("Refund must be greater than zero.", {"amount": "Must be greater than zero."})
    if amount > refundable:
        raise Conflict(f"Refund exceeds the {refundable} minor units not yet refunded.", {"amount": "More than the amount not yet refunded."})
    if amount == refundable:
        return amount, "refunded"
    release(pledge.need_id, amount)
    pledge.refunded_minor += amount
    return amount, "confirmed"


def act(user: User, pledge_id: int, action: str, amount_minor: int | None = None, reason: str = "") -> Pledge:
    """Run a coordinator action (confirm, cancel, disburse) after the access check."""
    if not user.is_coordinator:
        raise Forbidden("Only coordinators can confirm, cancel or disburse pledges.")
    if action == "cancel" and not (reason or "").strip():
        raise ValidationFailed("A reason is required to cancel a pledge.", {"reason": "Reason is required."})
    return transition(pledge_id, action, user, amount_minor, reason)


def cancel_own_pledge(user: User, pledge_id: int, reason: str) -> Pledge:
    """Cancel a donor's own pledge while it still awaits a coordinator's confirmation.

    Raises NotFound for a pledge of another funder, Forbidden for other roles, ValidationFailed
    without a reason, and Conflict once the pledge is confirmed or was made by a match fund,
    whose pledges follow the donor pledge they match.
    """
    if user.role != "donor":
        raise Forbidden("Only donors cancel their own pledges; coordinators cancel any pledge.")
    if not (reason or "").strip():
        raise ValidationFailed("A reason is required to cancel a pledge.", {"reason": "Reason is required."})
    get_pledge(user, pledge_id)
    pledge = _lock(pledge_id)
    if pledge.match_fund_id is not None:
        raise Conflict(
            f"Pledge {pledge.id} was made by a match fund; it is cancelled with the pledge it matches.",
            {"state": pledge.state},
        )
    if pledge.state != "pledged":
        raise Conflict(
            f"Pledge {pledge.id} is {pledge.state.replace('_', ' ')}; donors can cancel only pledges awaiting confirmation.",
            {"state": pledge.state},
        )
    return transition(pledge.id, "cancel", user, reason=reason.strip())


def get_pledge(user: User, pledge_id: int) -> Pledge:
    """Load a pledge that the user may see: coordinators all, donors their funder's."""
    pledge = db.session.get(Pledge, pledge_id)
    if pledge is None:
        raise NotFound(f"Pledge {pledge_id} not found.")
    if user.is_coordinator:
        return pledge
    funder = funder_for_user(user, create=False) if user.role == "donor" else None
    if funder is not None and pledge.funder_id == funder.id:
        return pledge
    if user.role == "owner" and pledge.need.project.organisation_id == user.organisation_id:
        return pledge
    raise NotFound(f"Pledge {pledge_id} not found.")


def visible_pledges(user: User) -> Select:
    """Build the query of the pledges a user may see, newest first.

    Coordinators see every pledge, donors their funder's, and owners the pledges to their
    organisation's projects, as in get_pledge.
    """
    query = select(Pledge).order_by(Pledge.created_at.desc(), Pledge.id.desc())
    if user.is_coordinator:
        return query
    if user.role == "donor":
        funder = funder_for_user(user, create=False)
        return query.where(Pledge.funder_id == funder.id) if funder is not None else query.where(false())
    if user.role == "owner" and user.organisation_id is not None:
        own_needs = select(FundingNeed.id).join(Project, Project.id == FundingNeed.project_id).where(
            Project.organisation_id == user.organisation_id
        )
        return query.where(Pledge.need_id.in_(own_needs))
    return query.where(false())


def need_totals(need_id: int) -> dict[str, int]:
    """Sum a need's pledges by bucket, in the need's minor units."""
    return needs_totals([need_id])[need_id]


def needs_totals(need_ids: list[int]) -> dict[int, dict[str, int]]:
    """Sum the pledges of several needs by bucket, each in its need's minor units, in one query."""
    totals = {need_id: {"pledged": 0, "confirmed": 0, "disbursed": 0} for need_id in need_ids}
    if not need_ids:
        return totals
    rows = db.session.execute(
        select(Pledge.need_id, Pledge.state, func.sum(Pledge.need_amount_minor - Pledge.refunded_minor), func.sum(Pledge.disbursed_minor))
        .where(Pledge.need_id.in_(need_ids)).group_by(Pledge.need_id, Pledge.state)
    ).all()
    for need_id, state, amount, disbursed in rows:
        if state in RELEASED_STATES:
            continue
        need = totals[need_id]
        need["pledged"] += int(amount or 0)
        if state in CONFIRMED_STATES:
            need["confirmed"] += int(amount or 0)
        need["disbursed"] += int(disbursed or 0)
    return totals


def today_utc() -> date:
    return utcnow().date()


# Bulk confirmation and cancellation, used by the review pages and the API.

AWAITING_CONFIRMATION = ("pledged",)
# Actions applied to several pledges at once, and the most pledges per batch.
BULK_ACTIONS = ("confirm", "cancel")
MAX_BATCH = 500


class BatchConflict(Conflict):
    """Some pledges of a batch no longer await confirmation; `pledge_ids` lists them."""

    def __init__(self, message: str, pledge_ids: list[int]):
        super().__init__(message, {"pledge": message})
        self.pledge_ids = pledge_ids


def act_on_many(user: User, pledge_ids: list[int], action: str, reason: str = "") -> list[Pledge]:
    """Confirm or cancel several pledges awaiting confirmation: all of them, or none.

    On PostgreSQL the pledges are locked in id order, so two batches that share pledges wait
    for each other instead of deadlocking. Before any pledge changes, a BatchConflict names
    every pledge that no longer awaits confirmation. Each pledge then goes through act(),
    which writes its own ledger row. The caller commits once, or rolls back on any error.
    """
    if not user.is_coordinator:
        raise Forbidden("Only coordinators can confirm or cancel pledges.")
    if action not in BULK_ACTIONS:
        raise ValidationFailed(f"Unknown action {action!r}: use confirm or cancel.", {"action": f"Unknown action {action!r}."})
    if not pledge_ids:
        raise ValidationFailed("Select at least one pledge.", {"pledge": "Select at least one pledge."})
    if len(set(pledge_ids)) > MAX_BATCH:
        message = f"Select at most {MAX_BATCH} pledges at once."
        raise ValidationFailed(message, {"pledge": message})
    if action == "cancel" and not reason.strip():
        raise ValidationFailed("A reason is required to cancel pledges.", {"reason": "Reason is required."})

    ids = sorted(set(pledge_ids))
    query = select(Pledge).where(Pledge.id.in_(ids)).order_by(Pledge.id).with_for_update().execution_options(populate_existing=True)
    pledges = list(db.session.scalars(query))
    found = {pledge.id for pledge in pledges}
    problems = [(pledge_id, "does not exist") for pledge_id in ids if pledge_id not in found]
    problems += [(pledge.id, f"is {pledge.state.replace('_', ' ')}") for pledge in pledges if pledge.state not in AWAITING_CONFIRMATION]
    if problems:
        problems.sort()
        listed = "; ".join(f"pledge {pledge_id} {what}" for pledge_id, what in problems)
        message = f"No pledge was changed, because {listed}. Only pledges awaiting confirmation can be confirmed or cancelled together."
        raise BatchConflict(message, [pledge_id for pledge_id, _ in problems])

    target = TRANSITIONS[("pledged", action)]
    for pledge in pledges:
        db.session.refresh(pledge)
        if pledge.state == target:
            # An earlier pledge of this batch moved it along, as confirming or cancelling a
            # matched pledge does to the match-fund pledge that matches it.
            continue
        act(user, pledge.id, action, None, reason.strip())
    logger.info("pledges %s in bulk ids=%s actor=%s", action, ",".join(map(str, ids)), user.id)
    return pledges
