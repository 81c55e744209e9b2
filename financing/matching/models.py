"""Match suggestions: one scored, explained pairing of a project with a funder."""

from datetime import datetime

from sqlalchemy import CheckConstraint, Float, ForeignKey, JSON, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from financing.accounts.models import User
from financing.core.time import utcnow
from financing.core.types import UTCDateTime
from financing.extensions import db
from financing.funders.models import Funder
from financing.projects.models import FundingNeed, Project

MATCH_STATUSES = ("suggested", "accepted", "rejected", "stale")


class Match(db.Model):
    __tablename__ = "match"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"), index=True)
    # The project's open need that scored best for this funder.
    need_id: Mapped[int] = mapped_column(ForeignKey("funding_need.id", ondelete="CASCADE"))
    funder_id: Mapped[int] = mapped_column(ForeignKey("funder.id", ondelete="CASCADE"), index=True)
    score: Mapped[float] = mapped_column(Float, index=True)
    # {"region": x, "theme": x, "ticket": x, "capacity": x, "time": x}, each 0 to 1.
    parts: Mapped[dict] = mapped_column(JSON)
    weights: Mapped[dict] = mapped_column(JSON)
    explanation: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(10), default="suggested", index=True)
    review_reason: Mapped[str | None] = mapped_column(Text)
    reviewed_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Digest of the inputs the score was computed from; a change after review marks it stale.
    inputs_digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    project: Mapped[Project] = relationship()
    need: Mapped[FundingNeed] = relationship()
    funder: Mapped[Funder] = relationship()
    reviewed_by: Mapped[User | None] = relationship()

    __table_args__ = (
        UniqueConstraint("project_id", "funder_id", name="uq_match_project_funder"),
        CheckConstraint(f"status IN {MATCH_STATUSES!r}", name="status"),
        CheckConstraint("score >= 0 AND score <= 1", name="score_range"),
    )
