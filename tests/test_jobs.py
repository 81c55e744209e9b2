"""Suggestions follow changes: jobs queued after commit, inline by default and on RQ."""

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Queue, SimpleWorker
from sqlalchemy import func, select

from financing.funders.models import Funder, FunderPreference
from financing.jobs import QUEUE_NAME, enqueue_after_commit, run_ready_jobs
from financing.matching.models import Match
from financing.matching.services import accept_match
from financing.projects.services import NeedInput, ProjectInput, create_project, submit_project

REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture
def people(make_user):
    class People:
        owner = make_user("owner", organisation="Ministry of ICT, Kenya")
        coordinator = make_user("coordinator", organisation=None)

    return People


@pytest.fixture
def africa_funder(db):
    funder = Funder(name="Broadband Fund for Africa", kind="institution", currency="EUR")
    funder.preferences = [FunderPreference(kind="region", code="africa"), FunderPreference(kind="theme", code="broadband")]
    db.session.add(funder)
    db.session.commit()
    return funder


def submitted_project(db, owner, title="Rural broadband for Turkana"):
    data = ProjectInput(
        title=title, countries=["KE"], sectors=["22040"],
        needs=[NeedInput(title="Towers", goal_minor=200_000_000, currency="EUR")],
    )
    project = create_project(owner, data)
    submit_project(owner, project)
    db.session.commit()
    return project


def match_count(db, project_id) -> int:
    return db.session.scalar(select(func.count()).select_from(Match).where(Match.project_id == project_id))


def test_publish_computes_suggestions(client, login, db, people, africa_funder):
    project = submitted_project(db, people.owner)
    login(people.coordinator)

    response = client.post(f"/projects/{project.id}/publish")

    assert response.status_code in (302, 303)
    assert match_count(db, project.id) == 1
    match = db.session.scalar(select(Match).where(Match.project_id == project.id))
    assert match.funder_id == africa_funder.id
    assert "Kenya is in Africa" in match.explanation


def test_edit_after_review_marks_stale(client, login, db, people, africa_funder):
    project = submitted_project(db, people.owner)
    login(people.coordinator)
    client.post(f"/projects/{project.id}/publish")
    match = db.session.scalar(select(Match).where(Match.project_id == project.id))
    accept_match(people.coordinator, match.id, "Fits the fund")
    db.session.commit()

    africa_funder.preferences.append(FunderPreference(kind="country", code="KE"))
    db.session.flush()
    enqueue_after_commit("match.funder", funder_id=africa_funder.id)
    db.session.commit()
    run_ready_jobs()

    db.session.refresh(match)
    assert match.status == "stale"
    assert match.review_reason == "Fits the fund"


def test_rollback_drops_queued_jobs(db, people, africa_funder):
    project = submitted_project(db, people.owner)
    enqueue_after_commit("match.project", project_id=project.id)
    db.session.rollback()
    db.session.commit()
    run_ready_jobs()

    assert match_count(db, project.id) == 0


def test_unknown_job_name_rejected(db):
    with pytest.raises(ValueError, match="Unknown job 'match.everything'"):
        enqueue_after_commit("match.everything")


def test_jobs_go_to_rq_with_redis(app, db, people, africa_funder, monkeypatch):
    redis = Redis.from_url(REDIS_URL)
    try:
        redis.ping()
    except RedisConnectionError:
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    queue = Queue(QUEUE_NAME, connection=redis)
    queue.empty()
    monkeypatch.setitem(app.config, "JOBS_INLINE", False)
    monkeypatch.setitem(app.config, "REDIS_URL", REDIS_URL)
    project = submitted_project(db, people.owner)
    project.status = "published"
    db.session.flush()
    enqueue_after_commit("match.project", project_id=project.id)
    db.session.commit()

    run_ready_jobs()

    assert queue.count == 1
    assert match_count(db, project.id) == 0
    SimpleWorker([queue], connection=redis).work(burst=True)
    db.session.expire_all()
    assert match_count(db, project.id) == 1
    assert queue.count == 0
