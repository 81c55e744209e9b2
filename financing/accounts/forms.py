"""HTML forms for logging in, registering and managing personal API tokens."""

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import EmailField, HiddenField, PasswordField, RadioField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import EqualTo, InputRequired, Length, ValidationError

from financing.accounts.passwords import is_common_password
from financing.accounts.services import (
    MAX_EMAIL_LENGTH, MAX_NAME_LENGTH, MAX_ORGANISATION_LENGTH, MAX_TOKEN_NAME_LENGTH, MIN_PASSWORD_LENGTH,
    SELF_SERVICE_ROLES, TOKEN_SCOPES,
)
from financing.projects.forms import CheckboxListField

ROLE_LABELS = {
    "owner": _l("Project owner: I publish projects that need funding"),
    "donor": _l("Donor or funder: I pledge to projects"),
}


class LoginForm(FlaskForm):
    email = EmailField(_l("Email"), validators=[InputRequired(_l("Email is required.")), Length(max=MAX_EMAIL_LENGTH)])
    password = PasswordField(_l("Password"), validators=[InputRequired(_l("Password is required."))])
    next = HiddenField()


class RegisterForm(FlaskForm):
    email = EmailField(
        _l("Email"),
        validators=[InputRequired(_l("Email is required.")), Length(max=MAX_EMAIL_LENGTH, message=_l("Use at most %(max)d characters; this has %(length)d."))],
    )
    name = StringField(
        _l("Your name"),
        validators=[InputRequired(_l("Name is required.")), Length(max=MAX_NAME_LENGTH, message=_l("Use at most %(max)d characters; this has %(length)d."))],
    )
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
    organisation = StringField(
        _l("Organisation"), validators=[Length(max=MAX_ORGANISATION_LENGTH, message=_l("Use at most %(max)d characters; this has %(length)d."))],
    )

    def validate_password(self, field):
        if field.data and is_common_password(field.data):
            raise ValidationError(_l("This password is on a list of commonly used passwords. Choose one that others are unlikely to use."))

    def validate_role(self, field):
        if field.data not in SELF_SERVICE_ROLES:
            # gettext, not lazy_gettext: a lazy string is inserted into pages unescaped.
            raise ValidationError(
                _("Role %(value)r cannot be chosen here: register as a project owner or a donor. Coordinators are appointed by an admin.", value=field.data)
            )

    def validate_organisation(self, field):
        if self.role.data == "owner" and not (field.data or "").strip():
            raise ValidationError(_l("Project owners must name their organisation."))


SCOPE_LABELS = {
    "read": _l("Read: see projects, pledges, matches and other data (GET requests)"),
    "pledge": _l("Pledge: make pledges and cancel your own"),
    "manage": _l("Manage: every other change, such as editing projects or confirming pledges"),
}


class TokenForm(FlaskForm):
    name = StringField(
        _l("Token name"),
        validators=[InputRequired(_l("Give the token a name, such as the script that will use it.")), Length(max=MAX_TOKEN_NAME_LENGTH)],
    )
    # Choices are checked by validate_scopes, so that the message can name the rejected value.
    scopes = CheckboxListField(
        _l("Scopes"),
        choices=[SelectChoice(scope, SCOPE_LABELS[scope]) for scope in TOKEN_SCOPES],
        default=["read"],
        validate_choice=False,
    )

    def validate_scopes(self, field):
        if not field.data:
            raise ValidationError(_("Choose at least one scope."))
        for value in field.data:
            if value not in TOKEN_SCOPES:
                # gettext, not lazy_gettext: a lazy string is inserted into pages unescaped.
                raise ValidationError(_("Unknown scope %(value)r: choose read, pledge or manage.", value=value))

