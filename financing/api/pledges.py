"""Pledge endpoints: idempotent creation by donors, reading, and the coordinators' actions."""

from flask import jsonify, request, url_for

from financing.api import bp
from financing.api.auth import require_coordinator, require_user
from financing.api.docs import ID, operation
from financing.api.fields import Money, parse_money
from financing.api.inputs import load_body
from financing.api.schemas import DisburseInputSchema, EmptySchema, PledgeInputSchema, PledgeSchema, ReasonSchema
from financing.core.errors import Conflict, ValidationFailed
from financing.extensions import db
from financing.pledges.models import Pledge
from financing.pledges.services import act, create_pledge, get_pledge

pledge_schema = PledgeSchema()

IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key", "in": "header", "required": True,
    "description": "A unique key per pledge, at most 200 characters. Repeating a request with the "
                   "same key returns the first pledge with status 200 instead of creating another.",
    "schema": {"type": "string", "maxLength": 200},
}


def idempotency_key() -> str:
    key = request.headers.get("Idempotency-Key", "").strip()
    if not key:
        raise ValidationFailed(
            "The Idempotency-Key header is missing.",
            {"Idempotency-Key": "Send a unique key, such as a UUID, so that a retried request cannot pledge twice."},
        )
    return key


def check_same_request(pledge: Pledge, need_id: int, money: Money, kind: str) -> None:
    """Raise Conflict when an idempotency key comes back with a different pledge request."""
    if (pledge.need_id, pledge.amount_minor, pledge.currency, pledge.kind) != (need_id, money.minor, money.currency, kind):
        raise Conflict(
            f"The Idempotency-Key was already used for pledge {pledge.id} with other values.",
            {"Idempotency-Key": "Use a new key for a new pledge."},
        )


def _pledge_response(pledge: Pledge):
    return jsonify(pledge_schema.dump(pledge))


@bp.post("/v1/pledges")
@operation(
    "Pledge an amount to a funding need", "pledges", body=PledgeInputSchema, response=PledgeSchema,
    status=201, also=((200, "The pledge made earlier with the same Idempotency-Key."),),
    auth="required", errors=(403, 404, 409), headers=(IDEMPOTENCY_HEADER,),
    description="Donors pledge commitments in the need's currency. A repeated request with the same "
                "Idempotency-Key returns the first pledge with status 200; with other values, 409.",
)
def create_pledge_view():
    user = require_user()
    key = idempotency_key()
    data = load_body(PledgeInputSchema())
    if data["kind"] == "card":
        # NOTE: card pledges need a Stripe Checkout session, which the API does not start yet.
        raise ValidationFailed("Card pledges are not available through the API yet.", {"kind": "Use kind commitment."})

    money = data["money"]
    pledge, created = create_pledge(user, data["need_id"], money.minor, money.currency, data["kind"], key)
    if not created:
        check_same_request(pledge, data["need_id"], money, data["kind"])
    db.session.commit()

    if not created:
        return _pledge_response(pledge)
    location = url_for("api.get_pledge_view", pledge_id=pledge.id)
    return jsonify(pledge_schema.dump(pledge)), 201, {"Location": location}


@bp.get(f"/v1/pledges/<{ID}:pledge_id>")
@operation(
    "Read a pledge", "pledges", response=PledgeSchema, auth="required", errors=(404,),
    description="Donors see their funder's pledges, owners the pledges to their projects, coordinators all.",
)
def get_pledge_view(pledge_id: int):
    return _pledge_response(get_pledge(require_user(), pledge_id))


@bp.post(f"/v1/pledges/<{ID}:pledge_id>/confirm")
@operation(
    "Confirm a pledge", "pledges", body=EmptySchema, body_required=False, response=PledgeSchema,
    auth="required", errors=(403, 404, 409),
)
def confirm_pledge(pledge_id: int):
    user = require_coordinator()
    load_body(EmptySchema(), allow_empty=True)
    pledge = act(user, pledge_id, "confirm")
    db.session.commit()
    return _pledge_response(pledge)


@bp.post(f"/v1/pledges/<{ID}:pledge_id>/cancel")
@operation(
    "Cancel a pledge with a reason", "pledges", body=ReasonSchema, response=PledgeSchema,
    auth="required", errors=(403, 404, 409),
)
def cancel_pledge(pledge_id: int):
    user = require_coordinator()
    data = load_body(ReasonSchema())
    pledge = act(user, pledge_id, "cancel", reason=data["reason"])
    db.session.commit()
    return _pledge_response(pledge)


@bp.post(f"/v1/pledges/<{ID}:pledge_id>/disburse")
@operation(
    "Record a disbursement of a confirmed pledge", "pledges", body=DisburseInputSchema,
    response=PledgeSchema, auth="required", errors=(403, 404, 409),
    description="The amount is in the need's currency; several partial disbursements may follow each other.",
)
def disburse_pledge(pledge_id: int):
    user = require_coordinator()
    data = load_body(DisburseInputSchema())
    currency = get_pledge(user, pledge_id).need.currency
    money = parse_money(data["amount"], data.get("currency") or currency, field="amount")
    if money.currency != currency:
        raise ValidationFailed(f"Disbursements are in the need's currency {currency}.", {"currency": f"Use {currency}."})
    pledge = act(user, pledge_id, "disburse", amount_minor=money.minor)
    db.session.commit()
    return _pledge_response(pledge)
