"""Pledge endpoints: idempotent creation by donors, lists and ledgers, and the coordinators' actions."""

from datetime import timedelta
from types import SimpleNamespace

from flask import jsonify, request, url_for
from marshmallow import fields, validate
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from financing.api import bp
from financing.api.auth import require_coordinator, require_scope, require_user
from financing.api.docs import ID, LOCATION, MAX_ID, operation
from financing.api.fields import Amount, Money, MoneyField, StrictInteger, parse_money
from financing.api.inputs import load_body, load_query, page_response, text_problem
from financing.api.schemas import (
    DisburseInputSchema,
    EmptySchema,
    InputSchema,
    OutputSchema,
    PageArgsSchema,
    PageSchema,
    PledgeArgsSchema,
    PledgeInputSchema,
    PledgePageSchema,
    PledgeSchema,
    ReasonSchema,
)
from financing.core.errors import Conflict, ValidationFailed
from financing.core.time import utcnow
from financing.extensions import db
from financing.payments.gateway import SWITCHED_OFF, card_payments_enabled
from financing.payments.services import create_card_pledge, refund_pledge
from financing.payments.views import checkout_return_urls
from financing.pledges.models import PLEDGE_STATES, Pledge, PledgeEvent
from financing.pledges.services import (
    BULK_ACTIONS,
    MAX_BATCH,
    act,
    act_on_many,
    cancel_own_pledge,
    create_pledge,
    get_pledge,
    visible_pledges,
)
from financing.projects.models import FundingNeed
from financing.projects.services import paginate


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


class PledgeEventSchema(OutputSchema):
    id = fields.Integer()
    at = fields.DateTime()
    from_state = fields.String(allow_none=True, metadata={"enum": list(PLEDGE_STATES), "description": "Null for the creation."})
    to_state = fields.String(metadata={"enum": list(PLEDGE_STATES)})
    amount = MoneyField(attribute="amount_minor", currency=lambda event: event.pledge.need.currency,
                        metadata={"description": "Amount the transition concerns, in the need's currency."})
    reason = fields.String()
    actor_id = fields.Integer(allow_none=True, metadata={"description": "The user who acted; null for Stripe and the system."})


class PledgeEventPageSchema(PageSchema):
    items = fields.List(fields.Nested(PledgeEventSchema))


class BulkInputSchema(InputSchema):
    action = fields.String(required=True, validate=validate.OneOf(BULK_ACTIONS))
    pledge_ids = fields.List(
        StrictInteger(validate=validate.Range(min=1, max=MAX_ID)), required=True,
        validate=validate.Length(min=1, max=MAX_BATCH),
    )
    reason = fields.String(load_default="", validate=validate.Length(max=2000), metadata={"description": "Required to cancel."})


class BulkResultSchema(OutputSchema):
    items = fields.List(fields.Nested(PledgeSchema), metadata={"description": "The pledges of the request, after the action."})


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
    problem = text_problem(key)
    if problem:
        raise ValidationFailed(f"The Idempotency-Key header {problem}.", {"Idempotency-Key": f"The key {problem}."})
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


@bp.get("/v1/pledges")
@operation(
    "List pledges", "pledges", query=PledgeArgsSchema, response=PledgePageSchema, auth="required",
    description="Newest first. Donors see their funder's pledges, owners the pledges to their "
                "organisation's projects, coordinators all. state=pledged lists the pledges awaiting "
                "confirmation, as the coordinators' review queue does.",
)
def list_pledges():
    user = require_user()
    args = load_query(PledgeArgsSchema())
    query = visible_pledges(user).options(selectinload(Pledge.need))
    for name in ("state", "kind", "need_id", "funder_id"):
        if args.get(name) is not None:
            query = query.where(getattr(Pledge, name) == args[name])
    if args.get("project_id") is not None:
        query = query.where(Pledge.need_id.in_(select(FundingNeed.id).where(FundingNeed.project_id == args["project_id"])))
    if args.get("currency"):
        query = query.where(Pledge.currency == args["currency"].upper())
    if args.get("older_than") is not None:
        query = query.where(Pledge.created_at <= utcnow() - timedelta(days=args["older_than"]))
    items, total = paginate(query, args["page"], args["per_page"])
    return jsonify(page_response(pledge_schema, items, total, args))


@bp.post("/v1/pledges")
@operation(
    "Pledge an amount to a funding need", "pledges", body=PledgeInputSchema, response=CardPledgeSchema,
    status=201, also=((200, "The pledge made earlier with the same Idempotency-Key."),),
    auth="required", errors=(403, 404, 409, 502), headers=(IDEMPOTENCY_HEADER,), scope="pledge",
    response_headers=(LOCATION,),
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


@bp.get(f"/v1/pledges/<{ID}:pledge_id>/events")
@operation(
    "List the ledger of a pledge", "pledges", query=PageArgsSchema, response=PledgeEventPageSchema,
    auth="required", errors=(404,),
    description="Every transition of the pledge in order, oldest first, as the append-only ledger records it.",
)
def list_pledge_events(pledge_id: int):
    pledge = get_pledge(require_user(), pledge_id)
    args = load_query(PageArgsSchema())
    query = select(PledgeEvent).where(PledgeEvent.pledge_id == pledge.id).order_by(PledgeEvent.id)
    items, total = paginate(query, args["page"], args["per_page"])
    return jsonify(page_response(PledgeEventSchema(), items, total, args))


@bp.post("/v1/pledges/bulk")
@operation(
    "Confirm or cancel several pledges at once", "pledges", body=BulkInputSchema, response=BulkResultSchema,
    auth="required", errors=(403, 409),
    description="All the pledges change, or none: when one of them no longer awaits confirmation the "
                "response is 409 and its message lists each such pledge. Cancelling needs a reason, "
                "recorded in each pledge's ledger.",
)
def bulk_pledges():
    user = require_coordinator()
    data = load_body(BulkInputSchema())
    act_on_many(user, data["pledge_ids"], data["action"], data["reason"])
    db.session.commit()
    ids = sorted(set(data["pledge_ids"]))
    pledges = db.session.scalars(select(Pledge).where(Pledge.id.in_(ids)).order_by(Pledge.id)).all()
    return jsonify(BulkResultSchema().dump({"items": pledges}))


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
    auth="required", errors=(403, 404, 409), scope="pledge", scope_in_view=True,
    description="Coordinators cancel any pledge that is pledged or confirmed, which needs the manage "
                "scope on a token. Donors cancel their own pledges while they await confirmation, "
                "which needs the pledge scope.",
)
def cancel_pledge(pledge_id: int):
    user = require_user()
    require_scope("manage" if user.is_coordinator else "pledge")
    data = load_body(ReasonSchema())
    if user.is_coordinator:
        pledge = act(user, pledge_id, "cancel", reason=data["reason"])
    else:
        pledge = cancel_own_pledge(user, pledge_id, data["reason"])
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
    response=RefundSchema, status=202, auth="required", errors=(403, 404, 409, 502),
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
