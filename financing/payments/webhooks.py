"""Stripe webhook events: verification, storing each event once, and their effect on pledges.

Events may arrive twice and in any order, so each handler looks at the pledge's current
state instead of assuming the previous event:

- A payment (checkout.session.completed) confirms a pending pledge. For a pledge that was
  already cancelled (the session expired or a payment failed first) it changes nothing and
  the event's outcome reads "paid after cancellation: refund needed" for a coordinator, who
  can refund the pledge from its page.
- An expiry or failure cancels only a pending pledge; after a payment it is ignored.
- charge.refunded carries the cumulative refunded amount, so the handler refunds only the
  difference to what the pledge already shows. An older event with a smaller total changes
  nothing. A refund or dispute that arrives before the payment first confirms the pledge.
- A charge has at most one dispute, so charge.dispute.created after charge.dispute.closed
  for the same pledge is stale and ignored.

Rules of the pledge state machine that an event breaks (a refund of a disbursed pledge)
are recorded in the event's outcome as "needs attention" and acknowledged with 200, because
Stripe's retries could not change them.
"""

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import stripe
from sqlalchemy import select

from financing.core.errors import DomainError
from financing.extensions import db
from financing.money import convert
from financing.payments import gateway
from financing.payments.models import StripeEvent
from financing.pledges.models import Pledge
from financing.pledges.services import transition

logger = logging.getLogger(__name__)

# Seconds a signature timestamp may be old, as Stripe's libraries default to.
SIGNATURE_TOLERANCE = 300
OUTCOME_LENGTH = 300


class InvalidEvent(ValueError):
    """The payload is not a Stripe event signed with the webhook secret."""


def verify(payload: bytes, signature: str | None, secret: str) -> dict:
    """Check the Stripe-Signature header of a raw body and return the event as a dict."""
    try:
        event = stripe.Webhook.construct_event(payload, signature, secret, tolerance=SIGNATURE_TOLERANCE)
    except stripe.SignatureVerificationError as error:
        raise InvalidEvent(f"Invalid Stripe signature: {error.user_message or error}") from error
    except ValueError as error:  # invalid JSON or UTF-8, after a valid signature
        raise InvalidEvent(f"Invalid event payload: {error}") from error
    data = event.to_dict()
    if not isinstance(data.get("id"), str) or not isinstance(data.get("type"), str) or not isinstance(data.get("data"), dict):
        raise InvalidEvent("The payload is not a Stripe event: id, type or data is missing.")
    return data


@dataclass
class Result:
    """The effect of one event; `after_commit` runs once the transaction has committed."""

    outcome: str
    pledge_id: int | None = None
    duplicate: bool = False
    after_commit: list[Callable[[], None]] = field(default_factory=list)


def is_recorded(event_id: str) -> bool:
    return db.session.get(StripeEvent, event_id) is not None


def process(event: dict) -> Result:
    """Store the event and apply it to its pledge in the current transaction; the caller commits.

    A known event id returns a duplicate Result and changes nothing. A concurrent delivery
    of the same event makes the insert raise IntegrityError, which the caller treats as
    a duplicate after rolling back.
    """
    if is_recorded(event["id"]):
        return Result("already processed", duplicate=True)
    record = StripeEvent(
        id=event["id"], type=event["type"],
        created=datetime.fromtimestamp(int(event.get("created") or 0), tz=timezone.utc),
    )
    db.session.add(record)
    db.session.flush()

    handler = HANDLERS.get(event["type"])
    obj = event["data"].get("object") or {}
    if handler is None:
        result = Result(f"ignored: no handler for {event['type']}")
    else:
        try:
            with db.session.begin_nested():
                result = handler(obj)
        except (DomainError, ValueError) as error:
            message = error.message if isinstance(error, DomainError) else str(error)
            result = Result(f"needs attention: {message}", _pledge_id_hint(obj))
    record.pledge_id = result.pledge_id
    record.outcome = result.outcome[:OUTCOME_LENGTH]
    db.session.flush()
    level = logging.WARNING if result.outcome.startswith(("needs attention", "paid after")) else logging.INFO
    logger.log(level, "stripe event id=%s type=%s pledge=%s outcome=%s", record.id, record.type, record.pledge_id, record.outcome)
    return result


def _pledge_id_hint(obj: dict) -> int | None:
    reference = (obj.get("metadata") or {}).get("pledge_id") or obj.get("client_reference_id")
    pledge = _pledge_by_reference(reference)
    return pledge.id if pledge is not None else None


# Finding and locking the pledge


def _locked(pledge_id: int) -> Pledge:
    """Lock the pledge row for the rest of the transaction, so events on it run one at a time."""
    pledge = db.session.scalar(select(Pledge).where(Pledge.id == pledge_id).with_for_update())
    db.session.refresh(pledge)
    return pledge


def _pledge_by_reference(reference: object) -> Pledge | None:
    text = str(reference or "")
    if not text.isdigit() or len(text) > 18:
        return None
    pledge = db.session.get(Pledge, int(text))
    return pledge if pledge is not None and pledge.kind == "card" else None


def pledge_for_session(session: dict) -> Pledge | None:
    """Find the pledge of a Checkout Session by its id, else by the pledge id it carries.

    The pledge id counts only for a pledge without a session of its own: a session whose
    creation timed out on our side can still send events.
    """
    session_id = session.get("id")
    pledge = db.session.scalar(select(Pledge).where(Pledge.payment_session_id == session_id)) if session_id else None
    if pledge is None:
        candidate = _pledge_by_reference(session.get("client_reference_id") or (session.get("metadata") or {}).get("pledge_id"))
        if candidate is not None and candidate.payment_session_id is None:
            pledge = candidate
    return _locked(pledge.id) if pledge is not None else None


def pledge_for_payment(intent_id: str | None, metadata: dict | None) -> Pledge | None:
    """Find the pledge of a payment intent, else by the pledge id in the metadata."""
    pledge = db.session.scalar(select(Pledge).where(Pledge.payment_intent_id == intent_id)) if intent_id else None
    if pledge is None:
        candidate = _pledge_by_reference((metadata or {}).get("pledge_id"))
        if candidate is not None and candidate.payment_intent_id in (None, intent_id):
            pledge = candidate
    return _locked(pledge.id) if pledge is not None else None


def _intent_id(obj: dict, key: str = "payment_intent") -> str | None:
    value = obj.get(key)
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) else None


def _pay_if_pending(pledge: Pledge, intent_id: str | None, source: str) -> None:
    """Confirm a pending pledge from an event that proves the payment (out of order)."""
    if intent_id and pledge.payment_intent_id is None:
        pledge.payment_intent_id = intent_id
    if pledge.state == "pending_payment":
        transition(pledge.id, "pay", None, reason=f"Paid by card (reported by {source} before the completed checkout).")


# Handlers: each returns the Result of one event's data.object


def session_completed(session: dict) -> Result:
    pledge = pledge_for_session(session)
    if pledge is None:
        return Result(f"ignored: no pledge for session {session.get('id')}")
    intent_id = _intent_id(session)
    if intent_id and pledge.payment_intent_id is None:
        pledge.payment_intent_id = intent_id
    if session.get("payment_status") not in ("paid", "no_payment_required"):
        return Result(f"waiting: session completed with payment status {session.get('payment_status')}", pledge.id)
    if pledge.state == "pending_payment":
        transition(pledge.id, "pay", None, reason=f"Paid by card (Stripe Checkout session {session.get('id')}).")
        return Result(f"confirmed pledge {pledge.id}", pledge.id)
    if pledge.state == "cancelled":
        return Result(f"paid after cancellation: refund needed for pledge {pledge.id} (payment intent {intent_id})", pledge.id)
    return Result(f"already paid: pledge {pledge.id} is {pledge.state}", pledge.id)


def _cancel_pending(pledge: Pledge, reason: str) -> Result:
    if pledge.state == "pending_payment":
        transition(pledge.id, "expire", None, reason=reason)
        return Result(f"cancelled pledge {pledge.id}", pledge.id)
    return Result(f"ignored: pledge {pledge.id} is already {pledge.state}", pledge.id)


def session_expired(session: dict) -> Result:
    pledge = pledge_for_session(session)
    if pledge is None:
        return Result(f"ignored: no pledge for session {session.get('id')}")
    return _cancel_pending(pledge, f"Stripe Checkout session {session.get('id')} expired without payment.")


def session_payment_failed(session: dict) -> Result:
    pledge = pledge_for_session(session)
    if pledge is None:
        return Result(f"ignored: no pledge for session {session.get('id')}")
    return _cancel_pending(pledge, f"The payment of Stripe Checkout session {session.get('id')} failed.")


def payment_failed(intent: dict) -> Result:
    """Cancel the pledge and expire its session, so that no later payment lands on it."""
    intent_id = _intent_id(intent, "id")
    pledge = pledge_for_payment(intent_id, intent.get("metadata"))
    if pledge is None:
        return Result(f"ignored: no pledge for payment intent {intent_id}")
    if pledge.payment_intent_id is None:
        pledge.payment_intent_id = intent_id
    was_pending = pledge.state == "pending_payment"
    message = (intent.get("last_payment_error") or {}).get("message") or "no reason given"
    result = _cancel_pending(pledge, f"Card payment failed: {message}")
    if was_pending and pledge.payment_session_id:
        result.after_commit.append(lambda session_id=pledge.payment_session_id: _expire_session(session_id))
    return result


def _expire_session(session_id: str) -> None:
    try:
        gateway.expire_checkout_session(session_id)
        logger.info("checkout session expired session=%s", session_id)
    except stripe.StripeError as error:
        # An open session expires by itself within the checkout lifetime.
        logger.warning("checkout session not expired session=%s: %s", session_id, gateway.describe(error))


def charge_refunded(charge: dict) -> Result:
    pledge = pledge_for_payment(_intent_id(charge), charge.get("metadata"))
    if pledge is None:
        return Result(f"ignored: no pledge for charge {charge.get('id')}")
    currency = str(charge.get("currency") or "").upper()
    if currency != pledge.currency:
        raise ValueError(f"refund in {currency} for pledge {pledge.id} in {pledge.currency}")
    refunded = gateway.from_stripe_amount(int(charge.get("amount_refunded") or 0), currency)
    if pledge.state == "cancelled":
        return Result(f"refund of cancelled pledge {pledge.id} recorded: {refunded} {currency} minor units, nothing to release", pledge.id)
    _pay_if_pending(pledge, _intent_id(charge), "charge.refunded")
    if pledge.state == "refunded":
        return Result(f"already refunded: pledge {pledge.id}", pledge.id)

    # The cumulative refund in the need's currency; only a refund of the whole charge
    # releases the whole pledge, whatever the rounding of the conversion.
    need = pledge.need
    if refunded >= pledge.amount_minor:
        target = pledge.need_amount_minor
    else:
        target = min(convert(refunded, pledge.currency, need.currency, pledge.rate), pledge.need_amount_minor - 1)
    difference = target - pledge.refunded_minor
    if difference <= 0:
        return Result(f"no change: pledge {pledge.id} already shows {pledge.refunded_minor} refunded", pledge.id)
    transition(pledge.id, "refund", None, difference, reason=f"Refunded through Stripe (charge {charge.get('id')}).")
    return Result(f"refunded {difference} {need.currency} minor units of pledge {pledge.id}, now {pledge.state}", pledge.id)


def _dispute_closed_before(pledge: Pledge) -> bool:
    return db.session.scalar(
        select(StripeEvent.id).where(StripeEvent.pledge_id == pledge.id, StripeEvent.type == "charge.dispute.closed").limit(1)
    ) is not None


def dispute_created(dispute: dict) -> Result:
    # NOTE: a dispute carries no pledge metadata, only the payment intent. One that arrives
    # before checkout.session.completed stored that intent is recorded as ignored.
    pledge = pledge_for_payment(_intent_id(dispute), dispute.get("metadata"))
    if pledge is None:
        return Result(f"ignored: no pledge for dispute {dispute.get('id')}")
    if _dispute_closed_before(pledge):
        return Result(f"ignored: the dispute on pledge {pledge.id} is already closed", pledge.id)
    _pay_if_pending(pledge, _intent_id(dispute), "charge.dispute.created")
    if pledge.disputed:
        return Result(f"already in dispute: pledge {pledge.id}", pledge.id)
    transition(pledge.id, "dispute_open", None, reason=f"Card payment disputed ({dispute.get('reason') or 'no reason given'}).")
    return Result(f"dispute opened on pledge {pledge.id}", pledge.id)


def dispute_closed(dispute: dict) -> Result:
    pledge = pledge_for_payment(_intent_id(dispute), dispute.get("metadata"))
    if pledge is None:
        return Result(f"ignored: no pledge for dispute {dispute.get('id')}")
    status = dispute.get("status")
    # warning_closed: an inquiry closed without a chargeback, so the money stays.
    action = {"won": "dispute_won", "warning_closed": "dispute_won", "lost": "dispute_lost"}.get(status)
    if action is None:
        return Result(f"ignored: dispute status {status}", pledge.id)
    _pay_if_pending(pledge, _intent_id(dispute), "charge.dispute.closed")
    if pledge.state == "refunded":
        # Refunded in full already: nothing more to release, whatever the result.
        pledge.disputed = False
        return Result(f"dispute {status}: pledge {pledge.id} is already refunded", pledge.id)
    transition(pledge.id, action, None, reason=f"Dispute closed: {status}.")
    return Result(f"dispute {status} on pledge {pledge.id}, now {pledge.state}", pledge.id)


HANDLERS: dict[str, Callable[[dict], Result]] = {
    "checkout.session.completed": session_completed,
    "checkout.session.async_payment_succeeded": session_completed,
    "checkout.session.expired": session_expired,
    "checkout.session.async_payment_failed": session_payment_failed,
    "payment_intent.payment_failed": payment_failed,
    "charge.refunded": charge_refunded,
    "charge.dispute.created": dispute_created,
    "charge.dispute.closed": dispute_closed,
}
