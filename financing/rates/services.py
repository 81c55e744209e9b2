"""Exchange rates: input checks, single entries, CSV import and the lists of the rates page.

One major unit of `base` is worth `rate` major units of `quote`. A pledge
in `base` against a need in `quote` uses the latest rate of that pair whose valid_from is on
or before the day of the pledge (UTC), and stores it. Rates are used only in the stored
direction: a EUR to USD rate does not convert USD pledges.

Duplicates: a rate for a (base, quote, valid_from) that already has a different rate is
rejected unless the caller passes replace=True, which overwrites it. Pledges made with the
old value keep the rate stored on them. An entry equal to the stored rate changes nothing and
is no error, so uploading the same file twice is harmless.
"""

import csv
import io
import logging
import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, localcontext

from sqlalchemy import Select, and_, func, select, tuple_
from sqlalchemy.exc import IntegrityError

from financing.accounts.models import User
from financing.audit import services as audit
from financing.core.errors import Conflict, Forbidden, ValidationFailed
from financing.core.time import utcnow
from financing.extensions import db
from financing.money import MoneyError, check_currency
from financing.pledges.models import ExchangeRate
from financing.pledges.services import today_utc

logger = logging.getLogger(__name__)

# The column is Numeric(24, 12): 12 decimals and 12 digits before the point.
RATE_DECIMALS = 12
RATE_INTEGER_DIGITS = 12
# SQLite stores Numeric columns as binary floating point, which keeps 15 significant digits.
RATE_SIGNIFICANT_DIGITS = 15
_PLAIN_RATE = re.compile(r"^\d+(\.\d+)?$")
_EXPONENT_RATE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

CSV_COLUMNS = ("base", "quote", "rate", "valid_from")
CSV_DELIMITERS = (",", ";")
MAX_CSV_ROWS = 10_000


@dataclass(frozen=True)
class RateInput:
    base: str
    quote: str
    rate: Decimal
    valid_from: date

    @property
    def key(self) -> tuple[str, str, date]:
        return self.base, self.quote, self.valid_from


@dataclass(frozen=True)
class RowError:
    """One bad value in an uploaded file, with its 1-based line number in the file."""

    line: int
    field: str
    value: str
    message: str


class RateImportFailed(ValidationFailed):
    """Failure of a rates upload: `errors` lists each bad value, and no rate was stored."""

    def __init__(self, errors: list[RowError]):
        lines = len({error.line for error in errors})
        noun = "line has" if lines == 1 else "lines have"
        super().__init__(
            f"{lines} {noun} errors, so no rate was imported. Correct the file and upload it again.",
            {f"line {error.line}: {error.field}": error.message for error in errors},
        )
        self.errors = errors


def rate_text(rate: Decimal) -> str:
    """Format a rate as plain digits without trailing zeros, such as "0.9259" or "1000".

    Rounding to 15 significant digits undoes the binary noise that SQLite adds to a stored
    rate, and changes no rate that parse_rate accepts.
    """
    with localcontext() as context:
        context.prec = RATE_SIGNIFICANT_DIGITS
        rounded = +rate
    return format(rounded.normalize(), "f")


def same_rate(first: Decimal, second: Decimal) -> bool:
    """Compare two rates to 15 significant digits, so that SQLite's binary noise is ignored."""
    return rate_text(first) == rate_text(second)


# Checking input


def parse_rate(value: object, field: str = "rate") -> Decimal:
    """Parse a rate given as text into a positive Decimal, or raise MoneyError naming the value.

    Only plain digits with an optional decimal point are accepted: no exponent notation,
    sign, grouping or decimal comma, and no float.
    """
    if isinstance(value, (bool, float)):
        raise MoneyError(field, value, f'Rate {value!r} must be a decimal string such as "1.0823".')
    if isinstance(value, Decimal) and value.is_finite():
        text = format(value, "f")
    else:
        text = str(value if value is not None else "").strip()
    if not text:
        raise MoneyError(field, value, "Rate is required.")
    if text.startswith("-"):
        raise MoneyError(field, value, f"Rate {value!r} must be greater than zero.")
    if "," in text:
        raise MoneyError(field, value, f"Rate {value!r} contains a comma: write a decimal point and no grouping, such as 1.0823.")
    if _EXPONENT_RATE.match(text):
        raise MoneyError(field, value, f"Rate {value!r} uses exponent notation: write plain digits, such as 1000 or 0.0012.")
    if not _PLAIN_RATE.match(text):
        raise MoneyError(field, value, f"Rate {value!r} is not a number: write digits with an optional decimal point, such as 1.0823.")

    rate = Decimal(text)
    if rate == 0:
        raise MoneyError(field, value, f"Rate {value!r} must be greater than zero.")
    digits = rate.normalize().as_tuple()
    if -digits.exponent > RATE_DECIMALS:
        raise MoneyError(field, value, f"Rate {value!r} has more than {RATE_DECIMALS} decimals.")
    if rate >= 10**RATE_INTEGER_DIGITS:
        raise MoneyError(field, value, f"Rate {value!r} is too large: it must be below 10^{RATE_INTEGER_DIGITS}.")
    if len(digits.digits) > RATE_SIGNIFICANT_DIGITS:
        raise MoneyError(field, value, f"Rate {value!r} has more than {RATE_SIGNIFICANT_DIGITS} significant digits.")
    return rate


def parse_valid_from(value: object, field: str = "valid_from") -> date:
    """Parse a day given as a date or as YYYY-MM-DD text, or raise MoneyError naming the value."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    text = str(value if value is not None else "").strip()
    if not text:
        raise MoneyError(field, value, "Valid from is required.")
    if not _ISO_DATE.match(text):
        raise MoneyError(field, value, f"Valid from {value!r} is not a date: write YYYY-MM-DD, such as 2026-01-31.")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise MoneyError(field, value, f"Valid from {value!r} is not a day of the calendar.") from None


def check_rate_input(base: object, quote: object, rate: object, valid_from: object) -> tuple[RateInput | None, list[MoneyError]]:
    """Check the four values of a rate and return the checked input, or None and every error."""
    errors: list[MoneyError] = []

    def attempt(parse, value, field):
        try:
            return parse(value, field)
        except MoneyError as error:
            errors.append(error)
            return None

    base_code = attempt(check_currency, base, "base")
    quote_code = attempt(check_currency, quote, "quote")
    if base_code and base_code == quote_code:
        errors.append(MoneyError("quote", quote, f"Quote currency {quote_code} is the same as the base currency: a rate needs two different currencies."))
    parsed_rate = attempt(parse_rate, rate, "rate")
    parsed_day = attempt(parse_valid_from, valid_from, "valid_from")
    if errors:
        return None, errors
    return RateInput(base_code, quote_code, parsed_rate, parsed_day), []


def validate(base: object, quote: object, rate: object, valid_from: object) -> RateInput:
    """Check the four values of a rate, or raise ValidationFailed naming each bad field."""
    item, errors = check_rate_input(base, quote, rate, valid_from)
    if errors:
        fields = {error.field: error.message for error in errors}
        raise ValidationFailed(" ".join(fields.values()), fields)
    return item


def _require_coordinator(user: User | None) -> None:
    # None is a system caller such as a command-line import.
    if user is not None and not user.is_coordinator:
        raise Forbidden("Only coordinators can maintain exchange rates.")


# Storing


def _stored_rates(keys: list[tuple[str, str, date]]) -> dict[tuple[str, str, date], ExchangeRate]:
    """Load the stored rates for the given (base, quote, valid_from) keys."""
    pairs = sorted({(base, quote) for base, quote, _ in keys})
    if not pairs:
        return {}
    wanted = set(keys)
    rows = db.session.scalars(select(ExchangeRate).where(tuple_(ExchangeRate.base, ExchangeRate.quote).in_(pairs)))
    return {key: row for row in rows if (key := (row.base, row.quote, row.valid_from)) in wanted}


def _duplicate_message(item: RateInput, stored: ExchangeRate) -> str:
    return (
        f"{item.base} to {item.quote} already has the rate {rate_text(stored.rate)} from {item.valid_from.isoformat()}; "
        "choose to replace stored rates to overwrite it."
    )


def _store(user: User | None, item: RateInput, stored: ExchangeRate | None) -> tuple[ExchangeRate, str]:
    """Insert or overwrite one rate; return the row and "added", "replaced" or "unchanged"."""
    if stored is None:
        row = ExchangeRate(
            base=item.base, quote=item.quote, rate=item.rate, valid_from=item.valid_from,
            created_by_id=user.id if user else None, created_at=utcnow(),
        )
        db.session.add(row)
        # Flushed one by one because the audit entry needs the row's id.
        db.session.flush()
        audit.record(user, "create", "exchange_rate", row.id, after={
            "base": item.base, "quote": item.quote, "rate": rate_text(item.rate), "valid_from": item.valid_from,
        })
        return row, "added"
    if same_rate(stored.rate, item.rate):
        return stored, "unchanged"
    logger.info(
        "exchange rate replaced base=%s quote=%s valid_from=%s old=%s new=%s user=%s",
        item.base, item.quote, item.valid_from, stored.rate, item.rate, user.id if user else None,
    )
    audit.record(user, "replace", "exchange_rate", stored.id, {"rate": rate_text(stored.rate)}, {"rate": rate_text(item.rate)})
    # The row records who entered its current value and when.
    stored.rate = item.rate
    stored.created_by_id = user.id if user else None
    stored.created_at = utcnow()
    return stored, "replaced"


def _concurrent_entry() -> Conflict:
    message = "Another coordinator stored a rate for the same pair and day at the same time; reload the page and try again."
    return Conflict(message, {"valid_from": message})


def add_rate(user: User | None, base: object, quote: object, rate: object, valid_from: object, *, replace: bool = False) -> ExchangeRate:
    """Store one rate, or raise ValidationFailed for bad values and Conflict for a duplicate.

    A duplicate is a different rate for a (base, quote, valid_from) already stored; with
    replace=True it overwrites the stored rate instead.
    """
    _require_coordinator(user)
    item = validate(base, quote, rate, valid_from)
    stored = _stored_rates([item.key]).get(item.key)
    if stored is not None and not same_rate(stored.rate, item.rate) and not replace:
        message = _duplicate_message(item, stored)
        raise Conflict(message, {"valid_from": message})

    try:
        with db.session.begin_nested():
            row, outcome = _store(user, item, stored)
            db.session.flush()
    except IntegrityError:
        raise _concurrent_entry() from None
    logger.info(
        "exchange rate %s base=%s quote=%s valid_from=%s rate=%s user=%s",
        outcome, item.base, item.quote, item.valid_from, item.rate, user.id if user else None,
    )
    return row


def import_rates_csv(text: str, user: User | None = None, *, replace: bool = False) -> int:
    """Store every rate of a CSV text, or none; return how many rates were added or replaced.

    Raise RateImportFailed listing each bad value with its line number. Rows equal to a
    stored rate count as neither added nor replaced.
    """
    _require_coordinator(user)
    user_id = user.id if user else None
    rows, errors = read_rates_csv(text)
    if not errors:
        errors = _check_against_stored(rows, replace)
    if errors:
        logger.info("exchange rate import rejected rows=%s errors=%s user=%s", len(rows), len(errors), user_id)
        raise RateImportFailed(errors)

    stored = _stored_rates([item.key for _, item in rows])
    outcomes = {"added": 0, "replaced": 0, "unchanged": 0}
    try:
        with db.session.begin_nested():
            for _, item in rows:
                _, outcome = _store(user, item, stored.get(item.key))
                outcomes[outcome] += 1
            db.session.flush()
    except IntegrityError:
        raise _concurrent_entry() from None
    logger.info(
        "exchange rate import done rows=%s added=%s replaced=%s unchanged=%s user=%s",
        len(rows), outcomes["added"], outcomes["replaced"], outcomes["unchanged"], user_id,
    )
    return outcomes["added"] + outcomes["replaced"]


def _check_against_stored(rows: list[tuple[int, RateInput]], replace: bool) -> list[RowError]:
    if replace:
        return []
    stored = _stored_rates([item.key for _, item in rows])
    return [
        RowError(line, "rate", str(item.rate), _duplicate_message(item, stored[item.key]))
        for line, item in rows
        if item.key in stored and not same_rate(stored[item.key].rate, item.rate)
    ]


# Reading CSV


def _header_names(line: str, delimiter: str) -> list[str]:
    return [name.strip().strip('"').strip().lower() for name in line.split(delimiter)]


def detect_delimiter(header_line: str) -> str | None:
    """Return the delimiter that splits the header into the expected columns, or None."""
    for delimiter in CSV_DELIMITERS:
        if set(CSV_COLUMNS) <= set(_header_names(header_line, delimiter)):
            return delimiter
    return None


def _check_header(names: list[str], header_line: str) -> list[RowError]:
    errors = []
    for name in sorted({name for name in names if names.count(name) > 1}):
        errors.append(RowError(1, "header", header_line, f"Column {name!r} appears more than once."))
    for name in names:
        if name not in CSV_COLUMNS:
            errors.append(RowError(1, "header", header_line, f"Unknown column {name!r}: the file takes the columns {', '.join(CSV_COLUMNS)}."))
    return errors


def read_rates_csv(text: str) -> tuple[list[tuple[int, RateInput]], list[RowError]]:
    """Parse a CSV text of rates into (line number, rate) pairs and the errors found.

    The first line names the columns base, quote, rate and valid_from in any order; the
    delimiter is whichever of comma and semicolon splits that line into those names. A
    leading byte order mark and blank lines are ignored.
    """
    text = text.removeprefix("\ufeff")
    if not text.strip():
        return [], [RowError(1, "file", "", "The file is empty: the first line names the columns base, quote, rate, valid_from.")]
    header_line = text.splitlines()[0]
    delimiter = detect_delimiter(header_line)
    if delimiter is None:
        message = f"The first line must name the columns {', '.join(CSV_COLUMNS)}, separated by commas or semicolons."
        return [], [RowError(1, "header", header_line[:200], message)]

    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[tuple[int, RateInput]] = []
    errors: list[RowError] = []
    first_line_of: dict[tuple[str, str, date], int] = {}
    try:
        names = [name.strip().lower() for name in next(reader)]
        errors = _check_header(names, header_line[:200])
        if errors:
            return [], errors
        for fields in reader:
            line = reader.line_num
            if not any(field.strip() for field in fields):
                continue
            if len(rows) + len(errors) >= MAX_CSV_ROWS:
                errors.append(RowError(line, "file", "", f"The file has more than {MAX_CSV_ROWS:,} rates: split it into smaller files."))
                break
            if len(fields) != len(names):
                errors.append(_field_count_error(line, fields, names, delimiter))
                continue
            item, problems = check_rate_input(**{name: value.strip() for name, value in zip(names, fields)})
            errors.extend(RowError(line, problem.field, str(problem.value), problem.message) for problem in problems)
            if item is None:
                continue
            if item.key in first_line_of:
                message = f"Line {line} repeats the {item.base} to {item.quote} rate from {item.valid_from.isoformat()} given on line {first_line_of[item.key]}."
                errors.append(RowError(line, "valid_from", item.valid_from.isoformat(), message))
                continue
            first_line_of[item.key] = line
            rows.append((line, item))
    except csv.Error as error:
        errors.append(RowError(reader.line_num, "file", "", f"The file is not valid CSV: {error}."))
    if not rows and not errors:
        errors.append(RowError(1, "file", "", "The file names its columns but holds no rates."))
    return rows, errors


def _field_count_error(line: int, fields: list[str], names: list[str], delimiter: str) -> RowError:
    value = delimiter.join(fields)[:200]
    message = f"Expected {len(names)} values separated by {delimiter!r}, found {len(fields)}."
    if delimiter == "," and len(fields) > len(names):
        message += " A decimal comma splits a value: write the rate with a decimal point."
    return RowError(line, "row", value, message)


# Lists


def current_rates(on: date | None = None) -> list[ExchangeRate]:
    """Return the rate of each pair that applies on a day (default today, UTC), by pair."""
    on = on or today_utc()
    latest = (
        select(ExchangeRate.base, ExchangeRate.quote, func.max(ExchangeRate.valid_from).label("valid_from"))
        .where(ExchangeRate.valid_from <= on)
        .group_by(ExchangeRate.base, ExchangeRate.quote)
        .subquery()
    )
    query = (
        select(ExchangeRate)
        .join(latest, and_(
            ExchangeRate.base == latest.c.base, ExchangeRate.quote == latest.c.quote,
            ExchangeRate.valid_from == latest.c.valid_from,
        ))
        .order_by(ExchangeRate.base, ExchangeRate.quote)
    )
    return list(db.session.scalars(query))


def history_query(base: str | None = None, quote: str | None = None) -> Select:
    """Build the query of all stored rates, newest first, optionally of one base or quote."""
    query = select(ExchangeRate)
    if base:
        query = query.where(ExchangeRate.base == base)
    if quote:
        query = query.where(ExchangeRate.quote == quote)
    return query.order_by(ExchangeRate.valid_from.desc(), ExchangeRate.base, ExchangeRate.quote, ExchangeRate.id.desc())


def currencies_with_rate_to(quote: str, on: date | None = None) -> list[str]:
    """Return the currencies that have a rate into `quote` applying on a day, sorted by code."""
    on = on or today_utc()
    query = (
        select(ExchangeRate.base).distinct()
        .where(ExchangeRate.quote == quote, ExchangeRate.valid_from <= on)
        .order_by(ExchangeRate.base)
    )
    return list(db.session.scalars(query))
