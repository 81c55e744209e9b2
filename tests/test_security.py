"""Security: CSRF, Markdown sanitising, login redirects, rate limits, passwords, sessions, headers."""

import hashlib
import hmac
import html as html_lib
import json
import re
import time
from pathlib import Path

import pytest
from flask import g, request_started
from lxml import html
from redis import Redis
from sqlalchemy import func, select
from werkzeug.routing import AnyConverter

from financing import create_app
from financing.accounts.models import ApiToken, User
from financing.accounts.passwords import common_passwords, is_common_password
from financing.accounts.services import MIN_PASSWORD_LENGTH, check_password, create_token, create_user
from financing.config import Config, ProductionConfig, TestConfig, _rate_limit_storage
from financing.core.errors import ValidationFailed
from financing.core.markdown import ALLOWED_ATTRIBUTES, ALLOWED_CLASSES, ALLOWED_TAGS, render_markdown, sanitise_html
from financing.core.security import is_safe_redirect_path
from financing.demo import ACCOUNTS
from financing.extensions import db as _db
from financing.projects.models import Project
from financing.projects.services import NeedInput, ProjectInput, create_project, publish_project, submit_project
from tests.conftest import PASSWORD
from tests.redis_server import free_port, redis_server

ROOT = Path(__file__).resolve().parent.parent
CSRF_FIELD = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')
STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}


@pytest.fixture(autouse=True)
def fresh_login_per_request(app):
    """Forget the user that Flask-Login cached in `g`, which requests share with the test's app context."""
    def forget(sender, **extra):
        g.pop("_login_user", None)
        g.pop("csrf_token", None)

    request_started.connect(forget, app)
    yield
    request_started.disconnect(forget, app)


@pytest.fixture
def csrf_app(app, monkeypatch):
    """The test app with CSRF protection switched on, as it is outside the tests."""
    monkeypatch.setitem(app.config, "WTF_CSRF_ENABLED", True)
    return app


def csrf_token_of(response) -> str:
    match = CSRF_FIELD.search(response.get_data(as_text=True))
    assert match, "the page has a CSRF token field"
    return match.group(1)


def count(model) -> int:
    return _db.session.scalar(select(func.count()).select_from(model))


def published_project(owner, coordinator, title="Rural broadband for Kenya") -> Project:
    data = ProjectInput(
        title=title, summary="Access for rural counties.", countries=["KE"], themes=["broadband"],
        needs=[NeedInput(title="Access points", goal_minor=100_000, currency="EUR")],
    )
    project = create_project(owner, data)
    submit_project(owner, project)
    publish_project(coordinator, project)
    _db.session.commit()
    return project


def fresh_app(**overrides):
    """Build a second app on the test database; on in-memory SQLite it gets its own empty tables."""
    app = create_app(TestConfig, **overrides)
    with app.app_context():
        if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
            _db.create_all()
    return app


def dispose(app) -> None:
    with app.app_context():
        _db.session.remove()
        _db.engine.dispose()


# CSRF --------------------------------------------------------------------------------------

def test_csrf_on_outside_tests():
    assert Config.WTF_CSRF_ENABLED is True
    assert ProductionConfig.WTF_CSRF_ENABLED is True
    assert TestConfig.WTF_CSRF_ENABLED is False

    class LocalConfig(Config):
        SQLALCHEMY_DATABASE_URI = "sqlite://"

    app = create_app(LocalConfig)
    assert app.config["WTF_CSRF_ENABLED"] is True
    assert "csrf" in app.extensions
    response = app.test_client().post("/login", data={"email": "a@example.org", "password": PASSWORD})
    assert response.status_code == 400
    assert "CSRF" in response.get_data(as_text=True)
    dispose(app)


def _form_rules(app) -> list[tuple[str, str, str]]:
    """Return (endpoint, method, url) for every state-changing route outside the JSON API."""
    adapter = app.url_map.bind("localhost")
    rules = []
    for rule in app.url_map.iter_rules():
        methods = sorted((rule.methods or set()) & STATE_CHANGING)
        if not methods or rule.rule.startswith("/api/") or rule.endpoint == "payments.stripe_webhook":
            continue
        values = {}
        for argument, converter in rule._converters.items():
            values[argument] = sorted(converter.items)[0] if isinstance(converter, AnyConverter) else 1
        url = adapter.build(rule.endpoint, values, method=methods[0])
        rules.extend((rule.endpoint, method, url) for method in methods)
    return rules


def test_every_form_post_needs_csrf_token(csrf_app, client, make_user, login):
    coordinator = make_user("coordinator", organisation=None)
    login(coordinator)
    rules = _form_rules(csrf_app)
    assert len(rules) >= 20, rules
    endpoints = {endpoint for endpoint, _, _ in rules}
    assert {"accounts.login", "accounts.register", "accounts.logout", "accounts.create_api_token", "projects.new"} <= endpoints

    for endpoint, method, url in rules:
        response = client.open(url, method=method, data={"title": "x", "name": "x"})
        assert response.status_code == 400, (endpoint, method, url, response.status_code)
        assert "CSRF" in response.get_data(as_text=True), endpoint


def test_forms_without_token_change_nothing(csrf_app, client, make_user, login):
    owner = make_user("owner", email="owner@example.org")
    users_before = count(User)

    register = client.post("/register", data={
        "email": "new@example.org", "name": "New", "password": PASSWORD, "confirm": PASSWORD, "role": "donor",
    })
    login_post = client.post("/login", data={"email": "owner@example.org", "password": PASSWORD})
    login(owner)
    token = client.post("/account/tokens", data={"name": "script"})
    project = client.post("/projects/new", data={"title": "Fibre", "needs-0-title": "Cable", "needs-0-goal": "10.00", "needs-0-currency": "EUR"})
    logout = client.post("/logout")

    assert [register.status_code, login_post.status_code, token.status_code, project.status_code, logout.status_code] == [400] * 5
    assert count(User) == users_before
    assert count(ApiToken) == 0
    assert count(Project) == 0
    with client.session_transaction() as session:
        assert session["_user_id"] == str(owner.id), "the logout without a token did not log out"


def test_forms_with_token_accepted(csrf_app, client, make_user):
    make_user("donor", organisation=None, email="funder@example.org")

    token = csrf_token_of(client.get("/login"))
    response = client.post("/login", data={"email": "funder@example.org", "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 302

    account = client.get("/account")
    response = client.post("/account/tokens", data={"name": "script", "scopes": ["read"], "csrf_token": csrf_token_of(account)})
    assert response.status_code == 201
    assert count(ApiToken) == 1


def test_token_from_other_session_rejected(csrf_app, app, client, make_user):
    make_user("donor", organisation=None, email="funder@example.org")
    other = app.test_client()
    foreign_token = csrf_token_of(other.get("/login"))

    response = client.post("/login", data={"email": "funder@example.org", "password": PASSWORD, "csrf_token": foreign_token})

    assert response.status_code == 400


def _stripe_signature(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    timestamp = timestamp or int(time.time())
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def test_stripe_webhook_exempt_and_signature_checked(csrf_app, client, monkeypatch):
    secret = "whsec_test_security"
    monkeypatch.setitem(csrf_app.config, "STRIPE_WEBHOOK_SECRET", secret)
    payload = json.dumps({
        "id": "evt_security_1", "object": "event", "type": "customer.created", "created": 1700000000,
        "data": {"object": {"id": "cus_1", "object": "customer"}},
    }).encode()

    unsigned = client.post("/payments/stripe/webhook", data=payload, content_type="application/json")
    forged = client.post(
        "/payments/stripe/webhook", data=payload, content_type="application/json",
        headers={"Stripe-Signature": _stripe_signature(payload, "whsec_wrong")},
    )
    signed = client.post(
        "/payments/stripe/webhook", data=payload, content_type="application/json",
        headers={"Stripe-Signature": _stripe_signature(payload, secret)},
    )

    assert unsigned.status_code == 400
    assert unsigned.get_json()["error"]["code"] == "invalid_signature"
    assert forged.status_code == 400
    assert forged.get_json()["error"]["code"] == "invalid_signature"
    assert signed.status_code == 200, signed.get_data(as_text=True)
    assert signed.get_json()["received"] is True


def test_api_cookie_write_needs_csrf_header(csrf_app, client, make_user, login):
    owner = make_user("owner")
    login(owner)
    body = json.dumps({
        "title": "Fibre", "needs": [{"title": "Cable", "goal": {"amount": "10.00", "currency": "EUR"}}],
    })

    # A form on another site can send this body as text/plain with the user's cookie.
    text_plain = client.post("/api/v1/projects", data=body, content_type="text/plain")
    json_body = client.post("/api/v1/projects", data=body, content_type="application/json")

    assert text_plain.status_code == 400
    assert json_body.status_code == 400
    assert json_body.get_json()["error"]["code"] == "csrf_failed"
    assert count(Project) == 0

    token = csrf_token_of(client.get("/account"))
    accepted = client.post("/api/v1/projects", data=body, content_type="application/json", headers={"X-CSRFToken": token})
    assert accepted.status_code == 201, accepted.get_data(as_text=True)


def test_api_bearer_write_needs_no_csrf(csrf_app, app, make_user, db):
    owner = make_user("owner")
    _, token = create_token(owner, name="script")
    db.session.commit()
    body = {"title": "Fibre", "needs": [{"title": "Cable", "goal": {"amount": "10.00", "currency": "EUR"}}]}

    response = app.test_client().post("/api/v1/projects", json=body, headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 201, response.get_data(as_text=True)


# Markdown ----------------------------------------------------------------------------------

MARKDOWN_PAYLOADS = [
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click](jav&#x61;script:alert(1))",
    "[click](&#106;avascript:alert(1))",
    "[click](&#x6A;&#x61;&#x76;&#x61;&#x73;&#x63;&#x72;&#x69;&#x70;&#x74;&#x3A;alert(1))",
    "[click](javascript&colon;alert(1))",
    "[click](<javascript:alert(1)>)",
    "[click](<java\tscript:alert(1)>)",
    "[click](<java\nscript:alert(1)>)",
    "[click]( javascript:alert(1))",
    "[click](\x01javascript:alert(1))",
    "[click](java%09script:alert(1))",
    "[click](java%0ascript:alert(1))",
    "[click](java%250ascript:alert(1))",
    "[click](%6Aavascript:alert(1))",
    "[click](java\u200bscript:alert(1))",
    "[click](java&#0;script:alert(1))",
    "[click](vbscript:msgbox(1))",
    "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[click](DATA:text/html,<script>alert(1)</script>)",
    "[click](file:///etc/passwd)",
    "[click](javascript:alert(1) \"title\")",
    "[click][ref]\n\n[ref]: javascript:alert(1)",
    "[click][ref]\n\n[ref]: <jav&#x61;script:alert(1)>",
    "[ref]\n\n[ref]: data:text/html,x",
    "<javascript:alert(1)>",
    "<JAVASCRIPT:alert(1)>",
    "<data:text/html,<script>alert(1)</script>>",
    "<vbscript:msgbox(1)>",
    "![image](javascript:alert(1))",
    "![image](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+)",
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
    "<img src=x onerror=alert(1)>",
    "<svg onload=alert(1)>",
    "<iframe src=\"javascript:alert(1)\"></iframe>",
    "<a href=\"javascript:alert(1)\">x</a>",
    "<a href=\"jav&#x61;script:alert(1)\">x</a>",
    "<p onclick=\"alert(1)\">text</p>",
    "<div style=\"background:url(javascript:alert(1))\">x</div>",
    "<style>body{background:red}</style>",
    "<object data=\"javascript:alert(1)\"></object>",
    "<form action=\"javascript:alert(1)\"><button>go</button></form>",
    "<meta http-equiv=\"refresh\" content=\"0;url=javascript:alert(1)\">",
    "<base href=\"javascript:alert(1)//\">",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    "`<img src=x onerror=alert(1)>`",
    "```\n<script>alert(1)</script>\n```",
    "[x](https://example.org \"a\" onmouseover=\"alert(1)\")",
    "[x](https://example.org\" onmouseover=\"alert(1))",
    "| a |\n|---|\n| <img src=x onerror=alert(1)> |",
    "# Heading <script>alert(1)</script>",
    "> <iframe src=//evil.example>",
]


def _clean_url(value: str) -> str:
    """Decode entities and percent-escapes and remove whitespace and control characters, as a browser might."""
    from urllib.parse import unquote

    decoded = value
    for _ in range(5):
        decoded = unquote(html_lib.unescape(decoded))
    return re.sub(r"[\x00-\x20\x7f-\x9f\u200b-\u200f\ufeff\ufffd\s]", "", decoded).lower()


def assert_safe_html(markup: str) -> None:
    """Check every element and attribute of a sanitised fragment against the allowlist."""
    if not markup.strip():
        return
    # lxml cannot parse control characters; in the output they can only be text.
    parseable = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", "", markup)
    for element in html.fragment_fromstring(parseable, create_parent="div").iter():
        if element.tag == "div" and element.getparent() is None:
            continue
        assert element.tag in ALLOWED_TAGS, (element.tag, markup)
        for name, value in element.attrib.items():
            assert not name.lower().startswith("on"), (name, markup)
            if name == "class":
                assert set(value.split()) <= ALLOWED_CLASSES.get(element.tag, set()), (value, markup)
                continue
            if element.tag == "a" and name == "rel":
                continue
            assert name in ALLOWED_ATTRIBUTES.get(element.tag, set()), (element.tag, name, markup)
            if name == "href":
                url = _clean_url(value)
                scheme = re.match(r"([a-z][a-z0-9+.\-]*):", url)
                assert scheme is None or scheme.group(1) in ("http", "https", "mailto"), (value, markup)
                for banned in ("javascript", "vbscript", "data:"):
                    assert banned not in url, (value, markup)
    assert "<script" not in markup.lower()


@pytest.mark.parametrize("source", MARKDOWN_PAYLOADS)
def test_markdown_payload_sanitised(source):
    assert_safe_html(str(render_markdown(source)))


@pytest.mark.parametrize("source", MARKDOWN_PAYLOADS)
def test_raw_html_payload_sanitised(source):
    # The second layer on its own, as if markdown-it had let the text through as HTML.
    assert_safe_html(sanitise_html(source))


def test_markdown_keeps_safe_links_and_tables():
    rendered = str(render_markdown(
        "## Plan\n\n[site](https://example.org/a?b=1), [mail](mailto:team@example.org), "
        "[page](/projects/2), <https://itu.int>\n\n| Item | Cost |\n|:--|--:|\n| Fibre | 10 |"
    ))
    document = html.fragment_fromstring(rendered, create_parent="div")

    assert [a.get("href") for a in document.iter("a")] == [
        "https://example.org/a?b=1", "mailto:team@example.org", "/projects/2", "https://itu.int",
    ]
    assert all(a.get("rel") == "noopener noreferrer nofollow" for a in document.iter("a"))
    assert [cell.get("class") for cell in document.iter("th")] == ["align-left", "align-right"]
    assert "style=" not in rendered
    assert document.find("h2").text == "Plan"


def test_markdown_text_kept_escaped():
    rendered = str(render_markdown("Use <b>bold</b> & 5 < 6"))
    assert "&lt;b&gt;bold&lt;/b&gt;" in rendered
    assert "&amp; 5 &lt; 6" in rendered


def test_project_page_sanitises_description(client, make_user, db):
    owner = make_user("owner")
    coordinator = make_user("coordinator", organisation=None)
    project = published_project(owner, coordinator)
    project.description = "[x](jav&#x61;script:alert(1)) <img src=x onerror=alert(1)>\n\n| a |\n|--:|\n| 1 |"
    db.session.commit()

    document = html.fromstring(client.get(f"/projects/{project.id}").get_data(as_text=True))

    description = document.xpath("//section[contains(@class, 'prose')]")[0]
    assert list(description.iter("a")) == [], "the link is left as text"
    assert "[x](javascript:alert(1))" in description.text_content()
    assert description.xpath(".//img") == []
    assert "<img src=x onerror=alert(1)>" in description.text_content()
    assert [cell.get("class") for cell in description.iter("th")] == ["align-right"]


# Redirects after login -----------------------------------------------------------------------

UNSAFE_TARGETS = [
    None, "", " ", "evil.example", "evil.example/path", "javascript:alert(1)", "JavaScript:alert(1)",
    "data:text/html,x", "https://evil.example", "http://evil.example/", "https:evil.example", "https:/evil.example",
    "//evil.example", "///evil.example", "////evil.example", "/\\evil.example", "\\\\evil.example", "\\/evil.example",
    "/\\/evil.example", "%2F%2Fevil.example", "%2f%2fevil.example", "/%2F/evil.example", "/%2f%2fevil.example",
    "%252F%252Fevil.example", "/%252F%252Fevil.example", "/%25252F%25252Fevil", "/%5Cevil.example", "/%5cevil.example",
    "/%255Cevil.example", "/\tevil", "/\t/evil.example", "/\n/evil.example", "/\r\n/evil.example", "/%09/evil.example",
    "/%0a/evil.example", "/%0d%0a/evil.example", "/%00/evil.example", "/\x00/evil.example", "/\x7f", " /projects",
    "/projects page", "\t/projects", "/%2525252525252F", "http://localhost/projects", "//localhost/projects",
]
SAFE_TARGETS = [
    "/", "/projects", "/projects/12", "/projects?region=africa&page=2", "/projects?q=fibre%20backbone",
    "/projects?q=t%C3%A9l%C3%A9com", "/projects#needs", "/account", "/pledges/5?return=detail",
]


@pytest.mark.parametrize("target", UNSAFE_TARGETS)
def test_unsafe_redirect_rejected(target):
    assert is_safe_redirect_path(target) is False


@pytest.mark.parametrize("target", SAFE_TARGETS)
def test_local_redirect_accepted(target):
    assert is_safe_redirect_path(target) is True


@pytest.mark.parametrize("target", [t for t in UNSAFE_TARGETS if t])
def test_login_never_redirects_off_site(client, make_user, target):
    make_user("donor", organisation=None, email="funder@example.org")

    response = client.post("/login", data={"email": "funder@example.org", "password": PASSWORD, "next": target})

    if "\x00" in target:
        # A NUL is rejected before the view, as in any other field.
        assert response.status_code == 422
        assert "Location" not in response.headers
    else:
        assert response.status_code == 302
        assert response.headers["Location"] == "/"


@pytest.mark.parametrize("target", SAFE_TARGETS)
def test_login_follows_local_next(client, make_user, target):
    make_user("donor", organisation=None, email="funder@example.org")

    response = client.post("/login", data={"email": "funder@example.org", "password": PASSWORD, "next": target})

    assert response.headers["Location"] == target


def test_logged_in_login_page_redirect_checked(client, make_user, login):
    login(make_user("donor", organisation=None))

    assert client.get("/login?next=//evil.example").headers["Location"] == "/"
    assert client.get("/login?next=/account").headers["Location"] == "/account"


# Rate limits -------------------------------------------------------------------------------

@pytest.fixture
def limited_app(app, db):
    """A fresh app with small limits on the test database, so its counts start at zero."""
    limited = fresh_app(
        SQLALCHEMY_DATABASE_URI=app.config["SQLALCHEMY_DATABASE_URI"], RATELIMIT_ENABLED=True,
        RATELIMIT_STORAGE_URI="memory://", RATELIMIT_LOGIN="3 per minute", RATELIMIT_REGISTER="2 per hour",
        RATELIMIT_TOKEN="2 per hour",
    )
    yield limited
    dispose(limited)


def _add_user(app, email: str) -> int:
    with app.app_context():
        user = create_user(email, PASSWORD, "donor", name="Rate test")
        _db.session.commit()
        return user.id


def test_login_limit_returns_429_html(limited_app):
    _add_user(limited_app, "funder@example.org")
    client = limited_app.test_client()
    wrong = {"email": "funder@example.org", "password": "not the password"}

    statuses = [client.post("/login", data=wrong).status_code for _ in range(3)]
    blocked = client.post("/login", data={"email": "funder@example.org", "password": PASSWORD})

    assert statuses == [422, 422, 422]
    assert blocked.status_code == 429
    assert "Too many login attempts" in blocked.get_data(as_text=True)
    assert "<h1>Error 429</h1>" in blocked.get_data(as_text=True)
    assert int(blocked.headers["Retry-After"]) > 0
    assert client.get("/login").status_code == 200, "only POSTs count"
    other_address = limited_app.test_client().post("/login", data=wrong, environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert other_address.status_code == 422, "the limit is per client address"


def test_login_limit_json_error(limited_app):
    client = limited_app.test_client()
    for _ in range(3):
        client.post("/login", data={"email": "x@example.org", "password": "wrong password"})

    response = client.post("/login", data={"email": "x@example.org", "password": "wrong password"}, headers={"Accept": "application/json"})

    assert response.status_code == 429
    body = response.get_json()
    assert body["error"]["code"] == "rate_limited"
    assert "Too many login attempts" in body["error"]["message"]
    assert body["error"]["fields"] == {}


def test_register_limit(limited_app):
    client = limited_app.test_client()

    def register(number):
        return client.post("/register", data={
            "email": f"person{number}@example.org", "name": "Person", "password": PASSWORD, "confirm": PASSWORD, "role": "donor",
        })

    statuses = [register(number).status_code for number in range(3)]

    assert statuses == [302, 302, 429]
    with limited_app.app_context():
        assert _db.session.scalar(select(func.count(User.id)).where(User.email.like("person%"))) == 2


def test_token_limit_per_account(limited_app):
    first = _add_user(limited_app, "first@example.org")
    second = _add_user(limited_app, "second@example.org")
    client = limited_app.test_client()
    other = limited_app.test_client()
    for test_client, user_id in ((client, first), (other, second)):
        with test_client.session_transaction() as session:
            session["_user_id"] = str(user_id)

    statuses = [client.post("/account/tokens", data={"name": f"t{n}", "scopes": ["read"]}).status_code for n in range(3)]

    assert statuses == [201, 201, 429]
    assert other.post("/account/tokens", data={"name": "other", "scopes": ["read"]}).status_code == 201


def test_api_token_limit_per_account(limited_app):
    user_id = _add_user(limited_app, "script@example.org")
    with limited_app.app_context():
        _, token = create_token(_db.session.get(User, user_id), name="first")
        _db.session.commit()
    client = limited_app.test_client()
    headers = {"Authorization": f"Bearer {token}"}

    responses = [client.post("/api/v1/tokens", json={"name": f"t{n}", "scopes": ["read"]}, headers=headers) for n in range(3)]

    assert [response.status_code for response in responses] == [201, 201, 429]
    body = responses[-1].get_json()
    assert body["error"]["code"] == "rate_limited"
    assert "Too many API tokens created" in body["error"]["message"]
    assert responses[-1].headers["Retry-After"]


def test_limits_off_in_test_config(client, make_user):
    make_user("donor", organisation=None, email="funder@example.org")
    statuses = {client.post("/login", data={"email": "funder@example.org", "password": "wrong password"}).status_code for _ in range(15)}
    assert statuses == {422}


def test_limits_kept_in_redis(app, db):
    with redis_server() as url:
        limited = fresh_app(
            SQLALCHEMY_DATABASE_URI=app.config["SQLALCHEMY_DATABASE_URI"], RATELIMIT_ENABLED=True,
            RATELIMIT_STORAGE_URI=url, RATELIMIT_LOGIN="2 per minute",
        )
        client = limited.test_client()
        statuses = [client.post("/login", data={"email": "x@example.org", "password": "wrong password"}).status_code for _ in range(3)]
        keys = Redis.from_url(url).keys("*")
        dispose(limited)

    assert statuses == [422, 422, 429]
    assert any(b"financing" in key for key in keys), keys


def test_limits_fall_back_to_memory_when_redis_down(app, db):
    limited = fresh_app(
        SQLALCHEMY_DATABASE_URI=app.config["SQLALCHEMY_DATABASE_URI"], RATELIMIT_ENABLED=True,
        RATELIMIT_STORAGE_URI=f"redis://127.0.0.1:{free_port()}/0", RATELIMIT_LOGIN="2 per minute",
    )
    client = limited.test_client()

    statuses = [client.post("/login", data={"email": "x@example.org", "password": "wrong password"}).status_code for _ in range(4)]
    dispose(limited)

    assert 500 not in statuses
    assert statuses[:2] == [422, 422]
    assert statuses[-1] == 429


def test_rate_limit_storage_setting(monkeypatch):
    monkeypatch.delenv("RATELIMIT_STORAGE_URI", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert _rate_limit_storage() == "memory://"
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/3")
    assert _rate_limit_storage() == "redis://127.0.0.1:6379/3"
    monkeypatch.setenv("RATELIMIT_STORAGE_URI", "redis://127.0.0.1:6379/4")
    assert _rate_limit_storage() == "redis://127.0.0.1:6379/4"


# Passwords ---------------------------------------------------------------------------------

def test_common_password_list_shipped():
    passwords = common_passwords()
    assert len(passwords) >= 10_000
    assert "password" in passwords
    assert (ROOT / "financing" / "accounts" / "data" / "COMMON-PASSWORDS-NOTICE.txt").exists()


@pytest.mark.parametrize("password", ["qwerty123456", "QWERTY123456", "QwErTy123456", " 1q2w3e4r5t6y ", "123456789123"])
def test_common_password_rejected(password):
    assert is_common_password(password)
    with pytest.raises(ValidationFailed) as raised:
        check_password(password)
    assert "commonly used" in raised.value.fields["password"]


def test_short_password_rejected():
    assert MIN_PASSWORD_LENGTH == 12
    with pytest.raises(ValidationFailed) as raised:
        check_password("x7#kP2m!qL9")
    assert raised.value.fields["password"] == "Use at least 12 characters."


@pytest.mark.parametrize("password", [PASSWORD, "long enough pw", "benchmark password", *(account.password for account in ACCOUNTS)])
def test_project_passwords_still_accepted(password):
    check_password(password)


def test_register_form_rejects_common_password(client, db):
    response = client.post("/register", data={
        "email": "amina@example.org", "name": "Amina", "password": "Qwerty123456", "confirm": "Qwerty123456", "role": "donor",
    })

    assert response.status_code == 422
    assert "commonly used passwords" in response.get_data(as_text=True)
    assert 'value="amina@example.org"' in response.get_data(as_text=True)
    assert count(User) == 0


def test_register_form_rejects_short_password(client, db):
    response = client.post("/register", data={
        "email": "amina@example.org", "name": "Amina", "password": "x7#kP2m!qL9", "confirm": "x7#kP2m!qL9", "role": "donor",
    })

    assert response.status_code == 422
    assert "Use at least 12 characters." in response.get_data(as_text=True)
    assert count(User) == 0


def test_create_user_rejects_common_password(db):
    with pytest.raises(ValidationFailed):
        create_user("cli@example.org", "Password1234", "donor")
    assert count(User) == 0


# Sessions ----------------------------------------------------------------------------------

def test_login_rotates_session_and_csrf_token(csrf_app, client, make_user):
    make_user("donor", organisation=None, email="funder@example.org")
    login_page = client.get("/login")
    old_token = csrf_token_of(login_page)
    with client.session_transaction() as session:
        session["planted"] = "set by someone before the login"
        old_raw_token = session["csrf_token"]

    response = client.post("/login", data={"email": "funder@example.org", "password": PASSWORD, "csrf_token": old_token})

    assert response.status_code == 302
    with client.session_transaction() as session:
        assert "planted" not in session
        assert session.get("csrf_token") != old_raw_token
        assert session["_user_id"]
        assert session["_id"], "Flask-Login's session identifier is set"
    assert client.post("/logout", data={"csrf_token": old_token}).status_code == 400, "the pre-login token is dead"
    new_token = csrf_token_of(client.get("/account"))
    assert client.post("/logout", data={"csrf_token": new_token}).status_code == 302


def test_logout_clears_session(client, make_user):
    make_user("donor", organisation=None, email="funder@example.org")
    client.post("/login", data={"email": "funder@example.org", "password": PASSWORD})

    response = client.post("/logout")

    assert response.status_code == 302
    with client.session_transaction() as session:
        assert "_user_id" not in session
    assert client.get("/account").status_code == 302


def test_session_cookie_flags_development(client, make_user):
    make_user("donor", organisation=None, email="funder@example.org")

    response = client.post("/login", data={"email": "funder@example.org", "password": PASSWORD})

    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie


def test_session_cookie_secure_in_production(app, db):
    secure = fresh_app(SQLALCHEMY_DATABASE_URI=app.config["SQLALCHEMY_DATABASE_URI"], SESSION_COOKIE_SECURE=True)
    _add_user(secure, "funder@example.org")

    response = secure.test_client().post("/login", data={"email": "funder@example.org", "password": PASSWORD})
    dispose(secure)

    cookie = response.headers["Set-Cookie"]
    assert "Secure" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie


def test_cookie_settings():
    for config in (Config, TestConfig):
        assert config.SESSION_COOKIE_HTTPONLY is True
        assert config.SESSION_COOKIE_SAMESITE == "Lax"
        assert config.REMEMBER_COOKIE_HTTPONLY is True
        assert config.REMEMBER_COOKIE_SAMESITE == "Lax"
        assert config.SESSION_PROTECTION == "basic"
    assert ProductionConfig.SESSION_COOKIE_SECURE is True
    assert ProductionConfig.REMEMBER_COOKIE_SECURE is True


def test_session_from_other_browser_not_fresh(client, make_user):
    make_user("donor", organisation=None, email="funder@example.org")
    client.post("/login", data={"email": "funder@example.org", "password": PASSWORD}, headers={"User-Agent": "Browser A"})

    client.get("/account", headers={"User-Agent": "Browser B"})

    with client.session_transaction() as session:
        assert session["_fresh"] is False


# Security headers --------------------------------------------------------------------------

EXPECTED_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
    "form-action 'self' https://checkout.stripe.com; base-uri 'none'"
)


def assert_security_headers(response) -> None:
    headers = response.headers
    assert headers["Content-Security-Policy"] == EXPECTED_CSP
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
    assert "camera=()" in headers["Permissions-Policy"]
    assert "geolocation=()" in headers["Permissions-Policy"]


@pytest.mark.parametrize("url", ["/", "/projects", "/login", "/api/v1/projects", "/api/openapi.json", "/healthz",
                                 "/static/css/site.css", "/no-such-page", "/api/v1/no-such", "/account"])
def test_security_headers_on_every_response(client, db, url):
    with client.get(url) as response:
        assert_security_headers(response)
        assert "Strict-Transport-Security" not in response.headers


def test_security_headers_on_errors_and_posts(client, db):
    assert_security_headers(client.post("/login", data={}))
    assert_security_headers(client.post("/api/v1/projects", json={}))


def test_hsts_when_configured(app, db):
    production_like = fresh_app(SQLALCHEMY_DATABASE_URI=app.config["SQLALCHEMY_DATABASE_URI"], STRICT_TRANSPORT_SECURITY="max-age=31536000")
    response = production_like.test_client().get("/login")
    dispose(production_like)
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000"


INLINE_PATTERNS = {
    "style attribute": re.compile(r"\sstyle\s*="),
    "script element": re.compile(r"<script", re.IGNORECASE),
    "style element": re.compile(r"<style", re.IGNORECASE),
    "event handler": re.compile(r"\son[a-z]+\s*=", re.IGNORECASE),
    "javascript URL": re.compile(r"javascript:", re.IGNORECASE),
}


def test_templates_have_no_inline_code():
    found = []
    for path in sorted((ROOT / "templates").rglob("*.html")):
        text = path.read_text()
        for name, pattern in INLINE_PATTERNS.items():
            if pattern.search(text):
                found.append((str(path.relative_to(ROOT)), name))
    assert found == []


def test_pages_render_without_inline_styles(client, make_user, login, db):
    owner = make_user("owner")
    coordinator = make_user("coordinator", organisation=None)
    project = published_project(owner, coordinator)
    login(coordinator)

    for url in ("/", "/projects", f"/projects/{project.id}", "/projects/mine", "/funders", "/account"):
        text = client.get(url).get_data(as_text=True)
        for name, pattern in INLINE_PATTERNS.items():
            assert not pattern.search(text), (url, name)


@pytest.mark.parametrize("pledged, goal, width", [(0, 100, 0), (1, 3, 33), (1, 1, 100), (5, 2, 100), (999, 1000, 99)])
def test_progress_width_class(app, pledged, goal, width):
    with app.test_request_context():
        macro = app.jinja_env.get_template("_macros.html").module.progress
        markup = str(macro(pledged, goal, "Share pledged"))
    assert f"progress-w-{width}" in markup
    assert f'aria-valuenow="{width}"' in markup
    css = (ROOT / "static" / "css" / "site.css").read_text()
    assert f".progress-w-{width} {{ width: {width}%; }}" in css
