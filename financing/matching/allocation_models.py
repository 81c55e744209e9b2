"""Allocation runs and their rows: the amounts each funder would give to each open need."""

from datetime import datetime
from decimal import Decimal

from sqlalchemy import JSON, BigInteger, CheckConstraint, Float, ForeignKey, Numeric, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from financing.accounts.models import User
from financing.core.time import utcnow
from financing.core.types import UTCDateTime
from financing.extensions import db
from financing.funders.models import Funder
from financing.matching.models import Match
from financing.projects.models import FundingNeed, Project

RUN_STATUSES = ("proposed", "accepted", "failed")


class AllocationRun(db.Model):
    """One solve of the allocation problem, who started it, and the solver's figures.

    Status: proposed once solved, accepted when a coordinator accepted one or more of its
    rows, failed when the solver found no proposal (solver_status and solver_message give the reason).
    """

    __tablename__ = "allocation_run"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    status: Mapped[str] = mapped_column(String(10), default="proposed")
    # "lp" or "milp": the method whose proposal was kept. settings contains the configured method.
    method: Mapped[str] = mapped_column(String(10))
    solver_status: Mapped[str] = mapped_column(String(20))
    solver_message: Mapped[str] = mapped_column(Text, default="")
    seconds: Mapped[float] = mapped_column(Float)
    variables: Mapped[int] = mapped_column(default=0)
    constraints: Mapped[int] = mapped_column(default=0)
    # Score-weighted need covered, in major units of objective_currency, and the best bound proven for it.
    objective: Mapped[float] = mapped_column(Float, default=0.0)
    objective_currency: Mapped[str] = mapped_column(String(3), default="")
    bound: Mapped[float | None] = mapped_column(Float)
    gap: Mapped[float | None] = mapped_column(Float)
    # Currency -> minor units: amounts proposed (in the needs' currencies) and open need in the run.
    proposed: Mapped[dict] = mapped_column(JSON, default=dict)
    open_need: Mapped[dict] = mapped_column(JSON, default=dict)
    # Counts of pairs and funders left out by reason (SkipCounts), and the weights, minimum score and solver settings used.
    skipped: Mapped[dict] = mapped_column(JSON, default=dict)
    settings: Mapped[dict] = mapped_column(JSON, default=dict)
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    created_by: Mapped[User | None] = relationship()
    rows: Mapped[list["AllocationRow"]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="AllocationRow.id"
    )

    __table_args__ = (
        CheckConstraint(f"status IN {RUN_STATUSES!r}", name="status"),
    )


class AllocationRow(db.Model):
    """An amount a funder would give to one need, in the funder's currency and converted to the need's.

    amount_minor and currency mirror a pledge's amount, which is what the funder gives.
    need_amount_minor is what that covers of the need, converted with `rate` as a pledge would be.
    """

    __tablename__ = "allocation_row"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("allocation_run.id", ondelete="CASCADE"), index=True)
    funder_id: Mapped[int] = mapped_column(ForeignKey("funder.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"), index=True)
    need_id: Mapped[int] = mapped_column(ForeignKey("funding_need.id", ondelete="CASCADE"))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    need_amount_minor: Mapped[int] = mapped_column(BigInteger)
    need_currency: Mapped[str] = mapped_column(String(3))
    # Major units of need_currency for one major unit of currency, 1 when they are the same.
    rate: Mapped[Decimal] = mapped_column(Numeric(24, 12))
    # Score of this funder for this need (engine.score_pair on the need alone), its parts and explanation.
    score: Mapped[float] = mapped_column(Float)
    parts: Mapped[dict] = mapped_column(JSON)
    explanation: Mapped[str] = mapped_column(Text)
    accepted: Mapped[bool] = mapped_column(default=False)
    accepted_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id", ondelete="SET NULL"))
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The match that accepting this row created or updated.
    match_id: Mapped[int | None] = mapped_column(ForeignKey("match.id", ondelete="SET NULL"))

    run: Mapped[AllocationRun] = relationship(back_populates="rows")
    funder: Mapped[Funder] = relationship()
    project: Mapped[Project] = relationship()
    need: Mapped[FundingNeed] = relationship()
    accepted_by: Mapped[User | None] = relationship()
    match: Mapped[Match | None] = relationship()

    __table_args__ = (
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        CheckConstraint("need_amount_minor > 0", name="need_amount_positive"),
        CheckConstraint("rate > 0", name="rate_positive"),
        CheckConstraint("score >= 0 AND score <= 1", name="score_range"),
    )
