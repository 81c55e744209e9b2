"""Funder profiles and their preferred regions, countries, themes and sectors."""

from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from financing.accounts.models import Organisation, User
from financing.core.codes import CodesMixin
from financing.core.time import utcnow
from financing.core.types import ExactDecimal, UTCDateTime
from financing.extensions import db

FUNDER_KINDS = ("institution", "individual")
PREFERENCE_KINDS = ("country", "region", "theme", "sector")


class Funder(CodesMixin, db.Model):
    _code_rows = "preferences"
    __tablename__ = "funder"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(300))
    kind: Mapped[str] = mapped_column(String(12), default="institution")
    description: Mapped[str] = mapped_column(Text, default="")
    # The organisation whose donor accounts act for this funder (institutions).
    organisation_id: Mapped[int | None] = mapped_column(ForeignKey("organisation.id"), unique=True)
    # The donor account of an individual funder.
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"), unique=True)
    # IATI organisation identifier, or "name:<name>" for IATI funders reported without one.
    iati_ref: Mapped[str | None] = mapped_column(String(300), unique=True)
    # Ticket range and budget are integer minor units of `currency`.
    currency: Mapped[str] = mapped_column(String(3), default="EUR")
    ticket_min_minor: Mapped[int | None] = mapped_column(BigInteger)
    ticket_max_minor: Mapped[int | None] = mapped_column(BigInteger)
    annual_budget_minor: Mapped[int | None] = mapped_column(BigInteger)
    # Days the funder needs between a proposal and a decision; compared with need deadlines.
    decision_days: Mapped[int | None]
    # Number of IATI activities the preferences were learned from; 0 when entered by hand.
    learned_from: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    organisation: Mapped[Organisation | None] = relationship()
    user: Mapped[User | None] = relationship()
    preferences: Mapped[list["FunderPreference"]] = relationship(
        back_populates="funder", cascade="all, delete-orphan", order_by="FunderPreference.code"
    )

    __table_args__ = (
        CheckConstraint(f"kind IN {FUNDER_KINDS!r}", name="kind"),
        CheckConstraint("ticket_min_minor IS NULL OR ticket_min_minor > 0", name="ticket_min_positive"),
        CheckConstraint(
            "ticket_max_minor IS NULL OR ticket_min_minor IS NULL OR ticket_max_minor >= ticket_min_minor",
            name="ticket_range",
        ),
        CheckConstraint("annual_budget_minor IS NULL OR annual_budget_minor > 0", name="budget_positive"),
    )


class FunderPreference(db.Model):
    """One preferred country, region, theme or DAC sector of a funder."""

    __tablename__ = "funder_preference"

    funder_id: Mapped[int] = mapped_column(ForeignKey("funder.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(10), primary_key=True)
    code: Mapped[str] = mapped_column(String(30), primary_key=True)
    # Share of the funder's committed amounts behind a learned preference, 0 to 1; None when
    # entered by hand.
    weight: Mapped[Decimal | None] = mapped_column(ExactDecimal(7, 6))

    funder: Mapped[Funder] = relationship(back_populates="preferences")

    __table_args__ = (
        CheckConstraint(f"kind IN {PREFERENCE_KINDS!r}", name="kind"),
        Index("ix_funder_preference_kind_code", "kind", "code"),
    )
