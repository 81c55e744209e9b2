"""The GET filter form of the audit page."""

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import Optional, ValidationError

from financing.audit.access import MAX_ID
from financing.audit.models import OBJECT_TYPES
from financing.projects.forms import IsoDateField

OBJECT_TYPE_LABELS = {
    "project": _l("Project"), "pledge": _l("Pledge"), "match": _l("Match"), "match_fund": _l("Match fund"),
    "exchange_rate": _l("Exchange rate"), "funder": _l("Funder"), "user": _l("User"), "api_token": _l("API token"),
}
# Value of the user filter that selects changes made by the system (no user).
SYSTEM = "system"


def _whole_number(form, field) -> None:
    text = (field.data or "").strip()
    if text and not (text.isascii() and text.isdigit() and 0 < int(text) <= MAX_ID):
        raise ValidationError(_("Object id %(value)r must be a whole number from 1 to %(max)s.", value=field.data, max=MAX_ID))


class AuditFilterForm(FlaskForm):
    class Meta:
        csrf = False

    object_type = SelectField(_l("Object type"), validate_choice=False)
    object_id = StringField(_l("Object id"), validators=[Optional(), _whole_number])
    action = SelectField(_l("Action"), validate_choice=False)
    user = StringField(_l("User"), description=_l("Email or id of the user, or “system” for changes without a user."))
    since = IsoDateField(_l("From (UTC)"), validators=[Optional()])
    until = IsoDateField(_l("Until (UTC)"), validators=[Optional()])

    def set_choices(self, actions: list[str]) -> None:
        self.object_type.choices = [SelectChoice("", _("Any type"))] + [
            SelectChoice(name, OBJECT_TYPE_LABELS[name]) for name in OBJECT_TYPES
        ]
        self.action.choices = [SelectChoice("", _("Any action"))] + [SelectChoice(name, name) for name in actions]

    def validate_object_type(self, field) -> None:
        if field.data and field.data not in OBJECT_TYPES:
            raise ValidationError(_("Unknown object type %(value)r.", value=field.data))

    def validate_action(self, field) -> None:
        if field.data and not (len(field.data) <= 40 and field.data.replace("_", "").isalnum()):
            raise ValidationError(_("Unknown action %(value)r.", value=field.data))
