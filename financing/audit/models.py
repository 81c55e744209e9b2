"""The audit table: who changed which object, when, from what to what, and why."""

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from financing.accounts.models import User
from financing.core.time import utcnow
from financing.core.types import UTCDateTime
from financing.extensions import db

# Object types that services record, as stored in AuditEntry.object_type.
OBJECT_TYPES = ("project", "pledge", "match", "match_fund", "exchange_rate", "funder", "user", "api_token")


class AuditEntry(db.Model):
    """One state change. Rows are only ever inserted, never updated or deleted."""

    __tablename__ = "audit_entry"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    # None for changes made by the system: Stripe webhooks, imports, commands, derived statuses.
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"), index=True)
    action: Mapped[str] = mapped_column(String(40), index=True)
    object_type: Mapped[str] = mapped_column(String(40))
    object_id: Mapped[int]
    # The changed fields only, before and after; amounts as {"amount": "12.50", "currency": "EUR"}.
    before: Mapped[dict | None] = mapped_column(JSON)
    after: Mapped[dict | None] = mapped_column(JSON)
    reason: Mapped[str] = mapped_column(Text, default="")

    actor: Mapped[User | None] = relationship()

    __table_args__ = (Index("ix_audit_entry_object", "object_type", "object_id", "id"),)
