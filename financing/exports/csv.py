"""CSV exports of projects, funding needs, pledges and funders, read and written batch by batch.

Files are UTF-8 with a byte order mark, so that spreadsheet programs detect the encoding, and
rows end with CRLF as RFC 4180 describes. A cell that starts with a character that spreadsheet
programs read as the start of a formula gets a leading apostrophe, which they show as text.
Amounts are plain decimal strings with the currency's number of decimals, next to a column
with the ISO 4217 code. Lists of codes are joined with "|".
"""

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import Select, select
from sqlalchemy.orm import selectinload

from financing.extensions import db
from financing.funders.models import Funder
from financing.funders.views import funder_query
from financing.money import amount_text
from financing.pledges.models import Pledge
from financing.projects.models import FundingNeed, Project
from financing.projects.services import ProjectFilters, search_query
from financing.rates.services import rate_text

# First characters that make spreadsheet programs evaluate a cell as a formula. Some of them
# drop a leading tab or carriage return before they look at the next character.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
BYTE_ORDER_MARK = "\ufeff"
CODE_SEPARATOR = "|"
# Rows loaded per database round trip.
BATCH_SIZE = 500
# Text gathered before it is handed to the response, in characters.
CHUNK_SIZE = 32 * 1024

PROJECT_COLUMNS = (
    "id", "title", "status", "organisation_id", "organisation", "summary",
    "countries", "regions", "themes", "sectors", "start_date", "end_date",
    "needs", "currency", "goal", "pledged", "remaining",
    "iati_identifier", "source", "created_at", "updated_at", "published_at",
)
NEED_COLUMNS = (
    "id", "project_id", "project_title", "project_status", "organisation", "title",
    "currency", "goal", "pledged", "remaining", "deadline", "allow_overfunding", "status", "created_at",
)
PLEDGE_COLUMNS = (
    "id", "project_id", "project_title", "need_id", "need_title", "funder_id", "funder",
    "kind", "state", "currency", "amount", "rate", "need_currency", "need_amount",
    "disbursed", "refunded", "match_fund_id", "created_at", "updated_at",
)
FUNDER_COLUMNS = (
    "id", "name", "kind", "organisation", "iati_ref", "regions", "countries", "themes", "sectors",
    "currency", "ticket_min", "ticket_max", "annual_budget", "decision_days", "learned_from", "created_at",
)


def neutralise(value: object) -> str:
    """Return the cell text, with an apostrophe before a leading formula character."""
    text = "" if value is None else str(value)
    if text.startswith(FORMULA_STARTS):
        return "'" + text
    return text


class _Echo:
    """A file-like object whose write() returns its argument, so csv.writer returns each line."""

    def write(self, text: str) -> str:
        return text


def stream_csv(columns: Iterable[str], rows: Iterable[Iterable[object]]) -> Iterator[str]:
    """Yield a CSV file in chunks: the byte order mark and header, then the neutralised rows."""
    writer = csv.writer(_Echo(), lineterminator="\r\n")
    chunk = [BYTE_ORDER_MARK, writer.writerow(columns)]
    size = 0
    for row in rows:
        line = writer.writerow([neutralise(value) for value in row])
        chunk.append(line)
        size += len(line)
        if size >= CHUNK_SIZE:
            yield "".join(chunk)
            chunk, size = [], 0
    yield "".join(chunk)


def _time(value: date | datetime | None) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return value.isoformat()


def _amount(amount_minor: int | None, currency: str | None) -> str:
    if amount_minor is None or currency is None:
        return ""
    return amount_text(amount_minor, currency)


def _codes(codes: list[str]) -> str:
    return CODE_SEPARATOR.join(codes)


def _flag(value: bool) -> str:
    return "true" if value else "false"


# Projects and their needs


def project_query(filters: ProjectFilters) -> Select:
    """Build the coordinators' project list query, which includes every status."""
    return search_query(filters, public=False).options(
        selectinload(Project.needs), selectinload(Project.tags), selectinload(Project.organisation),
    )


def _projects(filters: ProjectFilters) -> Iterator[Project]:
    yield from db.session.scalars(project_query(filters).execution_options(yield_per=BATCH_SIZE))


def project_row(project: Project) -> list[object]:
    """Build one project's row.

    Goal, pledged and remaining add up the needs only when they share one currency. With needs
    in several currencies they stay empty, and needs.csv lists each need.
    """
    currencies = {need.currency for need in project.needs}
    currency = currencies.pop() if len(currencies) == 1 else None
    goal = pledged = remaining = None
    if currency is not None:
        goal = sum(need.goal_minor for need in project.needs)
        pledged = sum(need.pledged_minor for need in project.needs)
        remaining = sum(need.remaining_minor for need in project.needs)
    return [
        project.id, project.title, project.status, project.organisation_id, project.organisation.name,
        project.summary, _codes(project.countries), _codes(project.regions), _codes(project.themes),
        _codes(project.sectors), _time(project.start_date), _time(project.end_date),
        len(project.needs), currency or "", _amount(goal, currency), _amount(pledged, currency),
        _amount(remaining, currency), project.iati_identifier or "", project.source,
        _time(project.created_at), _time(project.updated_at), _time(project.published_at),
    ]


def project_rows(filters: ProjectFilters) -> Iterator[list[object]]:
    for project in _projects(filters):
        yield project_row(project)


def need_row(project: Project, need: FundingNeed) -> list[object]:
    return [
        need.id, project.id, project.title, project.status, project.organisation.name, need.title,
        need.currency, _amount(need.goal_minor, need.currency), _amount(need.pledged_minor, need.currency),
        _amount(need.remaining_minor, need.currency), _time(need.deadline), _flag(need.allow_overfunding),
        need.status, _time(need.created_at),
    ]


def need_rows(filters: ProjectFilters) -> Iterator[list[object]]:
    """Yield the needs of the filtered projects, in the order of the project list."""
    for project in _projects(filters):
        for need in project.needs:
            yield need_row(project, need)


# Pledges


@dataclass
class PledgeFilters:
    """Filters of the pledge export; None leaves a filter out. `currency` is the pledge's."""

    state: str | None = None
    funder_id: int | None = None
    project_id: int | None = None
    currency: str | None = None


def pledge_query(filters: PledgeFilters) -> Select:
    """Build the query of pledges with their need, project and funder, oldest first."""
    query = (
        select(Pledge, FundingNeed, Project, Funder)
        .join(FundingNeed, Pledge.need_id == FundingNeed.id)
        .join(Project, FundingNeed.project_id == Project.id)
        .join(Funder, Pledge.funder_id == Funder.id)
    )
    if filters.state:
        query = query.where(Pledge.state == filters.state)
    if filters.funder_id:
        query = query.where(Pledge.funder_id == filters.funder_id)
    if filters.project_id:
        query = query.where(FundingNeed.project_id == filters.project_id)
    if filters.currency:
        query = query.where(Pledge.currency == filters.currency)
    return query.order_by(Pledge.created_at.asc(), Pledge.id.asc())


def _rate(rate: Decimal | None) -> str:
    return rate_text(rate) if rate is not None else ""


def pledge_row(pledge: Pledge, need: FundingNeed, project: Project, funder: Funder) -> list[object]:
    return [
        pledge.id, project.id, project.title, need.id, need.title, funder.id, funder.name,
        pledge.kind, pledge.state, pledge.currency, _amount(pledge.amount_minor, pledge.currency),
        _rate(pledge.rate), need.currency, _amount(pledge.need_amount_minor, need.currency),
        _amount(pledge.disbursed_minor, need.currency), _amount(pledge.refunded_minor, need.currency),
        pledge.match_fund_id or "", _time(pledge.created_at), _time(pledge.updated_at),
    ]


def pledge_rows(filters: PledgeFilters) -> Iterator[list[object]]:
    rows = db.session.execute(pledge_query(filters).execution_options(yield_per=BATCH_SIZE))
    for pledge, need, project, funder in rows:
        yield pledge_row(pledge, need, project, funder)


# Funders


@dataclass
class FunderFilters:
    """Filters of the funder list: a region or theme also matches its countries or sectors."""

    region: str | None = None
    theme: str | None = None
    kind: str | None = None


def funder_row(funder: Funder) -> list[object]:
    return [
        funder.id, funder.name, funder.kind, funder.organisation.name if funder.organisation else "",
        funder.iati_ref or "", _codes(funder.regions), _codes(funder.countries), _codes(funder.themes),
        _codes(funder.sectors), funder.currency, _amount(funder.ticket_min_minor, funder.currency),
        _amount(funder.ticket_max_minor, funder.currency), _amount(funder.annual_budget_minor, funder.currency),
        "" if funder.decision_days is None else funder.decision_days, funder.learned_from, _time(funder.created_at),
    ]


def funder_rows(filters: FunderFilters) -> Iterator[list[object]]:
    query = funder_query(region=filters.region, theme=filters.theme, kind=filters.kind)
    query = query.options(selectinload(Funder.organisation)).execution_options(yield_per=BATCH_SIZE)
    for funder in db.session.scalars(query):
        yield funder_row(funder)
