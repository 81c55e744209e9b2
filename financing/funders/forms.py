"""Forms of the funder pages: the list filters and the donor's profile."""

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import SelectField, SelectMultipleField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import InputRequired, Length, ValidationError

from financing import reference
from financing.funders.models import FUNDER_KINDS
from financing.projects.forms import country_choices, grouped_sector_choices, region_choices, theme_choices

KIND_LABELS = {"institution": _l("Institution"), "individual": _l("Individual")}


class FunderFilterForm(FlaskForm):
    """Filters of the public funder list, read from the query string."""

    class Meta:
        csrf = False

    # The inline validators below replace WTForms' choice check, whose message omits the value.
    region = SelectField(_l("Region"), validate_choice=False)
    theme = SelectField(_l("Theme"), validate_choice=False)
    kind = SelectField(_l("Kind"), validate_choice=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        anything = [SelectChoice("", _l("Any"))]
        self.region.choices = anything + region_choices()
        self.theme.choices = anything + theme_choices()
        self.kind.choices = anything + [SelectChoice(kind, KIND_LABELS[kind]) for kind in FUNDER_KINDS]

    def validate_region(self, field):
        if field.data and field.data not in reference.regions():
            raise ValidationError(_("Unknown region %(value)r.", value=field.data))

    def validate_theme(self, field):
        if field.data and field.data not in reference.themes():
            raise ValidationError(_("Unknown theme %(value)r.", value=field.data))

    def validate_kind(self, field):
        if field.data and field.data not in FUNDER_KINDS:
            raise ValidationError(_("Unknown kind %(value)r: use institution or individual.", value=field.data))


class FunderProfileForm(FlaskForm):
    """The funder profile a donor edits.

    Amounts are text in major units of the chosen currency. The view parses them with
    financing.money.parse_amount once the currency is known.
    """

    name = StringField(_l("Name"), validators=[InputRequired(), Length(max=300)])
    kind = SelectField(_l("Kind"), choices=[SelectChoice(kind, KIND_LABELS[kind]) for kind in FUNDER_KINDS])
    description = TextAreaField(_l("Description"), validators=[Length(max=20_000)])
    currency = StringField(_l("Currency"), validators=[InputRequired(), Length(max=3)])
    ticket_min = StringField(_l("Minimum ticket"), validators=[Length(max=40)])
    ticket_max = StringField(_l("Maximum ticket"), validators=[Length(max=40)])
    annual_budget = StringField(_l("Annual budget"), validators=[Length(max=40)])
    # Text, parsed by the view, so that an error can name the value; the service checks the range.
    decision_days = StringField(_l("Decision time in days"), validators=[Length(max=10)])
    # Codes are checked by the service, whose message names the unknown code.
    regions = SelectMultipleField(_l("Preferred regions"), validate_choice=False)
    countries = SelectMultipleField(_l("Preferred countries"), validate_choice=False)
    themes = SelectMultipleField(_l("Preferred themes"), validate_choice=False)
    sectors = SelectMultipleField(_l("Preferred DAC sectors"), validate_choice=False)

    # Form fields holding an amount, by the FunderInput attribute they fill.
    AMOUNT_FIELDS = {"ticket_min": "ticket_min_minor", "ticket_max": "ticket_max_minor", "annual_budget": "annual_budget_minor"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.regions.choices = region_choices()
        self.countries.choices = country_choices()
        self.themes.choices = theme_choices()
        self.sectors.choices = grouped_sector_choices()
