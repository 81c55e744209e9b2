"""Project rules: create and edit with needs, the publishing workflow, and search."""

import logging
from dataclasses import dataclass, field
from datetime import date

from sqlalchemy import Select, and_, exists, func, or_, select
from sqlalchemy.orm import joinedload, selectinload

from financing import reference
from financing.accounts.models import User
from financing.audit import services as audit
from financing.audit.snapshots import project_fields
from financing.core.cache import cached_value
from financing.core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from financing.core.search import matches_all_words
from financing.core.time import utcnow
from financing.extensions import db
from financing.jobs import enqueue_after_commit
from financing.money import MAX_MAJOR_UNITS, check_currency, minor_units, MoneyError
from financing.notifications import events as notifications
from financing.projects.models import PUBLIC_STATUSES, FundingNeed, Project, ProjectTag
from financing.review.snapshots import take_snapshot

logger = logging.getLogger(__name__)

# Statuses from which an owner may still edit the project.
EDITABLE = ("draft", "returned", "submitted")
PUBLIC = PUBLIC_STATUSES
# Loader options for the needs, tags and organisation that every project list shows: three
# extra queries however many projects the page has.
LIST_LOADS = (selectinload(Project.needs), selectinload(Project.tags), selectinload(Project.organisation))
# One project with its organisation, needs and tags in one statement. The rows multiply needs
# by tags, a few dozen at most, and one round trip instead of three took 0.5 ms less CPU.
DETAIL_LOADS = (joinedload(Project.organisation), joinedload(Project.needs), joinedload(Project.tags))


@dataclass
class NeedInput:
    title: str
    goal_minor: int
    currency: str
    deadline: date | None = None
    allow_overfunding: bool = False
    id: int | None = None


@dataclass
class ProjectInput:
    title: str
    summary: str = ""
    description: str = ""
    countries: list[str] = field(default_factory=list)
    regions: list[str] = field(default_factory=list)
    themes: list[str] = field(default_factory=list)
    sectors: list[str] = field(default_factory=list)
    start_date: date | None = None
    end_date: date | None = None
    needs: list[NeedInput] = field(default_factory=list)


def check_codes(kind: str, codes: list[str]) -> list[str]:
    """Normalise reference codes of one kind and raise ValidationFailed naming an unknown one."""
    lookup = {
        "countries": (reference.countries, str.upper),
        "regions": (reference.regions, str.lower),
        "themes": (reference.themes, str.lower),
        "sectors": (reference.sectors, str.strip),
    }[kind]
    known, normalise = lookup
    singular = {"countries": "country", "regions": "region", "themes": "theme", "sectors": "DAC sector"}[kind]
    result: list[str] = []
    for code in codes:
        value = normalise(str(code).strip())
        if value not in known():
            message = f"Unknown {singular} {code!r}."
            raise ValidationFailed(message, {kind: message})
        if value not in result:
            result.append(value)
    return result


def validate(data: ProjectInput) -> ProjectInput:
    """Check the rules that hold whatever the input path; raise ValidationFailed per field."""
    errors: dict[str, str] = {}
    if not data.title.strip():
        errors["title"] = "Title is required."
    if data.start_date and data.end_date and data.end_date < data.start_date:
        errors["end_date"] = f"End date {data.end_date.isoformat()} is before the start date {data.start_date.isoformat()}."
    for kind in ("countries", "regions", "themes", "sectors"):
        try:
            setattr(data, kind, check_codes(kind, getattr(data, kind)))
        except ValidationFailed as error:
            errors.update(error.fields)
    if not data.needs:
        errors["needs"] = "Add at least one funding need."
    for index, need in enumerate(data.needs):
        prefix = f"needs.{index}"
        if not need.title.strip():
            errors[f"{prefix}.title"] = "Need title is required."
        try:
            need.currency = check_currency(need.currency)
        except MoneyError as error:
            errors[f"{prefix}.currency"] = error.message
            continue
        if need.goal_minor <= 0:
            errors[f"{prefix}.goal"] = "Goal must be greater than zero."
        elif need.goal_minor > MAX_MAJOR_UNITS * 10 ** minor_units(need.currency):
            errors[f"{prefix}.goal"] = f"Goal is larger than the maximum of {MAX_MAJOR_UNITS:,} {need.currency}."
    if errors:
        raise ValidationFailed("The project has invalid fields.", errors)
    return data


def _set_tags(project: Project, data: ProjectInput) -> None:
    wanted = {("country", c) for c in data.countries} | {("region", r) for r in data.regions}
    wanted |= {("theme", t) for t in data.themes} | {("sector", s) for s in data.sectors}
    for tag in list(project.tags):
        if (tag.kind, tag.code) not in wanted:
            project.tags.remove(tag)
    present = {(tag.kind, tag.code) for tag in project.tags}
    for kind, code in sorted(wanted - present):
        project.tags.append(ProjectTag(kind=kind, code=code))


def _set_needs(project: Project, needs: list[NeedInput]) -> None:
    existing = {need.id: need for need in project.needs}
    kept: list[FundingNeed] = []
    for position, item in enumerate(needs):
        need = existing.get(item.id) if item.id else None
        if item.id and need is None:
            raise ValidationFailed(f"Need {item.id} does not belong to this project.", {f"needs.{position}.id": f"Unknown need {item.id}."})
        if need is None:
            need = FundingNeed(pledged_minor=0)
            project.needs.append(need)
        elif need.pledged_minor and need.currency != item.currency:
            raise Conflict(f"Need {need.id} has pledges; its currency cannot change.", {f"needs.{position}.currency": "The need has pledges; its currency cannot change."})
        need.title = item.title.strip()
        need.goal_minor = item.goal_minor
        need.currency = item.currency
        need.deadline = item.deadline
        need.allow_overfunding = item.allow_overfunding
        need.position = position
        need.status = "funded" if need.pledged_minor >= need.goal_minor and need.status == "open" else need.status
        kept.append(need)
    for need in list(project.needs):
        if need not in kept:
            if need.pledged_minor:
                raise Conflict(f"Need {need.id} has pledges and cannot be removed.", {"needs": f"Need {need.title!r} has pledges and cannot be removed."})
            project.needs.remove(need)


def _fill(project: Project, data: ProjectInput) -> None:
    project.title = data.title.strip()
    project.summary = data.summary.strip()
    project.description = data.description
    project.start_date = data.start_date
    project.end_date = data.end_date
    _set_tags(project, data)
    _set_needs(project, data.needs)


def create_project(owner: User, data: ProjectInput, source: str = "form") -> Project:
    """Create a draft project with its needs for the owner's organisation."""
    if owner.role != "owner":
        raise Forbidden("Only project owners can create projects.")
    if owner.organisation_id is None:
        raise ValidationFailed("Your account has no organisation.", {"organisation": "Your account has no organisation; ask an admin to add one."})
    validate(data)
    project = Project(organisation_id=owner.organisation_id, created_by_id=owner.id, status="draft", source=source)
    db.session.add(project)
    _fill(project, data)
    db.session.flush()
    audit.record(owner, "create", "project", project.id, after=project_fields(project))
    logger.info("project created id=%s organisation=%s user=%s", project.id, owner.organisation_id, owner.id)
    return project


def check_owner(user: User, project: Project) -> None:
    """Raise Forbidden unless the user is an owner of the project's organisation.

    Coordinators review projects but do not write them: they return a project with a reason.
    """
    if user.role != "owner" or user.organisation_id != project.organisation_id:
        raise Forbidden("You can only change projects of your own organisation.")


def update_project(user: User, project: Project, data: ProjectInput) -> Project:
    """Replace a project's fields and needs; owners may edit until it is published."""
    check_owner(user, project)
    if project.status not in EDITABLE:
        raise Conflict(f"A {project.status} project cannot be edited.", {"status": project.status})
    validate(data)
    before = project_fields(project)
    _fill(project, data)
    if project.status == "submitted":
        project.status = "draft"
    db.session.flush()
    audit.record_changes(user, "update", "project", project.id, before, project_fields(project))
    enqueue_after_commit("match.project", project_id=project.id)
    logger.info("project updated id=%s user=%s", project.id, user.id)
    return project


def _move(project: Project, allowed_from: tuple[str, ...], to: str, user: User, action: str, reason: str = "") -> None:
    if project.status not in allowed_from:
        raise Conflict(
            f"Cannot move project {project.id} from {project.status} to {to}.",
            {"status": project.status},
        )
    logger.info("project %s id=%s from=%s user=%s", to, project.id, project.status, user.id)
    audit.record(user, action, "project", project.id, {"status": project.status}, {"status": to}, reason)
    project.status = to


def submit_project(user: User, project: Project) -> Project:
    check_owner(user, project)
    if not project.needs:
        raise ValidationFailed("Add at least one funding need before submitting.", {"needs": "Add at least one funding need."})
    _move(project, ("draft", "returned"), "submitted", user, "submit")
    return project


def publish_project(user: User, project: Project) -> Project:
    if not user.is_coordinator:
        raise Forbidden("Only coordinators can publish projects.")
    _move(project, ("submitted",), "published", user, "publish")
    project.return_reason = None
    project.published_at = utcnow()
    enqueue_after_commit("match.project", project_id=project.id)
    notifications.project_published(project)
    return project


def return_project(user: User, project: Project, reason: str) -> Project:
    if not user.is_coordinator:
        raise Forbidden("Only coordinators can return projects.")
    if not (reason or "").strip():
        raise ValidationFailed("A reason is required to return a project.", {"reason": "Reason is required."})
    _move(project, ("submitted",), "returned", user, "return", reason.strip())
    project.return_reason = reason.strip()
    notifications.project_returned(project)
    # Kept so that the resubmitted project can be compared with what the coordinator saw.
    take_snapshot(project, user, project.return_reason)
    return project


def withdraw_project(user: User, project: Project) -> Project:
    check_owner(user, project)
    _move(project, ("draft", "submitted", "returned", "published"), "withdrawn", user, "withdraw")
    enqueue_after_commit("match.project", project_id=project.id)
    return project


def refresh_status(project: Project) -> None:
    """Mark the project funded once every need is funded, and published again when one reopens."""
    all_funded = bool(project.needs) and all(need.status == "funded" for need in project.needs)
    if project.status == "published" and all_funded:
        project.status = "funded"
        audit.record(None, "mark_funded", "project", project.id, {"status": "published"}, {"status": "funded"})
        logger.info("project funded id=%s", project.id)
    elif project.status == "funded" and not all_funded:
        project.status = "published"
        audit.record(None, "reopen", "project", project.id, {"status": "funded"}, {"status": "published"})
        logger.info("project open for pledges again id=%s", project.id)


def get_project(project_id: int, viewer: User | None = None, loads: tuple = ()) -> Project:
    """Load a project that the viewer may see: public ones, or the viewer's own, or any for coordinators.

    `loads` are loader options, such as DETAIL_LOADS, for the relationships the caller reads.
    """
    project = db.session.get(Project, project_id, options=loads)
    if project is None:
        raise NotFound(f"Project {project_id} not found.")
    if project.status in PUBLIC:
        return project
    if viewer is not None and viewer.is_authenticated and (
        viewer.is_coordinator or viewer.organisation_id == project.organisation_id
    ):
        return project
    raise NotFound(f"Project {project_id} not found.")


@dataclass
class ProjectFilters:
    region: str | None = None
    country: str | None = None
    theme: str | None = None
    sector: str | None = None
    status: str | None = None
    q: str | None = None
    sort: str = "newest"
    organisation_id: int | None = None


SORTS = ("newest", "oldest", "title")


def _tagged(kind: str, code: str):
    return exists().where(ProjectTag.project_id == Project.id, ProjectTag.kind == kind, ProjectTag.code == code)


def _tagged_any(*kinds_codes: tuple[str, list[str]]):
    """Match projects with at least one tag of the given (kind, codes) pairs.

    It is one EXISTS with the OR inside, which PostgreSQL plans as a semi-join. An OR of
    two EXISTS is evaluated as a subplan per project row and took over a second at 100,000
    projects (benchmarks/web.py --explain).
    """
    return exists().where(ProjectTag.project_id == Project.id, or_(*(
        and_(ProjectTag.kind == kind, ProjectTag.code.in_(codes)) for kind, codes in kinds_codes if codes
    )))


def search_query(filters: ProjectFilters, public: bool = True) -> Select:
    """Build the query for the browse page and the API list, with a stable order."""
    query = select(Project)
    if public:
        statuses = PUBLIC if not filters.status else (filters.status,) if filters.status in PUBLIC else ()
        query = query.where(Project.status.in_(statuses))
    elif filters.status:
        query = query.where(Project.status == filters.status)
    if filters.organisation_id:
        query = query.where(Project.organisation_id == filters.organisation_id)
    if filters.country:
        query = query.where(_tagged("country", filters.country.upper()))
    if filters.region:
        # A project counts for a region when tagged with it or with one of its countries.
        region = reference.regions().get(filters.region)
        countries = sorted(region.countries) if region else []
        query = query.where(_tagged_any(("region", [filters.region]), ("country", countries)))
    if filters.theme:
        theme = reference.themes().get(filters.theme)
        sectors = sorted(theme.sectors) if theme else []
        query = query.where(_tagged_any(("theme", [filters.theme]), ("sector", sectors)))
    if filters.sector:
        query = query.where(_tagged("sector", filters.sector))
    if filters.q:
        # Every word of q is folded like Project.search_text, so that "telecom" finds "Télécom".
        # On PostgreSQL, ix_project_search_text_trgm serves words of three letters or more.
        words_match = matches_all_words(Project.search_text, filters.q)
        if words_match is not None:
            query = query.where(words_match)
    # Publishing and the IATI import set published_at, so NULLS FIRST changes nothing for
    # public projects. It is the order of ix_project_public_published_at_id read backwards,
    # from which PostgreSQL then reads a page without sorting all matches.
    newest_date = Project.published_at.desc().nulls_first() if public else Project.published_at.desc().nulls_last()
    order = {
        "newest": (newest_date, Project.id.desc()),
        "oldest": (Project.published_at.asc().nulls_last(), Project.id.asc()),
        "title": (Project.title.asc(), Project.id.asc()),
    }.get(filters.sort, (newest_date, Project.id.desc()))
    return query.order_by(*order)


def paginate(query: Select, page: int, per_page: int, count_key: tuple | None = None) -> tuple[list, int]:
    """Return one page of the query and the exact number of rows of all pages.

    At 100,000 projects the count takes 20 to 140 ms for common filters, against under 2 ms
    for the page (docs/benchmarks.md). With a count_key naming everything the query depends
    on, the count is cached until the next write other than a pledge's (financing.core.cache).
    """
    def count() -> int:
        return db.session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0

    total = count() if count_key is None else cached_value(count_key, count, funding=False)
    items = list(db.session.scalars(query.limit(per_page).offset((page - 1) * per_page)))
    return items, total
