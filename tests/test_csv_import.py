"""CSV import of projects: large files, delimiters, encodings, every bad input by line and column."""

import csv
import io
from datetime import date

import pytest
from sqlalchemy import func, select

from financing.core.errors import Forbidden
from financing.projects.csv_import import CsvImportFailed, import_projects_csv, read_projects_csv
from financing.projects.models import FundingNeed, Project

HEADER = ["title", "summary", "description", "countries", "regions", "themes", "sectors", "need_title", "goal", "currency", "deadline"]
COUNTRIES = ["KE", "TZ", "UG", "GH", "SN", "FJ", "TO", "JM", "BO", "NP"]


def row(title="Rural broadband for Kenya", summary="Wireless access in 40 villages", description="", countries="KE",
        regions="", themes="broadband", sectors="22040", need_title="Feasibility study", goal="200000.00",
        currency="EUR", deadline="") -> list[str]:
    return [title, summary, description, countries, regions, themes, sectors, need_title, goal, currency, deadline]


def csv_bytes(rows: list[list[str]], header: list[str] = HEADER, delimiter: str = ",", bom: bool = False) -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    data = buffer.getvalue().encode("utf-8")
    return b"\xef\xbb\xbf" + data if bom else data


def count(db, model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def failure(owner, data: bytes) -> list[tuple[int, str]]:
    """Import a file that must fail; return its (line, column) pairs."""
    with pytest.raises(CsvImportFailed) as caught:
        import_projects_csv(owner, data)
    return [(error.line, error.column) for error in caught.value.errors]


@pytest.fixture
def owner(make_user):
    return make_user("owner", organisation="National Stocktaking Office")


def stocktaking_rows(projects: int) -> list[list[str]]:
    """Rows of a stocktaking round: every third project has a second funding need on its own row."""
    rows = []
    for index in range(projects):
        title = f"Community network {index:03d}"
        country = COUNTRIES[index % len(COUNTRIES)]
        rows.append(row(title=title, summary=f"Connectivity for district {index}", countries=country,
                        themes="broadband|capacity-building", sectors="22040;22020", need_title="Equipment",
                        goal=f"{10_000 + index}.50", currency="USD", deadline="2027-06-30"))
        if index % 3 == 0:
            rows.append(row(title=title, summary="", countries="", themes="", sectors="", need_title="Training",
                            goal="5000", currency="EUR"))
    return rows


# Files that import


def test_import_creates_large_round_as_drafts(db, owner):
    data = csv_bytes(stocktaking_rows(210))

    projects = import_projects_csv(owner, data)
    db.session.commit()

    assert len(projects) == 210
    assert count(db, Project) == 210
    assert count(db, FundingNeed) == 210 + 70
    stored = db.session.scalars(select(Project).order_by(Project.id)).all()
    assert {project.status for project in stored} == {"draft"}
    assert {project.source for project in stored} == {"csv"}
    assert {project.organisation_id for project in stored} == {owner.organisation_id}
    first = stored[0]
    assert first.title == "Community network 000"
    assert first.countries == ["KE"]
    assert first.themes == ["broadband", "capacity-building"]
    assert first.sectors == ["22020", "22040"]
    assert [(need.title, need.goal_minor, need.currency) for need in first.needs] == [("Equipment", 1_000_050, "USD"), ("Training", 500_000, "EUR")]
    assert first.needs[0].deadline == date(2027, 6, 30)
    assert stored[1].needs[0].goal_minor == 1_000_150


def test_import_page_creates_projects(client, db, owner, login):
    login(owner)
    data = csv_bytes(stocktaking_rows(205))

    response = client.post("/projects/import", data={"file": (io.BytesIO(data), "stocktaking.csv")}, content_type="multipart/form-data")

    assert response.status_code == 302
    assert response.headers["Location"].endswith("/projects/mine")
    assert count(db, Project) == 205
    page = client.get("/projects/mine").get_data(as_text=True)
    assert "Imported 205 projects from stocktaking.csv as drafts" in page


def test_semicolon_file_with_bom(db, owner):
    rows = [
        row(title="Réseau rural du Sénégal", countries="SN", themes="broadband", goal="1500000", currency="XOF"),
        row(title="Pacific satellite links", countries="FJ|TO", regions="asia-pacific", sectors="22040;22020", goal="99.5", currency="USD"),
    ]
    data = csv_bytes(rows, delimiter=";", bom=True)
    assert data.startswith(b"\xef\xbb\xbf")

    projects = import_projects_csv(owner, data)

    assert [project.title for project in projects] == ["Réseau rural du Sénégal", "Pacific satellite links"]
    assert projects[0].needs[0].goal_minor == 1_500_000
    assert projects[1].countries == ["FJ", "TO"]
    assert projects[1].sectors == ["22020", "22040"]
    assert projects[1].needs[0].goal_minor == 9_950


def test_header_in_any_order_and_case(db, owner):
    header = ["Currency", "GOAL", "Need Title", "title", "start_date", "end_date", "allow_overfunding"]
    data = csv_bytes([["eur", "250", "Study", "Backbone for Malawi", "2026-01-01", "2026-12-31", "yes"]], header=header)

    project = import_projects_csv(owner, data)[0]

    assert project.title == "Backbone for Malawi"
    assert (project.start_date, project.end_date) == (date(2026, 1, 1), date(2026, 12, 31))
    assert project.needs[0].currency == "EUR"
    assert project.needs[0].allow_overfunding is True


def test_multiline_cell_keeps_line_numbers(db, owner):
    rows = [
        row(title="First", description="Line one\nLine two\nLine three"),
        row(title="Second", countries="XX"),
    ]

    assert failure(owner, csv_bytes(rows)) == [(5, "countries")]


# Encodings and file shape


def test_rejects_windows_1252_naming_the_line(db, owner):
    text = "title,need_title,goal,currency\r\nBroadband,Study,100,EUR\r\nTélécom rural,Study,100,EUR\r\n"

    with pytest.raises(CsvImportFailed) as caught:
        import_projects_csv(owner, text.encode("cp1252"))

    error = caught.value.errors[0]
    assert (error.line, error.column) == (3, "file")
    assert "Line 3 is not UTF-8" in error.message
    assert count(db, Project) == 0


def test_rejects_utf16(db, owner):
    data = "title,need_title,goal,currency\r\nBroadband,Study,100,EUR\r\n".encode("utf-16")

    with pytest.raises(CsvImportFailed) as caught:
        import_projects_csv(owner, data)

    assert "UTF-16" in caught.value.errors[0].message


@pytest.mark.parametrize("data, column", [
    (b"", "file"),
    (b"\xef\xbb\xbf\r\n", "file"),
    (b"name|amount\r\nx|1\r\n", "header"),
    (b"title,need_title,goal,currency\r\n", "file"),
])
def test_rejects_empty_or_headerless_file(db, owner, data, column):
    assert failure(owner, data) == [(1, column)]


# Bad rows, each reported by line and column with nothing imported


BAD_CELLS = [
    ("unknown country", {"countries": "KE|XX"}, "countries"),
    ("unknown region", {"regions": "atlantis"}, "regions"),
    ("unknown theme", {"themes": "space"}, "themes"),
    ("unknown sector", {"sectors": "99999"}, "sectors"),
    ("unknown currency", {"currency": "EURO"}, "currency"),
    ("missing currency", {"currency": ""}, "currency"),
    ("amount not a number", {"goal": "lots"}, "goal"),
    ("amount too precise", {"goal": "10.005"}, "goal"),
    ("amount zero", {"goal": "0"}, "goal"),
    ("amount missing", {"goal": ""}, "goal"),
    ("amount too large", {"goal": "10000000000000"}, "goal"),
    ("negative amount", {"goal": "-5"}, "goal"),
    ("formula in title", {"title": "=HYPERLINK(\"http://example.org\")"}, "title"),
    ("formula in summary", {"summary": "@SUM(A1:A9)"}, "summary"),
    ("formula in description", {"description": "+cmd|' /C calc'!A0"}, "description"),
    ("formula after spaces", {"need_title": "  =1+1"}, "need_title"),
    ("tab start", {"need_title": "\tStudy"}, "need_title"),
    ("missing title", {"title": ""}, "title"),
    ("missing need title", {"need_title": ""}, "need_title"),
    ("bad deadline", {"deadline": "31/12/2026"}, "deadline"),
    ("impossible deadline", {"deadline": "2026-02-30"}, "deadline"),
    ("title too long", {"title": "x" * 301}, "title"),
]


@pytest.mark.parametrize("case, cells, column", BAD_CELLS, ids=[case[0] for case in BAD_CELLS])
def test_bad_cell_reported_by_line_and_column(db, owner, case, cells, column):
    rows = [row(title="Good project"), row(**{"title": "Second project", **cells})]

    assert failure(owner, csv_bytes(rows)) == [(3, column)]
    assert count(db, Project) == 0


def test_comma_in_amount_of_semicolon_file(db, owner):
    rows = [row(goal="1500,50")]

    assert failure(owner, csv_bytes(rows, delimiter=";")) == [(2, "goal")]


def test_bad_flags_and_dates(db, owner):
    header = ["title", "need_title", "goal", "currency", "start_date", "end_date", "allow_overfunding"]
    rows = [
        ["Dates reversed", "Study", "100", "EUR", "2027-01-01", "2026-01-01", "no"],
        ["Bad flag", "Study", "100", "EUR", "", "", "maybe"],
    ]

    with pytest.raises(CsvImportFailed) as caught:
        import_projects_csv(owner, csv_bytes(rows, header=header))

    assert [(error.line, error.column) for error in caught.value.errors] == [(2, "end_date"), (3, "allow_overfunding")]
    assert caught.value.errors[1].message == "'maybe' is not yes or no."
    assert caught.value.errors[0].message == "End date 2026-01-01 is before the start date 2027-01-01."


def test_duplicate_row_reported(db, owner):
    rows = [row(), row(title="Other project"), row()]

    with pytest.raises(CsvImportFailed) as caught:
        import_projects_csv(owner, csv_bytes(rows))

    error = caught.value.errors[0]
    assert (error.line, error.column) == (4, "need_title")
    assert "repeats the need 'Feasibility study'" in error.message
    assert "from line 2" in error.message
    assert count(db, Project) == 0


def test_repeated_title_with_other_project_values(db, owner):
    rows = [row(), row(summary="Another summary", countries="", need_title="Deployment")]

    assert failure(owner, csv_bytes(rows)) == [(3, "summary")]


@pytest.mark.parametrize("header, expected", [
    (["title", "need_title", "goal", "currency", "budget"], [(1, "budget")]),
    (["title", "need_title", "goal"], [(1, "currency")]),
    (["title", "need_title", "goal", "currency", "goal"], [(1, "goal")]),
    (["title", "need_title", "goal", "currency", ""], [(1, "column 5")]),
])
def test_wrong_columns_reported_on_header(db, owner, header, expected):
    data = csv_bytes([["Project", "Study", "100", "EUR", "x"][: len(header)]], header=header)

    assert failure(owner, data) == expected


def test_wrong_number_of_values(db, owner):
    data = csv_bytes([row(), row(title="Short")[:5]])

    assert failure(owner, data) == [(3, "row")]


def test_every_error_reported_at_once(db, owner):
    rows = [
        row(countries="XX"),
        row(title="Fine"),
        row(title="Second", currency="EURO", goal="abc", deadline="soon"),
        row(title="=Third"),
    ]

    assert failure(owner, csv_bytes(rows)) == [(2, "countries"), (4, "currency"), (4, "deadline"), (5, "title")]


def test_existing_project_title_rejected(db, owner):
    import_projects_csv(owner, csv_bytes([row()]))
    db.session.commit()

    assert failure(owner, csv_bytes([row(title="New project"), row(title="rural  BROADBAND for kenya")])) == [(3, "title")]
    assert count(db, Project) == 1


def test_read_projects_groups_needs_by_title(db):
    rows = [row(), row(title="Other"), row(title=" rural broadband  for Kenya ", summary="", need_title="Deployment", goal="4800000")]

    projects, errors = read_projects_csv(csv_bytes(rows))

    assert errors == []
    assert [(project.title, [need.title for need in project.data.needs]) for project in projects] == [
        ("Rural broadband for Kenya", ["Feasibility study", "Deployment"]), ("Other", ["Feasibility study"]),
    ]


# The page and who may use it


def test_import_requires_owner(client, db, make_user, login):
    assert client.get("/projects/import").status_code == 302
    for role in ("donor", "coordinator"):
        login(make_user(role))
        assert client.get("/projects/import").status_code == 403
        response = client.post("/projects/import", data={"file": (io.BytesIO(csv_bytes([row()])), "p.csv")}, content_type="multipart/form-data")
        assert response.status_code == 403
    assert count(db, Project) == 0


def test_service_requires_owner(db, make_user):
    with pytest.raises(Forbidden):
        import_projects_csv(make_user("donor"), csv_bytes([row()]))


def test_import_page_documents_columns(client, db, owner, login):
    login(owner)

    page = client.get("/projects/import").get_data(as_text=True)

    for column in HEADER:
        assert f"<code>{column}</code>" in page
    assert 'enctype="multipart/form-data"' in page


def test_import_page_lists_errors(client, db, owner, login):
    login(owner)
    data = csv_bytes([row(), row(title="Second", countries="XX")])

    response = client.post("/projects/import", data={"file": (io.BytesIO(data), "p.csv")}, content_type="multipart/form-data")

    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert "1 line has errors, so no project was imported" in page
    assert "Unknown country code &#39;XX&#39;" in page
    assert '<td class="num">3</td>' in page
    assert count(db, Project) == 0


def test_import_page_needs_a_file(client, db, owner, login):
    login(owner)

    response = client.post("/projects/import", data={}, content_type="multipart/form-data")

    assert response.status_code == 422
    assert "Choose a CSV file to upload." in response.get_data(as_text=True)


def test_import_page_checks_csrf(app, client, db, owner, login, monkeypatch):
    monkeypatch.setitem(app.config, "WTF_CSRF_ENABLED", True)
    login(owner)

    page = client.get("/projects/import").get_data(as_text=True)
    response = client.post("/projects/import", data={"file": (io.BytesIO(csv_bytes([row()])), "p.csv")}, content_type="multipart/form-data")

    assert 'name="csrf_token"' in page
    assert response.status_code == 400
    assert count(db, Project) == 0
