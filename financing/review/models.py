"""Snapshots of projects as coordinators returned them, kept to show the owner's changes on resubmission."""

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from financing.accounts.models import User
from financing.core.time import utcnow
from financing.core.types import UTCDateTime
from financing.extensions import db


class ProjectSnapshot(db.Model):
    """A project's fields, tags and needs at the moment a coordinator returned it."""

    __tablename__ = "project_snapshot"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    taken_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    taken_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    # The return reason that the owner was given.
    reason: Mapped[str] = mapped_column(Text, default="")
    # {"fields": {...}, "tags": {"countries": [...], ...}, "needs": [{...}]}, as built by
    # financing.review.snapshots.project_content; dates are ISO 8601 strings.
    content: Mapped[dict] = mapped_column(JSON)

    taken_by: Mapped[User | None] = relationship()

    __table_args__ = (Index("ix_project_snapshot_project_taken", "project_id", "taken_at"),)
