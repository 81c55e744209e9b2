"""Streaming, hardened reader of IATI activity files (2.0x, 1.0x and the pre-1.0 draft).

The parser turns each `iati-activity` element into a plain `Activity` record and does not
touch the database. It normalises the differences between versions: codes or words
for transaction types and organisation roles, narratives or direct text, and `activity-date`
type codes or words. Amounts stay text here so that the importer parses them with Decimal.
"""

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

logger = logging.getLogger(__name__)

XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
DEFAULT_MAX_BYTES = 200 * 1024 * 1024

# Transaction types, keyed by the 2.0x code, the 1.0x code and the 1.0x / pre-1.0 words.
TRANSACTION_TYPES = {
    "1": "incoming_funds", "IF": "incoming_funds", "incoming funds": "incoming_funds",
    "2": "outgoing_commitment", "C": "outgoing_commitment", "commitment": "outgoing_commitment",
    "outgoing commitment": "outgoing_commitment",
    "3": "disbursement", "D": "disbursement", "disbursement": "disbursement",
    "4": "expenditure", "E": "expenditure", "expenditure": "expenditure",
    "5": "interest_payment", "IR": "interest_payment", "interest repayment": "interest_payment",
    "interest payment": "interest_payment",
    "6": "loan_repayment", "LR": "loan_repayment", "loan repayment": "loan_repayment",
    "7": "reimbursement", "R": "reimbursement", "reimbursement": "reimbursement",
    "8": "purchase_of_equity", "QP": "purchase_of_equity", "purchase of equity": "purchase_of_equity",
    "9": "sale_of_equity", "QS": "sale_of_equity", "sale of equity": "sale_of_equity",
    "10": "credit_guarantee", "CG": "credit_guarantee", "credit guarantee": "credit_guarantee",
    "11": "incoming_commitment", "incoming commitment": "incoming_commitment",
    "12": "outgoing_pledge", "outgoing pledge": "outgoing_pledge",
    "13": "incoming_pledge", "incoming pledge": "incoming_pledge",
}

# participating-org/@role: 2.0x codes and 1.0x words.
ORGANISATION_ROLES = {
    "1": "funding", "funding": "funding",
    "2": "accountable", "accountable": "accountable",
    "3": "extending", "extending": "extending",
    "4": "implementing", "implementing": "implementing",
}

# activity-date/@type: 2.0x codes, 1.0x words and the pre-1.0 "start" and "end".
DATE_TYPES = {
    "1": "start_planned", "start-planned": "start_planned", "start": "start_planned",
    "2": "start_actual", "start-actual": "start_actual",
    "3": "end_planned", "end-planned": "end_planned", "end": "end_planned",
    "4": "end_actual", "end-actual": "end_actual",
}

SUMMARY_LENGTH = 300


class ParseError(Exception):
    """An activity file that cannot be read, with the line where reading stopped."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass
class Organisation:
    """A reporting, participating, provider or receiver organisation as the file names it."""

    ref: str | None
    name: str
    type: str | None = None
    role: str | None = None


@dataclass
class Code:
    """A recipient country, recipient region or sector with its vocabulary and percentage."""

    code: str
    vocabulary: str | None = None
    percentage: str | None = None


@dataclass
class Budget:
    """One budget: "original" or "revised", its period and its value as text."""

    kind: str
    period_start: str | None
    period_end: str | None
    value: str | None
    currency: str | None


@dataclass
class Transaction:
    """One transaction with its normalised type (see TRANSACTION_TYPES) and value as text."""

    type: str
    value: str | None
    currency: str | None
    provider: Organisation | None
    line: int | None


@dataclass
class Activity:
    """The fields of one `iati-activity` that the importer maps to a project."""

    line: int | None
    identifier: str | None
    other_identifiers: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    default_currency: str | None = None
    language: str | None = None
    reporting_org: Organisation | None = None
    title: str = ""
    description: str = ""
    objectives: str = ""
    participating: list[Organisation] = field(default_factory=list)
    countries: list[Code] = field(default_factory=list)
    regions: list[Code] = field(default_factory=list)
    sectors: list[Code] = field(default_factory=list)
    dates: dict[str, str] = field(default_factory=dict)
    budgets: list[Budget] = field(default_factory=list)
    transactions: list[Transaction] = field(default_factory=list)

    @property
    def funding_orgs(self) -> list[Organisation]:
        return [org for org in self.participating if org.role == "funding"]


def _clean(value: str | None) -> str | None:
    """Strip a value and turn an empty one into None."""
    if value is None:
        return None
    value = value.strip()
    return value or None


def _children(element, tag: str) -> list:
    return [child for child in element if child.tag == tag]


def _own_text(element) -> str:
    """Return the element's direct text, without the text of child elements or entities."""
    parts = [element.text or ""]
    for child in element:
        if not isinstance(child.tag, str):
            parts.append(child.tail or "")
    return "".join(parts).strip()


def _lang(element, default: str | None) -> str | None:
    value = _clean(element.get(XML_LANG))
    return value.lower() if value else default


def _narratives(elements: list, default_lang: str | None) -> list[tuple[str | None, str]]:
    """Collect (language, text) pairs: 2.0x `narrative` children, or 1.0x direct text."""
    found = []
    for element in elements:
        narratives = _children(element, "narrative")
        if narratives:
            element_lang = _lang(element, default_lang)
            for narrative in narratives:
                text = _own_text(narrative)
                if text:
                    found.append((_lang(narrative, element_lang), text))
        else:
            text = _own_text(element)
            if text:
                found.append((_lang(element, default_lang), text))
    return found


def pick_text(elements: list, default_lang: str | None) -> str:
    """Pick one text: English first, then the activity's default language, then the first."""
    narratives = _narratives(elements, default_lang)
    if not narratives:
        return ""
    for preferred in ("en", default_lang):
        for lang, text in narratives:
            if lang == preferred:
                return text
    return narratives[0][1]


def pick_texts(elements: list, default_lang: str | None) -> list[str]:
    """Pick one text per element, by the same language preference as pick_text."""
    texts = [pick_text([element], default_lang) for element in elements]
    return [text for text in texts if text]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def shorten(text: str, length: int = SUMMARY_LENGTH) -> str:
    """Cut text at a word boundary near `length` characters, marking the cut with an ellipsis."""
    text = _one_line(text)
    if len(text) <= length:
        return text
    cut = text[:length].rsplit(" ", 1)[0].rstrip(" ,;:.")
    return cut + "\u2026"


def _organisation(element, default_lang: str | None, role: str | None = None) -> Organisation:
    name = _one_line(pick_text([element], default_lang))
    if len(name) > 1 and name[0] == name[-1] == '"':
        # Some 1.0x files quote organisation names: "Omidyar Network".
        name = name[1:-1].strip()
    return Organisation(
        ref=_clean(element.get("ref")),
        name=name,
        type=_clean(element.get("type")),
        role=role,
    )


def _date_value(element) -> str | None:
    return _clean(element.get("iso-date")) or _clean(_own_text(element))


def _value(element) -> tuple[str | None, str | None]:
    """Return (text, currency) of a `value` child. An empty currency means the default one."""
    value = element.find("value")
    if value is None:
        return None, None
    return _clean(_own_text(value)), _clean(value.get("currency"))


def _transaction_type(element) -> str:
    kind = element.find("transaction-type")
    if kind is not None:
        raw = _clean(kind.get("code")) or _clean(_own_text(kind)) or ""
    else:
        # The pre-1.0 draft writes <transaction flow="incoming" type="commitment">.
        raw = _clean(element.get("type")) or ""
        if element.get("flow", "").strip().lower() == "incoming" and raw.lower() == "commitment":
            raw = "incoming commitment"
    if raw in TRANSACTION_TYPES:
        return TRANSACTION_TYPES[raw]
    words = " ".join(raw.replace("-", " ").replace("_", " ").lower().split())
    return TRANSACTION_TYPES.get(words, words or "unknown")


def _transaction(element, default_lang: str | None) -> Transaction:
    text, currency = _value(element)
    provider = element.find("provider-org")
    return Transaction(
        type=_transaction_type(element),
        value=text,
        currency=currency,
        provider=_organisation(provider, default_lang) if provider is not None else None,
        line=element.sourceline,
    )


def _budget(element) -> Budget:
    text, currency = _value(element)
    kind = (element.get("type") or "").strip().lower()
    start = element.find("period-start")
    end = element.find("period-end")
    return Budget(
        kind="revised" if kind in ("2", "revised") else "original",
        period_start=_date_value(start) if start is not None else None,
        period_end=_date_value(end) if end is not None else None,
        value=text,
        currency=currency,
    )


def _code(element) -> Code | None:
    code = _clean(element.get("code"))
    if code is None:
        return None
    return Code(code=code, vocabulary=_clean(element.get("vocabulary")), percentage=_clean(element.get("percentage")))


def parse_activity(element) -> Activity:
    """Read one `iati-activity` element into an Activity record."""
    lang = _lang(element, None)
    activity = Activity(
        line=element.sourceline,
        identifier=_clean(element.findtext("iati-identifier")),
        default_currency=_clean(element.get("default-currency")),
        language=lang,
    )
    for other in _children(element, "other-identifier"):
        text = _clean(_own_text(other)) or _clean(other.get("ref"))
        if text:
            activity.other_identifiers.append((text, _clean(other.get("owner-ref")), _clean(other.get("owner-name"))))

    reporting = element.find("reporting-org")
    if reporting is not None:
        activity.reporting_org = _organisation(reporting, lang)
    activity.title = _one_line(pick_text(_children(element, "title"), lang))

    general, objectives = [], []
    for description in _children(element, "description"):
        kind = (description.get("type") or "1").strip()
        if kind == "1":
            general.append(description)
        elif kind == "2":
            objectives.append(description)
    activity.description = "\n\n".join(pick_texts(general, lang))
    activity.objectives = "\n\n".join(pick_texts(objectives, lang))

    for org in _children(element, "participating-org"):
        role = ORGANISATION_ROLES.get((org.get("role") or "").strip().lower())
        activity.participating.append(_organisation(org, lang, role))
    for tag, target in (("recipient-country", activity.countries), ("recipient-region", activity.regions), ("sector", activity.sectors)):
        for child in _children(element, tag):
            code = _code(child)
            if code is not None:
                target.append(code)
    for date in _children(element, "activity-date"):
        kind = DATE_TYPES.get((date.get("type") or "").strip().lower())
        value = _date_value(date)
        if kind and value and kind not in activity.dates:
            activity.dates[kind] = value
    for child in element:
        if child.tag in ("budget", "budget-planned"):
            activity.budgets.append(_budget(child))
        elif child.tag == "transaction":
            activity.transactions.append(_transaction(child, lang))
    return activity


def _syntax_error(error: etree.XMLSyntaxError) -> ParseError:
    line = error.lineno or (error.position[0] if error.position else None)
    message = error.msg or str(error)
    return ParseError(f"XML syntax error: {message}", line)


def iter_activities(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[Activity]:
    """Yield the activities of an IATI activity file one by one, freeing each after use.

    The parser resolves no entities, loads no DTD and uses no network, so an external entity
    (XXE) or an entity expansion bomb stays unexpanded. Raises ParseError for a file larger
    than `max_bytes`, a file that cannot be read, malformed XML, or a root element other
    than `iati-activities`.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ParseError(f"cannot read the file: {error.strerror or error}") from error
    if size > max_bytes:
        raise ParseError(f"the file has {size:,} bytes, more than the limit of {max_bytes:,} bytes")

    try:
        handle = path.open("rb")
    except OSError as error:
        raise ParseError(f"cannot read the file: {error.strerror or error}") from error
    with handle:
        events = etree.iterparse(
            handle, events=("start", "end"), tag=("iati-activities", "iati-activity", "iati-organisations"),
            resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False,
            remove_comments=True, remove_pis=True,
        )
        root_seen = False
        try:
            for event, element in events:
                if not root_seen:
                    root_seen = True
                    root = element.getroottree().getroot()
                    if element.tag != "iati-activities" or element is not root:
                        raise ParseError(
                            f"the root element is <{root.tag}>, not <iati-activities>: this is not an IATI activity file",
                            root.sourceline,
                        )
                    continue
                if event != "end" or element.tag != "iati-activity":
                    continue
                yield parse_activity(element)
                # Free the finished activity and the siblings before it.
                element.clear(keep_tail=True)
                parent = element.getparent()
                while parent is not None and element.getprevious() is not None:
                    del parent[0]
        except etree.XMLSyntaxError as error:
            raise _syntax_error(error) from error
        if not root_seen:
            raise ParseError("the file contains no <iati-activities> element", 1)
