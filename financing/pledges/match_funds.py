"""Match funds: a funder's promise to add to eligible pledges, within caps and a time window.

A donor pledge that fits an active fund gets a second pledge, from the fund's funder, in the
same transaction. The pledge service calls `match_pledge` after it creates a pledge and
`after_transition` after every state change; both are safe to call twice.

Rules of this module:

- A fund matches a pledge when the fund is active, today (UTC) lies in its window, its
  currency is the need's currency, its funder is not the donor's funder, and the project fits
  its rules. Region and country rules are alternatives, and so are theme and sector rules;
  a project must fit one of each group that has rules. A region rule also takes a country
  inside the region, and a theme rule a DAC sector under the theme.
- The oldest fitting fund with money left makes the match, and a pledge gets at most one.
- The match follows the donor pledge. It starts in the donor pledge's state: "pledged" for a
  commitment, and "confirmed" for a card pledge, which is matched only once it is paid. It is
  confirmed with the donor pledge, shrinks with a partial refund, and is cancelled when the
  donor pledge is cancelled, expires or is refunded.
- `used_minor` grows by a conditional UPDATE that keeps it within the total cap, and is
  recounted from the fund's active pledges when one of them is released.
"""

import logging
import re
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_FLOOR, Decimal

from sqlalchemy import Select, func, or_, select, update
from sqlalchemy.orm import selectinload

from financing import reference
from financing.accounts.models import User
from financing.audit import services as audit
from financing.audit.snapshots import match_fund_fields
from financing.core.errors import Forbidden, NotFound, ValidationFailed
from financing.extensions import db
from financing.funders.models import Funder
from financing.funders.services import funder_for_user
from financing.money import MoneyError, check_currency, convert, parse_amount
from financing.notifications import events as notifications
from financing.pledges import services as pledge_services
from financing.pledges.models import RELEASED_STATES, MatchFund, MatchFundRule, Pledge
from financing.projects.models import FundingNeed, Project
from financing.projects.services import check_codes

logger = logging.getLogger(__name__)

MAX_FACTOR = Decimal(10)
# The factor column is Numeric(8, 4).
FACTOR_QUANTUM = Decimal("0.0001")
MAX_NAME_LENGTH = 200
_FACTOR_PATTERN = re.compile(r"^\d+(\.\d+)?$")
# Donor pledge states that get a match; a card pledge pending payment waits until it is paid.
MATCHED_STATES = ("pledged", "confirmed")
# Rule kinds by the MatchFundInput list that contains their codes.
RULE_KINDS = {"regions": "region", "countries": "country", "themes": "theme", "sectors": "sector"}


@dataclass
class MatchFundInput:
    """A match fund as entered: the factor and the amounts as decimal text in major units."""

    name: str
    factor: str
    currency: str
    total_cap: str
    per_pledge_cap: str = ""
    per_project_cap: str = ""
    starts_on: date | None = None
    ends_on: date | None = None
    active: bool = True
    regions: list[str] = field(default_factory=list)
    countries: list[str] = field(default_factory=list)
    themes: list[str] = field(default_factory=list)
    sectors: list[str] = field(default_factory=list)
    # The funder id a coordinator creates the fund for, as an int or as typed; a donor's fund
    # is always its own funder's.
    funder_id: int | str | None = None


# Validation and creation


def parse_factor(value: object, field_name: str = "factor") -> Decimal:
    """Parse a match factor such as "1", "2" or "0.5"; raise MoneyError naming the value."""
    if isinstance(value, (bool, float)):
        raise MoneyError(field_name, value, f"Factor {value!r} must be decimal text such as \"1\" or \"0.5\".")
    text = str(value if value is not None else "").strip()
    if not text:
        raise MoneyError(field_name, value, "Factor is required.")
    if text.startswith("-"):
        raise MoneyError(field_name, value, f"Factor {value!r} must be greater than zero.")
    if not _FACTOR_PATTERN.match(text):
        raise MoneyError(field_name, value, f"Factor {value!r} is not a number: write a decimal such as 1, 2 or 0.5.")
    factor = Decimal(text)
    if factor <= 0:
        raise MoneyError(field_name, value, f"Factor {value!r} must be greater than zero.")
    if factor > MAX_FACTOR:
        raise MoneyError(field_name, value, f"Factor {value!r} is larger than the maximum of {MAX_FACTOR}.")
    if factor != factor.quantize(FACTOR_QUANTUM):
        raise MoneyError(field_name, value, f"Factor {value!r} has more than 4 decimals.")
    return factor


def _parse_optional_amount(text: str | None, currency: str, field_name: str) -> int | None:
    if text is None or not str(text).strip():
        return None
    return parse_amount(text, currency, field_name)


def _check_amounts(data: MatchFundInput, fund: MatchFund, errors: dict[str, str]) -> None:
    """Parse the caps in the fund's currency into `fund`, adding each error to `errors`."""
    try:
        fund.currency = check_currency(data.currency)
    except MoneyError as error:
        errors["currency"] = error.message
        return
    try:
        fund.total_cap_minor = parse_amount(data.total_cap, fund.currency, "total_cap")
    except MoneyError as error:
        errors["total_cap"] = f"Total cap: {error.message}"
    labels = {"per_pledge_cap": "Cap per pledge", "per_project_cap": "Cap per project"}
    for name, label in labels.items():
        try:
            cap = _parse_optional_amount(getattr(data, name), fund.currency, name)
        except MoneyError as error:
            errors[name] = f"{label}: {error.message}"
            continue
        setattr(fund, f"{name}_minor", cap)
        if cap is not None and fund.total_cap_minor is not None and cap > fund.total_cap_minor:
            errors[name] = f"{label} {getattr(data, name).strip()} {fund.currency} is larger than the total cap {data.total_cap.strip()} {fund.currency}."


def _check_window(data: MatchFundInput, errors: dict[str, str]) -> None:
    if data.starts_on and data.ends_on and data.ends_on < data.starts_on:
        errors["ends_on"] = f"End date {data.ends_on.isoformat()} is before the start date {data.starts_on.isoformat()}."
    elif data.ends_on and data.ends_on < pledge_services.today_utc():
        errors["ends_on"] = f"End date {data.ends_on.isoformat()} is in the past; today is {pledge_services.today_utc().isoformat()} (UTC)."


def validate(data: MatchFundInput) -> MatchFund:
    """Check a match fund's fields and return an unsaved MatchFund with its rules.

    Raises ValidationFailed listing every invalid field at once; the funder is not checked here.
    """
    errors: dict[str, str] = {}
    fund = MatchFund(name=(data.name or "").strip(), starts_on=data.starts_on, ends_on=data.ends_on, active=bool(data.active), used_minor=0)
    if not fund.name:
        errors["name"] = "Name is required."
    elif len(fund.name) > MAX_NAME_LENGTH:
        errors["name"] = f"Name is {len(fund.name)} characters long; the maximum is {MAX_NAME_LENGTH}."
    try:
        fund.factor = parse_factor(data.factor)
    except MoneyError as error:
        errors["factor"] = error.message
    _check_amounts(data, fund, errors)
    _check_window(data, errors)

    rules = []
    for kind, rule_kind in RULE_KINDS.items():
        try:
            codes = check_codes(kind, getattr(data, kind) or [])
        except ValidationFailed as error:
            errors.update(error.fields)
            continue
        rules += [MatchFundRule(kind=rule_kind, code=code) for code in codes]
    if errors:
        raise ValidationFailed("The match fund has invalid fields.", errors)
    fund.rules = rules
    return fund


def _funder_of_creator(user: User, data: MatchFundInput, errors: dict[str, str]) -> Funder | None:
    if user.role == "donor":
        return funder_for_user(user)
    if not user.is_coordinator:
        raise Forbidden("Only donors and coordinators can create match funds.")
    if data.funder_id is None or str(data.funder_id).strip() == "":
        errors["funder_id"] = "Funder is required."
        return None
    text = str(data.funder_id).strip()
    # Ids beyond a 32-bit integer would make PostgreSQL raise instead of finding nothing.
    known_id = text.isascii() and text.isdigit() and int(text) < 2**31
    funder = db.session.get(Funder, int(text)) if known_id else None
    if funder is None:
        errors["funder_id"] = f"Unknown funder {data.funder_id!r}."
    return funder


def validate_for(user: User, data: MatchFundInput) -> tuple[Funder, MatchFund]:
    """Check a fund that the user creates, the funder included; return the funder and the unsaved fund.

    A donor's first fund creates the donor's funder profile.
    """
    errors: dict[str, str] = {}
    funder = _funder_of_creator(user, data, errors)
    try:
        fund = validate(data)
    except ValidationFailed as error:
        errors = {**error.fields, **errors}
    if errors:
        raise ValidationFailed("The match fund has invalid fields.", errors)
    return funder, fund


def create_match_fund(user: User, data: MatchFundInput) -> MatchFund:
    """Create a match fund for the donor's own funder, or for any funder at a coordinator's request."""
    funder, fund = validate_for(user, data)
    fund.funder_id = funder.id
    db.session.add(fund)
    db.session.flush()
    audit.record(user, "create", "match_fund", fund.id, after=match_fund_fields(fund))
    logger.info(
        "match fund created id=%s funder=%s factor=%s cap=%s %s user=%s",
        fund.id, funder.id, fund.factor, fund.total_cap_minor, fund.currency, user.id,
    )
    return fund


# Access


def _own_funder_id(user: User) -> int | None:
    if user.role != "donor":
        return None
    funder = funder_for_user(user, create=False)
    return funder.id if funder is not None else None


def can_manage(user: User, fund: MatchFund) -> bool:
    """Return True for coordinators and for the donors of the fund's funder."""
    if user.is_coordinator:
        return True
    own = _own_funder_id(user)
    return own is not None and own == fund.funder_id


def get_match_fund(user: User, fund_id: int) -> MatchFund:
    """Load a fund that the user may see; anyone else gets NotFound, as for a missing fund."""
    # Ids beyond a 32-bit integer would make PostgreSQL raise instead of finding nothing.
    fund = db.session.get(MatchFund, fund_id) if 0 < fund_id < 2**31 else None
    if fund is None or not can_manage(user, fund):
        raise NotFound(f"Match fund {fund_id} not found.")
    return fund


def funds_query(user: User) -> Select:
    """Build the query of the funds a user lists: all for coordinators, a donor's funder's own."""
    query = select(MatchFund).order_by(MatchFund.created_at.desc(), MatchFund.id.desc())
    if user.is_coordinator:
        return query
    if user.role != "donor":
        raise Forbidden("Only donors and coordinators have match funds.")
    return query.where(MatchFund.funder_id == _own_funder_id(user))


def set_active(user: User, fund: MatchFund, active: bool) -> MatchFund:
    """Pause or resume a fund; pledges already matched stay as they are."""
    if not can_manage(user, fund):
        raise NotFound(f"Match fund {fund.id} not found.")
    if fund.active != active:
        audit.record(user, "resume" if active else "pause", "match_fund", fund.id, {"active": fund.active}, {"active": active})
    fund.active = active
    db.session.flush()
    logger.info("match fund %s id=%s user=%s", "resumed" if active else "paused", fund.id, user.id)
    return fund


def fund_status(fund: MatchFund, today: date) -> str:
    """Return whether the fund matches pledges now: active, paused, scheduled, ended or used up."""
    if not fund.active:
        return "paused"
    if fund.ends_on is not None and fund.ends_on < today:
        return "ended"
    if fund.starts_on is not None and fund.starts_on > today:
        return "scheduled"
    if fund.used_minor >= fund.total_cap_minor:
        return "used_up"
    return "active"


def matches_of_fund(fund_id: int) -> Select:
    """Build the query of a fund's match pledges, newest first."""
    return select(Pledge).where(Pledge.match_fund_id == fund_id).order_by(Pledge.created_at.desc(), Pledge.id.desc())


# Eligibility and amounts


def _codes(fund: MatchFund, kind: str) -> set[str]:
    return {rule.code for rule in fund.rules if rule.kind == kind}


def _regions_of(project: Project) -> set[str]:
    """Return the project's regions, counting each of its countries as inside its region."""
    regions = set(project.regions)
    for code in project.countries:
        try:
            region = reference.region_of_country(code)
        except reference.UnknownCode:
            continue
        if region:
            regions.add(region)
    return regions


def _themes_of(project: Project) -> set[str]:
    """Return the project's themes, counting each of its DAC sectors as under its themes."""
    themes = set(project.themes)
    for code in project.sectors:
        try:
            themes.update(reference.themes_of_sector(code))
        except reference.UnknownCode:
            continue
    return themes


def fits(fund: MatchFund, project: Project) -> bool:
    """Return True when the project fits the fund's place rules and its theme rules."""
    regions, countries = _codes(fund, "region"), _codes(fund, "country")
    if regions or countries:
        if not (regions & _regions_of(project) or countries & set(project.countries)):
            return False
    themes, sectors = _codes(fund, "theme"), _codes(fund, "sector")
    if themes or sectors:
        if not (themes & _themes_of(project) or sectors & set(project.sectors)):
            return False
    return True


def _candidate_funds(currency: str, exclude_funder_id: int | None) -> list[MatchFund]:
    """Load the active funds in the currency whose window contains today, oldest first."""
    # NOTE: a fund in another currency than the need is skipped even when an exchange rate is
    # stored, because caps and the need's room would have to be converted both ways.
    today = pledge_services.today_utc()
    query = (
        select(MatchFund)
        .where(
            MatchFund.active.is_(True),
            MatchFund.currency == currency,
            or_(MatchFund.starts_on.is_(None), MatchFund.starts_on <= today),
            or_(MatchFund.ends_on.is_(None), MatchFund.ends_on >= today),
            MatchFund.used_minor < MatchFund.total_cap_minor,
        )
        .order_by(MatchFund.created_at, MatchFund.id)
        .options(selectinload(MatchFund.rules))
    )
    if exclude_funder_id is not None:
        query = query.where(MatchFund.funder_id != exclude_funder_id)
    return list(db.session.scalars(query))


def matched_on_project(fund_id: int, project_id: int) -> int:
    """Sum the fund's active match pledges on the project's needs, in minor units."""
    return db.session.scalar(
        select(func.coalesce(func.sum(Pledge.need_amount_minor - Pledge.refunded_minor), 0))
        .join(FundingNeed, Pledge.need_id == FundingNeed.id)
        .where(Pledge.match_fund_id == fund_id, FundingNeed.project_id == project_id, Pledge.state.not_in(RELEASED_STATES))
    ) or 0


def scaled(amount_minor: int, factor: Decimal) -> int:
    """Multiply an amount by the factor, rounded down to whole minor units."""
    return int((Decimal(amount_minor) * factor).to_integral_value(rounding=ROUND_FLOOR))


def match_amount(fund: MatchFund, pledged_minor: int, project_id: int, room_minor: int | None) -> int:
    """Compute what the fund adds to a pledge: the factor's share within every cap and the need's room.

    `room_minor` is what the need can still take, or None when it accepts over-funding.
    """
    limits = [scaled(pledged_minor, fund.factor), fund.total_cap_minor - fund.used_minor]
    if fund.per_pledge_cap_minor is not None:
        limits.append(fund.per_pledge_cap_minor)
    if fund.per_project_cap_minor is not None:
        limits.append(fund.per_project_cap_minor - matched_on_project(fund.id, project_id))
    if room_minor is not None:
        limits.append(room_minor)
    return max(min(limits), 0)


def _accepts_matches(need: FundingNeed) -> bool:
    return need.project.status in ("published", "funded") and need.status != "closed"


def preview_match(
    need: FundingNeed, amount_minor: int, funder: Funder | None = None, currency: str | None = None,
) -> tuple[MatchFund, int] | None:
    """Compute, without writing, which fund would match a pledge of this amount and by how much.

    `amount_minor` is in `currency`, by default the need's. A pledge in another currency is
    converted with the stored rate, as create_pledge converts it, and gets no preview without
    one. `funder` is the donor's funder, whose own funds do not match its pledges. The result
    can change before the pledge is made.
    """
    if amount_minor <= 0 or not _accepts_matches(need):
        return None
    if currency is not None and currency != need.currency:
        rate = pledge_services.find_rate(currency, need.currency, pledge_services.today_utc())
        if rate is None:
            return None
        amount_minor = convert(amount_minor, currency, need.currency, rate)
    room = None if need.allow_overfunding else need.goal_minor - need.pledged_minor - amount_minor
    for fund in _candidate_funds(need.currency, funder.id if funder else None):
        if not fits(fund, need.project):
            continue
        amount = match_amount(fund, amount_minor, need.project_id, room)
        if amount > 0:
            return fund, amount
    return None


def offer_for_need(need: FundingNeed, funder: Funder | None = None) -> MatchFund | None:
    """Return the fund that would match a pledge to this need now, before any amount is known."""
    if not _accepts_matches(need):
        return None
    for fund in _candidate_funds(need.currency, funder.id if funder else None):
        if not fits(fund, need.project):
            continue
        project_left = None
        if fund.per_project_cap_minor is not None:
            project_left = fund.per_project_cap_minor - matched_on_project(fund.id, need.project_id)
        if project_left is None or project_left > 0:
            return fund
    return None


# Hooks of the pledge service


def match_of(pledge: Pledge) -> Pledge | None:
    """Return the pledge that a match fund made for this donor pledge, if any."""
    return db.session.scalar(select(Pledge).where(Pledge.matches_pledge_id == pledge.id))


def matched_by(pledge: Pledge) -> tuple[MatchFund, Pledge] | None:
    """Return the fund and the match pledge that it made for this donor pledge, if any."""
    match = match_of(pledge)
    if match is None:
        return None
    return db.session.get(MatchFund, match.match_fund_id), match


def _lock_need(need_id: int) -> FundingNeed:
    return db.session.scalar(select(FundingNeed).where(FundingNeed.id == need_id).with_for_update().execution_options(populate_existing=True))


def _lock_fund(fund_id: int) -> MatchFund:
    """Lock the fund's row until commit and reload it, so caps are checked on current totals."""
    return db.session.scalar(select(MatchFund).where(MatchFund.id == fund_id).with_for_update().execution_options(populate_existing=True))


class _NoRoom(Exception):
    """Raised inside a savepoint to undo a half-made reservation."""


def _reserve(fund_id: int, need_id: int, amount_minor: int) -> bool:
    """Add the amount to the fund's used total and to the need's pledged total, or to neither."""
    try:
        with db.session.begin_nested():
            result = db.session.execute(
                update(MatchFund)
                .where(MatchFund.id == fund_id, MatchFund.used_minor + amount_minor <= MatchFund.total_cap_minor)
                .values(used_minor=MatchFund.used_minor + amount_minor)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1 or not pledge_services.reserve(need_id, amount_minor):
                raise _NoRoom
    except _NoRoom:
        return False
    return True


def match_pledge(pledge: Pledge, actor: User | None) -> Pledge | None:
    """Make the match pledge for a donor pledge, in the caller's transaction; return it or None.

    Nothing happens for a match pledge, an IATI import, a card pledge pending payment, or when
    no fitting fund has money left; the donor pledge is kept either way. A second call returns
    the match made by the first.
    """
    if pledge.match_fund_id is not None or pledge.import_key is not None:
        return None
    existing = match_of(pledge)
    if existing is not None:
        return existing
    if pledge.state not in MATCHED_STATES:
        return None
    # The need is locked before any fund, as the pledge service locks it, so two pledges
    # always take the locks in the same order.
    need = _lock_need(pledge.need_id)
    if not _accepts_matches(need):
        return None

    pledged = pledge.need_amount_minor - pledge.refunded_minor
    for candidate in _candidate_funds(need.currency, pledge.funder_id):
        if not fits(candidate, need.project):
            continue
        fund = _lock_fund(candidate.id)
        room = None if need.allow_overfunding else need.goal_minor - need.pledged_minor
        amount = match_amount(fund, pledged, need.project_id, room)
        if amount <= 0:
            logger.info("match fund id=%s has nothing left for pledge id=%s", fund.id, pledge.id)
            continue
        if not _reserve(fund.id, need.id, amount):
            logger.warning("match fund id=%s could not reserve %s for pledge id=%s", fund.id, amount, pledge.id)
            continue
        return _create_match(pledge, fund, need, amount, actor)
    return None


def _create_match(pledge: Pledge, fund: MatchFund, need: FundingNeed, amount_minor: int, actor: User | None) -> Pledge:
    match = Pledge(
        need_id=need.id, funder_id=fund.funder_id, kind="commitment", state=pledge.state,
        amount_minor=amount_minor, currency=need.currency, need_amount_minor=amount_minor, rate=Decimal(1),
        match_fund_id=fund.id, matches_pledge_id=pledge.id, created_by_id=actor.id if actor else None,
    )
    db.session.add(match)
    reason = f"Match fund {fund.name} matches pledge {pledge.id}"
    pledge_services.record(match, actor, None, match.state, amount_minor, reason)
    db.session.flush()
    audit.record(actor, "create", "pledge", match.id, after={
        "state": match.state, "kind": match.kind, "amount": audit.money(amount_minor, need.currency),
        "need_id": need.id, "funder_id": fund.funder_id, "match_fund_id": fund.id,
    }, reason=reason)
    notifications.pledge_event(match, "pledge_made", amount_minor, need.currency)
    # The conditional UPDATEs bypassed the loaded objects.
    db.session.expire(fund, ["used_minor"])
    db.session.expire(need, ["pledged_minor"])
    logger.info("pledge matched id=%s by pledge id=%s fund=%s amount=%s %s", pledge.id, match.id, fund.id, amount_minor, need.currency)
    return match


def recount(fund_id: int) -> None:
    """Set the fund's used total to the sum of its active match pledges.

    The fund's row is locked first, and the sum is a separate statement, so on PostgreSQL
    (READ COMMITTED) it includes every match that a concurrent transaction committed before
    the lock was granted. Running it twice gives the same result.
    """
    db.session.execute(select(MatchFund.id).where(MatchFund.id == fund_id).with_for_update())
    used = db.session.scalar(
        select(func.coalesce(func.sum(Pledge.need_amount_minor - Pledge.refunded_minor), 0))
        .where(Pledge.match_fund_id == fund_id, Pledge.state.not_in(RELEASED_STATES))
    ) or 0
    db.session.execute(
        update(MatchFund).where(MatchFund.id == fund_id).values(used_minor=used).execution_options(synchronize_session=False)
    )
    fund = db.session.get(MatchFund, fund_id)
    if fund is not None:
        db.session.expire(fund, ["used_minor"])


def unmatch(pledge: Pledge, actor: User | None) -> Pledge | None:
    """Cancel the match of a donor pledge that was cancelled or refunded, and give its amount back to the fund."""
    match = match_of(pledge)
    if match is None:
        return None
    if match.state not in RELEASED_STATES:
        if (match.state, "cancel") in pledge_services.TRANSITIONS:
            reason = f"Pledge {pledge.id}, which this pledge matched, was {pledge.state}."
            pledge_services.transition(match.id, "cancel", actor, reason=reason)
        else:
            # NOTE: a match pledge that was already partly or fully disbursed stays as it is;
            # a coordinator settles it by hand.
            logger.warning("match pledge id=%s is %s; not cancelled with pledge id=%s", match.id, match.state, pledge.id)
    recount(match.match_fund_id)
    return match


def on_confirm(pledge: Pledge, actor: User | None) -> Pledge | None:
    """Confirm the match of a donor pledge that was just confirmed."""
    match = match_of(pledge)
    if match is None or match.state != "pledged" or pledge.state not in pledge_services.CONFIRMED_STATES:
        return match
    reason = f"Pledge {pledge.id}, which this pledge matches, was confirmed."
    return pledge_services.transition(match.id, "confirm", actor, reason=reason)


def shrink(pledge: Pledge, actor: User | None) -> Pledge | None:
    """Reduce the match of a partly refunded donor pledge to what the rest of it earns."""
    match = match_of(pledge)
    if match is None or match.state in RELEASED_STATES:
        return match
    fund = db.session.get(MatchFund, match.match_fund_id)
    excess = match.active_minor - scaled(pledge.need_amount_minor - pledge.refunded_minor, fund.factor)
    if excess <= 0:
        return match
    if match.state == "confirmed":
        reason = f"Pledge {pledge.id}, which this pledge matches, was partly refunded."
        pledge_services.transition(match.id, "refund", actor, amount_minor=excess, reason=reason)
    else:
        # NOTE: only a confirmed match can shrink; a match that is pledged or being disbursed
        # keeps its amount after the donor pledge's partial refund.
        logger.warning("match pledge id=%s is %s; not reduced by %s after the partial refund of pledge id=%s", match.id, match.state, excess, pledge.id)
    recount(fund.id)
    return match


def after_transition(pledge: Pledge, action: str, actor: User | None) -> None:
    """Carry a donor pledge's transition over to its match, or a match's release over to its fund.

    Call in the same transaction, after `transition` has applied `action` to `pledge`.
    """
    if pledge.match_fund_id is not None:
        if pledge.state in RELEASED_STATES or action == "refund":
            recount(pledge.match_fund_id)
        return
    if pledge.state in RELEASED_STATES:
        unmatch(pledge, actor)
    elif action == "refund":
        shrink(pledge, actor)
    elif action == "pay":
        match_pledge(pledge, actor)
    elif action == "confirm":
        on_confirm(pledge, actor)
