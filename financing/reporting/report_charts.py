"""The charts of the dashboard and statistics pages, built from a Report with translated labels."""

from flask_babel import format_date
from flask_babel import gettext as _
from markupsafe import Markup

from financing.money import format_compact
from financing.reporting.charts import BarRow, HeatCell, Series, column_chart, heat_map, stacked_bar_chart
from financing.reporting.services import Group, Report, Totals

# Bars in the country and funder charts. Their tables list every row.
CHART_ROWS = 12

DISBURSED_COLOUR = "#073763"
CONFIRMED_COLOUR = "#2171b5"
PLEDGED_COLOUR = "#4292c6"
OPEN_COLOUR = "#b45f06"
GOAL_COLOUR = "#b45f06"


def compact_number(minor: int, currency: str) -> str:
    """Format a short figure without the currency code, such as "2.0M", for axes and cells."""
    return format_compact(minor, currency).removesuffix(f" {currency}")


def group_label(group: Group) -> str:
    """Return the name shown for a row, generated for the summed funder rows."""
    if group.kind == "others":
        return _("Other funders (%(num)d)", num=group.members)
    if group.kind == "individuals":
        return _("Individual donors (%(num)d)", num=group.members)
    return group.label


def _need_series() -> list[Series]:
    return [
        Series(_("Disbursed"), DISBURSED_COLOUR),
        Series(_("Confirmed, not yet disbursed"), CONFIRMED_COLOUR),
        Series(_("Pledged, not yet confirmed"), PLEDGED_COLOUR),
        Series(_("Open need"), OPEN_COLOUR),
    ]


def _segments(totals: Totals, with_open: bool) -> list[int]:
    """Split the pledged amount into disbursed, confirmed and pledged parts, then the open need."""
    disbursed = totals.disbursed.minor
    confirmed = max(totals.confirmed.minor - disbursed, 0)
    pledged = max(totals.pledged.minor - totals.confirmed.minor, 0)
    return [disbursed, confirmed, pledged, totals.open.minor] if with_open else [disbursed, confirmed, pledged]


def _breakdown_chart(chart_id: str, title: str, category_label: str, groups: list[Group], report: Report) -> Markup:
    currency = report.currency
    rows = [
        BarRow(group.label, _segments(group.totals, with_open=True), format_compact(group.totals.goal.minor, currency))
        for group in groups
    ]
    largest = max(groups, key=lambda group: group.totals.goal.minor, default=None)
    description = _(
        "%(count)d bars. Each bar is the goal of the needs in %(currency)s, split into "
        "disbursed, confirmed, pledged and open need. The text after it is the goal.",
        count=len(rows), currency=currency,
    )
    if largest is not None and largest.totals.goal.minor > 0:
        description += " " + _(
            "The largest goal is %(name)s with %(goal)s, of which %(open)s is open.",
            name=largest.label, goal=format_compact(largest.totals.goal.minor, currency),
            open=format_compact(largest.totals.open.minor, currency),
        )
    return stacked_bar_chart(
        chart_id, title, description, rows, _need_series(),
        value_label=_("Amount in %(currency)s", currency=currency), category_label=category_label,
        tick_text=lambda minor: compact_number(minor, currency),
    )


def _funder_chart(report: Report) -> Markup:
    currency = report.currency
    groups = [group for group in report.by_funder if not group.withheld][:CHART_ROWS]
    rows = [
        BarRow(group_label(group), _segments(group.totals, with_open=False), format_compact(group.totals.pledged.minor, currency))
        for group in groups
    ]
    description = _(
        "%(count)d bars, one per funder, of the amounts pledged in %(currency)s, split into disbursed, "
        "confirmed and not yet confirmed. The text after each bar is the amount pledged.",
        count=len(rows), currency=currency,
    )
    return stacked_bar_chart(
        "chart-funders", _("Pledges by funder"), description, rows, _need_series()[:3],
        value_label=_("Amount in %(currency)s", currency=currency), category_label=_("Funder"),
        tick_text=lambda minor: compact_number(minor, currency),
    )


def _month_chart(report: Report) -> Markup:
    currency = report.currency
    series = [
        Series(_("Needs published"), GOAL_COLOUR),
        Series(_("Pledged"), PLEDGED_COLOUR),
        Series(_("Confirmed"), CONFIRMED_COLOUR),
        Series(_("Disbursed"), DISBURSED_COLOUR),
    ]
    categories = [format_date(month.day, "MMM yyyy") for month in report.months]
    values = [[month.goal.minor, month.pledged.minor, month.confirmed.minor, month.disbursed.minor] for month in report.months]
    description = _(
        "Columns for %(count)d months from %(first)s to %(last)s: the goals of needs published each month and the "
        "pledges made each month in %(currency)s, with the part of them confirmed and disbursed to date.",
        count=len(categories), first=categories[0] if categories else "", last=categories[-1] if categories else "",
        currency=currency,
    )
    return column_chart(
        "chart-months", _("Needs and pledges by month"), description, categories, series, values,
        value_label=_("Amount in %(currency)s", currency=currency), category_label=_("Month (UTC)"),
        tick_text=lambda minor: compact_number(minor, currency),
    )


def _heat_map_chart(report: Report) -> Markup:
    currency = report.currency
    grid = report.heat_map
    cells = [
        [
            HeatCell(amount.minor, compact_number(amount.minor, currency) + ("*" if amount.partial else ""))
            for amount in (grid.cell(theme, region) for region, _name in grid.regions)
        ]
        for theme, _name in grid.themes
    ]
    largest = max(grid.cells.items(), key=lambda item: item[1].minor, default=None)
    description = _(
        "A grid of %(themes)d themes by %(regions)d ITU-D regions. Each cell gives the open need in %(currency)s "
        "of the projects with that theme in that region. Darker cells have more open need.",
        themes=len(grid.themes), regions=len(grid.regions), currency=currency,
    )
    if largest is not None and largest[1].minor > 0:
        themes, regions = dict(grid.themes), dict(grid.regions)
        description += " " + _(
            "The largest gap is %(theme)s in %(region)s: %(open)s.",
            theme=themes[largest[0][0]], region=regions[largest[0][1]], open=format_compact(largest[1].minor, currency),
        )
    return heat_map(
        "chart-gap", _("Open need by theme and region"), description,
        row_labels=[name for _slug, name in grid.themes], column_labels=[name for _slug, name in grid.regions],
        cells=cells, row_axis_label=_("Theme"), column_axis_label=_("ITU-D region"),
        legend_label=_("Open need in %(currency)s, up to", currency=currency),
        legend_text=lambda minor: compact_number(minor, currency),
    )


def report_charts(report: Report) -> dict[str, Markup]:
    """Build every chart of a report page, keyed by section."""
    return {
        "gap": _heat_map_chart(report),
        "region": _breakdown_chart("chart-regions", _("Needs and pledges by region"), _("Region"), report.by_region, report),
        "theme": _breakdown_chart("chart-themes", _("Needs and pledges by theme"), _("Theme"), report.by_theme, report),
        "country": _breakdown_chart(
            "chart-countries", _("Needs and pledges of the %(num)d countries with the largest goals", num=min(len(report.by_country), CHART_ROWS)),
            _("Country"), report.by_country[:CHART_ROWS], report,
        ),
        "funder": _funder_chart(report),
        "months": _month_chart(report),
    }
