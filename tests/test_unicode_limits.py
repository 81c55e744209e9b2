"""Text in any script is stored and shown unchanged; text fields have the same limits on SQLite and PostgreSQL."""

import pytest
from flask import g, request_started
from lxml import html
from sqlalchemy import func, select

from financing.accounts.models import Organisation, User
from financing.accounts.services import create_token, create_user
from financing.core.errors import ValidationFailed
from financing.funders.models import Funder
from financing.projects.models import FundingNeed, Project
from financing.projects.services import NeedInput, ProjectInput, create_project, submit_project
from tests.conftest import PASSWORD

# Mixed scripts: Chinese, Arabic, Hebrew within Latin, emoji (with a ZWJ sequence and a flag),
# a decomposed accent, and right-to-left marks.
CHINESE = "农村宽带接入项目"
ARABIC = "مشروع النطاق العريض في الريف"
HEBREW_LATIN = "Fibre backbone רשת סיבים אופטיים for Haifa"
EMOJI = "Connectivity 📡🌍 for 👩🏽‍💻 teams 🇰🇪"
DECOMPOSED = "Te\u0301le\u0301com re\u0301seau"
RTL_MARKS = "\u200fالمرحلة 2\u200e phase"
SAMPLES = [CHINESE, ARABIC, HEBREW_LATIN, EMOJI, DECOMPOSED, RTL_MARKS]


@pytest.fixture(autouse=True)
def fresh_login_per_request(app):
    def forget(sender, **extra):
        g.pop("_login_user", None)

    request_started.connect(forget, app)
    yield
    request_started.disconnect(forget, app)


def count(db, model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def project_form(**overrides) -> dict:
    data = {
        "title": "Rural broadband", "summary": "Access for villages.", "description": "",
        "countries": ["KE"], "themes": ["broadband"],
        "needs-0-title": "Feasibility study", "needs-0-goal": "2000.00", "needs-0-currency": "EUR",
    }
    data.update(overrides)
    return data


def project_body(**overrides) -> dict:
    body = {
        "title": "Rural broadband", "summary": "Access for villages.", "countries": ["KE"],
        "needs": [{"title": "Feasibility study", "goal": {"amount": "2000.00", "currency": "EUR"}}],
    }
    body.update(overrides)
    return body


def bearer(db, user) -> dict:
    _, token = create_token(user, name="tests")
    db.session.commit()
    return {"Authorization": f"Bearer {token}"}


def text_of(response) -> str:
    return html.fromstring(response.get_data(as_text=True)).text_content()


# Any script, unchanged --------------------------------------------------------------------

@pytest.mark.parametrize("text", SAMPLES)
def test_project_form_keeps_text(client, make_user, login, db, text):
    owner = make_user("owner")
    login(owner)

    response = client.post("/projects/new", data=project_form(
        title=text, summary=f"{text} — summary", description=f"## {text}\n\n{text}", **{"needs-0-title": text},
    ))

    assert response.status_code == 302, response.get_data(as_text=True)
    project = db.session.scalar(select(Project))
    assert project.title == text
    assert project.summary == f"{text} — summary"
    assert project.description == f"## {text}\n\n{text}"
    assert project.needs[0].title == text
    page = text_of(client.get(f"/projects/{project.id}"))
    assert text in page
    assert f"{text} — summary" in page


@pytest.mark.parametrize("text", SAMPLES)
def test_api_keeps_text(client, make_user, db, text):
    owner = make_user("owner")
    headers = bearer(db, owner)
    body = project_body(title=text, summary=text, description=text)
    body["needs"][0]["title"] = text

    created = client.post("/api/v1/projects", json=body, headers=headers)

    assert created.status_code == 201, created.get_data(as_text=True)
    read = client.get(f"/api/v1/projects/{created.get_json()['id']}", headers=headers).get_json()
    assert read["title"] == text
    assert read["summary"] == text
    assert read["description"] == text
    assert read["needs"][0]["title"] == text


def test_registration_keeps_text(client, db):
    response = client.post("/register", data={
        "email": "li.wei@example.org", "name": "李伟 (Li Wei)", "password": PASSWORD, "confirm": PASSWORD,
        "role": "owner", "organisation": "وزارة الاتصالات — Ministère des Télécoms 📡",
    })

    assert response.status_code == 302
    user = db.session.scalar(select(User))
    assert user.name == "李伟 (Li Wei)"
    assert user.organisation.name == "وزارة الاتصالات — Ministère des Télécoms 📡"
    page = text_of(client.get("/account"))
    assert "李伟 (Li Wei)" in page
    assert "وزارة الاتصالات — Ministère des Télécoms 📡" in page


def test_funder_profile_keeps_text(client, make_user, login, db):
    donor = make_user("donor", organisation=None)
    login(donor)

    response = client.post("/funders/profile", data={"name": "קרן הדיגיטל 🌐 Digital Fund", "kind": "institution", "currency": "EUR"})

    assert response.status_code == 302, response.get_data(as_text=True)
    funder = db.session.scalar(select(Funder))
    assert funder.name == "קרן הדיגיטל 🌐 Digital Fund"
    assert "קרן הדיגיטל 🌐 Digital Fund" in text_of(client.get(f"/funders/{funder.id}"))


# Length limits, counted in characters (code points) on both databases ----------------------

@pytest.mark.parametrize("field, limit, character", [
    ("title", 300, "界"),
    ("title", 300, "😀"),
    ("summary", 1000, "ع"),
    ("needs-0-title", 300, "ש"),
])
def test_project_form_length_limits(client, make_user, login, db, field, limit, character):
    login(make_user("owner"))

    at_limit = client.post("/projects/new", data=project_form(**{field: character * limit}))
    over_limit = client.post("/projects/new", data=project_form(**{field: character * (limit + 1)}))

    assert at_limit.status_code == 302, at_limit.get_data(as_text=True)
    assert over_limit.status_code == 422
    document = html.fromstring(over_limit.get_data(as_text=True))
    assert document.xpath(f"//*[@id='{field}-error']"), f"the error is shown at {field}"
    assert count(db, Project) == 1


def test_decomposed_accents_count_as_code_points(client, make_user, login, db):
    login(make_user("owner"))
    title = "e\u0301" * 150

    response = client.post("/projects/new", data=project_form(title=title))

    assert response.status_code == 302
    assert db.session.scalar(select(Project.title)) == title


@pytest.mark.parametrize("path, limit", [
    ("title", 300),
    ("summary", 1000),
    ("needs.0.title", 300),
])
def test_api_length_limits(client, make_user, db, path, limit):
    owner = make_user("owner")
    headers = bearer(db, owner)

    def body_with(value):
        body = project_body()
        if path.startswith("needs."):
            body["needs"][0]["title"] = value
        else:
            body[path] = value
        return body

    at_limit = client.post("/api/v1/projects", json=body_with("🌍" * limit), headers=headers)
    over_limit = client.post("/api/v1/projects", json=body_with("🌍" * (limit + 1)), headers=headers)

    assert at_limit.status_code == 201, at_limit.get_data(as_text=True)
    assert over_limit.status_code == 422
    assert path in over_limit.get_json()["error"]["fields"]
    assert count(db, Project) == 1


@pytest.mark.parametrize("field, limit", [("name", 200), ("organisation", 300)])
def test_registration_length_limits(client, db, field, limit):
    def register(value, number):
        data = {
            "email": f"person{number}@example.org", "name": "Person", "password": PASSWORD, "confirm": PASSWORD,
            "role": "owner", "organisation": f"Ministry {number}",
        }
        data[field] = value
        return client.post("/register", data=data)

    over_limit = register("名" * (limit + 1), 1)
    at_limit = register("名" * limit, 2)

    assert over_limit.status_code == 422
    assert f"Use at most {limit} characters; this has {limit + 1}." in over_limit.get_data(as_text=True)
    assert at_limit.status_code == 302
    assert count(db, User) == 1


def test_funder_name_length_limit(client, make_user, login, db):
    login(make_user("donor", organisation=None))

    response = client.post("/funders/profile", data={"name": "ф" * 301, "kind": "institution", "currency": "EUR"})

    assert response.status_code == 422
    assert count(db, Funder) == 0


def test_return_reason_length_limit(client, make_user, login, db):
    owner = make_user("owner")
    coordinator = make_user("coordinator", organisation=None)
    project = create_project(owner, ProjectInput(title="Fibre", needs=[NeedInput(title="Cable", goal_minor=1000, currency="EUR")]))
    submit_project(owner, project)
    db.session.commit()
    headers = bearer(db, coordinator)

    too_long = client.post(f"/api/v1/projects/{project.id}/return", json={"reason": "ر" * 2001}, headers=headers)
    accepted = client.post(f"/api/v1/projects/{project.id}/return", json={"reason": "ر" * 2000}, headers=headers)

    assert too_long.status_code == 422
    assert "reason" in too_long.get_json()["error"]["fields"]
    assert accepted.status_code == 200, accepted.get_data(as_text=True)
    db.session.expire_all()
    assert db.session.get(Project, project.id).return_reason == "ر" * 2000


def test_create_user_checks_lengths(db):
    with pytest.raises(ValidationFailed) as raised:
        create_user("long@example.org", PASSWORD, "owner", name="n" * 201, organisation="o" * 301)

    assert set(raised.value.fields) == {"name", "organisation"}
    assert count(db, User) == 0
    assert count(db, Organisation) == 0


def test_cli_rejects_long_name(app, db):
    result = app.test_cli_runner().invoke(args=["users", "create", "cli@example.org", "--role", "donor", "--password", PASSWORD, "--name", "x" * 201])

    assert result.exit_code != 0
    assert "200" in result.output
    assert count(db, User) == 0


# Characters no database column can hold ---------------------------------------------------

def test_nul_in_form_is_422(client, make_user, login, db):
    login(make_user("owner"))

    response = client.post("/projects/new", data=project_form(title="Fibre\x00backbone"))

    assert response.status_code == 422
    assert "Field 'title' contains a NUL character" in text_of(response)
    assert count(db, Project) == 0


@pytest.mark.parametrize("raw_title, field", [
    ('"Fibre\\u0000backbone"', "title"),
    ('"Fibre \\ud800 backbone"', "title"),
])
def test_unstorable_json_is_422(client, make_user, db, raw_title, field):
    headers = bearer(db, make_user("owner"))
    raw = '{"title": %s, "needs": [{"title": "Cable", "goal": {"amount": "10.00", "currency": "EUR"}}]}' % raw_title

    response = client.post("/api/v1/projects", data=raw, content_type="application/json", headers=headers)

    assert response.status_code == 422
    assert field in response.get_json()["error"]["fields"]
    assert count(db, Project) == 0


def test_unstorable_nested_json_is_422(client, make_user, db):
    headers = bearer(db, make_user("owner"))
    raw = '{"title": "Fibre", "needs": [{"title": "Ca\\u0000ble", "goal": {"amount": "10.00", "currency": "EUR"}}]}'

    response = client.post("/api/v1/projects", data=raw, content_type="application/json", headers=headers)

    assert response.status_code == 422
    assert response.get_json()["error"]["fields"] == {"needs.0.title": response.get_json()["error"]["message"]}


@pytest.mark.parametrize("url", ["/projects?q=fibre%00", "/api/v1/projects?q=fibre%00"])
def test_nul_in_query_is_422(client, db, url):
    response = client.get(url)

    assert response.status_code == 422


def test_need_title_stored_on_both_databases(make_user, db):
    owner = make_user("owner")
    title = "📡" * 300
    create_project(owner, ProjectInput(title=title, needs=[NeedInput(title=title, goal_minor=1000, currency="EUR")]))
    db.session.commit()

    assert db.session.scalar(select(FundingNeed.title)) == title
    assert db.session.scalar(select(func.length(FundingNeed.title))) == 300
