"""Email delivery of the outbox: SMTP when MAIL_URL is set, else the log; failures retried with backoff.

`deliver_due` is the job `notifications.deliver`, queued after each commit that adds
messages. Each run sends every message that is due, so a message that failed is retried by
the next run after its backoff: a later event's job, or `flask notifications deliver`, which
a timer in production runs every few minutes.

A message is claimed before it is sent, by a conditional UPDATE that only a pending message
(or one whose claim has expired) passes, and committed. Two runs at the same time therefore
never send the same message, and a message marked sent is never sent again.
"""

import logging
import smtplib
import ssl
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from urllib.parse import parse_qs, unquote, urlsplit

from flask import current_app
from flask_babel import force_locale
from sqlalchemy import and_, or_, select, update

from financing.core.time import utcnow
from financing.extensions import db
from financing.notifications.messages import reason, summary, supported_locale
from financing.notifications.models import OutboxMessage
from financing.notifications.services import site_path

logger = logging.getLogger(__name__)

# Messages claimed per run; the rest wait for the next run.
BATCH_SIZE = 200
# Attempts before a message is marked failed, and the backoff: 1, 2, 4, ... minutes, at most 6 hours.
MAX_ATTEMPTS = 8
BACKOFF_START = timedelta(minutes=1)
BACKOFF_MAX = timedelta(hours=6)
# How long a claimed message may stay "sending" before another run may claim it again.
CLAIM_TIME = timedelta(minutes=5)
SMTP_TIMEOUT_SECONDS = 10
# Maximum length of the error text kept on a message, in characters.
MAX_ERROR_LENGTH = 500


def backoff(attempts: int) -> timedelta:
    """Return the wait before the next attempt after `attempts` failed ones."""
    return min(BACKOFF_START * 2 ** max(attempts - 1, 0), BACKOFF_MAX)


# Transports


class LogTransport:
    """Write each message to the log instead of sending it: the default without MAIL_URL."""

    def send(self, email: EmailMessage) -> None:
        logger.info(
            "mail logged, not sent (MAIL_URL is unset) to=%s subject=%r body=%r",
            email["To"], email["Subject"], email.get_content(),
        )

    def close(self) -> None:
        pass


class SmtpTransport:
    """Send through one SMTP connection per run, opened on the first message.

    MAIL_URL is smtp://[user:password@]host[:port][?starttls=true] or smtps://... for TLS
    from the start. The password is never logged.
    """

    def __init__(self, url: str, timeout: float = SMTP_TIMEOUT_SECONDS):
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError(f"MAIL_URL must look like smtp://host:port or smtps://host:port, not {parts.scheme}://{parts.hostname or ''}.")
        self.tls = parts.scheme == "smtps"
        self.host = parts.hostname
        self.port = parts.port or (465 if self.tls else 25)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.starttls = parse_qs(parts.query).get("starttls", ["false"])[0].lower() in ("1", "true", "yes")
        self.timeout = timeout
        self.connection: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        if self.tls:
            connection = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=ssl.create_default_context())
        else:
            connection = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            if self.starttls:
                connection.starttls(context=ssl.create_default_context())
        if self.username:
            connection.login(self.username, self.password or "")
        return connection

    def send(self, email: EmailMessage) -> None:
        if self.connection is None:
            self.connection = self._connect()
        try:
            self.connection.send_message(email)
        except (smtplib.SMTPServerDisconnected, OSError):
            # The connection is unusable; the next message opens a new one.
            self._drop()
            raise

    def _drop(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            try:
                connection.close()
            except OSError:
                pass

    def close(self) -> None:
        if self.connection is None:
            return
        try:
            self.connection.quit()
        except (smtplib.SMTPException, OSError) as error:
            logger.info("mail server connection closed with an error: %s", error.__class__.__name__)
        self.connection = None


def make_transport() -> LogTransport | SmtpTransport:
    url = current_app.config.get("MAIL_URL") or ""
    return SmtpTransport(url) if url else LogTransport()


# Messages


def absolute_url(path: str) -> str:
    """Prefix a site path with SITE_URL when it is set; links stay paths otherwise."""
    base = (current_app.config.get("SITE_URL") or "").rstrip("/")
    return f"{base}{path}" if base else path


def compose(message: OutboxMessage) -> EmailMessage:
    """Build the email of an outbox message in the recipient's language, where a translation exists."""
    user = message.user
    locale = supported_locale(user.locale)
    with force_locale(locale):
        subject = summary(message.kind, message.params)
        body = current_app.jinja_env.get_template("notifications/email.txt").render(
            name=user.name or user.email,
            summary=subject,
            reason=reason(message.params),
            url=absolute_url(message.link) if message.link else "",
            settings_url=absolute_url(site_path("notifications.settings")),
        )
    email = EmailMessage()
    email["Subject"] = subject.rstrip(".")
    email["From"] = current_app.config.get("MAIL_FROM") or "noreply@localhost"
    email["To"] = user.email
    email["Message-ID"] = make_msgid(idstring=f"outbox-{message.id}")
    email.set_content(body)
    # After set_content, which drops the Content-* headers set before it.
    email["Content-Language"] = locale.replace("_", "-")
    return email


# Runs


@dataclass
class DeliveryReport:
    sent: list[int] = field(default_factory=list)
    retrying: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)


def _due(now: datetime):
    return or_(
        and_(OutboxMessage.status == "pending", OutboxMessage.next_attempt_at <= now),
        and_(OutboxMessage.status == "sending", OutboxMessage.locked_until < now),
    )


def due_ids(now: datetime, limit: int = BATCH_SIZE) -> list[int]:
    query = select(OutboxMessage.id).where(_due(now)).order_by(OutboxMessage.next_attempt_at, OutboxMessage.id).limit(limit)
    return list(db.session.scalars(query))


def claim(message_id: int, now: datetime) -> bool:
    """Take a due message for this run and count the attempt; commit so that other runs see it."""
    result = db.session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id == message_id, _due(now))
        .values(status="sending", locked_until=now + CLAIM_TIME, attempts=OutboxMessage.attempts + 1)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    return result.rowcount == 1


def deliver_due(now: datetime | None = None, limit: int = BATCH_SIZE) -> DeliveryReport:
    """Send every due outbox message once; the job `notifications.deliver` and the CLI run it."""
    now = now or utcnow()
    report = DeliveryReport()
    ids = due_ids(now, limit)
    if not ids:
        return report
    transport = make_transport()
    logger.info("mail delivery started messages=%s transport=%s", len(ids), type(transport).__name__)
    try:
        for message_id in ids:
            if claim(message_id, now):
                _deliver(db.session.get(OutboxMessage, message_id, populate_existing=True), transport, now, report)
    finally:
        transport.close()
    logger.info(
        "mail delivery finished sent=%s retrying=%s failed=%s cancelled=%s",
        len(report.sent), len(report.retrying), len(report.failed), len(report.cancelled),
    )
    return report


def _deliver(message: OutboxMessage, transport, now: datetime, report: DeliveryReport) -> None:
    message.locked_until = None
    if not message.user.active:
        message.status = "cancelled"
        db.session.commit()
        logger.info("mail cancelled id=%s user=%s: the account is inactive", message.id, message.user_id)
        report.cancelled.append(message.id)
        return
    try:
        transport.send(compose(message))
    except Exception as error:
        # Any failure, a template bug included, is retried with backoff, so that one bad
        # message cannot hold up the others.
        _failed(message, error, now, report)
        return
    # NOTE: a crash between the send and this commit leaves the message "sending", and a run
    # after CLAIM_TIME sends it again. In that window delivery is at least once, not exactly once.
    message.status = "sent"
    message.sent_at = utcnow()
    message.last_error = None
    db.session.commit()
    logger.info("mail sent id=%s user=%s kind=%s attempt=%s", message.id, message.user_id, message.kind, message.attempts)
    report.sent.append(message.id)


def _failed(message: OutboxMessage, error: Exception, now: datetime, report: DeliveryReport) -> None:
    message.last_error = f"{error.__class__.__name__}: {error}"[:MAX_ERROR_LENGTH]
    if message.attempts >= MAX_ATTEMPTS:
        message.status = "failed"
        db.session.commit()
        logger.error("mail delivery failed after the last attempt id=%s user=%s attempts=%s error=%s", message.id, message.user_id, message.attempts, message.last_error)
        report.failed.append(message.id)
        return
    message.status = "pending"
    message.next_attempt_at = now + backoff(message.attempts)
    db.session.commit()
    logger.warning(
        "mail delivery failed id=%s user=%s attempt=%s retry_at=%s error=%s",
        message.id, message.user_id, message.attempts, message.next_attempt_at.isoformat(), message.last_error,
    )
    report.retrying.append(message.id)
