"""CSV and IATI exports: formula cells, BOM, filters, empty files, roles, schema validity and re-import."""

import csv
import io
import shutil
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from flask import render_template
from flask_login import login_user
from lxml import etree
from sqlalchemy import func, select

from financing.accounts.models import Organisation
from financing.exports import csv as csv_export
from financing.exports.csv import FORMULA_STARTS, FUNDER_COLUMNS, NEED_COLUMNS, PLEDGE_COLUMNS, PROJECT_COLUMNS, neutralise, stream_csv
from financing.exports.iati import load_schema, schema_errors, shares
from financing.extensions import db as _db
from financing.funders.models import Funder, FunderPreference
from financing.iati.importer import import_file
from financing.pledges.models import Pledge, PledgeEvent
from financing.pledges.services import act, create_pledge
from financing.projects.models import FundingNeed, Project, ProjectTag
from financing.projects.services import NeedInput, ProjectInput, create_project, publish_project, submit_project

DATA = Path(__file__).resolve().parent.parent / "data"
SCHEMAS = DATA / "iati-schemas-2.03"
IATI_FILES = sorted((DATA / "iati-activities").glob("*.xml"))
CSV_EXPORTS = {
    "projects.csv": PROJECT_COLUMNS, "needs.csv": NEED_COLUMNS,
    "pledges.csv": PLEDGE_COLUMNS, "funders.csv": FUNDER_COLUMNS,
}
EXPORTS = (*CSV_EXPORTS, "iati.xml")
BOM = "\ufeff".encode()
PLATFORM_REF = "XM-TEST-PLATFORM"


# Fixtures and helpers (people and auth come from conftest.py)


@pytest.fixture
def reporting_ref(app, monkeypatch):
    monkeypatch.setitem(app.config, "IATI_REPORTING_ORG_REF", PLATFORM_REF)
    monkeypatch.setitem(app.config, "IATI_REPORTING_ORG_NAME", "Test financing platform")
    return PLATFORM_REF


@pytest.fixture(scope="module")
def schema():
    return load_schema(SCHEMAS)


def make_project(db, people, title="Rural broadband for Kenya", status="published", needs=(("Feasibility study", 20_000_000, "EUR"),),
                 countries=("KE",), regions=(), themes=("broadband",), sectors=("22040",), owner=None,
                 start_date=None, end_date=None) -> Project:
    """Create a project through the services and move it to `status`."""
    owner = owner or people.owner
    data = ProjectInput(
        title=title, summary="Access for rural counties.", countries=list(countries), regions=list(regions),
        themes=list(themes), sectors=list(sectors), start_date=start_date, end_date=end_date,
        needs=[NeedInput(title=name, goal_minor=goal, currency=currency) for name, goal, currency in needs],
    )
    project = create_project(owner, data)
    if status in ("submitted", "published"):
        submit_project(owner, project)
    if status == "published":
        publish_project(people.coordinator, project)
    db.session.commit()
    return project


def pledge(db, people, donor, need: FundingNeed, amount_minor: int, state: str = "pledged", disbursed_minor: int = 0) -> Pledge:
    """Pledge through the services and move the pledge to `state`."""
    item, _ = create_pledge(donor, need.id, amount_minor, need.currency, "commitment")
    if state in ("confirmed", "partly_disbursed", "disbursed"):
        act(people.coordinator, item.id, "confirm")
    if disbursed_minor:
        act(people.coordinator, item.id, "disburse", amount_minor=disbursed_minor)
    if state == "cancelled":
        act(people.coordinator, item.id, "cancel", reason="Withdrawn by the donor.")
    db.session.commit()
    return item


def read_csv(response) -> list[dict[str, str]]:
    body = response.get_data()
    assert body.startswith(BOM)
    return list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"), newline="")))


def header_of(response) -> list[str]:
    return next(csv.reader(io.StringIO(response.get_data().decode("utf-8-sig"), newline="")))


def export(client, auth, user, name: str, **query):
    return client.get(f"/api/v1/exports/{name}", query_string=query, headers=auth(user))


def ids(rows: list[dict[str, str]], column: str = "id") -> set[int]:
    return {int(row[column]) for row in rows}


def total(column) -> int:
    return _db.session.scalar(select(func.coalesce(func.sum(column), 0)))


def count(model) -> int:
    return _db.session.scalar(select(func.count()).select_from(model))


def activity(root, identifier: str):
    for element in root.iter("iati-activity"):
        if element.findtext("iati-identifier") == identifier:
            return element
    raise AssertionError(f"no activity {identifier}")


# Neutralising cells


@pytest.mark.parametrize("start", FORMULA_STARTS, ids=["equals", "plus", "minus", "at", "tab", "carriage-return"])
def test_neutralise_prefixes_formula_start(start):
    assert neutralise(f"{start}SUM(A1:A9)") == f"'{start}SUM(A1:A9)"


@pytest.mark.parametrize("value, expected", [
    ("Broadband", "Broadband"), ("", ""), (None, ""), (12, "12"), ("2026-01-01", "2026-01-01"),
    ("'quoted", "'quoted"), ("a=b", "a=b"), ("4800000.00", "4800000.00"),
])
def test_neutralise_keeps_safe_values(value, expected):
    assert neutralise(value) == expected


def test_stream_csv_writes_bom_header_and_quotes():
    text = "".join(stream_csv(("title", "goal"), [["=1+1", "1,500.00"], ["Plain", "2.00"]]))

    assert text == "\ufefftitle,goal\r\n'=1+1,\"1,500.00\"\r\nPlain,2.00\r\n"


def test_projects_csv_neutralises_each_formula_start(client, db, people, auth):
    values = [f"{start}HYPERLINK(\"http://example.org\")" for start in FORMULA_STARTS]
    projects = [make_project(db, people, title=f"Project {index}") for index in range(len(values))]
    for project, value in zip(projects, values):
        project.title = value
        project.summary = value
    db.session.commit()

    rows = read_csv(export(client, auth, people.coordinator, "projects.csv"))

    by_id = {int(row["id"]): row for row in rows}
    for project, value in zip(projects, values):
        assert by_id[project.id]["title"] == "'" + value
        assert by_id[project.id]["summary"] == "'" + value


def test_pledges_csv_neutralises_funder_name(client, db, people, auth):
    project = make_project(db, people)
    item = pledge(db, people, people.donor, project.needs[0], 10_000)
    item.funder.name = "@cmd|' /C calc'!A0"
    db.session.commit()

    rows = read_csv(export(client, auth, people.coordinator, "pledges.csv"))

    assert rows[0]["funder"] == "'@cmd|' /C calc'!A0"


# Content, amounts and filters


def test_projects_csv_amounts_and_currency(client, db, people, auth):
    euro = make_project(db, people, needs=(("Study", 20_000_000, "EUR"), ("Deployment", 480_000_000, "EUR")))
    mixed = make_project(db, people, title="Mixed currencies", needs=(("Study", 20_000_000, "EUR"), ("Radios", 1_500_000, "JPY")))
    pledge(db, people, people.donor, euro.needs[0], 5_000_050, "confirmed")

    response = export(client, auth, people.coordinator, "projects.csv")

    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.mimetype_params["charset"] == "utf-8"
    assert response.headers["Content-Disposition"].startswith('attachment; filename="projects-')
    assert response.is_streamed
    assert header_of(response) == list(PROJECT_COLUMNS)
    by_id = {int(row["id"]): row for row in read_csv(response)}
    assert by_id[euro.id]["currency"] == "EUR"
    assert by_id[euro.id]["goal"] == "5000000.00"
    assert by_id[euro.id]["pledged"] == "50000.50"
    assert by_id[euro.id]["remaining"] == "4949999.50"
    assert by_id[euro.id]["needs"] == "2"
    assert by_id[euro.id]["countries"] == "KE"
    assert by_id[euro.id]["organisation"] == "Ministry of ICT, Kenya"
    assert by_id[mixed.id]["currency"] == ""
    assert by_id[mixed.id]["goal"] == ""

    needs = read_csv(export(client, auth, people.coordinator, "needs.csv"))
    radios = next(row for row in needs if row["title"] == "Radios")
    assert radios["goal"] == "1500000"
    assert radios["currency"] == "JPY"
    assert radios["project_id"] == str(mixed.id)
    assert len(needs) == 4


def test_projects_csv_filters(client, db, people, auth):
    kenya = make_project(db, people, title="Rural broadband for Kenya")
    ghana = make_project(db, people, title="Spectrum plan for Ghana", status="draft", countries=("GH",),
                         themes=("spectrum",), sectors=("22010",), owner=people.other_owner)
    pacific = make_project(db, people, title="Pacific satellite links", countries=(), regions=("asia-pacific",),
                           themes=("backbones",), sectors=("22030",))
    coordinator = people.coordinator

    def selected(**query) -> set[int]:
        response = export(client, auth, coordinator, "projects.csv", **query)
        assert response.status_code == 200, response.get_data(as_text=True)
        return ids(read_csv(response))

    assert selected() == {kenya.id, ghana.id, pacific.id}
    assert selected(status="draft") == {ghana.id}
    assert selected(country="ke") == {kenya.id}
    assert selected(region="africa") == {kenya.id, ghana.id}
    assert selected(region="asia-pacific") == {pacific.id}
    assert selected(theme="broadband") == {kenya.id}
    assert selected(sector="22030") == {pacific.id}
    assert selected(q="SATELLITE") == {pacific.id}
    assert selected(status="published", region="africa") == {kenya.id}
    assert selected(q="no such words") == set()


def test_needs_csv_follows_project_filters(client, db, people, auth):
    kenya = make_project(db, people, needs=(("Study", 20_000_000, "EUR"), ("Deployment", 90_000_000, "EUR")))
    make_project(db, people, title="Spectrum plan for Ghana", countries=("GH",), owner=people.other_owner)

    rows = read_csv(export(client, auth, people.coordinator, "needs.csv", country="KE"))

    assert [row["title"] for row in rows] == ["Study", "Deployment"]
    assert {row["project_id"] for row in rows} == {str(kenya.id)}
    assert rows[1]["goal"] == "900000.00"
    assert rows[1]["allow_overfunding"] == "false"


def test_pledges_csv_filters_and_amounts(client, db, people, auth):
    kenya = make_project(db, people)
    dollars = make_project(db, people, title="Backbone in US dollars", needs=(("Fibre", 100_000_000, "USD"),))
    confirmed = pledge(db, people, people.donor, kenya.needs[0], 5_000_000, "confirmed", disbursed_minor=1_250_000)
    waiting = pledge(db, people, people.other_donor, kenya.needs[0], 100_000)
    cancelled = pledge(db, people, people.donor, kenya.needs[0], 200_000, "cancelled")
    usd = pledge(db, people, people.other_donor, dollars.needs[0], 7_500_000, "confirmed")
    coordinator = people.coordinator

    def selected(**query) -> set[int]:
        response = export(client, auth, coordinator, "pledges.csv", **query)
        assert response.status_code == 200, response.get_data(as_text=True)
        return ids(read_csv(response))

    assert selected() == {confirmed.id, waiting.id, cancelled.id, usd.id}
    assert selected(state="pledged") == {waiting.id}
    assert selected(state="cancelled") == {cancelled.id}
    assert selected(funder=confirmed.funder_id) == {confirmed.id, cancelled.id}
    assert selected(project=dollars.id) == {usd.id}
    assert selected(currency="usd") == {usd.id}
    assert selected(project=kenya.id, state="partly_disbursed") == {confirmed.id}

    rows = {int(row["id"]): row for row in read_csv(export(client, auth, coordinator, "pledges.csv"))}
    row = rows[confirmed.id]
    assert (row["amount"], row["currency"]) == ("50000.00", "EUR")
    assert (row["need_amount"], row["need_currency"]) == ("50000.00", "EUR")
    assert row["disbursed"] == "12500.00"
    assert row["refunded"] == "0.00"
    assert row["rate"] == "1"
    assert row["state"] == "partly_disbursed"
    assert row["funder"] == "European Commission"
    assert row["project_title"] == "Rural broadband for Kenya"
    assert rows[usd.id]["amount"] == "75000.00"


def test_funders_csv_filters(client, db, people, auth):
    africa = Funder(name="Africa broadband fund", kind="institution", currency="EUR", ticket_min_minor=50_000_000,
                    ticket_max_minor=500_000_000, preferences=[FunderPreference(kind="region", code="africa")])
    kenya = Funder(name="Kenyan diaspora donor", kind="individual", currency="USD",
                   preferences=[FunderPreference(kind="country", code="KE"), FunderPreference(kind="sector", code="22040")])
    pacific = Funder(name="Pacific islands trust", kind="institution", currency="AUD", annual_budget_minor=1_000_000_000,
                     preferences=[FunderPreference(kind="region", code="asia-pacific"), FunderPreference(kind="theme", code="backbones")])
    db.session.add_all([africa, kenya, pacific])
    db.session.commit()
    coordinator = people.coordinator

    def selected(**query) -> set[int]:
        response = export(client, auth, coordinator, "funders.csv", **query)
        assert response.status_code == 200, response.get_data(as_text=True)
        return ids(read_csv(response))

    assert selected() == {africa.id, kenya.id, pacific.id}
    assert selected(kind="individual") == {kenya.id}
    assert selected(region="africa") == {africa.id, kenya.id}
    assert selected(theme="broadband") == {kenya.id}
    assert selected(theme="backbones", region="asia-pacific") == {pacific.id}

    rows = {int(row["id"]): row for row in read_csv(export(client, auth, coordinator, "funders.csv"))}
    assert (rows[africa.id]["ticket_min"], rows[africa.id]["ticket_max"], rows[africa.id]["currency"]) == ("500000.00", "5000000.00", "EUR")
    assert rows[pacific.id]["annual_budget"] == "10000000.00"
    assert rows[kenya.id]["countries"] == "KE"
    assert rows[kenya.id]["ticket_min"] == ""


def test_csv_export_streams_in_batches(client, db, people, auth, monkeypatch):
    monkeypatch.setattr(csv_export, "BATCH_SIZE", 2)
    monkeypatch.setattr(csv_export, "CHUNK_SIZE", 1)
    projects = [make_project(db, people, title=f"Project {index}") for index in range(5)]

    response = export(client, auth, people.coordinator, "projects.csv")
    chunks = list(response.iter_encoded())

    assert len(chunks) >= 5
    body = b"".join(chunks)
    assert body.startswith(BOM)
    rows = list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"), newline="")))
    assert ids(rows) == {project.id for project in projects}


# Empty selections, roles and bad filters


@pytest.mark.parametrize("name", CSV_EXPORTS)
def test_empty_csv_export_has_header_only(client, db, people, auth, name):
    response = export(client, auth, people.coordinator, name)

    assert response.status_code == 200
    assert response.get_data() == BOM + (",".join(CSV_EXPORTS[name]) + "\r\n").encode()


def test_empty_iati_export_is_empty_root(client, db, people, auth):
    make_project(db, people, status="draft")

    response = export(client, auth, people.coordinator, "iati.xml")

    assert response.status_code == 200
    assert response.mimetype == "application/xml"
    root = etree.fromstring(response.get_data())
    assert root.tag == "iati-activities"
    assert root.get("version") == "2.03"
    assert len(root) == 0


@pytest.mark.parametrize("name", EXPORTS)
def test_export_rejects_anonymous(client, db, name):
    response = client.get(f"/api/v1/exports/{name}")

    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("name", EXPORTS)
@pytest.mark.parametrize("role", ["donor", "owner"])
def test_export_rejects_other_roles(client, db, people, auth, name, role):
    response = export(client, auth, getattr(people, role), name)

    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "forbidden"


@pytest.mark.parametrize("name", EXPORTS)
def test_export_accepts_coordinator_session(client, db, people, login, name):
    login(people.coordinator)

    response = client.get(f"/api/v1/exports/{name}")

    assert response.status_code == 200


@pytest.mark.parametrize("name, query, field", [
    ("projects.csv", {"status": "lost"}, "status"),
    ("projects.csv", {"country": "XX"}, "country"),
    ("needs.csv", {"page": "2"}, "page"),
    ("pledges.csv", {"state": "lost"}, "state"),
    ("pledges.csv", {"currency": "EURO"}, "currency"),
    ("pledges.csv", {"funder": "abc"}, "funder"),
    ("funders.csv", {"kind": "robot"}, "kind"),
    ("iati.xml", {"region": "atlantis"}, "region"),
])
def test_export_rejects_bad_filter(client, db, people, auth, name, query, field):
    response = export(client, auth, people.coordinator, name, **query)

    assert response.status_code == 422
    assert field in response.get_json()["error"]["fields"]


# Links on the coordinators' pages


def test_pledge_review_links_csv_with_filters(client, db, people, login):
    project = make_project(db, people)
    pledge(db, people, people.donor, project.needs[0], 10_000)
    login(people.coordinator)

    page = client.get(f"/pledges/review?project={project.id}&currency=EUR&older_than=0").get_data(as_text=True)

    assert f"/api/v1/exports/pledges.csv?project={project.id}&amp;currency=EUR\"" in page


def test_funder_list_links_csv_for_coordinators_only(client, db, people, login):
    anonymous = client.get("/funders?region=africa").get_data(as_text=True)
    login(people.coordinator)
    coordinator = client.get("/funders?region=africa").get_data(as_text=True)

    assert "/api/v1/exports/funders.csv" not in anonymous
    assert "/api/v1/exports/funders.csv?region=africa" in coordinator


def test_review_queues_link_exports(client, db, people, login):
    login(people.coordinator)
    page = client.get("/review").get_data(as_text=True)

    assert "/api/v1/exports/projects.csv?status=submitted" in page
    assert "/api/v1/exports/needs.csv?status=submitted" in page
    assert "/api/v1/exports/iati.xml" in page


# IATI export


def test_shares_add_up_to_hundred():
    assert shares([]) == []
    assert shares([None, None, None]) == [Decimal("33.34"), Decimal("33.33"), Decimal("33.33")]
    assert shares([Decimal(60), Decimal(40)]) == [Decimal(60), Decimal(40)]
    assert shares([Decimal(30), Decimal(30)]) == [Decimal(50), Decimal(50)]
    assert shares([Decimal(70), None]) == [Decimal(50), Decimal(50)]
    assert shares([Decimal(0), Decimal(0)]) == [Decimal(50), Decimal(50)]


def platform_projects(db, people) -> dict[str, Project]:
    """Make published platform projects with confirmed, disbursed, waiting and cancelled pledges."""
    kenya = make_project(db, people, regions=("africa",), sectors=("22040", "22020"),
                         start_date=date(2026, 1, 1), end_date=date(2027, 12, 31),
                         needs=(("Study", 20_000_000, "EUR"), ("Deployment", 90_000_000, "EUR")))
    pacific = make_project(db, people, title="Pacific satellite links", countries=(), regions=("asia-pacific",),
                           themes=("backbones",), sectors=("22030",), needs=(("Ground stations", 150_000_000, "USD"),))
    draft = make_project(db, people, title="Draft project", status="draft")
    pledge(db, people, people.donor, kenya.needs[0], 5_000_000, "confirmed", disbursed_minor=2_000_000)
    pledge(db, people, people.other_donor, kenya.needs[1], 1_000_000)
    pledge(db, people, people.other_donor, kenya.needs[1], 3_000_000, "cancelled")
    pledge(db, people, people.other_donor, pacific.needs[0], 150_000_000, "confirmed", disbursed_minor=150_000_000)
    return {"kenya": kenya, "pacific": pacific, "draft": draft}


def test_iati_export_validates_with_real_and_platform_projects(client, db, people, auth, schema, reporting_ref, tmp_path):
    for path in IATI_FILES:
        import_file(path)
    projects_by_name = platform_projects(db, people)
    exported = db.session.scalar(select(func.count()).select_from(Project).where(Project.status.in_(("published", "funded"))))

    response = export(client, auth, people.coordinator, "iati.xml")
    streamed = response.is_streamed
    path = tmp_path / "export.xml"
    path.write_bytes(response.get_data())

    assert response.status_code == 200
    assert streamed
    assert schema_errors(schema, path) == []
    root = etree.parse(str(path)).getroot()
    assert len(root.findall("iati-activity")) == exported
    assert activity_ids(root).isdisjoint({f"{reporting_ref}-{projects_by_name['draft'].id}"})

    kenya = activity(root, f"{reporting_ref}-{projects_by_name['kenya'].id}")
    reporter = kenya.find("reporting-org")
    assert reporter.get("ref") == reporting_ref
    assert reporter.findtext("narrative") == "Test financing platform"
    assert reporter.get("secondary-reporter") is None
    assert [(org.get("role"), org.findtext("narrative")) for org in kenya.findall("participating-org")] == [
        ("1", "European Commission"), ("4", "Ministry of ICT, Kenya"),
    ]
    assert [(c.get("code"), c.get("percentage")) for c in kenya.findall("recipient-country")] == [("KE", "100")]
    assert kenya.findall("recipient-region") == []
    assert [(s.get("vocabulary"), s.get("code"), s.get("percentage")) for s in kenya.findall("sector")] == [
        ("1", "22020", "50"), ("1", "22040", "50"),
    ]
    assert [(t.find("transaction-type").get("code"), t.findtext("value"), t.find("value").get("currency"),
             t.find("provider-org").findtext("narrative")) for t in kenya.findall("transaction")] == [
        ("2", "50000.00", "EUR", "European Commission"), ("3", "20000.00", "EUR", "European Commission"),
    ]
    assert kenya.find("budget/value").text == "1100000.00"
    assert kenya.find("activity-date").get("iso-date") == "2026-01-01"

    pacific = activity(root, f"{reporting_ref}-{projects_by_name['pacific'].id}")
    assert [(r.get("code"), r.get("vocabulary"), r.get("percentage")) for r in pacific.findall("recipient-region")] == [("798", "1", "100")]
    assert pacific.get("default-currency") == "USD"
    assert [t.findtext("value") for t in pacific.findall("transaction")] == ["1500000.00", "1500000.00"]

    imported = db.session.scalar(select(Project).where(Project.iati_identifier == "CA-3-D002451001"))
    canada = activity(root, "CA-3-D002451001")
    assert canada.find("reporting-org").get("secondary-reporter") == "1"
    assert canada.findtext("title/narrative") == imported.title
    assert len(canada.findall("transaction")) >= 1


def activity_ids(root) -> set[str]:
    return {element.findtext("iati-identifier") for element in root.iter("iati-activity")}


def test_iati_export_applies_project_filters(client, db, people, auth, reporting_ref):
    projects_by_name = platform_projects(db, people)

    def exported(**query) -> set[str]:
        response = export(client, auth, people.coordinator, "iati.xml", **query)
        assert response.status_code == 200
        return activity_ids(etree.fromstring(response.get_data()))

    kenya, pacific = (f"{reporting_ref}-{projects_by_name[name].id}" for name in ("kenya", "pacific"))
    assert exported() == {kenya, pacific}
    assert exported(country="KE") == {kenya}
    assert exported(region="asia-pacific") == {pacific}
    assert exported(status="funded") == {pacific}
    assert exported(status="draft") == set()


def database_state() -> dict:
    """Counts, money totals and each project's owner and status, to compare before and after."""
    return {
        "counts": {model.__name__: count(model) for model in (Project, ProjectTag, FundingNeed, Pledge, PledgeEvent, Funder, Organisation)},
        "goal": total(FundingNeed.goal_minor),
        "pledged": total(FundingNeed.pledged_minor),
        "pledge_amounts": total(Pledge.need_amount_minor),
        "disbursed": total(Pledge.disbursed_minor),
        "projects": rows(select(Project.id, Project.organisation_id, Project.status, Project.title).order_by(Project.id)),
        "pledges": rows(select(Pledge.id, Pledge.state, Pledge.amount_minor, Pledge.disbursed_minor).order_by(Pledge.id)),
    }


def rows(query) -> list[tuple]:
    return [tuple(row) for row in _db.session.execute(query)]


def test_iati_reimport_of_export_changes_nothing(app, db, people, schema, reporting_ref, tmp_path):
    for name in ("canada_CA-3-D002451001_multicountry.xml", "worldbank_44000-P175662_jordan.xml", "ifad_1100001761_liberia_xdr-usd.xml"):
        import_file(DATA / "iati-activities" / name)
    platform_projects(db, people)
    path = tmp_path / "activities.xml"

    result = app.test_cli_runner().invoke(args=["iati", "export", str(path), "--schema-dir", str(SCHEMAS)])

    assert result.exit_code == 0, result.output
    assert "validates against the IATI schema" in result.output
    activities = len(etree.parse(str(path)).getroot())
    assert f"Wrote {activities} activities" in result.output
    before = database_state()

    report = import_file(path)

    assert database_state() == before
    assert report.activities_created == 0
    assert report.activities_updated == 0
    assert report.activities_skipped == {"reported by this platform": activities}


def test_iati_cli_reports_schema_errors(app, db, people, reporting_ref, tmp_path):
    platform_projects(db, people)
    broken = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, broken)
    schema_file = broken / "iati-activities-schema.xsd"
    # A schema that requires an element the export never writes makes validation fail.
    text = schema_file.read_text(encoding="utf-8")
    schema_file.write_text(text.replace('<xsd:element ref="conditions" minOccurs="0" maxOccurs="1"/>',
                                        '<xsd:element ref="conditions" minOccurs="1" maxOccurs="1"/>', 1), encoding="utf-8")
    assert schema_file.read_text(encoding="utf-8") != text

    result = app.test_cli_runner().invoke(args=["iati", "export", str(tmp_path / "out.xml"), "--schema-dir", str(broken)])

    assert result.exit_code != 0
    assert "does not validate against the IATI schema" in result.output


def test_schema_imports_resolve_to_local_files(tmp_path):
    local = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, local)
    remote = 'schemaLocation="http://www.w3.org/2001/xml.xsd"'
    for name in ("iati-activities-schema.xsd", "iati-common.xsd"):
        path = local / name
        text = path.read_text(encoding="utf-8")
        assert 'schemaLocation="xml.xsd"' in text
        path.write_text(text.replace('schemaLocation="xml.xsd"', remote), encoding="utf-8")

    schema = load_schema(local)

    document = tmp_path / "bad.xml"
    document.write_text('<iati-activities version="2.03"><iati-activity xml:lang="en"/></iati-activities>', encoding="utf-8")
    errors = schema_errors(schema, document)
    assert errors
    assert errors[0].startswith("line 1: ")


def test_schema_without_local_xml_xsd_fails_offline(tmp_path):
    local = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, local)
    (local / "xml.xsd").unlink()

    with pytest.raises(etree.XMLSchemaParseError):
        load_schema(local)


def test_iati_cli_reports_unwritable_file(app, db, tmp_path):
    result = app.test_cli_runner().invoke(args=["iati", "export", str(tmp_path / "missing" / "out.xml")])

    assert result.exit_code != 0
    assert "Cannot write" in result.output
    assert not (tmp_path / "missing").exists()


def test_iati_cli_reports_incomplete_schema_folder(app, db, people, tmp_path):
    make_project(db, people)
    folder = tmp_path / "schemas"
    folder.mkdir()
    path = tmp_path / "out.xml"

    result = app.test_cli_runner().invoke(args=["iati", "export", str(path), "--schema-dir", str(folder)])

    assert result.exit_code != 0
    assert "Cannot load the IATI schema" in result.output
    assert path.exists()
    assert list(tmp_path.glob("*.partial")) == []
