"""The form of the review page's bulk decisions."""

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import SelectMultipleField, StringField, TextAreaField
from wtforms.validators import Length

from financing.matching.services import MAX_REASON_LENGTH


class BulkDecisionForm(FlaskForm):
    """Publish, accept, reject, confirm or cancel the rows ticked in one tab, in one transaction."""

    # The checkboxes sit in the rows, outside this form's element, and join it through their
    # HTML `form` attribute, so that a project row can keep its own publish and return forms.
    # The view parses the ids, so that an error can name a bad value.
    selected = SelectMultipleField(validate_choice=False)
    # Posted by the submit button that was pressed, never rendered as an input.
    action = StringField(validators=[Length(max=20)])
    reason = TextAreaField(_l("Reason"), validators=[Length(max=MAX_REASON_LENGTH)])

    def __init__(self, *args, **kwargs):
        super().__init__(*args, prefix="bulk", **kwargs)
