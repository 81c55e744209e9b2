"""IATI 2.03 activity XML of the published and funded projects, built with lxml.

Mapping, one project at a time:

- The iati-identifier is the project's own when it was imported from IATI, else the reporting
  organisation's identifier joined to the project id, such as "XX-FINANCING-PLATFORM-42".
- The reporting-org is this platform (IATI_REPORTING_ORG_REF, _NAME and _TYPE settings). For
  projects imported from another publisher it is marked as a secondary reporter.
- The owner organisation is the implementing participating-org (role 4), and the funder of
  each exported pledge a funding participating-org (role 1).
- Countries and ITU-D regions become recipient-country and recipient-region (DAC vocabulary
  1), and DAC sectors sector elements (vocabulary 1). Percentages are the stored ones scaled
  to 100, or an even split when a share is unknown.
- Each confirmed, partly disbursed or disbursed pledge is a commitment (transaction type 2)
  of its active amount, and its disbursed amount a disbursement (type 3), both in the need's
  currency, with the funder as provider-org.

The output is one XML document written activity by activity, so the export keeps at most one
batch of projects in memory.
"""

import io
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import ROUND_DOWN, Decimal
from pathlib import Path

from flask import current_app
from lxml import etree
from sqlalchemy import Select, select
from sqlalchemy.orm import selectinload

from financing import reference
from financing.core.time import utcnow
from financing.extensions import db
from financing.money import amount_text
from financing.pledges.models import Pledge
from financing.pledges.services import CONFIRMED_STATES
from financing.projects.models import FundingNeed, Project, ProjectTag
from financing.projects.services import ProjectFilters, search_query

logger = logging.getLogger(__name__)

IATI_VERSION = "2.03"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
EXPORTED_STATUSES = ("published", "funded")
BATCH_SIZE = 200
SCHEMA_FILE = "iati-activities-schema.xsd"

# IATI TransactionType codes.
COMMITMENT = "2"
DISBURSEMENT = "3"
# IATI ActivityDateType codes.
PLANNED_START = "1"
PLANNED_END = "3"
# IATI ActivityStatus codes.
STATUS_PIPELINE = "1"
STATUS_IMPLEMENTATION = "2"
STATUS_FINALISATION = "3"
# IATI OrganisationRole codes.
ROLE_FUNDING = "1"
ROLE_IMPLEMENTING = "4"
# OECD DAC vocabulary of the SectorVocabulary and RegionVocabulary codelists.
DAC_VOCABULARY = "1"

# IATI OrganisationType code of each Organisation.kind; "90" is Other.
ORGANISATION_TYPES = {
    "government": "10", "regulator": "10", "operator": "70", "ngo": "22",
    "international": "40", "company": "70", "academic": "80",
}
OTHER_ORGANISATION_TYPE = "90"
# The OECD DAC regional code closest to each ITU-D region. The DAC regions are cut
# differently, so the mapping is approximate: Africa is "South of Sahara, regional", the Arab
# States "Middle East, regional", Asia and the Pacific "Asia, regional" and the CIS "Central
# Asia, regional".
REGION_CODES = {
    "africa": "289", "americas": "498", "arab-states": "589",
    "asia-pacific": "798", "cis": "619", "europe": "89",
}
HUNDRED = Decimal(100)
CENT = Decimal("0.01")
# Characters that XML 1.0 does not allow in text, such as most ASCII control characters.
_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class ReportingOrg:
    """The organisation that publishes the export: this platform."""

    ref: str
    name: str
    type: str

    @classmethod
    def from_config(cls) -> "ReportingOrg":
        config = current_app.config
        return cls(config["IATI_REPORTING_ORG_REF"], config["IATI_REPORTING_ORG_NAME"], config["IATI_REPORTING_ORG_TYPE"])


def xml_text(value: object) -> str:
    """Return text without the characters that XML 1.0 forbids, which lxml would reject."""
    return _NOT_XML.sub("", str(value))


def decimal_text(value: Decimal) -> str:
    """Write a Decimal as plain digits without an exponent or trailing zeros, such as "33.33"."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def activity_identifier(project: Project, reporting: ReportingOrg) -> str:
    return project.iati_identifier or f"{reporting.ref}-{project.id}"


def shares(stored: list[Decimal | None]) -> list[Decimal]:
    """Return percentages that add up to exactly 100, with two decimals at most.

    Stored shares are scaled to 100, which keeps their proportions. When a share is unknown
    or all are zero, every item gets an even share. The rounding remainder goes to the first.
    """
    if not stored:
        return []
    known = [share for share in stored if share is not None]
    total = sum(known, Decimal(0))
    if len(known) == len(stored) and total > 0:
        weights = known
    else:
        weights, total = [Decimal(1)] * len(stored), Decimal(len(stored))
    result = [(weight * HUNDRED / total).quantize(CENT, rounding=ROUND_DOWN) for weight in weights]
    result[0] += HUNDRED - sum(result, Decimal(0))
    return result


def activity_status(project: Project, today: date) -> str:
    """Pick an IATI ActivityStatus from the project's dates.

    The platform stores no implementation status, so a project counts as in the pipeline
    until its start date, in implementation from then, and in finalisation after its end date.
    """
    if project.end_date is not None and project.end_date < today:
        return STATUS_FINALISATION
    if project.start_date is not None and project.start_date <= today:
        return STATUS_IMPLEMENTATION
    return STATUS_PIPELINE


def _sub(parent: etree._Element, tag: str, attributes: dict[str, str] | None = None) -> etree._Element:
    return etree.SubElement(parent, tag, {name: xml_text(value) for name, value in (attributes or {}).items()})


def _narrative(parent: etree._Element, text: str) -> etree._Element:
    narrative = _sub(parent, "narrative")
    narrative.text = xml_text(text)
    return narrative


def _organisation(parent: etree._Element, tag: str, ref: str | None, name: str, attributes: dict[str, str]) -> etree._Element:
    if ref:
        attributes = {"ref": ref, **attributes}
    element = _sub(parent, tag, attributes)
    _narrative(element, name)
    return element


def _funder_ref(iati_ref: str | None) -> str | None:
    """Return a funder's IATI organisation identifier, or None for an unknown or name-only one."""
    if not iati_ref or iati_ref.startswith("name:"):
        return None
    return iati_ref


def _day(value: datetime) -> str:
    return value.date().isoformat()


@dataclass
class _Transaction:
    type: str
    day: str
    amount_minor: int
    currency: str
    pledge: Pledge


def transactions(pledges: list[Pledge], needs: dict[int, FundingNeed]) -> list[_Transaction]:
    """Turn pledges into a commitment each and a disbursement for any disbursed amount.

    The commitment is dated by the pledge's confirmation in the ledger and the disbursement by
    its latest disbursement, falling back to the pledge's creation and last change.
    """
    result = []
    for pledge in pledges:
        need = needs[pledge.need_id]
        # NOTE: pledges imported from IATI carry the import time in the ledger, because the
        # importer keeps no transaction dates, so their transactions are dated by the import.
        confirmed_at = next((event.at for event in pledge.events if event.to_state == "confirmed"), pledge.created_at)
        committed = pledge.need_amount_minor - pledge.refunded_minor
        if committed > 0:
            result.append(_Transaction(COMMITMENT, _day(confirmed_at), committed, need.currency, pledge))
        if pledge.disbursed_minor > 0:
            disbursed_at = next(
                (event.at for event in reversed(pledge.events) if event.to_state in ("partly_disbursed", "disbursed")),
                pledge.updated_at,
            )
            result.append(_Transaction(DISBURSEMENT, _day(disbursed_at), pledge.disbursed_minor, need.currency, pledge))
    return result


def _places(project: Project) -> list[tuple[str, str, Decimal | None]]:
    """List (element, code, stored share) of the recipient countries and regions.

    A region that contains one of the project's countries adds nothing and is left out.
    """
    countries = [tag for tag in project.tags if tag.kind == "country"]
    places = [("recipient-country", tag.code, tag.percentage) for tag in countries]
    covered = {reference.region_of_country(tag.code) for tag in countries}
    seen = set()
    for tag in project.tags:
        if tag.kind != "region" or tag.code in covered:
            continue
        code = REGION_CODES[tag.code]
        if code not in seen:
            seen.add(code)
            places.append(("recipient-region", code, None))
    return places


def _add_places(activity: etree._Element, project: Project) -> None:
    places = _places(project)
    percentages = shares([share for _, _, share in places])
    for (tag, code, _), percentage in zip(places, percentages):
        attributes = {"code": code}
        if tag == "recipient-region":
            attributes["vocabulary"] = DAC_VOCABULARY
        attributes["percentage"] = decimal_text(percentage)
        _sub(activity, tag, attributes)


def _add_sectors(activity: etree._Element, project: Project) -> None:
    sectors: list[ProjectTag] = [tag for tag in project.tags if tag.kind == "sector"]
    for tag, percentage in zip(sectors, shares([tag.percentage for tag in sectors])):
        _sub(activity, "sector", {"vocabulary": DAC_VOCABULARY, "code": tag.code, "percentage": decimal_text(percentage)})


def _add_dates(activity: etree._Element, project: Project) -> None:
    if project.start_date is not None:
        _sub(activity, "activity-date", {"type": PLANNED_START, "iso-date": project.start_date.isoformat()})
    else:
        # IATI requires a start date. The publication date is the closest fact the platform has.
        published = (project.published_at or project.created_at).date()
        element = _sub(activity, "activity-date", {"type": PLANNED_START, "iso-date": published.isoformat()})
        _narrative(element, "No start date given; this is the date the project was published on the platform.")
    if project.end_date is not None:
        _sub(activity, "activity-date", {"type": PLANNED_END, "iso-date": project.end_date.isoformat()})


def _add_budgets(activity: etree._Element, project: Project) -> None:
    """Add one indicative budget per currency of the needs, when the project has a period."""
    if project.start_date is None or project.end_date is None:
        return
    goals: dict[str, int] = {}
    for need in project.needs:
        goals[need.currency] = goals.get(need.currency, 0) + need.goal_minor
    for currency, goal in goals.items():
        # Type 1 is an original budget and status 1 an indicative one.
        budget = _sub(activity, "budget", {"type": "1", "status": "1"})
        _sub(budget, "period-start", {"iso-date": project.start_date.isoformat()})
        _sub(budget, "period-end", {"iso-date": project.end_date.isoformat()})
        value = _sub(budget, "value", {"currency": currency, "value-date": project.start_date.isoformat()})
        value.text = amount_text(goal, currency)


def _add_transaction(activity: etree._Element, item: _Transaction, project: Project) -> None:
    element = _sub(activity, "transaction", {"ref": f"pledge-{item.pledge.id}-{item.type}"})
    _sub(element, "transaction-type", {"code": item.type})
    _sub(element, "transaction-date", {"iso-date": item.day})
    value = _sub(element, "value", {"currency": item.currency, "value-date": item.day})
    value.text = amount_text(item.amount_minor, item.currency)
    funder = item.pledge.funder
    _organisation(element, "provider-org", _funder_ref(funder.iati_ref), funder.name, {})
    _organisation(element, "receiver-org", project.organisation.iati_ref, project.organisation.name, {})


def activity_element(project: Project, pledges: list[Pledge], reporting: ReportingOrg, today: date) -> etree._Element:
    """Build the iati-activity element of one project and its confirmed pledges.

    Child elements follow the order that the 2.03 schema's sequence requires.
    """
    updated = max([project.updated_at, *(pledge.updated_at for pledge in pledges)])
    attributes = {"last-updated-datetime": updated.isoformat(timespec="seconds"), XML_LANG: "en", "hierarchy": "1"}
    if project.needs:
        attributes["default-currency"] = project.needs[0].currency
    activity = etree.Element("iati-activity", {name: xml_text(value) for name, value in attributes.items()})

    _sub(activity, "iati-identifier").text = xml_text(activity_identifier(project, reporting))
    reporter = {"type": reporting.type}
    if project.source == "iati":
        reporter["secondary-reporter"] = "1"
    _organisation(activity, "reporting-org", reporting.ref, reporting.name, reporter)
    _narrative(_sub(activity, "title"), project.title)
    _narrative(_sub(activity, "description", {"type": "1"}), project.description or project.summary or project.title)

    funders = {}
    for pledge in pledges:
        funders.setdefault(pledge.funder_id, pledge.funder)
    for funder in funders.values():
        _organisation(activity, "participating-org", _funder_ref(funder.iati_ref), funder.name, {"role": ROLE_FUNDING})
    owner = project.organisation
    owner_type = ORGANISATION_TYPES.get(owner.kind, OTHER_ORGANISATION_TYPE)
    _organisation(activity, "participating-org", owner.iati_ref, owner.name, {"role": ROLE_IMPLEMENTING, "type": owner_type})

    _sub(activity, "activity-status", {"code": activity_status(project, today)})
    _add_dates(activity, project)
    _add_places(activity, project)
    _add_sectors(activity, project)
    _add_budgets(activity, project)
    needs = {need.id: need for need in project.needs}
    for item in transactions(pledges, needs):
        _add_transaction(activity, item, project)
    return activity


# Selecting and streaming


def exported_projects_query(filters: ProjectFilters) -> Select:
    """Build the query of the published and funded projects that match the list filters."""
    statuses = EXPORTED_STATUSES
    if filters.status:
        statuses = tuple(status for status in EXPORTED_STATUSES if status == filters.status)
    query = search_query(replace(filters, status=None), public=False).where(Project.status.in_(statuses))
    return query.order_by(None).order_by(Project.id).options(
        selectinload(Project.needs), selectinload(Project.tags), selectinload(Project.organisation),
    )


def _pledges_by_project(projects: list[Project]) -> dict[int, list[Pledge]]:
    """Load the confirmed and disbursed pledges of a batch of projects in one query."""
    result: dict[int, list[Pledge]] = {project.id: [] for project in projects}
    query = (
        select(Pledge, FundingNeed.project_id)
        .join(FundingNeed, Pledge.need_id == FundingNeed.id)
        .where(FundingNeed.project_id.in_(list(result)), Pledge.state.in_(CONFIRMED_STATES))
        .options(selectinload(Pledge.funder), selectinload(Pledge.events))
        .order_by(Pledge.id)
    )
    for pledge, project_id in db.session.execute(query):
        result[project_id].append(pledge)
    return result


class IatiExport:
    """One export run: iterate `chunks()` for the bytes, then read `activities` for the count."""

    def __init__(self, filters: ProjectFilters, reporting: ReportingOrg | None = None):
        self.filters = filters
        self.reporting = reporting or ReportingOrg.from_config()
        self.activities = 0

    def chunks(self) -> Iterator[bytes]:
        """Yield the XML document in pieces of about one batch of activities each."""
        today = utcnow().date()
        buffer = io.BytesIO()
        logger.info("iati export started reporting_org=%s", self.reporting.ref)
        query = exported_projects_query(self.filters).execution_options(yield_per=BATCH_SIZE)
        with etree.xmlfile(buffer, encoding="utf-8") as xml:
            xml.write_declaration()
            root = {"version": IATI_VERSION, "generated-datetime": utcnow().isoformat(timespec="seconds")}
            # NOTE: with no matching project the root stays empty. That is well-formed XML, but
            # the 2.03 schema requires at least one iati-activity.
            with xml.element("iati-activities", root):
                for batch in db.session.scalars(query).partitions():
                    pledges = _pledges_by_project(batch)
                    for project in batch:
                        xml.write(activity_element(project, pledges[project.id], self.reporting, today), pretty_print=True)
                        self.activities += 1
                    xml.flush()
                    yield _drain(buffer)
        yield _drain(buffer)
        logger.info("iati export finished activities=%s", self.activities)


def _drain(buffer: io.BytesIO) -> bytes:
    data = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return data


def write_export(path: str | Path, filters: ProjectFilters | None = None) -> int:
    """Write the export to a file and return the number of activities in it.

    The document goes to a ".partial" file first, which replaces `path` once complete, so a
    failed export leaves any earlier file at `path` as it was.
    """
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    export = IatiExport(filters or ProjectFilters())
    try:
        with open(partial, "wb") as handle:
            for chunk in export.chunks():
                handle.write(chunk)
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return export.activities


# Validation


class _LocalSchemaResolver(etree.Resolver):
    """Resolve the schema's includes and imports, xml.xsd among them, to files in one folder."""

    def __init__(self, directory: Path):
        super().__init__()
        self.directory = directory

    def resolve(self, url, pubid, context):
        candidate = self.directory / url.rsplit("/", 1)[-1]
        if candidate.is_file():
            return self.resolve_filename(str(candidate), context)
        return None


def load_schema(directory: str | Path) -> etree.XMLSchema:
    """Load the IATI activity schema from a folder that also contains iati-common.xsd and xml.xsd.

    The parser resolves every import to that folder and has network access off.
    """
    directory = Path(directory)
    parser = etree.XMLParser(no_network=True, resolve_entities=False, load_dtd=False)
    parser.resolvers.add(_LocalSchemaResolver(directory))
    return etree.XMLSchema(etree.parse(str(directory / SCHEMA_FILE), parser))


def schema_errors(schema: etree.XMLSchema, path: str | Path) -> list[str]:
    """Validate an XML file; return one "line N: message" per schema error."""
    parser = etree.XMLParser(no_network=True, resolve_entities=False, load_dtd=False, huge_tree=False)
    document = etree.parse(str(path), parser)
    if schema.validate(document):
        return []
    return [f"line {error.line}: {error.message}" for error in schema.error_log]
