"""Account pages: registration, login and logout, redirect safety, API tokens, CSRF."""

import re
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest
from flask import g, request_started
from markupsafe import escape
from sqlalchemy import func, select

from financing.accounts.models import ApiToken, User
from financing.accounts.services import user_for_token
from financing.accounts.views import is_safe_next
from tests.conftest import PASSWORD

TOKEN_PATTERN = re.compile(r'value="(fin_[A-Za-z0-9_\-]+)"')


@pytest.fixture(autouse=True)
def fresh_login_per_request(app):
    """Forget the user that Flask-Login cached in `g` at the start of each request.

    The `db` fixture keeps an app context open, and test requests reuse it, so `g` (where
    Flask-Login caches current_user) would otherwise carry one request's user into the next.
    """
    def forget(sender, **extra):
        g.pop("_login_user", None)

    request_started.connect(forget, app)
    yield
    request_started.disconnect(forget, app)


def user_count(db) -> int:
    return db.session.scalar(select(func.count(User.id)))


def registration(**overrides) -> dict:
    data = {
        "email": "amina@example.org",
        "name": "Amina Diallo",
        "password": PASSWORD,
        "confirm": PASSWORD,
        "role": "owner",
        "organisation": "Agence de Régulation des Télécommunications",
    }
    data.update(overrides)
    return data


@contextmanager
def csrf_enabled(app):
    app.config["WTF_CSRF_ENABLED"] = True
    try:
        yield
    finally:
        app.config["WTF_CSRF_ENABLED"] = False


# Registration ----------------------------------------------------------------------------

def test_register_owner_logs_in(client, db):
    response = client.post("/register", data=registration())

    assert response.status_code == 302
    assert urlsplit(response.headers["Location"]).path == "/account"
    user = db.session.scalar(select(User).where(User.email == "amina@example.org"))
    assert user.role == "owner"
    assert user.organisation.name == "Agence de Régulation des Télécommunications"
    page = client.get("/account")
    assert page.status_code == 200
    assert "amina@example.org" in page.text
    assert "Agence de Régulation des Télécommunications" in page.text


def test_register_donor_without_organisation(client, db):
    response = client.post("/register", data=registration(email="donor@example.org", role="donor", organisation=""))

    assert response.status_code == 302
    user = db.session.scalar(select(User).where(User.email == "donor@example.org"))
    assert user.role == "donor"
    assert user.organisation is None


@pytest.mark.parametrize("role", ["coordinator", "admin", "superuser", "<b>x</b>"])
def test_register_rejects_appointed_roles(client, db, role):
    response = client.post("/register", data=registration(role=role))

    assert response.status_code == 422
    assert f"Role &#39;{escape(role)}&#39; cannot be chosen here" in response.text
    assert "<b>x</b>" not in response.text
    assert user_count(db) == 0


def test_register_owner_needs_organisation(client, db):
    response = client.post("/register", data=registration(organisation="  "))

    assert response.status_code == 422
    assert 'id="organisation-error"' in response.text
    assert "Project owners must name their organisation." in response.text
    assert 'value="amina@example.org"' in response.text
    assert user_count(db) == 0


def test_register_password_mismatch(client, db):
    response = client.post("/register", data=registration(confirm="another long password"))

    assert response.status_code == 422
    assert "The two passwords differ." in response.text
    assert user_count(db) == 0


def test_register_short_password(client, db):
    response = client.post("/register", data=registration(password="short", confirm="short"))

    assert response.status_code == 422
    assert 'id="password-error"' in response.text
    assert user_count(db) == 0


def test_register_duplicate_email(client, db, make_user):
    make_user("donor", organisation=None, email="amina@example.org")

    response = client.post("/register", data=registration(organisation="A new organisation"))

    assert response.status_code == 422
    assert 'id="email-error"' in response.text
    assert "An account for amina@example.org already exists." in response.text
    assert 'value="A new organisation"' in response.text
    assert user_count(db) == 1


def test_register_existing_organisation_rejected(client, db, make_user):
    make_user("owner", organisation="Ministry of ICT, Kenya")

    response = client.post("/register", data=registration(organisation="ministry of ict, kenya"))

    assert response.status_code == 422
    assert "already has accounts" in response.text
    assert user_count(db) == 1


def test_register_bad_email(client, db):
    response = client.post("/register", data=registration(email="not-an-email"))

    assert response.status_code == 422
    assert 'id="email-error"' in response.text
    assert 'value="not-an-email"' in response.text
    assert user_count(db) == 0


# Login and logout ------------------------------------------------------------------------

def test_login_and_logout(client, make_user):
    user = make_user("donor", organisation=None, email="funder@example.org")

    response = client.post("/login", data={"email": "Funder@Example.org", "password": PASSWORD})
    assert response.status_code == 302
    assert urlsplit(response.headers["Location"]).path == "/"
    with client.session_transaction() as session:
        assert session["_user_id"] == str(user.id)
    assert client.get("/account").status_code == 200

    assert client.get("/logout").status_code == 405
    response = client.post("/logout")
    assert response.status_code == 302
    with client.session_transaction() as session:
        assert "_user_id" not in session
    assert client.get("/account").status_code == 302


def test_login_wrong_password(client, make_user):
    make_user("donor", organisation=None, email="funder@example.org")

    response = client.post("/login", data={"email": "funder@example.org", "password": "wrong password!"})

    assert response.status_code == 422
    assert "Wrong email or password" in response.text
    assert 'value="funder@example.org"' in response.text
    with client.session_transaction() as session:
        assert "_user_id" not in session


def test_login_unknown_email(client, db):
    response = client.post("/login", data={"email": "nobody@example.org", "password": PASSWORD})

    assert response.status_code == 422
    assert "Wrong email or password" in response.text


def test_login_empty_fields(client, db):
    response = client.post("/login", data={"email": "", "password": ""})

    assert response.status_code == 422
    assert "Email is required." in response.text
    assert "Password is required." in response.text


def test_login_starts_fresh_session(client, make_user):
    make_user("donor", organisation=None, email="funder@example.org")
    with client.session_transaction() as session:
        session["planted"] = "value from before the login"

    client.post("/login", data={"email": "funder@example.org", "password": PASSWORD})

    with client.session_transaction() as session:
        assert "planted" not in session
        assert "_user_id" in session


def test_login_form_keeps_next(client, db):
    page = client.get("/login?next=/projects/mine")

    assert 'name="next" type="hidden" value="/projects/mine"' in page.text


def test_login_required_page_redirects_back(client, make_user):
    make_user("owner", email="owner@example.org")
    response = client.get("/account")
    assert response.status_code == 302
    location = response.headers["Location"]
    assert urlsplit(location).path == "/login"

    login_page = client.get(location)
    assert 'value="/account"' in login_page.text
    response = client.post("/login", data={"email": "owner@example.org", "password": PASSWORD, "next": "/account"})
    assert response.headers["Location"] == "/account"


@pytest.mark.parametrize("target", [
    "//evil.example",
    "https://evil.example",
    "http:evil.example",
    "/\\evil.example",
    "\\\\evil.example",
    "%2F%2Fevil.example",
    "/%2Fevil.example",
    "%252F%252Fevil.example",
    "/%5Cevil.example",
    "/\t/evil.example",
    "javascript:alert(1)",
    "evil.example",
    "",
])
def test_login_next_stays_local(client, make_user, target):
    make_user("donor", organisation=None, email="funder@example.org")

    response = client.post("/login", data={"email": "funder@example.org", "password": PASSWORD, "next": target})

    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    assert location.netloc in ("", "localhost")
    assert location.path == "/"


def test_login_next_local_path_kept(client, make_user):
    make_user("donor", organisation=None, email="funder@example.org")

    response = client.post("/login", data={"email": "funder@example.org", "password": PASSWORD, "next": "/projects?region=africa&page=2"})

    assert response.headers["Location"] == "/projects?region=africa&page=2"


@pytest.mark.parametrize("target, safe", [
    ("/", True),
    ("/projects/12", True),
    ("/projects?q=fibre%20backbone", True),
    ("//evil.example", False),
    ("/%2F/evil.example", False),
    ("%2F%2Fevil.example", False),
    ("/%25252F%25252Fevil", False),
    ("/\\evil", False),
    ("/\nevil", False),
    ("https://evil.example/", False),
    (None, False),
])
def test_is_safe_next(target, safe):
    assert is_safe_next(target) is safe


# API tokens ------------------------------------------------------------------------------

def test_token_create_use_and_revoke(app, client, make_user, login, db):
    user = make_user("donor", organisation=None, email="funder@example.org")
    login(user)

    response = client.post("/account/tokens", data={"name": "reporting script", "scopes": ["read"]})
    assert response.status_code == 201
    assert response.headers["Cache-Control"] == "no-store"
    match = TOKEN_PATTERN.search(response.text)
    assert match, "the new token is shown on the page"
    token = match.group(1)
    assert user_for_token(token).id == user.id
    row = db.session.scalar(select(ApiToken).where(ApiToken.user_id == user.id))
    assert row.name == "reporting script"
    assert token not in (row.token_hash, row.prefix)

    # The token authenticates a fresh client without a session cookie.
    other = app.test_client()
    page = other.get("/account", headers={"Authorization": f"Bearer {token}"})
    assert page.status_code == 200
    assert "funder@example.org" in page.text
    assert token not in page.text, "the token is shown only once"

    response = client.post(f"/account/tokens/{row.id}/revoke")
    assert response.status_code == 302
    db.session.expire_all()
    assert db.session.get(ApiToken, row.id).revoked_at is not None
    assert user_for_token(token) is None
    assert app.test_client().get("/account", headers={"Authorization": f"Bearer {token}"}).status_code == 302
    assert "Revoked" in client.get("/account").text


def test_token_needs_name(client, make_user, login, db):
    login(make_user("owner"))

    response = client.post("/account/tokens", data={"name": ""})

    assert response.status_code == 422
    assert 'id="name-error"' in response.text
    assert db.session.scalar(select(func.count(ApiToken.id))) == 0


def test_token_revoke_other_users_token(client, make_user, login, db):
    owner = make_user("owner")
    donor = make_user("donor", organisation=None)
    login(donor)
    client.post("/account/tokens", data={"name": "mine", "scopes": ["read"]})
    token_id = db.session.scalar(select(ApiToken.id))
    login(owner)

    response = client.post(f"/account/tokens/{token_id}/revoke")

    assert response.status_code == 404
    db.session.expire_all()
    assert db.session.get(ApiToken, token_id).revoked_at is None


def test_account_requires_login(client, db):
    assert client.get("/account").status_code == 302
    assert client.post("/account/tokens", data={"name": "x", "scopes": ["read"]}).status_code == 302


# CSRF ------------------------------------------------------------------------------------

def test_forms_reject_missing_csrf_token(app, client, make_user, login, db):
    user = make_user("donor", organisation=None, email="funder@example.org")
    with csrf_enabled(app):
        assert client.post("/login", data={"email": "funder@example.org", "password": PASSWORD}).status_code == 400
        assert client.post("/register", data=registration()).status_code == 400
        login(user)
        assert client.post("/account/tokens", data={"name": "x"}).status_code == 400
        assert client.post("/logout").status_code == 400
    assert db.session.scalar(select(func.count(ApiToken.id))) == 0
    assert user_count(db) == 1


def test_login_with_csrf_token(app, client, make_user):
    make_user("donor", organisation=None, email="funder@example.org")
    with csrf_enabled(app):
        page = client.get("/login")
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.text).group(1)
        response = client.post("/login", data={"email": "funder@example.org", "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 302
