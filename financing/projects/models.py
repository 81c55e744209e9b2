"""Projects, their country/region/theme/sector tags and their funding needs."""

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import DDL, BigInteger, CheckConstraint, ForeignKey, Index, String, Text, event, text
from sqlalchemy.orm import Mapped, mapped_column, relationship, validates

from financing.accounts.models import Organisation
from financing.core.codes import CodesMixin
from financing.core.search import search_text
from financing.core.time import utcnow
from financing.core.types import ExactDecimal, UTCDateTime
from financing.extensions import db

PROJECT_STATUSES = ("draft", "submitted", "returned", "published", "funded", "closed", "withdrawn")
# Statuses in which everyone may see a project.
PUBLIC_STATUSES = ("published", "funded", "closed")
NEED_STATUSES = ("open", "funded", "closed")
TAG_KINDS = ("country", "region", "theme", "sector")


class Project(CodesMixin, db.Model):
    _code_rows = "tags"
    __tablename__ = "project"

    id: Mapped[int] = mapped_column(primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisation.id"), index=True)
    title: Mapped[str] = mapped_column(String(300))
    summary: Mapped[str] = mapped_column(String(1000), default="")
    # Markdown source; rendered and sanitised on display.
    description: Mapped[str] = mapped_column(Text, default="")
    # Title and summary folded by financing.core.search.fold, for the `q` search.
    # `_keep_search_text` recomputes it whenever either is assigned.
    search_text: Mapped[str] = mapped_column(Text, default="", server_default="")
    status: Mapped[str] = mapped_column(String(20), default="draft")
    iati_identifier: Mapped[str | None] = mapped_column(String(300), unique=True)
    start_date: Mapped[date | None]
    end_date: Mapped[date | None]
    return_reason: Mapped[str | None] = mapped_column(Text)
    # True for demo data whose goals and needs are invented for illustration.
    illustrative: Mapped[bool] = mapped_column(default=False)
    source: Mapped[str] = mapped_column(String(10), default="form")
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    organisation: Mapped[Organisation] = relationship()
    needs: Mapped[list["FundingNeed"]] = relationship(
        back_populates="project", order_by="FundingNeed.position, FundingNeed.id",
        cascade="all, delete-orphan",
    )
    tags: Mapped[list["ProjectTag"]] = relationship(
        back_populates="project", cascade="all, delete-orphan", order_by="ProjectTag.code"
    )

    __table_args__ = (
        CheckConstraint(f"status IN {PROJECT_STATUSES!r}", name="status"),
        CheckConstraint("source IN ('form', 'api', 'iati', 'demo', 'csv')", name="source"),
        # With the id, counting the projects of some statuses that have some tags reads
        # only this index, not the wide project rows.
        Index("ix_project_status_id", "status", "id"),
        # The order of the public lists' "newest" and "oldest" sorts (read backwards for
        # newest), so that a page reads its rows in order and stops instead of sorting every
        # matching project. Only public projects are in it, because a backward scan of all
        # projects would first pass every never-published one (published_at NULL).
        Index(
            "ix_project_public_published_at_id", "published_at", "id",
            postgresql_where=text(f"status IN {PUBLIC_STATUSES!r}"),
            sqlite_where=text(f"status IN {PUBLIC_STATUSES!r}"),
        ),
        # Trigrams of the folded title and summary, so that the search box's LIKE '%word%'
        # reads an index on PostgreSQL. SQLite has no such index, and scans the rows left by
        # the other filters.
        Index(
            "ix_project_search_text_trgm", "search_text", postgresql_using="gin",
            postgresql_ops={"search_text": "gin_trgm_ops"}, info={"dialect": "postgresql"},
        ).ddl_if(dialect="postgresql"),
    )

    @validates("title", "summary")
    def _keep_search_text(self, key: str, value: str | None) -> str | None:
        title = value if key == "title" else self.title
        summary = value if key == "summary" else self.summary
        self.search_text = search_text(title, summary)
        return value


# The trigram operator class of ix_project_search_text_trgm comes from this extension. Any user
# with the CREATE privilege on the database may create it, because PostgreSQL 13 and later
# mark pg_trgm as trusted.
event.listen(
    Project.__table__, "before_create", DDL("CREATE EXTENSION IF NOT EXISTS pg_trgm").execute_if(dialect="postgresql")
)


class ProjectTag(db.Model):
    """One recipient country, region, theme or DAC sector of a project."""

    __tablename__ = "project_tag"

    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(10), primary_key=True)
    code: Mapped[str] = mapped_column(String(30), primary_key=True)
    # Share of the project in this country or sector, as IATI reports it; None when not given.
    percentage: Mapped[Decimal | None] = mapped_column(ExactDecimal(7, 3))

    project: Mapped[Project] = relationship(back_populates="tags")

    __table_args__ = (
        CheckConstraint(f"kind IN {TAG_KINDS!r}", name="kind"),
        Index("ix_project_tag_kind_code", "kind", "code"),
    )


class FundingNeed(db.Model):
    __tablename__ = "funding_need"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(300))
    # Amounts are integer minor units of `currency` (ISO 4217).
    goal_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    # Sum of the need-currency amounts of pledges that are not cancelled or refunded. Kept in
    # step by the pledge service in the same transaction, so a conditional UPDATE can enforce
    # the goal under concurrent pledges.
    pledged_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    deadline: Mapped[date | None]
    allow_overfunding: Mapped[bool] = mapped_column(default=False)
    status: Mapped[str] = mapped_column(String(10), default="open")
    position: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    project: Mapped[Project] = relationship(back_populates="needs")

    __table_args__ = (
        CheckConstraint("goal_minor > 0", name="goal_positive"),
        CheckConstraint("pledged_minor >= 0", name="pledged_not_negative"),
        CheckConstraint(f"status IN {NEED_STATUSES!r}", name="status"),
    )

    @property
    def remaining_minor(self) -> int:
        return max(self.goal_minor - self.pledged_minor, 0)
