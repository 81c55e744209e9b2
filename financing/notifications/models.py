"""Notification tables: the in-app list, the email outbox, and each user's choices per kind."""

from datetime import datetime

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from financing.accounts.models import User
from financing.core.time import utcnow
from financing.core.types import UTCDateTime
from financing.extensions import db

KINDS = (
    "project_published", "project_returned", "pledge_made", "pledge_confirmed",
    "pledge_disbursed", "pledge_refunded", "match_accepted",
)
# A pending message waits for its next attempt, and a sending one is claimed by a delivery run.
# Sent means handed to the mail server, failed means given up after the last attempt, and
# cancelled means the account was deactivated before delivery.
OUTBOX_STATUSES = ("pending", "sending", "sent", "failed", "cancelled")


class Notification(db.Model):
    """One entry of a user's in-app list. The text is rendered from kind and params when shown."""

    __tablename__ = "notification"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(40))
    # Values for the message: titles, names, amounts as minor units with their currency.
    params: Mapped[dict] = mapped_column(JSON)
    # Path on this site of the page the notification is about.
    link: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint(f"kind IN {KINDS!r}", name="kind"),
        Index("ix_notification_user_read", "user_id", "read_at"),
    )


class OutboxMessage(db.Model):
    """One email to send, written in the transaction of the event it announces."""

    __tablename__ = "outbox_message"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    params: Mapped[dict] = mapped_column(JSON)
    link: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    status: Mapped[str] = mapped_column(String(10), default="pending")
    # Attempts made so far, the failed ones included.
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # End of a delivery run's claim; a message still "sending" after it is claimed again.
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    user: Mapped[User] = relationship()

    __table_args__ = (
        CheckConstraint(f"kind IN {KINDS!r}", name="kind"),
        CheckConstraint(f"status IN {OUTBOX_STATUSES!r}", name="status"),
        CheckConstraint("attempts >= 0", name="attempts_not_negative"),
        Index("ix_outbox_message_due", "status", "next_attempt_at"),
    )


class NotificationPreference(db.Model):
    """A user's choice for one kind; without a row, the user gets both email and in-app."""

    __tablename__ = "notification_preference"

    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40), primary_key=True)
    email: Mapped[bool] = mapped_column(default=True)
    in_app: Mapped[bool] = mapped_column(default=True)

    __table_args__ = (CheckConstraint(f"kind IN {KINDS!r}", name="kind"),)
