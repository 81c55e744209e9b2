"""Review queues: how much waits in each, one page of a queue, and decisions on many rows at once.

Bulk decisions lock the selected rows in id order, check that every row still awaits the
decision, and only then change each row through the service that changes one row, so that a
batch is all or nothing. The functions flush and never commit, because the caller commits.
"""

import logging
from collections.abc import Iterable

from sqlalchemy import Select, exists, func, select
from sqlalchemy.orm import selectinload

from financing.accounts.models import User
from financing.core.errors import Conflict, Forbidden, ValidationFailed
from financing.extensions import db
from financing.matching.models import Match
from financing.matching.services import OPEN_FOR_REVIEW, accept_match, reject_match
from financing.pledges.models import Pledge
# The pledge queue and its bulk action live in the pledge views, and this module reuses them.
from financing.pledges.services import AWAITING_CONFIRMATION, MAX_BATCH
from financing.projects.models import FundingNeed, Project
from financing.projects.services import paginate, publish_project
from financing.review.models import ProjectSnapshot
from financing.review.snapshots import ProjectDiff, compare

logger = logging.getLogger(__name__)

# The queues in the order of the page's tabs.
QUEUES = ("projects", "resubmitted", "matches", "pledges", "disputes")
MATCH_DECISIONS = ("accept", "reject")


class BatchConflict(Conflict):
    """Some rows of a batch no longer await the decision, and `object_ids` lists them."""

    def __init__(self, message: str, object_ids: list[int]):
        super().__init__(message, {"selection": message})
        self.object_ids = object_ids


# Queues


def _returned_before():
    return exists().where(ProjectSnapshot.project_id == Project.id)


def _conditions() -> dict[str, tuple]:
    """Return, per queue, the model counted and the conditions that put a row in the queue."""
    submitted = Project.status == "submitted"
    return {
        "projects": (Project, (submitted, ~_returned_before())),
        "resubmitted": (Project, (submitted, _returned_before())),
        "matches": (Match, (Match.status.in_(OPEN_FOR_REVIEW),)),
        "pledges": (Pledge, (Pledge.state.in_(AWAITING_CONFIRMATION),)),
        "disputes": (Pledge, (Pledge.disputed.is_(True),)),
    }


def queue_counts() -> dict[str, int]:
    """Count the rows of every queue in one query."""
    columns = [
        select(func.count(model.id)).where(*conditions).scalar_subquery().label(name)
        for name, (model, conditions) in _conditions().items()
    ]
    row = db.session.execute(select(*columns)).one()
    return {name: int(row._mapping[name] or 0) for name in QUEUES}


def queue_query(queue: str) -> Select:
    """Build the query of one queue: projects and pledges oldest first, matches best score first."""
    model, conditions = _conditions()[queue]
    query = select(model).where(*conditions)
    if model is Project:
        return query.options(
            selectinload(Project.needs), selectinload(Project.tags), selectinload(Project.organisation),
        ).order_by(Project.updated_at.asc(), Project.id.asc())
    if model is Match:
        return query.options(
            selectinload(Match.project), selectinload(Match.funder), selectinload(Match.need),
        ).order_by(Match.score.desc(), Match.id.asc())
    return query.options(
        selectinload(Pledge.need).selectinload(FundingNeed.project), selectinload(Pledge.funder), selectinload(Pledge.events),
    ).order_by(Pledge.created_at.asc(), Pledge.id.asc())


def queue_page(queue: str, page: int, per_page: int) -> tuple[list, int]:
    if queue not in QUEUES:
        raise ValidationFailed(f"Unknown queue {queue!r}: use one of {', '.join(QUEUES)}.", {"tab": f"Unknown tab {queue!r}."})
    return paginate(queue_query(queue), page, per_page)


def diffs_for(projects: Iterable[Project]) -> dict[int, ProjectDiff]:
    """Compare each project with its latest snapshot; projects never returned are left out."""
    by_id = {project.id: project for project in projects}
    if not by_id:
        return {}
    snapshots = db.session.scalars(
        select(ProjectSnapshot).where(ProjectSnapshot.project_id.in_(by_id))
        .options(selectinload(ProjectSnapshot.taken_by))
        .order_by(ProjectSnapshot.project_id, ProjectSnapshot.taken_at.desc(), ProjectSnapshot.id.desc())
    )
    diffs: dict[int, ProjectDiff] = {}
    for snapshot in snapshots:
        if snapshot.project_id not in diffs:
            diffs[snapshot.project_id] = compare(snapshot, by_id[snapshot.project_id])
    return diffs


# Bulk decisions


def _check_selection(ids: Iterable[int], noun: str) -> list[int]:
    unique = sorted(set(ids))
    if not unique:
        message = f"Select at least one {noun}."
        raise ValidationFailed(message, {"selection": message})
    if len(unique) > MAX_BATCH:
        message = f"Select at most {MAX_BATCH} {noun}s at once, not {len(unique)}."
        raise ValidationFailed(message, {"selection": message})
    return unique


def _lock_rows(model, ids: list[int]) -> list:
    """Load and lock the rows in id order, so that two overlapping batches wait instead of deadlocking."""
    query = select(model).where(model.id.in_(ids)).order_by(model.id).with_for_update()
    return list(db.session.scalars(query.execution_options(populate_existing=True)))


def _raise_if_blocked(problems: list[tuple[int, str]], nothing_changed: str, rule: str) -> None:
    if not problems:
        return
    problems.sort()
    listed = "; ".join(text for _, text in problems)
    raise BatchConflict(f"{nothing_changed}, because {listed}. {rule}", [object_id for object_id, _ in problems])


def publish_many(user: User, project_ids: Iterable[int]) -> list[Project]:
    """Publish several submitted projects: all of them, or none.

    Raises Forbidden for a user who is not a coordinator, ValidationFailed for an empty or too
    large selection, and BatchConflict naming every project that is missing or not submitted.
    """
    if not user.is_coordinator:
        raise Forbidden("Only coordinators can publish projects.")
    ids = _check_selection(project_ids, "project")
    projects = _lock_rows(Project, ids)

    found = {project.id for project in projects}
    problems = [(project_id, f"project {project_id} does not exist") for project_id in ids if project_id not in found]
    problems += [
        (project.id, f"project {project.id} “{project.title}” is {project.status}")
        for project in projects if project.status != "submitted"
    ]
    _raise_if_blocked(problems, "No project was published", "Only submitted projects can be published.")

    for project in projects:
        publish_project(user, project)
    db.session.flush()
    logger.info("projects published in bulk ids=%s user=%s", ",".join(map(str, ids)), user.id)
    return projects


def decide_matches(user: User, match_ids: Iterable[int], decision: str, reason: str = "") -> list[Match]:
    """Accept or reject several suggested or stale matches with one reason: all of them, or none.

    A rejection requires a reason. Raises Forbidden, ValidationFailed (unknown decision, empty
    selection, missing reason) and BatchConflict naming every match already decided or missing.
    """
    if not user.is_coordinator:
        raise Forbidden("Only coordinators can accept or reject matches.")
    if decision not in MATCH_DECISIONS:
        message = f"Unknown decision {decision!r}: use accept or reject."
        raise ValidationFailed(message, {"action": message})
    ids = _check_selection(match_ids, "match")
    reason = (reason or "").strip()
    if decision == "reject" and not reason:
        raise ValidationFailed("A reason is required to reject matches.", {"reason": "Reason is required to reject."})
    matches = _lock_rows(Match, ids)

    found = {match.id for match in matches}
    problems = [(match_id, f"match {match_id} does not exist") for match_id in ids if match_id not in found]
    problems += [
        (match.id, f"match {match.id} of “{match.project.title}” with {match.funder.name} is already {match.status}")
        for match in matches if match.status not in OPEN_FOR_REVIEW
    ]
    verb = "accepted" if decision == "accept" else "rejected"
    _raise_if_blocked(problems, f"No match was {verb}", "Only suggested or stale matches can be reviewed.")

    review = accept_match if decision == "accept" else reject_match
    for match in matches:
        review(user, match.id, reason)
    logger.info("matches %s in bulk ids=%s user=%s", verb, ",".join(map(str, ids)), user.id)
    return matches
