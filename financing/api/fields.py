"""marshmallow fields of the API: money objects, exact amounts and strict JSON scalars."""

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable

from marshmallow import ValidationError, fields

from financing.money import MoneyError, check_currency, money_dict, parse_amount

AMOUNT_HINT = 'Write the amount as a decimal string such as "1500.00" or as a JSON number.'

# A JSON number with an exponent outside this range is passed on as a Decimal instead of
# being written out digit by digit, so that 1e999999 cannot expand into a huge string.
_PLAIN_DIGITS_LIMIT = 40


@dataclass(frozen=True)
class Money:
    """An amount in integer minor units of an ISO 4217 currency, as loaded from a request."""

    minor: int
    currency: str


def amount_input(value: Any) -> str | Decimal:
    """Return an amount from a JSON document in the form that `parse_amount` reads.

    Strings pass unchanged. JSON numbers arrive as int or Decimal (the body is parsed with
    parse_float=Decimal) and are written out as plain decimal text, so that error messages
    quote the number as the client sent it.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise ValidationError(f"Amount {value!r} is not a decimal string or a number. {AMOUNT_HINT}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        if not value.is_finite() or abs(value.adjusted()) > _PLAIN_DIGITS_LIMIT:
            return value
        return format(value, "f")
    return value


def number_text(value: Any, label: str) -> Any:
    """Write a JSON number as plain decimal text, such as a rate or a factor; other values pass unchanged.

    Raise ValidationError for a number whose exponent would write out more than
    _PLAIN_DIGITS_LIMIT digits, such as 1e999999.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        if not value.is_finite() or abs(value.adjusted()) > _PLAIN_DIGITS_LIMIT:
            raise ValidationError(f"{label} {value} is out of range: write plain digits, such as 1.5.")
        return format(value, "f")
    return value


def parse_money(value: Any, currency: Any, field: str | None = None) -> Money:
    """Check a currency and an amount of it, or raise ValidationError.

    A currency error is keyed "currency". An amount error is keyed `field`, or unkeyed when
    `field` is None so that marshmallow files it under the field being loaded.
    """
    try:
        code = check_currency(currency)
    except MoneyError as error:
        raise ValidationError({"currency": [error.message]}) from error
    try:
        return Money(parse_amount(amount_input(value), code), code)
    except (MoneyError, ValidationError) as error:
        message = error.message if isinstance(error, MoneyError) else error.messages
        raise ValidationError({field: message} if field else message) from error


class StrictBoolean(fields.Boolean):
    """A JSON true or false; unlike fields.Boolean it rejects 1, "yes" and "true"."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise ValidationError(f"Not a valid boolean: {value!r}. Use true or false.")
        return value


class StrictInteger(fields.Integer):
    """A JSON integer; rejects strings, booleans and numbers with a fraction."""

    def __init__(self, **kwargs):
        kwargs.setdefault("error_messages", {"invalid": "Not a valid integer: {input!r}."})
        super().__init__(strict=True, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return super()._deserialize(value, attr, data, **kwargs)


class Amount(fields.Field):
    """An amount without its currency, e.g. the `amount` of a pledge next to `currency`.

    Loading checks only the JSON type; the schema converts it to minor units once the
    currency is known, with `parse_money`.
    """

    def _deserialize(self, value, attr, data, **kwargs):
        return amount_input(value)


class PlainNumber(fields.Field):
    """A decimal given as a string or a JSON number, loaded as text for the service that parses it.

    `label` names the value in errors. The service checks the digits; this field only turns
    JSON numbers into plain text and rejects other JSON types.
    """

    def __init__(self, label: str, **kwargs):
        super().__init__(**kwargs)
        self.label = label

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
            raise ValidationError(f"{self.label} {value!r} is not a decimal string or a number.")
        return number_text(value, self.label)


class MoneyField(fields.Field):
    """A money object {"amount": "4800000.00", "currency": "EUR"}.

    Dumping reads integer minor units from `attribute` and the ISO code from `currency`,
    which is an attribute name or a function of the object. The amount is written with
    exactly the currency's decimals. Loading accepts the amount as a string or an exact
    JSON number and returns a `Money`.
    """

    def __init__(self, currency: str | Callable[[Any], str] = "currency", **kwargs):
        super().__init__(**kwargs)
        self.currency = currency

    def _serialize(self, value, attr, obj, **kwargs):
        if value is None:
            return None
        currency = self.currency(obj) if callable(self.currency) else getattr(obj, self.currency)
        return money_dict(value, currency)

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, dict):
            raise ValidationError(f'Expected a money object such as {{"amount": "1500.00", "currency": "EUR"}}, got {value!r}.')
        unknown = sorted(set(value) - {"amount", "currency"})
        if unknown:
            raise ValidationError({name: ["Unknown field."] for name in unknown})
        if "amount" not in value:
            raise ValidationError({"amount": ["Missing data for required field."]})
        return parse_money(value["amount"], value.get("currency"))
