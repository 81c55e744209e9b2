"""Funder profiles: the funder a donor acts for, and profile edits."""

import logging
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from financing.accounts.models import User
from financing.audit import services as audit
from financing.audit.snapshots import funder_fields
from financing.core.errors import Forbidden, NotFound, ValidationFailed
from financing.extensions import db
from financing.jobs import enqueue_after_commit
from financing.funders.models import Funder, FunderPreference
from financing.money import MAX_MAJOR_UNITS, MoneyError, check_currency, minor_units
from financing.projects.services import check_codes

logger = logging.getLogger(__name__)


@dataclass
class FunderInput:
    name: str
    kind: str = "institution"
    description: str = ""
    currency: str = "EUR"
    ticket_min_minor: int | None = None
    ticket_max_minor: int | None = None
    annual_budget_minor: int | None = None
    decision_days: int | None = None
    regions: list[str] = field(default_factory=list)
    countries: list[str] = field(default_factory=list)
    themes: list[str] = field(default_factory=list)
    sectors: list[str] = field(default_factory=list)


def _find_funder(user: User) -> Funder | None:
    funder = None
    if user.organisation_id is not None:
        funder = db.session.scalar(select(Funder).where(Funder.organisation_id == user.organisation_id))
    if funder is None:
        funder = db.session.scalar(select(Funder).where(Funder.user_id == user.id))
    return funder


def funder_for_user(user: User, create: bool = True) -> Funder | None:
    """Return the funder a donor acts for: its organisation's, else its own individual one.

    Two first requests of the same donor may both try to create the funder. The unique
    organisation_id and user_id columns let one insert win, and the other reads its row.
    """
    funder = _find_funder(user)
    if funder is not None or not create:
        return funder
    if user.organisation_id is not None:
        funder = Funder(name=user.organisation.name, kind="institution", organisation_id=user.organisation_id)
    else:
        funder = Funder(name=user.name or user.email, kind="individual", user_id=user.id)
    try:
        with db.session.begin_nested():
            db.session.add(funder)
            db.session.flush()
    except IntegrityError:
        logger.info("funder for user=%s created by a concurrent request; using it", user.id)
        return _find_funder(user)
    logger.info("funder created id=%s for user=%s", funder.id, user.id)
    return funder


def validate(data: FunderInput) -> FunderInput:
    """Check the funder profile rules; raise ValidationFailed per field."""
    errors: dict[str, str] = {}
    if not data.name.strip():
        errors["name"] = "Name is required."
    if data.kind not in ("institution", "individual"):
        errors["kind"] = f"Kind {data.kind!r} must be institution or individual."
    try:
        data.currency = check_currency(data.currency)
        limit = MAX_MAJOR_UNITS * 10 ** minor_units(data.currency)
        for name in ("ticket_min_minor", "ticket_max_minor", "annual_budget_minor"):
            value = getattr(data, name)
            if value is not None and not 0 < value <= limit:
                errors[name.removesuffix("_minor")] = f"Amount must be greater than zero and at most {MAX_MAJOR_UNITS:,} {data.currency}."
    except MoneyError as error:
        errors["currency"] = error.message
    if data.ticket_min_minor and data.ticket_max_minor and data.ticket_max_minor < data.ticket_min_minor:
        errors["ticket_max"] = "Maximum ticket is below the minimum ticket."
    if data.decision_days is not None and not 0 <= data.decision_days <= 3650:
        errors["decision_days"] = f"Decision time {data.decision_days} must be between 0 and 3650 days."
    for kind in ("regions", "countries", "themes", "sectors"):
        try:
            setattr(data, kind, check_codes(kind, getattr(data, kind)))
        except ValidationFailed as error:
            errors.update(error.fields)
    if errors:
        raise ValidationFailed("The funder profile has invalid fields.", errors)
    return data


def set_preferences(funder: Funder, data: FunderInput) -> None:
    wanted = {("region", c) for c in data.regions} | {("country", c) for c in data.countries}
    wanted |= {("theme", c) for c in data.themes} | {("sector", c) for c in data.sectors}
    for pref in list(funder.preferences):
        if (pref.kind, pref.code) not in wanted:
            funder.preferences.remove(pref)
    present = {(pref.kind, pref.code) for pref in funder.preferences}
    for kind, code in sorted(wanted - present):
        funder.preferences.append(FunderPreference(kind=kind, code=code))


def check_can_edit(user: User, funder: Funder) -> None:
    if user.is_coordinator:
        return
    own = (funder.organisation_id is not None and funder.organisation_id == user.organisation_id) or funder.user_id == user.id
    if user.role != "donor" or not own:
        raise Forbidden("You can only edit your own funder profile.")


def update_funder(user: User, funder: Funder, data: FunderInput) -> Funder:
    """Replace a funder profile's fields and preferences."""
    check_can_edit(user, funder)
    validate(data)
    before = funder_fields(funder)
    funder.name = data.name.strip()
    funder.kind = data.kind
    funder.description = data.description
    funder.currency = data.currency
    funder.ticket_min_minor = data.ticket_min_minor
    funder.ticket_max_minor = data.ticket_max_minor
    funder.annual_budget_minor = data.annual_budget_minor
    funder.decision_days = data.decision_days
    learned_before = {(pref.kind, pref.code) for pref in funder.preferences if pref.weight is not None}
    set_preferences(funder, data)
    kept = {(pref.kind, pref.code) for pref in funder.preferences}
    if learned_before and kept != learned_before:
        # A hand edit of learned preferences marks them all as set by hand, so that the next
        # learning run leaves the profile alone.
        for pref in funder.preferences:
            pref.weight = None
    db.session.flush()
    audit.record_changes(user, "update", "funder", funder.id, before, funder_fields(funder))
    enqueue_after_commit("match.funder", funder_id=funder.id)
    logger.info("funder updated id=%s user=%s", funder.id, user.id)
    return funder


def get_funder(funder_id: int) -> Funder:
    funder = db.session.get(Funder, funder_id)
    if funder is None:
        raise NotFound(f"Funder {funder_id} not found.")
    return funder
