"""Payment routes: Stripe's webhook, the coordinator's refund form and the return from Checkout."""

import logging

from flask import Blueprint, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from sqlalchemy.exc import IntegrityError
from wtforms import StringField
from wtforms.validators import Length

from financing.core.errors import Conflict, DomainError, Forbidden, ValidationFailed
from financing.core.http import error_body
from financing.extensions import csrf, db
from financing.money import MoneyError, format_money, parse_amount
from financing.payments import services, webhooks
from financing.payments.gateway import PaymentGatewayError
from financing.pledges.models import Pledge
from financing.pledges.services import get_pledge

logger = logging.getLogger(__name__)

bp = Blueprint("payments", __name__)

# Stripe's event payloads are a few kilobytes; anything far larger is not from Stripe.
MAX_WEBHOOK_BYTES = 512 * 1024


@bp.app_template_global("card_payment")
def card_payment(pledge: Pledge) -> services.PaymentStatus:
    """Return what the pledge page shows about a card payment (refund form, refund needed)."""
    return services.payment_status(pledge)


def checkout_return_urls() -> tuple[str, str]:
    """Return the success and cancel URLs to pass to services.create_card_pledge.

    They lead back to this site's return page; the service puts the pledge id in.
    """
    base = url_for("payments.checkout_return", _external=True)
    return f"{base}?pledge={services.PLEDGE_ID_PLACEHOLDER}&result=paid", f"{base}?pledge={services.PLEDGE_ID_PLACEHOLDER}&result=cancelled"


# Webhook


def _webhook_error(status: int, code: str, message: str):
    return jsonify(error_body(code, message)), status


@bp.post("/payments/stripe/webhook")
@csrf.exempt
def stripe_webhook():
    secret = current_app.config.get("STRIPE_WEBHOOK_SECRET")
    if not secret:
        logger.error("stripe webhook rejected: STRIPE_WEBHOOK_SECRET is not set")
        return _webhook_error(503, "unavailable", "Stripe webhooks are not configured on this platform.")
    if request.content_length is not None and request.content_length > MAX_WEBHOOK_BYTES:
        return _webhook_error(413, "too_large", f"The payload is larger than {MAX_WEBHOOK_BYTES} bytes.")
    payload = request.get_data(cache=False)
    try:
        event = webhooks.verify(payload, request.headers.get("Stripe-Signature"), secret)
    except webhooks.InvalidEvent as error:
        logger.warning("stripe webhook rejected: %s", error)
        return _webhook_error(400, "invalid_signature", str(error))

    try:
        result = webhooks.process(event)
        db.session.commit()
    except IntegrityError:
        # The same event, delivered twice at once, was stored by the other request first.
        db.session.rollback()
        if not webhooks.is_recorded(event["id"]):
            raise
        logger.info("stripe event id=%s type=%s outcome=already processed by a concurrent delivery", event["id"], event["type"])
        result = webhooks.Result("already processed", duplicate=True)
    else:
        if result.duplicate:
            logger.info("stripe event id=%s type=%s outcome=already processed", event["id"], event["type"])
    for action in result.after_commit:
        action()
    return jsonify(received=True, id=event["id"], outcome=result.outcome)


# Refunds by coordinators


class RefundForm(FlaskForm):
    """The refund of all or part of a card pledge; an empty amount refunds all that is left."""

    amount = StringField(_l("Amount to refund"), validators=[Length(max=40)])


def require_coordinator() -> None:
    if not current_user.is_coordinator:
        raise Forbidden(_("Only coordinators can refund pledges."))


def render_refund(pledge: Pledge, form: RefundForm, status: int = 200, errors: list[str] | None = None):
    return render_template(
        "payments/refund.html", pledge=pledge, need=pledge.need, project=pledge.need.project,
        form=form, errors=errors or [], payment=services.payment_status(pledge),
    ), status


@bp.route("/pledges/<int:pledge_id>/refund", methods=["GET", "POST"])
@login_required
def refund(pledge_id: int):
    require_coordinator()
    pledge = get_pledge(current_user, pledge_id)
    if request.method == "GET":
        return render_refund(pledge, RefundForm())[0]

    form = RefundForm()
    if not form.validate_on_submit():
        return render_refund(pledge, form, 422)
    amount_minor = None
    typed = (form.amount.data or "").strip()
    if typed:
        try:
            amount_minor = parse_amount(typed, pledge.currency, "amount")
        except MoneyError as error:
            form.amount.errors = [*form.amount.errors, error.message]
            return render_refund(pledge, form, 422)

    try:
        requested = services.refund_pledge(current_user, pledge.id, amount_minor)
    except (ValidationFailed, Conflict, PaymentGatewayError) as error:
        db.session.rollback()
        logger.info("refund rejected pledge=%s user=%s status=%s: %s", pledge.id, current_user.id, error.status, error.message)
        if "amount" in error.fields:
            form.amount.errors = [*form.amount.errors, error.fields["amount"]]
            return render_refund(pledge, form, error.status)
        return render_refund(pledge, form, error.status, [error.message])

    flash(_(
        "Refund of %(amount)s requested; the pledge changes when Stripe confirms it.",
        amount=format_money(requested.amount_minor, requested.currency),
    ), "success")
    return redirect(url_for("pledges.detail", pledge_id=pledge.id))


# Return from Stripe Checkout


@bp.get("/pledges/checkout/return")
@login_required
def checkout_return():
    pledge_id = request.args.get("pledge", type=int)
    result = request.args.get("result", "paid")
    if pledge_id is None or result not in ("paid", "cancelled"):
        return render_template("error.html", status=400, message=_("The link from the payment page is incomplete.")), 400
    pledge = get_pledge(current_user, pledge_id)
    resume_url = None
    if result == "cancelled" and pledge.state == "pending_payment":
        try:
            resume_url = services.checkout_url(pledge)
        except DomainError:
            resume_url = None  # the page still explains what happens to the pledge
    return render_template(
        "payments/checkout_return.html", pledge=pledge, need=pledge.need, project=pledge.need.project,
        result=result, resume_url=resume_url,
    )
