"""Card pledges through Stripe Checkout, and refunds requested by coordinators."""

import logging
from dataclasses import dataclass
from datetime import timedelta

import stripe
from sqlalchemy import select

from financing.accounts.models import User
from financing.core.errors import Conflict, Forbidden, ValidationFailed
from financing.core.time import utcnow
from financing.extensions import db
from financing.money import to_decimal
from financing.payments import gateway
from financing.payments.gateway import SWITCHED_OFF, PaymentGatewayError, card_payments_enabled
from financing.payments.models import StripeEvent
from financing.pledges.models import Pledge
from financing.pledges.services import create_pledge, get_pledge, transition

logger = logging.getLogger(__name__)

__all__ = ["card_payments_enabled", "create_card_pledge", "refund_pledge", "checkout_url", "payment_status"]

# A pending card pledge reserves its amount against the goal until its Checkout Session
# expires; Stripe allows 30 minutes to 24 hours.
# NOTE: if the checkout.session.expired webhook never arrives (a wrong webhook secret or
# URL), the pledge stays pending and keeps its reservation; nothing sweeps such pledges yet.
CHECKOUT_LIFETIME = timedelta(hours=1)
# Replaced by the new pledge's id in the success and cancel URLs.
PLEDGE_ID_PLACEHOLDER = "{PLEDGE_ID}"


def _require_cards() -> None:
    if not card_payments_enabled():
        raise Conflict(SWITCHED_OFF, {"kind": SWITCHED_OFF})
    gateway.api_base()  # a misconfigured base fails here, before anything is reserved


def checkout_idempotency_key(pledge: Pledge) -> str:
    """Return the Stripe Idempotency-Key of a pledge's Checkout Session.

    The creation time makes the key unique even if a reset database hands out the same
    pledge id again within Stripe's 24 hours of key retention.
    """
    return f"checkout-pledge-{pledge.id}-{pledge.created_at:%Y%m%d%H%M%S%f}"


def checkout_params(pledge: Pledge, user: User, stripe_amount: int, success_url: str, cancel_url: str) -> dict:
    need = pledge.need
    reference = str(pledge.id)
    return {
        "mode": "payment",
        "payment_method_types": ["card"],
        "line_items": [{
            "quantity": 1,
            "price_data": {
                "currency": pledge.currency.lower(),
                "unit_amount": stripe_amount,
                "product_data": {"name": f"{need.project.title}: {need.title}"[:250]},
            },
        }],
        "client_reference_id": reference,
        "metadata": {"pledge_id": reference, "need_id": str(need.id)},
        # Copied to the charge, so that refunds and failures find the pledge even before
        # checkout.session.completed has stored the payment intent.
        "payment_intent_data": {"metadata": {"pledge_id": reference}},
        "customer_email": user.email,
        "success_url": success_url.replace(PLEDGE_ID_PLACEHOLDER, reference),
        "cancel_url": cancel_url.replace(PLEDGE_ID_PLACEHOLDER, reference),
        "expires_at": int((utcnow() + CHECKOUT_LIFETIME).timestamp()),
    }


def create_card_pledge(
    user: User, need_id: int, amount_minor: int, currency: str, idempotency_key: str | None,
    success_url: str, cancel_url: str,
) -> tuple[Pledge, str | None, bool]:
    """Create a card pledge and its Stripe Checkout Session; return (pledge, checkout_url, created).

    The pledge starts as pending_payment and reserves its amount against the goal; the
    webhook confirms or cancels it. `{PLEDGE_ID}` in either URL becomes the pledge's id, and
    Stripe replaces `{CHECKOUT_SESSION_ID}`. A repeated idempotency key returns the first
    pledge and the URL of its session while that is open, else None.

    Unlike other services this one commits when Stripe fails: the pledge is cancelled with
    the reason in its ledger, which releases the goal, and PaymentGatewayError (502) follows.
    On success the caller commits.
    """
    _require_cards()
    if amount_minor > 0:
        # Before the pledge reserves anything; create_pledge rejects amounts of zero or less.
        gateway.to_stripe_amount(amount_minor, currency)
    pledge, created = create_pledge(user, need_id, amount_minor, currency, kind="card", idempotency_key=idempotency_key)
    if not created:
        return pledge, checkout_url(pledge), False

    stripe_amount = gateway.to_stripe_amount(pledge.amount_minor, pledge.currency)
    params = checkout_params(pledge, user, stripe_amount, success_url, cancel_url)
    try:
        session = gateway.create_checkout_session(params, checkout_idempotency_key(pledge))
    except stripe.StripeError as error:
        reason = f"Stripe checkout failed: {gateway.describe(error)}"
        logger.error("checkout session failed pledge=%s user=%s: %s", pledge.id, user.id, reason)
        transition(pledge.id, "expire", None, reason=reason)
        db.session.commit()
        raise PaymentGatewayError(f"{reason}. The pledge was cancelled; please try again later.") from error

    pledge.payment_session_id = session.id
    pledge.payment_intent_id = session.payment_intent
    db.session.flush()
    logger.info("checkout session created pledge=%s session=%s amount=%s %s", pledge.id, session.id, stripe_amount, pledge.currency)
    return pledge, session.url, True


def checkout_url(pledge: Pledge) -> str | None:
    """Return the URL of the pledge's open Checkout Session, or None when there is none.

    Raise PaymentGatewayError when Stripe cannot be asked.
    """
    if pledge.state != "pending_payment" or not pledge.payment_session_id:
        return None
    try:
        session = gateway.retrieve_checkout_session(pledge.payment_session_id)
    except stripe.StripeError as error:
        logger.error("checkout session lookup failed pledge=%s session=%s: %s", pledge.id, pledge.payment_session_id, gateway.describe(error))
        raise PaymentGatewayError(f"{gateway.describe(error)}. Try again in a minute.") from error
    return session.url if session.status == "open" else None


# Refunds


@dataclass(frozen=True)
class RefundRequest:
    """A refund that Stripe accepted; the charge.refunded webhook settles the pledge."""

    id: str
    pledge_id: int
    # In minor units of the pledge's currency.
    amount_minor: int
    currency: str
    status: str


def paid_after_cancel(pledge: Pledge) -> bool:
    """Return True when Stripe reported a payment for a pledge that was already cancelled."""
    return pledge.kind == "card" and pledge.state == "cancelled" and pledge.payment_intent_id is not None


def refunded_after_cancel(pledge: Pledge) -> bool:
    """Return True when a refund was reported for a cancelled pledge that had been paid."""
    return db.session.scalar(
        select(StripeEvent.id).where(StripeEvent.pledge_id == pledge.id, StripeEvent.type == "charge.refunded").limit(1)
    ) is not None


def refundable_minor(pledge: Pledge) -> int | None:
    """Return what is left to refund in the pledge's currency, or None when only Stripe can tell.

    The refunded total is kept in the need's currency; converting it back is exact only
    when both currencies agree or nothing was refunded yet.
    """
    if pledge.state == "cancelled" or pledge.refunded_minor == 0:
        return pledge.amount_minor
    if pledge.currency == pledge.need.currency:
        return pledge.amount_minor - pledge.refunded_minor
    return None


def refund_pledge(user: User, pledge_id: int, amount_minor: int | None = None) -> RefundRequest:
    """Ask Stripe to refund all or part of a card pledge; the pledge itself does not change.

    `amount_minor` is in the pledge's currency; None refunds all that is left. The
    charge.refunded webhook moves the pledge to refunded, or keeps it confirmed with a
    smaller active amount, when Stripe confirms the refund.
    """
    if not user.is_coordinator:
        raise Forbidden("Only coordinators can refund pledges.")
    _require_cards()
    pledge = get_pledge(user, pledge_id)
    if pledge.kind != "card":
        raise Conflict(f"Pledge {pledge.id} is a commitment: cancel it instead of refunding it.", {"kind": pledge.kind})
    if pledge.payment_intent_id is None:
        raise Conflict(f"Stripe has not reported a payment for pledge {pledge.id}.", {"state": pledge.state})
    if pledge.disputed:
        raise Conflict(f"The payment of pledge {pledge.id} is disputed; Stripe refunds it only if the dispute is lost.", {"state": pledge.state})
    if not payment_status(pledge).refundable:
        raise Conflict(f"Cannot refund a pledge that is {pledge.state}.", {"state": pledge.state})

    left = refundable_minor(pledge)
    if amount_minor is not None:
        amount_label = f"{to_decimal(amount_minor, pledge.currency)} {pledge.currency}"
        if amount_minor <= 0:
            raise ValidationFailed(f"Refund {amount_label} must be greater than zero.", {"amount": f"Amount {amount_label} must be greater than zero."})
        if left is not None and amount_minor > left:
            maximum = f"{to_decimal(left, pledge.currency)} {pledge.currency}"
            message = f"Refund {amount_label} is more than the {maximum} not yet refunded."
            raise ValidationFailed(message, {"amount": message})
    params: dict = {
        "payment_intent": pledge.payment_intent_id,
        "metadata": {"pledge_id": str(pledge.id), "requested_by": str(user.id)},
    }
    if amount_minor is not None:
        params["amount"] = gateway.to_stripe_amount(amount_minor, pledge.currency)
    # Equal while no refund has settled, so a double submit cannot refund twice.
    key = f"refund-pledge-{pledge.id}-{pledge.refunded_minor}-{params.get('amount', 'rest')}"
    try:
        refund = gateway.create_refund(params, key)
    except stripe.StripeError as error:
        logger.error("refund failed pledge=%s user=%s: %s", pledge.id, user.id, gateway.describe(error))
        raise PaymentGatewayError(f"Refund failed: {gateway.describe(error)}. The pledge is unchanged.") from error

    amount = gateway.from_stripe_amount(int(refund["amount"]), pledge.currency)
    logger.info("refund requested pledge=%s refund=%s amount=%s %s user=%s", pledge.id, refund["id"], amount, pledge.currency, user.id)
    return RefundRequest(refund["id"], pledge.id, amount, pledge.currency, refund.get("status") or "pending")


@dataclass(frozen=True)
class PaymentStatus:
    """Card payment facts shown on the pledge page."""

    refundable: bool
    refund_needed: bool
    left_minor: int | None


def payment_status(pledge: Pledge) -> PaymentStatus:
    """Describe the card payment of a pledge for its page."""
    if pledge.kind != "card":
        return PaymentStatus(False, False, None)
    refund_needed = paid_after_cancel(pledge) and not refunded_after_cancel(pledge)
    refundable = pledge.payment_intent_id is not None and not pledge.disputed and (pledge.state == "confirmed" or refund_needed)
    return PaymentStatus(refundable, refund_needed, refundable_minor(pledge) if refundable else None)
