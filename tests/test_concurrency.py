"""Concurrent pledges and confirmations through the real HTTP stack on PostgreSQL.

Each request comes from its own thread on its own TCP connection to a threaded server on
127.0.0.1, so the app handles them in parallel database transactions. SQLite serialises
writers on a file lock and would prove nothing here, so these tests run on PostgreSQL only.
"""

import os
import threading
from collections import Counter
from typing import Callable

import pytest
from sqlalchemy import func, select

from financing import create_app
from financing.accounts.services import create_token
from financing.config import TestConfig
from financing.extensions import db as _db
from financing.pledges.models import RELEASED_STATES, Pledge, PledgeEvent
from financing.pledges.services import create_pledge
from financing.projects.models import FundingNeed
from financing.projects.services import NeedInput, ProjectInput, create_project, publish_project, submit_project
from live_server import LiveServer, Response, live_server, send

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        not os.environ.get("TEST_DATABASE_URL", "").startswith("postgresql"),
        reason="concurrency tests need PostgreSQL: set TEST_DATABASE_URL=postgresql+psycopg://...",
    ),
]

GOAL_MINOR = 100_000  # 1,000.00 EUR
MAX_THREADS = 30
JOIN_TIMEOUT = 120


@pytest.fixture(scope="module")
def server(app):
    """Serve a second app on the same database, with a pool large enough for every thread.

    The session `app` has created the tables. Its default pool of 15 connections would make
    half of 30 requests wait for a connection instead of for the database's row locks.
    """
    engine_options = {"pool_pre_ping": True, "pool_size": MAX_THREADS, "max_overflow": 0, "pool_timeout": 60}
    served = create_app(TestConfig, SQLALCHEMY_ENGINE_OPTIONS=engine_options)
    with live_server(served) as running:
        yield running
    with served.app_context():
        _db.engine.dispose()


def make_need(db, make_user, goal_minor: int = GOAL_MINOR) -> FundingNeed:
    """Create and commit a published project with one EUR need without over-funding."""
    owner = make_user("owner", organisation="Ministry of ICT, Kenya")
    coordinator = make_user("coordinator", organisation=None)
    data = ProjectInput(
        title="Rural broadband for Kenya",
        summary="Wireless access points in 40 rural counties.",
        countries=["KE"],
        themes=["broadband"],
        needs=[NeedInput(title="Access points", goal_minor=goal_minor, currency="EUR", allow_overfunding=False)],
    )
    project = create_project(owner, data)
    submit_project(owner, project)
    publish_project(coordinator, project)
    db.session.commit()
    return project.needs[0]


def bearer(db, user) -> dict[str, str]:
    _, token = create_token(user, name="concurrency test")
    db.session.commit()
    return {"Authorization": f"Bearer {token}"}


def pledge_body(need_id: int, amount: str = "100.00") -> dict:
    return {"need_id": need_id, "amount": amount, "currency": "EUR", "kind": "commitment"}


def run_at_once(server: LiveServer, count: int, call: Callable[[int, object], Response]) -> list[Response]:
    """Run call(index, connection) in `count` threads that start together; return responses in order.

    Each thread opens its TCP connection before the barrier, so the requests leave together.
    """
    server.reset_peak()
    barrier = threading.Barrier(count)
    responses: list[Response | None] = [None] * count
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        connection = server.connection()
        try:
            connection.connect()
            barrier.wait(timeout=JOIN_TIMEOUT)
            responses[index] = call(index, connection)
        except BaseException as error:  # reported in the test thread below
            errors.append(error)
            barrier.abort()
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(index,), name=f"client-{index}") for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a client thread did not finish in time"
    assert not errors, f"client threads failed: {errors!r}"
    # Without overlap the test would pass on a server that handles one request at a time.
    assert server.peak_in_flight > 1, f"the {count} requests did not overlap in the server"
    print(f"{count} requests, at most {server.peak_in_flight} in the app at once")
    return responses


def unexpected(responses: list[Response], *expected: int) -> list[tuple[int, str]]:
    return [(response.status, response.text[:200]) for response in responses if response.status not in expected]


def active_total(db, need_id: int) -> int:
    """Sum what the need's pledges that are not cancelled or refunded still count against its goal."""
    return db.session.scalar(
        select(func.coalesce(func.sum(Pledge.need_amount_minor - Pledge.refunded_minor), 0)).where(
            Pledge.need_id == need_id, Pledge.state.not_in(RELEASED_STATES)
        )
    )


def pledged_minor(db, need_id: int) -> int:
    return db.session.scalar(select(FundingNeed.pledged_minor).where(FundingNeed.id == need_id))


def count(db, model, *where) -> int:
    return db.session.scalar(select(func.count()).select_from(model).where(*where))


def test_concurrent_pledges_stop_at_goal(server, db, make_user):
    need = make_need(db, make_user)
    need_id = need.id
    donors = [make_user("donor", organisation=None) for _ in range(MAX_THREADS)]
    headers = [bearer(db, donor) for donor in donors]

    def pledge(index, connection):
        return send(connection, "POST", "/api/v1/pledges", pledge_body(need_id),
                    {**headers[index], "Idempotency-Key": f"goal-race-{index}"})

    responses = run_at_once(server, MAX_THREADS, pledge)

    statuses = Counter(response.status for response in responses)
    assert statuses == {201: 10, 409: 20}, unexpected(responses, 201, 409)
    for response in responses:
        if response.status == 409:
            assert response.body["error"]["code"] == "conflict"
            assert "amount" in response.body["error"]["fields"]
    accepted_ids = {response.body["id"] for response in responses if response.status == 201}
    assert len(accepted_ids) == 10

    db.session.rollback()
    assert pledged_minor(db, need_id) == GOAL_MINOR
    assert active_total(db, need_id) == GOAL_MINOR
    assert count(db, Pledge) == 10
    assert count(db, PledgeEvent) == 10
    assert set(db.session.scalars(select(Pledge.id))) == accepted_ids


@pytest.mark.parametrize(
    "amount, amount_minor",
    [
        ("250.00", 25_000),
        pytest.param("1000.00", GOAL_MINOR, id="fills-need"),
    ],
)
def test_concurrent_retries_make_one_pledge(server, db, make_user, amount, amount_minor):
    need = make_need(db, make_user)
    need_id = need.id
    donor = make_user("donor", organisation="European Commission")
    headers = {**bearer(db, donor), "Idempotency-Key": "retry-storm-1"}

    def pledge(index, connection):
        return send(connection, "POST", "/api/v1/pledges", pledge_body(need_id, amount), headers)

    responses = run_at_once(server, 10, pledge)

    statuses = Counter(response.status for response in responses)
    assert statuses == {201: 1, 200: 9}, unexpected(responses, 200, 201)
    assert len({response.body["id"] for response in responses}) == 1

    db.session.rollback()
    assert count(db, Pledge) == 1
    assert count(db, PledgeEvent) == 1
    assert pledged_minor(db, need_id) == amount_minor
    assert active_total(db, need_id) == amount_minor


def test_concurrent_confirms_confirm_once(server, db, make_user):
    need = make_need(db, make_user)
    donor = make_user("donor", organisation="European Commission")
    pledge, _ = create_pledge(donor, need.id, 40_000, "EUR", idempotency_key="to-confirm")
    db.session.commit()
    pledge_id = pledge.id
    coordinator = make_user("coordinator", organisation=None)
    headers = bearer(db, coordinator)

    def confirm(index, connection):
        return send(connection, "POST", f"/api/v1/pledges/{pledge_id}/confirm", {}, headers)

    responses = run_at_once(server, 20, confirm)

    statuses = Counter(response.status for response in responses)
    assert statuses == {200: 1, 409: 19}, unexpected(responses, 200, 409)
    confirmed = [response for response in responses if response.status == 200]
    assert confirmed[0].body["state"] == "confirmed"

    db.session.rollback()
    assert db.session.scalar(select(Pledge.state).where(Pledge.id == pledge_id)) == "confirmed"
    assert count(db, PledgeEvent, PledgeEvent.pledge_id == pledge_id, PledgeEvent.to_state == "confirmed") == 1
    assert count(db, PledgeEvent, PledgeEvent.pledge_id == pledge_id) == 2
    assert pledged_minor(db, need.id) == 40_000
