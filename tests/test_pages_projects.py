"""Project pages and the home page: forms, workflow, browse filters, detail, access checks."""

import re
from datetime import date, timedelta

import pytest
from flask import g, request_started, url_for
from sqlalchemy import event, func, select

from financing.accounts.services import create_user, get_user_by_email
from financing.pledges.services import create_pledge
from financing.projects.models import FundingNeed, Project
from financing.projects.services import NeedInput, ProjectInput, create_project, publish_project, submit_project
from tests.conftest import PASSWORD


@pytest.fixture(autouse=True)
def fresh_login_per_request(app):
    """Forget the user that Flask-Login cached in `g` at the start of each request.

    The `db` fixture keeps an app context open, and test requests reuse it, so `g` (where
    Flask-Login caches current_user) would otherwise carry one request's user into the next.
    """
    def forget(sender, **extra):
        g.pop("_login_user", None)

    request_started.connect(forget, app)
    yield
    request_started.disconnect(forget, app)


@pytest.fixture
def owner(make_user):
    return make_user("owner", organisation="Ministry of ICT, Kenya", email="owner@example.org")


@pytest.fixture
def coordinator(make_user):
    return make_user("coordinator", organisation=None, email="coordinator@example.org")


def project_form(**overrides) -> dict:
    """Return a valid project form post with two needs and one empty row."""
    data = {
        "title": "Rural broadband for Turkana County",
        "summary": "Wireless last-mile access for 40 villages.",
        "description": "## Plan\n\nA **microwave** backbone feeding village hotspots.",
        "countries": ["KE"],
        "themes": ["broadband"],
        "sectors": ["22020"],
        "other_sectors": "",
        "start_date": "2026-01-01",
        "end_date": "2027-12-31",
        "needs-0-title": "Feasibility study",
        "needs-0-goal": "200000.00",
        "needs-0-currency": "EUR",
        "needs-0-deadline": "2099-06-30",
        "needs-1-title": "Network deployment",
        "needs-1-goal": "4,800,000",
        "needs-1-currency": "USD",
        "needs-1-allow_overfunding": "y",
        "needs-2-title": "",
        "needs-2-goal": "",
        "needs-2-currency": "EUR",
        "needs-2-deadline": "",
    }
    data.update(overrides)
    return data


def project_count(db) -> int:
    return db.session.scalar(select(func.count(Project.id)))


def reviewer():
    """Return the coordinator that publishes test projects, creating it once per test."""
    return get_user_by_email("reviewer@example.org") or create_user("reviewer@example.org", PASSWORD, "coordinator")


def make_project(db, user, title="Fibre backbone for West Africa", countries=("SN",), sectors=("22020",), themes=(), status="draft", **need):
    data = ProjectInput(
        title=title, summary=f"Summary of {title}.", countries=list(countries), sectors=list(sectors), themes=list(themes),
        needs=[NeedInput(title=need.get("need_title", "Deployment"), goal_minor=need.get("goal_minor", 100_000_00), currency=need.get("currency", "EUR"), deadline=need.get("deadline"))],
    )
    project = create_project(user, data)
    if status in ("submitted", "published"):
        submit_project(user, project)
    if status == "published":
        publish_project(reviewer(), project)
    db.session.commit()
    return project


# Creating projects -----------------------------------------------------------------------

def test_new_project_form_shows_empty_need_rows(client, owner, login):
    login(owner)

    page = client.get("/projects/new")

    assert page.status_code == 200
    for row in range(3):
        assert f'name="needs-{row}-goal"' in page.text
    assert '<label for="title">Title</label>' in page.text
    assert 'name="needs-3-goal"' not in page.text


def test_owner_creates_project_with_two_needs(client, db, owner, login):
    login(owner)

    response = client.post("/projects/new", data=project_form())

    assert response.status_code == 302
    project = db.session.scalar(select(Project))
    assert response.headers["Location"] == f"/projects/{project.id}"
    assert project.status == "draft"
    assert project.organisation_id == owner.organisation_id
    assert project.countries == ["KE"]
    assert project.themes == ["broadband"]
    assert project.sectors == ["22020"]
    assert project.start_date == date(2026, 1, 1)
    needs = project.needs
    assert [need.title for need in needs] == ["Feasibility study", "Network deployment"]
    assert (needs[0].goal_minor, needs[0].currency, needs[0].deadline) == (20_000_000, "EUR", date(2099, 6, 30))
    assert (needs[1].goal_minor, needs[1].currency, needs[1].allow_overfunding) == (480_000_000, "USD", True)
    assert needs[0].allow_overfunding is False


def test_other_sector_codes_are_saved(client, db, owner, login):
    login(owner)

    response = client.post("/projects/new", data=project_form(sectors=[], other_sectors="15110, 43030"))

    assert response.status_code == 302
    assert db.session.scalar(select(Project)).sectors == ["15110", "43030"]


@pytest.mark.parametrize("overrides, field_id, message, typed", [
    ({"title": ""}, "title", "Title is required.", None),
    ({"needs-0-goal": "-5"}, "needs-0-goal", "must be greater than zero", 'value="-5"'),
    ({"needs-0-goal": "abc"}, "needs-0-goal", "is not a number", 'value="abc"'),
    ({"needs-0-goal": "1.234"}, "needs-0-goal", "has more decimals than EUR allows (2)", 'value="1.234"'),
    ({"needs-1-goal": "1.5", "needs-1-currency": "JPY"}, "needs-1-goal", "has more decimals than JPY allows (0)", 'value="1.5"'),
    ({"needs-1-goal": "0"}, "needs-1-goal", "must be greater than zero", 'value="0"'),
    ({"needs-0-goal": ""}, "needs-0-goal", "Amount is required.", 'value="Feasibility study"'),
    ({"needs-0-title": ""}, "needs-0-title", "Need title is required.", 'value="200000.00"'),
    ({"needs-0-currency": "ZZZ"}, "needs-0-currency", "Unknown currency", None),
    ({"countries": ["KE", "XX"]}, "countries", "&#39;XX&#39;", None),
    ({"other_sectors": "99999"}, "other_sectors", "Unknown DAC sector &#39;99999&#39;.", 'value="99999"'),
    ({"end_date": "2025-01-01"}, "end_date", "is before the start date", 'value="2025-01-01"'),
    ({"start_date": "31/12/2026"}, "start_date", "Date &#39;31/12/2026&#39; is not valid", 'value="31/12/2026"'),
    ({"needs-0-deadline": "soon"}, "needs-0-deadline", "Date &#39;soon&#39; is not valid", 'value="soon"'),
])
def test_bad_project_input_is_rejected(client, db, owner, login, overrides, field_id, message, typed):
    login(owner)

    response = client.post("/projects/new", data=project_form(**overrides))

    assert response.status_code == 422
    error = re.search(rf'<p class="field-error" id="{field_id}-error">([^<]*)</p>', response.text)
    assert error, f"no error next to {field_id}"
    assert message in error.group(1)
    assert 'value="Rural broadband for Turkana County"' in response.text or overrides.get("title") == ""
    if typed:
        assert typed in response.text
    assert project_count(db) == 0


def test_all_errors_are_shown_at_once(client, db, owner, login):
    login(owner)

    response = client.post("/projects/new", data=project_form(title="", **{"needs-0-goal": "abc", "countries": ["XX"]}))

    assert response.status_code == 422
    for field_id in ("title", "needs-0-goal", "countries"):
        assert f'id="{field_id}-error"' in response.text
    assert project_count(db) == 0


def test_project_needs_at_least_one_need(client, db, owner, login):
    login(owner)
    blank = {f"needs-{row}-{name}": "" for row in range(3) for name in ("title", "goal", "deadline")}

    response = client.post("/projects/new", data=project_form(**blank))

    assert response.status_code == 422
    assert "Add at least one funding need." in response.text
    assert project_count(db) == 0


def test_new_project_access(client, make_user, login):
    assert client.get("/projects/new").status_code == 302
    login(make_user("donor", organisation=None))
    assert client.get("/projects/new").status_code == 403
    assert client.post("/projects/new", data=project_form()).status_code == 403
    login(make_user("coordinator", organisation=None))
    assert client.get("/projects/new").status_code == 403


def test_owner_without_organisation_gets_message(client, db, make_user, login):
    login(make_user("owner", organisation=None))

    response = client.post("/projects/new", data=project_form())

    assert response.status_code == 422
    assert "Your account has no organisation." in response.text
    assert project_count(db) == 0


# Editing ---------------------------------------------------------------------------------

def test_owner_edits_own_project(client, db, owner, login):
    project = make_project(db, owner)
    login(owner)

    page = client.get(f"/projects/{project.id}/edit")
    assert page.status_code == 200
    assert 'value="Fibre backbone for West Africa"' in page.text
    assert 'value="100000.00"' in page.text
    assert 'name="needs-2-goal"' in page.text, "two empty rows follow the existing need"

    need_id = project.needs[0].id
    response = client.post(f"/projects/{project.id}/edit", data=project_form(**{
        "title": "Fibre backbone, phase 2",
        "needs-0-id": str(need_id), "needs-0-title": "Deployment", "needs-0-goal": "150000.00",
        "needs-1-title": "", "needs-1-goal": "", "needs-1-currency": "EUR",
    }))

    assert response.status_code == 302
    db.session.expire_all()
    project = db.session.get(Project, project.id)
    assert project.title == "Fibre backbone, phase 2"
    assert len(project.needs) == 1
    assert project.needs[0].id == need_id
    assert project.needs[0].goal_minor == 15_000_000


def test_owner_removes_a_need(client, db, owner, login):
    login(owner)
    client.post("/projects/new", data=project_form())
    project = db.session.scalar(select(Project))
    first, second = project.needs

    response = client.post(f"/projects/{project.id}/edit", data=project_form(**{
        "needs-0-id": str(first.id), "needs-1-id": str(second.id), "needs-1-remove": "y",
    }))

    assert response.status_code == 302
    db.session.expire_all()
    assert [need.id for need in db.session.get(Project, project.id).needs] == [first.id]


def test_owner_removes_two_needs(client, db, owner, login):
    login(owner)
    client.post("/projects/new", data=project_form(**{"needs-2-title": "Training", "needs-2-goal": "1000"}))
    project = db.session.scalar(select(Project))
    first, second, third = project.needs

    response = client.post(f"/projects/{project.id}/edit", data=project_form(**{
        "needs-0-id": str(first.id),
        "needs-1-id": str(second.id), "needs-1-remove": "y",
        "needs-2-id": str(third.id), "needs-2-title": "Training", "needs-2-goal": "1000", "needs-2-remove": "y",
    }))

    assert response.status_code == 302
    db.session.expire_all()
    assert [need.id for need in db.session.get(Project, project.id).needs] == [first.id]


def test_edit_with_bad_goal_changes_nothing(client, db, owner, login):
    project = make_project(db, owner)
    login(owner)
    need_id = project.needs[0].id

    response = client.post(f"/projects/{project.id}/edit", data=project_form(**{
        "title": "Changed title", "needs-0-id": str(need_id), "needs-0-goal": "12.345",
    }))

    assert response.status_code == 422
    assert 'value="12.345"' in response.text
    db.session.expire_all()
    assert db.session.get(Project, project.id).title == "Fibre backbone for West Africa"
    assert db.session.get(FundingNeed, need_id).goal_minor == 100_000_00


def test_edit_with_need_of_another_project(client, db, owner, make_user, login):
    mine = make_project(db, owner, title="Mine")
    other_owner = make_user("owner", organisation="Regulator of Senegal")
    theirs = make_project(db, other_owner, title="Theirs")
    login(owner)

    response = client.post(f"/projects/{mine.id}/edit", data=project_form(**{"needs-0-id": str(theirs.needs[0].id)}))

    assert response.status_code == 422
    assert f"Unknown need {theirs.needs[0].id}." in response.text
    db.session.expire_all()
    assert db.session.get(FundingNeed, theirs.needs[0].id).project_id == theirs.id


def test_owner_cannot_edit_other_organisations_project(client, db, owner, make_user, login):
    other_owner = make_user("owner", organisation="Regulator of Senegal")
    published = make_project(db, other_owner, title="Published elsewhere", status="published")
    draft = make_project(db, other_owner, title="Draft elsewhere")
    login(owner)

    assert client.get(f"/projects/{published.id}/edit").status_code == 403
    assert client.post(f"/projects/{published.id}/edit", data=project_form(title="Taken over")).status_code == 403
    assert client.post(f"/projects/{published.id}/withdraw").status_code == 403
    assert client.get(f"/projects/{draft.id}/edit").status_code == 404
    assert client.post(f"/projects/{draft.id}/submit").status_code == 404
    db.session.expire_all()
    assert db.session.get(Project, published.id).title == "Published elsewhere"
    assert db.session.get(Project, published.id).status == "published"
    assert db.session.get(Project, draft.id).status == "draft"


def test_published_project_is_not_editable(client, db, owner, login):
    project = make_project(db, owner, status="published")
    login(owner)

    response = client.get(f"/projects/{project.id}/edit")

    assert response.status_code == 302
    assert response.headers["Location"] == f"/projects/{project.id}"
    assert "cannot be edited" in client.get(response.headers["Location"]).text


# Workflow --------------------------------------------------------------------------------

def test_submit_review_publish_browse(client, db, owner, coordinator, login):
    login(owner)
    client.post("/projects/new", data=project_form())
    project = db.session.scalar(select(Project))
    assert "Rural broadband for Turkana County" in client.get("/projects/mine").text

    response = client.post(f"/projects/{project.id}/submit")
    assert response.status_code == 302
    db.session.expire_all()
    assert db.session.get(Project, project.id).status == "submitted"

    login(coordinator)
    review = client.get("/review")
    assert review.status_code == 200
    assert "Rural broadband for Turkana County" in review.text
    assert f'action="/projects/{project.id}/publish"' in review.text
    assert client.post(f"/projects/{project.id}/publish").status_code == 302
    db.session.expire_all()
    assert db.session.get(Project, project.id).status == "published"
    assert f'href="/projects/{project.id}"' not in client.get("/review").text

    client.post("/logout")
    listed = client.get("/projects")
    assert listed.status_code == 200
    assert "Rural broadband for Turkana County" in listed.text
    detail = client.get(f"/projects/{project.id}")
    assert detail.status_code == 200
    assert 'role="progressbar"' in detail.text
    assert "Accepts pledges until the end of Jun 30, 2099 (UTC)." in detail.text
    assert "€200,000.00" in detail.text
    assert "$4,800,000.00" in detail.text
    assert "Kenya" in detail.text
    assert "Broadband connectivity" in detail.text
    assert "<h2>Plan</h2>" in detail.text


def test_return_with_reason(client, db, owner, coordinator, login):
    project = make_project(db, owner, status="submitted")
    login(coordinator)

    empty = client.post(f"/projects/{project.id}/return", data={f"return-{project.id}-reason": "  "})
    assert empty.status_code == 422
    assert f'id="return-{project.id}-reason-error"' in empty.text
    db.session.expire_all()
    assert db.session.get(Project, project.id).status == "submitted"

    reason = "Add the number of villages and the cost per connection."
    response = client.post(f"/projects/{project.id}/return", data={f"return-{project.id}-reason": reason})
    assert response.status_code == 302
    db.session.expire_all()
    assert db.session.get(Project, project.id).status == "returned"

    login(owner)
    page = client.get(f"/projects/{project.id}")
    assert reason in page.text
    assert f'action="/projects/{project.id}/submit"' in page.text
    assert client.post(f"/projects/{project.id}/submit").status_code == 302
    db.session.expire_all()
    assert db.session.get(Project, project.id).status == "submitted"


def test_workflow_role_checks(client, db, owner, make_user, login):
    project = make_project(db, owner, status="submitted")
    donor = make_user("donor", organisation=None)

    login(owner)
    assert client.post(f"/projects/{project.id}/publish").status_code == 403
    assert client.post(f"/projects/{project.id}/return", data={f"return-{project.id}-reason": "x"}).status_code == 403
    assert client.get("/review").status_code == 403
    login(donor)
    assert client.post(f"/projects/{project.id}/submit").status_code == 403
    assert client.get("/projects/mine").status_code == 403
    client.post("/logout")
    assert client.post(f"/projects/{project.id}/publish").status_code == 302
    db.session.expire_all()
    assert db.session.get(Project, project.id).status == "submitted"


def test_publish_twice_shows_conflict(client, db, owner, coordinator, login):
    project = make_project(db, owner, status="published")
    login(coordinator)

    response = client.post(f"/projects/{project.id}/publish", follow_redirects=True)

    assert "Cannot move project" in response.text


def test_owner_withdraws_project(client, db, owner, login):
    project = make_project(db, owner, status="published")
    login(owner)

    assert client.post(f"/projects/{project.id}/withdraw").status_code == 302

    db.session.expire_all()
    assert db.session.get(Project, project.id).status == "withdrawn"
    client.post("/logout")
    assert client.get(f"/projects/{project.id}").status_code == 404


@pytest.mark.parametrize("page", ["abc", "0", "²", "-1"])
def test_list_pages_reject_bad_page(client, owner, coordinator, login, page):
    login(owner)
    assert client.get(f"/projects/mine?page={page}").status_code == 400
    login(coordinator)
    assert client.get(f"/review?page={page}").status_code == 400


def test_mine_lists_every_status(client, db, owner, make_user, login):
    make_project(db, owner, title="Draft one")
    make_project(db, owner, title="Published one", status="published")
    make_project(db, make_user("owner", organisation="Other Ministry"), title="Not ours")
    login(owner)

    page = client.get("/projects/mine")

    assert "Draft one" in page.text
    assert "Published one" in page.text
    assert "Not ours" not in page.text


# Visibility and detail -------------------------------------------------------------------

def test_unpublished_detail_is_not_found(client, db, owner, make_user, login):
    project = make_project(db, owner, status="submitted")

    assert client.get(f"/projects/{project.id}").status_code == 404
    login(make_user("donor", organisation=None))
    assert client.get(f"/projects/{project.id}").status_code == 404
    login(owner)
    assert client.get(f"/projects/{project.id}").status_code == 200
    assert client.get("/projects/999999").status_code == 404


def test_markdown_is_sanitised(client, db, owner, login):
    login(owner)
    description = "<script>alert(1)</script>\n\n[x](javascript:alert(1)) <img src=x onerror=alert(2)>"
    client.post("/projects/new", data=project_form(description=description))
    project = db.session.scalar(select(Project))

    page = client.get(f"/projects/{project.id}")

    assert page.status_code == 200
    assert "<script>alert(1)" not in page.text
    assert 'href="javascript' not in page.text.lower()
    assert "<img" not in page.text
    assert "&lt;script&gt;" in page.text


def pledge_url(app, need_id: int) -> str:
    with app.test_request_context():
        return url_for("pledges.new", need_id=need_id)


def test_detail_pledge_link_for_donors(app, client, db, owner, make_user, login):
    project = make_project(db, owner, status="published", deadline=date.today() + timedelta(days=30))
    link = f'href="{pledge_url(app, project.needs[0].id)}"'

    anonymous = client.get(f"/projects/{project.id}")
    assert link not in anonymous.text
    assert "Log in as a donor to pledge" in anonymous.text

    login(make_user("owner", organisation="Another Ministry"))
    assert link not in client.get(f"/projects/{project.id}").text

    login(make_user("donor", organisation=None))
    page = client.get(f"/projects/{project.id}")
    assert link in page.text
    assert "Accepts pledges until the end of" in page.text


def test_detail_past_deadline_has_no_pledge_link(app, client, db, owner, make_user, login):
    project = make_project(db, owner, status="published", deadline=date(2020, 1, 31))
    login(make_user("donor", organisation=None))

    page = client.get(f"/projects/{project.id}")

    assert "Stopped accepting pledges at the end of Jan 31, 2020 (UTC)." in page.text
    assert pledge_url(app, project.needs[0].id) not in page.text


def test_detail_owner_buttons_and_demo_notice(client, db, owner, make_user, login):
    project = make_project(db, owner)
    project.illustrative = True
    db.session.commit()

    login(owner)
    page = client.get(f"/projects/{project.id}")
    assert f'href="/projects/{project.id}/edit"' in page.text
    assert f'action="/projects/{project.id}/submit"' in page.text
    assert f'action="/projects/{project.id}/withdraw"' in page.text
    assert "illustrative demo project" in page.text

    login(make_user("owner", organisation="Other Ministry"))
    published = make_project(db, owner, title="Public", status="published")
    page = client.get(f"/projects/{published.id}")
    assert f"/projects/{published.id}/edit" not in page.text


# Browse ----------------------------------------------------------------------------------

@pytest.fixture
def catalogue(db, owner):
    """Three published projects and one draft, tagged so each filter picks a known set."""
    return {
        "kenya": make_project(db, owner, title="Rural broadband Kenya", countries=("KE",), sectors=("22020",), status="published"),
        "caribbean": make_project(db, owner, title="Caribbean policy harmonization", countries=("JM", "TT"), sectors=("22010",), status="published"),
        "pacific": make_project(db, owner, title="Pacific satellite links", countries=("FJ",), sectors=(), themes=("backbones",), status="published"),
        "draft": make_project(db, owner, title="Hidden draft broadband", countries=("KE",), sectors=("22020",)),
    }


def listed_titles(response) -> set[str]:
    return set(re.findall(r'<h2 class="card-title"><a href="/projects/\d+">([^<]+)</a>', response.text))


@pytest.mark.parametrize("query, expected", [
    ("", {"Rural broadband Kenya", "Caribbean policy harmonization", "Pacific satellite links"}),
    ("region=africa", {"Rural broadband Kenya"}),
    ("region=americas", {"Caribbean policy harmonization"}),
    ("region=europe", set()),
    ("country=ke", {"Rural broadband Kenya"}),
    ("theme=broadband", {"Rural broadband Kenya"}),
    ("theme=backbones", {"Rural broadband Kenya", "Pacific satellite links"}),
    ("theme=policy-harmonization", {"Caribbean policy harmonization"}),
    ("sector=22010", {"Caribbean policy harmonization"}),
    ("q=SATELLITE", {"Pacific satellite links"}),
    ("q=broadband", {"Rural broadband Kenya"}),
    ("q=100%25", set()),
    ("region=africa&theme=broadcasting", set()),
    ("status=funded", set()),
])
def test_browse_filters(client, catalogue, query, expected):
    response = client.get(f"/projects?{query}")

    assert response.status_code == 200
    assert listed_titles(response) == expected


def test_browse_sort_by_title(client, catalogue):
    response = client.get("/projects?sort=title")

    titles = re.findall(r'<h2 class="card-title"><a href="/projects/\d+">([^<]+)</a>', response.text)
    assert titles == sorted(titles)


@pytest.mark.parametrize("query, message", [
    ("region=atlantis", "Unknown region &#39;atlantis&#39;"),
    ("country=XX", "Unknown country &#39;XX&#39;"),
    ("theme=space", "Unknown theme &#39;space&#39;"),
    ("sector=abc", "Unknown DAC sector &#39;abc&#39;"),
    ("status=draft", "Unknown status &#39;draft&#39;"),
    ("sort=price", "Unknown sort order &#39;price&#39;"),
    ("page=abc", "Page must be a whole number from 1."),
    ("page=0", "Page must be a whole number from 1."),
    ("page=²", "Page must be a whole number from 1."),
])
def test_browse_rejects_bad_filters(client, catalogue, query, message):
    response = client.get(f"/projects?{query}")

    assert response.status_code == 400
    assert message in response.text
    assert listed_titles(response) == set()


def test_browse_pages(app, client, db, owner):
    for number in range(app.config["PER_PAGE"] + 3):
        make_project(db, owner, title=f"Project {number:02d}", status="published")

    first = client.get("/projects?sort=title&region=africa")
    second = client.get("/projects?sort=title&region=africa&page=2")

    assert len(listed_titles(first)) == app.config["PER_PAGE"]
    assert len(listed_titles(second)) == 3
    assert 'href="/projects?page=2&amp;region=africa&amp;sort=title"' in first.text or "page=2" in first.text
    assert "Page 2 of 2" in second.text


def test_browse_query_count_does_not_grow(client, db, owner):
    def count_queries(path: str) -> int:
        statements = []

        def record(conn, cursor, statement, parameters, context, executemany):
            statements.append(statement)

        engine = db.engine
        event.listen(engine, "before_cursor_execute", record)
        try:
            assert client.get(path).status_code == 200
        finally:
            event.remove(engine, "before_cursor_execute", record)
        return len(statements)

    for number in range(2):
        make_project(db, owner, title=f"Small {number}", status="published")
    db.session.expire_all()
    few = count_queries("/projects")
    for number in range(8):
        make_project(db, owner, title=f"More {number}", countries=("KE", "UG"), status="published")
    db.session.expire_all()
    many = count_queries("/projects")

    assert many == few


# Home page -------------------------------------------------------------------------------

def test_home_shows_totals(client, db, owner, make_user):
    euro = make_project(db, owner, title="Euro project", status="published", goal_minor=200_000_00)
    make_project(db, owner, title="Dollar project", status="published", goal_minor=50_000_00, currency="USD")
    make_project(db, owner, title="Draft project", goal_minor=999_000_00)
    donor = make_user("donor", organisation=None)
    create_pledge(donor, euro.needs[0].id, 50_000_00, "EUR", idempotency_key="home-page-test")
    db.session.commit()

    page = client.get("/")

    assert page.status_code == 200
    assert re.search(r"<strong>2</strong>\s*published projects", page.text)
    assert re.search(r"<strong>1</strong>\s*funder\b", page.text)
    totals = page.text[page.text.index('class="totals"'):]
    assert re.search(r"<th scope=\"row\">EUR</th>\s*<td class=\"num\">1</td>\s*<td class=\"num\">€200,000.00</td>\s*<td class=\"num\">€50,000.00</td>", totals)
    assert re.search(r"<th scope=\"row\">USD</th>\s*<td class=\"num\">1</td>\s*<td class=\"num\">\$50,000.00</td>\s*<td class=\"num\">\$0.00</td>", totals)
    assert "999,000" not in page.text
    featured = page.text[page.text.index('id="featured-heading"'):page.text.index('id="browse-heading"')]
    assert featured.index("Euro project") < featured.index("Dollar project")
    assert "Draft project" not in featured
    assert re.search(r'href="/projects\?region=africa">Africa</a> <span class="count">2<', page.text)
    assert re.search(r'href="/projects\?region=europe">Europe</a> <span class="count">0<', page.text)
    assert re.search(r'href="/projects\?theme=broadband">[^<]+</a> <span class="count">2<', page.text)


def test_home_empty_database(client, db):
    page = client.get("/")

    assert page.status_code == 200
    assert re.search(r"<strong>0</strong>\s*published projects", page.text)


@pytest.mark.parametrize("query", ["", "?region=africa&sector=22040&status=funded&sort=title", "?country=ke&theme=broadband"])
def test_filter_selects_match_wtforms_rendering(app, query):
    from wtforms.widgets import Select

    from financing.projects.forms import ProjectFilterForm

    with app.test_request_context(f"/projects{query}"):
        from flask import request
        form = ProjectFilterForm(formdata=request.args)
        form.validate()
        for name in ("region", "country", "theme", "sector", "status", "sort"):
            # Twice: the second call reuses the rendered options.
            assert str(form[name]()) == str(Select()(form[name]))
            assert str(form[name](class_="wide")) == str(Select()(form[name], class_="wide"))
        assert "<optgroup" in str(form.sector())
        if "sector=22040" in query:
            assert '<option selected value="22040">' in str(form.sector())


def test_filter_select_follows_new_choices(app):
    from wtforms.fields.choices import SelectChoice

    from financing.projects.forms import ProjectFilterForm

    with app.test_request_context("/projects?status=closed"):
        from flask import request
        form = ProjectFilterForm(formdata=request.args)
        form.validate()
        before = str(form.status())
        form.status.choices = [SelectChoice("", "Any"), SelectChoice("closed", "Ended")]

        assert ">Closed</option>" in before
        assert str(form.status()) == '<select id="status" name="status"><option value="">Any</option><option selected value="closed">Ended</option></select>'
