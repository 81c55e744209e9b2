"""Cached public pages and list counts: served again until a write, then never stale."""

import logging
from types import SimpleNamespace

import pytest
from sqlalchemy import event, text

from financing import create_app
from financing.accounts.models import User
from financing.accounts.services import create_user
from financing.config import TestConfig
from financing.core import cache as page_cache
from financing.extensions import db as _db
from financing.notifications.models import Notification
from financing.pledges.services import create_pledge, transition
from financing.projects.services import NeedInput, ProjectInput, create_project, publish_project, submit_project
from tests.conftest import PASSWORD
from tests.redis_server import free_port, redis_server

PUBLIC_PATHS = (
    "/projects",
    "/projects?theme=broadband&region=africa",
    "/api/v1/projects",
    "/api/v1/projects?country=KE&page=1",
)


def publish(db, people, title: str, goal_minor: int = 5_000_000) -> int:
    data = ProjectInput(
        title=title, summary="Towers and fibre for rural counties.", countries=["KE"], themes=["broadband"],
        sectors=["22020"], needs=[NeedInput(title="Towers", goal_minor=goal_minor, currency="EUR")],
    )
    project = create_project(people.owner, data)
    submit_project(people.owner, project)
    publish_project(people.coordinator, project)
    db.session.commit()
    return project.id


def count_statements(db, request):
    statements = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        response = request()
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    return response, statements


@pytest.mark.parametrize("path", PUBLIC_PATHS)
def test_anonymous_list_hit_sends_no_sql(client, db, people, path):
    publish(db, people, "Rural broadband for Turkana")
    first = client.get(path)
    second, statements = count_statements(db, lambda: client.get(path))

    assert (first.status_code, second.status_code) == (200, 200)
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("miss", "hit")
    assert second.get_data() == first.get_data()
    assert statements == []
    assert "Content-Security-Policy" in second.headers


@pytest.mark.parametrize("path", PUBLIC_PATHS)
def test_published_project_shows_at_once(client, db, people, path):
    publish(db, people, "Rural broadband for Turkana")
    before = client.get(path)
    publish(db, people, "Community networks for Marsabit")
    after = client.get(path)

    assert "Community networks for Marsabit" not in before.get_data(as_text=True)
    assert "Community networks for Marsabit" in after.get_data(as_text=True)
    assert after.headers["X-Cache"] == "miss"


def test_api_total_follows_publications(client, db, people):
    for number in range(1, 4):
        publish(db, people, f"Rural broadband, lot {number}")
        page = client.get("/api/v1/projects?theme=broadband&page=1").get_json()
        assert page["total"] == number


def test_project_page_shows_confirmed_pledge(client, db, people):
    project_id = publish(db, people, "Rural broadband for Turkana", goal_minor=4_000_000)
    path = f"/projects/{project_id}"
    client.get(path)
    assert client.get(path).headers["X-Cache"] == "hit"

    from financing.projects.models import Project
    need_id = db.session.get(Project, project_id).needs[0].id
    pledge, _ = create_pledge(people.donor, need_id, 1_000_000, "EUR")
    db.session.commit()
    transition(pledge.id, "confirm", people.coordinator)
    db.session.commit()
    after = client.get(path)

    assert after.headers["X-Cache"] == "miss"
    assert "25%" in after.get_data(as_text=True)


def test_withdrawn_project_leaves_cache(client, db, people):
    project_id = publish(db, people, "Rural broadband for Turkana")
    assert client.get(f"/projects/{project_id}").status_code == 200
    assert client.get(f"/api/v1/projects/{project_id}").status_code == 200

    from financing.projects.models import Project
    from financing.projects.services import withdraw_project
    withdraw_project(people.owner, db.session.get(Project, project_id))
    db.session.commit()

    assert client.get(f"/projects/{project_id}").status_code == 404
    assert client.get(f"/api/v1/projects/{project_id}").status_code == 404
    assert client.get("/api/v1/projects").get_json()["total"] == 0


def test_logged_in_pages_skip_cache(app, client, db, people, login):
    publish(db, people, "Rural broadband for Turkana")
    client.get("/projects")
    login(people.donor)

    page = client.get("/projects")

    assert "X-Cache" not in page.headers
    assert people.donor.email in page.get_data(as_text=True)


def test_token_requests_skip_cache(client, db, people, auth):
    publish(db, people, "Rural broadband for Turkana")
    client.get("/api/v1/projects")

    response = client.get("/api/v1/projects", headers=auth(people.donor))

    assert response.status_code == 200
    assert "X-Cache" not in response.headers


def test_errors_are_not_stored(client, db, people):
    for _ in range(2):
        response = client.get("/projects?page=zero")
        assert response.status_code == 400
        assert response.headers["X-Cache"] == "miss"
    for _ in range(2):
        assert client.get("/api/v1/projects/999999").status_code == 404


def test_query_order_does_not_matter(client, db, people):
    publish(db, people, "Rural broadband for Turkana")
    client.get("/projects?region=africa&theme=broadband")

    assert client.get("/projects?theme=broadband&region=africa").headers["X-Cache"] == "hit"
    assert client.get("/projects?theme=broadband&region=asia-pacific").headers["X-Cache"] == "miss"


def test_count_shared_across_pages(client, db, people):
    for number in range(1, 4):
        publish(db, people, f"Rural broadband, lot {number}")
    client.get("/api/v1/projects?theme=broadband&page=1")

    response, statements = count_statements(db, lambda: client.get("/api/v1/projects?theme=broadband&page=2"))

    assert response.headers["X-Cache"] == "miss"
    assert response.get_json()["total"] == 3
    assert not any("count(" in statement.lower() for statement in statements)


def test_notification_writes_keep_cache(client, db, people):
    publish(db, people, "Rural broadband for Turkana")
    donor_id = people.donor.id
    client.get("/projects")
    db.session.add(Notification(user_id=donor_id, kind="pledge_confirmed", params={}))
    db.session.commit()

    assert client.get("/projects").headers["X-Cache"] == "hit"


def test_rolled_back_writes_keep_cache(client, db, people):
    publish(db, people, "Rural broadband for Turkana")
    client.get("/projects")
    publish_attempt = ProjectInput(title="Never saved", needs=[NeedInput(title="Towers", goal_minor=100, currency="EUR")])
    create_project(people.owner, publish_attempt)
    db.session.flush()
    db.session.rollback()

    assert client.get("/projects").headers["X-Cache"] == "hit"


def test_sql_text_write_replaces_generation(client, db, people):
    project_id = publish(db, people, "Rural broadband for Turkana")
    client.get("/projects")
    db.session.execute(text("UPDATE project SET title = 'Renamed by SQL' WHERE id = :id"), {"id": project_id})
    db.session.commit()

    assert "Renamed by SQL" in client.get("/projects").get_data(as_text=True)


@pytest.mark.parametrize(("sql", "writes"), [
    ("SELECT 1", False),
    ("  with x as (select 1) select * from x", False),
    ("SELECT pg_advisory_xact_lock(1, 2)", False),
    ("UPDATE project SET title = 'x'", True),
    ("DELETE FROM pledge", True),
    ("TRUNCATE project", True),
])
def test_sql_text_read_or_write(sql, writes):
    assert page_cache._statement_writes(text(sql)) is writes


def test_cache_clear_command(app, client, db, people):
    publish(db, people, "Rural broadband for Turkana")
    client.get("/projects")

    result = app.test_cli_runner().invoke(args=["cache", "clear"])

    assert result.exit_code == 0, result.output
    assert client.get("/projects").headers["X-Cache"] == "miss"


# Several workers sharing Redis -----------------------------------------------------------

@pytest.fixture
def shared_database(tmp_path):
    """A SQLite file that several apps open, as gunicorn workers share one database."""
    return f"sqlite:///{tmp_path / 'shared.sqlite'}"


def worker_app(database_url: str, redis_url: str):
    worker = create_app(TestConfig, SQLALCHEMY_DATABASE_URI=database_url, CACHE_TYPE="RedisCache", CACHE_REDIS_URL=redis_url)
    with worker.app_context():
        _db.create_all()
    return worker


def staff(worker) -> SimpleNamespace:
    with worker.app_context():
        owner = create_user("owner@example.org", PASSWORD, "owner", name="Owner", organisation="Ministry of ICT, Kenya")
        coordinator = create_user("coordinator@example.org", PASSWORD, "coordinator", name="Coordinator")
        _db.session.commit()
        return SimpleNamespace(owner=owner.id, coordinator=coordinator.id)


def publish_in(worker, ids: SimpleNamespace, title: str) -> None:
    with worker.app_context():
        people = SimpleNamespace(owner=_db.session.get(User, ids.owner), coordinator=_db.session.get(User, ids.coordinator))
        publish(_db, people, title)


def dispose(*workers) -> None:
    for worker in workers:
        with worker.app_context():
            _db.engine.dispose()


def test_redis_workers_see_other_writes(shared_database):
    """A commit in one worker makes the pages that another worker cached unreachable."""
    with redis_server() as redis_url:
        reader, writer = worker_app(shared_database, redis_url), worker_app(shared_database, redis_url)
        ids = staff(writer)
        publish_in(writer, ids, "Rural broadband for Turkana")
        client = reader.test_client()
        assert client.get("/api/v1/projects").get_json()["total"] == 1
        assert client.get("/api/v1/projects").headers["X-Cache"] == "hit"

        publish_in(writer, ids, "Community networks for Marsabit")
        response = client.get("/api/v1/projects")
        dispose(reader, writer)

    assert response.headers["X-Cache"] == "miss"
    assert response.get_json()["total"] == 2


def test_redis_down_serves_uncached(shared_database, caplog):
    worker = worker_app(shared_database, f"redis://127.0.0.1:{free_port()}/0")
    with caplog.at_level(logging.ERROR):
        publish_in(worker, staff(worker), "Rural broadband for Turkana")
        page = worker.test_client().get("/api/v1/projects?theme=broadband")
    dispose(worker)

    assert page.status_code == 200
    assert page.get_json()["total"] == 1
    assert any("cache" in record.getMessage().lower() for record in caplog.records)


@pytest.mark.parametrize("path", ["/login", "/register", "/static/css/site.css", "/no-such-page"])
def test_unmarked_pages_skip_lookup(client, db, path):
    for _ in range(2):
        with client.get(path) as response:
            assert "X-Cache" not in response.headers


def test_head_uses_get_entry(client, db, people):
    publish(db, people, "Rural broadband for Turkana")
    full = client.get("/api/v1/projects")

    head = client.head("/api/v1/projects")

    assert head.headers["X-Cache"] == "hit"
    assert head.get_data() == b""
    assert head.headers["Content-Length"] == str(len(full.get_data()))


@pytest.mark.parametrize("cookie", ["session", "remember_token"])
def test_login_cookies_skip_cache(client, db, people, cookie):
    publish(db, people, "Rural broadband for Turkana")
    client.get("/projects")
    client.set_cookie(cookie, "not-a-valid-value")

    response = client.get("/projects")

    assert response.status_code == 200
    assert "X-Cache" not in response.headers


def test_statistics_follow_confirmed_pledge(client, db, people, login):
    project_id = publish(db, people, "Rural broadband for Turkana", goal_minor=4_000_000)
    assert client.get("/stats?currency=EUR").status_code == 200
    assert client.get("/stats?currency=EUR").headers["X-Cache"] == "hit"

    from financing.projects.models import Project
    need_id = db.session.get(Project, project_id).needs[0].id
    pledge, _ = create_pledge(people.donor, need_id, 1_000_000, "EUR")
    db.session.commit()
    transition(pledge.id, "confirm", people.coordinator)
    db.session.commit()

    after = client.get("/stats?currency=EUR")
    assert after.headers["X-Cache"] == "miss"
    assert "10,000" in after.get_data(as_text=True)
    dashboard = login(people.coordinator).get("/dashboard?currency=EUR")
    assert "10,000" in dashboard.get_data(as_text=True)


def test_page_key_changes_with_day(client, db, people, monkeypatch):
    publish(db, people, "Rural broadband for Turkana")
    monkeypatch.setattr(page_cache, "_utc_day", lambda: "2026-12-04")
    client.get("/projects")
    assert client.get("/projects").headers["X-Cache"] == "hit"

    monkeypatch.setattr(page_cache, "_utc_day", lambda: "2026-12-05")

    assert client.get("/projects").headers["X-Cache"] == "miss"
