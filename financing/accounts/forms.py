"""HTML forms for logging in, registering and managing personal API tokens."""

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import EmailField, HiddenField, PasswordField, RadioField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import EqualTo, InputRequired, Length, ValidationError

from financing.accounts.services import MIN_PASSWORD_LENGTH, SELF_SERVICE_ROLES

ROLE_LABELS = {
    "owner": _l("Project owner: I publish projects that need funding"),
    "donor": _l("Donor or funder: I pledge to projects"),
}


class LoginForm(FlaskForm):
    email = EmailField(_l("Email"), validators=[InputRequired(_l("Email is required.")), Length(max=254)])
    password = PasswordField(_l("Password"), validators=[InputRequired(_l("Password is required."))])
    next = HiddenField()


class RegisterForm(FlaskForm):
    email = EmailField(_l("Email"), validators=[InputRequired(_l("Email is required.")), Length(max=254)])
    name = StringField(_l("Your name"), validators=[InputRequired(_l("Name is required.")), Length(max=200)])
    password = PasswordField(
        _l("Password"),
        validators=[
            InputRequired(_l("Password is required.")),
            Length(min=MIN_PASSWORD_LENGTH, message=_l("Use at least %(count)s characters.", count=MIN_PASSWORD_LENGTH)),
        ],
    )
    confirm = PasswordField(
        _l("Repeat the password"),
        validators=[InputRequired(_l("Repeat the password.")), EqualTo("password", _l("The two passwords differ."))],
    )
    # Choices are checked by validate_role, so that the message can name the rejected value.
    role = RadioField(
        _l("I am a"),
        choices=[SelectChoice(role, ROLE_LABELS[role]) for role in SELF_SERVICE_ROLES],
        validate_choice=False,
        validators=[InputRequired(_l("Choose a role."))],
    )
    organisation = StringField(_l("Organisation"), validators=[Length(max=300)])

    def validate_role(self, field):
        if field.data not in SELF_SERVICE_ROLES:
            # gettext, not lazy_gettext: a lazy string is inserted into pages unescaped.
            raise ValidationError(
                _("Role %(value)r cannot be chosen here: register as a project owner or a donor. Coordinators are appointed by an admin.", value=field.data)
            )

    def validate_organisation(self, field):
        if self.role.data == "owner" and not (field.data or "").strip():
            raise ValidationError(_l("Project owners must name their organisation."))


class TokenForm(FlaskForm):
    name = StringField(
        _l("Token name"),
        validators=[InputRequired(_l("Give the token a name, such as the script that will use it.")), Length(max=100)],
    )

