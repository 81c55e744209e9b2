"""Tests of the pledge pages: the pledge form, the pledge page with its ledger, and the review queue."""

import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from babel.dates import format_date
from flask import g, request_started
from lxml import html
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from financing.core.time import utcnow
from financing.funders.services import funder_for_user
from financing.pledges.models import Pledge, PledgeEvent
from financing.pledges.services import create_pledge, need_totals
from financing.projects.models import FundingNeed
from financing.projects.services import NeedInput, ProjectInput, create_project, publish_project, submit_project, withdraw_project
from stripe_fake import StripeFake

ON_POSTGRES = os.environ.get("TEST_DATABASE_URL", "").startswith("postgresql")
KEY = "0b6c1a4e-3f2d-4c5b-9a8e-7d6f5e4c3b2a"


@pytest.fixture(autouse=True)
def fresh_globals_per_request(app):
    """Start each request with an empty `g`, as it does outside the tests.

    The db fixture keeps one app context pushed for the whole test, and `g` belongs to that
    context. Flask-Login caches the user and Flask-WTF the CSRF token in `g`, so without this
    fixture every later request would run as the first user loaded, even from another client.
    """

    def clear_globals(sender, **extra):
        for name in list(g):
            g.pop(name)

    request_started.connect(clear_globals, app)
    yield
    request_started.disconnect(clear_globals, app)


@pytest.fixture
def people(make_user):
    """The accounts of these tests: a project owner, two donors and a coordinator."""

    class People:
        owner = make_user("owner", organisation="Ministry of ICT, Kenya")
        donor = make_user("donor", organisation="European Commission")
        other_donor = make_user("donor", organisation="World Bank")
        coordinator = make_user("coordinator", organisation=None)

    return People


@pytest.fixture
def need(db, people):
    """A published project with one need of 1,000.00 EUR, and that need."""
    return publish_need(db, people)


def publish_need(db, people, goal_minor=100_000, currency="EUR", deadline=None, status="published") -> FundingNeed:
    data = ProjectInput(
        title="Rural broadband for Kenya", summary="Wireless access in rural counties.",
        countries=["KE"], themes=["broadband"],
        needs=[NeedInput(title="Access points", goal_minor=goal_minor, currency=currency, deadline=deadline)],
    )
    project = create_project(people.owner, data)
    if status != "draft":
        submit_project(people.owner, project)
        publish_project(people.coordinator, project)
    db.session.commit()
    return project.needs[0]


def page(response):
    return html.fromstring(response.get_data(as_text=True))


def text_of(response) -> str:
    return " ".join(page(response).text_content().split())


def pledge_count(db) -> int:
    return db.session.scalar(select(func.count()).select_from(Pledge))


def post_pledge(client, need_id, amount, key=KEY, **extra):
    form = {"amount": amount, "currency": "EUR", "kind": "commitment", "idempotency_key": key, **extra}
    return client.post(f"/needs/{need_id}/pledge", data=form)


def pledge_id_from(response) -> int:
    match = re.fullmatch(r"/pledges/(\d+)", response.headers["Location"])
    assert match, response.headers["Location"]
    return int(match.group(1))


# The pledge form


def test_pledge_form_shows_need(client, login, people, db):
    deadline = utcnow().date() + timedelta(days=30)
    need = publish_need(db, people, deadline=deadline)
    login(people.donor)

    response = client.get(f"/needs/{need.id}/pledge")

    assert response.status_code == 200
    document = page(response)
    text = text_of(response)
    assert "Rural broadband for Kenya" in text
    assert "Access points" in text
    assert "€1,000.00" in text
    assert f"accepts pledges until the end of {format_date(deadline, 'medium', locale='en')} (UTC)." in text
    assert "Card payments are switched off on this platform" in text
    key = document.xpath("//input[@name='idempotency_key']/@value")
    assert len(key) == 1
    assert re.fullmatch(r"[0-9a-f-]{36}", key[0])
    assert document.xpath("//label[@for='amount']")
    # Without a stored exchange rate, the need's currency is the only choice.
    assert document.xpath("//select[@name='currency']/option/@value") == ["EUR"]
    assert document.xpath("//select[@name='currency']/option[@selected]/@value") == ["EUR"]


def test_card_notice_hidden_when_cards_enabled(app, client, login, people, need, monkeypatch):
    monkeypatch.setitem(app.config, "STRIPE_SECRET_KEY", "sk_test_local_only")
    login(people.donor)

    response = client.get(f"/needs/{need.id}/pledge")

    assert "Card payments are switched off" not in text_of(response)


# Card payments on the pledge form, against the local Stripe fake of tests/stripe_fake.py


@pytest.fixture(scope="module")
def stripe_server():
    server = StripeFake().start()
    yield server
    server.stop()


@pytest.fixture
def cards_on(app, stripe_server, monkeypatch) -> StripeFake:
    """Switch card payments on for one test, against a freshly reset fake on 127.0.0.1."""
    stripe_server.reset()
    settings = {"STRIPE_SECRET_KEY": "sk_test_fake", "STRIPE_API_BASE": stripe_server.base, "STRIPE_MAX_NETWORK_RETRIES": 0, "STRIPE_TIMEOUT_SECONDS": 5}
    for name, value in settings.items():
        monkeypatch.setitem(app.config, name, value)
    return stripe_server


def kinds_offered(response) -> list[str]:
    return page(response).xpath("//input[@name='kind']/@value")


def test_card_option_offered_when_enabled(client, login, people, need, cards_on):
    login(people.donor)

    response = client.get(f"/needs/{need.id}/pledge")

    assert kinds_offered(response) == ["commitment", "card"]
    labels = [" ".join(label.text_content().split()) for label in page(response).xpath("//fieldset//label")]
    assert labels == ["Commitment", "Card payment"]


def test_card_option_hidden_when_disabled(client, login, people, need, db):
    login(people.donor)

    form_page = client.get(f"/needs/{need.id}/pledge")
    response = post_pledge(client, need.id, "25.00", kind="card")

    assert kinds_offered(form_page) == ["commitment"]
    assert response.status_code == 422
    assert page(response).xpath("//*[@id='kind-error']/text()") == ["Card payments are switched off on this platform."]
    assert page(response).xpath("//input[@name='amount']/@value") == ["25.00"]
    assert pledge_count(db) == 0


def test_unknown_kind_rejected(client, login, people, need, db):
    login(people.donor)

    response = post_pledge(client, need.id, "25.00", kind="cash")

    assert response.status_code == 422
    assert page(response).xpath("//*[@id='kind-error']/text()") == ["Unknown kind of pledge 'cash': choose Commitment or Card payment."]
    assert pledge_count(db) == 0


def test_card_pledge_redirects_to_checkout(client, login, people, need, db, cards_on):
    login(people.donor)

    response = post_pledge(client, need.id, "25.00", kind="card")

    assert response.status_code == 303
    sessions = list(cards_on.state.sessions.values())
    assert len(sessions) == 1
    assert response.headers["Location"] == sessions[0]["url"]
    pledge = db.session.scalar(select(Pledge))
    assert (pledge.kind, pledge.state, pledge.amount_minor, pledge.currency) == ("card", "pending_payment", 2_500, "EUR")
    assert pledge.payment_session_id == sessions[0]["id"]
    assert f"pledge={pledge.id}" in sessions[0]["success_url"]
    assert sessions[0]["amount_total"] == 2_500

    again = post_pledge(client, need.id, "25.00", kind="card")

    assert again.status_code == 303
    assert again.headers["Location"] == response.headers["Location"]
    assert pledge_count(db) == 1


def test_card_pledge_over_goal_names_remaining(client, login, people, need, db, cards_on):
    login(people.donor)

    response = post_pledge(client, need.id, "1000.01", kind="card")

    assert response.status_code == 409
    assert page(response).xpath("//*[@id='amount-error']/text()") == ["The amount is more than the need still requires (remaining: €1,000.00)."]
    assert cards_on.state.sessions == {}
    assert pledge_count(db) == 0


def test_card_pledge_stripe_failure(client, login, people, need, db, cards_on):
    cards_on.fail(500, "Stripe is down for maintenance.", path="/v1/checkout/sessions")
    login(people.donor)

    response = post_pledge(client, need.id, "25.00", kind="card")

    assert response.status_code == 502
    summary = " ".join(page(response).xpath("//*[@class='error-summary']//text()"))
    assert "The pledge was cancelled; please try again later." in summary
    fresh_key = page(response).xpath("//input[@name='idempotency_key']/@value")
    assert len(fresh_key) == 1
    assert fresh_key[0] != KEY
    db.session.expire_all()
    assert db.session.scalar(select(Pledge.state)) == "cancelled"
    assert db.session.get(FundingNeed, need.id).pledged_minor == 0

    retried = post_pledge(client, need.id, "25.00", key=fresh_key[0], kind="card")
    assert retried.status_code == 303
    assert pledge_count(db) == 2


def test_each_rendering_gets_new_key(client, login, people, need):
    login(people.donor)

    first = page(client.get(f"/needs/{need.id}/pledge")).xpath("//input[@name='idempotency_key']/@value")
    second = page(client.get(f"/needs/{need.id}/pledge")).xpath("//input[@name='idempotency_key']/@value")

    assert first != second


def test_donor_pledges_via_form(client, login, people, need, db):
    login(people.donor)

    response = post_pledge(client, need.id, "400.00")

    assert response.status_code == 302
    pledge = db.session.get(Pledge, pledge_id_from(response))
    assert (pledge.amount_minor, pledge.currency, pledge.state, pledge.kind) == (40_000, "EUR", "pledged", "commitment")
    assert pledge.idempotency_key == KEY
    pledge_page = client.get(response.headers["Location"])
    assert pledge_page.status_code == 200
    assert "€400.00" in text_of(pledge_page)
    assert "Pledged" in text_of(pledge_page)


def test_double_submit_makes_one_pledge(client, login, people, need, db):
    login(people.donor)

    first = post_pledge(client, need.id, "400.00")
    second = post_pledge(client, need.id, "400.00")

    assert first.status_code == second.status_code == 302
    assert first.headers["Location"] == second.headers["Location"]
    assert pledge_count(db) == 1
    assert db.session.scalar(select(func.count()).select_from(PledgeEvent)) == 1
    assert db.session.get(FundingNeed, need.id).pledged_minor == 40_000


def submit_together(app, login, user, need_id: int, count: int = 4) -> list:
    """Post the same pledge form from several clients at once, as a multiple click does."""
    clients = [login(user, app.test_client()) for _ in range(count)]
    start = threading.Barrier(count)

    def submit(client):
        start.wait()
        return post_pledge(client, need_id, "400.00")

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(submit, clients))


@pytest.mark.skipif(not ON_POSTGRES, reason="concurrent requests need PostgreSQL; in-memory SQLite shares one connection")
def test_concurrent_double_submit_makes_one_pledge(app, login, people, need, db):
    funder_for_user(people.donor)
    db.session.commit()

    responses = submit_together(app, login, people.donor, need.id)

    assert [response.status_code for response in responses] == [302] * len(responses)
    assert len({response.headers["Location"] for response in responses}) == 1
    db.session.expire_all()
    assert pledge_count(db) == 1
    assert db.session.get(FundingNeed, need.id).pledged_minor == 40_000


# NOTE: funder_for_user inserts a donor's funder without handling a concurrent insert, so
# simultaneous first pledges of one donor fail on uq_funder_organisation_id.
@pytest.mark.skipif(not ON_POSTGRES, reason="concurrent requests need PostgreSQL; in-memory SQLite shares one connection")
def test_concurrent_first_pledges_make_one_pledge(app, login, people, need, db):
    responses = submit_together(app, login, people.donor, need.id)

    assert [response.status_code for response in responses] == [302] * len(responses)
    db.session.expire_all()
    assert pledge_count(db) == 1


@pytest.mark.parametrize(
    "amount, message",
    [
        ("-5", "must be greater than zero"),
        ("0", "must be greater than zero"),
        ("abc", "is not a number"),
        ("1e3", "is not a number"),
        ("1.234", "more decimals than EUR allows"),
        ("", "Amount is required"),
    ],
)
def test_bad_amount_rejected(client, login, people, need, db, amount, message):
    login(people.donor)

    response = post_pledge(client, need.id, amount)

    assert response.status_code == 422
    document = page(response)
    errors = document.xpath("//*[@id='amount-error']/text()")
    assert len(errors) == 1
    assert "Amount" in errors[0]
    assert message in errors[0]
    assert document.xpath("//input[@name='amount']/@value") == [amount]
    assert document.xpath("//input[@name='amount']/@aria-invalid") == ["true"]
    # The same key comes back, so that correcting the amount still makes one pledge.
    assert document.xpath("//input[@name='idempotency_key']/@value") == [KEY]
    assert pledge_count(db) == 0
    assert db.session.get(FundingNeed, need.id).pledged_minor == 0


def test_over_goal_conflict_names_remaining(client, login, people, need, db):
    login(people.donor)
    post_pledge(client, need.id, "400.00")

    response = post_pledge(client, need.id, "600.01", key="1b6c1a4e-3f2d-4c5b-9a8e-7d6f5e4c3b2a")

    assert response.status_code == 409
    document = page(response)
    errors = document.xpath("//*[@id='amount-error']/text()")
    assert errors == ["The amount is more than the need still requires (remaining: €600.00)."]
    assert document.xpath("//input[@name='amount']/@value") == ["600.01"]
    assert pledge_count(db) == 1


def test_currency_changed_since_rendering_rejected(client, login, people, need, db):
    login(people.donor)

    response = post_pledge(client, need.id, "400.00", currency="USD")

    assert response.status_code == 422
    errors = page(response).xpath("//*[@id='currency-error']/text()")
    assert errors == ["No exchange rate from USD to EUR is stored; pledge in EUR or ask a coordinator to add the rate."]
    assert pledge_count(db) == 0


def test_missing_idempotency_key_rejected(client, login, people, need, db):
    login(people.donor)

    response = post_pledge(client, need.id, "400.00", key="")

    assert response.status_code == 422
    assert "The form is incomplete; submit it again." in text_of(response)
    assert pledge_count(db) == 0
    fresh = page(response).xpath("//input[@name='idempotency_key']/@value")
    assert len(fresh) == 1
    assert re.fullmatch(r"[0-9a-f-]{36}", fresh[0])
    assert post_pledge(client, need.id, "400.00", key=fresh[0]).status_code == 302
    assert pledge_count(db) == 1


def test_past_deadline_shows_no_form(client, login, people, db):
    need = publish_need(db, people, deadline=utcnow().date() - timedelta(days=1))
    login(people.donor)

    form_page = client.get(f"/needs/{need.id}/pledge")
    posted = post_pledge(client, need.id, "10.00")

    assert form_page.status_code == 200
    assert "stopped accepting pledges at the end of" in text_of(form_page)
    assert not page(form_page).xpath("//input[@name='amount']")
    assert posted.status_code == 409
    assert pledge_count(db) == 0


def test_unpublished_need_not_found(client, login, people, db):
    need = publish_need(db, people, status="draft")
    login(people.donor)

    assert client.get(f"/needs/{need.id}/pledge").status_code == 404
    assert post_pledge(client, need.id, "10.00").status_code == 404
    assert client.get("/needs/999999/pledge").status_code == 404


@pytest.mark.parametrize("role", ["owner", "coordinator"])
def test_pledge_form_for_donors_only(client, login, people, need, db, role):
    login(getattr(people, role))

    assert client.get(f"/needs/{need.id}/pledge").status_code == 403
    assert post_pledge(client, need.id, "10.00").status_code == 403
    assert pledge_count(db) == 0


def test_pledge_form_needs_login(client, need):
    response = client.get(f"/needs/{need.id}/pledge")

    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


def test_pledge_form_rejects_missing_csrf_token(app, client, login, people, need, db, monkeypatch):
    monkeypatch.setitem(app.config, "WTF_CSRF_ENABLED", True)
    login(people.donor)

    response = post_pledge(client, need.id, "10.00")

    assert response.status_code == 400
    assert pledge_count(db) == 0


def test_forms_carry_csrf_tokens(app, client, login, people, need, db, monkeypatch):
    monkeypatch.setitem(app.config, "WTF_CSRF_ENABLED", True)
    login(people.donor)
    form = page(client.get(f"/needs/{need.id}/pledge"))
    fields = {field.get("name"): field.get("value") for field in form.xpath("//form[@action]//input[@type='hidden']")}
    assert fields.get("csrf_token")

    pledged = post_pledge(client, need.id, "10.00", key=fields["idempotency_key"], csrf_token=fields["csrf_token"])
    assert pledged.status_code == 302

    pledge_id = pledge_id_from(pledged)
    coordinator = login(people.coordinator, app.test_client())
    detail = page(coordinator.get(f"/pledges/{pledge_id}"))
    token = detail.xpath(f"//form[@action='/pledges/{pledge_id}/confirm']//input[@name='confirm-{pledge_id}-csrf_token']/@value")
    assert len(token) == 1
    confirmed = coordinator.post(f"/pledges/{pledge_id}/confirm", data={f"confirm-{pledge_id}-csrf_token": token[0]})
    assert confirmed.status_code == 302
    assert db.session.get(Pledge, pledge_id).state == "confirmed"


# One pledge


@pytest.fixture
def pledge(db, people, need):
    """A pledge of 400.00 EUR by the first donor."""
    pledge, _ = create_pledge(people.donor, need.id, 40_000, "EUR")
    db.session.commit()
    return pledge


def test_pledge_visible_to_donor_owner_coordinator(app, client, login, people, pledge):
    for role in ("donor", "owner", "coordinator"):
        viewer = login(getattr(people, role), app.test_client())
        assert viewer.get(f"/pledges/{pledge.id}").status_code == 200, role


def test_other_donor_gets_not_found(client, login, people, pledge, make_user):
    login(people.other_donor)
    assert client.get(f"/pledges/{pledge.id}").status_code == 404

    other_owner = make_user("owner", organisation="Ministry of Posts, Ghana")
    login(other_owner)
    assert client.get(f"/pledges/{pledge.id}").status_code == 404


def test_pledge_page_needs_login(client, pledge):
    response = client.get(f"/pledges/{pledge.id}")

    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


def test_donor_cannot_confirm(client, login, people, pledge, db):
    login(people.donor)

    response = client.post(f"/pledges/{pledge.id}/confirm", data={})

    assert response.status_code == 403
    db.session.refresh(pledge)
    assert pledge.state == "pledged"


def test_donor_sees_no_action_forms(client, login, people, pledge):
    login(people.donor)

    document = page(client.get(f"/pledges/{pledge.id}"))

    assert not document.xpath("//form[contains(@action, '/confirm')]")


def percent_on_project_page(client, project_id) -> str:
    return page(client.get(f"/projects/{project_id}")).xpath("//*[@class='progress-text']/text()")[0]


def test_coordinator_confirms_and_progress_moves(app, client, login, people, need, db):
    project_id = need.project_id
    login(people.donor)
    assert percent_on_project_page(client, project_id) == "0%"

    post_pledge(client, need.id, "400.00")
    assert percent_on_project_page(client, project_id) == "40%"

    pledge = db.session.scalar(select(Pledge))
    coordinator = login(people.coordinator, app.test_client())
    form = page(coordinator.get(f"/pledges/{pledge.id}"))
    assert form.xpath(f"//form[@action='/pledges/{pledge.id}/confirm']")
    response = coordinator.post(f"/pledges/{pledge.id}/confirm", data={f"confirm-{pledge.id}-return_to": "detail"})

    assert response.status_code == 302
    assert response.headers["Location"] == f"/pledges/{pledge.id}"
    db.session.refresh(pledge)
    assert pledge.state == "confirmed"
    assert need_totals(need.id)["confirmed"] == 40_000
    confirmed = page(client.get(f"/projects/{project_id}")).xpath("//dt[text()='Confirmed']/following-sibling::dd/text()")
    assert confirmed == ["€400.00"]


def test_ledger_visible(client, login, people, pledge, db):
    login(people.coordinator)
    client.post(f"/pledges/{pledge.id}/confirm", data={})
    client.post(f"/pledges/{pledge.id}/disburse", data={f"disburse-{pledge.id}-amount": "100.00"})

    document = page(client.get(f"/pledges/{pledge.id}"))

    rows = [[" ".join(cell.text_content().split()) for cell in row.xpath("td")] for row in document.xpath("//table//tbody/tr")]
    assert [row[2:5] for row in rows] == [
        ["", "Pledged", "€400.00"],
        ["Pledged", "Confirmed", "€400.00"],
        ["Confirmed", "Partly disbursed", "€100.00"],
    ]
    assert rows[0][1] == people.donor.name
    assert rows[1][1] == people.coordinator.name
    assert document.xpath("//*[@class='progress-text']/text()") == ["25%"]


def test_cancel_requires_reason(client, login, people, pledge, db):
    login(people.coordinator)

    response = client.post(f"/pledges/{pledge.id}/cancel", data={f"cancel-{pledge.id}-reason": "  "})

    assert response.status_code == 422
    assert page(response).xpath(f"//*[@id='cancel-{pledge.id}-reason-error']/text()") == ["Reason is required."]
    db.session.refresh(pledge)
    assert pledge.state == "pledged"


def test_cancel_releases_amount(client, login, people, pledge, db):
    login(people.coordinator)

    response = client.post(
        f"/pledges/{pledge.id}/cancel",
        data={f"cancel-{pledge.id}-reason": "The board did not approve", f"cancel-{pledge.id}-return_to": "review"},
    )

    assert response.status_code == 302
    assert response.headers["Location"] == "/pledges/review"
    db.session.refresh(pledge)
    assert pledge.state == "cancelled"
    assert db.session.get(FundingNeed, pledge.need_id).pledged_minor == 0
    assert "The board did not approve" in text_of(client.get(f"/pledges/{pledge.id}"))


@pytest.mark.parametrize(
    "amount, status, message",
    [
        ("abc", 422, "is not a number"),
        ("0", 422, "must be greater than zero"),
        ("400.01", 409, "More than the amount not yet disbursed."),
    ],
)
def test_bad_disbursement_rejected(client, login, people, pledge, db, amount, status, message):
    login(people.coordinator)
    client.post(f"/pledges/{pledge.id}/confirm", data={})

    response = client.post(f"/pledges/{pledge.id}/disburse", data={f"disburse-{pledge.id}-amount": amount})

    assert response.status_code == status
    document = page(response)
    errors = document.xpath(f"//*[@id='disburse-{pledge.id}-amount-error']/text()")
    assert len(errors) == 1
    assert message in errors[0]
    assert document.xpath(f"//input[@name='disburse-{pledge.id}-amount']/@value") == [amount]
    db.session.refresh(pledge)
    assert (pledge.state, pledge.disbursed_minor) == ("confirmed", 0)


def test_forbidden_transition_conflict(client, login, people, pledge, db):
    login(people.coordinator)

    response = client.post(f"/pledges/{pledge.id}/disburse", data={f"disburse-{pledge.id}-amount": "10.00"})

    assert response.status_code == 409
    assert "Cannot disburse a pledge that is pledged." in text_of(response)
    db.session.refresh(pledge)
    assert pledge.state == "pledged"
    assert db.session.scalar(select(func.count()).select_from(PledgeEvent)) == 1


def test_partial_then_full_disbursement(client, login, people, pledge, db):
    login(people.coordinator)
    client.post(f"/pledges/{pledge.id}/confirm", data={})

    client.post(f"/pledges/{pledge.id}/disburse", data={f"disburse-{pledge.id}-amount": "150.00"})
    db.session.refresh(pledge)
    assert (pledge.state, pledge.disbursed_minor) == ("partly_disbursed", 15_000)
    prefilled = page(client.get(f"/pledges/{pledge.id}")).xpath(f"//input[@name='disburse-{pledge.id}-amount']/@value")
    assert prefilled == ["250.00"]

    client.post(f"/pledges/{pledge.id}/disburse", data={f"disburse-{pledge.id}-amount": "250.00"})
    db.session.refresh(pledge)
    assert (pledge.state, pledge.disbursed_minor) == ("disbursed", 40_000)


# Lists


def test_mine_lists_own_pledges(app, client, login, people, need, db):
    create_pledge(people.donor, need.id, 40_000, "EUR")
    create_pledge(people.other_donor, need.id, 10_000, "EUR")
    db.session.commit()
    login(people.donor)

    response = client.get("/pledges/mine")

    assert response.status_code == 200
    text = text_of(response)
    assert "€400.00" in text
    assert "€100.00" not in text
    assert login(people.owner, app.test_client()).get("/pledges/mine").status_code == 403


def test_review_queues(app, client, login, people, need, db):
    waiting, _ = create_pledge(people.donor, need.id, 40_000, "EUR")
    confirmed, _ = create_pledge(people.other_donor, need.id, 10_000, "EUR")
    db.session.commit()
    login(people.coordinator)
    client.post(f"/pledges/{confirmed.id}/confirm", data={})

    response = client.get("/pledges/review")

    assert response.status_code == 200
    document = page(response)
    first_queue, second_queue = document.xpath("//section//table")
    assert first_queue.xpath(f".//a[@href='/pledges/{waiting.id}']")
    assert not first_queue.xpath(f".//a[@href='/pledges/{confirmed.id}']")
    assert second_queue.xpath(f".//a[@href='/pledges/{confirmed.id}']")
    assert first_queue.xpath(f".//form[@action='/pledges/{waiting.id}/confirm']")
    assert first_queue.xpath(f".//form[@action='/pledges/{waiting.id}/cancel']//label[@for='cancel-{waiting.id}-reason']")
    assert document.xpath(f"//input[@name='confirm-{waiting.id}-return_to']/@value") == ["review"]
    assert login(people.donor, app.test_client()).get("/pledges/review").status_code == 403


def test_withdrawn_project_hides_pledge_form(client, login, people, need, db):
    withdraw_project(people.owner, need.project)
    db.session.commit()
    login(people.donor)

    assert client.get(f"/needs/{need.id}/pledge").status_code == 404
