"""Dashboard figures: needs, pledges and the funding gap, summed in SQL and converted exactly.

Every figure comes from a handful of GROUP BY queries that sum integer minor units per group
and per currency. Python then converts each per-currency sum into the reporting currency with
the stored exchange rates, so the work after the queries grows with the number of groups, not
with the number of pledges.

Scope and meaning of the figures:

- Needs are the funding needs of published, funded and closed projects, as on the project
  pages, and the goal is their total. The open need is what is left of each goal after its
  pledges. It is summed over the needs that still take pledges: not closed, and not of a
  closed project.
- Pledged is every pledge that is not cancelled or refunded, less partial refunds; confirmed
  is the part of it that is confirmed or disbursed; disbursed is what was paid out. Pledge
  amounts are in the currency of their need, as stored on the pledge.
- A project counts for a region when tagged with it or with one of its countries, and for a
  theme when tagged with it or with one of its DAC sectors, as in the project search. A
  project in two regions counts in both, so the regions can add up to more than the total.
- Conversion uses, for each currency, the latest stored rate from it into the reporting
  currency on or before the report day, in the stored direction only (as for pledges). An
  amount in a currency without such a rate is kept aside in its own currency, never guessed.
"""

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time as day_time, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, localcontext

from sqlalchemy import and_, case, exists, func, or_, select
from sqlalchemy.sql import ColumnElement, Select

from financing import reference
from financing.core.errors import ValidationFailed
from financing.core.time import utcnow
from financing.extensions import db
from financing.funders.models import Funder
from financing.money import minor_units
from financing.pledges.models import RELEASED_STATES, ExchangeRate, Pledge
from financing.pledges.services import CONFIRMED_STATES
from financing.projects.models import FundingNeed, Project, ProjectTag
from financing.projects.services import ProjectFilters, search_query
from financing.rates.services import current_rates, rate_text

logger = logging.getLogger(__name__)

NEED_MEASURES = ("goal", "open")
PLEDGE_MEASURES = ("pledged", "confirmed", "disbursed")
MEASURES = NEED_MEASURES + PLEDGE_MEASURES
# Funders listed by name. The rest are summed in one "other funders" row.
FUNDER_ROWS = 20
# The public report gives the sums of individual donors only when at least this many pledged,
# so that its "individual donors" row is not one person's pledges.
MIN_PUBLIC_DONORS = 3
# Countries and themes in the lists of the most underfunded ones.
UNDERFUNDED_ROWS = 10
# Months in the time series: the latest MAX_MONTHS at most, and at least MIN_MONTHS, so that
# the first month of a new platform is shown next to the empty months before it. Months
# before the chart still count in every total.
MAX_MONTHS = 36
MIN_MONTHS = 6
# Digits kept while converting: a sum of 10**16 minor units times a rate of 24 digits fits.
CONVERSION_PRECISION = 60


@dataclass(frozen=True)
class ReportFilters:
    """Filters of a report, where None means no filter. Days are UTC and both ends are included."""

    region: str | None = None
    country: str | None = None
    theme: str | None = None
    funder_id: int | None = None
    date_from: date | None = None
    date_to: date | None = None

    @property
    def active(self) -> bool:
        return any(value is not None for value in vars(self).values())


@dataclass(frozen=True)
class RateUsed:
    """A stored rate that converts `currency` into the reporting currency."""

    currency: str
    rate: Decimal
    valid_from: date

    @property
    def rate_text(self) -> str:
        return rate_text(self.rate)


@dataclass(frozen=True)
class Amount:
    """A sum in minor units of the reporting currency, and the parts that had no rate.

    `not_converted` maps a currency code to minor units of that currency.
    """

    minor: int = 0
    not_converted: dict[str, int] = field(default_factory=dict)

    @property
    def partial(self) -> bool:
        return bool(self.not_converted)


@dataclass(frozen=True)
class Totals:
    """The five figures of a group, with its counts of needs and active pledges.

    `projects` is counted for the report's total only, and is 0 in the rows of a breakdown.
    """

    goal: Amount = Amount()
    open: Amount = Amount()
    pledged: Amount = Amount()
    confirmed: Amount = Amount()
    disbursed: Amount = Amount()
    projects: int = 0
    needs: int = 0
    pledges: int = 0

    @property
    def funded_minor(self) -> int:
        """Part of the goal covered by pledges, capped at each need's goal."""
        return max(self.goal.minor - self.open.minor, 0)

    @property
    def funded_percent(self) -> Decimal | None:
        """Share of the goal covered by pledges, in percent with one decimal, or None without a goal."""
        if self.goal.minor <= 0:
            return None
        share = Decimal(self.funded_minor * 100) / Decimal(self.goal.minor)
        return share.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)

    @property
    def partial(self) -> bool:
        return any(getattr(self, name).partial for name in MEASURES)


@dataclass(frozen=True)
class Group:
    """One row of a breakdown: a region slug, theme slug, country code or funder id."""

    key: str
    label: str
    totals: Totals
    # Funders: "institution" or "individual", or "individuals" and "others" for summed rows.
    kind: str | None = None
    # Number of funders summed in an "individuals" or "others" row.
    members: int = 0
    # True when the public report leaves out the row's amounts, so `totals` is empty.
    withheld: bool = False


@dataclass(frozen=True)
class Month:
    """Needs published and pledges made in one month ("2026-03")."""

    month: str
    goal: Amount
    pledged: Amount
    confirmed: Amount
    disbursed: Amount

    @property
    def day(self) -> date:
        return date.fromisoformat(f"{self.month}-01")


@dataclass(frozen=True)
class HeatMap:
    """Open need by theme (rows) and ITU-D region (columns)."""

    themes: list[tuple[str, str]]
    regions: list[tuple[str, str]]
    cells: dict[tuple[str, str], Amount]

    def cell(self, theme: str, region: str) -> Amount:
        return self.cells.get((theme, region), Amount())

    @property
    def max_minor(self) -> int:
        return max((amount.minor for amount in self.cells.values()), default=0)


@dataclass(frozen=True)
class Report:
    currency: str
    as_of: date
    filters: ReportFilters
    public: bool
    rates: list[RateUsed]
    # Currency code -> measure -> minor units of that currency, for the report's total.
    not_converted: dict[str, dict[str, int]]
    total: Totals
    by_region: list[Group]
    by_theme: list[Group]
    by_country: list[Group]
    by_funder: list[Group]
    heat_map: HeatMap
    months: list[Month]
    # True when months before the first month shown have figures.
    months_truncated: bool

    @property
    def underfunded_countries(self) -> list[Group]:
        return _largest_open_need(self.by_country)

    @property
    def underfunded_themes(self) -> list[Group]:
        return _largest_open_need(self.by_theme)

    @property
    def empty(self) -> bool:
        return self.total.needs == 0 and self.total.pledges == 0


def _largest_open_need(groups: list[Group]) -> list[Group]:
    with_gap = [group for group in groups if group.totals.open.minor > 0 or group.totals.open.partial]
    with_gap.sort(key=lambda group: (-group.totals.open.minor, group.label))
    return with_gap[:UNDERFUNDED_ROWS]


# Conversion


class Converter:
    """Convert per-currency sums into one currency with exact Decimal arithmetic."""

    def __init__(self, currency: str, rates: dict[str, RateUsed]):
        self.currency = currency
        self.rates = rates
        self.used: set[str] = set()

    def amount(self, per_currency: dict[str, int]) -> Amount:
        """Convert each sum, add them exactly and round half-up to a minor unit once."""
        exact = Decimal(0)
        not_converted: dict[str, int] = {}
        target_exponent = minor_units(self.currency)
        with localcontext() as context:
            context.prec = CONVERSION_PRECISION
            for currency, minor in sorted(per_currency.items()):
                if minor == 0:
                    continue
                if currency == self.currency:
                    exact += minor
                    continue
                rate = self.rates.get(currency)
                if rate is None:
                    not_converted[currency] = minor
                    continue
                self.used.add(currency)
                exact += Decimal(minor).scaleb(target_exponent - minor_units(currency)) * rate.rate
            rounded = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
        return Amount(rounded, not_converted)

    def totals(self, sums: "_Sums") -> Totals:
        return Totals(
            **{name: self.amount(sums.money[name]) for name in MEASURES},
            needs=sums.needs, pledges=sums.pledges,
        )


def rates_into(currency: str, on: date) -> dict[str, RateUsed]:
    """Return the rate of each currency into `currency` that applies on a day, by currency."""
    return {
        row.base: RateUsed(row.base, Decimal(rate_text(row.rate)), row.valid_from)
        for row in current_rates(on)
        if row.quote == currency
    }


def reporting_currencies(default: str, on: date | None = None) -> list[str]:
    """Return the default currency and every currency that a stored rate converts into, sorted."""
    on = on or utcnow().date()
    quotes = db.session.scalars(select(ExchangeRate.quote).distinct().where(ExchangeRate.valid_from <= on))
    return sorted({default, *quotes})


# Sums per group and currency


@dataclass
class _Sums:
    money: dict[str, dict[str, int]] = field(default_factory=lambda: {name: defaultdict(int) for name in MEASURES})
    needs: int = 0
    pledges: int = 0

    def merge(self, other: "_Sums") -> None:
        for name in MEASURES:
            for currency, minor in other.money[name].items():
                self.money[name][currency] += minor
        self.needs += other.needs
        self.pledges += other.pledges


def _start_of(day: date) -> datetime:
    return datetime.combine(day, day_time(0), tzinfo=timezone.utc)


def _project_condition(filters: ReportFilters) -> ColumnElement:
    """Select public projects in the filtered region, country and theme, as the project search does."""
    query = search_query(ProjectFilters(region=filters.region, country=filters.country, theme=filters.theme))
    return query.whereclause


def _in_range(column, filters: ReportFilters) -> list[ColumnElement]:
    conditions = []
    if filters.date_from is not None:
        conditions.append(column >= _start_of(filters.date_from))
    if filters.date_to is not None:
        conditions.append(column < _start_of(filters.date_to + timedelta(days=1)))
    return conditions


def _need_day():
    # A need dates from its project's publication, or from its own creation when the project has none.
    return func.coalesce(Project.published_at, FundingNeed.created_at)


def _need_conditions(filters: ReportFilters) -> list[ColumnElement]:
    conditions = [_project_condition(filters), *_in_range(_need_day(), filters)]
    if filters.funder_id is not None:
        # With a funder filter, the needs are those the funder has an active pledge on.
        conditions.append(exists().where(
            Pledge.need_id == FundingNeed.id, Pledge.funder_id == filters.funder_id,
            Pledge.state.not_in(RELEASED_STATES),
        ))
    return conditions


def _need_query(filters: ReportFilters, *groups) -> Select:
    """Sum goals and open needs per group and currency, and count the needs."""
    still_open = and_(
        FundingNeed.status != "closed", Project.status != "closed",
        FundingNeed.goal_minor > FundingNeed.pledged_minor,
    )
    open_minor = func.sum(_case_or_zero(still_open, FundingNeed.goal_minor - FundingNeed.pledged_minor))
    return (
        select(
            *groups, FundingNeed.currency, func.sum(FundingNeed.goal_minor).label("goal"), open_minor.label("open"),
            func.count(FundingNeed.id).label("needs"),
        )
        .select_from(FundingNeed)
        .join(Project, FundingNeed.project_id == Project.id)
        .where(*_need_conditions(filters))
        .group_by(*groups, FundingNeed.currency)
    )


def _pledge_query(filters: ReportFilters, *groups) -> Select:
    """Sum active, confirmed and disbursed pledge amounts per group and need currency."""
    active = Pledge.need_amount_minor - Pledge.refunded_minor
    query = (
        select(
            *groups, FundingNeed.currency, func.sum(active).label("pledged"),
            func.sum(_case_or_zero(Pledge.state.in_(CONFIRMED_STATES), active)).label("confirmed"),
            func.sum(Pledge.disbursed_minor).label("disbursed"), func.count(Pledge.id).label("pledges"),
        )
        .select_from(Pledge)
        .join(FundingNeed, Pledge.need_id == FundingNeed.id)
        .join(Project, FundingNeed.project_id == Project.id)
        .where(Pledge.state.not_in(RELEASED_STATES), _project_condition(filters), *_in_range(Pledge.created_at, filters))
        .group_by(*groups, FundingNeed.currency)
    )
    if filters.funder_id is not None:
        query = query.where(Pledge.funder_id == filters.funder_id)
    return query


def _case_or_zero(condition, value):
    return case((condition, value), else_=0)


def _collect(need_query: Select | None, pledge_query: Select | None) -> dict[tuple, _Sums]:
    """Run the two queries and file their rows by group key: the columns before the currency."""
    sums: dict[tuple, _Sums] = defaultdict(_Sums)
    if need_query is not None:
        for row in db.session.execute(need_query):
            *key, currency, goal, open_minor, needs = row
            entry = sums[tuple(key)]
            entry.money["goal"][currency] += int(goal or 0)
            entry.money["open"][currency] += int(open_minor or 0)
            entry.needs += needs
    if pledge_query is not None:
        for row in db.session.execute(pledge_query):
            *key, currency, pledged, confirmed, disbursed, count = row
            entry = sums[tuple(key)]
            entry.money["pledged"][currency] += int(pledged or 0)
            entry.money["confirmed"][currency] += int(confirmed or 0)
            entry.money["disbursed"][currency] += int(disbursed or 0)
            entry.pledges += count
    return sums


# Regions and themes


@dataclass(frozen=True)
class _Membership:
    """One region or theme and its bit in the membership mask of a project."""

    kind: str
    slug: str
    bit: int
    condition: ColumnElement


def _memberships() -> list[_Membership]:
    """List the regions, then the themes, each with the condition that a project belongs to it.

    Each condition is an uncorrelated IN subquery, so the database runs it once per query
    (PostgreSQL keeps its result in a hash table) instead of once per row.
    """
    groups = [("region", "country", slug, region.countries) for slug, region in reference.regions().items()]
    groups += [("theme", "sector", slug, theme.sectors) for slug, theme in reference.themes().items()]
    memberships = []
    for bit, (kind, part_kind, slug, parts) in enumerate(groups):
        tagged = select(ProjectTag.project_id).where(or_(
            and_(ProjectTag.kind == kind, ProjectTag.code == slug),
            and_(ProjectTag.kind == part_kind, ProjectTag.code.in_(sorted(parts))),
        ))
        memberships.append(_Membership(kind, slug, bit, Project.id.in_(tagged)))
    return memberships


def _mask(memberships: list[_Membership]) -> ColumnElement:
    """Return one integer per project with the bit of every region and theme it belongs to.

    On PostgreSQL 15 with 100,000 projects, fourteen flag columns as the GROUP BY key made the
    planner expect one group per row and sort every row on disk. This one column, taken from
    the materialized CTE, gets a small estimate and an in-memory hash aggregate.
    """
    return sum(
        (_case_or_zero(membership.condition, 1 << membership.bit) for membership in memberships[1:]),
        _case_or_zero(memberships[0].condition, 1 << memberships[0].bit),
    ).label("mask")


def _sums_by_mask(filters: ReportFilters, memberships: list[_Membership]) -> dict[int, _Sums]:
    """Sum needs and pledges per membership mask and currency.

    The rows are the combinations of regions and themes that occur, so their number depends
    on how projects are tagged and not on how many there are. The mask is computed once per
    project in a materialized CTE, not once per need or pledge row.
    """
    masks = (
        select(Project.id.label("project_id"), _mask(memberships))
        .where(_project_condition(filters))
        .cte("project_mask")
        .prefix_with("MATERIALIZED")
    )
    needs = _need_query(filters, masks.c.mask).join(masks, masks.c.project_id == Project.id)
    pledges = _pledge_query(filters, masks.c.mask).join(masks, masks.c.project_id == Project.id)
    return {key[0]: entry for key, entry in _collect(needs, pledges).items()}


def _merge(by_mask: dict[int, _Sums], bits: int) -> _Sums:
    """Add the sums of every mask that has all of `bits` set, or of every mask when bits is 0."""
    merged = _Sums()
    for mask, entry in by_mask.items():
        if mask & bits == bits:
            merged.merge(entry)
    return merged


def _country_sums(filters: ReportFilters) -> dict[tuple, _Sums]:
    """Sum needs and pledges per recipient country, from sums per project and currency.

    Summing per project first, in a materialized CTE, lets the join with the country tags
    read one row per project and currency instead of one per need or pledge. A project has
    each country tag once, so it counts once per country.
    """
    def by_country(per_project: Select):
        sums = per_project.cte().prefix_with("MATERIALIZED")
        amounts = list(sums.c)[2:]
        return (
            select(ProjectTag.code, sums.c.currency, *(func.sum(column) for column in amounts))
            .select_from(sums)
            .join(ProjectTag, and_(ProjectTag.project_id == sums.c.project_id, ProjectTag.kind == "country"))
            .group_by(ProjectTag.code, sums.c.currency)
        )

    project_id = FundingNeed.project_id.label("project_id")
    return _collect(by_country(_need_query(filters, project_id)), by_country(_pledge_query(filters, project_id)))


# Months


def _month_of(column) -> ColumnElement:
    """Return the UTC month of a timestamp as "YYYY-MM" on SQLite and PostgreSQL."""
    if db.session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM")
    # SQLite stores the UTC timestamp as ISO text, which strftime reads.
    return func.strftime("%Y-%m", column)


def _months_between(first: str, last: str) -> list[str]:
    year, month = int(first[:4]), int(first[5:7])
    months = []
    while f"{year:04d}-{month:02d}" <= last:
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


def _months_before(month: str, count: int) -> str:
    index = int(month[:4]) * 12 + int(month[5:7]) - 1 - count
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def _months(filters: ReportFilters, converter: Converter, today: date) -> tuple[list[Month], bool]:
    """Sum needs by the month their project was published and pledges by the month they were made.

    The pledge figures of a month are the pledges made that month, with the part of them
    confirmed and disbursed to date. The ledger's disbursement dates are not used, because
    IATI imports record a downward correction there as a positive amount.
    """
    need_month = _month_of(_need_day())
    pledge_month = _month_of(Pledge.created_at)
    sums = _collect(_need_query(filters, need_month), _pledge_query(filters, pledge_month))
    if not sums:
        return [], False

    found = sorted(key[0] for key in sums if key[0] is not None)
    if not found:
        return [], False
    last = max((filters.date_to or today).strftime("%Y-%m"), found[-1])
    if filters.date_from is not None:
        first = min(filters.date_from.strftime("%Y-%m"), found[0])
    else:
        first = min(found[0], _months_before(last, MIN_MONTHS - 1))
    months = _months_between(first, last)
    truncated = len(months) > MAX_MONTHS
    months = months[-MAX_MONTHS:]
    rows = []
    for month in months:
        totals = converter.totals(sums.get((month,), _Sums()))
        rows.append(Month(month, totals.goal, totals.pledged, totals.confirmed, totals.disbursed))
    return rows, truncated


# Funders


def _funder_groups(filters: ReportFilters, converter: Converter, public: bool) -> list[Group]:
    """Sum pledges per funder, largest first, then the rest in one row.

    The public report names institutions only: every individual donor's pledges are summed in
    one "individuals" row without names, whose amounts are withheld below MIN_PUBLIC_DONORS.
    """
    query = _pledge_query(filters, Pledge.funder_id).join(Funder, Pledge.funder_id == Funder.id)
    sums = _collect(None, query)
    ids = [key[0] for key in sums]
    funders = {
        funder_id: (name, kind)
        for funder_id, name, kind in db.session.execute(select(Funder.id, Funder.name, Funder.kind).where(Funder.id.in_(ids)))
    } if ids else {}

    named: list[tuple[int, _Sums, Totals]] = []
    individuals, individual_count = _Sums(), 0
    for (funder_id,), entry in sums.items():
        if public and funders[funder_id][1] == "individual":
            individuals.merge(entry)
            individual_count += 1
        else:
            named.append((funder_id, entry, converter.totals(entry)))
    named.sort(key=lambda item: (-item[2].pledged.minor, funders[item[0]][0], item[0]))

    groups = [
        Group(str(funder_id), funders[funder_id][0], totals, kind=funders[funder_id][1])
        for funder_id, _, totals in named[:FUNDER_ROWS]
    ]
    rest = named[FUNDER_ROWS:]
    if rest:
        others = _Sums()
        for _, entry, _ in rest:
            others.merge(entry)
        groups.append(Group("others", "", converter.totals(others), kind="others", members=len(rest)))
    if individual_count >= MIN_PUBLIC_DONORS:
        groups.append(Group("individuals", "", converter.totals(individuals), kind="individuals", members=individual_count))
    elif individual_count:
        # NOTE: the totals and narrow filters (one country, one month) still let a reader
        # work out what few individual donors gave, though not who they are.
        groups.append(Group("individuals", "", Totals(), kind="individuals", members=individual_count, withheld=True))
    return groups


def funder_choices(public: bool) -> list[tuple[int, str]]:
    """Return the funders with pledges, by name, and only institutions for the public report."""
    query = (
        select(Funder.id, Funder.name)
        .where(exists().where(Pledge.funder_id == Funder.id))
        .order_by(Funder.name, Funder.id)
    )
    if public:
        query = query.where(Funder.kind == "institution")
    return [(funder_id, name) for funder_id, name in db.session.execute(query)]


# The report


def check_filters(filters: ReportFilters, public: bool) -> None:
    """Raise ValidationFailed naming each filter value that the report cannot use."""
    fields = {}
    if filters.region is not None and filters.region not in reference.regions():
        fields["region"] = f"Unknown region {filters.region!r}."
    if filters.theme is not None and filters.theme not in reference.themes():
        fields["theme"] = f"Unknown theme {filters.theme!r}."
    if filters.country is not None and filters.country not in reference.countries():
        fields["country"] = f"Unknown country {filters.country!r}."
    if filters.funder_id is not None:
        funder = db.session.get(Funder, filters.funder_id)
        if funder is None or (public and funder.kind != "institution"):
            fields["funder"] = f"Unknown funder {filters.funder_id!r}."
    if filters.date_from and filters.date_to and filters.date_from > filters.date_to:
        fields["date_to"] = f"End date {filters.date_to.isoformat()} is before the start date {filters.date_from.isoformat()}."
    if fields:
        raise ValidationFailed(" ".join(fields.values()), fields)


def build_report(filters: ReportFilters, currency: str, *, public: bool, today: date | None = None) -> Report:
    """Compute every figure of the dashboard in `currency`, or raise ValidationFailed for bad filters.

    `public` leaves out what only coordinators may see: the names of individual donors, and
    their sums while fewer than MIN_PUBLIC_DONORS of them pledged.
    """
    # NOTE: with 100,000 projects benchmarks/dashboards.py measured about 3 s per report on
    # PostgreSQL 15 and 5 to 8 s on SQLite, on 2 shared cores under a load average near 5.
    # The pages cache the report until the next write (financing.core.cache), so only the
    # first view after a write waits that long.
    check_filters(filters, public)
    started = time.perf_counter()
    today = today or utcnow().date()
    as_of = min(filters.date_to, today) if filters.date_to else today
    converter = Converter(currency, rates_into(currency, as_of))

    memberships = _memberships()
    by_mask = _sums_by_mask(filters, memberships)
    total = replace(converter.totals(_merge(by_mask, 0)), projects=_count_projects(filters))
    by_country = _groups(_country_sums(filters), converter, {code: country.name for code, country in reference.countries().items()})
    by_country.sort(key=lambda group: (-group.totals.goal.minor, group.label))
    months, truncated = _months(filters, converter, today)

    report = Report(
        currency=currency, as_of=as_of, filters=filters, public=public,
        not_converted=not_converted_by_currency(total),
        total=total,
        by_region=_membership_groups(by_mask, memberships, "region", converter),
        by_theme=_membership_groups(by_mask, memberships, "theme", converter),
        by_country=by_country,
        by_funder=_funder_groups(filters, converter, public),
        heat_map=_heat_map(by_mask, memberships, converter),
        months=months, months_truncated=truncated,
        # Listed once every figure has recorded the currencies it converted.
        rates=[],
    )
    report.rates.extend(converter.rates[code] for code in sorted(converter.used))
    logger.info(
        "report built currency=%s public=%s filters=%s rates=%s not_converted=%s ms=%d",
        currency, public, {name: value for name, value in vars(filters).items() if value is not None},
        len(report.rates), ",".join(report.not_converted) or "-", (time.perf_counter() - started) * 1000,
    )
    return report


def converted_total(currency: str, today: date | None = None) -> tuple[Totals, list[RateUsed], date]:
    """Return the report's total without filters, the rates it used and the day of the rates."""
    as_of = today or utcnow().date()
    converter = Converter(currency, rates_into(currency, as_of))
    total = _total(ReportFilters(), converter)
    return total, [converter.rates[code] for code in sorted(converter.used)], as_of


def not_converted_by_currency(total: Totals) -> dict[str, dict[str, int]]:
    """Regroup the amounts without a rate by currency: currency code -> measure -> minor units."""
    by_currency: dict[str, dict[str, int]] = defaultdict(dict)
    for name in MEASURES:
        for code, minor in getattr(total, name).not_converted.items():
            by_currency[code][name] = minor
    return {code: by_currency[code] for code in sorted(by_currency)}


def _total(filters: ReportFilters, converter: Converter) -> Totals:
    overall = _collect(_need_query(filters), _pledge_query(filters)).get((), _Sums())
    return replace(converter.totals(overall), projects=_count_projects(filters))


def _count_projects(filters: ReportFilters) -> int:
    query = (
        select(func.count(func.distinct(Project.id)))
        .select_from(FundingNeed)
        .join(Project, FundingNeed.project_id == Project.id)
        .where(*_need_conditions(filters))
    )
    return db.session.scalar(query) or 0


def _groups(sums: dict[tuple, _Sums], converter: Converter, labels: dict[str, str]) -> list[Group]:
    """Convert the sums of each key that has a label, such as a known country code."""
    return [Group(key[0], labels[key[0]], converter.totals(entry)) for key, entry in sums.items() if key[0] in labels]


def _membership_groups(by_mask: dict[int, _Sums], memberships: list[_Membership], kind: str, converter: Converter) -> list[Group]:
    """Return one row per region or per theme, in the reference order, including empty ones."""
    names = {**{slug: region.name for slug, region in reference.regions().items()}, **{slug: theme.name for slug, theme in reference.themes().items()}}
    return [
        Group(membership.slug, names[membership.slug], converter.totals(_merge(by_mask, 1 << membership.bit)))
        for membership in memberships
        if membership.kind == kind
    ]


def _heat_map(by_mask: dict[int, _Sums], memberships: list[_Membership], converter: Converter) -> HeatMap:
    regions = [membership for membership in memberships if membership.kind == "region"]
    themes = [membership for membership in memberships if membership.kind == "theme"]
    cells = {}
    for theme in themes:
        for region in regions:
            merged = _merge(by_mask, (1 << theme.bit) | (1 << region.bit))
            if merged.needs:
                cells[(theme.slug, region.slug)] = converter.amount(merged.money["open"])
    return HeatMap(
        themes=[(slug, theme.name) for slug, theme in reference.themes().items()],
        regions=[(slug, region.name) for slug, region in reference.regions().items()],
        cells=cells,
    )
