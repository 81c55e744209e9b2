"""Snapshots of a project as a coordinator returned it, and their comparison with the project now.

Kept apart from financing.review.services so that financing.projects.services can import it
without an import cycle.
"""

import difflib
import logging
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import select

from financing.accounts.models import User
from financing.extensions import db
from financing.projects.models import Project
from financing.review.models import ProjectSnapshot

logger = logging.getLogger(__name__)

# Scalar fields compared one by one, in the order the diff lists them.
FIELDS = ("title", "summary", "description", "start_date", "end_date")
# Fields whose text is compared line by line instead of side by side.
MULTILINE_FIELDS = ("description",)
DATE_FIELDS = ("start_date", "end_date")
TAG_KINDS = ("countries", "regions", "themes", "sectors")
NEED_ATTRIBUTES = ("title", "goal_minor", "currency", "deadline", "allow_overfunding")


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def project_content(project: Project) -> dict[str, Any]:
    """Return the project's fields, tags and needs as JSON-ready values."""
    fields = {
        "title": project.title,
        "summary": project.summary or "",
        "description": project.description or "",
        "start_date": _iso(project.start_date),
        "end_date": _iso(project.end_date),
    }
    tags = {kind: sorted(getattr(project, kind)) for kind in TAG_KINDS}
    needs = [
        {
            "id": need.id,
            "title": need.title,
            "goal_minor": need.goal_minor,
            "currency": need.currency,
            "deadline": _iso(need.deadline),
            "allow_overfunding": bool(need.allow_overfunding),
        }
        for need in project.needs
    ]
    return {"fields": fields, "tags": tags, "needs": needs}


def take_snapshot(project: Project, user: User, reason: str) -> ProjectSnapshot:
    """Store the project as the returning coordinator saw it. The caller commits."""
    snapshot = ProjectSnapshot(project_id=project.id, taken_by_id=user.id, reason=reason, content=project_content(project))
    db.session.add(snapshot)
    db.session.flush()
    logger.info("project snapshot taken id=%s project=%s user=%s", snapshot.id, project.id, user.id)
    return snapshot


def latest_snapshot(project_id: int) -> ProjectSnapshot | None:
    return db.session.scalar(
        select(ProjectSnapshot).where(ProjectSnapshot.project_id == project_id)
        .order_by(ProjectSnapshot.taken_at.desc(), ProjectSnapshot.id.desc()).limit(1)
    )


@dataclass
class FieldChange:
    """One changed field, with `lines` set for multi-line text as (marker, line) pairs.

    The marker is "-" for a removed line, "+" for an added one and " " for unchanged context.
    """

    name: str
    before: str | date | None
    after: str | date | None
    lines: list[tuple[str, str]] | None = None


@dataclass
class TagChange:
    """The codes of one kind before and after, and which of them were removed or added."""

    kind: str
    before: list[str]
    after: list[str]
    removed: list[str]
    added: list[str]


@dataclass
class NeedChange:
    """A need added, removed or changed; `changed` names the attributes that differ."""

    before: dict[str, Any] | None
    after: dict[str, Any] | None
    changed: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        if self.before is None:
            return "added"
        if self.after is None:
            return "removed"
        return "changed"


@dataclass
class ProjectDiff:
    snapshot: ProjectSnapshot
    fields: list[FieldChange]
    tags: list[TagChange]
    needs: list[NeedChange]

    @property
    def empty(self) -> bool:
        return not (self.fields or self.tags or self.needs)


def _date(text: str | None) -> date | None:
    return date.fromisoformat(text) if text else None


def _typed_need(need: dict[str, Any]) -> dict[str, Any]:
    return {**need, "deadline": _date(need.get("deadline"))}


def _line_diff(before: str, after: str) -> list[tuple[str, str]]:
    """Return the changed lines with one line of context, without the unified-diff headers."""
    lines = []
    for line in difflib.unified_diff(before.splitlines(), after.splitlines(), n=1, lineterm=""):
        if line.startswith(("---", "+++", "@@")):
            continue
        lines.append((line[:1], line[1:]))
    return lines


def _compare_fields(before: dict, after: dict) -> list[FieldChange]:
    changes = []
    for name in FIELDS:
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if name in DATE_FIELDS:
            old, new = _date(old), _date(new)
        lines = _line_diff(old or "", new or "") if name in MULTILINE_FIELDS else None
        changes.append(FieldChange(name, old, new, lines))
    return changes


def _compare_tags(before: dict, after: dict) -> list[TagChange]:
    changes = []
    for kind in TAG_KINDS:
        old, new = set(before.get(kind, [])), set(after.get(kind, []))
        if old != new:
            changes.append(TagChange(kind, sorted(old), sorted(new), sorted(old - new), sorted(new - old)))
    return changes


def _compare_needs(before: list[dict], after: list[dict]) -> list[NeedChange]:
    """Pair needs by id, so a renamed need shows as changed rather than removed and added."""
    before = [_typed_need(need) for need in before]
    after = [_typed_need(need) for need in after]
    old_by_id = {need["id"]: need for need in before}
    new_ids = {need["id"] for need in after}
    changes = []
    for need in after:
        old = old_by_id.get(need["id"])
        if old is None:
            changes.append(NeedChange(None, need))
            continue
        changed = [name for name in NEED_ATTRIBUTES if old.get(name) != need.get(name)]
        if changed:
            changes.append(NeedChange(old, need, changed))
    changes += [NeedChange(need, None) for need in before if need["id"] not in new_ids]
    return changes


def compare(snapshot: ProjectSnapshot, project: Project) -> ProjectDiff:
    """List what changed in the project since the snapshot was taken."""
    before = snapshot.content
    after = project_content(project)
    return ProjectDiff(
        snapshot=snapshot,
        fields=_compare_fields(before.get("fields", {}), after["fields"]),
        tags=_compare_tags(before.get("tags", {}), after["tags"]),
        needs=_compare_needs(before.get("needs", []), after["needs"]),
    )
