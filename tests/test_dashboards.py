"""Dashboards: sums by region, theme, country and funder, exact conversion, charts and access."""

import re
from datetime import date, datetime, timezone
from decimal import Decimal

import pytest
from lxml import etree
from lxml import html as lxml_html
from sqlalchemy import event

from financing.accounts.models import Organisation
from financing.core.errors import ValidationFailed
from financing.funders.models import Funder
from financing.pledges.models import ExchangeRate, Pledge
from financing.projects.models import FundingNeed, Project, ProjectTag
from financing.reporting import charts
from financing.reporting.report_charts import DISBURSED_COLOUR, CONFIRMED_COLOUR, OPEN_COLOUR, PLEDGED_COLOUR
from financing.reporting.services import (
    Amount,
    Converter,
    RateUsed,
    ReportFilters,
    build_report,
    rates_into,
    reporting_currencies,
)

SVG = "{http://www.w3.org/2000/svg}"
TODAY = date(2026, 6, 1)


def at(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(hour=12, tzinfo=timezone.utc)


@pytest.fixture
def data(db):
    """Hand-made projects, needs, pledges and rates with known sums.

    Goals: P1 (Kenya, broadband) 10,000.00 EUR + 500.00 EUR closed + 5,000.00 USD;
    P2 (Americas, DAC 11330 = capacity building) 20,000.00 EUR; P4 (France, spectrum)
    1,000,000 XOF without a rate; P3 is a draft and counts nowhere.
    """
    organisation = Organisation(name="Ministry of ICT", kind="government")
    db.session.add(organisation)
    db.session.flush()

    def project(title, status, published, tags):
        row = Project(title=title, organisation_id=organisation.id, status=status, published_at=at(published) if published else None)
        row.tags = [ProjectTag(kind=kind, code=code) for kind, code in tags]
        db.session.add(row)
        return row

    def need(row, goal, currency, pledged=0, status="open"):
        item = FundingNeed(project=row, title=f"{row.title} {currency}", goal_minor=goal, currency=currency, pledged_minor=pledged, status=status, created_at=row.published_at or at("2026-01-01"))
        db.session.add(item)
        return item

    p1 = project("Rural broadband Kenya", "published", "2026-02-15", [("country", "KE"), ("theme", "broadband")])
    p2 = project("Caribbean regulators training", "published", "2025-03-10", [("region", "americas"), ("sector", "11330")])
    p3 = project("Draft backbone", "draft", None, [("country", "KE"), ("theme", "broadband")])
    p4 = project("Spectrum plan France", "published", "2026-04-01", [("country", "FR"), ("theme", "spectrum")])
    n1 = need(p1, 1_000_000, "EUR", pledged=423_457)
    n2 = need(p1, 500_000, "USD", pledged=100_000)
    need(p1, 50_000, "EUR", status="closed")
    n3 = need(p2, 2_000_000, "EUR")
    need(p3, 9_999_900, "EUR")
    need(p4, 1_000_000, "XOF")

    commission = Funder(name="European Commission", kind="institution", currency="EUR")
    jane = Funder(name="Jane Private Donor", kind="individual", currency="EUR")
    db.session.add_all([commission, jane])
    db.session.flush()

    def pledge(need_row, funder, amount, currency, state, day, disbursed=0):
        db.session.add(Pledge(
            need_id=need_row.id, funder_id=funder.id, state=state, amount_minor=amount, currency=currency,
            need_amount_minor=amount, disbursed_minor=disbursed, created_at=at(day),
        ))

    pledge(n1, commission, 300_000, "EUR", "partly_disbursed", "2026-02-20", disbursed=100_000)
    pledge(n1, jane, 123_457, "EUR", "pledged", "2026-02-21")
    pledge(n2, commission, 100_000, "USD", "confirmed", "2026-03-05")
    pledge(n3, commission, 50_000, "EUR", "cancelled", "2026-03-06")

    db.session.add_all([
        ExchangeRate(base="USD", quote="EUR", rate=Decimal("0.5"), valid_from=date(2025, 1, 1)),
        ExchangeRate(base="USD", quote="EUR", rate=Decimal("0.9259"), valid_from=date(2026, 1, 1)),
        ExchangeRate(base="EUR", quote="USD", rate=Decimal("1.08"), valid_from=date(2026, 1, 1)),
    ])
    db.session.commit()
    return {"commission": commission.id, "jane": jane.id, "p1": p1.id}


def by_key(groups):
    return {group.key: group for group in groups}


def report(filters=ReportFilters(), currency="EUR", public=False, today=TODAY):
    return build_report(filters, currency, public=public, today=today)


# Sums and conversion


def test_totals_converted_exactly(data):
    total = report().total
    assert total.goal == Amount(3_512_950, {"XOF": 1_000_000})
    assert total.open == Amount(2_946_903, {"XOF": 1_000_000})
    assert total.pledged == Amount(516_047)
    assert total.confirmed == Amount(392_590)
    assert total.disbursed == Amount(100_000)
    assert (total.projects, total.needs, total.pledges) == (3, 5, 3)


def test_rates_used_and_not_converted(data):
    result = report()
    assert result.rates == [RateUsed("USD", Decimal("0.9259"), date(2026, 1, 1))]
    assert result.not_converted == {"XOF": {"goal": 1_000_000, "open": 1_000_000}}


def test_older_rate_applies_before_its_successor(data):
    result = report(today=date(2025, 12, 31))
    assert result.rates == [RateUsed("USD", Decimal("0.5"), date(2025, 1, 1))]
    assert result.total.goal.minor == 3_050_000 + 250_000


def test_reporting_currency_usd_uses_stored_direction(data):
    total = report(currency="USD").total
    # EUR goals times the EUR to USD rate 1.08, plus the USD goal unchanged.
    assert total.goal == Amount(3_294_000 + 500_000, {"XOF": 1_000_000})
    assert total.pledged.minor == 457_334 + 100_000


def test_reporting_currency_without_rates_keeps_amounts_aside(data):
    total = report(currency="GBP").total
    assert total.goal == Amount(0, {"EUR": 3_050_000, "USD": 500_000, "XOF": 1_000_000})


def test_converter_rounds_once_after_adding():
    rates = {code: RateUsed(code, Decimal("0.5"), date(2026, 1, 1)) for code in ("USD", "GBP")}
    converter = Converter("EUR", rates)
    # Each half cent alone would round up to one cent, but together they make exactly one.
    assert converter.amount({"USD": 1, "GBP": 1}) == Amount(1)
    assert converter.amount({"USD": 1}) == Amount(1)
    assert converter.amount({"USD": 0}) == Amount(0)


def test_converter_minor_unit_exponents():
    jpy = Converter("EUR", {"JPY": RateUsed("JPY", Decimal("0.0061"), date(2026, 1, 1))})
    assert jpy.amount({"JPY": 1000}) == Amount(610)
    bhd = Converter("BHD", {"EUR": RateUsed("EUR", Decimal("0.412345678901"), date(2026, 1, 1))})
    # 12,345.67 EUR x 0.412345678901 = 5,090.68367763770867 BHD, which has 3 decimals.
    assert bhd.amount({"EUR": 1_234_567}) == Amount(5_090_684)
    half = Converter("BHD", {"EUR": RateUsed("EUR", Decimal("0.05"), date(2026, 1, 1))})
    # 0.01 EUR x 0.05 = 0.0005 BHD: half a fils, rounded up.
    assert half.amount({"EUR": 1}) == Amount(1)
    assert jpy.used == {"JPY"}


def test_rates_into_reads_direction_and_day(data):
    assert set(rates_into("EUR", date(2026, 6, 1))) == {"USD"}
    assert rates_into("EUR", date(2024, 12, 31)) == {}
    assert set(rates_into("USD", date(2026, 6, 1))) == {"EUR"}
    assert reporting_currencies("EUR", date(2026, 6, 1)) == ["EUR", "USD"]
    assert reporting_currencies("EUR", date(2025, 6, 1)) == ["EUR"]


# Breakdowns


def test_totals_by_region(data):
    regions = by_key(report().by_region)
    assert list(regions) == ["africa", "americas", "arab-states", "asia-pacific", "cis", "europe"]
    africa = regions["africa"].totals
    assert africa.goal == Amount(1_512_950)
    assert africa.open == Amount(946_903)
    assert africa.pledged == Amount(516_047)
    assert africa.confirmed == Amount(392_590)
    assert africa.disbursed == Amount(100_000)
    assert regions["americas"].totals.goal == Amount(2_000_000)
    assert regions["europe"].totals.goal == Amount(0, {"XOF": 1_000_000})
    assert regions["cis"].totals.goal == Amount(0)


def test_totals_by_theme_include_sectors(data):
    themes = by_key(report().by_theme)
    assert themes["broadband"].totals.goal == Amount(1_512_950)
    # DAC sector 11330 falls under capacity building.
    assert themes["capacity-building"].totals.goal == Amount(2_000_000)
    assert themes["spectrum"].totals.open == Amount(0, {"XOF": 1_000_000})
    assert themes["backbones"].totals.goal == Amount(0)


def test_totals_by_country(data):
    countries = report().by_country
    assert [group.key for group in countries] == ["KE", "FR"]
    assert countries[0].label == "Kenya"
    assert countries[0].totals.goal == Amount(1_512_950)
    assert countries[0].totals.funded_percent == Decimal("37.4")


def test_totals_by_funder(data):
    funders = report().by_funder
    assert [group.label for group in funders] == ["European Commission", "Jane Private Donor"]
    commission = funders[0].totals
    assert commission.pledged == Amount(392_590)
    assert commission.confirmed == Amount(392_590)
    assert commission.disbursed == Amount(100_000)
    assert commission.pledges == 2
    assert funders[1].totals.pledged == Amount(123_457)


def test_public_report_hides_individual_donors(data):
    funders = report(public=True).by_funder
    assert [group.kind for group in funders] == ["institution", "individuals"]
    individuals = funders[1]
    assert individuals.label == ""
    assert individuals.members == 1
    assert individuals.withheld
    assert individuals.totals.pledged == Amount(0)


def test_public_report_sums_enough_individual_donors(db, data):
    for number in range(2):
        donor = Funder(name=f"Private donor {number}", kind="individual", currency="EUR")
        db.session.add(donor)
        db.session.flush()
        db.session.add(Pledge(need_id=db.session.get(Project, data["p1"]).needs[0].id, funder_id=donor.id, state="pledged", amount_minor=1_000, currency="EUR", need_amount_minor=1_000, created_at=at("2026-02-22")))
    db.session.commit()
    individuals = report(public=True).by_funder[-1]
    assert (individuals.kind, individuals.members, individuals.withheld) == ("individuals", 3, False)
    assert individuals.totals.pledged == Amount(125_457)


def test_heat_map_cells(data):
    grid = report().heat_map
    assert grid.cell("broadband", "africa") == Amount(946_903)
    assert grid.cell("capacity-building", "americas") == Amount(2_000_000)
    assert grid.cell("spectrum", "europe") == Amount(0, {"XOF": 1_000_000})
    assert grid.cell("broadband", "europe") == Amount(0)
    assert grid.max_minor == 2_000_000


def test_underfunded_lists(data):
    result = report()
    assert [group.key for group in result.underfunded_themes] == ["capacity-building", "broadband", "spectrum"]
    assert result.underfunded_themes[0].totals.funded_percent == Decimal("0.0")
    assert [group.key for group in result.underfunded_countries] == ["KE", "FR"]


def test_months_series(data):
    result = report()
    months = {month.month: month for month in result.months}
    assert list(months)[0] == "2025-03"
    assert list(months)[-1] == "2026-06"
    assert len(months) == 16
    assert months["2025-03"].goal == Amount(2_000_000)
    assert months["2026-02"].goal == Amount(1_512_950)
    assert months["2026-02"].pledged == Amount(423_457)
    assert months["2026-02"].confirmed == Amount(300_000)
    assert months["2026-02"].disbursed == Amount(100_000)
    assert months["2026-03"].pledged == Amount(92_590)
    assert months["2026-04"].goal == Amount(0, {"XOF": 1_000_000})
    assert months["2025-07"].goal == Amount(0)
    assert not result.months_truncated


# Filters


def test_filter_region_country_theme(data):
    assert report(ReportFilters(region="africa")).total.goal == Amount(1_512_950)
    assert report(ReportFilters(country="KE")).total.goal == Amount(1_512_950)
    assert report(ReportFilters(country="BR")).total.goal == Amount(0)
    assert report(ReportFilters(theme="capacity-building")).total.goal == Amount(2_000_000)
    assert report(ReportFilters(theme="capacity-building")).total.pledged == Amount(0)


def test_filter_funder(data):
    total = report(ReportFilters(funder_id=data["jane"])).total
    assert total.goal == Amount(1_000_000)
    assert total.pledged == Amount(123_457)
    assert total.needs == 1


def test_filter_date_range(data):
    since = report(ReportFilters(date_from=date(2026, 1, 1))).total
    assert since.goal == Amount(1_512_950, {"XOF": 1_000_000})
    assert since.pledged == Amount(516_047)
    february = report(ReportFilters(date_from=date(2026, 2, 1), date_to=date(2026, 2, 28)))
    assert february.total.goal == Amount(1_512_950)
    assert february.total.pledged == Amount(423_457)
    assert february.as_of == date(2026, 2, 28)
    assert [month.month for month in february.months] == ["2026-02"]


def test_filter_values_checked(data):
    with pytest.raises(ValidationFailed) as error:
        report(ReportFilters(region="atlantis", date_from=date(2026, 3, 1), date_to=date(2026, 2, 1)))
    assert set(error.value.fields) == {"region", "date_to"}
    with pytest.raises(ValidationFailed) as error:
        report(ReportFilters(funder_id=data["jane"]), public=True)
    assert "funder" in error.value.fields


def test_empty_database_report(db):
    result = report()
    assert result.empty
    assert result.total.goal == Amount(0)
    assert result.months == []
    assert result.by_funder == []
    assert result.heat_map.max_minor == 0


def test_query_count_independent_of_rows(db, data):
    def count_queries():
        statements = []
        engine = db.engine
        listener = lambda *args: statements.append(args[2])  # noqa: E731
        event.listen(engine, "before_cursor_execute", listener)
        try:
            report()
        finally:
            event.remove(engine, "before_cursor_execute", listener)
        # Only the SELECTs: a BEGIN appears or not depending on the session's state.
        return len([statement for statement in statements if statement.lstrip().upper().startswith("SELECT")])

    before = count_queries()
    need_id = db.session.get(Project, data["p1"]).needs[0].id
    for number in range(30):
        donor = Funder(name=f"Foundation {number}", kind="institution", currency="EUR")
        db.session.add(donor)
        db.session.flush()
        db.session.add(Pledge(need_id=need_id, funder_id=donor.id, state="pledged", amount_minor=100, currency="EUR", need_amount_minor=100, created_at=at("2026-02-23")))
    db.session.commit()
    assert count_queries() == before
    assert before <= 20


# Charts


def parse_svg(markup) -> etree._Element:
    return etree.fromstring(str(markup).encode())


def check_accessible(svg: etree._Element) -> None:
    assert svg.tag == f"{SVG}svg"
    assert svg.get("role") == "img"
    title = svg.find(f"{SVG}title")
    desc = svg.find(f"{SVG}desc")
    assert title is not None and title.text
    assert desc is not None and desc.text
    assert svg.get("aria-labelledby") == f"{title.get('id')} {desc.get('id')}"


def test_bar_chart_escapes_labels():
    label = '<script>alert(1)</script> & "Fonds"\x0b'
    markup = charts.stacked_bar_chart(
        "chart-test", "Title <b>", "Desc & more", [charts.BarRow(label, [5, 3], "8 EUR")],
        [charts.Series("Paid", "#073763"), charts.Series("Open", "#b45f06")], "Amount in EUR", "Funder", str,
    )
    assert "<script>" not in markup
    svg = parse_svg(markup)
    check_accessible(svg)
    texts = [node.text for node in svg.iter(f"{SVG}text")]
    assert '<script>alert(1)</script> & "Fonds"' in texts
    assert "Amount in EUR" in texts
    assert svg.find(f"{SVG}title").text == "Title <b>"


def test_bar_chart_widths_proportional():
    markup = charts.stacked_bar_chart(
        "chart-test", "T", "D", [charts.BarRow("A", [30, 10], ""), charts.BarRow("B", [0, 20], "")],
        [charts.Series("x", "#073763"), charts.Series("y", "#b45f06")], "Amount", "Group", str,
    )
    rects = [rect for rect in parse_svg(markup).iter(f"{SVG}rect") if rect.get("height") == "16"]
    widths = [float(rect.get("width")) for rect in rects]
    assert widths[0] == pytest.approx(widths[1] * 3)
    assert widths[2] == pytest.approx(widths[1] * 2)


def test_nice_ticks():
    assert charts.nice_ticks(0) == [0, 1]
    assert charts.nice_ticks(1_234_567) == [0, 500_000, 1_000_000, 1_500_000]
    assert charts.nice_ticks(7) == [0, 2, 4, 6, 8]


def test_heat_colours_and_text_contrast():
    for colour in charts.HEAT_COLOURS:
        assert charts.contrast_ratio(charts.text_colour_on(colour), colour) >= charts.TEXT_CONTRAST
    assert charts.heat_colour(0, 100) == charts.EMPTY_CELL
    assert charts.heat_colour(1, 100) == charts.HEAT_COLOURS[0]
    assert charts.heat_colour(100, 100) == charts.HEAT_COLOURS[-1]
    assert charts.heat_colour(50, 100) == charts.HEAT_COLOURS[2]


def test_series_colours_contrast_with_background():
    for colour in (DISBURSED_COLOUR, CONFIRMED_COLOUR, PLEDGED_COLOUR, OPEN_COLOUR):
        # WCAG 2.1 requires 3:1 for graphical objects against their background (criterion 1.4.11).
        assert charts.contrast_ratio(colour, "#ffffff") >= 3
        assert charts.contrast_ratio(colour, "#f6f7f9") >= 3


# Pages


def page_tree(response):
    return lxml_html.fromstring(response.get_data(as_text=True))


def svgs_of(response) -> list[etree._Element]:
    return [parse_svg(match) for match in re.findall(r"<svg\b.*?</svg>", response.get_data(as_text=True), re.S)]


def test_dashboard_anonymous_redirected_to_login(client):
    response = client.get("/dashboard")
    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


@pytest.mark.parametrize("role", ["donor", "owner"])
def test_dashboard_forbidden_to_other_roles(client, make_user, login, role):
    login(make_user(role))
    assert client.get("/dashboard").status_code == 403


@pytest.mark.parametrize("role", ["coordinator", "admin"])
def test_dashboard_open_to_coordinators(client, make_user, login, data, role):
    login(make_user(role, organisation=None))
    response = client.get("/dashboard")
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "Jane Private Donor" in body
    assert "1 USD = 0.9259 EUR" in body


def test_pages_charts_valid_with_tables(client, make_user, login, data):
    login(make_user("coordinator", organisation=None))
    for path in ("/dashboard", "/stats"):
        response = client.get(path)
        svgs = svgs_of(response)
        assert len(svgs) == 6, path
        for svg in svgs:
            check_accessible(svg)
        figures = page_tree(response).xpath("//figure[@class='chart-figure']")
        assert len(figures) == 6
        for figure in figures:
            assert figure.xpath(".//svg")
            assert figure.xpath("./details//table/caption")


def test_heat_map_chart_cells(client, data):
    response = client.get("/stats")
    gap = next(svg for svg in svgs_of(response) if svg.get("id") == "chart-gap")
    texts = [node.text for node in gap.iter(f"{SVG}text")]
    assert "9.5k" in texts
    assert "20.0k" in texts
    assert "0*" in texts
    fills = {rect.get("fill") for rect in gap.iter(f"{SVG}rect")}
    assert charts.HEAT_COLOURS[-1] in fills


def test_stats_page_public_without_private_data(client, data):
    response = client.get("/stats")
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "European Commission" in body
    assert "Jane Private Donor" not in body
    assert "Individual donors (1)" in body
    # Jane's only pledge: 1,234.57 EUR.
    assert "1,234.57" not in body
    assert "/funders/" not in body.split('id="funder-heading"')[1]


def test_stats_page_not_converted_listed(client, data):
    tree = page_tree(client.get("/stats"))
    rows = tree.xpath("//div[contains(@class, 'notice-warning')]//tbody/tr")
    assert [row.xpath("./th")[0].text_content().strip() for row in rows] == ["XOF"]
    assert "1,000,000" in rows[0].text_content()


def test_stats_page_reporting_currency(client, data):
    body = client.get("/stats?currency=USD").get_data(as_text=True)
    assert "$37,940.00" in body
    assert "1 EUR = 1.08 USD" in body


@pytest.mark.parametrize("query, field, value", [
    ("currency=GBP", "Reporting currency", "GBP"),
    ("region=atlantis", "Region", "atlantis"),
    ("date_from=2026-13-01", "From (UTC)", "2026-13-01"),
    ("date_from=2026-03-01&date_to=2026-02-01", "To (UTC)", "2026-02-01"),
])
def test_stats_page_rejects_bad_filters(client, data, query, field, value):
    response = client.get(f"/stats?{query}")
    assert response.status_code == 400
    errors = page_tree(response).xpath("//div[@class='error-summary']/p")
    assert any(field in error.text_content() and value in error.text_content() for error in errors)


def test_stats_funder_filter_institutions_only(client, make_user, login, data):
    assert client.get(f"/stats?funder={data['jane']}").status_code == 400
    response = client.get(f"/stats?funder={data['commission']}")
    assert response.status_code == 200
    login(make_user("coordinator", organisation=None))
    assert client.get(f"/dashboard?funder={data['jane']}").status_code == 200


def test_dashboard_filters_applied(client, make_user, login, data):
    login(make_user("coordinator", organisation=None))
    tree = page_tree(client.get("/dashboard?region=americas&date_from=2025-01-01"))
    figures = tree.xpath("//div[contains(@class, 'report-figures')]//strong")
    assert figures[0].text_content().strip() == "€20,000.00"
    assert tree.xpath("//select[@id='region']/option[@selected]")[0].get("value") == "americas"


def test_pages_render_on_empty_database(client, make_user, login):
    assert client.get("/stats").status_code == 200
    login(make_user("coordinator", organisation=None))
    response = client.get("/dashboard")
    assert response.status_code == 200
    assert "No funding need or pledge matches" in response.get_data(as_text=True)
    for svg in svgs_of(response):
        check_accessible(svg)


def test_navigation_links(client, make_user, login):
    home = client.get("/").get_data(as_text=True)
    assert 'href="/stats"' in home
    assert 'href="/dashboard"' not in home
    login(make_user("coordinator", organisation=None))
    assert 'href="/dashboard"' in client.get("/").get_data(as_text=True)


# API


def test_api_stats_converted_total(client, data):
    body = client.get("/api/v1/stats").get_json()
    converted = body["converted"]
    assert converted["currency"] == "EUR"
    assert converted["projects"] == 3
    assert converted["goal"] == {"amount": "35129.50", "currency": "EUR"}
    assert converted["open"] == {"amount": "29469.03", "currency": "EUR"}
    assert converted["pledged"] == {"amount": "5160.47", "currency": "EUR"}
    assert converted["disbursed"] == {"amount": "1000.00", "currency": "EUR"}
    assert converted["rates"] == [{"currency": "USD", "rate": "0.9259", "valid_from": "2026-01-01"}]
    assert converted["not_converted"] == [{
        "currency": "XOF",
        "goal": {"amount": "1000000", "currency": "XOF"}, "open": {"amount": "1000000", "currency": "XOF"},
        "pledged": {"amount": "0", "currency": "XOF"}, "confirmed": {"amount": "0", "currency": "XOF"},
        "disbursed": {"amount": "0", "currency": "XOF"},
    }]
    # The fields that were there before stay.
    assert {"total", "by_status", "by_region", "by_theme"} <= set(body)


def test_api_stats_converted_documented(client, db):
    document = client.get("/api/openapi.json").get_json()
    assert "converted" in document["components"]["schemas"]["ReportingStats"]["properties"]
