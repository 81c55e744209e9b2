"""Audit log: one entry per change with actor, before and after, rollback, the coordinators' page and object histories."""

import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from financing.accounts.services import change_role, create_token, create_user, revoke_token
from financing.audit.models import AuditEntry
from financing.audit.services import record
from financing.core.errors import Conflict, Forbidden, ValidationFailed
from financing.core.time import utcnow
from financing.funders.services import FunderInput, funder_for_user, update_funder
from financing.matching.models import Match
from financing.matching.services import accept_match, reject_match
from financing.pledges.match_funds import MatchFundInput, create_match_fund, set_active
from financing.pledges.services import act, create_pledge, transition
from financing.projects.services import (
    NeedInput, ProjectInput, create_project, publish_project, return_project, submit_project, update_project, withdraw_project,
)
from financing.rates.services import add_rate, import_rates_csv
from tests.conftest import PASSWORD

EUR_GOAL = {"amount": "100000.00", "currency": "EUR"}


@pytest.fixture
def people(make_user):
    class People:
        owner = make_user("owner", organisation="Ministry of ICT, Kenya", email="owner@example.org")
        other_owner = make_user("owner", organisation="Ministry of Posts, Fiji", email="fiji@example.org")
        donor = make_user("donor", organisation="European Commission", email="donor@example.org")
        other_donor = make_user("donor", organisation="World Bank", email="bank@example.org")
        coordinator = make_user("coordinator", organisation=None, email="coordinator@example.org")
        admin = make_user("admin", organisation=None, email="admin@example.org")

    return People


def project_input(title="Rural broadband for Turkana", goal_minor=10_000_000, **changes) -> ProjectInput:
    data = dict(
        title=title, summary="Towers for 40 villages.", countries=["KE"], themes=["broadband"],
        needs=[NeedInput(title="Towers", goal_minor=goal_minor, currency="EUR")],
    )
    data.update(changes)
    return ProjectInput(**data)


def published_project(db, people, **changes):
    project = create_project(people.owner, project_input(**changes))
    submit_project(people.owner, project)
    publish_project(people.coordinator, project)
    db.session.commit()
    return project


def entries(db, obj_type=None, obj_id=None, action=None) -> list[AuditEntry]:
    query = select(AuditEntry).order_by(AuditEntry.id)
    if obj_type:
        query = query.where(AuditEntry.object_type == obj_type)
    if obj_id is not None:
        query = query.where(AuditEntry.object_id == obj_id)
    if action:
        query = query.where(AuditEntry.action == action)
    return list(db.session.scalars(query))


def entry_count(db) -> int:
    return db.session.scalar(select(func.count()).select_from(AuditEntry))


# One entry per change


def test_project_workflow_recorded(db, people):
    project = create_project(people.owner, project_input())
    submit_project(people.owner, project)
    return_project(people.coordinator, project, "Add a maintenance budget.")
    submit_project(people.owner, project)
    publish_project(people.coordinator, project)
    db.session.commit()

    rows = entries(db, "project", project.id)
    assert [row.action for row in rows] == ["create", "submit", "return", "submit", "publish"]
    assert [row.actor_id for row in rows] == [people.owner.id, people.owner.id, people.coordinator.id, people.owner.id, people.coordinator.id]
    assert rows[0].before is None
    assert rows[0].after["status"] == "draft"
    assert rows[0].after["title"] == "Rural broadband for Turkana"
    assert rows[0].after["needs"][0]["goal"] == EUR_GOAL | {"amount": "100000.00"}
    assert (rows[2].before, rows[2].after, rows[2].reason) == ({"status": "submitted"}, {"status": "returned"}, "Add a maintenance budget.")
    assert (rows[4].before, rows[4].after, rows[4].reason) == ({"status": "submitted"}, {"status": "published"}, "")
    assert all(row.at is not None for row in rows)


def test_withdraw_recorded(db, people):
    project = published_project(db, people)

    withdraw_project(people.owner, project)
    db.session.commit()

    row = entries(db, "project", project.id, "withdraw")[0]
    assert (row.before, row.after) == ({"status": "published"}, {"status": "withdrawn"})


def test_update_records_changed_fields_only(db, people):
    project = create_project(people.owner, project_input())
    db.session.commit()
    need_id = project.needs[0].id

    data = project_input(title="Rural broadband for Turkana and Marsabit", goal_minor=12_000_000)
    data.needs[0].id = need_id
    update_project(people.owner, project, data)
    db.session.commit()

    row = entries(db, "project", project.id, "update")[0]
    assert set(row.before) == {"title", "needs"}
    assert row.before["title"] == "Rural broadband for Turkana"
    assert row.after["title"] == "Rural broadband for Turkana and Marsabit"
    assert row.before["needs"][0]["goal"] == {"amount": "100000.00", "currency": "EUR"}
    assert row.after["needs"][0]["goal"] == {"amount": "120000.00", "currency": "EUR"}


def test_update_without_change_records_nothing(db, people):
    project = create_project(people.owner, project_input())
    db.session.commit()
    data = project_input()
    data.needs[0].id = project.needs[0].id
    before = entry_count(db)

    update_project(people.owner, project, data)
    db.session.commit()

    assert entry_count(db) == before


def test_long_text_is_shortened(db, people):
    project = create_project(people.owner, project_input(description="x" * 5000))
    db.session.commit()

    stored = entries(db, "project", project.id, "create")[0].after["description"]
    assert len(stored) == 201
    assert stored.endswith("…")


def test_pledge_create_and_transitions(db, people):
    project = published_project(db, people)

    pledge, _ = create_pledge(people.donor, project.needs[0].id, 4_000_000, "EUR", reason="Year one")
    act(people.coordinator, pledge.id, "confirm")
    act(people.coordinator, pledge.id, "disburse", 1_500_000)
    db.session.commit()

    rows = entries(db, "pledge", pledge.id)
    assert [row.action for row in rows] == ["create", "confirm", "disburse"]
    assert [row.actor_id for row in rows] == [people.donor.id, people.coordinator.id, people.coordinator.id]
    created = rows[0]
    assert created.before is None
    assert created.after["state"] == "pledged"
    assert created.after["amount"] == {"amount": "40000.00", "currency": "EUR"}
    assert created.after["funder_id"] == pledge.funder_id
    assert created.reason == "Year one"
    assert rows[1].before == {"state": "pledged"}
    assert rows[1].after == {"state": "confirmed", "amount": {"amount": "40000.00", "currency": "EUR"}}
    assert rows[2].before == {"state": "confirmed", "disbursed": {"amount": "0.00", "currency": "EUR"}}
    assert rows[2].after == {
        "state": "partly_disbursed", "disbursed": {"amount": "15000.00", "currency": "EUR"},
        "amount": {"amount": "15000.00", "currency": "EUR"},
    }


def test_webhook_transition_has_no_actor(db, people):
    project = published_project(db, people)
    pledge, _ = create_pledge(people.donor, project.needs[0].id, 300_000, "EUR", kind="card")
    db.session.commit()

    transition(pledge.id, "pay", None, reason="Paid by card (Stripe Checkout session cs_test_1).")
    db.session.commit()

    row = entries(db, "pledge", pledge.id, "pay")[0]
    assert row.actor_id is None
    assert row.before == {"state": "pending_payment"}
    assert row.after["state"] == "confirmed"
    assert row.reason == "Paid by card (Stripe Checkout session cs_test_1)."


def test_project_funded_recorded_as_system(db, people):
    project = published_project(db, people, goal_minor=100_000)
    pledge, _ = create_pledge(people.donor, project.needs[0].id, 100_000, "EUR")
    act(people.coordinator, pledge.id, "confirm")
    db.session.commit()

    row = entries(db, "project", project.id, "mark_funded")[0]
    assert row.actor_id is None
    assert (row.before, row.after) == ({"status": "published"}, {"status": "funded"})


def test_match_fund_pledge_recorded(db, people):
    project = published_project(db, people)
    create_match_fund(people.other_donor, MatchFundInput(name="Africa match", factor="1", currency="EUR", total_cap="500000"))
    db.session.commit()

    pledge, _ = create_pledge(people.donor, project.needs[0].id, 100_000, "EUR")
    db.session.commit()

    created = entries(db, "pledge", action="create")
    assert len(created) == 2
    match_entry = created[1]
    assert match_entry.object_id != pledge.id
    assert match_entry.after["match_fund_id"] is not None
    assert match_entry.reason.startswith("Match fund Africa match matches pledge")


def test_match_review_recorded(db, people):
    project = published_project(db, people)
    funder = funder_for_user(people.donor)
    other = funder_for_user(people.other_donor)
    matches = []
    for candidate in (funder, other):
        match = Match(
            project_id=project.id, need_id=project.needs[0].id, funder_id=candidate.id, score=0.7,
            parts={"region": 1, "theme": 1, "ticket": 0.5, "capacity": 0.5, "time": 0.5}, weights={},
            explanation="Kenya fits.", inputs_digest="0" * 64,
        )
        db.session.add(match)
        matches.append(match)
    db.session.commit()

    accept_match(people.coordinator, matches[0].id)
    reject_match(people.coordinator, matches[1].id, "Budget spent for this year.")
    db.session.commit()

    accepted = entries(db, "match", matches[0].id)[0]
    rejected = entries(db, "match", matches[1].id)[0]
    assert (accepted.action, accepted.before, accepted.after, accepted.actor_id) == ("accept", {"status": "suggested"}, {"status": "accepted"}, people.coordinator.id)
    assert (rejected.action, rejected.after, rejected.reason) == ("reject", {"status": "rejected"}, "Budget spent for this year.")


def test_match_fund_create_and_pause(db, people):
    fund = create_match_fund(people.donor, MatchFundInput(
        name="Broadband match", factor="0.5", currency="EUR", total_cap="250000.00", regions=["africa"],
    ))
    set_active(people.donor, fund, False)
    set_active(people.donor, fund, False)
    set_active(people.donor, fund, True)
    db.session.commit()

    rows = entries(db, "match_fund", fund.id)
    assert [row.action for row in rows] == ["create", "pause", "resume"]
    assert rows[0].after["factor"] == "0.5"
    assert rows[0].after["total_cap"] == {"amount": "250000.00", "currency": "EUR"}
    assert rows[0].after["rules"] == ["region:africa"]
    assert (rows[1].before, rows[1].after) == ({"active": True}, {"active": False})


def test_rates_added_and_replaced(db, people):
    row = add_rate(people.coordinator, "USD", "EUR", "0.9259", "2026-01-05")
    add_rate(people.coordinator, "USD", "EUR", "0.9259", "2026-01-05")
    add_rate(people.coordinator, "USD", "EUR", "0.9300", "2026-01-05", replace=True)
    db.session.commit()

    rows = entries(db, "exchange_rate", row.id)
    assert [entry.action for entry in rows] == ["create", "replace"]
    assert rows[0].after == {"base": "USD", "quote": "EUR", "rate": "0.9259", "valid_from": "2026-01-05"}
    assert (rows[1].before, rows[1].after) == ({"rate": "0.9259"}, {"rate": "0.93"})


def test_rates_import_records_each_row(db, people):
    count = import_rates_csv("base,quote,rate,valid_from\nUSD,EUR,0.92,2026-01-05\nGBP,EUR,1.17,2026-01-05\n", people.coordinator)
    db.session.commit()

    assert count == 2
    rows = entries(db, "exchange_rate")
    assert [entry.after["base"] for entry in rows] == ["USD", "GBP"]
    assert {entry.actor_id for entry in rows} == {people.coordinator.id}


def test_funder_update_records_changes(db, people):
    funder = funder_for_user(people.donor)
    db.session.commit()

    update_funder(people.donor, funder, FunderInput(
        name="European Commission", currency="EUR", ticket_min_minor=50_000_000, regions=["africa"], themes=["broadband"],
    ))
    db.session.commit()

    row = entries(db, "funder", funder.id, "update")[0]
    assert row.actor_id == people.donor.id
    assert row.before["ticket_min"] is None
    assert row.after["ticket_min"] == {"amount": "500000.00", "currency": "EUR"}
    assert row.after["regions"] == ["africa"]
    assert "name" not in row.after


def test_accounts_recorded(db, people):
    user = create_user("new.owner@example.org", PASSWORD, "owner", organisation="Ministry of ICT, Kenya")
    change_role(people.admin, user.id, "donor", reason="Moved to the funding team.")
    token, text = create_token(people.donor, name="reporting script")
    revoke_token(people.donor, token.id)
    db.session.commit()

    created, changed = entries(db, "user", user.id)
    assert (created.action, created.actor_id, created.after["role"]) == ("create", None, "owner")
    assert (changed.action, changed.actor_id, changed.before, changed.after) == ("change_role", people.admin.id, {"role": "owner"}, {"role": "donor"})
    assert changed.reason == "Moved to the funding team."
    token_rows = entries(db, "api_token", token.id)
    assert [row.action for row in token_rows] == ["create", "revoke"]
    assert token_rows[0].after["name"] == "reporting script"
    assert text not in str(token_rows[0].after)
    assert token_rows[1].before == {"revoked_at": None}


def test_change_role_only_by_admin(db, people):
    with pytest.raises(Forbidden):
        change_role(people.coordinator, people.owner.id, "coordinator")
    with pytest.raises(Forbidden):
        change_role(people.admin, people.admin.id, "owner")
    with pytest.raises(ValidationFailed):
        change_role(people.admin, people.owner.id, "superuser")

    assert entries(db, "user", people.owner.id, "change_role") == []


# Rollback


def test_failed_service_writes_nothing(db, people):
    project = published_project(db, people)
    pledge, _ = create_pledge(people.donor, project.needs[0].id, 100_000, "EUR")
    db.session.commit()
    before = entry_count(db)

    with pytest.raises(Conflict):
        act(people.coordinator, pledge.id, "disburse", 100_000)
    with pytest.raises(Conflict):
        create_pledge(people.donor, project.needs[0].id, 99_000_000, "EUR")
    with pytest.raises(ValidationFailed):
        create_project(people.owner, project_input(title=""))
    with pytest.raises(Forbidden):
        publish_project(people.owner, project)
    db.session.rollback()

    assert entry_count(db) == before


def test_entry_dropped_with_rolled_back_change(db, people):
    project = create_project(people.owner, project_input())
    submit_project(people.owner, project)
    db.session.commit()
    before = entry_count(db)

    publish_project(people.coordinator, project)
    db.session.flush()
    assert entry_count(db) == before + 1
    db.session.rollback()

    assert entry_count(db) == before


def test_record_rejects_values_json_cannot_hold(db, people):
    with pytest.raises(TypeError, match="cannot be stored as JSON"):
        record(people.owner, "update", "project", 1, after={"owner": people.owner})


# Coordinators' page


def shown_count(html: str) -> int:
    """Read the count of the audit page's status line, such as "3 changes"."""
    found = re.search(r'role="status">(\d+) changes?<', html)
    assert found, "the page shows no count"
    return int(found.group(1))


def test_audit_page_lists_and_filters(client, login, db, people):
    project = published_project(db, people)
    pledge, _ = create_pledge(people.donor, project.needs[0].id, 100_000, "EUR")
    db.session.commit()
    transition(pledge.id, "confirm", None)
    db.session.commit()
    login(people.coordinator)

    everything = client.get("/audit").get_data(as_text=True)
    assert shown_count(everything) == entry_count(db)
    assert f'href="/projects/{project.id}"' in everything

    only_pledges = client.get("/audit?object_type=pledge").get_data(as_text=True)
    assert f'href="/pledges/{pledge.id}"' in only_pledges
    assert f'href="/projects/{project.id}"' not in only_pledges
    assert shown_count(only_pledges) == 2

    assert shown_count(client.get("/audit?action=publish").get_data(as_text=True)) == 1
    assert shown_count(client.get("/audit?user=donor%40example.org").get_data(as_text=True)) == 1
    assert shown_count(client.get(f"/audit?user={people.coordinator.id}").get_data(as_text=True)) == 1
    system = client.get("/audit?user=system&object_type=pledge").get_data(as_text=True)
    assert shown_count(system) == 1
    assert '<span class="code">confirm</span>' in system
    assert shown_count(client.get(f"/audit?object_type=project&object_id={project.id}").get_data(as_text=True)) == 3


def test_audit_page_date_range(client, login, db, people):
    published_project(db, people)
    old = AuditEntry(at=utcnow() - timedelta(days=40), action="create", object_type="user", object_id=people.owner.id)
    db.session.add(old)
    db.session.commit()
    login(people.coordinator)
    today = utcnow().date()
    earlier = (today - timedelta(days=40)).isoformat()

    recent = client.get(f"/audit?since={today.isoformat()}&until={today.isoformat()}").get_data(as_text=True)
    past = client.get(f"/audit?since={earlier}&until={earlier}").get_data(as_text=True)

    assert shown_count(past) == 1
    assert shown_count(recent) == entry_count(db) - 1


def test_audit_page_paginates(client, login, db, people):
    for index in range(25):
        record(people.coordinator, "create", "exchange_rate", index + 1, after={"rate": "1"})
    db.session.commit()
    login(people.coordinator)

    first = client.get("/audit?object_type=exchange_rate").get_data(as_text=True)
    second = client.get("/audit?object_type=exchange_rate&page=2").get_data(as_text=True)

    assert "Page 1 of 2" in first
    assert first.count("<tr>") == 21
    assert second.count("<tr>") == 6
    assert 'rel="prev"' in second


@pytest.mark.parametrize("query, field_text", [
    ("object_id=abc", "Object id &#39;abc&#39; must be a whole number"),
    ("object_id=99999999999", "Object id &#39;99999999999&#39; must be a whole number"),
    ("object_type=planet", "Unknown object type &#39;planet&#39;"),
    ("since=2026-13-01", "Date &#39;2026-13-01&#39; is not valid"),
    ("since=2026-03-01&until=2026-02-01", "End date 2026-02-01 is before the start date 2026-03-01."),
    ("user=nobody%40example.org", "No account has the email or id &#39;nobody@example.org&#39;."),
    ("action=drop%20table", "Unknown action &#39;drop table&#39;"),
])
def test_audit_page_rejects_bad_filters(client, login, db, people, query, field_text):
    login(people.coordinator)

    response = client.get(f"/audit?{query}")

    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert field_text in html
    assert "Some filters are not valid" in html


@pytest.mark.parametrize("role", ["owner", "donor"])
def test_audit_page_for_coordinators_only(client, login, db, people, role):
    login(people.owner if role == "owner" else people.donor)

    assert client.get("/audit").status_code == 403


def test_audit_page_needs_login(client, db):
    response = client.get("/audit")

    assert response.status_code == 302


# Histories of one's own objects


def test_owner_sees_project_history(client, login, db, people):
    project = published_project(db, people)
    login(people.owner)

    page = client.get(f"/projects/{project.id}").get_data(as_text=True)
    full = client.get(f"/audit/project/{project.id}")

    assert 'id="history-heading"' in page
    assert "publish" in page
    assert f'href="/audit/project/{project.id}"' in page
    assert full.status_code == 200
    assert "History of Project" in full.get_data(as_text=True)


def test_other_owner_gets_no_project_history(client, login, db, people):
    project = published_project(db, people)
    draft = create_project(people.owner, project_input(title="Draft backbone"))
    db.session.commit()
    login(people.other_owner)

    page = client.get(f"/projects/{project.id}").get_data(as_text=True)

    assert 'id="history-heading"' not in page
    assert client.get(f"/audit/project/{project.id}").status_code == 403
    assert client.get(f"/audit/project/{draft.id}").status_code == 404


def test_anonymous_sees_no_history_section(client, db, people):
    project = published_project(db, people)

    page = client.get(f"/projects/{project.id}").get_data(as_text=True)

    assert 'id="history-heading"' not in page
    assert client.get(f"/audit/project/{project.id}").status_code == 302


def test_donor_sees_pledge_history(client, login, db, people):
    project = published_project(db, people)
    pledge, _ = create_pledge(people.donor, project.needs[0].id, 100_000, "EUR")
    act(people.coordinator, pledge.id, "confirm")
    db.session.commit()
    login(people.donor)

    page = client.get(f"/pledges/{pledge.id}").get_data(as_text=True)

    assert 'id="history-heading"' in page
    assert "confirm" in page
    assert client.get(f"/audit/pledge/{pledge.id}").status_code == 200
    login(people.other_donor)
    assert client.get(f"/audit/pledge/{pledge.id}").status_code == 404


def test_owner_cannot_read_pledge_or_account_history(client, login, db, people):
    project = published_project(db, people)
    pledge, _ = create_pledge(people.donor, project.needs[0].id, 100_000, "EUR")
    db.session.commit()
    login(people.owner)

    assert client.get(f"/audit/pledge/{pledge.id}").status_code == 403
    assert client.get(f"/audit/user/{people.owner.id}").status_code == 403
    assert client.get("/audit/project/99999999999").status_code == 404


def test_coordinator_reads_any_history(client, login, db, people):
    user = create_user("new.owner@example.org", PASSWORD, "owner")
    db.session.commit()
    login(people.coordinator)

    response = client.get(f"/audit/user/{user.id}")

    assert response.status_code == 200
    assert "new.owner@example.org" in response.get_data(as_text=True)
