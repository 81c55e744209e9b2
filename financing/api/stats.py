"""Platform statistics: projects, need goals and pledged amounts by status, region and theme.

Every figure is a SQL aggregate. Amounts are summed per currency and never converted, so a
total is a list with one money object per currency. The `converted` object adds the
dashboard's total of public projects in the reporting currency, with the rates it used.
"""

from collections import defaultdict

from flask import current_app, jsonify
from marshmallow import fields
from sqlalchemy import String, and_, func, literal, or_, select, union
from sqlalchemy.sql import Subquery

from financing import reference
from financing.api import bp
from financing.api.auth import viewer
from financing.api.docs import operation
from financing.api.schemas import MoneySchema, OutputSchema, StatsSchema
from financing.extensions import db
from financing.money import check_currency, money_dict
from financing.projects.models import PROJECT_STATUSES, FundingNeed, Project, ProjectTag
from financing.projects.services import PUBLIC
from financing.reporting.services import MEASURES, converted_total, not_converted_by_currency


class ConvertedRateSchema(OutputSchema):
    currency = fields.String(metadata={"description": "ISO 4217 code converted from."})
    rate = fields.String(metadata={"description": "Major units of the reporting currency for one major unit of `currency`.", "example": "0.9259"})
    valid_from = fields.Date(metadata={"description": "First day (UTC) the rate applies."})


class NotConvertedSchema(OutputSchema):
    currency = fields.String()
    goal = fields.Nested(MoneySchema)
    open = fields.Nested(MoneySchema)
    pledged = fields.Nested(MoneySchema)
    confirmed = fields.Nested(MoneySchema)
    disbursed = fields.Nested(MoneySchema)


class ConvertedTotalsSchema(OutputSchema):
    currency = fields.String(metadata={"description": "The reporting currency (setting REPORTING_CURRENCY).", "example": "EUR"})
    as_of = fields.Date(metadata={"description": "Day (UTC) whose latest rates were used."})
    projects = fields.Integer()
    goal = fields.Nested(MoneySchema)
    open = fields.Nested(MoneySchema, metadata={"description": "What is left of the goals of needs that still take pledges."})
    pledged = fields.Nested(MoneySchema)
    confirmed = fields.Nested(MoneySchema)
    disbursed = fields.Nested(MoneySchema)
    rates = fields.List(fields.Nested(ConvertedRateSchema))
    not_converted = fields.List(
        fields.Nested(NotConvertedSchema),
        metadata={"description": "Amounts in currencies without a rate into the reporting currency, left out of the figures above."},
    )


class ReportingStatsSchema(StatsSchema):
    converted = fields.Nested(
        ConvertedTotalsSchema,
        metadata={"description": "Published, funded and closed projects only, for every caller, as on the statistics page."},
    )


stats_schema = ReportingStatsSchema()


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
    "Totals by status, region and theme", "stats", response=ReportingStatsSchema,
    description="Counts projects and sums need goals and pledged amounts, one entry per currency. "
                "Coordinators get every status; everyone else published, funded and closed projects. "
                "A project counts for a region or theme when tagged with it or with one of its "
                "countries or DAC sectors, so the regions and themes can add up to more than the total.",
)
def stats_view():
    user = viewer()
    statuses = PROJECT_STATUSES if user is not None and user.is_coordinator else PUBLIC
    return jsonify(stats_schema.dump({**project_stats(tuple(statuses)), "converted": converted_stats()}))


def converted_stats() -> dict:
    """Convert the public total into the reporting currency, as the statistics page does."""
    currency = check_currency(current_app.config["REPORTING_CURRENCY"], "REPORTING_CURRENCY")
    total, rates, as_of = converted_total(currency)
    return {
        "currency": currency,
        "as_of": as_of,
        "projects": total.projects,
        **{name: money_dict(getattr(total, name).minor, currency) for name in MEASURES},
        "rates": [{"currency": rate.currency, "rate": rate.rate_text, "valid_from": rate.valid_from} for rate in rates],
        "not_converted": [
            {"currency": code, **{name: money_dict(sums.get(name, 0), code) for name in MEASURES}}
            for code, sums in not_converted_by_currency(total).items()
        ],
    }
