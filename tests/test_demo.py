"""Demo data: `demo load` through the services, idempotent, with illustrative C2 projects."""

import copy
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from werkzeug.security import generate_password_hash

from financing import reference
from financing.accounts.models import Organisation, User
from financing.accounts.services import authenticate
from financing.core.errors import Conflict, ValidationFailed
from financing.core.time import utcnow
from financing.demo import ACCOUNTS, PASSWORD_CHANGED, check_data, load_demo, read_data
from financing.funders.models import Funder, FunderPreference
from financing.pledges.models import RELEASED_STATES, Pledge, PledgeEvent
from financing.projects.models import FundingNeed, Project, ProjectTag

DATA = read_data()
ROLES = {"owner", "donor", "coordinator", "admin"}


def count(db, model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def snapshot(db) -> dict:
    """Row counts of every demo table, plus the amounts and states that a reload could change."""
    counts = {
        model.__name__: count(db, model)
        for model in (Organisation, User, Funder, FunderPreference, Project, ProjectTag, FundingNeed, Pledge, PledgeEvent)
    }
    needs = sorted(db.session.execute(select(FundingNeed.id, FundingNeed.pledged_minor, FundingNeed.status, FundingNeed.deadline)).all())
    pledges = sorted(db.session.execute(select(Pledge.id, Pledge.state, Pledge.disbursed_minor)).all())
    projects = sorted(db.session.execute(select(Project.id, Project.status, Project.updated_at)).all())
    return {"counts": counts, "needs": needs, "pledges": pledges, "projects": projects}


def project_by_key(db, key: str) -> Project:
    spec = next(p for p in DATA["projects"] if p["key"] == key)
    return db.session.scalar(select(Project).where(Project.title == spec["title"]))


@pytest.fixture
def loaded(db):
    accounts = load_demo()
    db.session.commit()
    return accounts


def test_load_returns_one_account_per_role(db, loaded):
    assert loaded == [(a.email, a.password, a.role) for a in ACCOUNTS]
    assert len(loaded) == 4
    assert {role for _, _, role in loaded} == ROLES


def test_load_creates_expected_counts(db, loaded):
    statuses = Counter(db.session.scalars(select(Project.status)))
    assert statuses == Counter(p["status"] for p in DATA["projects"])
    assert statuses == {"published": 5, "draft": 1, "submitted": 2, "returned": 1}
    assert count(db, FundingNeed) == sum(len(p["needs"]) for p in DATA["projects"]) == 19
    assert count(db, Funder) == len(DATA["funders"]) == 6
    assert count(db, Organisation) == len(DATA["organisations"])
    assert count(db, Pledge) == len(DATA["pledges"]) == 7
    assert count(db, PledgeEvent) == sum(1 + len(p["actions"]) for p in DATA["pledges"]) == 13
    states = Counter(db.session.scalars(select(Pledge.state)))
    assert states == {"pledged": 3, "confirmed": 2, "partly_disbursed": 2}


def test_load_creates_four_active_accounts(db, loaded):
    active = list(db.session.scalars(select(User).where(User.active.is_(True))))
    assert sorted(user.role for user in active) == sorted(ROLES)
    assert {user.email for user in active} == {a.email for a in ACCOUNTS}
    inactive = list(db.session.scalars(select(User).where(User.active.is_(False))))
    assert {user.email for user in inactive} == {c["email"] for c in DATA["contacts"]}


def test_demo_accounts_log_in_with_printed_passwords(db, loaded):
    for email, password, role in loaded:
        user = authenticate(email, password)
        assert user is not None, email
        assert user.role == role


def test_contact_accounts_cannot_log_in(db, loaded):
    for contact in DATA["contacts"]:
        user = db.session.scalar(select(User).where(User.email == contact["email"]))
        assert user.active is False
        assert authenticate(contact["email"], "demo-owner-2026") is None


def test_owner_and_donor_organisations(db, loaded):
    owner = db.session.scalar(select(User).where(User.email == "owner@demo.example.org"))
    donor = db.session.scalar(select(User).where(User.email == "donor@demo.example.org"))
    assert owner.organisation.name == "International Telecommunication Union (ITU)"
    assert donor.organisation.iati_ref == "XI-IATI-EC_INTPA"
    donor_funder = db.session.scalar(select(Funder).where(Funder.organisation_id == donor.organisation_id))
    assert donor_funder.name == "European Commission"
    assert db.session.scalar(select(func.count()).select_from(Project).where(Project.organisation_id == owner.organisation_id)) == 6


def test_second_load_changes_nothing(db, loaded):
    before = snapshot(db)
    again = load_demo()
    db.session.commit()
    assert again == loaded
    assert snapshot(db) == before


def test_every_demo_project_is_illustrative(db, loaded):
    projects = list(db.session.scalars(select(Project)))
    assert len(projects) == len(DATA["projects"])
    for project in projects:
        assert project.illustrative is True, project.title
        assert project.source == "demo", project.title
        assert "illustrative" in project.description.lower(), project.title
    assert "illustrative" in DATA["_note"]


def test_hipcar_countries_are_in_americas(db, loaded):
    hipcar = project_by_key(db, "hipcar")
    assert hipcar.title.startswith("HIPCAR")
    assert len(hipcar.countries) == 15
    for code in hipcar.countries:
        assert reference.region_of_country(code) == "americas", code


def test_icb4pac_countries_are_in_asia_pacific(db, loaded):
    icb4pac = project_by_key(db, "icb4pac")
    assert len(icb4pac.countries) == 14
    for code in icb4pac.countries:
        assert reference.region_of_country(code) == "asia-pacific", code


def test_project_tags_match_data(db, loaded):
    for spec in DATA["projects"]:
        project = project_by_key(db, spec["key"])
        assert project.countries == sorted(spec["countries"]), spec["key"]
        assert project.regions == sorted(spec["regions"]), spec["key"]
        assert project.themes == sorted(spec["themes"]), spec["key"]
        assert project.sectors == sorted(spec["sectors"]), spec["key"]


def test_deadlines_are_offsets_from_load_day(db, loaded):
    today = utcnow().date()
    deadlines = []
    for spec in DATA["projects"]:
        project = project_by_key(db, spec["key"])
        by_title = {need.title: need for need in project.needs}
        for need_spec in spec["needs"]:
            need = by_title[need_spec["title"]]
            days = need_spec["deadline_in_days"]
            expected = None if days is None else today + timedelta(days=days)
            assert need.deadline == expected, need.title
            deadlines.append(need.deadline)
    assert deadlines.count(None) == 1
    assert sum(1 for d in deadlines if d is not None and d > today) >= 10


def test_returned_project_keeps_reason(db, loaded):
    project = project_by_key(db, "caribbean-spectrum")
    assert project.status == "returned"
    assert project.return_reason.startswith("Split the monitoring equipment")


def test_need_totals_match_pledges(db, loaded):
    for need in db.session.scalars(select(FundingNeed)):
        live = db.session.scalars(select(Pledge).where(Pledge.need_id == need.id, Pledge.state.not_in(RELEASED_STATES)))
        assert need.pledged_minor == sum(p.need_amount_minor for p in live), need.title
    assessment = next(n for n in project_by_key(db, "hipssa").needs if n.title.startswith("Regional assessment"))
    assert assessment.status == "funded"
    assert assessment.pledged_minor == 35_000_000


def test_pledge_ledger_follows_actions(db, loaded):
    donor = db.session.scalar(select(User).where(User.email == "donor@demo.example.org"))
    coordinator = db.session.scalar(select(User).where(User.email == "coordinator@demo.example.org"))
    pledges = {p.idempotency_key: p for p in db.session.scalars(select(Pledge))}
    for spec in DATA["pledges"]:
        pledge = pledges[f"demo:{spec['key']}"]
        events = [(e.from_state, e.to_state) for e in pledge.events]
        assert len(events) == 1 + len(spec["actions"]), spec["key"]
        assert events[0] == (None, "pledged")
        assert events[-1][1] == pledge.state
        assert all(e.actor_id == coordinator.id for e in pledge.events[1:]), spec["key"]
        # The demo donor pledges for the European Commission, and the coordinator records the rest.
        creator = donor if spec["funder"] == "ec" else coordinator
        assert pledge.created_by_id == creator.id, spec["key"]
    foundation = pledges["demo:foundation-pacific-training"]
    assert foundation.state == "partly_disbursed"
    assert foundation.disbursed_minor == 4_000_000


def test_changed_password_is_not_printed(db, loaded):
    owner = db.session.scalar(select(User).where(User.email == "owner@demo.example.org"))
    owner.password_hash = generate_password_hash("another password 123")
    db.session.commit()
    accounts = load_demo()
    assert ("owner@demo.example.org", PASSWORD_CHANGED, "owner") in accounts
    assert ("donor@demo.example.org", "demo-donor-2026", "donor") in accounts


def test_account_with_other_role_conflicts(db, make_user):
    make_user("donor", organisation=None, email="owner@demo.example.org")
    with pytest.raises(Conflict) as raised:
        load_demo()
    assert "owner@demo.example.org" in raised.value.message
    assert "exists with role donor" in raised.value.message
    db.session.rollback()
    assert count(db, Project) == 0


def _broken(change) -> dict:
    data = copy.deepcopy(DATA)
    change(data)
    return data


def _project(data: dict, key: str) -> dict:
    return next(p for p in data["projects"] if p["key"] == key)


INVALID = [
    ("unknown country", lambda d: _project(d, "hipcar")["countries"].append("XX"), "projects[hipcar].countries", "'XX'"),
    ("unknown theme", lambda d: _project(d, "infinity")["themes"].append("roads"), "projects[infinity].themes", "'roads'"),
    ("unknown sector", lambda d: d["funders"][0]["sectors"].append("99999"), "funders[ec].sectors", "'99999'"),
    ("unknown region", lambda d: d["funders"][0]["regions"].append("oceania"), "funders[ec].regions", "'oceania'"),
    ("not illustrative", lambda d: _project(d, "hipssa").update(illustrative=False), "projects[hipssa].illustrative", "illustrative"),
    ("goal decimals", lambda d: _project(d, "hipssa")["needs"][0].update(goal="1.234"), "projects[hipssa].needs[assessment].goal", "'1.234'"),
    ("pledge currency", lambda d: d["pledges"][0].update(currency="USD"), "pledges[ec-hipssa-assessment].currency", "'USD'"),
    ("pledge on draft", lambda d: d["pledges"][0].update(project="central-africa-dtt", need="roadmaps"), "pledges[ec-hipssa-assessment].project", "draft"),
    ("organisation country", lambda d: d["organisations"][3].update(country="QQ"), "organisations[kenya-ict].country", "'QQ'"),
    ("returned without reason", lambda d: _project(d, "caribbean-spectrum").update(return_reason=""), "projects[caribbean-spectrum].return_reason", "reason"),
    ("organisation without owner", lambda d: _project(d, "kenya-access-centres").update(organisation="world-bank"), "projects[kenya-access-centres].organisation", "'world-bank'"),
    ("float day offset", lambda d: _project(d, "infinity")["needs"][0].update(deadline_in_days=1.5), "projects[infinity].needs[traffic-survey].deadline_in_days", "1.5"),
]


@pytest.mark.parametrize("change, field, value", [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_data_rejected(db, change, field, value):
    data = _broken(change)
    with pytest.raises(ValidationFailed) as raised:
        load_demo(data)
    assert field in raised.value.fields
    assert value in raised.value.fields[field]
    assert count(db, User) == 0
    assert count(db, Organisation) == 0


def test_shipped_data_is_valid():
    check_data(DATA)


def test_production_config_refused(app, db, monkeypatch):
    monkeypatch.setitem(app.config, "PRODUCTION", True)
    with pytest.raises(Conflict):
        load_demo()
    assert count(db, User) == 0


def test_cli_demo_load_prints_accounts(app, db):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["demo", "load"])
    assert result.exit_code == 0, result.output
    for account in ACCOUNTS:
        line = next((line for line in result.output.splitlines() if account.email in line), "")
        assert account.password in line, result.output
        assert account.role in line, result.output
    db.session.remove()
    assert count(db, Project) == len(DATA["projects"])

    second = runner.invoke(args=["demo", "load"])
    assert second.exit_code == 0, second.output
    assert count(db, Project) == len(DATA["projects"])
    assert count(db, PledgeEvent) == 13
