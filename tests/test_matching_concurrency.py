"""Match runs at the same time on PostgreSQL: every run finishes and each pair is stored once.

Each run works in its own thread, app context and database connection, as two `flask match
run` processes or two RQ workers would. Without the advisory locks of `engine._lock`, both
runs read "no match yet" for the same pairs and the later commit fails on the unique
constraint of (project_id, funder_id).
"""

import os
import threading

import pytest
from sqlalchemy import func, select

from financing import create_app
from financing.config import TestConfig
from financing.extensions import db as _db
from financing.funders.models import Funder, FunderPreference
from financing.matching.engine import run_matching
from financing.matching.models import Match
from financing.projects.models import FundingNeed, Project, ProjectTag

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        not os.environ.get("TEST_DATABASE_URL", "").startswith("postgresql"),
        reason="concurrency tests need PostgreSQL: set TEST_DATABASE_URL=postgresql+psycopg://...",
    ),
]

PROJECTS = 40
FUNDERS = 15
ROUNDS = 3


@pytest.fixture(scope="module")
def second_app(app):
    """A second app on the same database, so each thread gets its own session and connection."""
    served = create_app(TestConfig)
    yield served
    with served.app_context():
        _db.engine.dispose()


@pytest.fixture
def portfolio(db, make_user):
    owner = make_user("owner")
    for number in range(PROJECTS):
        project = Project(title=f"Broadband {number}", summary="Access", description="", status="published",
                          organisation_id=owner.organisation_id, created_by_id=owner.id)
        project.tags = [ProjectTag(kind="country", code="KE"), ProjectTag(kind="sector", code="22040")]
        project.needs = [FundingNeed(title="Network", goal_minor=(number + 1) * 100_000, currency="EUR")]
        db.session.add(project)
    for number in range(FUNDERS):
        funder = Funder(name=f"Fund {number}", currency="EUR")
        funder.preferences = [FunderPreference(kind="region", code="africa"), FunderPreference(kind="theme", code="broadband")]
        db.session.add(funder)
    db.session.commit()


def run_together(app, calls) -> list[BaseException]:
    """Start each call in its own thread and app context at the same moment; return the errors."""
    barrier = threading.Barrier(len(calls))
    errors: list[BaseException] = []

    def work(call):
        with app.app_context():
            try:
                barrier.wait(timeout=30)
                call()
                _db.session.commit()
            except BaseException as error:  # noqa: BLE001 - reported to the test thread
                _db.session.rollback()
                errors.append(error)
            finally:
                _db.session.remove()

    threads = [threading.Thread(target=work, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return errors


def pair_counts(db) -> tuple[int, int]:
    total = db.session.scalar(select(func.count()).select_from(Match))
    distinct = db.session.scalar(select(func.count()).select_from(
        select(Match.project_id, Match.funder_id).distinct().subquery()))
    return total, distinct


def test_two_full_runs_store_each_pair_once(db, portfolio, second_app):
    for _ in range(ROUNDS):
        db.session.execute(Match.__table__.delete())
        db.session.commit()

        errors = run_together(second_app, [run_matching, run_matching])

        assert errors == []
        db.session.expire_all()
        assert pair_counts(db) == (PROJECTS * FUNDERS, PROJECTS * FUNDERS)


def test_project_runs_beside_a_full_run(db, portfolio, second_app):
    project_ids = list(db.session.scalars(select(Project.id).order_by(Project.id)))[:4]
    calls = [run_matching] + [lambda project_id=project_id: run_matching(project_id=project_id) for project_id in project_ids]

    errors = run_together(second_app, calls)

    assert errors == []
    db.session.expire_all()
    assert pair_counts(db) == (PROJECTS * FUNDERS, PROJECTS * FUNDERS)
