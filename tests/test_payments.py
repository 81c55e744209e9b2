"""Tests of card payments: Stripe amounts, Checkout sessions, webhooks in any order, refunds.

The stripe package talks to the local fake in tests/stripe_fake.py; webhook payloads are
signed with the test secret the way Stripe signs them. Nothing leaves 127.0.0.1.
"""

import json
import os
import threading
import time
from decimal import Decimal

import pytest
from flask import g, request_started
from lxml import html
from sqlalchemy import func, select

from financing.accounts.services import create_token
from financing.core.errors import Conflict, ValidationFailed
from financing.extensions import db as _db
from financing.money import minor_units
from financing.payments.gateway import PaymentGatewayError, from_stripe_amount, to_stripe_amount
from financing.payments.models import StripeEvent
from financing.payments.services import create_card_pledge, refund_pledge
from financing.pledges.models import ExchangeRate, Pledge, PledgeEvent
from financing.pledges.services import today_utc
from financing.projects.models import FundingNeed
from financing.projects.services import NeedInput, ProjectInput, create_project, publish_project, submit_project
from stripe_fake import StripeFake, charge, closed_port, dispute, event, payment_intent, sign

ON_POSTGRES = os.environ.get("TEST_DATABASE_URL", "").startswith("postgresql")
SECRET = "whsec_test"
SUCCESS_URL = "http://localhost/pledges/checkout/return?pledge={PLEDGE_ID}&result=paid"
CANCEL_URL = "http://localhost/pledges/checkout/return?pledge={PLEDGE_ID}&result=cancelled"
WEBHOOK = "/payments/stripe/webhook"


# Fixtures and helpers


@pytest.fixture(autouse=True)
def fresh_globals_per_request(app):
    """Start each request with an empty `g`, as outside the tests (see test_pages_pledges)."""

    def clear_globals(sender, **extra):
        for name in list(g):
            g.pop(name)

    request_started.connect(clear_globals, app)
    yield
    request_started.disconnect(clear_globals, app)


@pytest.fixture(scope="module")
def stripe_server():
    server = StripeFake().start()
    yield server
    server.stop()


def stripe_config(base: str) -> dict:
    return {
        "STRIPE_SECRET_KEY": "sk_test_fake", "STRIPE_WEBHOOK_SECRET": SECRET, "STRIPE_API_BASE": base,
        "STRIPE_MAX_NETWORK_RETRIES": 0, "STRIPE_TIMEOUT_SECONDS": 5,
    }


@pytest.fixture
def fake(app, stripe_server, monkeypatch) -> StripeFake:
    """Switch card payments on for this test, against a freshly reset fake."""
    stripe_server.reset()
    for name, value in stripe_config(stripe_server.base).items():
        monkeypatch.setitem(app.config, name, value)
    return stripe_server


@pytest.fixture
def people(make_user):
    class People:
        owner = make_user("owner", organisation="Ministry of ICT, Kenya")
        donor = make_user("donor", organisation="European Commission")
        other_donor = make_user("donor", organisation="World Bank")
        coordinator = make_user("coordinator", organisation=None)

    return People


def publish_need(db, people, goal_minor: int = 100_000, currency: str = "EUR") -> FundingNeed:
    data = ProjectInput(
        title="Rural broadband for Kenya", summary="Wireless access in rural counties.",
        countries=["KE"], themes=["broadband"],
        needs=[NeedInput(title="Access points", goal_minor=goal_minor, currency=currency)],
    )
    project = create_project(people.owner, data)
    submit_project(people.owner, project)
    publish_project(people.coordinator, project)
    db.session.commit()
    return project.needs[0]


@pytest.fixture
def need(db, people) -> FundingNeed:
    """A published need of 1,000.00 EUR."""
    return publish_need(db, people)


def card_pledge(db, user, need, amount_minor: int = 25_00, currency: str | None = None, key: str | None = None):
    pledge, url, created = create_card_pledge(
        user, need.id, amount_minor, currency or need.currency, key or f"key-{time.monotonic_ns()}", SUCCESS_URL, CANCEL_URL,
    )
    db.session.commit()
    return pledge, url, created


def fresh(db, model, id_):
    db.session.expire_all()
    return db.session.get(model, id_)


def pledged(db, need) -> int:
    return fresh(db, FundingNeed, need.id).pledged_minor


def ledger(db, pledge) -> list[tuple[str | None, str, int]]:
    db.session.expire_all()
    rows = db.session.scalars(select(PledgeEvent).where(PledgeEvent.pledge_id == pledge.id).order_by(PledgeEvent.id))
    return [(row.from_state, row.to_state, row.amount_minor) for row in rows]


def stored_events(db) -> int:
    return db.session.scalar(select(func.count()).select_from(StripeEvent))


def post_event(client, evt: dict, secret: str = SECRET, timestamp: int | None = None, signature: str | None = None):
    payload = json.dumps(evt)
    header = signature if signature is not None else sign(payload, secret, timestamp)
    return client.post(WEBHOOK, data=payload, headers={"Stripe-Signature": header, "Content-Type": "application/json"})


def delivered(client, evt: dict) -> str:
    """Deliver a signed event, check the 200, and return its outcome."""
    response = post_event(client, evt)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["outcome"]


def paid_event(fake, pledge) -> dict:
    """Pay the pledge's session at the fake and return the checkout.session.completed event."""
    return event("checkout.session.completed", fake.complete_session(pledge.payment_session_id))


def intent_of(db, pledge) -> str:
    return fresh(db, Pledge, pledge.id).payment_intent_id


def refunded_event(db, pledge, amount_refunded: int, amount: int | None = None) -> dict:
    stripe_amount = amount if amount is not None else to_stripe_amount(pledge.amount_minor, pledge.currency)
    obj = charge(intent_of(db, pledge), stripe_amount, pledge.currency.lower(), amount_refunded, pledge.id)
    return event("charge.refunded", obj)


def page_text(response) -> str:
    return " ".join(html.fromstring(response.get_data(as_text=True)).text_content().split())


def login(client, user):
    with client.session_transaction() as session:
        session["_user_id"] = str(user.id)
        session["_fresh"] = True
    return client


def bearer(db, user) -> dict[str, str]:
    _, token = create_token(user, name="payments tests")
    db.session.commit()
    return {"Authorization": f"Bearer {token}"}


# Stripe's amount unit


# (currency, ISO 4217 exponent, amount in ISO minor units, amount in Stripe's unit)
AMOUNT_TABLE = [
    ("EUR", 2, 25_50, 25_50),
    ("USD", 2, 1, 1),
    ("HUF", 2, 1_050_25, 1_050_25),
    ("TWD", 2, 99, 99),
    ("JPY", 0, 5_000, 5_000),
    ("XOF", 0, 65_000, 65_000),
    *[(code, 0, 1_234, 1_234) for code in ("BIF", "CLP", "DJF", "GNF", "KMF", "KRW", "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XPF")],
    ("MGA", 2, 12_345_00, 12_345),
    ("BHD", 3, 1_250, 1_250),
    *[(code, 3, 10_000, 10_000) for code in ("JOD", "KWD", "OMR", "TND")],
    ("ISK", 0, 5_000, 500_000),
]


@pytest.mark.parametrize("currency, exponent, minor, stripe_amount", AMOUNT_TABLE)
def test_stripe_amount_table(app, currency, exponent, minor, stripe_amount):
    assert minor_units(currency) == exponent
    assert to_stripe_amount(minor, currency) == stripe_amount
    assert from_stripe_amount(stripe_amount, currency) == minor
    assert from_stripe_amount(stripe_amount, currency.lower()) == minor


@pytest.mark.parametrize("currency, minor, amount_label, words", [
    ("BHD", 1_255, "1.255 BHD", "steps of 0.010"),
    ("KWD", 1, "0.001 KWD", "steps of 0.010"),
    ("MGA", 12_345, "123.45 MGA", "whole units of MGA"),
    ("EUR", 100_000_000, "1000000.00 EUR", "at most 999999.99 EUR"),
    ("JPY", 100_000_000, "100000000 JPY", "at most 99999999 JPY"),
])
def test_stripe_amount_rejects_inexact(app, currency, minor, amount_label, words):
    with pytest.raises(ValidationFailed) as raised:
        to_stripe_amount(minor, currency)

    assert amount_label in raised.value.message
    assert words in raised.value.message
    assert amount_label in raised.value.fields["amount"]


def test_stripe_amount_rejects_iqd(app):
    with pytest.raises(ValidationFailed) as raised:
        to_stripe_amount(1_000, "IQD")

    assert "Card payments in IQD are not available" in raised.value.fields["amount"]


def test_from_stripe_amount_rejects_fraction(app):
    with pytest.raises(ValueError):
        from_stripe_amount(150, "ISK")


# Creating card pledges


@pytest.mark.parametrize("currency, amount_minor, unit_amount", [
    ("EUR", 25_00, 25_00),
    ("JPY", 5_000, 5_000),
    ("XOF", 65_000, 65_000),
    ("BHD", 1_250, 1_250),
    ("ISK", 5_000, 500_000),
])
def test_card_pledge_creates_session(db, people, fake, currency, amount_minor, unit_amount):
    need = publish_need(db, people, goal_minor=100 * amount_minor, currency=currency)

    pledge, url, created = card_pledge(db, people.donor, need, amount_minor, key="first")

    assert created
    requests = fake.requests_to("POST", "/v1/checkout/sessions")
    assert len(requests) == 1
    form = requests[0].form
    item = form["line_items"][0]
    assert item["price_data"]["unit_amount"] == str(unit_amount)
    assert item["price_data"]["currency"] == currency.lower()
    assert item["quantity"] == "1"
    assert item["price_data"]["product_data"]["name"] == "Rural broadband for Kenya: Access points"
    assert form["mode"] == "payment"
    assert form["client_reference_id"] == str(pledge.id)
    assert form["metadata"]["pledge_id"] == str(pledge.id)
    assert form["payment_intent_data"]["metadata"]["pledge_id"] == str(pledge.id)
    assert form["success_url"] == SUCCESS_URL.replace("{PLEDGE_ID}", str(pledge.id))
    assert form["cancel_url"] == CANCEL_URL.replace("{PLEDGE_ID}", str(pledge.id))
    assert requests[0].headers["Idempotency-Key"].startswith(f"checkout-pledge-{pledge.id}-")
    stored = fresh(db, Pledge, pledge.id)
    assert stored.state == "pending_payment"
    assert stored.kind == "card"
    assert stored.payment_session_id.startswith("cs_test_")
    assert url == fake.session(stored.payment_session_id)["url"]


def test_pending_pledge_reserves_goal(db, people, fake, need):
    pledge, _, _ = card_pledge(db, people.donor, need, 400_00)

    assert pledged(db, need) == 400_00
    assert ledger(db, pledge) == [(None, "pending_payment", 400_00)]
    with pytest.raises(Conflict):
        card_pledge(db, people.other_donor, need, 700_00)
    assert pledged(db, need) == 400_00


def test_repeated_key_returns_first_session(db, people, fake, need):
    first, first_url, first_created = card_pledge(db, people.donor, need, 25_00, key="same")

    again, again_url, again_created = card_pledge(db, people.donor, need, 25_00, key="same")

    assert first_created and not again_created
    assert again.id == first.id
    assert again_url == first_url
    assert len(fake.requests_to("POST", "/v1/checkout/sessions")) == 1
    assert db.session.scalar(select(func.count()).select_from(Pledge)) == 1
    assert pledged(db, need) == 25_00


def test_repeated_key_after_payment_has_no_url(db, client, people, fake, need):
    pledge, _, _ = card_pledge(db, people.donor, need, key="same")
    delivered(client, paid_event(fake, pledge))

    again, url, created = card_pledge(db, people.donor, need, key="same")

    assert (again.id, url, created) == (pledge.id, None, False)


def test_card_pledge_rejects_inexact_amount(db, people, fake):
    need = publish_need(db, people, goal_minor=100_000, currency="BHD")

    with pytest.raises(ValidationFailed) as raised:
        card_pledge(db, people.donor, need, 1_255)

    assert "1.255 BHD" in raised.value.fields["amount"]
    assert db.session.scalar(select(func.count()).select_from(Pledge)) == 0
    assert pledged(db, need) == 0
    assert fake.requests_to("POST", "/v1/checkout/sessions") == []


def test_card_pledge_in_other_currency(db, people, fake, need):
    db.session.add(ExchangeRate(base="USD", quote="EUR", rate=Decimal("0.5"), valid_from=today_utc()))
    db.session.commit()

    pledge, _, _ = card_pledge(db, people.donor, need, 100_00, currency="USD")

    form = fake.requests_to("POST", "/v1/checkout/sessions")[0].form
    assert form["line_items"][0]["price_data"]["currency"] == "usd"
    assert form["line_items"][0]["price_data"]["unit_amount"] == "10000"
    assert pledge.need_amount_minor == 50_00
    assert pledged(db, need) == 50_00


# Stripe failing


def test_stripe_error_cancels_pledge(db, people, fake, need):
    fake.fail(500, "Stripe is having a bad day.")

    with pytest.raises(PaymentGatewayError) as raised:
        card_pledge(db, people.donor, need, 25_00)

    assert raised.value.status == 502
    pledge = db.session.scalars(select(Pledge)).one()
    assert fresh(db, Pledge, pledge.id).state == "cancelled"
    assert pledged(db, need) == 0
    reasons = [row.reason for row in fresh(db, Pledge, pledge.id).events]
    assert "Stripe checkout failed: Stripe answered 500: Stripe is having a bad day." in reasons[-1]


def test_stripe_down_answers_502_through_api(app, db, client, people, fake, need, monkeypatch):
    monkeypatch.setitem(app.config, "STRIPE_API_BASE", f"http://127.0.0.1:{closed_port()}")
    headers = {**bearer(db, people.donor), "Idempotency-Key": "down-1"}

    response = client.post("/api/v1/pledges", json={"need_id": need.id, "amount": "25.00", "currency": "EUR", "kind": "card"}, headers=headers)

    assert response.status_code == 502, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"]["code"] == "payment_gateway_error"
    assert "Stripe could not be reached" in body["error"]["message"]
    pledge = db.session.scalars(select(Pledge)).one()
    assert fresh(db, Pledge, pledge.id).state == "cancelled"
    assert pledged(db, need) == 0


# Card pledges through the pledge page


PAGE_KEY = "0b6c1a4e-3f2d-4c5b-9a8e-7d6f5e4c3b2a"


def post_card_form(client, need, amount="25.00"):
    form = {"amount": amount, "currency": need.currency, "kind": "card", "idempotency_key": PAGE_KEY}
    return client.post(f"/needs/{need.id}/pledge", data=form)


def test_page_card_pledge_redirects_to_checkout(db, client, people, fake, need):
    login(client, people.donor)

    response = post_card_form(client, need)

    assert response.status_code == 303
    pledge = db.session.scalars(select(Pledge)).one()
    assert response.headers["Location"] == fake.session(pledge.payment_session_id)["url"]
    assert pledge.state == "pending_payment"
    assert pledged(db, need) == 25_00


def test_page_card_pledge_when_stripe_down(app, db, client, people, fake, need, monkeypatch):
    monkeypatch.setitem(app.config, "STRIPE_API_BASE", f"http://127.0.0.1:{closed_port()}")
    login(client, people.donor)

    response = post_card_form(client, need)

    assert response.status_code == 502
    assert "Stripe could not be reached" in page_text(response)
    assert html.fromstring(response.get_data(as_text=True)).xpath("//input[@name='amount']/@value") == ["25.00"]
    pledge = db.session.scalars(select(Pledge)).one()
    assert fresh(db, Pledge, pledge.id).state == "cancelled"
    assert pledged(db, need) == 0


# CSRF


def test_webhook_exempt_from_csrf(app, db, client, people, fake, need, monkeypatch):
    monkeypatch.setitem(app.config, "WTF_CSRF_ENABLED", True)
    pledge, _, _ = card_pledge(db, people.donor, need)

    outcome = delivered(client, paid_event(fake, pledge))

    assert outcome == f"confirmed pledge {pledge.id}"


def test_refund_form_needs_csrf_token(app, db, client, people, fake, need, monkeypatch):
    pledge, _, _ = card_pledge(db, people.donor, need)
    delivered(client, paid_event(fake, pledge))
    monkeypatch.setitem(app.config, "WTF_CSRF_ENABLED", True)
    login(client, people.coordinator)

    without = client.post(f"/pledges/{pledge.id}/refund", data={"amount": "5.00"})
    detail = html.fromstring(client.get(f"/pledges/{pledge.id}").get_data(as_text=True))
    token = detail.xpath("//form[contains(@action, '/refund')]//input[@name='csrf_token']/@value")
    with_token = client.post(f"/pledges/{pledge.id}/refund", data={"amount": "5.00", "csrf_token": token[0]})

    assert without.status_code == 400
    assert len(token) == 1
    assert with_token.status_code == 302
    assert len(fake.requests_to("POST", "/v1/refunds")) == 1


# Switched off


def test_switched_off_without_keys(app, db, people, need):
    assert not app.config["STRIPE_SECRET_KEY"]

    with pytest.raises(Conflict) as raised:
        card_pledge(db, people.donor, need)

    assert raised.value.message == "Card payments are switched off on this platform."
    assert db.session.scalar(select(func.count()).select_from(Pledge)) == 0


def test_switched_off_pledge_form_says_so(client, people, need):
    login(client, people.donor)

    response = client.get(f"/needs/{need.id}/pledge")

    assert "Card payments are switched off" in page_text(response)


def test_switched_off_api_card_pledge(db, client, people, need):
    headers = {**bearer(db, people.donor), "Idempotency-Key": "off-1"}

    response = client.post("/api/v1/pledges", json={"need_id": need.id, "amount": "25.00", "currency": "EUR", "kind": "card"}, headers=headers)

    assert response.status_code == 422
    body = response.get_json()
    assert body["error"]["message"] == "Card payments are switched off on this platform."
    assert "kind" in body["error"]["fields"]
    assert db.session.scalar(select(func.count()).select_from(Pledge)) == 0


def test_switched_off_webhook_unavailable(client):
    response = client.post(WEBHOOK, data="{}", headers={"Stripe-Signature": "t=1,v1=00"})

    assert response.status_code == 503


def test_tests_cannot_reach_stripe(app, db, people, need, monkeypatch):
    monkeypatch.setitem(app.config, "STRIPE_SECRET_KEY", "sk_test_fake")

    with pytest.raises(PaymentGatewayError) as raised:
        card_pledge(db, people.donor, need)

    assert "not a loopback address" in raised.value.message


# API card pledges


def test_api_card_pledge_returns_checkout_url(db, client, people, fake, need):
    headers = {**bearer(db, people.donor), "Idempotency-Key": "api-1"}
    body = {"need_id": need.id, "amount": "25.00", "currency": "EUR", "kind": "card"}

    first = client.post("/api/v1/pledges", json=body, headers=headers)
    again = client.post("/api/v1/pledges", json=body, headers=headers)
    other = client.post("/api/v1/pledges", json={**body, "amount": "30.00"}, headers=headers)

    assert first.status_code == 201, first.get_data(as_text=True)
    created = first.get_json()
    assert created["state"] == "pending_payment"
    assert created["kind"] == "card"
    assert created["checkout_url"].startswith(fake.base + "/c/pay/cs_test_")
    assert first.headers["Location"].endswith(f"/api/v1/pledges/{created['id']}")
    assert again.status_code == 200
    assert again.get_json()["checkout_url"] == created["checkout_url"]
    assert other.status_code == 409
    assert len(fake.requests_to("POST", "/v1/checkout/sessions")) == 1
    success_url = fake.requests_to("POST", "/v1/checkout/sessions")[0].form["success_url"]
    assert success_url == f"http://localhost/pledges/checkout/return?pledge={created['id']}&result=paid"


def test_api_card_pledge_inexact_amount(db, client, people, fake):
    need = publish_need(db, people, goal_minor=100_000, currency="BHD")
    headers = {**bearer(db, people.donor), "Idempotency-Key": "api-bhd"}

    response = client.post("/api/v1/pledges", json={"need_id": need.id, "amount": "1.255", "currency": "BHD", "kind": "card"}, headers=headers)

    assert response.status_code == 422
    assert "1.255 BHD" in response.get_json()["error"]["fields"]["amount"]


def test_openapi_lists_refund(client):
    spec = client.get("/api/openapi.json").get_json()

    assert "post" in spec["paths"]["/api/v1/pledges/{pledge_id}/refund"]
    assert "checkout_url" in spec["components"]["schemas"]["CardPledge"]["properties"]


# Webhook: signatures and storage


def test_completed_confirms_once(db, client, people, fake, need):
    pledge, _, _ = card_pledge(db, people.donor, need, 25_00)
    completed = paid_event(fake, pledge)

    first = delivered(client, completed)
    second = post_event(client, completed)

    assert first == f"confirmed pledge {pledge.id}"
    assert second.status_code == 200
    assert second.get_json()["outcome"] == "already processed"
    stored = fresh(db, Pledge, pledge.id)
    assert stored.state == "confirmed"
    assert stored.payment_intent_id.startswith("pi_test_")
    assert ledger(db, pledge) == [(None, "pending_payment", 25_00), ("pending_payment", "confirmed", 25_00)]
    assert pledged(db, need) == 25_00
    record = db.session.get(StripeEvent, completed["id"])
    assert (record.type, record.pledge_id, record.outcome) == ("checkout.session.completed", pledge.id, first)
    assert stored_events(db) == 1


def test_completed_marks_need_funded(db, client, people, fake, need):
    pledge, _, _ = card_pledge(db, people.donor, need, need.goal_minor)

    delivered(client, paid_event(fake, pledge))

    assert fresh(db, FundingNeed, need.id).status == "funded"


@pytest.mark.parametrize("make_header", [
    lambda payload: sign(payload, "whsec_other"),
    lambda payload: sign(payload, SECRET, int(time.time()) - 600),
    lambda payload: sign(payload + " ", SECRET),
    lambda payload: "",
    lambda payload: "t=abc,v1=zz",
], ids=["wrong secret", "expired timestamp", "changed payload", "empty", "malformed"])
def test_bad_signature_rejected(db, client, people, fake, need, make_header):
    pledge, _, _ = card_pledge(db, people.donor, need)
    payload = json.dumps(paid_event(fake, pledge))

    response = client.post(WEBHOOK, data=payload, headers={"Stripe-Signature": make_header(payload)})

    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_signature"
    assert stored_events(db) == 0
    assert fresh(db, Pledge, pledge.id).state == "pending_payment"


def test_missing_signature_rejected(db, client, fake):
    response = client.post(WEBHOOK, data=json.dumps(event("charge.refunded", {})))

    assert response.status_code == 400
    assert stored_events(db) == 0


def test_signed_non_event_rejected(db, client, fake):
    payload = json.dumps({"hello": "world"})

    response = client.post(WEBHOOK, data=payload, headers={"Stripe-Signature": sign(payload, SECRET)})

    assert response.status_code == 400
    assert stored_events(db) == 0


def test_unknown_type_stored_as_ignored(db, client, fake):
    evt = event("customer.created", {"id": "cus_1", "object": "customer"})

    outcome = delivered(client, evt)

    assert outcome.startswith("ignored")
    assert db.session.get(StripeEvent, evt["id"]).outcome == outcome


def test_event_without_pledge_ignored(db, client, fake):
    outcome = delivered(client, event("checkout.session.completed", {"id": "cs_unknown", "payment_status": "paid"}))

    assert outcome == "ignored: no pledge for session cs_unknown"


def test_session_of_other_pledge_ignored(db, client, people, fake, need):
    """A session that names a pledge which has another session (a lost creation) changes nothing."""
    pledge, _, _ = card_pledge(db, people.donor, need)
    orphan = {"id": "cs_orphan", "payment_status": "paid", "client_reference_id": str(pledge.id), "metadata": {"pledge_id": str(pledge.id)}}

    delivered(client, event("checkout.session.completed", orphan))

    assert fresh(db, Pledge, pledge.id).state == "pending_payment"


# Webhook: expiry and failure


def test_expired_releases_goal(db, client, people, fake, need):
    pledge, _, _ = card_pledge(db, people.donor, need, 300_00)
    session = fake.session(pledge.payment_session_id)

    outcome = delivered(client, event("checkout.session.expired", {**session, "status": "expired"}))

    assert outcome == f"cancelled pledge {pledge.id}"
    assert fresh(db, Pledge, pledge.id).state == "cancelled"
    assert pledged(db, need) == 0
    assert ledger(db, pledge)[-1] == ("pending_payment", "cancelled", 300_00)


def test_payment_failed_cancels_and_expires_session(db, client, people, fake, need):
    pledge, _, _ = card_pledge(db, people.donor, need, 300_00)
    failed = payment_intent("pi_failed_1", 300_00, "eur", pledge.id, "Your card has insufficient funds.")

    outcome = delivered(client, event("payment_intent.payment_failed", failed))

    stored = fresh(db, Pledge, pledge.id)
    assert outcome == f"cancelled pledge {pledge.id}"
    assert stored.state == "cancelled"
    assert stored.payment_intent_id == "pi_failed_1"
    assert "Your card has insufficient funds." in stored.events[-1].reason
    assert pledged(db, need) == 0
    assert fake.session(pledge.payment_session_id)["status"] == "expired"


def test_expired_after_completed_changes_nothing(db, client, people, fake, need):
    pledge, _, _ = card_pledge(db, people.donor, need, 25_00)
    completed = paid_event(fake, pledge)
    expired = event("checkout.session.expired", {**fake.session(pledge.payment_session_id), "status": "expired"})

    delivered(client, completed)
    outcome = delivered(client, expired)

    assert outcome == f"ignored: pledge {pledge.id} is already confirmed"
    assert fresh(db, Pledge, pledge.id).state == "confirmed"
    assert pledged(db, need) == 25_00
    assert len(ledger(db, pledge)) == 2


def test_failed_after_completed_changes_nothing(db, client, people, fake, need):
    pledge, _, _ = card_pledge(db, people.donor, need, 25_00)
    delivered(client, paid_event(fake, pledge))
    failed = payment_intent(intent_of(db, pledge), 25_00, "eur", pledge.id)

    delivered(client, event("payment_intent.payment_failed", failed))

    assert fresh(db, Pledge, pledge.id).state == "confirmed"
    assert pledged(db, need) == 25_00


def test_paid_after_expiry_needs_refund(db, client, people, fake, need):
    pledge, _, _ = card_pledge(db, people.donor, need, 25_00)
    expired = event("checkout.session.expired", {**fake.session(pledge.payment_session_id), "status": "expired"})
    completed = paid_event(fake, pledge)

    delivered(client, expired)
    outcome = delivered(client, completed)

    assert outcome.startswith(f"paid after cancellation: refund needed for pledge {pledge.id}")
    stored = fresh(db, Pledge, pledge.id)
    assert stored.state == "cancelled"
    assert stored.payment_intent_id is not None
    assert pledged(db, need) == 0
    assert len(ledger(db, pledge)) == 2

    login(client, people.coordinator)
    assert "Stripe reported a payment after this pledge was cancelled" in page_text(client.get(f"/pledges/{pledge.id}"))
    response = client.post(f"/pledges/{pledge.id}/refund", data={"amount": ""})
    assert response.status_code == 302
    assert "amount" not in fake.requests_to("POST", "/v1/refunds")[0].form

    delivered(client, refunded_event(db, pledge, 25_00))
    assert fresh(db, Pledge, pledge.id).state == "cancelled"
    assert pledged(db, need) == 0
    assert "Stripe reported a payment after" not in page_text(client.get(f"/pledges/{pledge.id}"))


# Webhook: refunds


def test_partial_then_full_refund(db, client, people, fake, need):
    pledge, _, _ = card_pledge(db, people.donor, need, 25_00)
    delivered(client, paid_event(fake, pledge))
    partial = refunded_event(db, pledge, 10_00)
    full = refunded_event(db, pledge, 25_00)

    delivered(client, partial)
    assert post_event(client, partial).get_json()["outcome"] == "already processed"
    after_partial = fresh(db, Pledge, pledge.id)
    assert (after_partial.state, after_partial.refunded_minor) == ("confirmed", 10_00)
    assert pledged(db, need) == 15_00

    delivered(client, full)
    assert post_event(client, full).get_json()["outcome"] == "already processed"

    stored = fresh(db, Pledge, pledge.id)
    assert stored.state == "refunded"
    assert stored.active_minor == 0
    assert pledged(db, need) == 0
    assert ledger(db, pledge)[2:] == [("confirmed", "confirmed", 10_00), ("confirmed", "refunded", 15_00)]


def test_refund_redelivered_under_new_id_changes_nothing(db, client, people, fake, need):
    """Stripe may send the same cumulative total in two events; only the difference counts."""
    pledge, _, _ = card_pledge(db, people.donor, need, 25_00)
    delivered(client, paid_event(fake, pledge))

    delivered(client, refunded_event(db, pledge, 10_00))
    outcome = delivered(client, refunded_event(db, pledge, 10_00))

    assert outcome.startswith("no change")
    assert fresh(db, Pledge, pledge.id).refunded_minor == 10_00
    assert pledged(db, need) == 15_00


def test_older_refund_total_after_newer_changes_nothing(db, client, people, fake, need):
    pledge, _, _ = card_pledge(db, people.donor, need, 25_00)
    delivered(client, paid_event(fake, pledge))
    older = refunded_event(db, pledge, 5_00)
    newer = refunded_event(db, pledge, 20_00)

    delivered(client, newer)
    delivered(client, older)

    assert fresh(db, Pledge, pledge.id).refunded_minor == 20_00
    assert pledged(db, need) == 5_00


def test_full_refund_then_older_partial(db, client, people, fake, need):
    pledge, _, _ = card_pledge(db, people.donor, need, 25_00)
    delivered(client, paid_event(fake, pledge))
    partial = refunded_event(db, pledge, 10_00)
    full = refunded_event(db, pledge, 25_00)

    delivered(client, full)
    outcome = delivered(client, partial)

    assert outcome == f"already refunded: pledge {pledge.id}"
    assert fresh(db, Pledge, pledge.id).state == "refunded"
    assert pledged(db, need) == 0


def test_refund_before_completed(db, client, people, fake, need):
    pledge, _, _ = card_pledge(db, people.donor, need, 25_00)
    completed = paid_event(fake, pledge)
    intent = completed["data"]["object"]["payment_intent"]
    refunded = event("charge.refunded", charge(intent, 25_00, "eur", 25_00, pledge.id))

    delivered(client, refunded)
    outcome = delivered(client, completed)

    stored = fresh(db, Pledge, pledge.id)
    assert stored.state == "refunded"
    assert stored.payment_intent_id == intent
    assert outcome == f"already paid: pledge {pledge.id} is refunded"
    assert pledged(db, need) == 0
    assert [row[1] for row in ledger(db, pledge)] == ["pending_payment", "confirmed", "refunded"]


def test_partial_refund_in_other_currency(db, client, people, fake, need):
    db.session.add(ExchangeRate(base="USD", quote="EUR", rate=Decimal("0.5"), valid_from=today_utc()))
    db.session.commit()
    pledge, _, _ = card_pledge(db, people.donor, need, 100_01, currency="USD")
    delivered(client, paid_event(fake, pledge))
    assert pledged(db, need) == 50_01

    delivered(client, refunded_event(db, pledge, 30_00))
    assert fresh(db, Pledge, pledge.id).refunded_minor == 15_00
    delivered(client, refunded_event(db, pledge, 100_01))

    assert fresh(db, Pledge, pledge.id).state == "refunded"
    assert pledged(db, need) == 0


def test_refund_of_disbursed_pledge_needs_attention(db, client, people, fake, need):
    from financing.pledges.services import act

    pledge, _, _ = card_pledge(db, people.donor, need, 25_00)
    delivered(client, paid_event(fake, pledge))
    act(people.coordinator, pledge.id, "disburse", 25_00)
    db.session.commit()

    outcome = delivered(client, refunded_event(db, pledge, 25_00))

    assert outcome.startswith("needs attention: Cannot refund a pledge that is disbursed")
    assert fresh(db, Pledge, pledge.id).state == "disbursed"
    record = db.session.scalars(select(StripeEvent).where(StripeEvent.type == "charge.refunded")).one()
    assert record.pledge_id == pledge.id


# Webhook: disputes


def test_dispute_won(db, client, people, fake, need):
    pledge, _, _ = card_pledge(db, people.donor, need, 25_00)
    delivered(client, paid_event(fake, pledge))
    intent = intent_of(db, pledge)

    delivered(client, event("charge.dispute.created", dispute(intent, 25_00, "eur")))
    assert fresh(db, Pledge, pledge.id).disputed
    login(client, people.donor)
    assert "In dispute" in page_text(client.get(f"/pledges/{pledge.id}"))

    delivered(client, event("charge.dispute.closed", dispute(intent, 25_00, "eur", status="won")))
    stored = fresh(db, Pledge, pledge.id)
    assert (stored.state, stored.disputed) == ("confirmed", False)
    assert pledged(db, need) == 25_00
    assert "In dispute" not in page_text(client.get(f"/pledges/{pledge.id}"))


def test_disputed_pledge_not_refundable(db, client, people, fake, need):
    pledge, _, _ = card_pledge(db, people.donor, need, 25_00)
    delivered(client, paid_event(fake, pledge))
    delivered(client, event("charge.dispute.created", dispute(intent_of(db, pledge), 25_00, "eur")))
    login(client, people.coordinator)

    response = client.post(f"/pledges/{pledge.id}/refund", data={"amount": ""})

    assert response.status_code == 409
    assert "is disputed" in page_text(response)
    assert "Refund by card" not in page_text(client.get(f"/pledges/{pledge.id}"))
    assert fake.requests_to("POST", "/v1/refunds") == []


def test_dispute_lost_releases_goal(db, client, people, fake, need):
    pledge, _, _ = card_pledge(db, people.donor, need, 25_00)
    delivered(client, paid_event(fake, pledge))
    intent = intent_of(db, pledge)

    delivered(client, event("charge.dispute.created", dispute(intent, 25_00, "eur")))
    delivered(client, event("charge.dispute.closed", dispute(intent, 25_00, "eur", status="lost")))

    stored = fresh(db, Pledge, pledge.id)
    assert (stored.state, stored.disputed) == ("refunded", False)
    assert pledged(db, need) == 0


def test_dispute_closed_before_created(db, client, people, fake, need):
    pledge, _, _ = card_pledge(db, people.donor, need, 25_00)
    delivered(client, paid_event(fake, pledge))
    intent = intent_of(db, pledge)

    delivered(client, event("charge.dispute.closed", dispute(intent, 25_00, "eur", status="won")))
    outcome = delivered(client, event("charge.dispute.created", dispute(intent, 25_00, "eur")))

    assert outcome.startswith("ignored")
    stored = fresh(db, Pledge, pledge.id)
    assert (stored.state, stored.disputed) == ("confirmed", False)


def test_dispute_before_completed(db, client, people, fake, need):
    pledge, _, _ = card_pledge(db, people.donor, need, 25_00)
    completed = paid_event(fake, pledge)
    intent = completed["data"]["object"]["payment_intent"]
    # Disputes carry no pledge metadata, so this case needs the payment intent known from
    # the session, as Stripe API versions before 2022-08-01 return it at creation.
    fresh(db, Pledge, pledge.id).payment_intent_id = intent
    db.session.commit()

    delivered(client, event("charge.dispute.created", dispute(intent, 25_00, "eur")))
    delivered(client, completed)

    stored = fresh(db, Pledge, pledge.id)
    assert (stored.state, stored.disputed) == ("confirmed", True)


# Refunds by coordinators


def test_coordinator_refund_calls_stripe(db, client, people, fake, need):
    pledge, _, _ = card_pledge(db, people.donor, need, 25_00)
    delivered(client, paid_event(fake, pledge))
    login(client, people.coordinator)
    assert "Refund by card" in page_text(client.get(f"/pledges/{pledge.id}"))

    response = client.post(f"/pledges/{pledge.id}/refund", data={"amount": "10.50"})

    assert response.status_code == 302
    assert response.headers["Location"].endswith(f"/pledges/{pledge.id}")
    refunds = fake.requests_to("POST", "/v1/refunds")
    assert len(refunds) == 1
    assert refunds[0].form["amount"] == "1050"
    assert refunds[0].form["payment_intent"] == intent_of(db, pledge)
    assert refunds[0].headers["Idempotency-Key"] == f"refund-pledge-{pledge.id}-0-1050"
    assert fresh(db, Pledge, pledge.id).state == "confirmed"
    assert pledged(db, need) == 25_00
    detail_text = page_text(client.get(f"/pledges/{pledge.id}"))
    assert "Refund of €10.50 requested; the pledge changes when Stripe confirms it." in detail_text

    delivered(client, refunded_event(db, pledge, 10_50))
    assert fresh(db, Pledge, pledge.id).refunded_minor == 10_50
    assert pledged(db, need) == 14_50


def test_coordinator_refund_in_zero_decimal_currency(db, client, people, fake):
    need = publish_need(db, people, goal_minor=1_000_000, currency="ISK")
    pledge, _, _ = card_pledge(db, people.donor, need, 5_000)
    delivered(client, paid_event(fake, pledge))

    requested = refund_pledge(people.coordinator, pledge.id, 1_000)

    assert fake.requests_to("POST", "/v1/refunds")[0].form["amount"] == "100000"
    assert (requested.amount_minor, requested.currency) == (1_000, "ISK")


def test_coordinator_refund_rejects_bad_amount(db, client, people, fake, need):
    pledge, _, _ = card_pledge(db, people.donor, need, 25_00)
    delivered(client, paid_event(fake, pledge))
    login(client, people.coordinator)

    too_much = client.post(f"/pledges/{pledge.id}/refund", data={"amount": "30.00"})
    not_a_number = client.post(f"/pledges/{pledge.id}/refund", data={"amount": "ten"})

    assert too_much.status_code == 422
    assert "Refund 30.00 EUR is more than the 25.00 EUR not yet refunded." in page_text(too_much)
    assert html.fromstring(too_much.get_data(as_text=True)).xpath("//input[@name='amount']/@value") == ["30.00"]
    assert not_a_number.status_code == 422
    assert "'ten' is not a number" in page_text(not_a_number)
    assert fake.requests_to("POST", "/v1/refunds") == []


def test_coordinator_refund_when_stripe_fails(db, client, people, fake, need):
    pledge, _, _ = card_pledge(db, people.donor, need, 25_00)
    delivered(client, paid_event(fake, pledge))
    login(client, people.coordinator)
    fake.fail(500, "Refunds are down.", path="/v1/refunds")

    response = client.post(f"/pledges/{pledge.id}/refund", data={"amount": "5.00"})

    assert response.status_code == 502
    assert "Refund failed: Stripe answered 500: Refunds are down." in page_text(response)
    assert fresh(db, Pledge, pledge.id).state == "confirmed"


def test_refund_of_pending_pledge_rejected(db, client, people, fake, need):
    pledge, _, _ = card_pledge(db, people.donor, need, 25_00)
    login(client, people.coordinator)

    response = client.post(f"/pledges/{pledge.id}/refund", data={"amount": ""})

    assert response.status_code == 409
    assert fake.requests_to("POST", "/v1/refunds") == []


@pytest.mark.parametrize("role", ["donor", "owner"])
def test_only_coordinators_refund(db, client, people, fake, need, role):
    pledge, _, _ = card_pledge(db, people.donor, need, 25_00)
    delivered(client, paid_event(fake, pledge))
    login(client, getattr(people, role))

    page = client.post(f"/pledges/{pledge.id}/refund", data={"amount": "5.00"})
    api = client.post(f"/api/v1/pledges/{pledge.id}/refund", json={"amount": "5.00"}, headers=bearer(db, getattr(people, role)))

    assert page.status_code == 403
    assert api.status_code == 403
    assert "Refund by card" not in page_text(client.get(f"/pledges/{pledge.id}"))
    assert fake.requests_to("POST", "/v1/refunds") == []


def test_api_refund(db, client, people, fake, need):
    pledge, _, _ = card_pledge(db, people.donor, need, 25_00)
    delivered(client, paid_event(fake, pledge))
    headers = bearer(db, people.coordinator)

    response = client.post(f"/api/v1/pledges/{pledge.id}/refund", json={"amount": "7.25", "currency": "EUR"}, headers=headers)
    wrong_currency = client.post(f"/api/v1/pledges/{pledge.id}/refund", json={"amount": "1.00", "currency": "USD"}, headers=headers)
    whole = client.post(f"/api/v1/pledges/{pledge.id}/refund", headers=headers)

    assert response.status_code == 202, response.get_data(as_text=True)
    body = response.get_json()
    assert body["amount"] == {"amount": "7.25", "currency": "EUR"}
    assert body["status"] == "succeeded"
    assert body["pledge"]["state"] == "confirmed"
    assert wrong_currency.status_code == 422
    assert whole.status_code == 202
    assert whole.get_json()["amount"] == {"amount": "17.75", "currency": "EUR"}
    forms = [request.form for request in fake.requests_to("POST", "/v1/refunds")]
    assert forms[0]["amount"] == "725"
    assert "amount" not in forms[1]


def test_api_refund_of_commitment_conflicts(db, client, people, fake, need):
    from financing.pledges.services import create_pledge

    pledge, _ = create_pledge(people.donor, need.id, 25_00, "EUR", "commitment", "c-1")
    db.session.commit()

    response = client.post(f"/api/v1/pledges/{pledge.id}/refund", json={}, headers=bearer(db, people.coordinator))

    assert response.status_code == 409


# Return page


def test_checkout_return_page(db, client, people, fake, need):
    pledge, url, _ = card_pledge(db, people.donor, need, 25_00)
    login(client, people.donor)

    cancelled = client.get(f"/pledges/checkout/return?pledge={pledge.id}&result=cancelled")
    waiting = client.get(f"/pledges/checkout/return?pledge={pledge.id}&result=paid")
    delivered(client, paid_event(fake, pledge))
    done = client.get(f"/pledges/checkout/return?pledge={pledge.id}&result=paid")

    assert cancelled.status_code == 200
    assert "You left the payment page without paying" in page_text(cancelled)
    assert html.fromstring(cancelled.get_data(as_text=True)).xpath("//a[text()='Return to the payment page']/@href") == [url]
    assert "Stripe is confirming your payment" in page_text(waiting)
    assert "Stripe confirmed your payment" in page_text(done)


def test_checkout_return_hides_other_donors_pledge(db, client, people, fake, need):
    pledge, _, _ = card_pledge(db, people.donor, need, 25_00)
    login(client, people.other_donor)

    response = client.get(f"/pledges/checkout/return?pledge={pledge.id}&result=paid")

    assert response.status_code == 404


# Concurrent redelivery


@pytest.mark.skipif(not ON_POSTGRES, reason="SQLite serialises writers; concurrent delivery needs PostgreSQL")
def test_concurrent_redelivery_applies_once(db, people, fake, need):
    from financing import create_app
    from financing.config import TestConfig
    from live_server import live_server

    pledge, _, _ = card_pledge(db, people.donor, need, 25_00)
    completed = paid_event(fake, pledge)
    pledge_id = pledge.id
    served = create_app(TestConfig, **stripe_config(fake.base))
    payload = json.dumps(completed).encode()
    header = sign(payload.decode(), SECRET)
    barrier = threading.Barrier(8)
    statuses = []

    with live_server(served) as server:
        def deliver():
            barrier.wait()
            response = server.request("POST", WEBHOOK, payload, {"Stripe-Signature": header, "Content-Type": "application/json"})
            statuses.append((response.status, response.body["outcome"]))

        threads = [threading.Thread(target=deliver) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)

    with served.app_context():
        _db.engine.dispose()
    assert [status for status, _ in statuses] == [200] * 8
    assert sorted(outcome for _, outcome in statuses).count("already processed") == 7
    assert [row[1] for row in ledger(db, db.session.get(Pledge, pledge_id))] == ["pending_payment", "confirmed"]
    assert stored_events(db) == 1
