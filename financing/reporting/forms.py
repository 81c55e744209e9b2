"""The filters of the dashboard and the statistics page, read from the query string."""

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import SelectField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import Optional, ValidationError

from financing.projects.forms import IsoDateField, country_choices, region_choices, theme_choices
from financing.reporting.services import ReportFilters


class ReportFilterForm(FlaskForm):
    """Region, country, theme, funder, date range and reporting currency.

    The choices are set by the view. A value outside them gets an error naming it, because
    the select boxes cannot show a value they do not offer.
    """

    class Meta:
        csrf = False

    region = SelectField(_l("Region"), validate_choice=False, validators=[Optional()])
    country = SelectField(_l("Country"), validate_choice=False, validators=[Optional()])
    theme = SelectField(_l("Theme"), validate_choice=False, validators=[Optional()])
    funder = SelectField(_l("Funder"), validate_choice=False, validators=[Optional()])
    date_from = IsoDateField(_l("From (UTC)"), validators=[Optional()])
    date_to = IsoDateField(_l("To (UTC)"), validators=[Optional()])
    currency = SelectField(_l("Reporting currency"), validate_choice=False)

    def __init__(self, *args, funders: list[tuple[int, str]], currencies: list[str], default_currency: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.region.choices = [SelectChoice("", _("Any region")), *region_choices()]
        self.country.choices = [SelectChoice("", _("Any country")), *country_choices()]
        self.theme.choices = [SelectChoice("", _("Any theme")), *theme_choices()]
        self.funder.choices = [SelectChoice("", _("Any funder")), *(SelectChoice(str(funder_id), name) for funder_id, name in funders)]
        self.currency.choices = [SelectChoice(code, code) for code in currencies]
        if not self.currency.data:
            self.currency.data = default_currency

    @staticmethod
    def _check_choice(field, message: str) -> None:
        if field.data and field.data not in {choice.value for choice in field.choices}:
            raise ValidationError(message)

    def validate_region(self, field) -> None:
        self._check_choice(field, _("Unknown region %(value)r: choose one from the list.", value=field.data))

    def validate_country(self, field) -> None:
        self._check_choice(field, _("Unknown country %(value)r: choose one from the list.", value=field.data))

    def validate_theme(self, field) -> None:
        self._check_choice(field, _("Unknown theme %(value)r: choose one from the list.", value=field.data))

    def validate_funder(self, field) -> None:
        self._check_choice(field, _("Unknown funder %(value)r: choose one from the list.", value=field.data))

    def validate_currency(self, field) -> None:
        if field.data not in {choice.value for choice in field.choices}:
            raise ValidationError(_(
                "Currency %(value)r has no stored exchange rates into it: choose one from the list.", value=field.data,
            ))

    def validate_date_to(self, field) -> None:
        if field.data and self.date_from.data and field.data < self.date_from.data:
            raise ValidationError(_(
                "End date %(end)s is before the start date %(start)s.",
                end=field.data.isoformat(), start=self.date_from.data.isoformat(),
            ))

    def filters(self) -> ReportFilters:
        return ReportFilters(
            region=self.region.data or None,
            country=self.country.data or None,
            theme=self.theme.data or None,
            funder_id=int(self.funder.data) if self.funder.data else None,
            date_from=self.date_from.data,
            date_to=self.date_to.data,
        )
