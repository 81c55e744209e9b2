"""Match fund endpoints: a donor's or coordinator's funds, a new fund, its pledges, pause and resume."""

from types import SimpleNamespace

from flask import jsonify, url_for
from marshmallow import fields, validate
from sqlalchemy.orm import selectinload

from financing.accounts.models import User
from financing.api import bp
from financing.api.auth import require_user
from financing.api.docs import ID, LOCATION, MAX_ID, operation
from financing.api.fields import MoneyField, PlainNumber, StrictBoolean, StrictInteger
from financing.api.inputs import load_body, load_query, page_response
from financing.api.schemas import (
    EmptySchema,
    InputSchema,
    OutputSchema,
    PageArgsSchema,
    PageSchema,
    PledgePageSchema,
    PledgeSchema,
    code_list,
)
from financing.core.errors import ValidationFailed
from financing.extensions import db
from financing.funders.services import funder_for_user
from financing.money import amount_text
from financing.pledges.match_funds import (
    MAX_NAME_LENGTH,
    RULE_KINDS,
    MatchFundInput,
    create_match_fund,
    fund_status,
    funds_query,
    get_match_fund,
    matches_of_fund,
    set_active,
)
from financing.pledges.models import MatchFund, Pledge
from financing.pledges.services import today_utc
from financing.projects.services import paginate

FUND_STATUSES = ("active", "paused", "scheduled", "ended", "used_up")
CAP_FIELDS = ("per_pledge_cap", "per_project_cap")


class MatchFundSchema(OutputSchema):
    id = fields.Integer()
    funder_id = fields.Integer()
    name = fields.String()
    factor = fields.String(metadata={"description": "Matched amount per unit pledged, such as \"1\" for 1:1 or \"0.5\".", "example": "1"})
    currency = fields.String()
    total_cap = MoneyField(attribute="total_cap_minor")
    per_pledge_cap = MoneyField(attribute="per_pledge_cap_minor", allow_none=True)
    per_project_cap = MoneyField(attribute="per_project_cap_minor", allow_none=True)
    used = MoneyField(attribute="used_minor", metadata={"description": "Sum of the fund's active matching pledges."})
    remaining = MoneyField(attribute="remaining_minor")
    starts_on = fields.Date(allow_none=True, metadata={"description": "First day (UTC) the fund matches pledges."})
    ends_on = fields.Date(allow_none=True, metadata={"description": "Last day (UTC) the fund matches pledges."})
    active = fields.Boolean(metadata={"description": "False while the fund is paused."})
    status = fields.String(metadata={"enum": list(FUND_STATUSES), "description": "Whether the fund matches pledges today."})
    regions = fields.List(fields.String())
    countries = fields.List(fields.String())
    themes = fields.List(fields.String())
    sectors = fields.List(fields.String())
    created_at = fields.DateTime()


class MatchFundPageSchema(PageSchema):
    items = fields.List(fields.Nested(MatchFundSchema))


class MatchFundInputSchema(InputSchema):
    """A new match fund; the caps share the currency of `total_cap`."""

    name = fields.String(required=True, validate=validate.Length(min=1, max=MAX_NAME_LENGTH))
    funder_id = StrictInteger(
        validate=validate.Range(min=1, max=MAX_ID),
        metadata={"description": "The funder that pays the matches. Required for coordinators; a donor's fund "
                                 "is always the donor's own funder's."},
    )
    factor = PlainNumber(
        "Factor", required=True,
        metadata={"oneOf": [{"type": "string", "example": "1"}, {"type": "number"}],
                  "description": "Matched amount per unit pledged, above 0 and at most 10, with at most 4 decimals."},
    )
    total_cap = MoneyField(required=True, metadata={"description": "Most the fund adds in all; its currency is the fund's."})
    per_pledge_cap = MoneyField(allow_none=True)
    per_project_cap = MoneyField(allow_none=True)
    starts_on = fields.Date(allow_none=True)
    ends_on = fields.Date(allow_none=True)
    active = StrictBoolean(load_default=True)
    regions = code_list("ITU-D region slugs; a project must be in one of them or of the countries.")
    countries = code_list("ISO 3166-1 alpha-2 codes.")
    themes = code_list("Theme slugs; a project must have one of them or of the sectors.")
    sectors = code_list("OECD DAC 5-digit sector codes.")


fund_schema = MatchFundSchema()


def fund_view(fund: MatchFund) -> SimpleNamespace:
    """Return the fund's attributes with its rules as code lists and its status today, for dumping."""
    view = SimpleNamespace(**{column.key: getattr(fund, column.key) for column in MatchFund.__table__.columns})
    view.factor = format(fund.factor.normalize(), "f")
    view.remaining_minor = max(fund.total_cap_minor - fund.used_minor, 0)
    view.status = fund_status(fund, today_utc())
    for name, kind in RULE_KINDS.items():
        setattr(view, name, [rule.code for rule in fund.rules if rule.kind == kind])
    return view


def _fund_response(fund: MatchFund, status: int = 200, headers: dict | None = None):
    return jsonify(fund_schema.dump(fund_view(fund))), status, headers or {}


def fund_input(user: User, data: dict) -> MatchFundInput:
    """Build the service input from the loaded fields; the caps must share the total cap's currency."""
    currency = data["total_cap"].currency
    errors: dict[str, str] = {}
    caps: dict[str, str] = {}
    for name in CAP_FIELDS:
        money = data.get(name)
        if money is None:
            caps[name] = ""
        elif money.currency != currency:
            errors[name] = f"Cap is in {money.currency}, but the total cap is in {currency}; use {currency}."
        else:
            caps[name] = amount_text(money.minor, currency)
    # Other roles get 403 from create_match_fund, not this donor-specific 422.
    if "funder_id" in data and user.role == "donor":
        own = funder_for_user(user, create=False)
        if own is None or own.id != data["funder_id"]:
            errors["funder_id"] = "Donors create funds for their own funder: leave funder_id out."
    if errors:
        raise ValidationFailed("The match fund has invalid fields.", errors)
    return MatchFundInput(
        name=data["name"], factor=data["factor"],
        currency=currency, total_cap=amount_text(data["total_cap"].minor, currency),
        per_pledge_cap=caps["per_pledge_cap"], per_project_cap=caps["per_project_cap"],
        starts_on=data.get("starts_on"), ends_on=data.get("ends_on"), active=data["active"],
        regions=data.get("regions") or [], countries=data.get("countries") or [],
        themes=data.get("themes") or [], sectors=data.get("sectors") or [],
        funder_id=data.get("funder_id"),
    )


@bp.get("/v1/match-funds")
@operation(
    "List match funds", "match-funds", query=PageArgsSchema, response=MatchFundPageSchema,
    auth="required", errors=(403,),
    description="Newest first. Coordinators see every fund, donors the funds of their funder; owners get 403.",
)
def list_match_funds():
    user = require_user()
    args = load_query(PageArgsSchema())
    query = funds_query(user).options(selectinload(MatchFund.rules))
    items, total = paginate(query, args["page"], args["per_page"])
    return jsonify(page_response(fund_schema, [fund_view(fund) for fund in items], total, args))


@bp.post("/v1/match-funds")
@operation(
    "Create a match fund", "match-funds", body=MatchFundInputSchema, response=MatchFundSchema, status=201,
    auth="required", errors=(403,), response_headers=(LOCATION,),
    description="A donor's fund belongs to the donor's funder, whose profile the first fund creates; "
                "coordinators name the funder with funder_id. Region and country rules are alternatives, "
                "and so are theme and sector rules.",
)
def create_match_fund_view():
    user = require_user()
    data = load_body(MatchFundInputSchema())
    fund = create_match_fund(user, fund_input(user, data))
    db.session.commit()
    return _fund_response(fund, 201, {"Location": url_for("api.get_match_fund_view", fund_id=fund.id)})


@bp.get(f"/v1/match-funds/<{ID}:fund_id>")
@operation(
    "Read a match fund", "match-funds", response=MatchFundSchema, auth="required",
    description="Visible to coordinators and to the donors of the fund's funder; others get 404.",
)
def get_match_fund_view(fund_id: int):
    return _fund_response(get_match_fund(require_user(), fund_id))


@bp.get(f"/v1/match-funds/<{ID}:fund_id>/pledges")
@operation(
    "List the pledges a match fund made", "match-funds", query=PageArgsSchema, response=PledgePageSchema,
    auth="required", description="Newest first; each one matches the donor pledge it follows.",
)
def list_match_fund_pledges(fund_id: int):
    fund = get_match_fund(require_user(), fund_id)
    args = load_query(PageArgsSchema())
    query = matches_of_fund(fund.id).options(selectinload(Pledge.need))
    items, total = paginate(query, args["page"], args["per_page"])
    return jsonify(page_response(PledgeSchema(), items, total, args))


def _change_active(fund_id: int, active: bool):
    user = require_user()
    fund = get_match_fund(user, fund_id)
    load_body(EmptySchema(), allow_empty=True)
    set_active(user, fund, active)
    db.session.commit()
    return _fund_response(fund)


@bp.post(f"/v1/match-funds/<{ID}:fund_id>/activate")
@operation(
    "Resume a match fund", "match-funds", body=EmptySchema, body_required=False, response=MatchFundSchema,
    auth="required", description="The fund matches new pledges again; doing it twice changes nothing.",
)
def activate_match_fund(fund_id: int):
    return _change_active(fund_id, True)


@bp.post(f"/v1/match-funds/<{ID}:fund_id>/deactivate")
@operation(
    "Pause a match fund", "match-funds", body=EmptySchema, body_required=False, response=MatchFundSchema,
    auth="required", description="The fund matches no new pledges; pledges already matched stay as they are.",
)
def deactivate_match_fund(fund_id: int):
    return _change_active(fund_id, False)
