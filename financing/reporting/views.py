"""The home page, the coordinators' dashboard and the public statistics page."""

import logging

from flask import Blueprint, current_app, render_template, request
from flask_babel import format_date
from flask_babel import gettext as _
from flask_login import current_user, login_required
from sqlalchemy import Float, case, cast, func, select
from sqlalchemy.orm import selectinload

from financing import reference
from financing.core.cache import cached_value, public_page
from financing.core.errors import Forbidden
from financing.extensions import db
from financing.funders.models import Funder
from financing.projects.models import FundingNeed, Project, ProjectTag
from financing.money import check_currency
from financing.projects.services import PUBLIC
from financing.reporting.forms import ReportFilterForm
from financing.reporting.report_charts import group_label, report_charts
from financing.reporting.services import MIN_PUBLIC_DONORS, build_report, funder_choices, reporting_currencies

logger = logging.getLogger(__name__)

bp = Blueprint("reporting", __name__)

FEATURED_COUNT = 3


@bp.get("/")
@public_page
def home():
    # The counts read every public project's tags (about 0.6 s at 100,000 projects) and do
    # not change with pledges, so they are cached apart from the money figures.
    counts = cached_value(("home", "counts"), _catalogue_counts, funding=False)
    return render_template(
        "reporting/home.html",
        funder_count=db.session.scalar(select(func.count(Funder.id))) or 0,
        currency_totals=_totals_per_currency(),
        featured=_featured_projects(),
        **counts,
    )


def _catalogue_counts() -> dict:
    tags = _public_tags()
    return {"project_count": _count_public_projects(), "region_counts": _region_counts(tags), "theme_counts": _theme_counts(tags)}


def _count_public_projects() -> int:
    return db.session.scalar(select(func.count(Project.id)).where(Project.status.in_(PUBLIC))) or 0


def _totals_per_currency() -> list[dict]:
    """Sum the goals and pledges of public projects' needs, one row per currency."""
    query = (
        select(FundingNeed.currency, func.sum(FundingNeed.goal_minor), func.sum(FundingNeed.pledged_minor), func.count(FundingNeed.id))
        .join(Project, FundingNeed.project_id == Project.id)
        .where(Project.status.in_(PUBLIC))
        .group_by(FundingNeed.currency)
        .order_by(func.sum(FundingNeed.goal_minor).desc(), FundingNeed.currency)
    )
    return [
        {"currency": currency, "goal": int(goal or 0), "pledged": int(pledged or 0), "needs": count}
        for currency, goal, pledged, count in db.session.execute(query)
    ]


def _featured_projects() -> list[Project]:
    """Pick the published projects whose needs are, on average, the most pledged."""
    # The share is a ratio used only to rank projects, never an amount, so a float is fine.
    # Pledges beyond a goal count as 100% so that one over-funded need does not dominate.
    capped = case((FundingNeed.pledged_minor > FundingNeed.goal_minor, FundingNeed.goal_minor), else_=FundingNeed.pledged_minor)
    share = func.avg(cast(capped, Float) / FundingNeed.goal_minor)
    ranked = (
        select(Project.id)
        .join(FundingNeed, FundingNeed.project_id == Project.id)
        .where(Project.status == "published")
        .group_by(Project.id)
        .order_by(share.desc(), Project.id.desc())
        .limit(FEATURED_COUNT)
    )
    ids = list(db.session.scalars(ranked))
    if not ids:
        return []
    query = select(Project).where(Project.id.in_(ids)).options(
        selectinload(Project.needs), selectinload(Project.tags), selectinload(Project.organisation)
    )
    by_id = {project.id: project for project in db.session.scalars(query)}
    return [by_id[project_id] for project_id in ids if project_id in by_id]


def _public_tags() -> list[tuple[int, str, str]]:
    query = (
        select(ProjectTag.project_id, ProjectTag.kind, ProjectTag.code)
        .join(Project, ProjectTag.project_id == Project.id)
        .where(Project.status.in_(PUBLIC))
    )
    return [tuple(row) for row in db.session.execute(query)]


def _region_counts(tags: list[tuple[int, str, str]]) -> dict[str, int]:
    """Count public projects per ITU-D region, by region tag or by a country in the region."""
    region_of = {code: country.region for code, country in reference.countries().items()}
    projects: dict[str, set[int]] = {slug: set() for slug in reference.regions()}
    for project_id, kind, code in tags:
        if kind == "region":
            slug = code
        elif kind == "country":
            slug = region_of.get(code)
        else:
            continue
        if slug in projects:
            projects[slug].add(project_id)
    return {slug: len(ids) for slug, ids in projects.items()}


def _theme_counts(tags: list[tuple[int, str, str]]) -> dict[str, int]:
    """Count public projects per theme, by theme tag or by a DAC sector the theme covers."""
    themes = reference.themes()
    projects: dict[str, set[int]] = {slug: set() for slug in themes}
    for project_id, kind, code in tags:
        if kind == "theme" and code in projects:
            projects[code].add(project_id)
        elif kind == "sector":
            for slug, theme in themes.items():
                if code in theme.sectors:
                    projects[slug].add(project_id)
    return {slug: len(ids) for slug, ids in projects.items()}


# Dashboard and statistics


@bp.app_template_filter("month_name")
def month_name_filter(day) -> str:
    return format_date(day, "MMMM yyyy")


@bp.get("/dashboard")
@login_required
def dashboard():
    if not current_user.is_coordinator:
        raise Forbidden(_("Only coordinators and admins can open the dashboard."))
    return _render_report("reporting/dashboard.html", public=False)


@bp.get("/stats")
@public_page
def stats():
    return _render_report("reporting/stats.html", public=True)


def _render_report(template: str, public: bool):
    default_currency = check_currency(current_app.config["REPORTING_CURRENCY"], "REPORTING_CURRENCY")
    form = ReportFilterForm(
        formdata=request.args, funders=funder_choices(public),
        currencies=reporting_currencies(default_currency), default_currency=default_currency,
    )
    if not form.validate():
        logger.info("report filters rejected page=%s fields=%s", request.path, ",".join(sorted(form.errors)))
        return render_template(template, form=form, report=None, charts={}), 400
    filters, currency = form.filters(), form.currency.data
    report = cached_value(
        ("report", filters, currency, public), lambda: build_report(filters, currency, public=public),
    )
    return render_template(
        template, form=form, report=report, charts=report_charts(report),
        group_label=group_label, min_public_donors=MIN_PUBLIC_DONORS,
    )
