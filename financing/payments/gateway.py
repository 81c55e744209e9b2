"""The Stripe API as the platform uses it: the client, amounts in Stripe's unit, and errors.

Amounts in the database are integer minor units with the ISO 4217 exponent. Stripe expects
"the currency's smallest unit" with its own exponents, which differ for a few currencies.
Source: Stripe's supported currencies page, https://docs.stripe.com/currencies (sections
"Zero-decimal currencies", "Three-decimal currencies" and "Special cases"), and Stripe's
support note on fractional ISK (https://support.stripe.com/questions/deprecation-of-fractional-isk-charges-and-refunds).
"""

import logging
from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import urlsplit

import stripe
from flask import current_app

from financing.core.errors import DomainError, ValidationFailed
from financing.money import MoneyError, check_currency, minor_units, to_decimal

logger = logging.getLogger(__name__)

SWITCHED_OFF = "Card payments are switched off on this platform."

# Stripe takes whole units of these currencies. MGA has exponent 2 in ISO 4217, so an MGA
# amount must be a whole number of ariary to be sent.
ZERO_DECIMAL = frozenset({
    "BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF",
})
# Stripe takes thousandths of these currencies, but the last digit must be 0.
THREE_DECIMAL = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})
# Stripe's exponent for every other currency is 2. ISK has exponent 0 in ISO 4217, and Stripe
# keeps it two-decimal but takes only multiples of 100 (whole krónur). HUF is two-decimal for
# charges and zero-decimal only for payouts, which this platform does not make.
# NOTE: TWD is treated like HUF; the copy of Stripe's page read for this did not show its row.
STEP = {"ISK": 100, **{code: 10 for code in THREE_DECIMAL}}
# Stripe accepts at most eight digits in an amount (99,999,999 in its unit).
MAX_STRIPE_AMOUNT = 99_999_999
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class PaymentGatewayError(DomainError):
    """Stripe failed or could not be reached; the platform responds with 502."""

    status = 502
    code = "payment_gateway_error"


def stripe_exponent(currency: str) -> int:
    """Return the number of decimals of Stripe's amount unit for a currency."""
    if currency in ZERO_DECIMAL:
        return 0
    if currency in THREE_DECIMAL:
        return 3
    return 2


def to_stripe_amount(amount_minor: int, currency: str, field: str = "amount") -> int:
    """Convert ISO minor units to the integer amount that Stripe expects for the currency.

    Raise ValidationFailed, naming the amount, when Stripe cannot take it exactly: a
    fraction of a unit Stripe does not subdivide, a BHD amount whose last digit is not 0,
    more decimals than Stripe takes, or more than eight digits.
    """
    try:
        currency = check_currency(currency)
    except MoneyError as error:
        raise ValidationFailed(error.message, {"currency": error.message}) from error
    iso = minor_units(currency)
    exponent = stripe_exponent(currency)
    amount_label = f"{to_decimal(amount_minor, currency)} {currency}"
    if iso > exponent and currency not in ZERO_DECIMAL:
        message = f"Card payments in {currency} are not available: Stripe takes {currency} amounts with at most {exponent} decimals."
        raise ValidationFailed(message, {field: message})

    scale = 10 ** abs(exponent - iso)
    if exponent >= iso:
        stripe_amount = amount_minor * scale
    elif amount_minor % scale:
        message = f"Amount {amount_label} cannot be paid by card: Stripe takes whole units of {currency}."
        raise ValidationFailed(message, {field: message})
    else:
        stripe_amount = amount_minor // scale

    step = STEP.get(currency, 1)
    if stripe_amount % step:
        unit = Decimal(step).scaleb(-exponent)
        message = f"Amount {amount_label} cannot be paid by card: Stripe takes {currency} amounts in steps of {unit}."
        raise ValidationFailed(message, {field: message})
    if stripe_amount > MAX_STRIPE_AMOUNT:
        largest = Decimal(MAX_STRIPE_AMOUNT).scaleb(-exponent)
        message = f"Amount {amount_label} is more than one card payment can carry (at most {largest} {currency}); pledge a commitment instead."
        raise ValidationFailed(message, {field: message})
    return stripe_amount


def from_stripe_amount(stripe_amount: int, currency: str) -> int:
    """Convert an amount in Stripe's unit to ISO minor units; raise ValueError if inexact."""
    currency = currency.upper()
    iso = minor_units(currency)
    exponent = stripe_exponent(currency)
    scale = 10 ** abs(iso - exponent)
    if iso >= exponent:
        return stripe_amount * scale
    if stripe_amount % scale:
        raise ValueError(f"Stripe amount {stripe_amount} {currency} is not a whole number of {currency} minor units.")
    return stripe_amount // scale


# The client


def card_payments_enabled() -> bool:
    """Return True when a Stripe secret key is configured; without one, card payments are off."""
    return bool(current_app.config.get("STRIPE_SECRET_KEY"))


def api_base() -> str | None:
    """Return STRIPE_API_BASE, or None for Stripe itself; tests may use only loopback."""
    base = (current_app.config.get("STRIPE_API_BASE") or "").strip()
    if current_app.config.get("TESTING") and urlsplit(base).hostname not in LOOPBACK_HOSTS:
        raise PaymentGatewayError(
            f"STRIPE_API_BASE {base!r} is not a loopback address; tests must call a local Stripe fake."
        )
    return base or None


def client(timeout: float | None = None, retries: int | None = None) -> stripe.StripeClient:
    """Build a StripeClient from the app's configuration; `timeout` is in seconds."""
    base = api_base()
    if timeout is None:
        timeout = float(current_app.config.get("STRIPE_TIMEOUT_SECONDS", 20))
    if retries is None:
        retries = int(current_app.config.get("STRIPE_MAX_NETWORK_RETRIES", 2))
    return stripe.StripeClient(
        current_app.config["STRIPE_SECRET_KEY"],
        base_addresses={"api": base} if base else None,
        max_network_retries=retries,
        http_client=stripe.RequestsClient(timeout=timeout),
    )


def describe(error: stripe.StripeError) -> str:
    """Return a short reason for a Stripe error, without the request details."""
    if isinstance(error, stripe.APIConnectionError):
        return "Stripe could not be reached"
    message = error.user_message or "no message"
    return f"Stripe answered {error.http_status}: {message}"


@dataclass(frozen=True)
class Session:
    """The fields of a Checkout Session that the platform reads."""

    id: str
    url: str | None
    status: str | None
    payment_intent: str | None


def _session(data: dict) -> Session:
    intent = data.get("payment_intent")
    if isinstance(intent, dict):
        intent = intent.get("id")
    return Session(data["id"], data.get("url"), data.get("status"), intent)


def create_checkout_session(params: dict, idempotency_key: str) -> Session:
    """Create a Checkout Session; raise stripe.StripeError when Stripe fails."""
    created = client().v1.checkout.sessions.create(params=params, options={"idempotency_key": idempotency_key})
    return _session(created.to_dict())


def retrieve_checkout_session(session_id: str) -> Session:
    return _session(client().v1.checkout.sessions.retrieve(session_id).to_dict())


def expire_checkout_session(session_id: str) -> Session:
    """Expire an open Checkout Session, with one short attempt because a webhook waits on it."""
    return _session(client(timeout=5, retries=0).v1.checkout.sessions.expire(session_id).to_dict())


def create_refund(params: dict, idempotency_key: str) -> dict:
    """Create a refund of a payment intent; raise stripe.StripeError when Stripe fails."""
    return client().v1.refunds.create(params=params, options={"idempotency_key": idempotency_key}).to_dict()
