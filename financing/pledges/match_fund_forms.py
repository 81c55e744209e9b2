"""Forms of the match fund pages: a new fund, and pausing or resuming one."""

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import BooleanField, HiddenField, SelectField, SelectMultipleField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import Length, Optional

from financing.pledges.match_funds import MatchFundInput
from financing.projects.forms import (
    CheckboxListField,
    IsoDateField,
    country_choices,
    currency_choices,
    grouped_sector_choices,
    region_choices,
    theme_choices,
)


class MatchFundForm(FlaskForm):
    """A new match fund.

    The factor and the amounts are text; the service parses them, so that its errors name the
    value and the currency. The funder field is only offered to coordinators.
    """

    name = StringField(_l("Name"), validators=[Length(max=200)])
    funder_id = SelectField(_l("Funder"), validate_choice=False)
    factor = StringField(_l("Factor"), default="1", validators=[Length(max=20)])
    currency = SelectField(_l("Currency"), validate_choice=False, default="EUR")
    total_cap = StringField(_l("Total cap"), validators=[Length(max=40)])
    per_pledge_cap = StringField(_l("Cap per pledge (optional)"), validators=[Length(max=40)])
    per_project_cap = StringField(_l("Cap per project (optional)"), validators=[Length(max=40)])
    regions = CheckboxListField(_l("Regions"), validate_choice=False)
    countries = SelectMultipleField(_l("Countries"), validate_choice=False)
    themes = CheckboxListField(_l("Themes"), validate_choice=False)
    sectors = SelectMultipleField(_l("DAC sectors"), validate_choice=False)
    starts_on = IsoDateField(_l("First day (optional)"), validators=[Optional()])
    ends_on = IsoDateField(_l("Last day (optional)"), validators=[Optional()])
    active = BooleanField(_l("Active: match new pledges now"), default=True)

    def __init__(self, *args, funders=None, **kwargs):
        super().__init__(*args, **kwargs)
        if funders is None:
            del self.funder_id
        else:
            self.funder_id.choices = [SelectChoice("", _l("Choose a funder"))] + [
                SelectChoice(str(funder.id), funder.name) for funder in funders
            ]
        self.currency.choices = currency_choices(self.currency.data)
        self.regions.choices = region_choices()
        self.countries.choices = country_choices()
        self.themes.choices = theme_choices()
        self.sectors.choices = grouped_sector_choices()

    def to_input(self) -> MatchFundInput:
        """Build the service input from the submitted fields, as typed."""
        funder_id = self.funder_id.data if "funder_id" in self else None
        return MatchFundInput(
            name=self.name.data or "", factor=self.factor.data or "", currency=self.currency.data or "",
            total_cap=self.total_cap.data or "", per_pledge_cap=self.per_pledge_cap.data or "",
            per_project_cap=self.per_project_cap.data or "",
            starts_on=self.starts_on.data, ends_on=self.ends_on.data, active=bool(self.active.data),
            regions=self.regions.data or [], countries=self.countries.data or [],
            themes=self.themes.data or [], sectors=self.sectors.data or [], funder_id=funder_id,
        )


class ActiveForm(FlaskForm):
    """Pause or resume a fund; `active` is the state to set."""

    active = HiddenField()
