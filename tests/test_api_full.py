"""Tests of the API operations beyond the first version and of its documentation.

They cover the owner's project list and withdrawal, funder profile edits, match funds, pledge
lists and ledgers, cancellation by donors, bulk review, allocation runs and exchange rates. The
last tests check the OpenAPI document of every operation and the HTML reference.
"""

import re

import pytest
from sqlalchemy import select

from financing.core.time import utcnow
from financing.matching.allocation_models import AllocationRow, AllocationRun
from financing.matching.models import Match
from financing.pledges.models import ExchangeRate, MatchFund, Pledge, PledgeEvent
from financing.pledges.services import act
from financing.projects.models import Project
from tests.test_api import (
    assert_error,
    count,
    make_funder,
    make_pledge,
    make_project,
    post_pledge,
    pledge_body,
    send,
)


# Projects: the owner's list and withdrawal


def test_mine_lists_own_projects_in_every_status(client, db, people, auth):
    draft = make_project(db, people, title="Draft study", status="draft")
    published = make_project(db, people, title="Published access")
    make_project(db, people, title="Other draft", status="draft", owner=people.other_owner)

    body = client.get("/api/v1/projects?mine=true", headers=auth(people.owner)).get_json()
    public = client.get("/api/v1/projects").get_json()

    assert {item["id"] for item in body["items"]} == {draft.id, published.id}
    assert body["total"] == 2
    assert [item["id"] for item in public["items"]] == [published.id]


def test_mine_filters_by_status(client, db, people, auth):
    draft = make_project(db, people, title="Draft study", status="draft")
    make_project(db, people, title="Published access")

    body = client.get("/api/v1/projects?mine=true&status=draft", headers=auth(people.owner)).get_json()

    assert [item["id"] for item in body["items"]] == [draft.id]


def test_mine_anonymous_is_unauthorized(client, db):
    assert_error(client.get("/api/v1/projects?mine=true"), 401, "unauthorized")


@pytest.mark.parametrize("value", ["yes", "1", "TRUE", ""])
def test_mine_rejects_other_values(client, db, people, auth, value):
    fields = assert_error(client.get(f"/api/v1/projects?mine={value}", headers=auth(people.owner)), 422)

    assert "mine" in fields


def test_withdraw_project_by_owner(client, db, people, auth):
    project = make_project(db, people)

    response = send(client, "POST", f"/api/v1/projects/{project.id}/withdraw", headers=auth(people.owner))

    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["status"] == "withdrawn"
    db.session.expire_all()
    assert db.session.get(Project, project.id).status == "withdrawn"


def test_withdraw_twice_is_conflict(client, db, people, auth):
    project = make_project(db, people, status="draft")
    send(client, "POST", f"/api/v1/projects/{project.id}/withdraw", headers=auth(people.owner))

    assert_error(send(client, "POST", f"/api/v1/projects/{project.id}/withdraw", headers=auth(people.owner)), 409, "conflict")


def test_withdraw_by_other_organisation_is_forbidden(client, db, people, auth):
    project = make_project(db, people)

    assert_error(send(client, "POST", f"/api/v1/projects/{project.id}/withdraw", headers=auth(people.other_owner)), 403)
    db.session.expire_all()
    assert db.session.get(Project, project.id).status == "published"


# Funder profiles


def test_own_funder_missing_before_update(client, db, people, auth):
    assert_error(client.get("/api/v1/funders/me", headers=auth(people.donor)), 404, "not_found")


def test_own_funder_profile_created_by_first_update(client, db, people, auth):
    body = {
        "name": "European Commission", "regions": ["africa"], "themes": ["broadband"],
        "ticket_min": {"amount": "500000.00", "currency": "EUR"},
        "ticket_max": {"amount": "5000000.00", "currency": "EUR"},
        "annual_budget": {"amount": "20000000", "currency": "EUR"},
        "decision_days": 90,
    }

    response = send(client, "PATCH", "/api/v1/funders/me", body, auth(people.donor))

    assert response.status_code == 200, response.get_data(as_text=True)
    funder = response.get_json()
    assert funder["currency"] == "EUR"
    assert funder["ticket_min"] == {"amount": "500000.00", "currency": "EUR"}
    assert funder["annual_budget"] == {"amount": "20000000.00", "currency": "EUR"}
    assert funder["regions"] == ["africa"]
    assert funder["decision_days"] == 90
    assert client.get("/api/v1/funders/me", headers=auth(people.donor)).get_json()["id"] == funder["id"]


def test_funder_update_keeps_fields_left_out(client, db, people, auth):
    funder = make_funder(db, people.donor, "European Commission", regions=("africa",), ticket=(50_000_000, 500_000_000))

    response = send(client, "PATCH", "/api/v1/funders/me", {"description": "Grants for connectivity."}, auth(people.donor))

    body = response.get_json()
    assert response.status_code == 200
    assert body["id"] == funder.id
    assert body["description"] == "Grants for connectivity."
    assert body["regions"] == ["africa"]
    assert body["ticket_min"] == {"amount": "500000.00", "currency": "EUR"}


def test_funder_update_null_clears_amount(client, db, people, auth):
    make_funder(db, people.donor, "European Commission", ticket=(50_000_000, 500_000_000))

    body = send(client, "PATCH", "/api/v1/funders/me", {"ticket_max": None}, auth(people.donor)).get_json()

    assert body["ticket_max"] is None
    assert body["ticket_min"] == {"amount": "500000.00", "currency": "EUR"}


def test_funder_amount_in_other_currency_is_invalid(client, db, people, auth):
    make_funder(db, people.donor, "European Commission")
    body = {"ticket_min": {"amount": "100.00", "currency": "EUR"}, "ticket_max": {"amount": "900.00", "currency": "USD"}}

    fields = assert_error(send(client, "PATCH", "/api/v1/funders/me", body, auth(people.donor)), 422, "invalid")

    assert set(fields) == {"ticket_max"}
    assert "USD" in fields["ticket_max"]


def test_funder_currency_change_needs_stored_amounts_again(client, db, people, auth):
    make_funder(db, people.donor, "European Commission", ticket=(50_000_000, 500_000_000))

    fields = assert_error(send(client, "PATCH", "/api/v1/funders/me", {"currency": "USD"}, auth(people.donor)), 422)
    changed = send(client, "PATCH", "/api/v1/funders/me", {
        "currency": "USD", "ticket_min": None, "ticket_max": {"amount": "1000000.00", "currency": "USD"},
        "annual_budget": None,
    }, auth(people.donor))

    assert set(fields) == {"ticket_min", "ticket_max", "annual_budget"}
    assert changed.status_code == 200, changed.get_data(as_text=True)
    assert changed.get_json()["currency"] == "USD"
    assert changed.get_json()["ticket_max"] == {"amount": "1000000.00", "currency": "USD"}


@pytest.mark.parametrize(("body", "field"), [
    ({"kind": "bank"}, "kind"),
    ({"decision_days": 4000}, "decision_days"),
    ({"decision_days": "30"}, "decision_days"),
    ({"countries": ["XX"]}, "countries"),
    ({"ticket_min": {"amount": "1.001", "currency": "EUR"}}, "ticket_min"),
    ({"name": ""}, "name"),
    ({"id": 7}, "id"),
    ({}, "body"),
])
def test_funder_update_rejects_invalid_field(client, db, people, auth, body, field):
    make_funder(db, people.donor, "European Commission")

    fields = assert_error(send(client, "PATCH", "/api/v1/funders/me", body, auth(people.donor)), 422)

    assert field in fields


def test_funder_profile_of_owner_is_forbidden(client, db, people, auth):
    assert_error(client.get("/api/v1/funders/me", headers=auth(people.owner)), 403)
    assert_error(send(client, "PATCH", "/api/v1/funders/me", {"name": "Ministry"}, auth(people.owner)), 403)


def test_other_donors_funder_update_forbidden(client, db, people, auth):
    funder = make_funder(db, people.donor, "European Commission")

    assert_error(send(client, "PATCH", f"/api/v1/funders/{funder.id}", {"name": "Taken"}, auth(people.other_donor)), 403)
    db.session.expire_all()
    assert funder.name == "European Commission"


def test_funder_update_by_id_for_coordinator(client, db, people, auth):
    funder = make_funder(db, people.donor, "European Commission")

    response = send(client, "PATCH", f"/api/v1/funders/{funder.id}", {"themes": ["backbones"]}, auth(people.coordinator))

    assert response.status_code == 200
    assert response.get_json()["themes"] == ["backbones"]


def test_unknown_funder_update_is_not_found(client, db, people, auth):
    assert_error(send(client, "PATCH", "/api/v1/funders/999", {"name": "X"}, auth(people.coordinator)), 404)


# Match funds


def fund_body(**overrides) -> dict:
    body = {
        "name": "Africa broadband", "factor": "1", "total_cap": {"amount": "50000.00", "currency": "EUR"},
        "per_pledge_cap": {"amount": "1000.00", "currency": "EUR"}, "regions": ["africa"], "themes": ["broadband"],
    }
    body.update(overrides)
    return body


def test_create_match_fund_by_donor(client, db, people, auth):
    response = send(client, "POST", "/api/v1/match-funds", fund_body(), auth(people.other_donor))

    assert response.status_code == 201, response.get_data(as_text=True)
    fund = response.get_json()
    assert response.headers["Location"].endswith(f"/api/v1/match-funds/{fund['id']}")
    assert fund["factor"] == "1"
    assert fund["total_cap"] == {"amount": "50000.00", "currency": "EUR"}
    assert fund["per_pledge_cap"] == {"amount": "1000.00", "currency": "EUR"}
    assert fund["per_project_cap"] is None
    assert fund["used"] == {"amount": "0.00", "currency": "EUR"}
    assert fund["remaining"] == {"amount": "50000.00", "currency": "EUR"}
    assert fund["status"] == "active"
    assert fund["regions"] == ["africa"]
    assert fund["themes"] == ["broadband"]


def test_match_fund_matches_donor_pledge(client, db, people, auth):
    project = make_project(db, people, goal_minor=10_000_000)
    fund = send(client, "POST", "/api/v1/match-funds", fund_body(), auth(people.other_donor)).get_json()

    pledged = post_pledge(client, auth, people.donor, pledge_body(project.needs[0].id, "300.00"))
    pledges = client.get(f"/api/v1/match-funds/{fund['id']}/pledges", headers=auth(people.other_donor)).get_json()
    after = client.get(f"/api/v1/match-funds/{fund['id']}", headers=auth(people.other_donor)).get_json()

    assert pledged.status_code == 201
    assert pledges["total"] == 1
    assert pledges["items"][0]["amount"] == {"amount": "300.00", "currency": "EUR"}
    assert after["used"] == {"amount": "300.00", "currency": "EUR"}


def test_match_fund_by_coordinator_needs_funder(client, db, people, auth):
    funder = make_funder(db, people.donor, "European Commission")

    missing = assert_error(send(client, "POST", "/api/v1/match-funds", fund_body(), auth(people.coordinator)), 422)
    created = send(client, "POST", "/api/v1/match-funds", fund_body(funder_id=funder.id), auth(people.coordinator))

    assert "funder_id" in missing
    assert created.status_code == 201
    assert created.get_json()["funder_id"] == funder.id


def test_match_fund_donor_cannot_name_other_funder(client, db, people, auth):
    other = make_funder(db, people.donor, "European Commission")

    fields = assert_error(send(client, "POST", "/api/v1/match-funds", fund_body(funder_id=other.id), auth(people.other_donor)), 422)

    assert "funder_id" in fields
    assert count(db, MatchFund) == 0


@pytest.mark.parametrize(("change", "field"), [
    ({"factor": "0"}, "factor"),
    ({"factor": "11"}, "factor"),
    ({"factor": "1.00001"}, "factor"),
    ({"factor": True}, "factor"),
    ({"factor": [1]}, "factor"),
    ({"per_pledge_cap": {"amount": "10.00", "currency": "USD"}}, "per_pledge_cap"),
    ({"per_pledge_cap": {"amount": "90000.00", "currency": "EUR"}}, "per_pledge_cap"),
    ({"total_cap": {"amount": "-1", "currency": "EUR"}}, "total_cap"),
    ({"regions": ["atlantis"]}, "regions"),
    ({"ends_on": "2000-01-01"}, "ends_on"),
    ({"name": ""}, "name"),
])
def test_match_fund_rejects_invalid_field(client, db, people, auth, change, field):
    fields = assert_error(send(client, "POST", "/api/v1/match-funds", fund_body(**change), auth(people.other_donor)), 422)

    assert field in fields
    assert count(db, MatchFund) == 0


def test_match_fund_factor_with_huge_exponent_is_invalid(client, db, people, auth):
    raw = '{"name": "Huge", "factor": 1e999999, "total_cap": {"amount": "10.00", "currency": "EUR"}}'

    fields = assert_error(send(client, "POST", "/api/v1/match-funds", headers=auth(people.other_donor), raw=raw), 422)

    assert "factor" in fields


def test_match_fund_factor_as_json_number(client, db, people, auth):
    response = send(client, "POST", "/api/v1/match-funds", headers=auth(people.other_donor),
                    raw='{"name": "Half", "factor": 0.5, "total_cap": {"amount": "10.00", "currency": "EUR"}}')

    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.get_json()["factor"] == "0.5"


def test_match_fund_list_by_role(client, db, people, auth):
    own = send(client, "POST", "/api/v1/match-funds", fund_body(), auth(people.other_donor)).get_json()
    funder = make_funder(db, people.donor, "European Commission")
    other = send(client, "POST", "/api/v1/match-funds", fund_body(funder_id=funder.id), auth(people.coordinator)).get_json()

    donor = client.get("/api/v1/match-funds", headers=auth(people.other_donor)).get_json()
    coordinator = client.get("/api/v1/match-funds", headers=auth(people.coordinator)).get_json()

    assert [item["id"] for item in donor["items"]] == [own["id"]]
    assert {item["id"] for item in coordinator["items"]} == {own["id"], other["id"]}
    assert_error(client.get("/api/v1/match-funds", headers=auth(people.owner)), 403)


def test_match_fund_of_other_donor_is_not_found(client, db, people, auth):
    fund = send(client, "POST", "/api/v1/match-funds", fund_body(), auth(people.other_donor)).get_json()

    assert_error(client.get(f"/api/v1/match-funds/{fund['id']}", headers=auth(people.donor)), 404)
    assert_error(send(client, "POST", f"/api/v1/match-funds/{fund['id']}/deactivate", headers=auth(people.donor)), 404)


def test_match_fund_deactivate_and_activate(client, db, people, auth):
    fund = send(client, "POST", "/api/v1/match-funds", fund_body(), auth(people.other_donor)).get_json()
    url = f"/api/v1/match-funds/{fund['id']}"

    paused = send(client, "POST", f"{url}/deactivate", headers=auth(people.other_donor)).get_json()
    paused_again = send(client, "POST", f"{url}/deactivate", headers=auth(people.other_donor)).get_json()
    resumed = send(client, "POST", f"{url}/activate", headers=auth(people.coordinator)).get_json()

    assert (paused["active"], paused["status"]) == (False, "paused")
    assert paused_again["status"] == "paused"
    assert (resumed["active"], resumed["status"]) == (True, "active")


# Pledges: lists, ledgers, donor cancellation and bulk review


def test_pledge_list_by_role(client, db, people, auth):
    project = make_project(db, people)
    own = make_pledge(db, people.donor, project.needs[0].id, key="a")
    other = make_pledge(db, people.other_donor, project.needs[0].id, key="b")

    donor = client.get("/api/v1/pledges", headers=auth(people.donor)).get_json()
    owner = client.get("/api/v1/pledges", headers=auth(people.owner)).get_json()
    stranger = client.get("/api/v1/pledges", headers=auth(people.other_owner)).get_json()
    coordinator = client.get("/api/v1/pledges", headers=auth(people.coordinator)).get_json()

    assert [item["id"] for item in donor["items"]] == [own.id]
    assert [item["id"] for item in owner["items"]] == [other.id, own.id]
    assert stranger["total"] == 0
    assert coordinator["total"] == 2
    assert coordinator["items"][0]["project_id"] == project.id


def test_pledge_list_filters(client, db, people, auth):
    first = make_project(db, people, title="First")
    second = make_project(db, people, title="Second")
    waiting = make_pledge(db, people.donor, first.needs[0].id, key="a")
    confirmed = make_pledge(db, people.donor, second.needs[0].id, key="b")
    act(people.coordinator, confirmed.id, "confirm")
    db.session.commit()
    headers = auth(people.coordinator)

    by_state = client.get("/api/v1/pledges?state=confirmed", headers=headers).get_json()
    by_project = client.get(f"/api/v1/pledges?project_id={first.id}", headers=headers).get_json()
    by_need = client.get(f"/api/v1/pledges?need_id={second.needs[0].id}", headers=headers).get_json()
    paged = client.get("/api/v1/pledges?per_page=1&page=2", headers=headers).get_json()

    assert [item["id"] for item in by_state["items"]] == [confirmed.id]
    assert [item["id"] for item in by_project["items"]] == [waiting.id]
    assert [item["id"] for item in by_need["items"]] == [confirmed.id]
    assert (paged["page"], paged["per_page"], paged["total"], len(paged["items"])) == (2, 1, 2, 1)
    assert client.get("/api/v1/pledges?currency=eur", headers=headers).get_json()["total"] == 2
    assert client.get("/api/v1/pledges?currency=USD", headers=headers).get_json()["total"] == 0
    assert client.get("/api/v1/pledges?older_than=1", headers=headers).get_json()["total"] == 0
    assert client.get("/api/v1/pledges?older_than=0", headers=headers).get_json()["total"] == 2
    assert "currency" in assert_error(client.get("/api/v1/pledges?currency=EURO", headers=headers), 422)
    assert_error(client.get("/api/v1/pledges?state=lost", headers=headers), 422)
    assert_error(client.get("/api/v1/pledges"), 401)


def test_pledge_events_list_the_ledger(client, db, people, auth):
    project = make_project(db, people)
    pledge = make_pledge(db, people.donor, project.needs[0].id)
    act(people.coordinator, pledge.id, "confirm")
    act(people.coordinator, pledge.id, "disburse", amount_minor=5_000)
    db.session.commit()

    body = client.get(f"/api/v1/pledges/{pledge.id}/events", headers=auth(people.donor)).get_json()

    assert [(item["from_state"], item["to_state"]) for item in body["items"]] == [
        (None, "pledged"), ("pledged", "confirmed"), ("confirmed", "partly_disbursed"),
    ]
    assert body["items"][2]["amount"] == {"amount": "50.00", "currency": "EUR"}
    assert body["items"][1]["actor_id"] == people.coordinator.id
    assert_error(client.get(f"/api/v1/pledges/{pledge.id}/events", headers=auth(people.other_donor)), 404)


def test_donor_cancels_own_waiting_pledge(client, db, people, auth):
    project = make_project(db, people)
    pledge = make_pledge(db, people.donor, project.needs[0].id)

    response = send(client, "POST", f"/api/v1/pledges/{pledge.id}/cancel", {"reason": "Budget cut"}, auth(people.donor))

    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["state"] == "cancelled"
    event = db.session.scalars(select(PledgeEvent).where(PledgeEvent.pledge_id == pledge.id).order_by(PledgeEvent.id.desc())).first()
    assert (event.to_state, event.reason, event.actor_id) == ("cancelled", "Budget cut", people.donor.id)
    db.session.expire_all()
    assert project.needs[0].pledged_minor == 0


def test_donor_cannot_cancel_confirmed_pledge(client, db, people, auth):
    project = make_project(db, people)
    pledge = make_pledge(db, people.donor, project.needs[0].id)
    act(people.coordinator, pledge.id, "confirm")
    db.session.commit()

    assert_error(send(client, "POST", f"/api/v1/pledges/{pledge.id}/cancel", {"reason": "Changed mind"}, auth(people.donor)), 409)
    db.session.expire_all()
    assert db.session.get(Pledge, pledge.id).state == "confirmed"


def test_donor_cannot_cancel_other_funders_pledge(client, db, people, auth):
    project = make_project(db, people)
    pledge = make_pledge(db, people.donor, project.needs[0].id)

    assert_error(send(client, "POST", f"/api/v1/pledges/{pledge.id}/cancel", {"reason": "No"}, auth(people.other_donor)), 404)
    assert_error(send(client, "POST", f"/api/v1/pledges/{pledge.id}/cancel", {"reason": "No"}, auth(people.owner)), 403)


def test_donor_cannot_cancel_match_fund_pledge(client, db, people, auth):
    project = make_project(db, people, goal_minor=10_000_000)
    send(client, "POST", "/api/v1/match-funds", fund_body(), auth(people.other_donor))
    post_pledge(client, auth, people.donor, pledge_body(project.needs[0].id, "100.00"))
    match = db.session.scalar(select(Pledge).where(Pledge.match_fund_id.is_not(None)))

    assert_error(send(client, "POST", f"/api/v1/pledges/{match.id}/cancel", {"reason": "No"}, auth(people.other_donor)), 409)


def test_bulk_confirm_pledges(client, db, people, auth):
    project = make_project(db, people)
    first = make_pledge(db, people.donor, project.needs[0].id, key="a")
    second = make_pledge(db, people.donor, project.needs[0].id, key="b")

    response = send(client, "POST", "/api/v1/pledges/bulk", {"action": "confirm", "pledge_ids": [second.id, first.id]}, auth(people.coordinator))

    assert response.status_code == 200, response.get_data(as_text=True)
    assert [(item["id"], item["state"]) for item in response.get_json()["items"]] == [(first.id, "confirmed"), (second.id, "confirmed")]


def test_bulk_with_settled_pledge_changes_nothing(client, db, people, auth):
    project = make_project(db, people)
    waiting = make_pledge(db, people.donor, project.needs[0].id, key="a")
    confirmed = make_pledge(db, people.donor, project.needs[0].id, key="b")
    act(people.coordinator, confirmed.id, "confirm")
    db.session.commit()

    response = send(client, "POST", "/api/v1/pledges/bulk", {"action": "cancel", "pledge_ids": [waiting.id, confirmed.id], "reason": "Duplicate"},
                    auth(people.coordinator))

    assert_error(response, 409, "conflict")
    assert f"pledge {confirmed.id} is confirmed" in response.get_json()["error"]["message"]
    db.session.expire_all()
    assert db.session.get(Pledge, waiting.id).state == "pledged"


@pytest.mark.parametrize(("body", "field"), [
    ({"action": "cancel", "pledge_ids": [1]}, "reason"),
    ({"action": "disburse", "pledge_ids": [1]}, "action"),
    ({"action": "confirm", "pledge_ids": []}, "pledge_ids"),
    ({"action": "confirm", "pledge_ids": ["1"]}, "pledge_ids.0"),
])
def test_bulk_rejects_invalid_field(client, db, people, auth, body, field):
    fields = assert_error(send(client, "POST", "/api/v1/pledges/bulk", body, auth(people.coordinator)), 422)

    assert field in fields


def test_bulk_by_donor_is_forbidden(client, db, people, auth):
    assert_error(send(client, "POST", "/api/v1/pledges/bulk", {"action": "confirm", "pledge_ids": [1]}, auth(people.donor)), 403)


def test_pledge_with_nul_character_is_invalid(client, db, people, auth):
    project = make_project(db, people)

    response = post_pledge(client, auth, people.donor, raw=f'{{"need_id": {project.needs[0].id}, "amount": "1\\u0000", "currency": "EUR"}}')

    assert_error(response, 422)
    assert count(db, Pledge) == 0


# Allocation runs


@pytest.fixture
def allocation_ready(db, people):
    """A published project with an open need and a funder whose preferences and ticket fit it."""
    project = make_project(db, people, goal_minor=100_000_000)
    funder = make_funder(db, people.donor, "European Commission", regions=("africa",), themes=("broadband",), ticket=(1_000_000, 50_000_000))
    return project, funder


def test_start_allocation_run(client, db, people, auth, allocation_ready):
    project, funder = allocation_ready

    response = send(client, "POST", "/api/v1/allocation/runs", headers=auth(people.coordinator))

    assert response.status_code == 201, response.get_data(as_text=True)
    run = response.get_json()
    assert response.headers["Location"].endswith(f"/api/v1/allocation/runs/{run['id']}")
    assert run["status"] == "proposed"
    assert run["rows"]["total"] >= 1
    row = run["rows"]["items"][0]
    assert (row["project_id"], row["funder_id"], row["accepted"]) == (project.id, funder.id, False)
    assert row["amount"]["currency"] == "EUR"
    assert run["open_need"] == [{"amount": "1000000.00", "currency": "EUR"}]
    assert run["totals"]["by_funder"][0]["funder_id"] == funder.id


def test_read_and_list_allocation_runs(client, db, people, auth, allocation_ready):
    headers = auth(people.coordinator)
    first = send(client, "POST", "/api/v1/allocation/runs", headers=headers).get_json()
    second = send(client, "POST", "/api/v1/allocation/runs", headers=headers).get_json()

    listing = client.get("/api/v1/allocation/runs", headers=headers).get_json()
    detail = client.get(f"/api/v1/allocation/runs/{first['id']}?per_page=1", headers=headers).get_json()

    assert [item["id"] for item in listing["items"]] == [second["id"], first["id"]]
    assert detail["id"] == first["id"]
    assert detail["rows"]["per_page"] == 1
    assert len(detail["rows"]["items"]) == 1


def test_accept_allocation_rows(client, db, people, auth, allocation_ready):
    headers = auth(people.coordinator)
    run = send(client, "POST", "/api/v1/allocation/runs", headers=headers).get_json()
    row_id = run["rows"]["items"][0]["id"]

    first = send(client, "POST", f"/api/v1/allocation/runs/{run['id']}/accept", {"row_ids": [row_id]}, headers)
    again = send(client, "POST", f"/api/v1/allocation/runs/{run['id']}/accept", {"row_ids": [row_id]}, headers)

    assert first.status_code == 200, first.get_data(as_text=True)
    assert [row["id"] for row in first.get_json()["accepted"]] == [row_id]
    assert first.get_json()["run"]["status"] == "accepted"
    assert [row["id"] for row in again.get_json()["already"]] == [row_id]
    match = db.session.get(Match, db.session.get(AllocationRow, row_id).match_id)
    assert match.status == "accepted"


def test_accept_row_of_other_run_is_invalid(client, db, people, auth, allocation_ready):
    headers = auth(people.coordinator)
    first = send(client, "POST", "/api/v1/allocation/runs", headers=headers).get_json()
    second = send(client, "POST", "/api/v1/allocation/runs", headers=headers).get_json()
    row_id = second["rows"]["items"][0]["id"]

    fields = assert_error(send(client, "POST", f"/api/v1/allocation/runs/{first['id']}/accept", {"row_ids": [row_id]}, headers), 422)

    assert "row_ids" in fields


def test_allocation_by_donor_is_forbidden(client, db, people, auth):
    assert_error(send(client, "POST", "/api/v1/allocation/runs", headers=auth(people.donor)), 403)
    assert_error(client.get("/api/v1/allocation/runs", headers=auth(people.donor)), 403)
    assert count(db, AllocationRun) == 0


def test_unknown_allocation_run_is_not_found(client, db, people, auth):
    assert_error(client.get("/api/v1/allocation/runs/42", headers=auth(people.coordinator)), 404)


def test_allocation_with_invalid_settings_is_unavailable(app, client, db, people, auth, monkeypatch):
    monkeypatch.setitem(app.config, "ALLOCATION_METHOD", "simplex")

    response = send(client, "POST", "/api/v1/allocation/runs", headers=auth(people.coordinator))

    assert_error(response, 503, "allocation_failed")
    assert count(db, AllocationRun) == 0


# Exchange rates


def rate_body(**overrides) -> dict:
    body = {"base": "USD", "quote": "EUR", "rate": "0.9259", "valid_from": "2026-01-01"}
    body.update(overrides)
    return body


def test_create_rate(client, db, people, auth):
    response = send(client, "POST", "/api/v1/rates", rate_body(), auth(people.coordinator))

    assert response.status_code == 201, response.get_data(as_text=True)
    rate = response.get_json()
    assert (rate["base"], rate["quote"], rate["rate"], rate["valid_from"]) == ("USD", "EUR", "0.9259", "2026-01-01")
    assert rate["created_by_id"] == people.coordinator.id


def test_create_rate_as_json_number(client, db, people, auth):
    raw = '{"base": "USD", "quote": "EUR", "rate": 1.0823, "valid_from": "2026-01-01"}'

    response = send(client, "POST", "/api/v1/rates", headers=auth(people.coordinator), raw=raw)

    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.get_json()["rate"] == "1.0823"


def test_rate_same_day_conflict_or_replace(client, db, people, auth):
    headers = auth(people.coordinator)
    send(client, "POST", "/api/v1/rates", rate_body(), headers)

    conflict = send(client, "POST", "/api/v1/rates", rate_body(rate="0.95"), headers)
    replaced = send(client, "POST", "/api/v1/rates", rate_body(rate="0.95", replace=True), headers)

    assert_error(conflict, 409, "conflict")
    assert replaced.status_code == 201
    assert replaced.get_json()["rate"] == "0.95"
    assert count(db, ExchangeRate) == 1


@pytest.mark.parametrize(("change", "field"), [
    ({"rate": "-1"}, "rate"),
    ({"rate": "1e3"}, "rate"),
    ({"rate": "1,5"}, "rate"),
    ({"rate": True}, "rate"),
    ({"quote": "USD"}, "quote"),
    ({"base": "XYZ"}, "base"),
    ({"valid_from": "2026-02-30"}, "valid_from"),
    ({"replace": "yes"}, "replace"),
])
def test_create_rate_rejects_invalid_field(client, db, people, auth, change, field):
    fields = assert_error(send(client, "POST", "/api/v1/rates", rate_body(**change), auth(people.coordinator)), 422)

    assert field in fields
    assert count(db, ExchangeRate) == 0


def test_rate_with_huge_exponent_is_invalid(client, db, people, auth):
    raw = '{"base": "USD", "quote": "EUR", "rate": 1e999999999, "valid_from": "2026-01-01"}'

    fields = assert_error(send(client, "POST", "/api/v1/rates", headers=auth(people.coordinator), raw=raw), 422)

    assert "rate" in fields


def test_current_rates_and_history(client, db, people, auth):
    headers = auth(people.coordinator)
    today = utcnow().date()
    for body in (rate_body(valid_from="2020-01-01", rate="0.9"), rate_body(valid_from=today.isoformat(), rate="0.92"),
                 rate_body(base="GBP", valid_from="2020-01-01", rate="1.17")):
        send(client, "POST", "/api/v1/rates", body, headers)

    current = client.get("/api/v1/rates").get_json()
    earlier = client.get("/api/v1/rates?on=2021-06-30").get_json()
    history = client.get("/api/v1/rates/history?base=usd").get_json()

    assert [(item["base"], item["rate"]) for item in current["items"]] == [("GBP", "1.17"), ("USD", "0.92")]
    assert [(item["base"], item["rate"]) for item in earlier["items"]] == [("GBP", "1.17"), ("USD", "0.9")]
    assert [item["rate"] for item in history["items"]] == ["0.92", "0.9"]
    assert "base" in assert_error(client.get("/api/v1/rates/history?base=EU"), 422)


def test_create_rate_by_donor_is_forbidden(client, db, people, auth):
    assert_error(send(client, "POST", "/api/v1/rates", rate_body(), auth(people.donor)), 403)


def test_import_rates_from_csv(client, db, people, auth):
    csv_text = "base;quote;rate;valid_from\nUSD;EUR;0.9259;2026-01-01\nGBP;EUR;1.1700;2026-01-01\n"

    response = send(client, "POST", "/api/v1/rates/import", {"csv": csv_text}, auth(people.coordinator))
    again = send(client, "POST", "/api/v1/rates/import", {"csv": csv_text}, auth(people.coordinator))

    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"stored": 2}
    assert again.get_json() == {"stored": 0}
    assert count(db, ExchangeRate) == 2


def test_import_rates_names_bad_lines_and_stores_nothing(client, db, people, auth):
    csv_text = "base,quote,rate,valid_from\nUSD,EUR,0.9259,2026-01-01\nGBP,EUR,abc,2026-01-01\n"

    fields = assert_error(send(client, "POST", "/api/v1/rates/import", {"csv": csv_text}, auth(people.coordinator)), 422)

    assert any(name.startswith("line 3") for name in fields), fields
    assert count(db, ExchangeRate) == 0


# OpenAPI document and HTML reference


NEW_OPERATIONS = {
    ("/api/v1/projects/{project_id}/withdraw", "post"),
    ("/api/v1/funders/me", "get"), ("/api/v1/funders/me", "patch"), ("/api/v1/funders/{funder_id}", "patch"),
    ("/api/v1/match-funds", "get"), ("/api/v1/match-funds", "post"), ("/api/v1/match-funds/{fund_id}", "get"),
    ("/api/v1/match-funds/{fund_id}/pledges", "get"), ("/api/v1/match-funds/{fund_id}/activate", "post"),
    ("/api/v1/match-funds/{fund_id}/deactivate", "post"),
    ("/api/v1/pledges", "get"), ("/api/v1/pledges/bulk", "post"), ("/api/v1/pledges/{pledge_id}/events", "get"),
    ("/api/v1/pledges/{pledge_id}/refund", "post"),
    ("/api/v1/allocation/runs", "get"), ("/api/v1/allocation/runs", "post"),
    ("/api/v1/allocation/runs/{run_id}", "get"), ("/api/v1/allocation/runs/{run_id}/accept", "post"),
    ("/api/v1/rates", "get"), ("/api/v1/rates", "post"), ("/api/v1/rates/history", "get"), ("/api/v1/rates/import", "post"),
    ("/api/v1/tokens", "get"), ("/api/v1/tokens", "post"), ("/api/v1/tokens/{token_id}", "delete"),
    ("/api/docs", "get"),
}


def operations(spec: dict):
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method != "parameters":
                yield path, method, item, operation


def test_openapi_lists_new_operations(client):
    spec = client.get("/api/openapi.json").get_json()

    assert NEW_OPERATIONS <= {(path, method) for path, method, _, _ in operations(spec)}


def test_openapi_documents_errors_of_every_operation(client):
    spec = client.get("/api/openapi.json").get_json()
    error_ref = {"$ref": "#/components/schemas/Error"}

    for path, method, item, operation in operations(spec):
        responses = operation["responses"]
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                assert response["content"]["application/json"]["schema"] == error_ref, (path, method, status)
        if path.startswith("/api/v1/"):
            assert "403" in responses, (path, method)
            assert operation["x-token-scope"] in ("read", "pledge", "manage"), (path, method)
        if item.get("parameters"):
            assert "404" in responses, (path, method)
        if "requestBody" in operation:
            assert {"400", "422"} <= set(responses), (path, method)


def test_openapi_path_ids_are_bounded_integers(client):
    spec = client.get("/api/openapi.json").get_json()

    parameter = spec["paths"]["/api/v1/pledges/{pledge_id}"]["parameters"][0]

    assert parameter["schema"] == {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}


def test_openapi_names_token_scopes(client):
    spec = client.get("/api/openapi.json").get_json()
    paths = spec["paths"]

    assert paths["/api/v1/projects"]["get"]["x-token-scope"] == "read"
    assert paths["/api/v1/projects"]["post"]["x-token-scope"] == "manage"
    assert paths["/api/v1/pledges"]["post"]["x-token-scope"] == "pledge"
    assert paths["/api/v1/pledges/{pledge_id}/cancel"]["post"]["x-token-scope"] == "pledge"
    assert "x-token-scope" not in paths["/api/openapi.json"]["get"]


@pytest.mark.parametrize("path", ["/api/v1/projects/3000000000", "/api/v1/funders/99999999999999999999"])
@pytest.mark.parametrize("method", ["GET", "PATCH"])
def test_id_beyond_range_is_not_found(client, db, people, auth, path, method):
    assert_error(client.open(path, method=method, headers=auth(people.coordinator), json={"title": "x"}), 404, "not_found")


def test_reference_page_lists_every_operation(client, db):
    spec = client.get("/api/openapi.json").get_json()

    response = client.get("/api/docs")

    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    for path, method, _, operation in operations(spec):
        assert f'id="op-{operation["operationId"]}"' in page, (path, method)
    for name in spec["components"]["schemas"]:
        assert f'id="schema-{name}"' in page, name
    assert "<script" not in page
    assert not re.search(r"https?://(?!localhost)", page), "the page loads nothing from other sites"


def test_reference_page_shows_parameters_bodies_and_responses(client, db):
    page = client.get("/api/docs").get_data(as_text=True)

    assert "<code>Idempotency-Key</code>" in page
    assert 'href="#schema-ProjectInput"' in page
    assert "<code>422</code>" in page
    assert "Token scope: pledge." in page
