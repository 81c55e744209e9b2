"""Funder endpoints: the public list of funder profiles, one profile, and edits of a donor's own."""

from flask import jsonify

from financing.api import bp
from financing.api.auth import require_user
from financing.api.docs import ID, operation
from financing.api.fields import Money
from financing.api.inputs import load_body, load_query, page_response
from financing.api.schemas import FunderArgsSchema, FunderPageSchema, FunderPatchSchema, FunderSchema
from financing.accounts.models import User
from financing.core.errors import Forbidden, NotFound, ValidationFailed
from financing.extensions import db
from financing.funders.models import Funder
from financing.funders.services import FunderInput, funder_for_user, get_funder, update_funder
from financing.funders.views import funder_query
from financing.money import MoneyError, check_currency
from financing.projects.services import paginate

funder_schema = FunderSchema()

# Request field -> FunderInput attribute of the amounts, which share the profile's currency.
AMOUNT_FIELDS = {"ticket_min": "ticket_min_minor", "ticket_max": "ticket_max_minor", "annual_budget": "annual_budget_minor"}
PLAIN_FIELDS = ("name", "kind", "description", "decision_days", "regions", "countries", "themes", "sectors")


@bp.get("/v1/funders")
@operation("List funders", "funders", query=FunderArgsSchema, response=FunderPageSchema)
def list_funders():
    args = load_query(FunderArgsSchema())
    query = funder_query(region=args.get("region"), theme=args.get("theme"), kind=args.get("kind"))
    items, total = paginate(query, args["page"], args["per_page"])
    return jsonify(page_response(funder_schema, items, total, args))


@bp.get(f"/v1/funders/<{ID}:funder_id>")
@operation("Read a funder profile", "funders", response=FunderSchema, errors=(404,))
def get_funder_view(funder_id: int):
    return jsonify(funder_schema.dump(get_funder(funder_id)))


def _require_donor(user: User) -> None:
    if user.role != "donor":
        raise Forbidden("Only donor accounts have a funder profile.")


@bp.get("/v1/funders/me")
@operation(
    "Read your own funder profile", "funders", response=FunderSchema, auth="required", errors=(403, 404),
    description="The funder a donor acts for: its organisation's, else its own individual profile. "
                "404 until the profile exists; PATCH /api/v1/funders/me creates it.",
)
def get_own_funder():
    user = require_user()
    _require_donor(user)
    funder = funder_for_user(user, create=False)
    if funder is None:
        raise NotFound("You have no funder profile yet; PATCH /api/v1/funders/me creates it.")
    return jsonify(funder_schema.dump(funder))


@bp.patch("/v1/funders/me")
@operation(
    "Update your own funder profile", "funders", body=FunderPatchSchema, response=FunderSchema,
    auth="required", errors=(403,),
    description="Fields left out keep their value and null clears an amount. The first update of a "
                "donor creates the profile, named after the donor's organisation or the donor. "
                "Amounts are in the profile's currency; changing the currency needs every stored amount "
                "again, in the new currency or as null.",
)
def update_own_funder():
    user = require_user()
    _require_donor(user)
    data = _load_patch()
    funder = funder_for_user(user)
    update_funder(user, funder, funder_input(funder, data))
    db.session.commit()
    return jsonify(funder_schema.dump(funder))


@bp.patch(f"/v1/funders/<{ID}:funder_id>")
@operation(
    "Update a funder profile", "funders", body=FunderPatchSchema, response=FunderSchema,
    auth="required", errors=(403,),
    description="Donors update the profile of the funder they act for, and coordinators any profile. "
                "Fields are handled as in PATCH /api/v1/funders/me.",
)
def update_funder_view(funder_id: int):
    user = require_user()
    funder = get_funder(funder_id)
    data = _load_patch()
    update_funder(user, funder, funder_input(funder, data))
    db.session.commit()
    return jsonify(funder_schema.dump(funder))


def _load_patch() -> dict:
    data = load_body(FunderPatchSchema())
    if not data:
        raise ValidationFailed("The request changes nothing: send at least one field.", {"body": "Send at least one field."})
    return data


def _target_currency(funder: Funder, data: dict) -> str:
    """Return the currency of the updated profile: the one sent, else that of the amounts sent, else the stored one."""
    if "currency" in data:
        try:
            return check_currency(data["currency"])
        except MoneyError as error:
            raise ValidationFailed(error.message, {"currency": error.message}) from error
    sent = [data[name] for name in AMOUNT_FIELDS if isinstance(data.get(name), Money)]
    return sent[0].currency if sent else funder.currency


def funder_input(funder: Funder, data: dict) -> FunderInput:
    """Build the service input from the stored profile and the fields sent.

    Raise ValidationFailed naming each amount whose currency differs from the profile's, and
    each stored amount left out when the currency changes.
    """
    currency = _target_currency(funder, data)
    result = FunderInput(
        name=funder.name, kind=funder.kind, description=funder.description, currency=currency,
        decision_days=funder.decision_days, regions=funder.regions, countries=funder.countries,
        themes=funder.themes, sectors=funder.sectors,
    )
    for name in PLAIN_FIELDS:
        if name in data:
            setattr(result, name, data[name])

    errors: dict[str, str] = {}
    for name, attribute in AMOUNT_FIELDS.items():
        if name in data:
            money = data[name]
            if money is not None and money.currency != currency:
                errors[name] = f"Amount is in {money.currency}, but the profile's currency is {currency}; send it in {currency}."
                continue
            setattr(result, attribute, money.minor if money is not None else None)
            continue
        stored = getattr(funder, attribute)
        if stored is not None and currency != funder.currency:
            errors[name] = f"The stored amount is in {funder.currency}; send it again in {currency}, or null to clear it."
            continue
        setattr(result, attribute, stored)
    if errors:
        raise ValidationFailed("The funder profile has invalid fields.", errors)
    return result
