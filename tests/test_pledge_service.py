"""Tests of the pledge service: the goal, idempotency, deadlines, transitions and the ledger."""

from datetime import date, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from financing.core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from financing.core.time import utcnow
from financing.pledges import services
from financing.pledges.models import Pledge, PledgeEvent
from financing.pledges.services import act, create_pledge, need_totals
from financing.projects.models import FundingNeed, Project
from financing.projects.services import NeedInput, ProjectInput, create_project, publish_project, submit_project


@pytest.fixture
def build_project(db, make_user):
    """Build a project with needs given as (goal_minor, currency, deadline, allow_overfunding)."""
    coordinator = make_user("coordinator", organisation=None)

    def build(*needs, status="published", owner=None):
        owner = owner or make_user("owner", organisation="Ministry of ICT, Kenya")
        data = ProjectInput(
            title="Rural broadband for Kenya",
            summary="Wireless access points in 40 rural counties.",
            countries=["KE"],
            themes=["broadband"],
            needs=[
                NeedInput(title=f"Need {index}", goal_minor=goal, currency=currency, deadline=deadline, allow_overfunding=over)
                for index, (goal, currency, deadline, over) in enumerate(needs or [(100_000, "EUR", None, False)])
            ],
        )
        project = create_project(owner, data)
        if status in ("submitted", "published"):
            submit_project(owner, project)
        if status == "published":
            publish_project(coordinator, project)
        db.session.commit()
        return project

    build.coordinator = coordinator
    return build


def need_of(project: Project, index: int = 0) -> FundingNeed:
    return project.needs[index]


def count(db, model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def events_of(db, pledge_id: int) -> list[PledgeEvent]:
    return list(db.session.scalars(select(PledgeEvent).where(PledgeEvent.pledge_id == pledge_id).order_by(PledgeEvent.id)))


def pledged_minor(db, need_id: int) -> int:
    return db.session.scalar(select(FundingNeed.pledged_minor).where(FundingNeed.id == need_id))


def test_pledge_within_goal(db, make_user, build_project):
    donor = make_user("donor", organisation="European Commission")
    need = need_of(build_project())

    pledge, created = create_pledge(donor, need.id, 40_000, "EUR")
    db.session.commit()

    assert created is True
    assert pledge.state == "pledged"
    assert pledge.amount_minor == 40_000
    assert pledge.need_amount_minor == 40_000
    assert pledge.funder.name == "European Commission"
    assert pledged_minor(db, need.id) == 40_000
    assert [(e.from_state, e.to_state, e.amount_minor, e.actor_id) for e in events_of(db, pledge.id)] == [
        (None, "pledged", 40_000, donor.id)
    ]
    assert need_totals(need.id) == {"pledged": 40_000, "confirmed": 0, "disbursed": 0}


def test_pledge_reaching_goal_exactly(db, make_user, build_project):
    donor = make_user("donor")
    need = need_of(build_project())

    create_pledge(donor, need.id, 60_000, "EUR")
    pledge, created = create_pledge(donor, need.id, 40_000, "EUR")
    db.session.commit()

    assert created is True
    assert pledged_minor(db, need.id) == 100_000
    assert count(db, Pledge) == 2


def test_pledge_over_goal_writes_nothing(db, make_user, build_project):
    donor = make_user("donor")
    need = need_of(build_project())
    create_pledge(donor, need.id, 70_000, "EUR")
    db.session.commit()

    with pytest.raises(Conflict) as raised:
        create_pledge(donor, need.id, 30_001, "EUR")

    assert "amount" in raised.value.fields
    # The service rolled its savepoint back: nothing is pending even before the caller rolls back.
    assert count(db, Pledge) == 1
    assert count(db, PledgeEvent) == 1
    assert pledged_minor(db, need.id) == 70_000
    db.session.rollback()
    assert count(db, Pledge) == 1
    assert count(db, PledgeEvent) == 1
    assert pledged_minor(db, need.id) == 70_000


def test_pledge_over_goal_allowed_with_overfunding(db, make_user, build_project):
    donor = make_user("donor")
    need = need_of(build_project((100_000, "EUR", None, True)))

    pledge, created = create_pledge(donor, need.id, 150_000, "EUR")
    db.session.commit()

    assert created is True
    assert pledged_minor(db, need.id) == 150_000


def test_idempotency_key_returns_first_pledge(db, make_user, build_project):
    donor = make_user("donor")
    need = need_of(build_project())

    first, first_created = create_pledge(donor, need.id, 10_000, "EUR", idempotency_key="key-1")
    db.session.commit()
    again, again_created = create_pledge(donor, need.id, 10_000, "EUR", idempotency_key="key-1")
    db.session.commit()

    assert first_created is True
    assert again_created is False
    assert again.id == first.id
    assert count(db, Pledge) == 1
    assert count(db, PledgeEvent) == 1
    assert pledged_minor(db, need.id) == 10_000


def test_idempotency_key_is_per_user(db, make_user, build_project):
    need = need_of(build_project())
    first_donor = make_user("donor", organisation=None)
    second_donor = make_user("donor", organisation=None)

    first, _ = create_pledge(first_donor, need.id, 10_000, "EUR", idempotency_key="same")
    second, created = create_pledge(second_donor, need.id, 10_000, "EUR", idempotency_key="same")
    db.session.commit()

    assert created is True
    assert second.id != first.id
    assert pledged_minor(db, need.id) == 20_000


@pytest.mark.parametrize("status", ["draft", "submitted"])
def test_pledge_on_unpublished_project_not_found(db, make_user, build_project, status):
    donor = make_user("donor")
    need = need_of(build_project(status=status))

    with pytest.raises(NotFound):
        create_pledge(donor, need.id, 1_000, "EUR")

    assert count(db, Pledge) == 0


def test_pledge_on_unknown_need_not_found(db, make_user):
    donor = make_user("donor")

    with pytest.raises(NotFound):
        create_pledge(donor, 999_999, 1_000, "EUR")


def test_owner_cannot_pledge(db, make_user, build_project):
    need = need_of(build_project())
    owner = make_user("owner", organisation="Another ministry")

    with pytest.raises(Forbidden):
        create_pledge(owner, need.id, 1_000, "EUR")


def test_deadline_yesterday_rejected_today_accepted(db, make_user, build_project):
    donor = make_user("donor")
    today = utcnow().date()
    project = build_project((100_000, "EUR", today - timedelta(days=1), False), (100_000, "EUR", today, False))

    with pytest.raises(Conflict) as raised:
        create_pledge(donor, need_of(project, 0).id, 1_000, "EUR")
    assert "need_id" in raised.value.fields
    db.session.rollback()

    pledge, created = create_pledge(donor, need_of(project, 1).id, 1_000, "EUR")
    assert created is True
    assert count(db, Pledge) == 1


def test_deadline_ends_at_midnight_utc(db, make_user, build_project, monkeypatch):
    donor = make_user("donor")
    project = build_project((100_000, "EUR", date(2031, 6, 15), False))
    need_id = need_of(project).id

    monkeypatch.setattr(services, "utcnow", lambda: datetime(2031, 6, 15, 23, 59, 59, tzinfo=timezone.utc))
    create_pledge(donor, need_id, 1_000, "EUR")

    monkeypatch.setattr(services, "utcnow", lambda: datetime(2031, 6, 16, 0, 0, 0, tzinfo=timezone.utc))
    with pytest.raises(Conflict):
        create_pledge(donor, need_id, 1_000, "EUR")

    assert count(db, Pledge) == 1


@pytest.mark.parametrize("currency", ["USD", "usd", "XYZ"])
def test_currency_mismatch_names_currency(db, make_user, build_project, currency):
    donor = make_user("donor")
    need = need_of(build_project())

    with pytest.raises(ValidationFailed) as raised:
        create_pledge(donor, need.id, 1_000, currency)

    assert list(raised.value.fields) == ["currency"]
    assert count(db, Pledge) == 0


@pytest.fixture
def pledge_of(db, make_user, build_project):
    """Return a factory of committed pledges by one donor on one need of 1,000.00 EUR."""
    donor = make_user("donor")
    project = build_project()

    def make(amount_minor: int = 40_000) -> Pledge:
        pledge, _ = create_pledge(donor, project.needs[0].id, amount_minor, "EUR")
        db.session.commit()
        return pledge

    make.coordinator = build_project.coordinator
    make.donor = donor
    make.project = project
    return make


@pytest.mark.parametrize(
    "setup, action, amount, reason, expected",
    [
        ([], "confirm", None, "", "confirmed"),
        ([], "cancel", None, "Funder withdrew the offer", "cancelled"),
        (["confirm"], "cancel", None, "Budget line closed", "cancelled"),
        (["confirm"], "disburse", 40_000, "", "disbursed"),
        (["confirm"], "disburse", 10_000, "", "partly_disbursed"),
    ],
)
def test_transition_writes_one_ledger_row(db, pledge_of, setup, action, amount, reason, expected):
    pledge = pledge_of()
    coordinator = pledge_of.coordinator
    for step in setup:
        act(coordinator, pledge.id, step)
    db.session.commit()
    before = count(db, PledgeEvent)
    state_before = pledge.state

    act(coordinator, pledge.id, action, amount, reason)
    db.session.commit()

    assert pledge.state == expected
    assert count(db, PledgeEvent) == before + 1
    last = events_of(db, pledge.id)[-1]
    assert (last.from_state, last.to_state, last.actor_id, last.reason) == (state_before, expected, coordinator.id, reason)
    assert last.amount_minor == (amount if amount is not None else 40_000)


@pytest.mark.parametrize(
    "setup, action, amount",
    [
        (["cancel"], "confirm", None),
        ([], "disburse", 1_000),
        (["confirm"], "confirm", None),
        (["confirm", "disburse"], "cancel", None),
        (["cancel"], "disburse", 1_000),
    ],
)
def test_forbidden_transition_conflict_writes_nothing(db, pledge_of, setup, action, amount):
    pledge = pledge_of()
    coordinator = pledge_of.coordinator
    for step in setup:
        act(coordinator, pledge.id, step, None, "setup")
    db.session.commit()
    rows_before = count(db, PledgeEvent)
    state_before = pledge.state
    need_id = pledge.need_id
    pledged_before = pledged_minor(db, need_id)

    with pytest.raises(Conflict):
        act(coordinator, pledge.id, action, amount, "not allowed")
    db.session.rollback()

    assert count(db, PledgeEvent) == rows_before
    assert db.session.get(Pledge, pledge.id).state == state_before
    assert pledged_minor(db, need_id) == pledged_before


def test_partial_disbursements_then_full(db, pledge_of):
    pledge = pledge_of()
    coordinator = pledge_of.coordinator
    act(coordinator, pledge.id, "confirm")

    act(coordinator, pledge.id, "disburse", 15_000)
    assert (pledge.state, pledge.disbursed_minor) == ("partly_disbursed", 15_000)
    act(coordinator, pledge.id, "disburse", 5_000)
    assert (pledge.state, pledge.disbursed_minor) == ("partly_disbursed", 20_000)
    act(coordinator, pledge.id, "disburse", 20_000)
    db.session.commit()

    assert (pledge.state, pledge.disbursed_minor) == ("disbursed", 40_000)
    assert [e.to_state for e in events_of(db, pledge.id)] == [
        "pledged", "confirmed", "partly_disbursed", "partly_disbursed", "disbursed"
    ]
    assert need_totals(pledge.need_id) == {"pledged": 40_000, "confirmed": 40_000, "disbursed": 40_000}


def test_disburse_without_amount_pays_the_rest(db, pledge_of):
    pledge = pledge_of()
    coordinator = pledge_of.coordinator
    act(coordinator, pledge.id, "confirm")
    act(coordinator, pledge.id, "disburse", 10_000)

    act(coordinator, pledge.id, "disburse")

    assert (pledge.state, pledge.disbursed_minor) == ("disbursed", 40_000)
    assert events_of(db, pledge.id)[-1].amount_minor == 30_000


def test_disbursing_more_than_outstanding_conflicts(db, pledge_of):
    pledge = pledge_of()
    coordinator = pledge_of.coordinator
    act(coordinator, pledge.id, "confirm")
    act(coordinator, pledge.id, "disburse", 30_000)
    db.session.commit()
    rows_before = count(db, PledgeEvent)

    with pytest.raises(Conflict) as raised:
        act(coordinator, pledge.id, "disburse", 10_001)
    db.session.rollback()

    assert "amount" in raised.value.fields
    assert count(db, PledgeEvent) == rows_before
    refreshed = db.session.get(Pledge, pledge.id)
    assert (refreshed.state, refreshed.disbursed_minor) == ("partly_disbursed", 30_000)


def test_disbursing_zero_is_invalid(db, pledge_of):
    pledge = pledge_of()
    act(pledge_of.coordinator, pledge.id, "confirm")

    with pytest.raises(ValidationFailed) as raised:
        act(pledge_of.coordinator, pledge.id, "disburse", 0)

    assert "amount" in raised.value.fields


@pytest.mark.parametrize("reason", ["", "   "])
def test_cancel_requires_reason(db, pledge_of, reason):
    pledge = pledge_of()

    with pytest.raises(ValidationFailed) as raised:
        act(pledge_of.coordinator, pledge.id, "cancel", None, reason)
    db.session.rollback()

    assert "reason" in raised.value.fields
    assert db.session.get(Pledge, pledge.id).state == "pledged"


def test_donor_cannot_act(db, pledge_of):
    pledge = pledge_of()

    with pytest.raises(Forbidden):
        act(pledge_of.donor, pledge.id, "confirm")


def test_cancel_releases_amount(db, pledge_of):
    pledge = pledge_of(40_000)
    other = pledge_of(60_000)
    need_id = pledge.need_id
    assert pledged_minor(db, need_id) == 100_000

    act(pledge_of.coordinator, pledge.id, "cancel", None, "Funder withdrew the offer")
    db.session.commit()

    assert pledged_minor(db, need_id) == 60_000
    assert need_totals(need_id)["pledged"] == 60_000
    assert other.state == "pledged"
    # The released amount can be pledged again.
    again = pledge_of(40_000)
    assert pledged_minor(db, need_id) == 100_000
    assert again.state == "pledged"


def test_need_and_project_funded_when_confirmed(db, make_user, build_project):
    donor = make_user("donor")
    coordinator = build_project.coordinator
    project = build_project((100_000, "EUR", None, False), (5_000, "EUR", None, False))
    first_need, second_need = project.needs

    first, _ = create_pledge(donor, first_need.id, 100_000, "EUR")
    assert first_need.status == "open"
    act(coordinator, first.id, "confirm")
    db.session.commit()
    assert first_need.status == "funded"
    assert project.status == "published"

    second, _ = create_pledge(donor, second_need.id, 5_000, "EUR")
    act(coordinator, second.id, "confirm")
    db.session.commit()

    assert second_need.status == "funded"
    assert db.session.get(Project, project.id).status == "funded"


def test_need_reopens_when_confirmed_pledge_cancelled(db, make_user, build_project):
    donor = make_user("donor")
    coordinator = build_project.coordinator
    project = build_project((100_000, "EUR", None, False), (5_000, "EUR", None, False))
    first, _ = create_pledge(donor, project.needs[0].id, 100_000, "EUR")
    act(coordinator, first.id, "confirm")
    db.session.commit()
    assert project.needs[0].status == "funded"

    act(coordinator, first.id, "cancel", None, "Board did not approve")
    db.session.commit()

    assert project.needs[0].status == "open"
    assert pledged_minor(db, project.needs[0].id) == 0


# NOTE: projects.services.refresh_status only moves published to funded, so a funded project
# whose need reopens stays funded and no longer accepts pledges for that need.
def test_project_reopens_when_need_reopens(db, make_user, build_project):
    donor = make_user("donor")
    coordinator = build_project.coordinator
    project = build_project((5_000, "EUR", None, False))
    pledge, _ = create_pledge(donor, project.needs[0].id, 5_000, "EUR")
    act(coordinator, pledge.id, "confirm")
    db.session.commit()
    assert project.status == "funded"

    act(coordinator, pledge.id, "cancel", None, "Board did not approve")
    db.session.commit()

    assert project.status == "published"
    replacement, created = create_pledge(donor, project.needs[0].id, 5_000, "EUR")
    assert created is True
