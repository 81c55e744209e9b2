"""Forms of the pledge pages: the donor's pledge and the coordinator's actions."""

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import HiddenField, RadioField, SelectField, SelectMultipleField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import Length, Regexp

# A uuid4 in its canonical text form, as the pledge form generates it.
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"


KIND_LABELS = {"commitment": _l("Commitment"), "card": _l("Card payment")}


class PledgeForm(FlaskForm):
    """A donor's pledge against one funding need.

    The amount is text in major units of the chosen currency. The view parses it with
    financing.money.parse_amount, whose errors name the value and the currency. The view
    also sets the choices of `currency` and `kind` for the need and the platform.
    """

    # The pledge service checks the posted code and names a currency without a stored rate,
    # which can happen when the form is older than a change of the rates.
    currency = SelectField(_l("Currency"), validate_choice=False)
    amount = StringField(_l("Amount"), validators=[Length(max=40)])
    # The view checks the posted kind, so that its message can name the value.
    kind = RadioField(_l("Kind of pledge"), choices=[SelectChoice("commitment", KIND_LABELS["commitment"])], default="commitment", validate_choice=False)
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



class ReviewFilterForm(FlaskForm):
    """Filters of the pledges awaiting confirmation, read from the query string.

    The view sets the choices from the pledges that await confirmation and checks the values,
    so that an error can name the value.
    """

    class Meta:
        csrf = False

    project = SelectField(_l("Project"), validate_choice=False)
    funder = SelectField(_l("Funder"), validate_choice=False)
    currency = SelectField(_l("Currency"), validate_choice=False)
    older_than = StringField(_l("Older than (days)"), validators=[Length(max=10)], render_kw={"inputmode": "numeric"})


class BulkActionForm(FlaskForm):
    """Confirm or cancel the pledges ticked in the review table, all in one transaction."""

    # The checkboxes sit in the table rows, outside this form's element, and join it through
    # their HTML `form` attribute, so that each row can keep its own single-pledge forms.
    pledge = SelectMultipleField(validate_choice=False)
    # Posted by the submit button that was pressed (confirm or cancel); never rendered as an
    # input, so that it carries only the button's value.
    action = StringField(validators=[Length(max=20)])
    reason = TextAreaField(_l("Reason for cancelling"), validators=[Length(max=2000)])

    def __init__(self, *args, **kwargs):
        super().__init__(*args, prefix="bulk", **kwargs)
