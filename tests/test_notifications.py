"""Notifications: outbox and in-app rows written with the event, SMTP delivery with retries, preferences, locale, unread counts."""

import logging
import re
import socket
from datetime import timedelta
from email import message_from_bytes
from email.policy import default as default_policy

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from financing import jobs
from financing.core.time import utcnow
from financing.matching.models import Match
from financing.matching.services import accept_match
from financing.money import format_money
from financing.notifications import delivery
from financing.notifications.delivery import MAX_ATTEMPTS, backoff, claim, deliver_due
from financing.notifications.messages import KIND_LABELS, summary
from financing.notifications.models import KINDS, Notification, OutboxMessage
from financing.notifications.services import mark_read, notify, set_preferences, unread_count
from financing.pledges.services import act, create_pledge, transition
from financing.projects.services import NeedInput, ProjectInput, create_project, publish_project, return_project, submit_project

OWNER_ORG = "Ministry of ICT, Kenya"
DONOR_ORG = "European Commission"


# Fixtures


@pytest.fixture
def people(make_user):
    class People:
        owner = make_user("owner", organisation=OWNER_ORG, email="owner@example.org")
        second_owner = make_user("owner", organisation=OWNER_ORG, email="owner2@example.org")
        other_owner = make_user("owner", organisation="Ministry of Posts, Fiji", email="fiji@example.org")
        donor = make_user("donor", organisation=DONOR_ORG, email="donor@example.org")
        coordinator = make_user("coordinator", organisation=None, email="coordinator@example.org")

    return People


def submitted_project(db, owner, title="Rural broadband for Turkana", goal_minor=10_000_000):
    data = ProjectInput(
        title=title, countries=["KE"], themes=["broadband"],
        needs=[NeedInput(title="Towers", goal_minor=goal_minor, currency="EUR")],
    )
    project = create_project(owner, data)
    submit_project(owner, project)
    db.session.commit()
    return project


@pytest.fixture
def published(db, people):
    """A published project whose own notifications are already cleared away."""
    project = submitted_project(db, people.owner)
    publish_project(people.coordinator, project)
    db.session.commit()
    clear_notifications(db)
    return project


def clear_notifications(db) -> None:
    db.session.query(OutboxMessage).delete()
    db.session.query(Notification).delete()
    db.session.commit()
    db.session.info.pop(jobs._READY, None)


def outbox(db, kind=None) -> list[OutboxMessage]:
    query = select(OutboxMessage).order_by(OutboxMessage.user_id, OutboxMessage.id)
    if kind:
        query = query.where(OutboxMessage.kind == kind)
    return list(db.session.scalars(query))


def in_app(db, kind=None) -> list[Notification]:
    query = select(Notification).order_by(Notification.user_id, Notification.id)
    if kind:
        query = query.where(Notification.kind == kind)
    return list(db.session.scalars(query))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Mailbox:
    """An aiosmtpd handler that keeps each received message, or rejects recipients with the reply in `rejection`."""

    def __init__(self):
        self.messages = []
        self.rejection: str | None = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.rejection:
            return self.rejection
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(message_from_bytes(envelope.content, policy=default_policy))
        return "250 Message accepted"


@pytest.fixture
def smtp_server(app, monkeypatch):
    """Start an SMTP server on 127.0.0.1 and point MAIL_URL at it."""
    port = free_port()
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setitem(app.config, "MAIL_URL", f"smtp://127.0.0.1:{port}")
    monkeypatch.setitem(app.config, "SITE_URL", "https://financing.example.org")
    yield mailbox
    controller.stop()


# Writing with the event


def test_publish_writes_outbox_and_in_app_rows(db, people):
    project = submitted_project(db, people.owner)

    publish_project(people.coordinator, project)
    db.session.commit()

    emails = outbox(db, "project_published")
    assert [row.user_id for row in emails] == [people.owner.id, people.second_owner.id]
    assert all(row.status == "pending" and row.attempts == 0 for row in emails)
    assert emails[0].link == f"/projects/{project.id}"
    assert emails[0].params == {"project": "Rural broadband for Turkana"}
    assert [row.user_id for row in in_app(db, "project_published")] == [people.owner.id, people.second_owner.id]
    assert ("notifications.deliver", {}) in db.session.info.get(jobs._READY, [])


def test_rollback_drops_outbox_and_job(db, people):
    project = submitted_project(db, people.owner)

    publish_project(people.coordinator, project)
    db.session.flush()
    assert len(outbox(db)) == 2
    db.session.rollback()

    assert outbox(db) == []
    assert in_app(db) == []
    assert jobs._PENDING not in db.session.info
    assert not db.session.info.get(jobs._READY)


def test_return_notifies_owners_with_reason(db, people):
    project = submitted_project(db, people.owner)

    return_project(people.coordinator, project, "Add a budget for maintenance.")
    db.session.commit()

    rows = outbox(db, "project_returned")
    assert [row.user_id for row in rows] == [people.owner.id, people.second_owner.id]
    assert rows[0].params["reason"] == "Add a budget for maintenance."
    assert people.other_owner.id not in [row.user_id for row in outbox(db)]


def test_pledge_made_reaches_funder_and_owners(db, people, published):
    pledge, _ = create_pledge(people.donor, published.needs[0].id, 123_456, "EUR")
    db.session.commit()

    rows = outbox(db, "pledge_made")
    assert sorted(row.user_id for row in rows) == sorted([people.donor.id, people.owner.id, people.second_owner.id])
    assert rows[0].params == {"project": published.title, "funder": DONOR_ORG, "amount_minor": 123_456, "currency": "EUR"}
    assert rows[0].link == f"/pledges/{pledge.id}"


def test_pledge_transitions_notify_by_kind(db, people, published):
    pledge, _ = create_pledge(people.donor, published.needs[0].id, 500_000, "EUR")
    db.session.commit()
    clear_notifications(db)

    act(people.coordinator, pledge.id, "confirm")
    act(people.coordinator, pledge.id, "disburse", 200_000)
    db.session.commit()

    confirmed = outbox(db, "pledge_confirmed")
    disbursed = outbox(db, "pledge_disbursed")
    assert len(confirmed) == 3
    assert confirmed[0].params["amount_minor"] == 500_000
    assert len(disbursed) == 3
    assert disbursed[0].params["amount_minor"] == 200_000


def test_card_pledge_notifies_when_paid_and_refunded(db, people, published):
    pledge, _ = create_pledge(people.donor, published.needs[0].id, 300_000, "EUR", kind="card")
    db.session.commit()
    assert outbox(db) == []

    transition(pledge.id, "pay", None)
    transition(pledge.id, "refund", None, 100_000)
    db.session.commit()

    assert len(outbox(db, "pledge_confirmed")) == 3
    refunded = outbox(db, "pledge_refunded")
    assert len(refunded) == 3
    assert refunded[0].params["amount_minor"] == 100_000


def test_decimal_amount_stored_as_integer(db, people, published):
    from decimal import Decimal

    from financing.notifications.events import pledge_event

    pledge, _ = create_pledge(people.donor, published.needs[0].id, 500_000, "EUR")
    db.session.commit()
    clear_notifications(db)

    pledge_event(pledge, "pledge_made", Decimal(250_000), "EUR")
    db.session.commit()

    amounts = {row.params["amount_minor"] for row in outbox(db)}
    assert amounts == {250_000}
    assert all(type(row.params["amount_minor"]) is int for row in outbox(db))


def test_cancel_sends_nothing(db, people, published):
    pledge, _ = create_pledge(people.donor, published.needs[0].id, 500_000, "EUR")
    db.session.commit()
    clear_notifications(db)

    act(people.coordinator, pledge.id, "cancel", reason="Duplicate")
    db.session.commit()

    assert outbox(db) == []


def test_match_accepted_notifies_funder_and_owners(db, people, published):
    from financing.funders.services import funder_for_user

    funder = funder_for_user(people.donor)
    match = Match(
        project_id=published.id, need_id=published.needs[0].id, funder_id=funder.id, score=0.8,
        parts={"region": 1, "theme": 1, "ticket": 0.5, "capacity": 0.5, "time": 0.5}, weights={},
        explanation="Kenya fits.", inputs_digest="0" * 64,
    )
    db.session.add(match)
    db.session.commit()

    accept_match(people.coordinator, match.id, "Good fit")
    db.session.commit()

    rows = outbox(db, "match_accepted")
    assert sorted(row.user_id for row in rows) == sorted([people.donor.id, people.owner.id, people.second_owner.id])
    assert rows[0].params == {"project": published.title, "funder": DONOR_ORG}


def test_inactive_users_and_duplicates_skipped(db, people):
    people.second_owner.active = False
    db.session.commit()

    count = notify([people.owner, people.owner, people.second_owner], "project_published", {"project": "X"}, "/projects/1")
    db.session.commit()

    assert count == 1
    assert [row.user_id for row in outbox(db)] == [people.owner.id]


def test_unknown_kind_rejected(db, people):
    with pytest.raises(ValueError, match="Unknown notification kind 'pledge_lost'"):
        notify([people.owner], "pledge_lost", {}, "")


def test_every_kind_has_text_and_label(app, db):
    params = {"project": "Backbone", "funder": "World Bank", "amount_minor": 100, "currency": "EUR", "reason": "r"}
    for kind in KINDS:
        assert summary(kind, params)
        assert str(KIND_LABELS[kind])


# Preferences


def test_preferences_choose_channels(db, people):
    set_preferences(people.owner, {"project_published": {"email": False, "in_app": True}})
    set_preferences(people.second_owner, {"project_published": {"email": False, "in_app": False}})
    db.session.commit()
    project = submitted_project(db, people.owner)

    publish_project(people.coordinator, project)
    db.session.commit()

    assert outbox(db, "project_published") == []
    assert [row.user_id for row in in_app(db, "project_published")] == [people.owner.id]


def test_preference_of_one_kind_leaves_others(db, people, published):
    set_preferences(people.owner, {"pledge_made": {"email": False, "in_app": False}})
    db.session.commit()

    pledge, _ = create_pledge(people.donor, published.needs[0].id, 1_000, "EUR")
    act(people.coordinator, pledge.id, "confirm")
    db.session.commit()

    assert people.owner.id not in [row.user_id for row in outbox(db, "pledge_made")]
    assert people.owner.id in [row.user_id for row in outbox(db, "pledge_confirmed")]


def test_settings_page_saves_choices(client, login, db, people):
    login(people.owner)

    page = client.get("/notifications/settings")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert str(KIND_LABELS["project_published"]) in html
    assert html.count('type="checkbox"') == 2 * len(KINDS)
    assert 'checked' in html

    form = {f"email_{kind}": "y" for kind in KINDS} | {f"in_app_{kind}": "y" for kind in KINDS}
    del form["email_pledge_made"]
    response = client.post("/notifications/settings", data=form)

    assert response.status_code == 303
    project = submitted_project(db, people.owner)
    publish_project(people.coordinator, project)
    db.session.commit()
    assert people.owner.id in [row.user_id for row in outbox(db, "project_published")]
    from financing.notifications.services import preferences_of
    choices = preferences_of(people.owner)
    assert choices["pledge_made"] == {"email": False, "in_app": True}
    assert choices["project_published"] == {"email": True, "in_app": True}


def test_settings_post_needs_csrf_token(app, client, login, db, people, monkeypatch):
    monkeypatch.setitem(app.config, "WTF_CSRF_ENABLED", True)
    login(people.owner)

    response = client.post("/notifications/settings", data={"email_pledge_made": ""})

    assert response.status_code in (400, 422)
    from financing.notifications.services import preferences_of
    assert preferences_of(people.owner)["pledge_made"] == {"email": True, "in_app": True}


# Delivery


def test_delivery_to_local_smtp_server(db, people, smtp_server):
    project = submitted_project(db, people.owner)
    publish_project(people.coordinator, project)
    db.session.commit()

    jobs.run_ready_jobs()

    assert len(smtp_server.messages) == 2
    received = {message["To"]: message for message in smtp_server.messages}
    message = received["owner@example.org"]
    assert message["Subject"] == "Project “Rural broadband for Turkana” is published"
    assert message["From"] == "ICT Financing Platform <noreply@localhost>"
    body = message.get_content()
    assert f"https://financing.example.org/projects/{project.id}" in body
    assert "https://financing.example.org/notifications/settings" in body
    assert body.startswith("Hello Owner 1,")
    rows = outbox(db)
    assert [row.status for row in rows] == ["sent", "sent"]
    assert all(row.sent_at is not None and row.attempts == 1 and row.last_error is None for row in rows)


def test_returned_email_contains_reason(db, people, smtp_server):
    project = submitted_project(db, people.owner)
    return_project(people.coordinator, project, "Add a maintenance budget.")
    db.session.commit()

    deliver_due()

    body = smtp_server.messages[0].get_content()
    assert "Reason: Add a maintenance budget." in body


def test_log_delivery_without_mail_url(app, db, people, caplog, monkeypatch):
    monkeypatch.setitem(app.config, "MAIL_URL", "")
    project = submitted_project(db, people.owner)
    publish_project(people.coordinator, project)
    db.session.commit()

    with caplog.at_level(logging.INFO, logger="financing.notifications.delivery"):
        report = deliver_due()

    assert len(report.sent) == 2
    logged = [record.getMessage() for record in caplog.records if "mail logged" in record.getMessage()]
    assert len(logged) == 2
    assert "owner@example.org" in " ".join(logged)
    assert "Rural broadband for Turkana" in logged[0]
    assert [row.status for row in outbox(db)] == ["sent", "sent"]


def test_server_down_retried_with_backoff(app, db, people, monkeypatch, caplog):
    monkeypatch.setitem(app.config, "MAIL_URL", f"smtp://127.0.0.1:{free_port()}")
    notify([people.owner], "project_published", {"project": "Backbone"}, "/projects/1")
    db.session.commit()
    now = utcnow()

    with caplog.at_level(logging.WARNING, logger="financing.notifications.delivery"):
        report = deliver_due(now)

    message = outbox(db)[0]
    assert report.retrying == [message.id]
    assert message.status == "pending"
    assert message.attempts == 1
    assert message.next_attempt_at == now + backoff(1)
    assert backoff(1) == timedelta(minutes=1)
    assert "ConnectionRefusedError" in message.last_error
    assert any("mail delivery failed" in record.getMessage() and f"id={message.id}" in record.getMessage() for record in caplog.records)

    # Not due again before the backoff has passed.
    assert deliver_due(now + timedelta(seconds=30)).retrying == []
    assert outbox(db)[0].attempts == 1


def test_retry_sends_once_server_is_back(app, db, people, smtp_server, monkeypatch):
    working_url = app.config["MAIL_URL"]
    monkeypatch.setitem(app.config, "MAIL_URL", f"smtp://127.0.0.1:{free_port()}")
    notify([people.owner], "project_published", {"project": "Backbone"}, "/projects/1")
    db.session.commit()
    now = utcnow()
    deliver_due(now)

    monkeypatch.setitem(app.config, "MAIL_URL", working_url)
    report = deliver_due(now + timedelta(minutes=1))

    message = outbox(db)[0]
    assert report.sent == [message.id]
    assert message.status == "sent"
    assert message.attempts == 2
    assert message.last_error is None
    assert len(smtp_server.messages) == 1


def test_rejected_recipient_backs_off_longer(db, people, smtp_server):
    smtp_server.rejection = "550 5.1.1 Mailbox unavailable"
    notify([people.owner], "project_published", {"project": "Backbone"}, "/projects/1")
    db.session.commit()
    now = utcnow()

    deliver_due(now)
    first = outbox(db)[0]
    assert first.status == "pending"
    assert "550" in first.last_error
    second_try = first.next_attempt_at
    deliver_due(second_try)

    message = outbox(db)[0]
    assert message.attempts == 2
    assert message.next_attempt_at == second_try + timedelta(minutes=2)
    assert smtp_server.messages == []


def test_gives_up_after_max_attempts(db, people, smtp_server, caplog):
    smtp_server.rejection = "550 5.1.1 Mailbox unavailable"
    notify([people.owner], "project_published", {"project": "Backbone"}, "/projects/1")
    db.session.commit()
    when = utcnow()

    with caplog.at_level(logging.ERROR, logger="financing.notifications.delivery"):
        for _ in range(MAX_ATTEMPTS):
            deliver_due(when)
            when = outbox(db)[0].next_attempt_at

    message = outbox(db)[0]
    assert message.status == "failed"
    assert message.attempts == MAX_ATTEMPTS
    assert any("mail delivery failed after the last attempt" in record.getMessage() for record in caplog.records)
    assert deliver_due(when + timedelta(days=1)).sent == []


def test_job_run_twice_sends_once(db, people, smtp_server):
    notify([people.owner], "project_published", {"project": "Backbone"}, "/projects/1")
    db.session.commit()

    jobs.run_job("notifications.deliver", {})
    jobs.run_job("notifications.deliver", {})

    assert len(smtp_server.messages) == 1
    assert outbox(db)[0].attempts == 1


def test_claimed_message_not_claimed_twice(db, people):
    notify([people.owner], "project_published", {"project": "Backbone"}, "/projects/1")
    db.session.commit()
    message_id = outbox(db)[0].id
    now = utcnow()

    assert claim(message_id, now) is True
    assert claim(message_id, now) is False
    # A claim abandoned by a crashed run expires, and the message is taken again.
    assert claim(message_id, now + delivery.CLAIM_TIME + timedelta(seconds=1)) is True


def test_sent_message_never_claimed_again(db, people, smtp_server):
    notify([people.owner], "project_published", {"project": "Backbone"}, "/projects/1")
    db.session.commit()
    deliver_due()
    message = outbox(db)[0]

    assert claim(message.id, utcnow() + timedelta(days=365)) is False
    assert deliver_due(utcnow() + timedelta(days=365)).sent == []
    assert len(smtp_server.messages) == 1


def test_inactive_recipient_cancelled(db, people, smtp_server):
    notify([people.owner], "project_published", {"project": "Backbone"}, "/projects/1")
    people.owner.active = False
    db.session.commit()

    report = deliver_due()

    assert report.cancelled == [outbox(db)[0].id]
    assert outbox(db)[0].status == "cancelled"
    assert smtp_server.messages == []


def test_bad_mail_url_rejected(app, db, people, monkeypatch):
    monkeypatch.setitem(app.config, "MAIL_URL", "http://127.0.0.1:25")
    notify([people.owner], "project_published", {"project": "Backbone"}, "/projects/1")
    db.session.commit()

    with pytest.raises(ValueError, match="MAIL_URL must look like smtp://host:port"):
        deliver_due()
    assert outbox(db)[0].status == "pending"


def test_deliver_command(app, db, people, smtp_server):
    notify([people.owner], "project_published", {"project": "Backbone"}, "/projects/1")
    db.session.commit()

    result = app.test_cli_runner().invoke(args=["notifications", "deliver"])

    assert result.exit_code == 0, result.output
    assert "Sent 1, retrying 0, failed 0, cancelled 0." in result.output
    assert len(smtp_server.messages) == 1


# Language


@pytest.fixture
def forced_locales(monkeypatch):
    """Record the locale of every force_locale call made by the delivery."""
    calls = []
    real = delivery.force_locale

    def spy(locale):
        calls.append(locale)
        return real(locale)

    monkeypatch.setattr(delivery, "force_locale", spy)
    return calls


def test_email_rendered_in_recipient_locale(db, people, published, smtp_server, forced_locales):
    people.owner.locale = "fr"
    db.session.commit()

    create_pledge(people.donor, published.needs[0].id, 123_456, "EUR")
    db.session.commit()
    deliver_due()

    received = {message["To"]: message for message in smtp_server.messages}
    french = format_money(123_456, "EUR", "fr")
    english = format_money(123_456, "EUR", "en")
    assert french != english
    assert french in received["owner@example.org"]["Subject"]
    assert received["owner@example.org"]["Content-Language"] == "fr"
    assert english in received["owner2@example.org"]["Subject"]
    assert sorted(forced_locales) == ["en", "en", "fr"]


def test_unknown_locale_falls_back_to_english(db, people, smtp_server, forced_locales):
    people.owner.locale = "zz"
    db.session.commit()
    notify([people.owner], "pledge_made", {"project": "Backbone", "funder": "World Bank", "amount_minor": 5000, "currency": "USD"}, "/pledges/1")
    db.session.commit()

    deliver_due()

    assert forced_locales == ["en"]
    message = smtp_server.messages[0]
    assert message["Subject"] == "World Bank pledged $50.00 to “Backbone”"
    assert message["Content-Language"] == "en"


# In-app list and unread counts


def test_unread_count_in_nav(client, login, db, people):
    notify([people.owner], "project_published", {"project": "Backbone"}, "/projects/1")
    notify([people.owner], "project_returned", {"project": "Towers", "reason": "Budget"}, "/projects/2")
    db.session.commit()
    login(people.owner)

    html = client.get("/notifications").get_data(as_text=True)

    assert re.search(r'class="count-badge">2<span class="visually-hidden"> unread', html)
    assert "Project “Backbone” is published." in html
    assert "Budget" in html
    assert html.count("Mark read") == 2


def test_mark_read_and_mark_all(client, login, db, people):
    first = notify([people.owner], "project_published", {"project": "Backbone"}, "/projects/1")
    notify([people.owner], "project_published", {"project": "Towers"}, "/projects/2")
    notify([people.owner], "project_published", {"project": "Spectrum"}, "/projects/3")
    db.session.commit()
    assert first == 1
    ids = [row.id for row in in_app(db)]
    login(people.owner)

    response = client.post(f"/notifications/{ids[0]}/read")
    assert response.status_code == 303
    assert unread_count(people.owner) == 2
    html = client.get("/notifications").get_data(as_text=True)
    assert 'class="count-badge">2<' in html

    response = client.post("/notifications/read-all")
    assert response.status_code == 303
    assert unread_count(people.owner) == 0
    html = client.get("/notifications").get_data(as_text=True)
    assert "count-badge" not in html
    assert "Mark read" not in html


def test_mark_read_of_other_users_notification_is_404(client, login, db, people):
    notify([people.owner], "project_published", {"project": "Backbone"}, "/projects/1")
    db.session.commit()
    notification_id = in_app(db)[0].id
    login(people.other_owner)

    response = client.post(f"/notifications/{notification_id}/read")

    assert response.status_code == 404
    assert unread_count(people.owner) == 1


def test_mark_read_needs_csrf_token(app, client, login, db, people, monkeypatch):
    notify([people.owner], "project_published", {"project": "Backbone"}, "/projects/1")
    db.session.commit()
    notification_id = in_app(db)[0].id
    monkeypatch.setitem(app.config, "WTF_CSRF_ENABLED", True)
    login(people.owner)

    client.post(f"/notifications/{notification_id}/read")
    client.post("/notifications/read-all")

    assert unread_count(people.owner) == 1


def test_mark_read_service_is_idempotent(db, people):
    notify([people.owner], "project_published", {"project": "Backbone"}, "/projects/1")
    db.session.commit()
    notification = in_app(db)[0]

    first = mark_read(people.owner, notification.id).read_at
    second = mark_read(people.owner, notification.id).read_at

    assert first is not None
    assert first == second


def test_notifications_page_needs_login(client, db):
    response = client.get("/notifications")

    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


def test_publish_by_page_delivers_inline(client, login, db, people, smtp_server):
    project = submitted_project(db, people.owner)
    login(people.coordinator)

    response = client.post(f"/projects/{project.id}/publish")

    assert response.status_code in (302, 303)
    assert sorted(message["To"] for message in smtp_server.messages) == ["owner2@example.org", "owner@example.org"]
    assert [row.status for row in outbox(db)] == ["sent", "sent"]
