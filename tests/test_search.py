"""Project search `q`: case- and accent-insensitive, the same on SQLite and PostgreSQL."""

from pathlib import Path

import pytest
from sqlalchemy import select

from financing.accounts.models import User
from financing.core.search import fold, query_words, search_text
from financing.iati.importer import import_file
from financing.projects.models import Project
from financing.projects.services import (
    NeedInput, ProjectFilters, ProjectInput, create_project, publish_project, search_query, submit_project, update_project,
)

DATA = Path(__file__).resolve().parent.parent / "data"

TITLES = {
    "telecom": "Télécom rural au Sénégal",
    "ivoire": "Côte d’Ivoire broadband backbone",
    "strasse": "Digitale Straße für Gemeinden",
    "chinese": "农村宽带接入 Rural access",
    "arabic": "مشروع الاتصالات الريفية",
    "percent": "100% coverage of schools",
    "thousand": "1000 school sites",
    "underscore": "snake_case data portal",
    "hebrew": "רשת סיבים Haifa fibre",
}


@pytest.fixture
def projects(db, make_user):
    """One published project per title of TITLES, keyed like TITLES."""
    owner = make_user("owner")
    coordinator = make_user("coordinator", organisation=None)
    created = {}
    for key, title in TITLES.items():
        project = create_project(owner, ProjectInput(
            title=title, summary=f"Summary of {key}", countries=["SN"],
            needs=[NeedInput(title="Equipment", goal_minor=100_000, currency="EUR")],
        ))
        submit_project(owner, project)
        publish_project(coordinator, project)
        created[key] = project
    db.session.commit()
    return created


def found(db, q: str) -> set[str]:
    projects = db.session.scalars(search_query(ProjectFilters(q=q)))
    keys = {title: key for key, title in TITLES.items()}
    return {keys.get(project.title, project.title) for project in projects}


@pytest.mark.parametrize("text, folded", [
    ("Télécom", "telecom"),
    ("TELECOM", "telecom"),
    ("télécom", "telecom"),
    ("Côte d’Ivoire", "cote d'ivoire"),
    ("CÔTE D'IVOIRE", "cote d'ivoire"),
    ("Straße", "strasse"),
    ("İstanbul", "istanbul"),
    ("Ｆｕｌｌｗｉｄｔｈ", "fullwidth"),
    ("Te\u0301le\u0301com", "telecom"),
    ("  many   spaces\there ", "many spaces here"),
    ("农村宽带", "农村宽带"),
    ("مُشْرُوع", "مشروع"),
    ("😀 Emoji", "😀 emoji"),
    (None, ""),
])
def test_fold(text, folded):
    assert fold(text) == folded


def test_query_words():
    assert query_words("  Côte  COTE d'Ivoire ") == ["cote", "d'ivoire"]
    assert query_words("") == []
    assert query_words("   ") == []


@pytest.mark.parametrize("q, expected", [
    ("telecom", {"telecom"}),
    ("TELECOM", {"telecom"}),
    ("Télécom", {"telecom"}),
    ("TÉLÉCOM", {"telecom"}),
    ("senegal", {"telecom"}),
    ("cote", {"ivoire"}),
    ("COTE", {"ivoire"}),
    ("Côte d'Ivoire", {"ivoire"}),
    ("côte d’ivoire", {"ivoire"}),
    ("strasse", {"strasse"}),
    ("STRASSE", {"strasse"}),
    ("Straße", {"strasse"}),
    ("宽带", {"chinese"}),
    ("الاتصالات", {"arabic"}),
    ("סיבים", {"hebrew"}),
    ("HAIFA", {"hebrew"}),
    ("100%", {"percent"}),
    ("100", {"percent", "thousand"}),
    ("snake_case", {"underscore"}),
    ("snake%case", set()),
    ("data_portal", set()),
    ("snak__case", set()),
    ("rural telecom", {"telecom"}),
    ("rural satellite", set()),
    ("summary of ivoire", {"ivoire"}),
    ("\\", set()),
])
def test_search_finds(projects, db, q, expected):
    assert found(db, q) == expected


def test_empty_query_matches_all(projects, db):
    assert found(db, "   ") == set(TITLES)


def test_search_page_and_api_agree(projects, client):
    page = client.get("/projects?q=TELECOM").get_data(as_text=True)
    api = client.get("/api/v1/projects?q=cote").get_json()

    assert TITLES["telecom"] in page
    assert TITLES["ivoire"] not in page
    assert [item["title"] for item in api["items"]] == [TITLES["ivoire"]]


def test_search_text_follows_edits(projects, db):
    project = projects["telecom"]
    owner = db.session.get(User, project.created_by_id)
    # Owners edit until publication, so the project is a draft while it is edited.
    project.status = "draft"

    update_project(owner, project, ProjectInput(
        title="Réseau satellite", summary="Liaisons pour îles", countries=["SN"],
        needs=[NeedInput(title="Equipment", goal_minor=100_000, currency="EUR", id=project.needs[0].id)],
    ))
    project.status = "published"
    db.session.commit()

    assert project.search_text == "reseau satellite\nliaisons pour iles"
    assert found(db, "telecom") == set()
    assert found(db, "ILES") == {"Réseau satellite"}


def test_search_text_set_on_assignment(db):
    project = Project(title="Télécom", summary="Côte")
    assert project.search_text == "telecom\ncote"
    project.summary = "Straße"
    assert project.search_text == "telecom\nstrasse"


def test_iati_import_keeps_search_text(db, tmp_path):
    path = tmp_path / "activity.xml"
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<iati-activities version="2.03">'
        '<iati-activity default-currency="EUR"><iati-identifier>XX-SEARCH-1</iati-identifier>'
        '<reporting-org ref="XX-REP" type="21"><narrative>Agence des Télécoms</narrative></reporting-org>'
        '<title><narrative>Télécommunications en Côte d’Ivoire</narrative></title>'
        '<description type="1"><narrative>Réseau régional</narrative></description>'
        '<recipient-country code="CI"/><sector code="22040" vocabulary="1"/>'
        '</iati-activity></iati-activities>\n',
        encoding="utf-8",
    )

    import_file(path)

    project = db.session.scalar(select(Project).where(Project.iati_identifier == "XX-SEARCH-1"))
    assert project.search_text == search_text(project.title, project.summary)
    assert found(db, "telecommunications cote") == {"Télécommunications en Côte d’Ivoire"}
    assert found(db, "RESEAU REGIONAL") == {"Télécommunications en Côte d’Ivoire"}


def test_real_iati_file_search_text_consistent(db):
    import_file(DATA / "iati-activities" / "indigo-trust_v1.01_2012_ict-grants.xml")

    projects = list(db.session.scalars(select(Project)))
    assert projects
    for project in projects:
        assert project.search_text == search_text(project.title, project.summary), project.iati_identifier
