"""Tests of the JSON API v1 through the Flask test client: fields, statuses, roles and money input."""

import json
import re

import flask
import pytest
from flask_wtf.csrf import generate_csrf
from sqlalchemy import func, select

from financing.accounts.models import ApiToken
from financing.core.time import utcnow
from financing.funders.services import FunderInput, funder_for_user, update_funder
from financing.matching.models import Match
from financing.pledges.models import Pledge, PledgeEvent
from financing.pledges.services import act, create_pledge
from financing.projects.models import FundingNeed, Project
from financing.projects.services import NeedInput, ProjectInput, create_project, publish_project, submit_project

KEY = "5f0c2b8e-6a1d-4f3e-9b7c-2d4e6f8a0b1c"


# Fixtures and helpers (people and auth come from conftest.py)


def send(client, method, url, body=None, headers=None, raw=None):
    """Send a JSON request; `raw` is the exact body text, for literals json.dumps cannot write."""
    data = raw
    if data is None and body is not None:
        data = json.dumps(body)
    return client.open(url, method=method, data=data, content_type="application/json", headers=headers or {})


def project_body(**overrides) -> dict:
    body = {
        "title": "Rural broadband for Kenya",
        "summary": "Wireless access in rural counties.",
        "description": "Solar-powered **access points** in 40 villages.",
        "countries": ["KE"],
        "themes": ["broadband"],
        "sectors": ["22040"],
        "start_date": "2026-01-01",
        "end_date": "2027-12-31",
        "needs": [
            {"title": "Feasibility study", "goal": {"amount": "200000.00", "currency": "EUR"}},
            {"title": "Fibre deployment", "goal": {"amount": "4800000", "currency": "EUR"},
             "deadline": "2026-06-30", "allow_overfunding": True},
        ],
    }
    body.update(overrides)
    return body


def make_project(db, people, title="Rural broadband for Kenya", goal_minor=100_000, currency="EUR",
                 countries=("KE",), themes=("broadband",), status="published", owner=None) -> Project:
    """Create a project with one need through the services, moved to `status`."""
    owner = owner or people.owner
    data = ProjectInput(
        title=title, summary="Access for rural counties.", countries=list(countries), themes=list(themes),
        needs=[NeedInput(title="Access points", goal_minor=goal_minor, currency=currency)],
    )
    project = create_project(owner, data)
    if status in ("submitted", "published"):
        submit_project(owner, project)
    if status == "published":
        publish_project(people.coordinator, project)
    db.session.commit()
    return project


def count(db, model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def pledge_body(need_id: int, amount="250.00", currency="EUR") -> dict:
    return {"need_id": need_id, "amount": amount, "currency": currency, "kind": "commitment"}


def post_pledge(client, auth, user, body=None, key=KEY, raw=None):
    headers = {**auth(user), "Idempotency-Key": key}
    return send(client, "POST", "/api/v1/pledges", body, headers, raw=raw)


def make_pledge(db, user, need_id, amount_minor=25_000, key=None) -> Pledge:
    pledge, _ = create_pledge(user, need_id, amount_minor, "EUR", "commitment", key)
    db.session.commit()
    return pledge


def assert_error(response, status: int, code: str | None = None) -> dict:
    """Check the status and the error document; return its `fields`."""
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "fields"}
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]["fields"]


# OpenAPI document


EXPECTED_OPERATIONS = {
    ("/api/v1/projects", "get"), ("/api/v1/projects", "post"),
    ("/api/v1/projects/{project_id}", "get"), ("/api/v1/projects/{project_id}", "patch"),
    ("/api/v1/projects/{project_id}/submit", "post"), ("/api/v1/projects/{project_id}/publish", "post"),
    ("/api/v1/projects/{project_id}/return", "post"),
    ("/api/v1/funders", "get"), ("/api/v1/funders/{funder_id}", "get"),
    ("/api/v1/pledges", "post"), ("/api/v1/pledges/{pledge_id}", "get"),
    ("/api/v1/pledges/{pledge_id}/confirm", "post"), ("/api/v1/pledges/{pledge_id}/cancel", "post"),
    ("/api/v1/pledges/{pledge_id}/disburse", "post"),
    ("/api/v1/matches", "get"), ("/api/v1/matches/{match_id}", "get"),
    ("/api/v1/matches/{match_id}/accept", "post"), ("/api/v1/matches/{match_id}/reject", "post"),
    ("/api/v1/stats", "get"), ("/api/openapi.json", "get"),
}


def test_openapi_lists_expected_operations(client):
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    spec = response.get_json()
    assert spec["openapi"].startswith("3.")
    listed = {(path, method) for path, item in spec["paths"].items() for method in item if method != "parameters"}
    assert EXPECTED_OPERATIONS <= listed


def test_openapi_covers_every_api_route(app, client):
    spec = client.get("/api/openapi.json").get_json()
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("api."):
            continue
        path = re.sub(r"<[^:>]+:(\w+)>", r"{\1}", rule.rule)
        assert path in spec["paths"], path
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in spec["paths"][path], (path, method)


def test_openapi_describes_schemas_and_security(client):
    spec = client.get("/api/openapi.json").get_json()
    components = spec["components"]
    assert components["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": components["securitySchemes"]["bearerAuth"]["description"],
    }
    assert set(components["schemas"]["Money"]["properties"]) == {"amount", "currency"}
    assert set(components["schemas"]["Error"]["properties"]) == {"error"}
    assert {"id", "title", "organisation", "needs", "created_at"} <= set(components["schemas"]["Project"]["properties"])
    assert {"goal", "pledged", "remaining", "deadline", "allow_overfunding"} <= set(components["schemas"]["Need"]["properties"])

    create = spec["paths"]["/api/v1/projects"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ProjectInput"}
    assert create["responses"]["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert {"201", "400", "401", "403", "422"} <= set(create["responses"])
    assert {"bearerAuth": []} in create["security"]

    listing = spec["paths"]["/api/v1/projects"]["get"]
    query = {parameter["name"] for parameter in listing["parameters"] if parameter["in"] == "query"}
    assert {"region", "country", "theme", "sector", "status", "q", "sort", "page", "per_page"} <= query

    pledge = spec["paths"]["/api/v1/pledges"]["post"]
    assert any(parameter["name"] == "Idempotency-Key" and parameter["in"] == "header" for parameter in pledge["parameters"])


# Projects: reading and listing


def test_project_list_shows_published_only_to_public(client, db, people):
    published = make_project(db, people, title="Published project")
    make_project(db, people, title="Draft project", status="draft")
    make_project(db, people, title="Submitted project", status="submitted")

    response = client.get("/api/v1/projects")

    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"items", "page", "per_page", "total"}
    assert [item["id"] for item in body["items"]] == [published.id]
    assert body["total"] == 1
    assert (body["page"], body["per_page"]) == (1, 20)


def test_project_list_shows_all_statuses_to_coordinator(client, db, people, auth):
    make_project(db, people, title="Published project")
    make_project(db, people, title="Draft project", status="draft")

    body = client.get("/api/v1/projects", headers=auth(people.coordinator)).get_json()
    drafts = client.get("/api/v1/projects?status=draft", headers=auth(people.coordinator)).get_json()

    assert body["total"] == 2
    assert [item["title"] for item in drafts["items"]] == ["Draft project"]


def test_project_list_filters(client, db, people):
    kenya = make_project(db, people, title="Kenya broadband", countries=("KE",), themes=("broadband",))
    peru = make_project(db, people, title="Peru spectrum plan", countries=("PE",), themes=("spectrum",))

    def ids(query: str) -> list[int]:
        response = client.get(f"/api/v1/projects?{query}")
        assert response.status_code == 200, response.get_data(as_text=True)
        return [item["id"] for item in response.get_json()["items"]]

    assert ids("region=africa") == [kenya.id]
    assert ids("region=americas") == [peru.id]
    assert ids("country=pe") == [peru.id]
    assert ids("theme=spectrum") == [peru.id]
    assert ids("sector=22040") == []
    assert ids("q=BROADBAND") == [kenya.id]
    assert ids("status=published&sort=title") == [kenya.id, peru.id]
    assert ids("status=draft") == []


def test_project_list_pages_do_not_overlap(client, db, people):
    created = {make_project(db, people, title=f"Project {number}").id for number in range(5)}

    pages = [client.get(f"/api/v1/projects?per_page=2&page={page}").get_json() for page in (1, 2, 3)]
    again = client.get("/api/v1/projects?per_page=2&page=1").get_json()

    seen = [item["id"] for page in pages for item in page["items"]]
    assert [len(page["items"]) for page in pages] == [2, 2, 1]
    assert len(seen) == len(set(seen))
    assert set(seen) == created
    assert all(page["total"] == 5 for page in pages)
    assert again["items"] == pages[0]["items"]


def test_project_list_sorts_equal_titles_by_id(client, db, people):
    ids = [make_project(db, people, title="Same title").id for _ in range(3)]

    first = client.get("/api/v1/projects?sort=title&per_page=2&page=1").get_json()
    second = client.get("/api/v1/projects?sort=title&per_page=2&page=2").get_json()

    assert [item["id"] for item in first["items"] + second["items"]] == sorted(ids)


@pytest.mark.parametrize("query, field", [
    ("per_page=101", "per_page"),
    ("per_page=0", "per_page"),
    ("page=0", "page"),
    ("page=abc", "page"),
    ("region=mars", "region"),
    ("country=XX", "country"),
    ("sort=random", "sort"),
    ("status=lost", "status"),
    ("colour=blue", "colour"),
    ("page=100000000000000000000", "page"),
])
def test_project_list_rejects_bad_query(client, db, query, field):
    fields = assert_error(client.get(f"/api/v1/projects?{query}"), 422, "invalid")
    assert field in fields


def test_project_read_returns_design_fields(client, db, people):
    project = make_project(db, people, goal_minor=480_000_000)

    response = client.get(f"/api/v1/projects/{project.id}")

    assert response.status_code == 200
    body = response.get_json()
    assert {"id", "title", "summary", "description", "status", "organisation", "countries", "regions",
            "themes", "sectors", "iati_identifier", "needs", "created_at", "updated_at"} <= set(body)
    assert body["organisation"] == {"id": people.owner.organisation_id, "name": "Ministry of ICT, Kenya"}
    assert body["status"] == "published"
    assert body["iati_identifier"] is None
    need = body["needs"][0]
    assert need["goal"] == {"amount": "4800000.00", "currency": "EUR"}
    assert need["pledged"] == {"amount": "0.00", "currency": "EUR"}
    assert need["remaining"] == {"amount": "4800000.00", "currency": "EUR"}
    assert need["deadline"] is None
    assert need["allow_overfunding"] is False
    assert body["created_at"].endswith("+00:00")


@pytest.mark.parametrize("viewer", [None, "donor", "other_owner"])
def test_unpublished_project_is_not_found(client, db, people, auth, viewer):
    project = make_project(db, people, status="submitted")
    headers = auth(getattr(people, viewer)) if viewer else {}

    assert_error(client.get(f"/api/v1/projects/{project.id}", headers=headers), 404, "not_found")


@pytest.mark.parametrize("viewer", ["owner", "coordinator"])
def test_unpublished_project_visible_to_its_organisation_and_coordinator(client, db, people, auth, viewer):
    project = make_project(db, people, status="draft")

    response = client.get(f"/api/v1/projects/{project.id}", headers=auth(getattr(people, viewer)))

    assert response.status_code == 200
    assert response.get_json()["status"] == "draft"


def test_unknown_project_is_not_found(client, db):
    assert_error(client.get("/api/v1/projects/999999"), 404, "not_found")
    assert_error(client.get("/api/v1/projects/100000000000000000000000"), 404)


# Projects: creating and updating


def test_create_project_with_needs(client, db, people, auth):
    response = send(client, "POST", "/api/v1/projects", project_body(), auth(people.owner))

    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.get_json()
    assert response.headers["Location"].endswith(f"/api/v1/projects/{body['id']}")
    assert body["status"] == "draft"
    assert body["organisation"]["name"] == "Ministry of ICT, Kenya"
    assert body["countries"] == ["KE"]
    assert body["sectors"] == ["22040"]
    assert body["start_date"] == "2026-01-01"
    assert [need["title"] for need in body["needs"]] == ["Feasibility study", "Fibre deployment"]
    assert body["needs"][0]["goal"] == {"amount": "200000.00", "currency": "EUR"}
    assert body["needs"][1]["goal"] == {"amount": "4800000.00", "currency": "EUR"}
    assert body["needs"][1]["deadline"] == "2026-06-30"
    assert body["needs"][1]["allow_overfunding"] is True
    project = db.session.get(Project, body["id"])
    assert project.source == "api"
    assert [need.goal_minor for need in project.needs] == [20_000_000, 480_000_000]


@pytest.mark.parametrize("amount, currency, stored, shown", [
    ("1500000", "JPY", 1_500_000, "1500000"),
    ("1.5", "BHD", 1_500, "1.500"),
    (1500, "USD", 150_000, "1500.00"),
])
def test_create_project_goal_in_currency_decimals(client, db, people, auth, amount, currency, stored, shown):
    body = project_body(needs=[{"title": "Study", "goal": {"amount": amount, "currency": currency}}])

    response = send(client, "POST", "/api/v1/projects", body, auth(people.owner))

    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.get_json()["needs"][0]["goal"] == {"amount": shown, "currency": currency}
    assert db.session.scalar(select(FundingNeed.goal_minor)) == stored


def test_create_project_anonymous_is_unauthorized(client, db):
    response = send(client, "POST", "/api/v1/projects", project_body())

    assert_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert count(db, Project) == 0


def test_create_project_by_donor_is_forbidden(client, db, people, auth):
    response = send(client, "POST", "/api/v1/projects", project_body(), auth(people.donor))

    assert_error(response, 403, "forbidden")
    assert count(db, Project) == 0


@pytest.mark.parametrize("change, field", [
    ({"colour": "blue"}, "colour"),
    ({"status": "published"}, "status"),
    ({"title": ""}, "title"),
    ({"title": None}, "title"),
    ({"countries": ["XX"]}, "countries"),
    ({"start_date": "2026-02-30"}, "start_date"),
    ({"start_date": "next year"}, "start_date"),
    ({"end_date": "2025-01-01"}, "end_date"),
    ({"needs": []}, "needs"),
    ({"needs": [{"title": "Study", "goal": {"amount": "10.00", "currency": "EUR"}, "deadline": "2026-13-01"}]}, "needs.0.deadline"),
    ({"needs": [{"title": "Study", "goal": {"amount": "10.00", "currency": "EUR"}, "allow_overfunding": "yes"}]}, "needs.0.allow_overfunding"),
    ({"needs": [{"title": "Study", "goal": {"amount": "10.00", "currency": "EUR"}, "size": 3}]}, "needs.0.size"),
    ({"needs": [{"title": "Study", "goal": {"amount": "10.00", "currency": "XYZ"}}]}, "needs.0.goal.currency"),
    ({"needs": [{"title": "Study", "goal": {"amount": "10.00"}}]}, "needs.0.goal.currency"),
    ({"needs": [{"title": "Study", "goal": "10.00"}]}, "needs.0.goal"),
    ({"needs": [{"title": "Study"}]}, "needs.0.goal"),
])
def test_create_project_rejects_invalid_field(client, db, people, auth, change, field):
    response = send(client, "POST", "/api/v1/projects", project_body(**change), auth(people.owner))

    fields = assert_error(response, 422, "invalid")
    assert field in fields, fields
    assert count(db, Project) == 0


def test_create_project_names_read_only_field(client, db, people, auth):
    response = send(client, "POST", "/api/v1/projects", project_body(id=5), auth(people.owner))

    fields = assert_error(response, 422)
    assert fields["id"].startswith("Read-only field")


@pytest.mark.parametrize("amount", ["-5", "0", "0.00", "abc", "1e3", "1.234", "", 1000000000001, "1000000000000.01", True, None, [], {}])
def test_create_project_rejects_bad_goal(client, db, people, auth, amount):
    body = project_body(needs=[{"title": "Study", "goal": {"amount": amount, "currency": "EUR"}}])

    response = send(client, "POST", "/api/v1/projects", body, auth(people.owner))

    fields = assert_error(response, 422, "invalid")
    assert "needs.0.goal" in fields, fields
    assert count(db, Project) == 0
    assert count(db, FundingNeed) == 0


def test_create_project_rejects_yen_fraction(client, db, people, auth):
    body = project_body(needs=[{"title": "Study", "goal": {"amount": "1.5", "currency": "JPY"}}])

    fields = assert_error(send(client, "POST", "/api/v1/projects", body, auth(people.owner)), 422)

    assert "JPY" in fields["needs.0.goal"]


def test_update_project_by_owner(client, db, people, auth):
    project = make_project(db, people, status="draft")
    need_id = project.needs[0].id
    body = {
        "title": "Rural broadband, phase 2",
        "needs": [
            {"id": need_id, "title": "Access points", "goal": {"amount": "2000.00", "currency": "EUR"}},
            {"title": "Training", "goal": {"amount": 500, "currency": "EUR"}, "deadline": "2027-01-31"},
        ],
    }

    response = send(client, "PATCH", f"/api/v1/projects/{project.id}", body, auth(people.owner))

    assert response.status_code == 200, response.get_data(as_text=True)
    result = response.get_json()
    assert result["title"] == "Rural broadband, phase 2"
    assert result["summary"] == "Access for rural counties."
    assert result["countries"] == ["KE"]
    assert result["needs"][0]["id"] == need_id
    assert result["needs"][0]["goal"] == {"amount": "2000.00", "currency": "EUR"}
    assert result["needs"][1]["deadline"] == "2027-01-31"


def test_update_need_keeps_deadline_left_out(client, db, people, auth):
    response = send(client, "POST", "/api/v1/projects", project_body(), auth(people.owner))
    project = response.get_json()
    needs = [
        {"id": need["id"], "title": need["title"], "goal": need["goal"]}
        for need in project["needs"]
    ]

    updated = send(client, "PATCH", f"/api/v1/projects/{project['id']}", {"needs": needs}, auth(people.owner)).get_json()

    assert updated["needs"][1]["deadline"] == "2026-06-30"
    assert updated["needs"][1]["allow_overfunding"] is True
    assert [need["id"] for need in updated["needs"]] == [need["id"] for need in project["needs"]]


def test_update_project_removes_needs_left_out(client, db, people, auth):
    body = project_body(needs=[{"title": f"Need {number}", "goal": {"amount": "10.00", "currency": "EUR"}} for number in range(3)])
    project = send(client, "POST", "/api/v1/projects", body, auth(people.owner)).get_json()
    first = project["needs"][0]
    keep = [{"id": first["id"], "title": first["title"], "goal": first["goal"]}]

    response = send(client, "PATCH", f"/api/v1/projects/{project['id']}", {"needs": keep}, auth(people.owner))

    assert response.status_code == 200
    assert [need["id"] for need in response.get_json()["needs"]] == [first["id"]]
    assert count(db, FundingNeed) == 1


def test_update_project_keeps_fields_left_out(client, db, people, auth):
    project = make_project(db, people, status="draft")

    response = send(client, "PATCH", f"/api/v1/projects/{project.id}", {"summary": "New summary."}, auth(people.owner))

    assert response.status_code == 200
    body = response.get_json()
    assert body["summary"] == "New summary."
    assert body["title"] == "Rural broadband for Kenya"
    assert body["needs"][0]["goal"] == {"amount": "1000.00", "currency": "EUR"}


def test_update_published_project_of_other_organisation_is_forbidden(client, db, people, auth):
    project = make_project(db, people)

    response = send(client, "PATCH", f"/api/v1/projects/{project.id}", {"title": "Taken over"}, auth(people.other_owner))

    assert_error(response, 403, "forbidden")
    assert db.session.get(Project, project.id).title == "Rural broadband for Kenya"


def test_update_draft_of_other_organisation_is_not_found(client, db, people, auth):
    project = make_project(db, people, status="draft")

    response = send(client, "PATCH", f"/api/v1/projects/{project.id}", {"title": "Taken over"}, auth(people.other_owner))

    assert_error(response, 404)


def test_update_published_project_is_conflict(client, db, people, auth):
    project = make_project(db, people)

    response = send(client, "PATCH", f"/api/v1/projects/{project.id}", {"title": "Changed"}, auth(people.owner))

    assert_error(response, 409, "conflict")


def test_update_project_without_fields_is_invalid(client, db, people, auth):
    project = make_project(db, people, status="draft")

    assert_error(send(client, "PATCH", f"/api/v1/projects/{project.id}", {}, auth(people.owner)), 422)


def test_update_project_rejects_bad_goal(client, db, people, auth):
    project = make_project(db, people, status="draft")
    body = {"needs": [{"title": "Study", "goal": {"amount": "-1", "currency": "EUR"}}]}

    fields = assert_error(send(client, "PATCH", f"/api/v1/projects/{project.id}", body, auth(people.owner)), 422)

    assert "needs.0.goal" in fields
    assert db.session.get(Project, project.id).needs[0].goal_minor == 100_000


# Projects: workflow


def test_submit_publish_and_return(client, db, people, auth):
    first = make_project(db, people, title="First", status="draft")
    second = make_project(db, people, title="Second", status="draft")

    submitted = send(client, "POST", f"/api/v1/projects/{first.id}/submit", headers=auth(people.owner))
    published = send(client, "POST", f"/api/v1/projects/{first.id}/publish", {}, auth(people.coordinator))
    send(client, "POST", f"/api/v1/projects/{second.id}/submit", headers=auth(people.owner))
    returned = send(client, "POST", f"/api/v1/projects/{second.id}/return", {"reason": "Add a budget."}, auth(people.coordinator))

    assert submitted.status_code == 200
    assert submitted.get_json()["status"] == "submitted"
    assert published.status_code == 200
    assert published.get_json()["status"] == "published"
    assert returned.status_code == 200
    assert returned.get_json()["status"] == "returned"
    assert returned.get_json()["return_reason"] == "Add a budget."


def test_publish_by_owner_is_forbidden(client, db, people, auth):
    project = make_project(db, people, status="submitted")

    assert_error(send(client, "POST", f"/api/v1/projects/{project.id}/publish", headers=auth(people.owner)), 403)
    assert db.session.get(Project, project.id).status == "submitted"


def test_submit_by_other_owner_is_forbidden(client, db, people, auth):
    project = make_project(db, people)

    assert_error(send(client, "POST", f"/api/v1/projects/{project.id}/submit", headers=auth(people.other_owner)), 403)


def test_publish_draft_is_conflict(client, db, people, auth):
    project = make_project(db, people, status="draft")

    assert_error(send(client, "POST", f"/api/v1/projects/{project.id}/publish", headers=auth(people.coordinator)), 409, "conflict")


def test_return_without_reason_is_invalid(client, db, people, auth):
    project = make_project(db, people, status="submitted")

    for body in ({}, {"reason": ""}):
        fields = assert_error(send(client, "POST", f"/api/v1/projects/{project.id}/return", body, auth(people.coordinator)), 422)
        assert "reason" in fields
    assert db.session.get(Project, project.id).status == "submitted"


def test_action_rejects_unknown_field(client, db, people, auth):
    project = make_project(db, people, status="draft")

    fields = assert_error(send(client, "POST", f"/api/v1/projects/{project.id}/submit", {"force": True}, auth(people.owner)), 422)

    assert "force" in fields


# Malformed bodies


@pytest.mark.parametrize("raw", ["{", "[1, 2]", '"text"', "null", "", '{"title": NaN}', '{"a": Infinity}', "\xff"])
def test_malformed_body_is_bad_request(client, db, people, auth, raw):
    response = send(client, "POST", "/api/v1/projects", headers=auth(people.owner), raw=raw)

    assert_error(response, 400, "malformed_json")
    assert count(db, Project) == 0


def test_deeply_nested_body_is_bad_request(client, db, people, auth):
    raw = "[" * 100_000 + "]" * 100_000

    assert_error(send(client, "POST", "/api/v1/projects", headers=auth(people.owner), raw=raw), 400)


# Funders


def make_funder(db, user, name, kind="institution", regions=(), themes=(), ticket=None):
    funder = funder_for_user(user)
    low, high = ticket or (None, None)
    budget = high * 10 if high else None
    data = FunderInput(name=name, kind=kind, regions=list(regions), themes=list(themes),
                       ticket_min_minor=low, ticket_max_minor=high, annual_budget_minor=budget)
    update_funder(user, funder, data)
    db.session.commit()
    return funder


def test_funder_list_and_read(client, db, people):
    commission = make_funder(db, people.donor, "European Commission", regions=["africa"], themes=["broadband"],
                             ticket=(50_000_000, 500_000_000))
    bank = make_funder(db, people.other_donor, "World Bank", regions=["americas"])

    listing = client.get("/api/v1/funders").get_json()
    africa = client.get("/api/v1/funders?region=africa").get_json()
    profile = client.get(f"/api/v1/funders/{commission.id}")

    assert [item["name"] for item in listing["items"]] == ["European Commission", "World Bank"]
    assert listing["total"] == 2
    assert [item["id"] for item in africa["items"]] == [commission.id]
    assert profile.status_code == 200
    body = profile.get_json()
    assert {"id", "name", "kind", "regions", "countries", "themes", "sectors", "ticket_min", "ticket_max", "annual_budget"} <= set(body)
    assert body["kind"] == "institution"
    assert body["regions"] == ["africa"]
    assert body["ticket_min"] == {"amount": "500000.00", "currency": "EUR"}
    assert body["ticket_max"] == {"amount": "5000000.00", "currency": "EUR"}
    assert body["annual_budget"] == {"amount": "50000000.00", "currency": "EUR"}
    assert client.get(f"/api/v1/funders/{bank.id}").get_json()["ticket_min"] is None


def test_funder_list_pages_and_filters(client, db, people):
    make_funder(db, people.donor, "European Commission")

    assert assert_error(client.get("/api/v1/funders?kind=robot"), 422)["kind"]
    assert assert_error(client.get("/api/v1/funders?per_page=500"), 422)["per_page"]
    assert client.get("/api/v1/funders?kind=individual").get_json()["total"] == 0


def test_unknown_funder_is_not_found(client, db):
    assert_error(client.get("/api/v1/funders/424242"), 404)


# Pledges: creation


def test_create_pledge(client, db, people, auth):
    project = make_project(db, people)
    need_id = project.needs[0].id

    response = post_pledge(client, auth, people.donor, pledge_body(need_id, "250.50"))

    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.get_json()
    assert response.headers["Location"].endswith(f"/api/v1/pledges/{body['id']}")
    assert body["need_id"] == need_id
    assert body["project_id"] == project.id
    assert body["funder_id"] == funder_for_user(people.donor, create=False).id
    assert body["amount"] == {"amount": "250.50", "currency": "EUR"}
    assert body["disbursed"] == {"amount": "0.00", "currency": "EUR"}
    assert body["state"] == "pledged"
    assert body["kind"] == "commitment"
    assert body["created_at"].endswith("+00:00")
    assert db.session.get(FundingNeed, need_id).pledged_minor == 25_050


def test_pledge_idempotency_key_returns_first_pledge(client, db, people, auth):
    need_id = make_project(db, people).needs[0].id

    first = post_pledge(client, auth, people.donor, pledge_body(need_id))
    second = post_pledge(client, auth, people.donor, pledge_body(need_id))

    assert first.status_code == 201
    assert second.status_code == 200
    assert second.get_json() == first.get_json()
    assert count(db, Pledge) == 1
    assert count(db, PledgeEvent) == 1
    assert db.session.get(FundingNeed, need_id).pledged_minor == 25_000


def test_pledge_idempotency_key_with_other_amount_is_conflict(client, db, people, auth):
    need_id = make_project(db, people).needs[0].id
    post_pledge(client, auth, people.donor, pledge_body(need_id))

    response = post_pledge(client, auth, people.donor, pledge_body(need_id, "300.00"))

    assert "Idempotency-Key" in assert_error(response, 409, "conflict")
    assert count(db, Pledge) == 1


def test_pledge_idempotency_key_is_per_user(client, db, people, auth):
    need_id = make_project(db, people).needs[0].id

    first = post_pledge(client, auth, people.donor, pledge_body(need_id))
    other = post_pledge(client, auth, people.other_donor, pledge_body(need_id))

    assert (first.status_code, other.status_code) == (201, 201)
    assert first.get_json()["id"] != other.get_json()["id"]


def test_pledge_without_idempotency_key_is_invalid(client, db, people, auth):
    need_id = make_project(db, people).needs[0].id

    response = send(client, "POST", "/api/v1/pledges", pledge_body(need_id), auth(people.donor))

    assert "Idempotency-Key" in assert_error(response, 422)
    assert count(db, Pledge) == 0


def test_pledge_with_too_long_key_is_invalid(client, db, people, auth):
    need_id = make_project(db, people).needs[0].id

    response = post_pledge(client, auth, people.donor, pledge_body(need_id), key="k" * 201)

    assert "Idempotency-Key" in assert_error(response, 422)
    assert count(db, Pledge) == 0


def test_pledge_over_goal_is_conflict_and_writes_nothing(client, db, people, auth):
    need_id = make_project(db, people, goal_minor=100_000).needs[0].id
    make_pledge(db, people.other_donor, need_id, 60_000)
    before = (count(db, Pledge), count(db, PledgeEvent))

    response = post_pledge(client, auth, people.donor, pledge_body(need_id, "400.01"))

    assert_error(response, 409, "conflict")
    assert (count(db, Pledge), count(db, PledgeEvent)) == before
    assert db.session.get(FundingNeed, need_id).pledged_minor == 60_000


def test_pledge_up_to_goal_is_accepted(client, db, people, auth):
    need_id = make_project(db, people, goal_minor=100_000).needs[0].id
    make_pledge(db, people.other_donor, need_id, 60_000)

    response = post_pledge(client, auth, people.donor, pledge_body(need_id, "400.00"))

    assert response.status_code == 201
    assert db.session.get(FundingNeed, need_id).pledged_minor == 100_000


@pytest.mark.parametrize("amount_json", [
    '"-5.00"', "-5", '"0"', "0", "0.00", '"abc"', '"1e3"', '"1.234"', "1.234", '"1000000000001"',
    "1000000000001", "1e400", '""', "null", "true", "[]", '{"amount": "5"}', "1E-700",
])
def test_pledge_rejects_bad_amount(client, db, people, auth, amount_json):
    need_id = make_project(db, people, goal_minor=10**14).needs[0].id
    raw = f'{{"need_id": {need_id}, "amount": {amount_json}, "currency": "EUR", "kind": "commitment"}}'

    response = post_pledge(client, auth, people.donor, raw=raw)

    fields = assert_error(response, 422, "invalid")
    assert "amount" in fields, fields
    assert count(db, Pledge) == 0
    assert count(db, PledgeEvent) == 0


def test_pledge_rejects_yen_fraction(client, db, people, auth):
    need_id = make_project(db, people, goal_minor=1_000_000, currency="JPY").needs[0].id

    response = post_pledge(client, auth, people.donor, pledge_body(need_id, "1.5", "JPY"))

    assert "JPY" in assert_error(response, 422)["amount"]
    assert count(db, Pledge) == 0


@pytest.mark.parametrize("amount_json, minor, shown", [
    ("1.5", 150, "1.50"),
    ("12", 1_200, "12.00"),
    ("1.50", 150, "1.50"),
    ("2E+1", 2_000, "20.00"),
])
def test_pledge_accepts_exact_json_number(client, db, people, auth, amount_json, minor, shown):
    # JSON numbers are parsed as Decimal, so 1.5 is exactly one and a half: no float is involved.
    need_id = make_project(db, people).needs[0].id
    raw = f'{{"need_id": {need_id}, "amount": {amount_json}, "currency": "EUR"}}'

    response = post_pledge(client, auth, people.donor, raw=raw)

    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.get_json()["amount"] == {"amount": shown, "currency": "EUR"}
    assert db.session.scalar(select(Pledge.amount_minor)) == minor


@pytest.mark.parametrize("change, field", [
    ({"currency": "XYZ"}, "currency"),
    ({"currency": "USD"}, "currency"),
    ({"need_id": "1"}, "need_id"),
    ({"need_id": True}, "need_id"),
    ({"need_id": 10**30}, "need_id"),
    ({"kind": "cash"}, "kind"),
    ({"kind": "card"}, "kind"),
    ({"state": "confirmed"}, "state"),
    ({"note": "thanks"}, "note"),
])
def test_pledge_rejects_invalid_field(client, db, people, auth, change, field):
    need_id = make_project(db, people).needs[0].id

    response = post_pledge(client, auth, people.donor, {**pledge_body(need_id), **change})

    assert field in assert_error(response, 422, "invalid")
    assert count(db, Pledge) == 0


def test_pledge_to_hidden_need_not_found(client, db, people, auth):
    draft_need_id = make_project(db, people, status="draft").needs[0].id

    assert_error(post_pledge(client, auth, people.donor, pledge_body(draft_need_id)), 404)
    assert_error(post_pledge(client, auth, people.donor, pledge_body(999_999), key="other"), 404)
    assert count(db, Pledge) == 0


def test_pledge_by_owner_is_forbidden(client, db, people, auth):
    need_id = make_project(db, people).needs[0].id

    assert_error(post_pledge(client, auth, people.owner, pledge_body(need_id)), 403)
    assert count(db, Pledge) == 0


def test_pledge_anonymous_is_unauthorized(client, db, people):
    need_id = make_project(db, people).needs[0].id

    response = send(client, "POST", "/api/v1/pledges", pledge_body(need_id), {"Idempotency-Key": KEY})

    assert_error(response, 401)
    assert count(db, Pledge) == 0


# Pledges: reading and coordinator actions


def test_pledge_read_access(client, db, people, auth):
    need_id = make_project(db, people).needs[0].id
    pledge = make_pledge(db, people.donor, need_id)
    url = f"/api/v1/pledges/{pledge.id}"

    assert client.get(url, headers=auth(people.donor)).get_json()["id"] == pledge.id
    assert client.get(url, headers=auth(people.coordinator)).status_code == 200
    assert_error(client.get(url, headers=auth(people.other_donor)), 404)
    assert_error(client.get(url), 401)
    assert_error(client.get("/api/v1/pledges/999999", headers=auth(people.coordinator)), 404)


def test_confirm_pledge_by_coordinator(client, db, people, auth):
    need_id = make_project(db, people).needs[0].id
    pledge = make_pledge(db, people.donor, need_id)

    response = send(client, "POST", f"/api/v1/pledges/{pledge.id}/confirm", headers=auth(people.coordinator))
    again = send(client, "POST", f"/api/v1/pledges/{pledge.id}/confirm", headers=auth(people.coordinator))

    assert response.status_code == 200
    assert response.get_json()["state"] == "confirmed"
    assert_error(again, 409, "conflict")
    assert count(db, PledgeEvent) == 2


def test_confirm_pledge_by_donor_is_forbidden(client, db, people, auth):
    need_id = make_project(db, people).needs[0].id
    pledge = make_pledge(db, people.donor, need_id)

    assert_error(send(client, "POST", f"/api/v1/pledges/{pledge.id}/confirm", headers=auth(people.donor)), 403, "forbidden")
    assert db.session.get(Pledge, pledge.id).state == "pledged"
    assert count(db, PledgeEvent) == 1


def test_cancel_pledge_needs_reason(client, db, people, auth):
    need_id = make_project(db, people).needs[0].id
    pledge = make_pledge(db, people.donor, need_id)
    url = f"/api/v1/pledges/{pledge.id}/cancel"

    missing = send(client, "POST", url, {}, auth(people.coordinator))
    cancelled = send(client, "POST", url, {"reason": "Donor withdrew."}, auth(people.coordinator))

    assert "reason" in assert_error(missing, 422)
    assert cancelled.status_code == 200
    assert cancelled.get_json()["state"] == "cancelled"
    assert db.session.get(FundingNeed, need_id).pledged_minor == 0


def test_disburse_pledge_in_parts(client, db, people, auth):
    need_id = make_project(db, people).needs[0].id
    pledge = make_pledge(db, people.donor, need_id, 25_000)
    act(people.coordinator, pledge.id, "confirm")
    db.session.commit()
    url = f"/api/v1/pledges/{pledge.id}/disburse"

    part = send(client, "POST", url, {"amount": "100.00"}, auth(people.coordinator))
    too_much = send(client, "POST", url, {"amount": "150.01"}, auth(people.coordinator))
    rest = send(client, "POST", url, {"amount": 150, "currency": "EUR"}, auth(people.coordinator))

    assert part.status_code == 200, part.get_data(as_text=True)
    assert part.get_json()["state"] == "partly_disbursed"
    assert part.get_json()["disbursed"] == {"amount": "100.00", "currency": "EUR"}
    assert_error(too_much, 409)
    assert rest.get_json()["state"] == "disbursed"
    assert rest.get_json()["disbursed"] == {"amount": "250.00", "currency": "EUR"}


@pytest.mark.parametrize("body, field", [
    ({"amount": "-1"}, "amount"),
    ({"amount": "1.001"}, "amount"),
    ({"amount": "abc"}, "amount"),
    ({}, "amount"),
    ({"amount": "10.00", "currency": "USD"}, "currency"),
])
def test_disburse_rejects_bad_amount(client, db, people, auth, body, field):
    need_id = make_project(db, people).needs[0].id
    pledge = make_pledge(db, people.donor, need_id)
    act(people.coordinator, pledge.id, "confirm")
    db.session.commit()

    response = send(client, "POST", f"/api/v1/pledges/{pledge.id}/disburse", body, auth(people.coordinator))

    assert field in assert_error(response, 422)
    assert db.session.get(Pledge, pledge.id).disbursed_minor == 0


def test_disburse_by_donor_is_forbidden(client, db, people, auth):
    need_id = make_project(db, people).needs[0].id
    pledge = make_pledge(db, people.donor, need_id)

    assert_error(send(client, "POST", f"/api/v1/pledges/{pledge.id}/disburse", {"amount": "1.00"}, auth(people.donor)), 403)


# Matches


def make_match(db, project, funder, score=0.8, status="suggested") -> Match:
    match = Match(
        project_id=project.id, need_id=project.needs[0].id, funder_id=funder.id, score=score,
        parts={"region": 1.0, "theme": 1.0, "ticket": 0.5, "capacity": 0.5, "time": 1.0},
        weights={"region": 0.35, "theme": 0.35, "ticket": 0.15, "capacity": 0.1, "time": 0.05},
        explanation="Africa and broadband match.", status=status, inputs_digest="0" * 64,
    )
    db.session.add(match)
    db.session.commit()
    return match


@pytest.fixture
def matches(db, people):
    """Two suggestions for one project: one for each donor's funder."""
    project = make_project(db, people)
    commission = make_funder(db, people.donor, "European Commission")
    bank = make_funder(db, people.other_donor, "World Bank")
    return make_match(db, project, commission, 0.9), make_match(db, project, bank, 0.6)


def test_match_list_by_role(client, db, people, auth, matches):
    own, other = matches

    everything = client.get("/api/v1/matches", headers=auth(people.coordinator)).get_json()
    donor = client.get("/api/v1/matches", headers=auth(people.donor)).get_json()
    owner = client.get("/api/v1/matches", headers=auth(people.owner)).get_json()
    stranger = client.get("/api/v1/matches", headers=auth(people.other_owner)).get_json()

    assert [item["id"] for item in everything["items"]] == [own.id, other.id]
    assert everything["total"] == 2
    assert [item["id"] for item in donor["items"]] == [own.id]
    assert owner["total"] == 2
    assert stranger["total"] == 0
    item = everything["items"][0]
    assert {"id", "project_id", "need_id", "funder_id", "score", "parts", "explanation", "status"} <= set(item)
    assert item["score"] == 0.9
    assert item["parts"]["region"] == 1.0


def test_match_list_filters_and_pages(client, db, people, auth, matches):
    own, other = matches
    headers = auth(people.coordinator)

    by_funder = client.get(f"/api/v1/matches?funder_id={other.funder_id}", headers=headers).get_json()
    second_page = client.get("/api/v1/matches?per_page=1&page=2", headers=headers).get_json()

    assert [item["id"] for item in by_funder["items"]] == [other.id]
    assert [item["id"] for item in second_page["items"]] == [other.id]
    assert "status" in assert_error(client.get("/api/v1/matches?status=maybe", headers=headers), 422)


def test_match_list_anonymous_is_unauthorized(client, db):
    assert_error(client.get("/api/v1/matches"), 401)


def test_accept_and_reject_matches(client, db, people, auth, matches):
    own, other = matches
    headers = auth(people.coordinator)

    accepted = send(client, "POST", f"/api/v1/matches/{own.id}/accept", headers=headers)
    no_reason = send(client, "POST", f"/api/v1/matches/{other.id}/reject", {}, headers)
    rejected = send(client, "POST", f"/api/v1/matches/{other.id}/reject", {"reason": "Budget is committed."}, headers)
    again = send(client, "POST", f"/api/v1/matches/{own.id}/accept", {"reason": "Twice."}, headers)

    assert accepted.status_code == 200
    assert accepted.get_json()["status"] == "accepted"
    assert "reason" in assert_error(no_reason, 422)
    assert rejected.get_json()["status"] == "rejected"
    assert rejected.get_json()["review_reason"] == "Budget is committed."
    assert_error(again, 409)


def test_accept_match_by_donor_is_forbidden(client, db, people, auth, matches):
    own, _ = matches

    assert_error(send(client, "POST", f"/api/v1/matches/{own.id}/accept", headers=auth(people.donor)), 403)
    assert db.session.get(Match, own.id).status == "suggested"


def test_read_match(client, db, people, auth, matches):
    own, other = matches

    assert client.get(f"/api/v1/matches/{own.id}", headers=auth(people.donor)).get_json()["id"] == own.id
    assert_error(client.get(f"/api/v1/matches/{other.id}", headers=auth(people.donor)), 404)


# Statistics


def entry(rows: list[dict], key: str, value: str) -> dict:
    return next(row for row in rows if row[key] == value)


def test_stats_totals_by_region_theme_and_status(client, db, people):
    kenya = make_project(db, people, title="Kenya", goal_minor=100_000, countries=("KE",), themes=("broadband",))
    make_project(db, people, title="Ghana", goal_minor=50_000, currency="USD", countries=("GH",), themes=("spectrum",))
    make_project(db, people, title="Japan", goal_minor=7_000, currency="JPY", countries=("JP",), themes=("broadband",))
    make_project(db, people, title="Draft", goal_minor=999_999, countries=("KE",), status="draft")
    make_pledge(db, people.donor, kenya.needs[0].id, 30_000)

    response = client.get("/api/v1/stats")

    assert response.status_code == 200
    body = response.get_json()
    assert body["total"]["projects"] == 3
    assert body["total"]["goal"] == [
        {"amount": "1000.00", "currency": "EUR"},
        {"amount": "7000", "currency": "JPY"},
        {"amount": "500.00", "currency": "USD"},
    ]
    africa = entry(body["by_region"], "region", "africa")
    assert africa["projects"] == 2
    assert africa["goal"] == [{"amount": "1000.00", "currency": "EUR"}, {"amount": "500.00", "currency": "USD"}]
    assert africa["pledged"] == [{"amount": "300.00", "currency": "EUR"}, {"amount": "0.00", "currency": "USD"}]
    broadband = entry(body["by_theme"], "theme", "broadband")
    assert broadband["projects"] == 2
    assert broadband["goal"] == [{"amount": "1000.00", "currency": "EUR"}, {"amount": "7000", "currency": "JPY"}]
    assert entry(body["by_region"], "region", "europe") == {"region": "europe", "projects": 0, "goal": [], "pledged": []}
    assert [row["status"] for row in body["by_status"]] == ["published", "funded", "closed"]
    assert entry(body["by_status"], "status", "published")["projects"] == 3


def test_stats_include_drafts_for_coordinator(client, db, people, auth):
    make_project(db, people, title="Draft", goal_minor=999_999, status="draft")

    public = client.get("/api/v1/stats").get_json()
    coordinator = client.get("/api/v1/stats", headers=auth(people.coordinator)).get_json()

    assert public["total"]["projects"] == 0
    draft = entry(coordinator["by_status"], "status", "draft")
    assert draft["projects"] == 1
    assert draft["goal"] == [{"amount": "9999.99", "currency": "EUR"}]


# Authentication


def test_bearer_token_authenticates(client, db, people, auth):
    response = send(client, "POST", "/api/v1/projects", project_body(), auth(people.owner))

    assert response.status_code == 201
    assert db.session.get(Project, response.get_json()["id"]).created_by_id == people.owner.id


def test_revoked_token_is_unauthorized(client, db, people, auth):
    headers = auth(people.owner)
    token = db.session.scalar(select(ApiToken).where(ApiToken.user_id == people.owner.id))
    token.revoked_at = utcnow()
    db.session.commit()

    response = send(client, "POST", "/api/v1/projects", project_body(), headers)

    assert_error(response, 401, "unauthorized")
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert count(db, Project) == 0


@pytest.mark.parametrize("header", ["Bearer fin_not-a-real-token", "Bearer ", "bearer fin_unknown"])
def test_unknown_token_is_unauthorized_even_for_public_reads(client, db, header):
    assert_error(client.get("/api/v1/projects", headers={"Authorization": header}), 401)


def test_token_of_inactive_user_is_unauthorized(client, db, people, auth):
    headers = auth(people.owner)
    people.owner.active = False
    db.session.commit()

    assert_error(client.get("/api/v1/projects", headers=headers), 401)


def test_session_cookie_authenticates(client, db, people, login):
    login(people.owner)

    response = send(client, "POST", "/api/v1/projects", project_body())

    assert response.status_code == 201, response.get_data(as_text=True)


@pytest.fixture
def csrf_on(app, monkeypatch):
    monkeypatch.setitem(app.config, "WTF_CSRF_ENABLED", True)


def csrf_token_for(app, client) -> str:
    """Return a CSRF token valid for the test client's session, as a page would embed it."""
    with app.test_request_context():
        token = generate_csrf()
        raw = flask.session["csrf_token"]
    with client.session_transaction() as session:
        session["csrf_token"] = raw
    return token


def test_session_write_without_csrf_token_is_rejected(client, db, people, login, csrf_on):
    login(people.owner)

    response = send(client, "POST", "/api/v1/projects", project_body())

    assert_error(response, 400, "csrf_failed")
    assert count(db, Project) == 0


def test_session_write_with_csrf_token_is_accepted(app, client, db, people, login, csrf_on):
    login(people.owner)
    token = csrf_token_for(app, client)

    response = send(client, "POST", "/api/v1/projects", project_body(), {"X-CSRFToken": token})

    assert response.status_code == 201, response.get_data(as_text=True)


def test_anonymous_write_is_unauthorized_with_csrf_on(client, db, csrf_on):
    assert_error(send(client, "POST", "/api/v1/projects", project_body()), 401)


def test_session_read_needs_no_csrf_token(client, db, people, login, csrf_on):
    login(people.coordinator)

    assert client.get("/api/v1/projects").status_code == 200


def test_bearer_write_needs_no_csrf_token(client, db, people, auth, csrf_on):
    response = send(client, "POST", "/api/v1/projects", project_body(), auth(people.owner))

    assert response.status_code == 201


def test_unknown_api_path_is_json_not_found(client, db):
    assert_error(client.get("/api/v1/nothing-here"), 404)
