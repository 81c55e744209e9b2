"""Money: parse user input per currency, store integer minor units, format with Babel."""

import re
from decimal import Decimal, InvalidOperation

from copy import copy

from babel import Locale

from financing import reference

# Largest amount accepted anywhere, in major units; 10**12 keeps every minor-unit value,
# even with 4 decimals, inside a signed 64-bit column.
MAX_MAJOR_UNITS = 10**12

_PLAIN = re.compile(r"^\d+(\.\d+)?$")
_GROUPED = re.compile(r"^\d{1,3}(,\d{3})+(\.\d+)?$")


class MoneyError(ValueError):
    """Invalid amount or currency, naming the field and the value."""

    def __init__(self, field: str, value: object, message: str):
        super().__init__(message)
        self.field = field
        self.value = value
        self.message = message


def check_currency(code: object, field: str = "currency") -> str:
    """Return the upper-case ISO 4217 code, or raise MoneyError for an unknown one."""
    text = str(code or "").strip().upper()
    if not text:
        raise MoneyError(field, code, "Currency is required.")
    try:
        reference.currency(text)
    except reference.UnknownCurrency:
        raise MoneyError(field, code, f"Unknown currency {code!r}: use an ISO 4217 code such as EUR.")
    return text


def minor_units(currency: str) -> int:
    return reference.currency(currency).minor_units


def parse_amount(value: object, currency: str, field: str = "amount") -> int:
    """Parse a positive amount given as text, int or Decimal into integer minor units.

    Floats are rejected because they cannot carry an exact decimal amount.
    """
    currency = check_currency(currency)
    exponent = minor_units(currency)

    if isinstance(value, bool) or isinstance(value, float):
        raise MoneyError(field, value, f"Amount {value!r} must be a decimal string such as \"1500.00\".")
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, Decimal):
        amount = value
    else:
        text = str(value if value is not None else "").strip().replace(" ", "").replace("\u00a0", "")
        if not text:
            raise MoneyError(field, value, "Amount is required.")
        if text.startswith("-"):
            raise MoneyError(field, value, f"Amount {value!r} must be greater than zero.")
        if not (_PLAIN.match(text) or _GROUPED.match(text)):
            raise MoneyError(field, value, f"Amount {value!r} is not a number: write digits with an optional decimal point, such as 1500.00.")
        amount = Decimal(text.replace(",", ""))

    if not amount.is_finite():
        raise MoneyError(field, value, f"Amount {value!r} is not a number.")
    if amount <= 0:
        raise MoneyError(field, value, f"Amount {value!r} must be greater than zero.")
    if amount > MAX_MAJOR_UNITS:
        raise MoneyError(field, value, f"Amount {value!r} is larger than the maximum of {MAX_MAJOR_UNITS:,} {currency}.")
    scaled = amount.scaleb(exponent)
    if scaled != scaled.to_integral_value():
        raise MoneyError(
            field, value,
            f"Amount {value!r} has more decimals than {currency} allows ({exponent}).",
        )
    return int(scaled)


def to_decimal(amount_minor: int, currency: str) -> Decimal:
    """Convert integer minor units to a Decimal in major units with the currency's exponent."""
    exponent = minor_units(currency)
    return Decimal(amount_minor).scaleb(-exponent).quantize(Decimal(1).scaleb(-exponent))


def amount_text(amount_minor: int, currency: str) -> str:
    """Return the plain decimal string with exactly the currency's number of decimals."""
    return format(to_decimal(amount_minor, currency), "f")


def money_dict(amount_minor: int | None, currency: str | None) -> dict | None:
    if amount_minor is None or currency is None:
        return None
    return {"amount": amount_text(amount_minor, currency), "currency": currency}


def format_money(amount_minor: int, currency: str, locale: str = "en") -> str:
    """Format for display in the user's locale, e.g. "€4,800,000.00" or "F CFA1,000,000".

    The number of decimals is the ISO 4217 exponent, not CLDR's, which differs for a few
    currencies such as IQD.
    """
    parsed = Locale.parse(locale)
    pattern = copy(parsed.currency_formats["standard"])
    exponent = minor_units(currency)
    pattern.frac_prec = (exponent, exponent)
    return pattern.apply(to_decimal(amount_minor, currency), parsed, currency=currency, currency_digits=False)


def format_compact(amount_minor: int, currency: str) -> str:
    """Format a short figure such as "2.0M EUR" for explanations and charts."""
    value = to_decimal(amount_minor, currency)
    for threshold, suffix in ((Decimal(10**9), "B"), (Decimal(10**6), "M"), (Decimal(10**3), "k")):
        if value >= threshold:
            return f"{(value / threshold).quantize(Decimal('0.1'))}{suffix} {currency}"
    return f"{value.quantize(Decimal(1))} {currency}"


def convert(amount_minor: int, from_currency: str, to_currency: str, rate: Decimal) -> int:
    """Convert minor units with a rate in major units (1 from = rate to), rounding half-up."""
    if from_currency == to_currency:
        return amount_minor
    major = to_decimal(amount_minor, from_currency) * rate
    scaled = major.scaleb(minor_units(to_currency))
    try:
        return int(scaled.quantize(Decimal(1), rounding="ROUND_HALF_UP"))
    except InvalidOperation as error:
        raise MoneyError("amount", amount_minor, "Converted amount is out of range.") from error
