"""HTML forms for browsing, writing and reviewing projects with their funding needs."""

from functools import lru_cache
from types import SimpleNamespace

from flask_babel import get_locale
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    DateField,
    FieldList,
    Form,
    FormField,
    HiddenField,
    IntegerField,
    SearchField,
    SelectField,
    SelectMultipleField,
    StringField,
    TextAreaField,
)
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, NumberRange, Optional, ValidationError
from markupsafe import Markup
from wtforms.widgets import CheckboxInput, ListWidget, Select, html_params

from financing import reference
from financing.money import MoneyError, amount_text, check_currency, parse_amount
from financing.projects.models import Project
from financing.projects.services import PUBLIC, SORTS, NeedInput, ProjectInput

# Offered first in every currency select; any other ISO 4217 code already on a need is kept.
COMMON_CURRENCIES = (
    "EUR", "USD", "GBP", "CHF", "JPY", "CAD", "AUD", "SEK", "NOK", "DKK", "CNY", "INR",
    "BRL", "ZAR", "KES", "NGN", "GHS", "EGP", "MAD", "XOF", "XAF", "XCD", "FJD",
)
EMPTY_NEED_ROWS = 3
MAX_NEED_ROWS = 50

SORT_LABELS = {"newest": _l("Newest first"), "oldest": _l("Oldest first"), "title": _l("Title A to Z")}
STATUS_LABELS = {
    "draft": _l("Draft"), "submitted": _l("Submitted"), "returned": _l("Returned"),
    "published": _l("Published"), "funded": _l("Funded"), "closed": _l("Closed"), "withdrawn": _l("Withdrawn"),
}


class IsoDateField(DateField):
    """A date input whose error names the rejected text."""

    def process_formdata(self, valuelist):
        try:
            super().process_formdata(valuelist)
        except ValueError:
            raise ValueError(_("Date %(value)r is not valid: use YYYY-MM-DD, such as 2026-03-31.", value=" ".join(valuelist)))


class CheckboxListField(SelectMultipleField):
    """A multiple choice shown as checkboxes, which works without JavaScript on any device."""

    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


def ict_sector_codes() -> list[str]:
    """Return the DAC sectors that some theme covers, which most projects here use."""
    codes: set[str] = set()
    for theme in reference.themes().values():
        codes |= theme.sectors
    return sorted(codes)


def country_choices() -> list[SelectChoice]:
    countries = sorted(reference.countries().values(), key=lambda country: country.name)
    return [SelectChoice(country.code, f"{country.name} ({country.code})") for country in countries]


def region_choices() -> list[SelectChoice]:
    return [SelectChoice(slug, region.name) for slug, region in reference.regions().items()]


def theme_choices() -> list[SelectChoice]:
    return [SelectChoice(slug, theme.name) for slug, theme in reference.themes().items()]


def ict_sector_choices() -> list[SelectChoice]:
    sectors = reference.sectors()
    return [SelectChoice(code, f"{code} {sectors[code].name}") for code in ict_sector_codes() if code in sectors]


def grouped_sector_choices() -> list[SelectChoice]:
    """Return every active DAC sector, the ICT ones in a first group."""
    ict = set(ict_sector_codes())
    group_ict, group_other = _("ICT sectors"), _("Other DAC sectors")
    choices = []
    for code, sector in sorted(reference.sectors().items()):
        choices.append(SelectChoice(code, f"{code} {sector.name}", optgroup=group_ict if code in ict else group_other))
    choices.sort(key=lambda choice: choice.optgroup != group_ict)
    return choices


def currency_choices(current: str | None = None) -> list[SelectChoice]:
    currencies = reference.currencies()
    codes = [code for code in COMMON_CURRENCIES if code in currencies]
    if current and current.upper() in currencies and current.upper() not in codes:
        codes.append(current.upper())
    return [SelectChoice(code, f"{code} {currencies[code].name}") for code in codes]


def _blank(value) -> bool:
    return not (value or "").strip()


class ReferenceSelect(Select):
    """A select that renders the options of a choice list once per process and then reuses them.

    The browse page's filters offer 570 options, and rendering them took about 7 ms of every
    uncached request (docs/benchmarks.md). The rendered options are kept per choice list
    object, so the field's choices must be a list that is never changed, such as those of
    `filter_choices`.
    """

    # Choice lists kept at most; one set of filters per locale in use.
    MAX_LISTS = 64

    def __init__(self):
        super().__init__()
        self._rendered: dict[int, tuple[list, list]] = {}

    def __call__(self, field, **kwargs):
        kwargs.setdefault("id", field.id)
        flags = getattr(field, "flags", {})
        for name in self.validation_attrs:
            if name not in kwargs and getattr(flags, name, False):
                kwargs[name] = True
        html = [f"<select {html_params(name=field.name, **kwargs)}>"]
        for part in self._parts(field):
            if isinstance(part, str):
                html.append(part)
            else:
                value, plain, selected = part
                html.append(selected if field.coerce(value) == field.data else plain)
        html.append("</select>")
        return Markup("".join(html))

    def _parts(self, field) -> list:
        """Return the rendered options and optgroup tags of the field's choice list, rendering them the first time."""
        choices = field.choices
        entry = self._rendered.get(id(choices))
        # The entry keeps its list alive, so no other list can reuse the id meanwhile.
        if entry is not None and entry[0] is choices:
            return entry[1]
        rendered = self._render(field, choices)
        if len(self._rendered) >= self.MAX_LISTS:
            self._rendered.clear()
        self._rendered[id(choices)] = (choices, rendered)
        return rendered

    @classmethod
    def _render(cls, field, choices) -> list:
        rendered, group = [], None
        for choice in field._choices_from_input(choices):
            if choice.optgroup != group:
                if group is not None:
                    rendered.append("</optgroup>")
                if choice.optgroup is not None:
                    rendered.append(f"<optgroup {html_params(label=choice.optgroup)}>")
                group = choice.optgroup
            option = SimpleNamespace(value=choice.value, label=choice.label, render_kw=choice.render_kw, selected=False)
            plain = cls.render_option(option)
            option.selected = True
            rendered.append((choice.value, plain, cls.render_option(option)))
        if group is not None:
            rendered.append("</optgroup>")
        return rendered


@lru_cache(maxsize=16)
def filter_choices(locale: str) -> dict[str, list[SelectChoice]]:
    """Return the choice lists of the browse filters in a locale, the same list objects on every call."""
    return {
        "region": [SelectChoice("", _("Any region")), *region_choices()],
        "country": [SelectChoice("", _("Any country")), *country_choices()],
        "theme": [SelectChoice("", _("Any theme")), *theme_choices()],
        "sector": [SelectChoice("", _("Any sector")), *grouped_sector_choices()],
        "status": [SelectChoice("", _("Any public status")), *(SelectChoice(s, str(STATUS_LABELS[s])) for s in PUBLIC)],
        "sort": [SelectChoice(s, str(SORT_LABELS[s])) for s in SORTS],
    }


class ProjectFilterForm(FlaskForm):
    """The filters of the browse page, read from the query string."""

    class Meta:
        csrf = False

    q = SearchField(_l("Search"), validators=[Optional(), Length(max=200)])
    region = SelectField(_l("Region"), validate_choice=False, validators=[Optional()], widget=ReferenceSelect())
    country = SelectField(_l("Country"), validate_choice=False, validators=[Optional()], widget=ReferenceSelect())
    theme = SelectField(_l("Theme"), validate_choice=False, validators=[Optional()], widget=ReferenceSelect())
    sector = SelectField(_l("DAC sector"), validate_choice=False, validators=[Optional()], widget=ReferenceSelect())
    status = SelectField(_l("Status"), validate_choice=False, validators=[Optional()], widget=ReferenceSelect())
    sort = SelectField(_l("Sort"), validate_choice=False, default="newest", widget=ReferenceSelect())
    page = IntegerField(
        _l("Page"), default=1, invalid_value_message=_l("Page must be a whole number from 1."),
        validators=[Optional(), NumberRange(min=1, max=100000, message=_l("Page must be a whole number from 1."))],
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name, choices in filter_choices(str(get_locale())).items():
            self[name].choices = choices

    def _check_known(self, field, known, kind_label: str) -> None:
        if field.data and field.data not in known:
            raise ValidationError(_("Unknown %(kind)s %(value)r: pick one from the list.", kind=kind_label, value=field.data))

    def validate_region(self, field):
        self._check_known(field, reference.regions(), _("region"))

    def validate_country(self, field):
        field.data = (field.data or "").upper()
        self._check_known(field, reference.countries(), _("country"))

    def validate_theme(self, field):
        self._check_known(field, reference.themes(), _("theme"))

    def validate_sector(self, field):
        self._check_known(field, reference.sectors(), _("DAC sector"))

    def validate_status(self, field):
        self._check_known(field, PUBLIC, _("status"))

    def validate_sort(self, field):
        field.data = field.data or "newest"
        self._check_known(field, SORTS, _("sort order"))

    def active_args(self) -> dict[str, str]:
        """Return the filters in use, for links that keep them (pager, sort)."""
        names = ("q", "region", "country", "theme", "sector", "status", "sort")
        return {name: self[name].data for name in names if self[name].data and not (name == "sort" and self[name].data == "newest")}


class NeedForm(Form):
    """One funding need row; a row left empty is ignored."""

    id = HiddenField()
    title = StringField(_l("Need title"), validators=[Length(max=300)])
    goal = StringField(_l("Goal"), validators=[Length(max=40)])
    currency = SelectField(_l("Currency"), validate_choice=False, default="EUR")
    deadline = IsoDateField(_l("Deadline (optional)"), validators=[Optional()])
    allow_overfunding = BooleanField(_l("Accept pledges beyond the goal"))
    remove = BooleanField(_l("Remove this need"))

    def is_blank(self) -> bool:
        return not self.id.data and _blank(self.title.data) and _blank(self.goal.data) and _blank(self.deadline.raw_data[0] if self.deadline.raw_data else "")


class ProjectForm(FlaskForm):
    title = StringField(_l("Title"), validators=[Length(max=300)])
    summary = TextAreaField(_l("Summary"), validators=[Length(max=1000)])
    description = TextAreaField(_l("Description"), validators=[Length(max=50000)])
    countries = SelectMultipleField(_l("Recipient countries"), validate_choice=False)
    regions = CheckboxListField(_l("Regions"), validate_choice=False)
    themes = CheckboxListField(_l("Themes"), validate_choice=False)
    sectors = CheckboxListField(_l("ICT sectors (OECD DAC)"), validate_choice=False)
    other_sectors = StringField(_l("Other DAC sector codes"), validators=[Length(max=500)])
    start_date = IsoDateField(_l("Start date"), validators=[Optional()])
    end_date = IsoDateField(_l("End date"), validators=[Optional()])
    needs = FieldList(FormField(NeedForm), min_entries=EMPTY_NEED_ROWS, max_entries=MAX_NEED_ROWS)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.countries.choices = country_choices()
        self.regions.choices = region_choices()
        self.themes.choices = theme_choices()
        self.sectors.choices = ict_sector_choices()
        self.refresh_currency_choices()

    def refresh_currency_choices(self) -> None:
        for entry in self.needs:
            entry.form.currency.choices = currency_choices(entry.form.currency.data)

    def add_empty_rows(self, count: int) -> None:
        for _row in range(count):
            self.needs.append_entry()
        self.refresh_currency_choices()

    def sector_codes(self) -> list[str]:
        typed = [code.strip() for code in (self.other_sectors.data or "").replace(";", ",").split(",")]
        return [*(self.sectors.data or []), *(code for code in typed if code)]

    def to_input(self) -> tuple[ProjectInput, dict[str, str], list[int]]:
        """Build the service input from the posted form.

        Returns the input, errors found while parsing amounts (keyed like the service's
        errors, "needs.<index>.goal"), and for each need of the input its row in the form.
        A row whose amount cannot be parsed gets a placeholder goal of one minor unit. The
        service's own checks can then still run on the other fields, and the caller never
        saves an input that came with parse errors.
        """
        errors: dict[str, str] = {}
        needs: list[NeedInput] = []
        rows: list[int] = []
        for row, entry in enumerate(self.needs):
            need = entry.form
            if need.is_blank() or (need.id.data and need.remove.data):
                continue
            index = len(needs)
            goal_minor = 1
            currency = need.currency.data or ""
            try:
                currency = check_currency(currency)
                goal_minor = parse_amount(need.goal.data, currency, f"needs.{index}.goal")
            except MoneyError as error:
                key = f"needs.{index}.currency" if error.field == "currency" else f"needs.{index}.goal"
                errors[key] = error.message
            needs.append(NeedInput(
                title=need.title.data or "",
                goal_minor=goal_minor,
                currency=currency,
                deadline=need.deadline.data,
                allow_overfunding=bool(need.allow_overfunding.data),
                id=_int_or_none(need.id.data),
            ))
            rows.append(row)
        data = ProjectInput(
            title=self.title.data or "",
            summary=self.summary.data or "",
            description=self.description.data or "",
            countries=list(self.countries.data or []),
            regions=list(self.regions.data or []),
            themes=list(self.themes.data or []),
            sectors=self.sector_codes(),
            start_date=self.start_date.data,
            end_date=self.end_date.data,
            needs=needs,
        )
        return data, errors, rows


def _int_or_none(value) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        # A tampered hidden id; -1 matches no need, so the service names it as unknown.
        return -1


def form_data_of(project: Project) -> SimpleNamespace:
    """Return the project's values in the shape ProjectForm reads with obj=."""
    ict = set(ict_sector_codes())
    return SimpleNamespace(
        title=project.title,
        summary=project.summary,
        description=project.description,
        countries=project.countries,
        regions=project.regions,
        themes=project.themes,
        sectors=[code for code in project.sectors if code in ict],
        other_sectors=", ".join(code for code in project.sectors if code not in ict),
        start_date=project.start_date,
        end_date=project.end_date,
        needs=[
            SimpleNamespace(
                id=str(need.id), title=need.title, goal=amount_text(need.goal_minor, need.currency),
                currency=need.currency, deadline=need.deadline, allow_overfunding=need.allow_overfunding, remove=False,
            )
            for need in project.needs
        ],
    )


class ReturnForm(FlaskForm):
    reason = TextAreaField(
        _l("Reason for returning"),
        filters=[lambda value: value.strip() if isinstance(value, str) else value],
        validators=[DataRequired(_l("Write the reason, so the owner knows what to change.")), Length(max=5000)],
    )
