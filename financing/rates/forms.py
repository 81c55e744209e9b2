"""Forms of the exchange rates page: one rate, a CSV upload and the history filter."""

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import BooleanField, StringField
from wtforms.validators import Length

# Lengths well above any valid value, so that a mistyped value reaches the service, whose
# message names it, while a pasted essay is still rejected.
CODE_LENGTH = 20
RATE_LENGTH = 60


class RateForm(FlaskForm):
    """One rate: the service checks the codes, the rate and the day and names bad values."""

    base = StringField(_l("Base currency"), validators=[Length(max=CODE_LENGTH)], render_kw={"list": "currency-codes", "autocomplete": "off"})
    quote = StringField(_l("Quote currency"), validators=[Length(max=CODE_LENGTH)], render_kw={"list": "currency-codes", "autocomplete": "off"})
    rate = StringField(_l("Rate"), validators=[Length(max=RATE_LENGTH)], render_kw={"inputmode": "decimal", "autocomplete": "off"})
    valid_from = StringField(_l("Valid from"), validators=[Length(max=RATE_LENGTH)], render_kw={"type": "date"})
    replace = BooleanField(_l("Replace the stored rate if this pair already has one from this day"))


class RateUploadForm(FlaskForm):
    """A CSV file of rates; read and checked by financing.rates.services.import_rates_csv."""

    file = FileField(_l("CSV file"), validators=[FileRequired(message=_l("Choose a CSV file to upload."))])
    replace = BooleanField(_l("Replace stored rates for the same pair and day"))

    def __init__(self, *args, **kwargs):
        # The prefix keeps the field ids apart from those of RateForm on the same page.
        super().__init__(*args, prefix="upload", **kwargs)


class HistoryFilterForm(FlaskForm):
    """Filters of the rate history, read from the query string."""

    class Meta:
        csrf = False

    base = StringField(_l("Base currency"), validators=[Length(max=CODE_LENGTH)], render_kw={"list": "currency-codes"})
    quote = StringField(_l("Quote currency"), validators=[Length(max=CODE_LENGTH)], render_kw={"list": "currency-codes"})

    def __init__(self, *args, **kwargs):
        super().__init__(*args, prefix="history", **kwargs)
