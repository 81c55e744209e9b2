"""Pledges against funding needs and their append-only ledger."""

from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Numeric, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from financing.core.time import utcnow
from financing.core.types import UTCDateTime
from financing.extensions import db
from financing.funders.models import Funder
from financing.projects.models import FundingNeed

PLEDGE_STATES = ("pending_payment", "pledged", "confirmed", "partly_disbursed", "disbursed", "cancelled", "refunded")
# States whose amount no longer counts against the need's goal.
RELEASED_STATES = ("cancelled", "refunded")
PLEDGE_KINDS = ("commitment", "card")


class Pledge(db.Model):
    __tablename__ = "pledge"

    id: Mapped[int] = mapped_column(primary_key=True)
    need_id: Mapped[int] = mapped_column(ForeignKey("funding_need.id"), index=True)
    funder_id: Mapped[int] = mapped_column(ForeignKey("funder.id"), index=True)
    kind: Mapped[str] = mapped_column(String(12), default="commitment")
    state: Mapped[str] = mapped_column(String(20), index=True)
    # The amount as pledged, in integer minor units of `currency`.
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    # The same amount in minor units of the need's currency; equals amount_minor when the
    # currencies agree. This is what counts against the goal.
    need_amount_minor: Mapped[int] = mapped_column(BigInteger)
    # Major units of the need's currency for one major unit of `currency`, fixed when pledged.
    rate: Mapped[Decimal] = mapped_column(Numeric(24, 12), default=Decimal(1))
    # Disbursed so far, in minor units of the need's currency.
    disbursed_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    # Stable key of an imported IATI commitment, so that a re-import updates it.
    import_key: Mapped[str | None] = mapped_column(String(400), unique=True)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    need: Mapped[FundingNeed] = relationship()
    funder: Mapped[Funder] = relationship()
    events: Mapped[list["PledgeEvent"]] = relationship(
        back_populates="pledge", order_by="PledgeEvent.id", passive_deletes=True
    )

    __table_args__ = (
        CheckConstraint(f"state IN {PLEDGE_STATES!r}", name="state"),
        CheckConstraint(f"kind IN {PLEDGE_KINDS!r}", name="kind"),
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        CheckConstraint("need_amount_minor > 0", name="need_amount_positive"),
        CheckConstraint("disbursed_minor >= 0 AND disbursed_minor <= need_amount_minor", name="disbursed_range"),
        UniqueConstraint("created_by_id", "idempotency_key", name="uq_pledge_idempotency"),
    )

    @property
    def project_id(self) -> int:
        return self.need.project_id


class PledgeEvent(db.Model):
    """One transition of a pledge; rows are only ever inserted."""

    __tablename__ = "pledge_event"

    id: Mapped[int] = mapped_column(primary_key=True)
    pledge_id: Mapped[int] = mapped_column(ForeignKey("pledge.id"), index=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    from_state: Mapped[str | None] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    # Amount the transition concerns, in minor units of the need's currency.
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text, default="")

    pledge: Mapped[Pledge] = relationship(back_populates="events")
