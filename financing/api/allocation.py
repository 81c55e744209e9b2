"""Allocation run endpoints: coordinators start a run, read its proposal and accept rows as matches."""

import logging

from flask import current_app, jsonify, url_for
from marshmallow import fields, validate

from financing.accounts.models import User
from financing.api import bp
from financing.api.auth import require_coordinator
from financing.api.docs import ID, LOCATION, MAX_ID, operation
from financing.api.fields import MoneyField, StrictInteger
from financing.api.inputs import load_body, load_query, page_response
from financing.api.schemas import (
    EmptySchema,
    InputSchema,
    MatchPartsSchema,
    MoneySchema,
    OutputSchema,
    PageArgsSchema,
    PageSchema,
)
from financing.core.errors import DomainError
from financing.extensions import db
from financing.matching.allocation import AllocationError, accept_rows, get_run, list_rows, list_runs, run_allocation, run_totals
from financing.matching.allocation_models import RUN_STATUSES, AllocationRun
from financing.money import money_dict
from financing.rates.services import rate_text

logger = logging.getLogger(__name__)

# Most rows accepted in one request.
MAX_ROWS_PER_ACCEPT = 1000


class AllocationUnavailable(DomainError):
    """The solver could not run, e.g. because of invalid ALLOCATION_* or MATCH_* settings."""

    status = 503
    code = "allocation_failed"


class RunSchema(OutputSchema):
    id = fields.Integer()
    status = fields.String(metadata={"enum": list(RUN_STATUSES)})
    created_at = fields.DateTime()
    created_by_id = fields.Integer(allow_none=True)
    accepted_at = fields.DateTime(allow_none=True)
    method = fields.String(metadata={"description": "lp or milp: the method whose proposal was kept."})
    solver_status = fields.String()
    solver_message = fields.String()
    seconds = fields.Float(metadata={"description": "Time of the whole run, in seconds."})
    variables = fields.Integer()
    constraints = fields.Integer()
    objective = fields.Float(metadata={"description": "Score-weighted need covered, in major units of objective_currency."})
    objective_currency = fields.String()
    bound = fields.Float(allow_none=True)
    gap = fields.Float(allow_none=True)
    proposed = fields.List(fields.Nested(MoneySchema), metadata={"description": "Amounts proposed, one entry per need currency."})
    open_need = fields.List(fields.Nested(MoneySchema), metadata={"description": "Open need in the run, one entry per currency."})
    skipped = fields.Dict(keys=fields.String(), values=fields.Integer(),
                          metadata={"description": "Pairs and funders left out, by reason."})


class RunPageSchema(PageSchema):
    items = fields.List(fields.Nested(RunSchema))


class RowSchema(OutputSchema):
    id = fields.Integer()
    funder_id = fields.Integer()
    project_id = fields.Integer()
    need_id = fields.Integer()
    amount = MoneyField(attribute="amount_minor", metadata={"description": "What the funder gives, in the funder's currency."})
    need_amount = MoneyField(attribute="need_amount_minor", currency="need_currency",
                             metadata={"description": "What that covers of the need, in the need's currency."})
    rate = fields.Function(
        lambda row: rate_text(row.rate),
        metadata={"type": "string", "example": "1.0823",
                  "description": "Major units of the need's currency per major unit of the funder's."},
    )
    score = fields.Float(metadata={"minimum": 0, "maximum": 1})
    parts = fields.Nested(MatchPartsSchema)
    explanation = fields.String()
    accepted = fields.Boolean()
    accepted_at = fields.DateTime(allow_none=True)
    match_id = fields.Integer(allow_none=True, metadata={"description": "The match that accepting the row created or updated."})


class RowPageSchema(PageSchema):
    items = fields.List(fields.Nested(RowSchema))


class FunderTotalSchema(OutputSchema):
    funder_id = fields.Integer()
    name = fields.String()
    amount = fields.Nested(MoneySchema)
    rows = fields.Integer()


class RegionTotalSchema(OutputSchema):
    region = fields.String(metadata={"description": "Region slug, or \"\" for projects without a region."})
    amount = fields.Nested(MoneySchema)


class ThemeTotalSchema(OutputSchema):
    theme = fields.String(metadata={"description": "Theme slug, or \"\" for projects without a theme."})
    amount = fields.Nested(MoneySchema)


class ProgressSchema(OutputSchema):
    proposed = fields.Nested(MoneySchema)
    open_need = fields.Nested(MoneySchema)


class RunTotalsSchema(OutputSchema):
    by_funder = fields.List(fields.Nested(FunderTotalSchema), metadata={"description": "In the funders' currencies."})
    by_region = fields.List(fields.Nested(RegionTotalSchema), metadata={"description": "In the needs' currencies."})
    by_theme = fields.List(fields.Nested(ThemeTotalSchema), metadata={"description": "In the needs' currencies."})
    progress = fields.List(fields.Nested(ProgressSchema), metadata={"description": "Proposed against open need, per currency."})


class RunDetailSchema(RunSchema):
    rows = fields.Nested(RowPageSchema, metadata={"description": "One page of the proposed amounts."})
    totals = fields.Nested(RunTotalsSchema)


class AcceptRowsInputSchema(InputSchema):
    row_ids = fields.List(
        StrictInteger(validate=validate.Range(min=1, max=MAX_ID)), required=True,
        validate=validate.Length(min=1, max=MAX_ROWS_PER_ACCEPT),
    )


class AcceptRowsResultSchema(OutputSchema):
    accepted = fields.List(fields.Nested(RowSchema), metadata={"description": "Rows this request accepted."})
    already = fields.List(fields.Nested(RowSchema), metadata={"description": "Rows of the request accepted before."})
    run = fields.Nested(RunSchema)


def _money_list(amounts: dict) -> list[dict]:
    return [money_dict(int(amount), currency) for currency, amount in sorted(amounts.items())]


def run_document(run: AllocationRun) -> dict:
    """Dump a run's own fields, with its amounts per currency as money lists."""
    document = RunSchema(exclude=("proposed", "open_need")).dump(run)
    document["proposed"] = _money_list(run.proposed or {})
    document["open_need"] = _money_list(run.open_need or {})
    return document


def detail_document(run: AllocationRun, args: dict) -> dict:
    """Dump a run with one page of its rows and its totals."""
    rows, total = list_rows(run, args["page"], args["per_page"])
    totals = run_totals(run)
    return {
        **run_document(run),
        "rows": page_response(RowSchema(), rows, total, args),
        "totals": {
            "by_funder": [
                {"funder_id": funder_id, "name": name, "amount": money_dict(amount, currency), "rows": count}
                for funder_id, name, currency, amount, count in totals.by_funder
            ],
            "by_region": [{"region": code, "amount": money_dict(amount, currency)} for code, currency, amount in totals.by_region],
            "by_theme": [{"theme": code, "amount": money_dict(amount, currency)} for code, currency, amount in totals.by_theme],
            "progress": [
                {"proposed": money_dict(proposed, currency), "open_need": money_dict(open_need, currency)}
                for currency, proposed, open_need in totals.progress
            ],
        },
    }


@bp.get("/v1/allocation/runs")
@operation(
    "List allocation runs", "allocation", query=PageArgsSchema, response=RunPageSchema,
    auth="required", errors=(403,), description="Newest first; coordinators only.",
)
def list_runs_view():
    user = require_coordinator()
    args = load_query(PageArgsSchema())
    runs, total = list_runs(user, args["page"], args["per_page"])
    return jsonify({**page_response(RunSchema(), [], total, args), "items": [run_document(run) for run in runs]})


def _start_run(user: User) -> AllocationRun:
    try:
        return run_allocation(user)
    except (ValueError, AllocationError) as error:
        db.session.rollback()
        logger.error("allocation run failed user=%s: %s", user.id, error)
        raise AllocationUnavailable(f"The allocation run failed: {error}") from error


@bp.post("/v1/allocation/runs")
@operation(
    "Start an allocation run", "allocation", body=EmptySchema, body_required=False, response=RunDetailSchema,
    status=201, auth="required", errors=(403, 503), response_headers=(LOCATION,),
    description="Solves the allocation of all open needs in the request and stores the proposal, "
                "with the first page of its rows. A run whose solver finds no proposal is stored with "
                "status failed and its solver_status and solver_message; invalid solver settings on "
                "the platform give 503.",
)
def start_run_view():
    user = require_coordinator()
    load_body(EmptySchema(), allow_empty=True)
    # NOTE: the run is solved inside the request, as on the allocation page; large platforms
    # need it moved to an RQ job.
    run = _start_run(user)
    db.session.commit()
    args = {"page": 1, "per_page": current_app.config["PER_PAGE"]}
    location = url_for("api.get_run_view", run_id=run.id)
    return jsonify(detail_document(run, args)), 201, {"Location": location}


@bp.get(f"/v1/allocation/runs/<{ID}:run_id>")
@operation(
    "Read an allocation run with its rows", "allocation", query=PageArgsSchema, response=RunDetailSchema,
    auth="required", errors=(403,),
    description="Rows come by project, need and amount; page and per_page select a page of them.",
)
def get_run_view(run_id: int):
    user = require_coordinator()
    args = load_query(PageArgsSchema())
    return jsonify(detail_document(get_run(user, run_id), args))


@bp.post(f"/v1/allocation/runs/<{ID}:run_id>/accept")
@operation(
    "Accept rows of an allocation run as matches", "allocation", body=AcceptRowsInputSchema,
    response=AcceptRowsResultSchema, auth="required", errors=(403, 409),
    description="Each row's project-funder match becomes accepted. Rows accepted before are listed "
                "in `already` and left as they were. A row of another run gets 422; a row whose need no "
                "longer takes pledges gets 409 and nothing changes.",
)
def accept_rows_view(run_id: int):
    user = require_coordinator()
    data = load_body(AcceptRowsInputSchema())
    result = accept_rows(user, run_id, data["row_ids"])
    db.session.commit()
    row_schema = RowSchema(many=True)
    return jsonify({
        "accepted": row_schema.dump(result.accepted),
        "already": row_schema.dump(result.already),
        "run": run_document(get_run(user, run_id)),
    })
