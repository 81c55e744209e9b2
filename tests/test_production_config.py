"""Production settings, /healthz, a database that is down, and requests that fail half-way."""

import secrets

import pytest
from flask import request, url_for
from sqlalchemy import func, select

from financing import create_app
from financing.accounts.services import create_token
from financing.config import DEFAULT_SECRET_KEY, ProductionConfig, TestConfig
from financing.core.errors import Conflict, Forbidden
from financing.core.security import ConfigurationError, production_problems
from financing.extensions import db as _db
from financing.projects import services as project_services
from financing.projects.models import Project
from tests.conftest import ON_POSTGRES, PASSWORD
from tests.redis_server import free_port, redis_server

GOOD_SECRET = secrets.token_hex(32)


def closed_postgres_url() -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/financing"


def production_settings(**changes) -> dict:
    """Overrides that make ProductionConfig valid; the database is never contacted at start-up."""
    settings = {
        "SECRET_KEY": GOOD_SECRET,
        "SQLALCHEMY_DATABASE_URI": closed_postgres_url(),
        "PROXY_HOPS": "1",
        "SESSION_COOKIE_SECURE": True,
        "REMEMBER_COOKIE_SECURE": True,
        "PREFERRED_URL_SCHEME": "https",
        "RATELIMIT_STORAGE_URI": "memory://",
        "REDIS_URL": "",
    }
    settings.update(changes)
    return settings


def dispose(app) -> None:
    with app.app_context():
        _db.session.remove()
        _db.engine.dispose()


# Start-up checks ---------------------------------------------------------------------------

@pytest.mark.parametrize("changes, setting", [
    ({"SECRET_KEY": DEFAULT_SECRET_KEY}, "SECRET_KEY"),
    ({"SECRET_KEY": ""}, "SECRET_KEY"),
    ({"SECRET_KEY": None}, "SECRET_KEY"),
    ({"SECRET_KEY": "short-secret"}, "SECRET_KEY"),
    ({"SESSION_COOKIE_SECURE": False}, "SESSION_COOKIE_SECURE"),
    ({"REMEMBER_COOKIE_SECURE": False}, "REMEMBER_COOKIE_SECURE"),
    ({"PREFERRED_URL_SCHEME": "http"}, "PREFERRED_URL_SCHEME"),
    ({"PROXY_HOPS": None}, "PROXY_HOPS"),
    ({"PROXY_HOPS": ""}, "PROXY_HOPS"),
    ({"PROXY_HOPS": "two"}, "PROXY_HOPS"),
    ({"PROXY_HOPS": "-1"}, "PROXY_HOPS"),
    ({"SQLALCHEMY_DATABASE_URI": "sqlite:///instance/financing.sqlite"}, "DATABASE_URL"),
    ({"SQLALCHEMY_DATABASE_URI": "sqlite://"}, "DATABASE_URL"),
])
def test_production_rejects_unsafe_setting(changes, setting):
    with pytest.raises(ConfigurationError) as raised:
        create_app(ProductionConfig, **production_settings(**changes))

    message = str(raised.value)
    assert setting in message
    assert message.count("\n- ") == 1, "only the changed setting is reported"


def test_production_lists_every_problem():
    problems = production_problems({
        "SECRET_KEY": DEFAULT_SECRET_KEY, "SESSION_COOKIE_SECURE": False, "REMEMBER_COOKIE_SECURE": False,
        "PREFERRED_URL_SCHEME": "http", "PROXY_HOPS": None, "SQLALCHEMY_DATABASE_URI": "sqlite://",
    })

    named = " ".join(problems)
    for setting in ("SECRET_KEY", "SESSION_COOKIE_SECURE", "REMEMBER_COOKIE_SECURE", "PREFERRED_URL_SCHEME", "PROXY_HOPS", "DATABASE_URL"):
        assert setting in named
    assert len(problems) == 6


def test_production_config_defaults_are_https():
    assert ProductionConfig.PRODUCTION is True
    assert ProductionConfig.PREFERRED_URL_SCHEME == "https"
    assert ProductionConfig.SESSION_COOKIE_SECURE is True
    assert ProductionConfig.STRICT_TRANSPORT_SECURITY.startswith("max-age=")


def test_financing_env_selects_production(monkeypatch):
    monkeypatch.setenv("FINANCING_ENV", "production")

    with pytest.raises(ConfigurationError, match="SECRET_KEY is the development default"):
        create_app(**production_settings(SECRET_KEY=DEFAULT_SECRET_KEY))

    app = create_app(**production_settings())
    assert app.config["PRODUCTION"] is True
    dispose(app)


def test_development_starts_with_defaults():
    app = create_app(TestConfig, SECRET_KEY=DEFAULT_SECRET_KEY, SQLALCHEMY_DATABASE_URI="sqlite://", PROXY_HOPS=None)
    assert app.config["PRODUCTION"] is False
    dispose(app)


def add_probe(app) -> None:
    @app.get("/_probe")
    def probe():
        return {
            "remote_addr": request.remote_addr, "scheme": request.scheme, "secure": request.is_secure,
            "external": url_for("accounts.login", _external=True),
        }


def test_production_app_serves_https_behind_proxy():
    app = create_app(ProductionConfig, **production_settings())
    add_probe(app)

    client = app.test_client()
    # The proxy speaks plain HTTP to the app, as behind a TLS-terminating load balancer.
    proxied = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    forwarded = client.get("/_probe", base_url="http://localhost", headers=proxied).get_json()
    direct = client.get("/_probe", base_url="http://localhost").get_json()
    login_page = client.get("/login", base_url="http://localhost", headers=proxied)
    dispose(app)

    assert forwarded == {"remote_addr": "203.0.113.9", "scheme": "https", "secure": True, "external": "https://localhost/login"}
    assert direct["remote_addr"] == "127.0.0.1"
    assert direct["scheme"] == "http"
    assert login_page.status_code == 200
    assert login_page.headers["Strict-Transport-Security"] == "max-age=31536000"
    cookie = login_page.headers["Set-Cookie"]
    assert "Secure" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie


def test_proxy_headers_ignored_without_proxy_hops():
    app = create_app(TestConfig, SQLALCHEMY_DATABASE_URI="sqlite://", PROXY_HOPS=None)
    add_probe(app)

    proxied = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    seen = app.test_client().get("/_probe", base_url="http://localhost", headers=proxied).get_json()
    dispose(app)

    assert seen["remote_addr"] == "127.0.0.1"
    assert seen["scheme"] == "http"


# /healthz ----------------------------------------------------------------------------------

def test_healthz_up(app, client, db, monkeypatch):
    monkeypatch.setitem(app.config, "REDIS_URL", "")

    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "up", "failed": []}


def test_healthz_redis_down(app, client, db, monkeypatch):
    monkeypatch.setitem(app.config, "REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")

    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "database": "up", "redis": "down", "failed": ["redis"]}


def test_healthz_redis_up(app, client, db, monkeypatch):
    with redis_server() as url:
        monkeypatch.setitem(app.config, "REDIS_URL", url)
        response = client.get("/healthz")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "up", "redis": "up", "failed": []}


@pytest.fixture(params=["postgresql", "sqlite"])
def down_app(request, tmp_path):
    """An app whose database cannot be reached: PostgreSQL on a closed port, or SQLite in a missing folder."""
    if request.param == "postgresql":
        url = closed_postgres_url()
    else:
        url = f"sqlite:///{tmp_path / 'missing-folder' / 'financing.sqlite'}"
    app = create_app(TestConfig, SQLALCHEMY_DATABASE_URI=url, REDIS_URL="")
    yield app
    dispose(app)


def test_healthz_database_down(down_app):
    response = down_app.test_client().get("/healthz")

    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "database": "down", "failed": ["database"]}


# A database that is down -------------------------------------------------------------------

@pytest.mark.parametrize("url", ["/", "/projects", "/projects/1", "/funders"])
def test_database_down_html_page(down_app, url):
    response = down_app.test_client().get(url)

    text = response.get_data(as_text=True)
    assert response.status_code == 503
    assert response.mimetype == "text/html"
    assert "The database is unavailable. Try again in a minute." in text
    assert "Traceback" not in text
    assert "OperationalError" not in text


def test_database_down_with_session_cookie(down_app):
    client = down_app.test_client()
    with client.session_transaction() as session:
        session["_user_id"] = "1"
        session["_fresh"] = True

    response = client.get("/account")

    assert response.status_code == 503
    assert "The database is unavailable" in response.get_data(as_text=True)
    assert "Log out" not in response.get_data(as_text=True)


@pytest.mark.parametrize("url", ["/api/v1/projects", "/api/v1/stats"])
def test_database_down_api_json(down_app, url):
    response = down_app.test_client().get(url)

    assert response.status_code == 503
    assert response.get_json() == {"error": {"code": "unavailable", "message": "The database is unavailable. Try again in a minute.", "fields": {}}}


def test_database_down_login_post(down_app):
    response = down_app.test_client().post("/login", data={"email": "a@example.org", "password": PASSWORD})

    assert response.status_code == 503
    assert "The database is unavailable" in response.get_data(as_text=True)


# Requests that fail half-way ---------------------------------------------------------------

def project_form() -> dict:
    return {
        "title": "Rural broadband", "countries": ["KE"],
        "needs-0-title": "Feasibility study", "needs-0-goal": "2000.00", "needs-0-currency": "EUR",
    }


def api_body() -> dict:
    return {"title": "Rural broadband", "needs": [{"title": "Cable", "goal": {"amount": "10.00", "currency": "EUR"}}]}


def fail_after_flush(error: Exception):
    """Wrap create_project so that it flushes the project, then raises error."""
    real = project_services.create_project

    def create_then_fail(*args, **kwargs):
        project = real(*args, **kwargs)
        assert project.id is not None, "the project row was flushed"
        raise error

    return create_then_fail


def project_count(db) -> int:
    db.session.expire_all()
    return db.session.scalar(select(func.count(Project.id)))


def test_unexpected_error_after_flush_writes_nothing(client, make_user, login, db, monkeypatch):
    login(make_user("owner"))
    monkeypatch.setattr("financing.projects.views.create_project", fail_after_flush(RuntimeError("disk full")))

    with pytest.raises(RuntimeError, match="disk full"):
        client.post("/projects/new", data=project_form())

    assert project_count(db) == 0


def test_error_page_after_flush_writes_nothing(app, client, make_user, login, db, monkeypatch):
    login(make_user("owner"))
    monkeypatch.setitem(app.config, "PROPAGATE_EXCEPTIONS", False)
    monkeypatch.setattr("financing.projects.views.create_project", fail_after_flush(RuntimeError("disk full")))

    response = client.post("/projects/new", data=project_form())

    assert response.status_code == 500
    assert "nothing was saved" in response.get_data(as_text=True)
    assert "disk full" not in response.get_data(as_text=True)
    assert project_count(db) == 0


def test_api_error_after_flush_writes_nothing(app, client, make_user, db, monkeypatch):
    owner = make_user("owner")
    _, token = create_token(owner, name="tests")
    db.session.commit()
    monkeypatch.setitem(app.config, "PROPAGATE_EXCEPTIONS", False)
    monkeypatch.setattr("financing.api.projects.create_project", fail_after_flush(RuntimeError("disk full")))

    response = client.post("/api/v1/projects", json=api_body(), headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 500
    assert response.get_json()["error"]["code"] == "internal_error"
    assert project_count(db) == 0


@pytest.mark.parametrize("error, status", [
    (Conflict("The goal changed meanwhile."), 422),
    (Forbidden("Your organisation was removed meanwhile."), 403),
])
def test_domain_error_after_flush_writes_nothing(client, make_user, login, db, monkeypatch, error, status):
    login(make_user("owner"))
    monkeypatch.setattr("financing.projects.views.create_project", fail_after_flush(error))

    response = client.post("/projects/new", data=project_form())

    assert response.status_code == status
    assert error.message in response.get_data(as_text=True)
    assert project_count(db) == 0


@pytest.mark.skipif(not ON_POSTGRES, reason="checks what another connection sees, which needs PostgreSQL")
def test_failed_request_leaves_nothing_for_other_connections(app, client, make_user, login, db, monkeypatch):
    login(make_user("owner"))
    monkeypatch.setitem(app.config, "PROPAGATE_EXCEPTIONS", False)
    monkeypatch.setattr("financing.projects.views.create_project", fail_after_flush(RuntimeError("disk full")))

    client.post("/projects/new", data=project_form())

    with db.engine.connect() as other:
        assert other.scalar(select(func.count(Project.id))) == 0
