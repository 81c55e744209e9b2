"""Exchange rate endpoints: the rates that apply on a day, their history, and new rates from coordinators."""

from flask import jsonify
from marshmallow import fields, validate

from financing.api import bp
from financing.api.auth import require_coordinator
from financing.api.docs import LOCATION, operation
from financing.api.fields import PlainNumber, StrictBoolean
from financing.api.inputs import load_body, load_query, page_response
from financing.api.schemas import InputSchema, OutputSchema, PageArgsSchema, PageSchema
from financing.core.errors import ValidationFailed
from financing.extensions import db
from financing.money import MoneyError, check_currency
from financing.projects.services import paginate
from financing.rates.services import MAX_CSV_ROWS, add_rate, current_rates, history_query, import_rates_csv, rate_text, today_utc

# Largest CSV text accepted by the import, in characters; the same size as the page's upload limit.
MAX_CSV_CHARACTERS = 1024 * 1024

RATE_VALUE = {"oneOf": [{"type": "string", "example": "1.0823"}, {"type": "number"}]}


class RateSchema(OutputSchema):
    id = fields.Integer()
    base = fields.String(metadata={"description": "ISO 4217 code of the currency converted from."})
    quote = fields.String(metadata={"description": "ISO 4217 code of the currency converted to."})
    rate = fields.Function(
        lambda row: rate_text(row.rate),
        metadata={"type": "string", "example": "1.0823", "description": "Major units of quote for one major unit of base."},
    )
    valid_from = fields.Date(metadata={"description": "First day (UTC) the rate applies."})
    created_by_id = fields.Integer(allow_none=True)
    created_at = fields.DateTime()


class RatePageSchema(PageSchema):
    items = fields.List(fields.Nested(RateSchema))


class CurrentRatesArgsSchema(PageArgsSchema):
    on = fields.Date(metadata={"description": "The day (UTC) whose rates to list; today by default."})


class RateHistoryArgsSchema(PageArgsSchema):
    base = fields.String(validate=validate.Length(max=3))
    quote = fields.String(validate=validate.Length(max=3))


class RateInputSchema(InputSchema):
    base = fields.String(required=True, validate=validate.Length(max=3), metadata={"example": "USD"})
    quote = fields.String(required=True, validate=validate.Length(max=3), metadata={"example": "EUR"})
    rate = PlainNumber(
        "Rate", required=True,
        metadata={**RATE_VALUE, "description": "Plain digits with an optional decimal point: at most 12 decimals "
                                               "and 15 significant digits, above 0 and below 10^12."},
    )
    valid_from = fields.Date(required=True)
    replace = StrictBoolean(load_default=False, metadata={"description": "Overwrite a different rate stored for the same pair and day."})


class RateImportInputSchema(InputSchema):
    csv = fields.String(
        required=True, validate=validate.Length(min=1, max=MAX_CSV_CHARACTERS),
        metadata={"description": "CSV text with the header base,quote,rate,valid_from, separated by commas or "
                                 f"semicolons, at most {MAX_CSV_ROWS:,} rows."},
    )
    replace = StrictBoolean(load_default=False, metadata={"description": "Overwrite different rates stored for the same pair and day."})


class RateImportResultSchema(OutputSchema):
    stored = fields.Integer(metadata={"description": "Rates added or replaced; rows equal to a stored rate are not counted."})


rate_schema = RateSchema()


@bp.get("/v1/rates")
@operation(
    "List the exchange rates that apply on a day", "rates", query=CurrentRatesArgsSchema, response=RatePageSchema,
    description="One rate per currency pair, the latest whose valid_from is on or before the day, by pair.",
)
def list_current_rates():
    args = load_query(CurrentRatesArgsSchema())
    rates = current_rates(args.get("on") or today_utc())
    start = (args["page"] - 1) * args["per_page"]
    return jsonify(page_response(rate_schema, rates[start:start + args["per_page"]], len(rates), args))


def _currency_filter(args: dict, name: str) -> str | None:
    if not args.get(name):
        return None
    try:
        return check_currency(args[name], name)
    except MoneyError as error:
        raise ValidationFailed(error.message, {name: error.message}) from error


@bp.get("/v1/rates/history")
@operation(
    "List every stored exchange rate", "rates", query=RateHistoryArgsSchema, response=RatePageSchema,
    description="Newest valid_from first, optionally of one base or quote currency.",
)
def list_rate_history():
    args = load_query(RateHistoryArgsSchema())
    query = history_query(base=_currency_filter(args, "base"), quote=_currency_filter(args, "quote"))
    items, total = paginate(query, args["page"], args["per_page"])
    return jsonify(page_response(rate_schema, items, total, args))


@bp.post("/v1/rates")
@operation(
    "Store an exchange rate", "rates", body=RateInputSchema, response=RateSchema, status=201,
    auth="required", errors=(403, 409), response_headers=(LOCATION,),
    description="Coordinators only. Rates apply in the stored direction only. A different rate for a pair and "
                "day already stored gets 409 unless replace is true; the same rate again changes nothing. "
                "Pledges keep the rate stored on them when it is replaced.",
)
def create_rate():
    user = require_coordinator()
    data = load_body(RateInputSchema())
    rate = add_rate(user, data["base"], data["quote"], data["rate"], data["valid_from"], replace=data["replace"])
    db.session.commit()
    location = f"/api/v1/rates/history?base={rate.base}&quote={rate.quote}"
    return jsonify(rate_schema.dump(rate)), 201, {"Location": location}


@bp.post("/v1/rates/import")
@operation(
    "Import exchange rates from CSV text", "rates", body=RateImportInputSchema, response=RateImportResultSchema,
    auth="required", errors=(403, 409),
    description="Coordinators only. Every rate is stored, or none: a bad value gets 422 with one entry in "
                "`fields` per bad value, keyed by its line number and column.",
)
def import_rates():
    user = require_coordinator()
    data = load_body(RateImportInputSchema())
    stored = import_rates_csv(data["csv"], user, replace=data["replace"])
    db.session.commit()
    return jsonify(RateImportResultSchema().dump({"stored": stored}))
