"""Audit rules: record a change in the caller's transaction, and query the log with filters.

Services call `record` right after they change an object and before they return, so the
entry commits or rolls back with the change itself. Before and after hold only the fields
that changed, as JSON: text, numbers, booleans, lists, dates as ISO strings, and amounts as
`{"amount": "12.50", "currency": "EUR"}` like the API.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

from sqlalchemy import Select, func, select
from sqlalchemy.orm import selectinload

from financing.accounts.models import User
from financing.audit.models import AuditEntry
from financing.core.errors import ValidationFailed
from financing.core.time import utcnow
from financing.extensions import db
from financing.money import money_dict

logger = logging.getLogger(__name__)

# Text longer than this is cut in before/after, so that an entry stays small.
MAX_TEXT = 200


def money(amount_minor: int | None, currency: str | None) -> dict | None:
    """Return an amount as the API writes it: {"amount": "4800000.00", "currency": "EUR"}."""
    return money_dict(amount_minor, currency)


def _jsonable(value):
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + "…"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return [_jsonable(item) for item in items]
    raise TypeError(f"Audit value {value!r} of type {type(value).__name__} cannot be stored as JSON.")


def changes(before: Mapping, after: Mapping) -> tuple[dict, dict]:
    """Keep the fields whose value differs between two snapshots; return (before, after)."""
    names = [name for name in {**before, **after} if before.get(name) != after.get(name)]
    return {name: before.get(name) for name in names}, {name: after.get(name) for name in names}


def record(
    actor: User | int | None, action: str, obj_type: str, obj_id: int,
    before: Mapping | None = None, after: Mapping | None = None, reason: str = "",
) -> AuditEntry:
    """Add one audit entry to the current transaction; call it in the service that makes the change.

    `actor` is the user who acted, or None for the system (a webhook, an import, a command).
    """
    if obj_id is None:
        raise ValueError(f"Audit entry {obj_type} {action} has no object id; flush the object first.")
    actor_id = actor if isinstance(actor, int) or actor is None else actor.id
    entry = AuditEntry(
        at=utcnow(), actor_id=actor_id, action=action, object_type=obj_type, object_id=obj_id,
        before=_jsonable(before) if before else None, after=_jsonable(after) if after else None,
        reason=(reason or "").strip(),
    )
    db.session.add(entry)
    return entry


def record_changes(
    actor: User | int | None, action: str, obj_type: str, obj_id: int, before: Mapping, after: Mapping, reason: str = "",
) -> AuditEntry | None:
    """Record the fields that differ between two snapshots of an object; record nothing when none does."""
    changed_before, changed_after = changes(before, after)
    if not changed_after and not changed_before:
        return None
    return record(actor, action, obj_type, obj_id, changed_before, changed_after, reason)


@dataclass
class AuditFilters:
    """Filters of the audit list, where None means no filter. Dates are UTC days, both included."""

    object_type: str | None = None
    object_id: int | None = None
    action: str | None = None
    actor_id: int | None = None
    # True selects the changes made by the system, which have no actor.
    system: bool = False
    since: date | None = None
    until: date | None = None

    def check(self) -> "AuditFilters":
        if self.since and self.until and self.until < self.since:
            message = f"End date {self.until.isoformat()} is before the start date {self.since.isoformat()}."
            raise ValidationFailed(message, {"until": message})
        return self


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=timezone.utc)


def search_query(filters: AuditFilters) -> Select:
    """Build the query of the entries that pass the filters, newest first."""
    query = select(AuditEntry)
    if filters.object_type:
        query = query.where(AuditEntry.object_type == filters.object_type)
    if filters.object_id is not None:
        query = query.where(AuditEntry.object_id == filters.object_id)
    if filters.action:
        query = query.where(AuditEntry.action == filters.action)
    if filters.actor_id is not None:
        query = query.where(AuditEntry.actor_id == filters.actor_id)
    elif filters.system:
        query = query.where(AuditEntry.actor_id.is_(None))
    if filters.since:
        query = query.where(AuditEntry.at >= _day_start(filters.since))
    if filters.until:
        query = query.where(AuditEntry.at < _day_start(filters.until + timedelta(days=1)))
    return query.order_by(AuditEntry.at.desc(), AuditEntry.id.desc())


def list_entries(filters: AuditFilters, page: int, per_page: int) -> tuple[list[AuditEntry], int]:
    """Return one page of entries that pass the filters, newest first, and their total count."""
    query = search_query(filters.check())
    total = db.session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    page_query = query.options(selectinload(AuditEntry.actor)).limit(per_page).offset((page - 1) * per_page)
    return list(db.session.scalars(page_query)), total


def history(obj_type: str, obj_id: int, limit: int | None = None) -> list[AuditEntry]:
    """Return an object's entries, newest first; access checks are the caller's."""
    query = search_query(AuditFilters(object_type=obj_type, object_id=obj_id)).options(selectinload(AuditEntry.actor))
    if limit is not None:
        query = query.limit(limit)
    return list(db.session.scalars(query))


def known_actions() -> list[str]:
    """Return the actions stored so far, for the filter's choices."""
    return list(db.session.scalars(select(AuditEntry.action).distinct().order_by(AuditEntry.action)))
