"""Stripe webhook events, stored once each so that redelivery changes nothing."""

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from financing.core.time import utcnow
from financing.core.types import UTCDateTime
from financing.extensions import db


class StripeEvent(db.Model):
    __tablename__ = "stripe_event"

    # Stripe's event id (evt_...); the primary key makes a second delivery a no-op.
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    pledge_id: Mapped[int | None] = mapped_column(ForeignKey("pledge.id"), index=True)
    # Stripe's `created` timestamp, used to ignore events older than the pledge's last change.
    created: Mapped[datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Outcome in a few words: "confirmed pledge 12", "ignored: unknown type", ...
    outcome: Mapped[str] = mapped_column(String(300), default="")
