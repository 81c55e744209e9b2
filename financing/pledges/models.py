"""Pledges against funding needs and their append-only ledger."""

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from financing.core.time import utcnow
from financing.core.types import ExactDecimal, UTCDateTime
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
    rate: Mapped[Decimal] = mapped_column(ExactDecimal(24, 12), default=Decimal(1))
    # Disbursed so far, in minor units of the need's currency.
    disbursed_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    # Refunded so far (card pledges), in minor units of the need's currency. A partial refund
    # keeps the pledge confirmed and releases this much of the need's goal.
    refunded_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    # Card payments: the Stripe Checkout Session and PaymentIntent ids, and an open dispute.
    payment_session_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    payment_intent_id: Mapped[str | None] = mapped_column(String(255), index=True)
    disputed: Mapped[bool] = mapped_column(default=False)
    # Set on a pledge made by a match fund: the fund and the donor pledge it matches.
    match_fund_id: Mapped[int | None] = mapped_column(ForeignKey("match_fund.id"), index=True)
    matches_pledge_id: Mapped[int | None] = mapped_column(ForeignKey("pledge.id"), unique=True)
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
        CheckConstraint("refunded_minor >= 0 AND refunded_minor <= need_amount_minor", name="refunded_range"),
        UniqueConstraint("created_by_id", "idempotency_key", name="uq_pledge_idempotency"),
    )

    @property
    def project_id(self) -> int:
        return self.need.project_id

    @property
    def active_minor(self) -> int:
        """Amount that counts against the need's goal, in the need's minor units."""
        return 0 if self.state in RELEASED_STATES else self.need_amount_minor - self.refunded_minor


class ExchangeRate(db.Model):
    """A rate kept by coordinators: one major unit of `base` is worth `rate` of `quote`."""

    __tablename__ = "exchange_rate"

    id: Mapped[int] = mapped_column(primary_key=True)
    base: Mapped[str] = mapped_column(String(3))
    quote: Mapped[str] = mapped_column(String(3))
    rate: Mapped[Decimal] = mapped_column(ExactDecimal(24, 12))
    # First day (UTC) the rate applies; the latest rate on or before a day is used.
    valid_from: Mapped[date]
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        UniqueConstraint("base", "quote", "valid_from", name="uq_exchange_rate_pair_day"),
        CheckConstraint("rate > 0", name="rate_positive"),
        CheckConstraint("base <> quote", name="distinct_currencies"),
    )


class MatchFund(db.Model):
    """A funder's promise to match eligible individual pledges, within caps and a window."""

    __tablename__ = "match_fund"

    id: Mapped[int] = mapped_column(primary_key=True)
    funder_id: Mapped[int] = mapped_column(ForeignKey("funder.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # Matched amount per unit pledged: 1 for 1:1, 2 for 2:1, 0.5 for 1:2.
    factor: Mapped[Decimal] = mapped_column(ExactDecimal(8, 4))
    # Caps and usage are integer minor units of `currency`.
    currency: Mapped[str] = mapped_column(String(3))
    total_cap_minor: Mapped[int] = mapped_column(BigInteger)
    per_pledge_cap_minor: Mapped[int | None] = mapped_column(BigInteger)
    per_project_cap_minor: Mapped[int | None] = mapped_column(BigInteger)
    # Sum of the fund's active matching pledges, kept in step like FundingNeed.pledged_minor.
    used_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    starts_on: Mapped[date | None]
    ends_on: Mapped[date | None]
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    funder: Mapped[Funder] = relationship()
    rules: Mapped[list["MatchFundRule"]] = relationship(
        back_populates="fund", cascade="all, delete-orphan", order_by="MatchFundRule.code"
    )

    __table_args__ = (
        CheckConstraint("factor > 0", name="factor_positive"),
        CheckConstraint("total_cap_minor > 0", name="total_cap_positive"),
        CheckConstraint("used_minor >= 0 AND used_minor <= total_cap_minor", name="used_range"),
    )


class MatchFundRule(db.Model):
    """One eligibility condition of a match fund: a region, country, theme or DAC sector."""

    __tablename__ = "match_fund_rule"

    fund_id: Mapped[int] = mapped_column(ForeignKey("match_fund.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(10), primary_key=True)
    code: Mapped[str] = mapped_column(String(30), primary_key=True)

    fund: Mapped[MatchFund] = relationship(back_populates="rules")

    __table_args__ = (CheckConstraint("kind IN ('country', 'region', 'theme', 'sector')", name="kind"),)

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
