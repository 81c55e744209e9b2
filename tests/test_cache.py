"""Cached public pages and list counts: served again until a write, then never stale."""

import logging
from types import SimpleNamespace

import pytest
from sqlalchemy import event, text, update

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


def publish(db, people, title: str, goal_minor: int = 5_000_000, country: str = "KE") -> int:
    data = ProjectInput(
        title=title, summary="Towers and fibre for rural counties.", countries=[country], themes=["broadband"],
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


@pytest.mark.parametrize(("sql", "scope"), [
    ("SELECT 1", None),
    ("  with x as (select 1) select * from x", None),
    ("SELECT pg_advisory_xact_lock(1, 2)", None),
    ("UPDATE project SET title = 'x'", "all"),
    ("DELETE FROM pledge", "all"),
    ("TRUNCATE project", "all"),
])
def test_sql_text_read_or_write(db, sql, scope):
    assert page_cache._statement_scope(db.session, text(sql), {}) == scope


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


# Funding writes ------------------------------------------------------------------------

def need_of(db, project_id: int) -> int:
    from financing.projects.models import Project
    return db.session.get(Project, project_id).needs[0].id


def confirm_pledge(db, people, project_id: int, amount_minor: int) -> None:
    pledge, _ = create_pledge(people.donor, need_of(db, project_id), amount_minor, "EUR")
    db.session.commit()
    transition(pledge.id, "confirm", people.coordinator)
    db.session.commit()


@pytest.fixture
def kenya_and_ghana(db, people):
    """Two published projects, and a first pledge that made the donor's funder profile."""
    kenya = publish(db, people, "Rural broadband for Turkana", goal_minor=4_000_000, country="KE")
    ghana = publish(db, people, "School connectivity in Volta", goal_minor=4_000_000, country="GH")
    confirm_pledge(db, people, ghana, 100_000)
    return SimpleNamespace(kenya=kenya, ghana=ghana)


def test_pledge_keeps_pages_of_other_projects(client, db, people, kenya_and_ghana):
    kenya, ghana = kenya_and_ghana.kenya, kenya_and_ghana.ghana
    paths = {
        "kenya page": f"/projects/{kenya}", "ghana page": f"/projects/{ghana}",
        "kenya api": f"/api/v1/projects/{kenya}", "ghana api": f"/api/v1/projects/{ghana}",
        "kenya list": "/projects?country=KE", "ghana list": "/api/v1/projects?country=GH",
        "both": "/projects", "stats": "/stats?currency=EUR", "home": "/",
    }
    for path in paths.values():
        assert client.get(path).status_code == 200
        assert client.get(path).headers["X-Cache"] == "hit", path

    confirm_pledge(db, people, kenya, 1_000_000)

    after = {name: client.get(path) for name, path in paths.items()}
    assert {name: response.headers["X-Cache"] for name, response in after.items()} == {
        "kenya page": "miss", "ghana page": "hit", "kenya api": "miss", "ghana api": "hit",
        "kenya list": "miss", "ghana list": "hit", "both": "miss", "stats": "miss", "home": "miss",
    }
    assert "25%" in after["kenya page"].get_data(as_text=True)
    assert after["kenya api"].get_json()["needs"][0]["pledged"] == {"amount": "10000.00", "currency": "EUR"}


def test_pledge_keeps_cached_counts(client, db, people, kenya_and_ghana):
    client.get("/api/v1/projects?theme=broadband")
    confirm_pledge(db, people, kenya_and_ghana.kenya, 1_000_000)

    response, statements = count_statements(db, lambda: client.get("/api/v1/projects?theme=broadband"))

    assert response.headers["X-Cache"] == "miss"
    assert response.get_json()["total"] == 2
    assert not any("count(" in statement.lower() for statement in statements)


def test_funding_pledge_updates_status_lists(client, db, people, kenya_and_ghana):
    assert client.get("/api/v1/projects?status=funded").get_json()["total"] == 0
    client.get(f"/projects/{kenya_and_ghana.ghana}")

    confirm_pledge(db, people, kenya_and_ghana.kenya, 4_000_000)

    funded = client.get("/api/v1/projects?status=funded").get_json()
    assert (funded["total"], funded["items"][0]["id"]) == (1, kenya_and_ghana.kenya)
    assert client.get(f"/api/v1/projects/{kenya_and_ghana.kenya}").get_json()["status"] == "funded"
    # Only the project that changed leaves the cache.
    assert client.get(f"/projects/{kenya_and_ghana.ghana}").headers["X-Cache"] == "hit"


def test_publication_keeps_other_project_pages(client, db, people, kenya_and_ghana):
    ghana_page, ghana_api = f"/projects/{kenya_and_ghana.ghana}", f"/api/v1/projects/{kenya_and_ghana.ghana}"
    for path in (ghana_page, ghana_api, "/projects?country=GH", "/api/v1/projects?theme=broadband", "/"):
        client.get(path)

    publish(db, people, "Community networks in Tamale", country="GH")

    assert client.get(ghana_page).headers["X-Cache"] == "hit"
    assert client.get(ghana_api).headers["X-Cache"] == "hit"
    country_list = client.get("/projects?country=GH")
    assert country_list.headers["X-Cache"] == "miss"
    assert "Community networks in Tamale" in country_list.get_data(as_text=True)
    assert client.get("/api/v1/projects?theme=broadband").get_json()["total"] == 3
    assert ">3</strong>" in client.get("/").get_data(as_text=True)


def test_project_edit_shows_on_its_page(client, db, people, kenya_and_ghana):
    from financing.projects.models import Project
    path = f"/projects/{kenya_and_ghana.kenya}"
    client.get(path)
    db.session.get(Project, kenya_and_ghana.kenya).summary = "Masts and fibre for Turkana and Marsabit."
    db.session.commit()

    after = client.get(path)

    assert after.headers["X-Cache"] == "miss"
    assert "Masts and fibre for Turkana and Marsabit." in after.get_data(as_text=True)


def test_unscoped_need_update_replaces_everything(client, db, people, kenya_and_ghana):
    from financing.projects.models import FundingNeed
    ghana_page = f"/projects/{kenya_and_ghana.ghana}"
    client.get(ghana_page)
    db.session.execute(
        update(FundingNeed).where(FundingNeed.id == need_of(db, kenya_and_ghana.kenya)).values(pledged_minor=5)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()

    assert client.get(ghana_page).headers["X-Cache"] == "miss"


def test_pledge_without_loaded_need_replaces_all(client, db, people, kenya_and_ghana):
    from financing.pledges.models import Pledge
    ghana_page = f"/projects/{kenya_and_ghana.ghana}"
    pledge, _ = create_pledge(people.donor, need_of(db, kenya_and_ghana.kenya), 1_000, "EUR")
    db.session.commit()
    pledge_id = pledge.id
    client.get(ghana_page)
    db.session.expunge_all()
    db.session.get(Pledge, pledge_id).disputed = True
    db.session.commit()

    assert client.get(ghana_page).headers["X-Cache"] == "miss"


@pytest.mark.parametrize(("written", "second"), [("kenya", "miss"), ("ghana", "hit")])
def test_write_during_render(client, db, people, kenya_and_ghana, monkeypatch, written, second):
    """A write to the page's own project while it renders keeps the page out of the cache; another project's does not."""
    from financing.projects import views
    path = f"/projects/{kenya_and_ghana.kenya}"
    original = views.needs_totals

    def totals_then_write(need_ids):
        # Another worker commits a pledge after this request read the project's rows.
        totals = original(need_ids)
        page_cache.new_project_generations([getattr(kenya_and_ghana, written)], "test")
        return totals

    monkeypatch.setattr(views, "needs_totals", totals_then_write)
    assert client.get(path).headers["X-Cache"] == "miss"
    monkeypatch.setattr(views, "needs_totals", original)

    assert client.get(path).headers["X-Cache"] == second
    assert client.get(path).headers["X-Cache"] == "hit"


def test_restarted_counter_counts_on(app, client, db, people, kenya_and_ghana):
    path, other = f"/projects/{kenya_and_ghana.kenya}", f"/projects/{kenya_and_ghana.ghana}"
    client.get(path)
    client.get(other)
    with app.app_context():
        before = page_cache.cache.get(page_cache.project_key(kenya_and_ghana.kenya))
        page_cache.cache.delete(page_cache.SEQUENCE_KEY)
        page_cache.new_project_generations([kenya_and_ghana.kenya], "test")
        after = page_cache.cache.get(page_cache.project_key(kenya_and_ghana.kenya))

    assert after > before
    assert client.get(path).headers["X-Cache"] == "miss"
    assert client.get(other).headers["X-Cache"] == "hit"


def test_lost_project_generation_forces_miss(app, client, db, people, kenya_and_ghana):
    path = f"/projects/{kenya_and_ghana.kenya}"
    client.get(path)
    with app.app_context():
        page_cache.cache.delete(page_cache.project_key(kenya_and_ghana.kenya))

    assert client.get(path).headers["X-Cache"] == "miss"
    assert client.get(path).headers["X-Cache"] == "hit"


def test_empty_list_outlives_pledges(client, db, people, kenya_and_ghana):
    client.get("/projects?country=BR")
    confirm_pledge(db, people, kenya_and_ghana.kenya, 1_000_000)

    assert client.get("/projects?country=BR").headers["X-Cache"] == "hit"


def test_first_pledge_of_donor_keeps_other_pages(client, db, people):
    kenya = publish(db, people, "Rural broadband for Turkana", country="KE")
    ghana = publish(db, people, "School connectivity in Volta", country="GH")
    assert people.donor.id
    for path in (f"/projects/{ghana}", "/"):
        client.get(path)

    # The donor has no funder profile yet, so this pledge also creates one.
    confirm_pledge(db, people, kenya, 1_000_000)

    assert client.get(f"/projects/{ghana}").headers["X-Cache"] == "hit"
    home = client.get("/")
    assert home.headers["X-Cache"] == "miss"
    assert ">1</strong> funder" in home.get_data(as_text=True)


def test_new_account_keeps_cache(client, db, people):
    publish(db, people, "Rural broadband for Turkana")
    client.get("/projects")
    create_user("new-donor@example.org", PASSWORD, "donor", name="New donor")
    db.session.commit()

    assert client.get("/projects").headers["X-Cache"] == "hit"


# Pages of totals with a lag --------------------------------------------------------------

@pytest.fixture
def lagging(app, monkeypatch):
    """Let pages of totals lag 30 s behind pledges, with a clock the test moves."""
    clock = SimpleNamespace(now=1_000_000.0)
    monkeypatch.setitem(app.config, "CACHE_TOTALS_LAG", 30)
    monkeypatch.setattr(page_cache, "_now", lambda: clock.now)
    return clock


def test_totals_lag_behind_pledge(client, db, people, kenya_and_ghana, lagging):
    first = client.get("/stats?currency=EUR")
    assert "1,000" in first.get_data(as_text=True)
    confirm_pledge(db, people, kenya_and_ghana.kenya, 1_000_000)

    lagging.now += 29
    stale = client.get("/stats?currency=EUR")
    lagging.now += 2
    fresh = client.get("/stats?currency=EUR")

    assert stale.headers["X-Cache"] == "stale"
    assert stale.get_data() == first.get_data()
    assert fresh.headers["X-Cache"] == "miss"
    assert "11,000" in fresh.get_data(as_text=True)
    assert client.get("/stats?currency=EUR").headers["X-Cache"] == "hit"


def test_one_request_recomputes_totals(app, client, db, people, kenya_and_ghana, lagging):
    client.get("/")
    confirm_pledge(db, people, kenya_and_ghana.kenya, 1_000_000)
    lagging.now += 31
    with app.app_context():
        # Another worker is computing the page.
        assert page_cache.cache.add("claim:" + page_cache.page_key("/", ""), 1)

    assert client.get("/").headers["X-Cache"] == "stale"
    with app.app_context():
        page_cache.cache.delete("claim:" + page_cache.page_key("/", ""))
    assert client.get("/").headers["X-Cache"] == "miss"
    assert client.get("/").headers["X-Cache"] == "hit"


def test_project_pages_never_lag(client, db, people, kenya_and_ghana, lagging):
    path = f"/projects/{kenya_and_ghana.kenya}"
    client.get(path)
    confirm_pledge(db, people, kenya_and_ghana.kenya, 1_000_000)

    after = client.get(path)

    assert after.headers["X-Cache"] == "miss"
    assert "25%" in after.get_data(as_text=True)


def test_publication_ends_lag(client, db, people, kenya_and_ghana, lagging):
    client.get("/")
    publish(db, people, "Community networks for Marsabit")

    assert client.get("/").headers["X-Cache"] == "miss"


def test_pledge_form_keeps_other_pages(app, db, people, kenya_and_ghana, login):
    anonymous, donor = app.test_client(), app.test_client()
    ghana_page = f"/projects/{kenya_and_ghana.ghana}"
    anonymous.get(ghana_page)
    login(people.donor, donor)
    form = {"amount": "1000", "currency": "EUR", "kind": "commitment", "idempotency_key": "3f1c2a8e-5b7d-4c1e-9a2f-6d8e0b4c7a19"}

    response = donor.post(f"/needs/{need_of(db, kenya_and_ghana.kenya)}/pledge", data=form)

    assert response.status_code == 302
    assert anonymous.get(ghana_page).headers["X-Cache"] == "hit"
