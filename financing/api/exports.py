"""Export endpoints for coordinators: CSV files of the lists and the IATI activity XML.

Each export takes the filters of its list (without paging) and streams the file, so a large
table is never built in memory. Credentials and filters are checked before the first byte.
"""

import logging
from collections.abc import Iterable, Iterator

from flask import Response, stream_with_context
from marshmallow import Schema, ValidationError, fields, validate

from financing.api import bp
from financing.api.auth import require_coordinator
from financing.api.docs import MAX_ID, operation
from financing.api.inputs import load_query
from financing.api.schemas import FunderArgsSchema, ProjectArgsSchema
from financing.core.time import utcnow
from financing.exports import csv as csv_export
from financing.exports.iati import IatiExport
from financing.money import MoneyError, check_currency
from financing.pledges.models import PLEDGE_STATES
from financing.projects.services import ProjectFilters

logger = logging.getLogger(__name__)

PROJECT_FILTERS = ("region", "country", "theme", "sector", "status", "q", "sort")
CSV_NOTE = (
    "UTF-8 with a byte order mark, comma-separated, one header line. Cells that start with =, +, -, @, "
    "a tab or a carriage return get a leading apostrophe so that spreadsheets do not run them as formulas. "
    "Amounts are plain decimals next to their ISO 4217 currency column; lists of codes are joined with |."
)


class ProjectExportArgsSchema(ProjectArgsSchema):
    """The project list filters without paging."""

    class Meta:
        exclude = ("page", "per_page")


class FunderExportArgsSchema(FunderArgsSchema):
    """The funder list filters without paging."""

    class Meta:
        exclude = ("page", "per_page")


def _currency(value: str) -> None:
    try:
        check_currency(value)
    except MoneyError as error:
        raise ValidationError(error.message) from None


class PledgeExportArgsSchema(Schema):
    state = fields.String(validate=validate.OneOf(PLEDGE_STATES))
    funder = fields.Integer(validate=validate.Range(min=1, max=MAX_ID), metadata={"description": "Funder id."})
    project = fields.Integer(validate=validate.Range(min=1, max=MAX_ID), metadata={"description": "Project id."})
    currency = fields.String(validate=_currency, metadata={"description": "ISO 4217 code of the pledged amount."})


def _project_filters(args: dict) -> ProjectFilters:
    return ProjectFilters(**{name: args[name] for name in PROJECT_FILTERS if args.get(name) is not None})


def _attachment(response: Response, basename: str, extension: str) -> Response:
    response.headers["Content-Disposition"] = f'attachment; filename="{basename}-{utcnow():%Y-%m-%d}.{extension}"'
    response.headers["Cache-Control"] = "no-store"
    return response


def _counted(rows: Iterable[list], basename: str, user_id: int) -> Iterator[list]:
    """Pass the rows through and log how many there were once the last one is sent."""
    count = 0
    for row in rows:
        count += 1
        yield row
    logger.info("export finished file=%s.csv user=%s rows=%s", basename, user_id, count)


def _csv_response(basename: str, columns: tuple[str, ...], rows: Iterable[list], user_id: int) -> Response:
    body = stream_with_context(csv_export.stream_csv(columns, _counted(rows, basename, user_id)))
    return _attachment(Response(body, mimetype="text/csv"), basename, "csv")


@bp.get("/v1/exports/projects.csv")
@operation(
    "Export projects as CSV", "projects", query=ProjectExportArgsSchema, auth="required", errors=(403,),
    description="Coordinators only. Every status unless `status` is given; the same filters and order as the "
                "project list. Goal, pledged and remaining add up the needs when they share one currency and are "
                "empty otherwise. " + CSV_NOTE,
)
def export_projects():
    user = require_coordinator()
    args = load_query(ProjectExportArgsSchema())
    logger.info("export started file=projects.csv user=%s filters=%s", user.id, sorted(args))
    return _csv_response("projects", csv_export.PROJECT_COLUMNS, csv_export.project_rows(_project_filters(args)), user.id)


@bp.get("/v1/exports/needs.csv")
@operation(
    "Export funding needs as CSV", "projects", query=ProjectExportArgsSchema, auth="required", errors=(403,),
    description="Coordinators only. The needs of the projects that the project filters select, one row "
                "per need. " + CSV_NOTE,
)
def export_needs():
    user = require_coordinator()
    args = load_query(ProjectExportArgsSchema())
    logger.info("export started file=needs.csv user=%s filters=%s", user.id, sorted(args))
    return _csv_response("needs", csv_export.NEED_COLUMNS, csv_export.need_rows(_project_filters(args)), user.id)


@bp.get("/v1/exports/pledges.csv")
@operation(
    "Export pledges as CSV", "pledges", query=PledgeExportArgsSchema, auth="required", errors=(403,),
    description="Coordinators only. Pledges in every state unless `state` is given, oldest first. `amount` is "
                "in `currency`; `need_amount`, `disbursed` and `refunded` are in `need_currency`. " + CSV_NOTE,
)
def export_pledges():
    user = require_coordinator()
    args = load_query(PledgeExportArgsSchema())
    filters = csv_export.PledgeFilters(
        state=args.get("state"), funder_id=args.get("funder"), project_id=args.get("project"),
        currency=check_currency(args["currency"]) if args.get("currency") else None,
    )
    logger.info("export started file=pledges.csv user=%s filters=%s", user.id, sorted(args))
    return _csv_response("pledges", csv_export.PLEDGE_COLUMNS, csv_export.pledge_rows(filters), user.id)


@bp.get("/v1/exports/funders.csv")
@operation(
    "Export funders as CSV", "funders", query=FunderExportArgsSchema, auth="required", errors=(403,),
    description="Coordinators only. The same filters and order as the funder list. " + CSV_NOTE,
)
def export_funders():
    user = require_coordinator()
    args = load_query(FunderExportArgsSchema())
    filters = csv_export.FunderFilters(region=args.get("region"), theme=args.get("theme"), kind=args.get("kind"))
    logger.info("export started file=funders.csv user=%s filters=%s", user.id, sorted(args))
    return _csv_response("funders", csv_export.FUNDER_COLUMNS, csv_export.funder_rows(filters), user.id)


@bp.get("/v1/exports/iati.xml")
@operation(
    "Export published projects as IATI activity XML", "projects", query=ProjectExportArgsSchema,
    auth="required", errors=(403,),
    description="Coordinators only. An IATI 2.03 iati-activities document of the published and funded projects "
                "that match the project filters, ordered by id. Confirmed pledges are commitments (transaction "
                "type 2) and their disbursed amounts disbursements (type 3). With no matching project the root "
                "element is empty, which the IATI schema does not allow, so check the count before publishing.",
)
def export_iati():
    user = require_coordinator()
    args = load_query(ProjectExportArgsSchema())
    logger.info("export started file=iati.xml user=%s filters=%s", user.id, sorted(args))
    export = IatiExport(_project_filters(args))
    response = Response(stream_with_context(export.chunks()), mimetype="application/xml")
    return _attachment(response, "iati-activities", "xml")
