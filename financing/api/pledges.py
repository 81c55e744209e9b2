"""Pledge endpoints: idempotent creation by donors, reading, and the coordinators' actions."""

from types import SimpleNamespace

from flask import jsonify, request, url_for
from marshmallow import fields

from financing.api import bp
from financing.api.auth import require_coordinator, require_user
from financing.api.docs import ID, operation
from financing.api.fields import Amount, Money, MoneyField, parse_money
from financing.api.inputs import load_body
from financing.api.schemas import DisburseInputSchema, EmptySchema, InputSchema, OutputSchema, PledgeInputSchema, PledgeSchema, ReasonSchema
from financing.core.errors import Conflict, ValidationFailed
from financing.extensions import db
from financing.payments.gateway import SWITCHED_OFF, card_payments_enabled
from financing.payments.services import create_card_pledge, refund_pledge
from financing.payments.views import checkout_return_urls
from financing.pledges.models import Pledge
from financing.pledges.services import act, create_pledge, get_pledge


class CardPledgeSchema(PledgeSchema):
    checkout_url = fields.String(
        allow_none=True,
        metadata={"description": "In responses for card pledges only: the Stripe Checkout page where the donor "
                                 "pays, or null once that page is closed."},
    )


class RefundInputSchema(InputSchema):
    amount = Amount(
        metadata={"oneOf": [{"type": "string", "example": "25.00"}, {"type": "number"}],
                  "description": "Amount in the pledge's currency; left out, all that is left is refunded."},
    )
    currency = fields.String(metadata={"description": "Optional; must be the pledge's currency."})


class RefundSchema(OutputSchema):
    id = fields.String(metadata={"description": "Stripe's refund id."})
    amount = MoneyField(attribute="amount_minor")
    status = fields.String(metadata={"description": "Stripe's refund status, such as succeeded or pending."})
    pledge = fields.Nested(PledgeSchema)


pledge_schema = PledgeSchema()
card_pledge_schema = CardPledgeSchema()

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
    "Pledge an amount to a funding need", "pledges", body=PledgeInputSchema, response=CardPledgeSchema,
    status=201, also=((200, "The pledge made earlier with the same Idempotency-Key."),),
    auth="required", errors=(403, 404, 409), headers=(IDEMPOTENCY_HEADER,),
    description="Donors pledge commitments in the need's currency. A repeated request with the same "
                "Idempotency-Key returns the first pledge with status 200; with other values, 409. "
                "A card pledge (kind card) starts as pending_payment and the response adds the `checkout_url` "
                "of a Stripe Checkout page; Stripe's webhook confirms the pledge once paid. Without Stripe keys "
                "on the platform a card pledge gets 422. When Stripe fails, the pledge is cancelled and the "
                "response is 502 with the error document.",
)
def create_pledge_view():
    user = require_user()
    key = idempotency_key()
    data = load_body(PledgeInputSchema())
    if data["kind"] == "card":
        return create_card_pledge_view(user, key, data)

    money = data["money"]
    pledge, created = create_pledge(user, data["need_id"], money.minor, money.currency, data["kind"], key)
    if not created:
        check_same_request(pledge, data["need_id"], money, data["kind"])
    db.session.commit()

    if not created:
        return _pledge_response(pledge)
    location = url_for("api.get_pledge_view", pledge_id=pledge.id)
    return jsonify(pledge_schema.dump(pledge)), 201, {"Location": location}


def create_card_pledge_view(user, key: str, data: dict):
    if not card_payments_enabled():
        raise ValidationFailed(SWITCHED_OFF, {"kind": SWITCHED_OFF})
    money = data["money"]
    success_url, cancel_url = checkout_return_urls()
    pledge, checkout_url, created = create_card_pledge(
        user, data["need_id"], money.minor, money.currency, key, success_url, cancel_url,
    )
    if not created:
        check_same_request(pledge, data["need_id"], money, "card")
    db.session.commit()

    body = {**card_pledge_schema.dump(pledge), "checkout_url": checkout_url}
    if not created:
        return jsonify(body)
    return jsonify(body), 201, {"Location": url_for("api.get_pledge_view", pledge_id=pledge.id)}


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


@bp.post(f"/v1/pledges/<{ID}:pledge_id>/refund")
@operation(
    "Ask Stripe to refund a card pledge", "pledges", body=RefundInputSchema, body_required=False,
    response=RefundSchema, status=202, auth="required", errors=(403, 404, 409),
    description="Refunds all or part of a paid card pledge through Stripe. The pledge does not change "
                "here: it becomes refunded, or keeps a smaller active amount, when Stripe's charge.refunded "
                "webhook confirms the refund. When Stripe fails, the response is 502 and nothing changes.",
)
def refund_pledge_view(pledge_id: int):
    user = require_coordinator()
    data = load_body(RefundInputSchema(), allow_empty=True)
    pledge = get_pledge(user, pledge_id)
    amount_minor = None
    if data.get("amount") is not None:
        money = parse_money(data["amount"], data.get("currency") or pledge.currency, field="amount")
        if money.currency != pledge.currency:
            raise ValidationFailed(f"Refunds are in the pledge's currency {pledge.currency}.", {"currency": f"Use {pledge.currency}."})
        amount_minor = money.minor
    elif data.get("currency") not in (None, pledge.currency):
        raise ValidationFailed(f"Refunds are in the pledge's currency {pledge.currency}.", {"currency": f"Use {pledge.currency}."})
    requested = refund_pledge(user, pledge.id, amount_minor)
    return jsonify(RefundSchema().dump(SimpleNamespace(**vars(requested), pledge=pledge))), 202
