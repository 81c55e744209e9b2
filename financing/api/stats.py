"""Platform statistics: projects, need goals and pledged amounts by status, region and theme.

Every figure is a SQL aggregate. Amounts are summed per currency and never converted, so a
total is a list with one money object per currency.
"""

from collections import defaultdict

from flask import jsonify
from sqlalchemy import String, and_, func, literal, or_, select, union
from sqlalchemy.sql import Subquery

from financing import reference
from financing.api import bp
from financing.api.auth import viewer
from financing.api.docs import operation
from financing.api.schemas import StatsSchema
from financing.extensions import db
from financing.money import money_dict
from financing.projects.models import PROJECT_STATUSES, FundingNeed, Project, ProjectTag
from financing.projects.services import PUBLIC

stats_schema = StatsSchema()


def _keys_by_tag(kind: str, part_kind: str, groups: dict[str, frozenset[str]]) -> Subquery:
    """Select distinct (project_id, key) pairs for projects tagged with a group or one of its parts.

    A project tagged with Kenya counts for the africa region, and one tagged with DAC sector
    22040 for the broadband theme, as in the project search.
    """
    selects = [
        select(ProjectTag.project_id.label("project_id"), literal(slug, String).label("key")).where(or_(
            and_(ProjectTag.kind == kind, ProjectTag.code == slug),
            and_(ProjectTag.kind == part_kind, ProjectTag.code.in_(sorted(parts))),
        ))
        for slug, parts in groups.items()
    ]
    return union(*selects).subquery()


def _keys_by_status() -> Subquery:
    return select(Project.id.label("project_id"), Project.status.label("key")).subquery()


def _totals(keys: Subquery, statuses: tuple[str, ...]) -> dict[str, dict]:
    """Count projects and sum need goals and pledged amounts per key and currency."""
    counts = db.session.execute(
        select(keys.c.key, func.count(func.distinct(Project.id)))
        .join(Project, Project.id == keys.c.project_id)
        .where(Project.status.in_(statuses))
        .group_by(keys.c.key)
    )
    sums = db.session.execute(
        select(keys.c.key, FundingNeed.currency, func.sum(FundingNeed.goal_minor), func.sum(FundingNeed.pledged_minor))
        .join(Project, Project.id == keys.c.project_id)
        .join(FundingNeed, FundingNeed.project_id == Project.id)
        .where(Project.status.in_(statuses))
        .group_by(keys.c.key, FundingNeed.currency)
        .order_by(keys.c.key, FundingNeed.currency)
    )
    totals: dict[str, dict] = defaultdict(lambda: {"projects": 0, "goal": [], "pledged": []})
    for key, count in counts:
        totals[key]["projects"] = count
    for key, currency, goal, pledged in sums:
        totals[key]["goal"].append(money_dict(int(goal), currency))
        totals[key]["pledged"].append(money_dict(int(pledged), currency))
    return totals


def project_stats(statuses: tuple[str, ...]) -> dict:
    """Aggregate the projects in `statuses`: overall, by status, by region and by theme."""
    regions = {slug: region.countries for slug, region in reference.regions().items()}
    themes = {slug: theme.sectors for slug, theme in reference.themes().items()}
    overall = _totals(select(Project.id.label("project_id"), literal("all", String).label("key")).subquery(), statuses)
    by_status = _totals(_keys_by_status(), statuses)
    by_region = _totals(_keys_by_tag("region", "country", regions), statuses)
    by_theme = _totals(_keys_by_tag("theme", "sector", themes), statuses)
    return {
        "total": overall["all"],
        "by_status": [{"status": status, **by_status[status]} for status in statuses],
        "by_region": [{"region": slug, **by_region[slug]} for slug in regions],
        "by_theme": [{"theme": slug, **by_theme[slug]} for slug in themes],
    }


@bp.get("/v1/stats")
@operation(
    "Totals by status, region and theme", "stats", response=StatsSchema,
    description="Counts projects and sums need goals and pledged amounts, one entry per currency. "
                "Coordinators get every status; everyone else published, funded and closed projects. "
                "A project counts for a region or theme when tagged with it or with one of its "
                "countries or DAC sectors, so the regions and themes can add up to more than the total.",
)
def stats_view():
    user = viewer()
    statuses = PROJECT_STATUSES if user is not None and user.is_coordinator else PUBLIC
    return jsonify(stats_schema.dump(project_stats(tuple(statuses))))
