"""Test fixtures: one app per session, a clean database per test, users by role."""

import os
from functools import cached_property

import pytest
from flask import g
from sqlalchemy import text

from financing import create_app
from financing.accounts.services import create_token
from financing.config import TestConfig
from financing.extensions import db as _db

ON_POSTGRES = os.environ.get("TEST_DATABASE_URL", "").startswith("postgresql")
PASSWORD = "correct horse battery"


@pytest.fixture(scope="session")
def app():
    app = create_app(TestConfig)

    @app.before_request
    def forget_cached_user():
        # The db fixture keeps one app context open for the whole test, so requests share `g`.
        # Dropping Flask-Login's cached user makes each request load its own.
        g.pop("_login_user", None)

    with app.app_context():
        _db.drop_all()
        _db.create_all()
    yield app
    with app.app_context():
        _db.session.remove()
        _db.drop_all()
        _db.engine.dispose()


def _empty_tables() -> None:
    tables = [table.name for table in reversed(_db.metadata.sorted_tables)]
    if ON_POSTGRES:
        quoted = ", ".join(f'"{name}"' for name in tables)
        _db.session.execute(text(f"TRUNCATE {quoted} RESTART IDENTITY CASCADE"))
    else:
        for name in tables:
            _db.session.execute(text(f'DELETE FROM "{name}"'))
    _db.session.commit()


@pytest.fixture
def db(app):
    with app.app_context():
        _empty_tables()
        yield _db
        _db.session.rollback()
        _db.session.remove()


@pytest.fixture
def client(app, db):
    return app.test_client()


@pytest.fixture
def make_user(db):
    """Create a user with a role and an organisation; returns the committed User."""
    from financing.accounts.services import create_user

    counter = {"n": 0}

    def make(role: str = "owner", organisation: str | None = "Ministry of ICT, Kenya", email: str | None = None):
        counter["n"] += 1
        user = create_user(email or f"{role}{counter['n']}@example.org", PASSWORD, role, name=f"{role.title()} {counter['n']}", organisation=organisation)
        db.session.commit()
        return user

    return make


@pytest.fixture
def login(client):
    """Log a user in by writing the Flask-Login session of the test client."""

    def do_login(user, test_client=None):
        test_client = test_client or client
        with test_client.session_transaction() as session:
            session["_user_id"] = str(user.id)
            session["_fresh"] = True
        return test_client

    return do_login


@pytest.fixture
def people(make_user):
    """Two owners of different organisations, two donors and a coordinator, each created on first use."""

    class People:
        @cached_property
        def owner(self):
            return make_user("owner", organisation="Ministry of ICT, Kenya")

        @cached_property
        def other_owner(self):
            return make_user("owner", organisation="Regulator of Ghana")

        @cached_property
        def donor(self):
            return make_user("donor", organisation="European Commission")

        @cached_property
        def other_donor(self):
            return make_user("donor", organisation="World Bank")

        @cached_property
        def coordinator(self):
            return make_user("coordinator", organisation=None)

    return People()


@pytest.fixture
def auth(db):
    """Return the Authorization header of a user, creating one API token per user."""
    tokens: dict[int, str] = {}

    def headers(user) -> dict[str, str]:
        if user.id not in tokens:
            _, tokens[user.id] = create_token(user, name="tests")
            db.session.commit()
        return {"Authorization": f"Bearer {tokens[user.id]}"}

    return headers
