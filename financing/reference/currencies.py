"""ISO 4217 currencies with the minor-unit exponent used to store amounts."""

from functools import cache

from .errors import UnknownCurrency
from .files import codelist_items, is_withdrawn, load_json, normalise
from .records import Currency


@cache
def _minor_units() -> dict[str, int | None]:
    """Map each active ISO 4217 code to its exponent, or None where the platform stores none."""
    data = load_json("currency_minor_units.json")
    result: dict[str, int | None] = dict.fromkeys(data["not_applicable"])
    for exponent, codes in data["minor_units"].items():
        for code in codes:
            if code in result:
                raise ValueError(f"currency_minor_units.json lists currency {code!r} twice.")
            result[code] = int(exponent)
    result.update(data["platform_choices"])
    return result


@cache
def _currencies() -> dict[str, Currency]:
    minor_units = _minor_units()
    result = {}
    for item in codelist_items("Currency"):
        code = item["code"]
        if is_withdrawn(item):
            continue
        if code not in minor_units:
            raise ValueError(f"currency_minor_units.json has no entry for currency {code!r}.")
        if minor_units[code] is not None:
            result[code] = Currency(code, item["name"], minor_units[code])
    return result


def currencies() -> dict[str, Currency]:
    """Return the active currencies that have a minor unit, by code, as a new dict on each call."""
    return dict(_currencies())


def currency(code: str) -> Currency:
    """Look up a currency by ISO 4217 code, or raise UnknownCurrency."""
    found = _currencies().get(normalise(code))
    if found is None:
        raise UnknownCurrency(code)
    return found
