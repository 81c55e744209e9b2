"""Tests of bulk reconciliation on the review page: confirming and cancelling many pledges at once."""

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from flask import g, request_started
from lxml import html
from sqlalchemy import event, func, select, update
from sqlalchemy.orm import Session

from financing.core.errors import Conflict
from financing.core.time import utcnow
from financing.pledges import services as pledge_services
from financing.pledges.models import Pledge, PledgeEvent
from financing.pledges.services import act, create_pledge
from financing.projects.models import FundingNeed
from financing.projects.services import NeedInput, ProjectInput, create_project, publish_project, submit_project
from financing.rates.services import add_rate

ON_POSTGRES = os.environ.get("TEST_DATABASE_URL", "").startswith("postgresql")


@pytest.fixture(autouse=True)
def fresh_globals_per_request(app):
    """Start each request with an empty `g`, so that each client request loads its own user."""

    def clear_globals(sender, **extra):
        for name in list(g):
            g.pop(name)

    request_started.connect(clear_globals, app)
    yield
    request_started.disconnect(clear_globals, app)


@pytest.fixture
def people(make_user):
    class People:
        owner = make_user("owner", organisation="Ministry of ICT, Kenya")
        donor = make_user("donor", organisation="European Commission")
        other_donor = make_user("donor", organisation="World Bank")
        coordinator = make_user("coordinator", organisation=None)

    return People


def publish_need(db, people, title="Rural broadband for Kenya", goal_minor=1_000_000) -> FundingNeed:
    data = ProjectInput(
        title=title, summary="Wireless access in rural counties.", countries=["KE"], themes=["broadband"],
        needs=[NeedInput(title="Access points", goal_minor=goal_minor, currency="EUR")],
    )
    project = create_project(people.owner, data)
    submit_project(people.owner, project)
    publish_project(people.coordinator, project)
    db.session.commit()
    return project.needs[0]


@pytest.fixture
def need(db, people):
    return publish_need(db, people)


@pytest.fixture
def pledges(db, people, need) -> list[Pledge]:
    """Three pledges awaiting confirmation: 100.00, 200.00 and 300.00 EUR."""
    created = [create_pledge(people.donor, need.id, amount, "EUR")[0] for amount in (10_000, 20_000, 30_000)]
    db.session.commit()
    return created


def page(response):
    return html.fromstring(response.get_data(as_text=True))


def text_of(response) -> str:
    return " ".join(page(response).text_content().split())


def event_count(db) -> int:
    return db.session.scalar(select(func.count()).select_from(PledgeEvent))


def states(db, items) -> list[str]:
    db.session.expire_all()
    return [db.session.get(Pledge, pledge.id).state for pledge in items]


def post_bulk(client, pledge_ids, action, reason="", query=""):
    data = {"bulk-pledge": [str(pledge_id) for pledge_id in pledge_ids], "bulk-action": action, "bulk-reason": reason}
    return client.post(f"/pledges/review{query}", data=data)


class LedgerCommits:
    """Record, per committed transaction, how many ledger rows it inserted.

    Jobs that run after a request commit on their own; counting only the commits that wrote
    ledger rows checks that one transaction carried the whole batch.
    """

    def __init__(self):
        self.pending = 0
        self.rows_per_commit: list[int] = []

    def after_flush(self, session, flush_context):
        self.pending += sum(isinstance(item, PledgeEvent) for item in session.new)

    def after_commit(self, session):
        if self.pending:
            self.rows_per_commit.append(self.pending)
        self.pending = 0

    def after_rollback(self, session):
        self.pending = 0

    def __enter__(self):
        for name in ("after_flush", "after_commit", "after_rollback"):
            event.listen(Session, name, getattr(self, name))
        return self

    def __exit__(self, *exc_info):
        for name in ("after_flush", "after_commit", "after_rollback"):
            event.remove(Session, name, getattr(self, name))


def test_bulk_confirm_writes_ledger_rows(client, login, people, need, pledges, db):
    login(people.coordinator)
    before = event_count(db)

    with LedgerCommits() as ledger:
        response = post_bulk(client, [pledge.id for pledge in pledges], "confirm")

    assert response.status_code == 302
    assert response.headers["Location"] == "/pledges/review"
    assert ledger.rows_per_commit == [3]
    assert states(db, pledges) == ["confirmed"] * 3
    assert event_count(db) == before + 3
    rows = db.session.scalars(select(PledgeEvent).where(PledgeEvent.to_state == "confirmed").order_by(PledgeEvent.pledge_id)).all()
    assert [(row.pledge_id, row.from_state, row.amount_minor, row.actor_id) for row in rows] == [
        (pledge.id, "pledged", pledge.need_amount_minor, people.coordinator.id) for pledge in pledges
    ]
    assert "Confirmed 3 pledges." in text_of(client.get(response.headers["Location"]))


def test_batch_with_cancelled_pledge_changes_nothing(client, login, people, need, pledges, db):
    act(people.coordinator, pledges[1].id, "cancel", reason="Duplicate of a transfer")
    db.session.commit()
    login(people.coordinator)
    before = event_count(db)

    response = post_bulk(client, [pledge.id for pledge in pledges], "confirm")

    assert response.status_code == 409
    message = page(response).xpath("//*[@class='error-summary']/p/text()")
    assert message == [
        f"No pledge was changed, because pledge {pledges[1].id} is cancelled. "
        "Only pledges awaiting confirmation can be confirmed or cancelled together."
    ]
    assert states(db, pledges) == ["pledged", "cancelled", "pledged"]
    assert event_count(db) == before
    # The pledges still waiting stay ticked, so the coordinator can untick the one named.
    checked = page(response).xpath("//input[@name='bulk-pledge'][@checked]/@value")
    assert checked == [str(pledges[0].id), str(pledges[2].id)]


def test_batch_names_every_stale_pledge(client, login, people, need, pledges, db):
    act(people.coordinator, pledges[0].id, "confirm")
    act(people.coordinator, pledges[2].id, "cancel", reason="Withdrawn by the funder")
    db.session.commit()
    login(people.coordinator)

    response = post_bulk(client, [pledge.id for pledge in pledges] + [999_999], "cancel", reason="Board decision")

    assert response.status_code == 409
    text = text_of(response)
    assert f"pledge {pledges[0].id} is confirmed; pledge {pledges[2].id} is cancelled; pledge 999999 does not exist." in text
    assert states(db, pledges) == ["confirmed", "pledged", "cancelled"]


def test_failure_inside_batch_rolls_back(client, login, people, need, pledges, db, monkeypatch):
    """A pledge that fails after others were changed undoes the whole batch."""
    real_act = pledge_services.act

    def act_failing_on_last(user, pledge_id, action, amount_minor=None, reason=""):
        if pledge_id == pledges[-1].id:
            raise Conflict(f"Cannot {action} pledge {pledge_id}.", {"state": "pledged"})
        return real_act(user, pledge_id, action, amount_minor, reason)

    monkeypatch.setattr(pledge_services, "act", act_failing_on_last)
    login(people.coordinator)
    before = event_count(db)

    response = post_bulk(client, [pledge.id for pledge in pledges], "confirm")

    assert response.status_code == 409
    assert f"Cannot confirm pledge {pledges[-1].id}." in text_of(response)
    assert states(db, pledges) == ["pledged"] * 3
    assert event_count(db) == before
    assert db.session.get(FundingNeed, need.id).status == "open"


@pytest.mark.skipif(not ON_POSTGRES, reason="concurrent requests need PostgreSQL; in-memory SQLite shares one connection")
def test_concurrent_overlapping_batches(app, login, people, need, pledges, db, make_user):
    """Two coordinators confirm overlapping batches at once: one wins, the other changes nothing."""
    other_coordinator = make_user("coordinator", organisation=None)
    batches = [[pledge.id for pledge in pledges], [pledges[2].id, pledges[1].id]]
    clients = [login(people.coordinator, app.test_client()), login(other_coordinator, app.test_client())]
    start = threading.Barrier(2)

    def submit(position):
        start.wait()
        return post_bulk(clients[position], batches[position], "confirm")

    with ThreadPoolExecutor(max_workers=2) as pool:
        responses = list(pool.map(submit, range(2)))

    assert sorted(response.status_code for response in responses) == [302, 409]
    db.session.expire_all()
    confirmations = db.session.scalars(select(PledgeEvent.pledge_id).where(PledgeEvent.to_state == "confirmed")).all()
    assert sorted(confirmations) == sorted(batches[0] if responses[0].status_code == 302 else batches[1])
    assert len(confirmations) == len(set(confirmations))


def test_batch_skips_pledge_moved_by_earlier_one(client, login, people, need, pledges, db, monkeypatch):
    """A pledge that an earlier one of the batch confirmed, as a match-fund pledge is, is no conflict."""
    real_act = pledge_services.act

    def act_confirming_linked(user, pledge_id, action, amount_minor=None, reason=""):
        result = real_act(user, pledge_id, action, amount_minor, reason)
        if pledge_id == pledges[0].id:
            real_act(user, pledges[1].id, action, amount_minor, reason)
        return result

    monkeypatch.setattr(pledge_services, "act", act_confirming_linked)
    login(people.coordinator)
    before = event_count(db)

    response = post_bulk(client, [pledge.id for pledge in pledges], "confirm")

    assert response.status_code == 302
    assert states(db, pledges) == ["confirmed"] * 3
    assert event_count(db) == before + 3


def test_bulk_cancel_needs_reason(client, login, people, need, pledges, db):
    login(people.coordinator)
    before = event_count(db)

    response = post_bulk(client, [pledge.id for pledge in pledges], "cancel", reason="   ")

    assert response.status_code == 422
    assert page(response).xpath("//*[@id='bulk-reason-error']/text()") == ["Reason is required."]
    assert states(db, pledges) == ["pledged"] * 3
    assert event_count(db) == before


def test_bulk_cancel_releases_amounts(client, login, people, need, pledges, db):
    login(people.coordinator)

    response = post_bulk(client, [pledges[0].id, pledges[2].id], "cancel", reason="Funds were reallocated")

    assert response.status_code == 302
    assert states(db, pledges) == ["cancelled", "pledged", "cancelled"]
    assert db.session.get(FundingNeed, need.id).pledged_minor == 20_000
    reasons = db.session.scalars(select(PledgeEvent.reason).where(PledgeEvent.to_state == "cancelled")).all()
    assert reasons == ["Funds were reallocated"] * 2
    assert "Cancelled 2 pledges." in text_of(client.get("/pledges/review"))


def test_empty_selection_rejected(client, login, people, need, pledges, db):
    login(people.coordinator)

    response = post_bulk(client, [], "confirm")

    assert response.status_code == 422
    assert "Select at least one pledge." in text_of(response)
    assert states(db, pledges) == ["pledged"] * 3


@pytest.mark.parametrize("action", ["", "disburse", "delete"])
def test_unknown_bulk_action_rejected(client, login, people, need, pledges, db, action):
    login(people.coordinator)

    response = post_bulk(client, [pledges[0].id], action)

    assert response.status_code == 422
    assert f"Unknown action {action!r}" in text_of(response)
    assert states(db, pledges) == ["pledged"] * 3


@pytest.mark.parametrize("value", ["7; drop", "\u00b2", "1" * 30])
def test_bad_pledge_id_rejected(client, login, people, need, pledges, db, value):
    login(people.coordinator)

    response = post_bulk(client, [pledges[0].id, value], "confirm")

    assert response.status_code == 422
    assert f"Pledge id {value!r} is not a number." in text_of(response)
    assert states(db, pledges) == ["pledged"] * 3


@pytest.mark.parametrize("role", ["donor", "owner"])
def test_bulk_for_coordinators_only(client, login, people, need, pledges, db, role):
    login(getattr(people, role))

    assert client.get("/pledges/review").status_code == 403
    assert post_bulk(client, [pledge.id for pledge in pledges], "confirm").status_code == 403
    assert states(db, pledges) == ["pledged"] * 3


def test_select_all_on_page(client, login, people, need, pledges, db):
    login(people.coordinator)

    plain = page(client.get("/pledges/review"))
    selected = page(client.get("/pledges/review?select=page"))

    boxes = plain.xpath("//input[@type='checkbox'][@name='bulk-pledge']")
    assert [box.get("value") for box in boxes] == [str(pledge.id) for pledge in pledges]
    assert all(box.get("form") == "bulk-actions" for box in boxes)
    assert plain.xpath("//form[@id='bulk-actions'][@method='post']//button[@value='confirm']")
    assert plain.xpath("//form[@id='bulk-actions']//button[@value='cancel']")
    assert plain.xpath("//label[@for='bulk-pledge-%d']" % pledges[0].id)
    assert plain.xpath("//input[@name='bulk-pledge'][@checked]") == []
    assert selected.xpath("//input[@name='bulk-pledge'][@checked]/@value") == [str(pledge.id) for pledge in pledges]


def test_select_all_only_this_page(app, client, login, people, need, db, monkeypatch):
    monkeypatch.setitem(app.config, "PER_PAGE", 2)
    queue = [create_pledge(people.donor, need.id, 1_000 * (index + 1), "EUR")[0] for index in range(3)]
    db.session.commit()
    login(people.coordinator)

    second = page(client.get("/pledges/review?select=page&page=2"))

    assert second.xpath("//input[@name='bulk-pledge'][@checked]/@value") == [str(queue[2].id)]
    assert second.xpath("//form[@id='bulk-actions']/@action") == ["/pledges/review?page=2"]


def test_filters_narrow_queue(client, login, people, db):
    first = publish_need(db, people, title="Rural broadband for Kenya")
    second = publish_need(db, people, title="Fibre backbone for West Africa")
    add_rate(people.coordinator, "USD", "EUR", "0.92", utcnow().date())
    old, _ = create_pledge(people.donor, first.id, 10_000, "EUR")
    in_dollars, _ = create_pledge(people.other_donor, first.id, 10_000, "USD")
    elsewhere, _ = create_pledge(people.donor, second.id, 10_000, "EUR")
    db.session.execute(update(Pledge).where(Pledge.id == old.id).values(created_at=utcnow() - timedelta(days=10)))
    db.session.commit()
    login(people.coordinator)

    def listed(query: str) -> list[int]:
        document = page(client.get(f"/pledges/review{query}"))
        return [int(value) for value in document.xpath("//input[@name='bulk-pledge']/@value")]

    assert listed("") == [old.id, in_dollars.id, elsewhere.id]
    assert listed(f"?project={first.project_id}") == [old.id, in_dollars.id]
    assert listed(f"?funder={old.funder_id}") == [old.id, elsewhere.id]
    assert listed("?currency=USD") == [in_dollars.id]
    assert listed("?older_than=7") == [old.id]
    assert listed(f"?project={first.project_id}&currency=EUR") == [old.id]
    document = page(client.get(f"/pledges/review?project={second.project_id}"))
    assert document.xpath("//select[@name='project']/option[@selected]/@value") == [str(second.project_id)]


def test_filters_kept_after_bulk_action(client, login, people, need, pledges, db):
    login(people.coordinator)

    response = post_bulk(client, [pledges[0].id], "confirm", query="?currency=EUR&older_than=0")

    assert response.status_code == 302
    assert response.headers["Location"] == "/pledges/review?currency=EUR&older_than=0"


@pytest.mark.parametrize(
    "query, field, message",
    [
        ("?older_than=abc", "older_than", "Older than 'abc' is not a number of days"),
        ("?older_than=-3", "older_than", "Older than '-3' is not a number of days"),
        ("?currency=XYZ", "currency", "Unknown currency 'XYZ'"),
        ("?project=first", "project", "Project 'first' is not an id."),
        ("?funder=" + "9" * 30, "funder", "Funder '999999999999999999999999999999' is not an id."),
        ("?older_than=\u00b3", "older_than", "is not a number of days"),
    ],
)
def test_bad_filter_named(client, login, people, need, pledges, query, field, message):
    login(people.coordinator)

    response = client.get(f"/pledges/review{query}")

    assert response.status_code == 422
    errors = page(response).xpath(f"//*[@id='{field}-error']/text()")
    assert len(errors) == 1
    assert message in errors[0]
