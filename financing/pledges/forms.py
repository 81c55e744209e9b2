"""Forms of the pledge pages: the donor's pledge and the coordinator's actions."""

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import HiddenField, RadioField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import Length, Regexp

# A uuid4 in its canonical text form, as the pledge form generates it.
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"


class PledgeForm(FlaskForm):
    """A donor's pledge against one funding need.

    The amount is text in major units of the need's currency. The view parses it with
    financing.money.parse_amount, whose errors name the value and the currency.
    """

    amount = StringField(_l("Amount"), validators=[Length(max=40)])
    # Read-only on the page. It is posted back so that a need whose currency changed after
    # the form was rendered rejects the pledge instead of reading the amount in another currency.
    currency = StringField(_l("Currency"), validators=[Length(max=3)], render_kw={"readonly": True})
    # NOTE: card pledges need Stripe Checkout, which the payments package adds; until then
    # the form offers institutional commitments only.
    kind = RadioField(_l("Kind of pledge"), choices=[SelectChoice("commitment", _l("Commitment (paid by transfer after confirmation)"))], default="commitment")
    # Generated when the form is rendered, so a repeated submit returns the first pledge.
    idempotency_key = HiddenField(validators=[Regexp(UUID_PATTERN, message=_l("The form is incomplete; submit it again."))])


class ActionForm(FlaskForm):
    """Base of the coordinator's forms, whose return_to field picks the page to return to."""

    return_to = HiddenField(default="detail")

    def __init__(self, pledge_id: int, *args, **kwargs):
        # A prefix per pledge keeps field ids unique on the review page, where each pledge
        # has its own forms.
        super().__init__(*args, prefix=f"{self.action}-{pledge_id}", **kwargs)


class ConfirmForm(ActionForm):
    action = "confirm"


class CancelForm(ActionForm):
    action = "cancel"
    # Required: the service rejects an empty reason with a message that names the field.
    reason = TextAreaField(_l("Reason for cancelling"), validators=[Length(max=2000)])


class DisburseForm(ActionForm):
    action = "disburse"
    amount = StringField(_l("Amount disbursed"), validators=[Length(max=40)])


ACTION_FORMS: dict[str, type[ActionForm]] = {form.action: form for form in (ConfirmForm, CancelForm, DisburseForm)}

