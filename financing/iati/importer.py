"""Import IATI activity files as published projects with funding needs, funders and pledges.

Mapping, one activity at a time:

- The activity becomes a published project keyed by its iati-identifier, so a second import
  updates the project instead of adding another. Activities without an iati-identifier (the
  pre-1.0 UNDP draft format) are keyed by the reporting organisation and their first
  other-identifier without its leading apostrophe, e.g. "UNDP-00072538"; activities with
  neither are skipped and counted.
- The reporting organisation owns the project. Each funding participating organisation
  becomes a funder, keyed by its IATI reference or by "name:<name>".
- One funding need per activity, "Activity budget", in the activity's default currency. Its
  goal is the largest of the budgets (revised over original per period), the commitments and
  the imported pledges, so it always covers what was committed. Imported needs allow
  over-funding because real data often exceeds its budgets. An activity with no money in that
  currency imports without a need, and the report counts it.
- Commitments (incoming or outgoing) and disbursements (incoming funds or disbursements)
  of each funder add up to one pledge per funder and need, keyed "identifier|funder ref".
  The pledge amount is the larger of the committed and the disbursed sums, because a
  disbursement shows a promise at least that large. The report counts the pledges whose
  disbursements exceed their commitments. A funder that stops appearing has its pledge
  cancelled.
- When an activity reports incoming commitments (type 11), its funders are the providers of
  that incoming money, and the reporting organisation's own outgoing commitments and
  disbursements pass the same money on to implementers. Those are skipped, so that the
  money is not counted twice.
- Activities whose reporting-org is this platform (the IATI_REPORTING_ORG_REF setting) come
  from its own export, so this database is their source. They are skipped and counted,
  because importing them would re-own each project to the platform and add a second need and
  pledges beside the ones the export was made from.

NOTE: a parent activity (hierarchy 1) and its child activities each become a project, so
files that report both, such as the EC d-portal pages, show their money twice.
"""

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path

from flask import current_app, has_app_context
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import selectinload

from financing import reference
from financing.accounts.models import Organisation
from financing.core.time import utcnow
from financing.extensions import db
from financing.funders.models import Funder
from financing.iati import parser
from financing.iati.parser import Activity, ParseError, iter_activities, shorten
from financing.money import MAX_MAJOR_UNITS
from financing.pledges.models import RELEASED_STATES, Pledge
from financing.pledges.services import CONFIRMED_STATES, record
from financing.projects.models import FundingNeed, Project, ProjectTag

logger = logging.getLogger(__name__)

REASON = "IATI import"
NEED_TITLE = "Activity budget"
COMMITMENTS = ("incoming_commitment", "outgoing_commitment")
DISBURSEMENTS = ("incoming_funds", "disbursement")
OUTGOING = ("outgoing_commitment", "disbursement")
TITLE_LENGTH = 300
IDENTIFIER_LENGTH = 300
IMPORT_KEY_LENGTH = 400
# Activities imported with one query each for their projects, needs, pledges and funders.
BATCH_SIZE = 100

# IATI OrganisationType codes (2.0x) and the words 1.0x files use, to Organisation.kind.
ORGANISATION_KINDS = {
    "10": "government", "11": "government", "15": "government",
    "21": "ngo", "22": "ngo", "23": "ngo", "24": "ngo", "60": "ngo",
    "40": "international",
    "70": "company", "71": "company", "72": "company", "73": "company",
    "80": "academic",
    "government": "government", "local government": "government", "other public sector": "government",
    "international ngo": "ngo", "national ngo": "ngo", "regional ngo": "ngo", "ngo": "ngo",
    "foundation": "ngo", "multilateral": "international", "private sector": "company",
    "academic, training and research": "academic",
}


class ImportFailed(Exception):
    """An activity file that was not imported. The database is left as it was before."""

    def __init__(self, path: str | Path, line: int | None, message: str):
        self.path = Path(path)
        self.line = line
        self.message = message
        where = f"{self.path.name} line {line}" if line else self.path.name
        super().__init__(f"{where}: {message}")


@dataclass
class ImportReport:
    """Counts of one file's import. str() gives the one-line summary that the CLI prints."""

    path: str
    activities_created: int = 0
    activities_updated: int = 0
    activities_skipped: Counter = field(default_factory=Counter)
    organisations_created: int = 0
    funders_created: int = 0
    projects_without_need: int = 0
    pledges_created: int = 0
    pledges_updated: int = 0
    pledges_cancelled: int = 0
    transactions_skipped: Counter = field(default_factory=Counter)
    budgets_skipped: Counter = field(default_factory=Counter)
    codes_skipped: Counter = field(default_factory=Counter)
    # Values with more decimals than their currency, rounded half-up to minor units.
    values_rounded: int = 0
    disbursed_beyond_commitment: int = 0

    @staticmethod
    def _counted(counter: Counter) -> str:
        total = sum(counter.values())
        if not total:
            return "0"
        details = ", ".join(f"{reason} {count}" for reason, count in counter.most_common())
        return f"{total} ({details})"

    def __str__(self) -> str:
        parts = [
            f"activities: {self.activities_created} created, {self.activities_updated} updated, "
            f"{self._counted(self.activities_skipped)} skipped",
            f"funders: {self.funders_created} created",
            f"pledges: {self.pledges_created} created, {self.pledges_updated} updated, {self.pledges_cancelled} cancelled",
            f"transactions skipped: {self._counted(self.transactions_skipped)}",
        ]
        if self.organisations_created:
            parts.append(f"organisations: {self.organisations_created} created")
        if self.projects_without_need:
            parts.append(f"projects without a funding need: {self.projects_without_need}")
        if self.budgets_skipped:
            parts.append(f"budgets skipped: {self._counted(self.budgets_skipped)}")
        if self.codes_skipped:
            parts.append(f"codes skipped: {self._counted(self.codes_skipped)}")
        return "; ".join(parts)

    def log(self) -> None:
        logger.info(
            "iati import finished file=%s activities_created=%s activities_updated=%s funders_created=%s "
            "pledges_created=%s pledges_updated=%s pledges_cancelled=%s",
            self.path, self.activities_created, self.activities_updated, self.funders_created,
            self.pledges_created, self.pledges_updated, self.pledges_cancelled,
        )
        for name in ("activities_skipped", "transactions_skipped", "budgets_skipped", "codes_skipped"):
            counter = getattr(self, name)
            if counter:
                logger.info("iati import file=%s %s=%s", self.path, name, self._counted(counter))
        if self.projects_without_need:
            logger.info("iati import file=%s projects_without_need=%s", self.path, self.projects_without_need)
        if self.values_rounded or self.disbursed_beyond_commitment:
            logger.info(
                "iati import file=%s values_rounded=%s disbursed_beyond_commitment=%s",
                self.path, self.values_rounded, self.disbursed_beyond_commitment,
            )


def import_file(path: str | Path, max_bytes: int | None = None) -> ImportReport:
    """Import one IATI activity file in a single transaction and commit it.

    This function commits `db.session` itself when the whole file has been imported, and
    rolls the session back on any error, so a bad file leaves nothing half-written. Call it
    with no other pending changes in the session, because they are committed or rolled back
    with the file. `max_bytes` defaults to the IATI_MAX_FILE_BYTES setting (200 MB).
    Raises ImportFailed, naming the file and the line, for an unreadable or malformed file.
    """
    path = Path(path)
    limit = max_bytes or current_app.config.get("IATI_MAX_FILE_BYTES", parser.DEFAULT_MAX_BYTES)
    report = ImportReport(path=str(path))
    run = _FileImport(report)
    logger.info("iati import started file=%s", path)
    try:
        batch: list[Activity] = []
        for activity in iter_activities(path, limit):
            batch.append(activity)
            if len(batch) == BATCH_SIZE:
                run.import_batch(batch)
                batch = []
        run.import_batch(batch)
        db.session.commit()
    except ParseError as error:
        db.session.rollback()
        logger.warning("iati import failed file=%s line=%s error=%s", path, error.line, error.message)
        raise ImportFailed(path, error.line, error.message) from error
    except SQLAlchemyError as error:
        db.session.rollback()
        logger.exception("iati import failed file=%s line=%s: database error", path, run.line)
        message = f"database error while saving the activities up to this line: {error.__class__.__name__}: {error}"
        raise ImportFailed(path, run.line, message) from error
    except BaseException:
        db.session.rollback()
        logger.exception("iati import failed file=%s line=%s", path, run.line)
        raise
    report.log()
    return report


def clean_ref(ref: str | None) -> str | None:
    """Return an IATI organisation reference, or None for a missing or local one.

    The pre-1.0 UNDP file writes spreadsheet-exported local donor codes such as "'00012".
    A leading apostrophe marks such a code, which is not an IATI organisation identifier.
    """
    if not ref:
        return None
    ref = ref.strip()
    if not ref or ref.startswith("'") or len(ref) > 200:
        return None
    return ref


def organisation_kind(type_code: str | None) -> str:
    return ORGANISATION_KINDS.get((type_code or "").strip().lower(), "other")


def activity_identifier(activity: Activity) -> str | None:
    """Return the iati-identifier, or for files without one the reporting organisation's
    reference or name joined to the first other-identifier without its leading apostrophes."""
    if activity.identifier:
        return activity.identifier
    reporting = activity.reporting_org
    for text, owner_ref, owner_name in activity.other_identifiers:
        local = text.strip().lstrip("'").strip()
        owner = (clean_ref(reporting.ref) or reporting.name) if reporting else None
        owner = owner or clean_ref(owner_ref) or owner_name
        if local and owner:
            return f"{owner}-{local}"
    return None


def import_key(identifier: str, funder_ref: str) -> str:
    key = f"{identifier}|{funder_ref}"
    if len(key) > IMPORT_KEY_LENGTH:
        key = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    return key


def parse_date(value: str | None) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value.strip()[:10])
    except ValueError:
        return None


def parse_percentage(value: str | None) -> Decimal | None:
    """Return a percentage between 0 and 100 with three decimals, or None when invalid."""
    if not value:
        return None
    try:
        number = Decimal(value.strip())
    except InvalidOperation:
        return None
    if not number.is_finite() or not 0 <= number <= 100:
        return None
    return number.quantize(Decimal("0.001"), rounding=ROUND_HALF_UP)


@dataclass
class Amount:
    """A transaction or budget value in minor units, or the reason it cannot be used."""

    minor: int = 0
    skipped: str | None = None
    rounded: bool = False


def parse_value(text: str | None, currency: str) -> Amount:
    """Parse an IATI value with Decimal into minor units of `currency`.

    IATI values may carry more decimals than the currency has, such as 0.005 USD. They are
    rounded half-up to whole minor units and flagged as rounded.
    """
    if not text:
        return Amount(skipped="missing value")
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        return Amount(skipped="unreadable value")
    if not value.is_finite():
        return Amount(skipped="unreadable value")
    if value <= 0:
        return Amount(skipped="zero or negative value")
    if value > MAX_MAJOR_UNITS:
        return Amount(skipped="value above the maximum")
    exponent = reference.currency(currency).minor_units
    rounded = value.quantize(Decimal(1).scaleb(-exponent), rounding=ROUND_HALF_UP)
    minor = int(rounded.scaleb(exponent))
    if minor <= 0:
        return Amount(skipped="zero or negative value")
    return Amount(minor=minor, rounded=rounded != value)


@dataclass
class FunderKey:
    """A funder as one activity names it, before it is looked up or created."""

    ref: str
    name: str
    reporting: bool = False


@dataclass
class Flow:
    """The money one funder committed and disbursed to one activity, in the need's minor units."""

    key: FunderKey
    committed: int = 0
    disbursed: int = 0

    @property
    def amount(self) -> int:
        return max(self.committed, self.disbursed)

    @property
    def state(self) -> str:
        if self.disbursed == 0:
            return "confirmed"
        return "disbursed" if self.disbursed >= self.amount else "partly_disbursed"


class _FileImport:
    """The state of one file's import: the report, per-file caches and the current batch."""

    def __init__(self, report: ImportReport):
        self.report = report
        self.line: int | None = None
        self.seen: set[str] = set()
        self.organisations: dict[str, Organisation] = {}
        self.funders: dict[str, Funder] = {}
        # References looked up and not found, so that funder() creates them without a query.
        self.absent_funders: set[str] = set()
        self.projects: dict[str, Project] = {}
        self.pledges: dict[int, list[Pledge]] = {}
        self.countries = reference.countries()
        self.sectors = reference.sectors()
        self.currencies = reference.currencies()
        # Read without an app too, as benchmarks/matching_quality.py maps activities without one.
        self.own_ref = current_app.config.get("IATI_REPORTING_ORG_REF") if has_app_context() else None

    # Batches and activities

    def import_batch(self, activities: list[Activity]) -> None:
        """Import a batch of activities with a few queries for all of them, then flush."""
        accepted = []
        for activity in activities:
            identifier = self.accept(activity)
            if identifier is not None:
                accepted.append((identifier, activity))
        if not accepted:
            return
        self.prefetch(accepted)
        for identifier, activity in accepted:
            self.line = activity.line
            self.import_activity(identifier, activity)
        db.session.flush()

    def accept(self, activity: Activity) -> str | None:
        """Return the activity's identifier, or None after counting why it is skipped."""
        self.line = activity.line
        identifier = activity_identifier(activity)
        reason = None
        if identifier is None:
            reason = "no usable identifier"
        elif len(identifier) > IDENTIFIER_LENGTH:
            reason = f"identifier longer than {IDENTIFIER_LENGTH} characters"
        elif identifier in self.seen:
            reason = "duplicate identifier in this file"
        elif activity.reporting_org is None or not (clean_ref(activity.reporting_org.ref) or activity.reporting_org.name):
            reason = "no reporting organisation"
        elif self.own_ref and clean_ref(activity.reporting_org.ref) == self.own_ref:
            reason = "reported by this platform"
        if reason:
            self.report.activities_skipped[reason] += 1
            return None
        self.seen.add(identifier)
        return identifier

    def prefetch(self, accepted: list[tuple[str, Activity]]) -> None:
        """Load the batch's projects, needs, pledges and funders in one query each."""
        identifiers = [identifier for identifier, _ in accepted]
        self.projects = {
            project.iati_identifier: project
            for project in db.session.scalars(
                select(Project).where(Project.iati_identifier.in_(identifiers))
                .options(selectinload(Project.tags), selectinload(Project.needs))
            )
        }

        need_ids = sorted(need.id for project in self.projects.values() for need in project.needs)
        self.pledges = {need_id: [] for need_id in need_ids}
        if need_ids:
            # Lock the needs, so that a concurrent pledge cannot change their totals meanwhile.
            db.session.scalars(
                select(FundingNeed).where(FundingNeed.id.in_(need_ids)).order_by(FundingNeed.id)
                .with_for_update().execution_options(populate_existing=True)
            ).all()
            for pledge in db.session.scalars(select(Pledge).where(Pledge.need_id.in_(need_ids)).order_by(Pledge.id)):
                self.pledges[pledge.need_id].append(pledge)

        refs = set()
        for _, activity in accepted:
            refs.add(self.reporting_key(activity).ref)
            for org in activity.funding_orgs:
                key = self.participant_key(activity, org)
                if key is not None:
                    refs.add(key.ref)
            for transaction in activity.transactions:
                if self.transaction_skip_reason(transaction) is None:
                    refs.add(self.transaction_funder(activity, transaction).ref)
        refs -= self.funders.keys() | self.absent_funders
        if refs:
            for funder in db.session.scalars(select(Funder).where(Funder.iati_ref.in_(sorted(refs)))):
                self.funders[funder.iati_ref] = funder
            self.absent_funders |= refs - self.funders.keys()

    def import_activity(self, identifier: str, activity: Activity) -> None:
        owner = self.organisation(activity.reporting_org)
        for org in activity.funding_orgs:
            key = self.participant_key(activity, org)
            if key is not None:
                self.funder(key, activity)

        project = self.projects.get(identifier)
        if project is None:
            project = Project(
                iati_identifier=identifier, status="published", source="iati", published_at=utcnow(),
                organisation=owner,
            )
            db.session.add(project)
            self.report.activities_created += 1
        else:
            project.organisation = owner
            self.report.activities_updated += 1
        self.fill_project(project, activity, identifier)
        self.sync_funding(project, activity, identifier)

    def fill_project(self, project: Project, activity: Activity, identifier: str) -> None:
        title = activity.title or f"IATI activity {identifier}"
        if len(title) > TITLE_LENGTH:
            title = shorten(title, TITLE_LENGTH - 1)
        summary = shorten(activity.description or activity.objectives)
        description = activity.description or activity.objectives
        start = parse_date(activity.dates.get("start_actual") or activity.dates.get("start_planned"))
        end = parse_date(activity.dates.get("end_actual") or activity.dates.get("end_planned"))
        if start and end and end < start:
            # Some files report an end before the start; the platform rejects that range.
            end = None
        for name, value in (("title", title), ("summary", summary), ("description", description), ("start_date", start), ("end_date", end)):
            if getattr(project, name) != value:
                setattr(project, name, value)
        self.set_tags(project, self.tags(activity))

    def tags(self, activity: Activity) -> dict[tuple[str, str], Decimal | None]:
        """Map the activity's countries, regions and sectors to (kind, code) -> percentage."""
        tags: dict[tuple[str, str], Decimal | None] = {}
        for item in activity.countries:
            code = item.code.upper()
            if code not in self.countries:
                self.report.codes_skipped[self.unknown_reason("country", code, reference.country)] += 1
                continue
            tags.setdefault(("country", code), parse_percentage(item.percentage))

        for item in activity.regions:
            if (item.vocabulary or "1") != "1":
                continue
            try:
                slugs = reference.regions_of_iati_region(item.code)
            except reference.UnknownIatiRegion:
                self.report.codes_skipped["unknown region code"] += 1
                continue
            for slug in slugs:
                tags.setdefault(("region", slug), None)

        theme_shares: dict[str, Decimal | None] = {}
        for item in activity.sectors:
            vocabulary = (item.vocabulary or "1").lower()
            if vocabulary in ("2", "dac-3"):
                # DAC 3-digit categories name no 5-digit sector and no theme.
                self.report.codes_skipped["sector category (vocabulary 2)"] += 1
                continue
            if vocabulary not in ("1", "dac"):
                continue
            if item.code not in self.sectors:
                self.report.codes_skipped[self.unknown_reason("sector", item.code, reference.sector)] += 1
                continue
            if ("sector", item.code) in tags:
                continue
            share = parse_percentage(item.percentage)
            tags[("sector", item.code)] = share
            # A theme's share is the sum of its sectors' shares, unknown if any share is.
            for slug in reference.themes_of_sector(item.code):
                if slug not in theme_shares:
                    theme_shares[slug] = share
                elif theme_shares[slug] is None or share is None:
                    theme_shares[slug] = None
                else:
                    theme_shares[slug] += share
        for slug, share in theme_shares.items():
            tags[("theme", slug)] = min(share, Decimal(100)) if share is not None else None
        return tags

    @staticmethod
    def unknown_reason(kind: str, code: str, lookup) -> str:
        """Name why a code is not tagged: withdrawn from its codelist, or unknown."""
        try:
            return f"withdrawn {kind} code" if lookup(code).withdrawn else f"inactive {kind} code"
        except reference.UnknownCode:
            return f"unknown {kind} code"

    @staticmethod
    def set_tags(project: Project, tags: dict[tuple[str, str], Decimal | None]) -> None:
        existing = {(tag.kind, tag.code): tag for tag in project.tags}
        for key, tag in existing.items():
            if key not in tags:
                project.tags.remove(tag)
        for (kind, code), percentage in tags.items():
            tag = existing.get((kind, code))
            if tag is None:
                project.tags.append(ProjectTag(kind=kind, code=code, percentage=percentage))
            elif tag.percentage != percentage:
                tag.percentage = percentage

    # Organisations and funders

    def organisation(self, org: parser.Organisation) -> Organisation:
        """Return the organisation with this IATI reference, else this name; create it if missing."""
        ref = clean_ref(org.ref)
        name = (org.name or ref or "")[:300]
        cache_key = ref or "name:" + name.lower()
        if cache_key in self.organisations:
            return self.organisations[cache_key]

        row = db.session.scalar(select(Organisation).where(Organisation.iati_ref == ref)) if ref else None
        if row is None:
            row = db.session.scalar(select(Organisation).where(func.lower(Organisation.name) == name.lower()))
            if row is not None and ref and row.iati_ref is None:
                row.iati_ref = ref
            elif row is not None and ref and row.iati_ref != ref:
                # Another organisation already has this name, so this one gets its reference appended.
                name = f"{name[:280]} ({ref[:16]})"
                row = db.session.scalar(select(Organisation).where(func.lower(Organisation.name) == name.lower()))
        if row is None:
            row = Organisation(name=name, kind=organisation_kind(org.type), iati_ref=ref)
            db.session.add(row)
            self.report.organisations_created += 1
            logger.debug("iati organisation created name=%r iati_ref=%s", name, ref)
        self.organisations[cache_key] = row
        return row

    @staticmethod
    def reporting_key(activity: Activity) -> FunderKey:
        org = activity.reporting_org
        ref = clean_ref(org.ref)
        return FunderKey(ref=ref or f"name:{org.name}"[:300], name=org.name or ref, reporting=True)

    def participant_key(self, activity: Activity, org: parser.Organisation) -> FunderKey | None:
        """Return the funder key of a participating or provider organisation, or None if unnamed."""
        ref = clean_ref(org.ref)
        reporting = self.reporting_key(activity)
        if ref:
            name = org.name or next((o.name for o in activity.participating if clean_ref(o.ref) == ref and o.name), "")
            if not name and ref == reporting.ref:
                name = reporting.name
            return FunderKey(ref=ref, name=name or ref, reporting=ref == reporting.ref)
        if not org.name:
            return None
        key = f"name:{org.name}"[:300]
        return FunderKey(ref=key, name=org.name, reporting=key == reporting.ref)

    def transaction_funder(self, activity: Activity, transaction: parser.Transaction) -> FunderKey:
        """Return the provider of a transaction, else the single funding organisation, else the reporter."""
        provider = transaction.provider
        if provider is not None and clean_ref(provider.ref):
            return self.participant_key(activity, provider)
        if provider is not None and provider.name:
            provider_name = provider.name.casefold()
            for org in activity.funding_orgs:
                if org.name.casefold() == provider_name:
                    return self.participant_key(activity, org)
            return self.participant_key(activity, provider)
        funders = {key.ref: key for key in (self.participant_key(activity, org) for org in activity.funding_orgs) if key}
        if len(funders) == 1:
            return next(iter(funders.values()))
        return self.reporting_key(activity)

    def funder(self, key: FunderKey, activity: Activity) -> Funder:
        """Return the funder with this IATI reference; create it if missing."""
        if key.ref in self.funders:
            row = self.funders[key.ref]
            if row.name == key.ref and key.name != key.ref:
                row.name = key.name[:300]
            return row
        row = None
        if key.ref not in self.absent_funders:
            row = db.session.scalar(select(Funder).where(Funder.iati_ref == key.ref))
        owner = self.organisation(activity.reporting_org) if key.reporting else None
        if row is None and owner is not None and owner.id is not None:
            # A donor account of the reporting organisation may already have a funder profile.
            row = db.session.scalar(select(Funder).where(Funder.organisation_id == owner.id, Funder.iati_ref.is_(None)))
            if row is not None:
                row.iati_ref = key.ref
        if row is None:
            currency = (activity.default_currency or "").upper()
            row = Funder(
                name=key.name[:300], kind="institution", iati_ref=key.ref,
                currency=currency if currency in self.currencies else "EUR",
            )
            if owner is not None and not self.organisation_has_funder(owner):
                row.organisation = owner
            db.session.add(row)
            self.report.funders_created += 1
            logger.debug("iati funder created name=%r iati_ref=%s", row.name, key.ref)
        self.funders[key.ref] = row
        return row

    @staticmethod
    def organisation_has_funder(organisation: Organisation) -> bool:
        if organisation.id is None:
            return any(isinstance(obj, Funder) and obj.organisation is organisation for obj in db.session.new)
        return db.session.scalar(select(Funder.id).where(Funder.organisation_id == organisation.id)) is not None

    # Funding need and pledges

    def need_currency(self, activity: Activity, need: FundingNeed | None) -> str | None:
        """Return the need's currency: kept once set, else the default, else the most used one."""
        if need is not None:
            # NOTE: when a publisher changes an activity's currency, the need keeps the first
            # one, and values in the new currency are skipped as another currency.
            return need.currency
        default = (activity.default_currency or "").upper()
        if default in self.currencies:
            return default
        used = Counter()
        for budget in activity.budgets:
            used[(budget.currency or "").upper()] += 1
        for transaction in activity.transactions:
            if transaction.type in COMMITMENTS + DISBURSEMENTS:
                used[(transaction.currency or "").upper()] += 1
        for code, _ in used.most_common():
            if code in self.currencies:
                return code
        return None

    def budget_total(self, activity: Activity, currency: str) -> int:
        """Sum the budgets in the need's currency, taking revised over original per period."""
        periods: dict[tuple[str | None, str | None], dict[str, int]] = {}
        for budget in activity.budgets:
            budget_currency = (budget.currency or activity.default_currency or "").upper()
            if budget_currency != currency:
                self.report.budgets_skipped["other currency (no stored rate)"] += 1
                continue
            amount = parse_value(budget.value, currency)
            if amount.skipped:
                self.report.budgets_skipped[amount.skipped] += 1
                continue
            self.report.values_rounded += amount.rounded
            kinds = periods.setdefault((budget.period_start, budget.period_end), {})
            kinds[budget.kind] = kinds.get(budget.kind, 0) + amount.minor
        return sum(kinds.get("revised", kinds.get("original", 0)) for kinds in periods.values())

    def flows(self, activity: Activity, currency: str | None) -> dict[str, Flow]:
        """Add up each funder's commitments and disbursements in the need's currency."""
        flows: dict[str, Flow] = {}
        has_incoming = any(t.type == "incoming_commitment" for t in activity.transactions)
        for transaction in activity.transactions:
            skipped = self.transaction_skip_reason(transaction)
            if skipped:
                self.report.transactions_skipped[skipped] += 1
                continue
            if currency is None:
                self.report.transactions_skipped["no currency for the activity"] += 1
                continue
            if (transaction.currency or activity.default_currency or "").upper() != currency:
                # NOTE: exchange rates are not stored yet, so values in another currency than
                # the need's are left out.
                self.report.transactions_skipped["other currency (no stored rate)"] += 1
                continue
            amount = parse_value(transaction.value, currency)
            if amount.skipped:
                self.report.transactions_skipped[amount.skipped] += 1
                continue
            key = self.transaction_funder(activity, transaction)
            if has_incoming and key.reporting and transaction.type in OUTGOING:
                self.report.transactions_skipped["passed on by the reporting organisation"] += 1
                continue
            self.report.values_rounded += amount.rounded
            flow = flows.setdefault(key.ref, Flow(key))
            if transaction.type in COMMITMENTS:
                flow.committed += amount.minor
            else:
                flow.disbursed += amount.minor
        return flows

    @staticmethod
    def transaction_skip_reason(transaction: parser.Transaction) -> str | None:
        if transaction.type in COMMITMENTS or transaction.type in DISBURSEMENTS:
            return None
        return "type " + transaction.type.replace("_", " ")

    def sync_funding(self, project: Project, activity: Activity, identifier: str) -> None:
        """Create or update the activity's funding need and its imported pledges."""
        need = next((n for n in project.needs if n.title == NEED_TITLE), None)
        if need is None and project.source == "iati" and project.needs:
            need = project.needs[0]
        currency = self.need_currency(activity, need)
        flows = self.flows(activity, currency)
        budget = self.budget_total(activity, currency) if currency else 0
        goal = max([budget] + [flow.amount for flow in flows.values()])
        for flow in flows.values():
            if flow.committed and flow.disbursed > flow.committed:
                self.report.disbursed_beyond_commitment += 1

        if need is None:
            if goal <= 0:
                self.report.projects_without_need += 1
                return
            need = FundingNeed(
                project=project, title=NEED_TITLE, currency=currency, goal_minor=goal,
                pledged_minor=0, allow_overfunding=True, status="open", position=len(project.needs),
            )
            # SQLAlchemy 2 does not cascade a backref assignment into the session.
            db.session.add(need)
            pledges: list[Pledge] = []
        else:
            pledges = list(self.pledges.get(need.id, []))
            if goal > 0 and need.goal_minor != goal:
                need.goal_minor = goal

        pledges += self.sync_pledges(need, pledges, flows, identifier, activity)
        active = [p for p in pledges if p.state not in RELEASED_STATES]
        pledged = sum(p.need_amount_minor for p in active)
        confirmed = sum(p.need_amount_minor for p in active if p.state in CONFIRMED_STATES)
        if need.pledged_minor != pledged:
            need.pledged_minor = pledged
        if need.status != "closed":
            status = "funded" if confirmed >= need.goal_minor else "open"
            if need.status != status:
                need.status = status
        if project.status in ("published", "funded"):
            funded = all(n.status == "funded" for n in project.needs)
            status = "funded" if funded else "published"
            if project.status != status:
                project.status = status

    def sync_pledges(self, need: FundingNeed, pledges: list[Pledge], flows: dict[str, Flow], identifier: str, activity: Activity) -> list[Pledge]:
        """Bring the imported pledges in line with the flows and return the new pledges."""
        imported = {p.import_key: p for p in pledges if p.import_key}
        created = []
        for flow in flows.values():
            funder = self.funder(flow.key, activity)
            key = import_key(identifier, flow.key.ref)
            pledge = imported.pop(key, None)
            if pledge is None:
                created.append(self.create_pledge(need, funder, key, flow))
            elif self.update_pledge(pledge, flow):
                self.report.pledges_updated += 1
        for pledge in imported.values():
            if pledge.state not in RELEASED_STATES:
                record(pledge, None, pledge.state, "cancelled", pledge.need_amount_minor, f"{REASON}: no longer reported in the file")
                pledge.state = "cancelled"
                self.report.pledges_cancelled += 1
        return created

    def create_pledge(self, need: FundingNeed, funder: Funder, key: str, flow: Flow) -> Pledge:
        pledge = Pledge(
            need=need, funder=funder, kind="commitment", state="confirmed",
            amount_minor=flow.amount, currency=need.currency, need_amount_minor=flow.amount,
            rate=Decimal(1), disbursed_minor=0, import_key=key,
        )
        db.session.add(pledge)
        record(pledge, None, None, "confirmed", flow.amount, REASON)
        if flow.disbursed:
            pledge.disbursed_minor = flow.disbursed
            pledge.state = flow.state
            record(pledge, None, "confirmed", flow.state, flow.disbursed, REASON)
        self.report.pledges_created += 1
        return pledge

    @staticmethod
    def update_pledge(pledge: Pledge, flow: Flow) -> bool:
        """Apply a re-imported flow to its pledge, writing a ledger row per change."""
        changed = False
        if pledge.state in RELEASED_STATES:
            record(pledge, None, pledge.state, "confirmed", flow.amount, f"{REASON}: reported again")
            pledge.state = "confirmed"
            changed = True
        if pledge.need_amount_minor != flow.amount:
            reason = f"{REASON}: amount changed from {pledge.need_amount_minor} to {flow.amount} minor units"
            record(pledge, None, pledge.state, pledge.state, flow.amount, reason)
            pledge.amount_minor = flow.amount
            pledge.need_amount_minor = flow.amount
            changed = True
        if pledge.disbursed_minor != flow.disbursed or pledge.state != flow.state:
            change = flow.disbursed - pledge.disbursed_minor
            reason = REASON if change >= 0 else f"{REASON}: disbursed amount corrected from {pledge.disbursed_minor} to {flow.disbursed} minor units"
            record(pledge, None, pledge.state, flow.state, abs(change), reason)
            pledge.disbursed_minor = flow.disbursed
            pledge.state = flow.state
            changed = True
        return changed
