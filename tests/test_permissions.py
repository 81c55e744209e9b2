"""Permission matrix test: every route and method, as each of seven identities, gets its exact status.

The matrix itself is data in tests/permissions.py. Each case builds the same small world in a
fresh database with direct service calls, sends one request and checks the status. A 403 or
404 about an object must not show that object's title or amounts.
"""

import io
import re
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from werkzeug.routing import RequestRedirect
from werkzeug.security import generate_password_hash

from financing.accounts.services import create_token
from financing.audit.models import AuditEntry
from financing.funders.services import FunderInput, funder_for_user, update_funder
from financing.matching.allocation_models import AllocationRow, AllocationRun
from financing.matching.models import Match
from financing.notifications.models import Notification
from financing.pledges.match_funds import MatchFundInput, create_match_fund
from financing.pledges.services import act, create_pledge
from financing.projects.services import NeedInput, ProjectInput, create_project, publish_project, submit_project
from financing.rates.services import add_rate
from tests.permissions import IDENTITIES, ROWS, Row

# Placeholders such as {draft_project} in the matrix's paths, field names and values.
PLACEHOLDER = re.compile(r"\{(\w+)\}")
# Methods that Flask adds to rules by itself (HEAD to GET rules, OPTIONS to all), which the matrix leaves out.
IMPLICIT_METHODS = {"HEAD", "OPTIONS"}
ACCOUNTS = {
    "owner": ("owner", "Ministry of ICT, Kenya"),
    "other_owner": ("owner", "Regulator of Ghana"),
    "donor": ("donor", "European Commission"),
    "other_donor": ("donor", "World Bank"),
    "coordinator": ("coordinator", None),
    "admin": ("admin", None),
}


@dataclass
class World:
    """The accounts by identity, object ids by matrix name, and the texts that must not leak per object."""

    users: dict = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)
    secrets: dict[str, tuple[str, ...]] = field(default_factory=dict)


@pytest.fixture(autouse=True)
def fast_password_hashes(monkeypatch):
    """Hash the six passwords of each case with one PBKDF2 round instead of scrypt, which takes most of a case's time otherwise."""
    monkeypatch.setattr(
        "financing.accounts.services.generate_password_hash",
        lambda password: generate_password_hash(password, method="pbkdf2:sha256:1"),
    )


def make_project(owner, coordinator, title: str, status: str, goal_minor: int = 10_000_000):
    data = ProjectInput(
        title=title, summary="Connectivity for rural counties.", countries=["KE"], themes=["broadband"],
        needs=[NeedInput(title=f"{title}: equipment", goal_minor=goal_minor, currency="EUR")],
    )
    project = create_project(owner, data)
    if status in ("submitted", "published"):
        submit_project(owner, project)
    if status == "published":
        publish_project(coordinator, project)
    return project


def make_funder(user, regions: list[str]):
    funder = funder_for_user(user)
    data = FunderInput(
        name=funder.name, regions=regions, themes=["broadband"],
        ticket_min_minor=100_000, ticket_max_minor=5_000_000, annual_budget_minor=50_000_000,
    )
    return update_funder(user, funder, data)


def add_allocation_run(coordinator, funder, project) -> AllocationRow:
    need = project.needs[0]
    run = AllocationRun(
        created_by_id=coordinator.id, status="proposed", method="lp", solver_status="optimal", seconds=0.1,
        objective_currency="EUR", proposed={"EUR": 500_000}, open_need={"EUR": need.remaining_minor},
    )
    row = AllocationRow(
        funder_id=funder.id, project_id=project.id, need_id=need.id, amount_minor=500_000, currency="EUR",
        need_amount_minor=500_000, need_currency="EUR", rate=Decimal(1), score=0.8,
        parts={"region": 1.0, "theme": 1.0}, explanation="Region and theme fit.",
    )
    run.rows.append(row)
    return row


def build_world(db, make_user) -> World:
    """Create the accounts and the objects that tests/permissions.py names, and commit them."""
    world = World()
    for identity, (role, organisation) in ACCOUNTS.items():
        world.users[identity] = make_user(role, organisation=organisation, email=f"{identity.replace('_', '.')}@example.org")
    owner, other_owner = world.users["owner"], world.users["other_owner"]
    donor, other_donor = world.users["donor"], world.users["other_donor"]
    coordinator = world.users["coordinator"]

    draft = make_project(owner, coordinator, "Kisumu fibre study", "draft")
    submitted = make_project(owner, coordinator, "Nakuru community networks", "submitted")
    published = make_project(owner, coordinator, "Turkana rural broadband", "published")
    other = make_project(other_owner, coordinator, "Accra school connectivity", "published")
    funder = make_funder(donor, ["africa"])
    other_funder = make_funder(other_donor, ["africa"])
    need, other_need = published.needs[0], other.needs[0]

    pledge, _ = create_pledge(donor, need.id, 432_198, "EUR")
    confirmed, _ = create_pledge(donor, need.id, 135_791, "EUR")
    act(coordinator, confirmed.id, "confirm")
    other_pledge, _ = create_pledge(other_donor, other_need.id, 246_802, "EUR")
    # Created after the pledges, so that it matches none of them.
    fund = create_match_fund(donor, MatchFundInput(name="Turkana connectivity match", factor="1", currency="EUR", total_cap="7531.00"))
    match = Match(
        project_id=published.id, need_id=need.id, funder_id=funder.id, score=0.8, parts={"region": 1.0, "theme": 1.0},
        weights={}, explanation="Both prefer broadband in Africa.", inputs_digest="0" * 64, status="suggested",
    )
    db.session.add(match)
    run_row = add_allocation_run(coordinator, funder, published)
    db.session.add(run_row.run)
    notification = Notification(
        user_id=donor.id, kind="pledge_confirmed", link=f"/pledges/{confirmed.id}",
        params={"project": published.title, "amount_minor": 135_791, "currency": "EUR"},
    )
    db.session.add(notification)
    add_rate(coordinator, "USD", "EUR", "0.92", date(2026, 1, 1))
    token, _ = create_token(donor, name="Donor spare token")
    db.session.commit()

    world.ids = {
        "draft_project": draft.id, "submitted_project": submitted.id, "published_project": published.id,
        "other_project": other.id, "need": need.id, "other_need": other_need.id,
        "pledge": pledge.id, "confirmed_pledge": confirmed.id, "other_pledge": other_pledge.id,
        "funder": funder.id, "other_funder": other_funder.id, "match": match.id, "match_fund": fund.id,
        "run": run_row.run_id, "run_row": run_row.id, "notification": notification.id, "token": token.id,
    }
    world.secrets = {
        "draft_project": (draft.title,), "submitted_project": (submitted.title,),
        "pledge": ("4,321.98", "4321.98"), "confirmed_pledge": ("1,357.91", "1357.91"),
        "other_pledge": ("2,468.02", "2468.02"), "match": (match.explanation,),
        "match_fund": (fund.name, "7,531.00", "7531.00"), "notification": ("1,357.91",), "token": (token.name, token.prefix),
    }
    return world


def fill(value, ids: dict[str, int]):
    """Replace the placeholders in a matrix value. A string that is only a placeholder becomes the integer id."""
    if isinstance(value, str):
        whole = PLACEHOLDER.fullmatch(value)
        if whole:
            return ids[whole.group(1)]
        return PLACEHOLDER.sub(lambda found: str(ids[found.group(1)]), value)
    if isinstance(value, list):
        return [fill(item, ids) for item in value]
    if isinstance(value, dict):
        return {fill(key, ids): fill(item, ids) for key, item in value.items()}
    return value


def form_data(row: Row, ids: dict[str, int]) -> dict:
    """Build the form fields of a page request: ids as text, files as uploads."""
    data = {name: [str(item) for item in value] if isinstance(value, list) else str(value)
            for name, value in fill(row.data or {}, ids).items()}
    for name, (filename, text) in row.files.items():
        data[name] = (io.BytesIO(text.encode()), filename)
    return data


def sign_in(client, login, db, world: World, row: Row, identity: str) -> dict[str, str]:
    """Sign the identity in and return the headers to send: a session for pages, a new token with every scope for the API."""
    user = world.users.get(identity)
    headers = dict(row.headers)
    if user is None:
        return headers
    if row.api:
        _, token = create_token(user, name="Matrix token")
        db.session.commit()
        headers["Authorization"] = f"Bearer {token}"
    else:
        login(user)
    return headers


def send(client, world: World, row: Row, headers: dict[str, str]):
    path = fill(row.path, world.ids)
    if row.api:
        return client.open(path, method=row.method, json=fill(row.data, world.ids), headers=headers)
    if row.method == "GET":
        return client.get(path, headers=headers)
    return client.open(path, method=row.method, data=form_data(row, world.ids), headers=headers)


def audit_entries(db) -> int:
    return db.session.scalar(select(func.count()).select_from(AuditEntry))


def referenced_objects(row: Row) -> set[str]:
    texts = [row.path, repr(row.data)]
    return {name for text in texts for name in PLACEHOLDER.findall(text)}


CASES = [pytest.param(row, identity, id=f"{row.name} as {identity}") for row in ROWS for identity in IDENTITIES]


@pytest.mark.parametrize("row, identity", CASES)
def test_permission_matrix(client, login, db, make_user, row, identity):
    world = build_world(db, make_user)
    headers = sign_in(client, login, db, world, row, identity)
    entries_before = audit_entries(db)

    response = send(client, world, row, headers)

    expected = row.expected[identity]
    body = response.get_data(as_text=True)
    assert response.status_code == expected, f"{row.name} as {identity}: {response.status_code}, expected {expected}\n{body[:2000]}"
    if expected == 302 and identity == "anonymous" and row.login_redirect:
        assert response.headers["Location"].startswith("/login"), response.headers["Location"]
    if expected >= 400:
        assert audit_entries(db) == entries_before, f"{row.name} as {identity} was rejected but wrote an audit entry"
    if expected in (403, 404):
        for name in referenced_objects(row):
            for secret in world.secrets.get(name, ()):
                assert secret not in body, f"{row.name} as {identity} shows {secret!r} of {name}"
    for name in row.hidden.get(identity, ()):
        for secret in world.secrets[name]:
            assert secret not in body, f"{row.name} as {identity} lists {secret!r} of {name}"


def matrix_routes(app) -> set[tuple[str, str]]:
    """Return the (rule, method) pairs that the matrix's rows reach, with every placeholder set to 1."""
    adapter = app.url_map.bind("localhost")
    reached = set()
    for row in ROWS:
        path = PLACEHOLDER.sub("1", row.path).split("?", 1)[0]
        try:
            rule, _ = adapter.match(path, method=row.method, return_rule=True)
        except RequestRedirect as redirect:
            pytest.fail(f"{row.name} redirects to {redirect.new_url}: fix the path in tests/permissions.py")
        reached.add((rule.rule, row.method))
    return reached


def test_matrix_covers_every_route(app):
    routes = {
        (rule.rule, method)
        for rule in app.url_map.iter_rules() if rule.endpoint != "static"
        for method in rule.methods - IMPLICIT_METHODS
    }

    missing = sorted(routes - matrix_routes(app))

    assert not missing, "Add these routes to tests/permissions.py: " + ", ".join(f"{method} {rule}" for rule, method in missing)


def test_matrix_rows_are_unique_and_complete():
    names = [row.name for row in ROWS]

    assert len(names) == len(set(names))
    for row in ROWS:
        assert set(row.expected) == set(IDENTITIES), row.name
