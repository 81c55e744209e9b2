"""Match review and listing: coordinators accept or reject suggestions, and funders and owners see their own.

Functions take plain values and flush. They never commit, because the caller commits. They raise the
domain errors of financing.core.errors, which the views map to HTTP statuses.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from flask import current_app
from sqlalchemy import Select, false, func, or_, select
from sqlalchemy.orm import selectinload

from financing import reference
from financing.accounts.models import User
from financing.audit import services as audit
from financing.core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from financing.core.time import utcnow
from financing.extensions import db
from financing.funders.services import funder_for_user
from financing.matching.models import MATCH_STATUSES, Match
from financing.notifications import events as notifications
from financing.projects.models import Project, ProjectTag
from financing.projects.services import PUBLIC

logger = logging.getLogger(__name__)

# Statuses a coordinator may still decide on.
OPEN_FOR_REVIEW = ("suggested", "stale")
# Donors and owners see every match of theirs, rejected ones included, so that a
# coordinator's decision reaches them with its reason.
VISIBLE_TO_PARTIES = ("suggested", "accepted", "rejected", "stale")
MAX_REASON_LENGTH = 2000


@dataclass
class MatchFilters:
    """Filters of a match list, where None means no filter."""

    status: str | None = None
    region: str | None = None
    theme: str | None = None
    funder_id: int | None = None
    project_id: int | None = None

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> "MatchFilters":
        """Build filters from query-string values, raising ValidationFailed that names each invalid field."""
        errors: dict[str, str] = {}
        values: dict[str, object] = {}
        status = (args.get("status") or "").strip().lower()
        if status and status not in MATCH_STATUSES:
            errors["status"] = f"Unknown status {status!r}. Use one of {', '.join(MATCH_STATUSES)}."
        values["status"] = status or None
        region = (args.get("region") or "").strip().lower()
        if region and region not in reference.regions():
            errors["region"] = f"Unknown region {region!r}."
        values["region"] = region or None
        theme = (args.get("theme") or "").strip().lower()
        if theme and theme not in reference.themes():
            errors["theme"] = f"Unknown theme {theme!r}."
        values["theme"] = theme or None
        for name in ("funder_id", "project_id"):
            text = (args.get(name) or "").strip()
            if text and (not text.isdigit() or int(text) < 1):
                errors[name] = f"{name} {text!r} must be a positive whole number."
            values[name] = int(text) if text.isdigit() and int(text) > 0 else None
        if errors:
            raise ValidationFailed("The match filters are invalid.", errors)
        return cls(**values)


def _visible(query: Select, user: User) -> Select:
    """Restrict a match query to what the user may see."""
    if user.is_coordinator:
        return query
    if user.role == "donor":
        funder = funder_for_user(user, create=False)
        if funder is None:
            return query.where(false())
        public_projects = select(Project.id).where(Project.status.in_(PUBLIC))
        return query.where(
            Match.funder_id == funder.id,
            Match.project_id.in_(public_projects),
            Match.status.in_(VISIBLE_TO_PARTIES),
        )
    if user.role == "owner":
        if user.organisation_id is None:
            return query.where(false())
        own_projects = select(Project.id).where(Project.organisation_id == user.organisation_id)
        return query.where(Match.project_id.in_(own_projects), Match.status.in_(VISIBLE_TO_PARTIES))
    raise Forbidden("Only coordinators, donors and project owners can see matches.")


def _tagged(kind: str, codes: list[str]):
    """Select the ids of projects with a tag of this kind and one of these codes."""
    return select(ProjectTag.project_id).where(ProjectTag.kind == kind, ProjectTag.code.in_(codes))


def _filtered(query: Select, filters: MatchFilters) -> Select:
    if filters.status:
        query = query.where(Match.status == filters.status)
    if filters.funder_id:
        query = query.where(Match.funder_id == filters.funder_id)
    if filters.project_id:
        query = query.where(Match.project_id == filters.project_id)
    if filters.region:
        # A project is in a region when it is tagged with it or with one of its countries.
        countries = sorted(reference.regions()[filters.region].countries)
        query = query.where(or_(
            Match.project_id.in_(_tagged("region", [filters.region])),
            Match.project_id.in_(_tagged("country", countries)),
        ))
    if filters.theme:
        sectors = sorted(reference.themes()[filters.theme].sectors)
        query = query.where(or_(
            Match.project_id.in_(_tagged("theme", [filters.theme])),
            Match.project_id.in_(_tagged("sector", sectors)),
        ))
    return query


def list_matches(user: User, filters: MatchFilters | None = None, page: int = 1, per_page: int = 20) -> tuple[list[Match], int]:
    """Return one page of the matches the user may see, best score first, and the total count.

    Coordinators see every match. Donors see the matches of their funder on public projects,
    and owners those of their organisation's projects, but neither sees rejected matches. Raises Forbidden for other roles and ValidationFailed for a bad page or per_page.
    """
    filters = filters or MatchFilters()
    max_per_page = current_app.config.get("MAX_PER_PAGE", 100)
    errors = {}
    if page < 1:
        errors["page"] = f"Page {page} must be 1 or more."
    if not 1 <= per_page <= max_per_page:
        errors["per_page"] = f"per_page {per_page} must be from 1 to {max_per_page}."
    if errors:
        raise ValidationFailed("The page is invalid.", errors)

    query = _filtered(_visible(select(Match), user), filters)
    total = db.session.scalar(select(func.count()).select_from(query.subquery())) or 0
    items = db.session.scalars(
        query.options(selectinload(Match.project), selectinload(Match.funder), selectinload(Match.need))
        .order_by(Match.score.desc(), Match.id.asc())
        .limit(per_page).offset((page - 1) * per_page)
    ).all()
    return list(items), total


def get_match(user: User, match_id: int) -> Match:
    """Load one match the user may see, or raise NotFound (also for someone else's match)."""
    match = db.session.scalar(_visible(select(Match), user).where(Match.id == match_id))
    if match is None:
        raise NotFound(f"Match {match_id} not found.")
    return match


def _review(user: User, match_id: int, status: str, reason: str) -> Match:
    """Lock a match, check it awaits review, and record the coordinator's decision."""
    match = db.session.scalar(select(Match).where(Match.id == match_id).with_for_update())
    if match is None:
        raise NotFound(f"Match {match_id} not found.")
    if match.status not in OPEN_FOR_REVIEW:
        raise Conflict(
            f"Match {match_id} is already {match.status}. Only suggested or stale matches can be reviewed.",
            {"status": match.status},
        )
    previous = match.status
    match.status = status
    match.review_reason = reason or None
    match.reviewed_by_id = user.id
    match.reviewed_at = utcnow()
    db.session.flush()
    action = "accept" if status == "accepted" else "reject"
    audit.record(user, action, "match", match.id, {"status": previous}, {"status": status}, reason)
    if status == "accepted":
        notifications.match_accepted(match)
    logger.info("match %s id=%s project=%s funder=%s from=%s user=%s", status, match.id, match.project_id, match.funder_id, previous, user.id)
    return match


def _check_reviewer(user: User) -> None:
    if not user.is_coordinator:
        raise Forbidden("Only coordinators can accept or reject matches.")


def _clean_reason(reason: str | None) -> str:
    reason = (reason or "").strip()
    if len(reason) > MAX_REASON_LENGTH:
        raise ValidationFailed(
            f"The reason has {len(reason)} characters, more than the maximum of {MAX_REASON_LENGTH}.",
            {"reason": f"Use at most {MAX_REASON_LENGTH} characters."},
        )
    return reason


def accept_match(user: User, match_id: int, reason: str = "") -> Match:
    """Accept a suggested or stale match, with an optional reason, and notify the funder and the owners.

    Raises Forbidden unless the user is a coordinator, NotFound for an unknown id, and
    Conflict when the match was already accepted or rejected.
    """
    _check_reviewer(user)
    return _review(user, match_id, "accepted", _clean_reason(reason))


def reject_match(user: User, match_id: int, reason: str) -> Match:
    """Reject a suggested or stale match with a required reason.

    Raises Forbidden unless the user is a coordinator, ValidationFailed on field "reason"
    when it is blank or too long, NotFound for an unknown id, and Conflict when the match was
    already accepted or rejected.
    """
    _check_reviewer(user)
    reason = _clean_reason(reason)
    if not reason:
        raise ValidationFailed("A reason is required to reject a match.", {"reason": "Reason is required."})
    return _review(user, match_id, "rejected", reason)
