"""Creating many draft projects from one CSV file, all or nothing.

The file format, which the import page documents for owners:

- UTF-8 text, with or without a byte order mark. The first line names the columns, and the
  delimiter is whichever of comma and semicolon splits that line into known column names.
- Required columns: title, need_title, goal, currency. Optional columns: summary,
  description, countries, regions, themes, sectors, start_date, end_date, deadline,
  allow_overfunding. Names are case-insensitive and may come in any order.
- One row per funding need. Rows with the same title (ignoring case and repeated spaces) make
  one project with several needs. The first of those rows sets the project columns, and the
  later ones leave them empty or repeat the same values.
- countries, regions, themes and sectors hold codes separated by ";" or "|": ISO 3166-1
  alpha-2 countries, ITU-D region slugs, theme slugs and DAC 5-digit sector codes.
- Amounts use a decimal point and no more decimals than the currency has. Dates are
  YYYY-MM-DD.

Every problem is reported with its line and column, and nothing is created unless the whole
file is clean. A cell that starts with =, +, -, @, a tab or a carriage return is rejected,
because spreadsheet programs run such cells as formulas.
"""

import csv
import io
import logging
import re
from dataclasses import dataclass, field
from datetime import date

from sqlalchemy import select

from financing import reference
from financing.accounts.models import User
from financing.core.errors import DomainError, Forbidden, ValidationFailed
from financing.extensions import db
from financing.money import MoneyError, check_currency, parse_amount
from financing.projects.models import Project
from financing.projects.services import NeedInput, ProjectInput, create_project

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("title", "need_title", "goal", "currency")
PROJECT_COLUMNS = ("title", "summary", "description", "countries", "regions", "themes", "sectors", "start_date", "end_date")
NEED_COLUMNS = ("need_title", "goal", "currency", "deadline", "allow_overfunding")
COLUMNS = PROJECT_COLUMNS + NEED_COLUMNS
DELIMITERS = (",", ";")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
# Rows read from one file; a stocktaking round of a few hundred projects fits many times.
MAX_ROWS = 5_000
# The limits of the project form and the API.
MAX_LENGTHS = {"title": 300, "summary": 1000, "description": 50_000, "need_title": 300}
MAX_NEEDS = 50
# Characters of a rejected value shown in an error.
VALUE_PREVIEW = 80
TRUE_WORDS = ("yes", "true", "1", "y")
FALSE_WORDS = ("", "no", "false", "0", "n")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_CODE_SEPARATORS = re.compile(r"[;|]")
_NEGATIVE = re.compile(r"^-\d[\d.,]*$")

CODE_KINDS = {
    "countries": ("country code", reference.countries, str.upper, "ISO 3166-1 alpha-2 codes such as KE"),
    "regions": ("region", reference.regions, str.lower, "the slugs africa, americas, arab-states, asia-pacific, cis or europe"),
    "themes": ("theme", reference.themes, str.lower, "theme slugs such as broadband or capacity-building"),
    "sectors": ("DAC sector code", reference.sectors, str.strip, "DAC 5-digit codes such as 22040"),
}


@dataclass(frozen=True)
class RowError:
    """One problem in the file: its 1-based line, the column name and position, and the value."""

    line: int
    column: str
    value: str
    message: str
    position: int | None = None


class CsvImportFailed(ValidationFailed):
    """The file was rejected and no project was created; `errors` lists every problem."""

    def __init__(self, errors: list[RowError]):
        lines = len({error.line for error in errors})
        noun = "line has" if lines == 1 else "lines have"
        super().__init__(
            f"{lines} {noun} errors, so no project was imported. Correct the file and upload it again.",
            {f"line {error.line}: {error.column}": error.message for error in errors},
        )
        self.errors = errors


@dataclass
class ProjectRows:
    """The project that one or more rows of the file describe."""

    line: int
    title: str
    data: ProjectInput
    # Project cells of the first row, to compare with the rows of further needs.
    cells: dict[str, str]
    need_lines: dict[str, int] = field(default_factory=dict)


def _preview(value: str) -> str:
    return value if len(value) <= VALUE_PREVIEW else value[: VALUE_PREVIEW - 1] + "\u2026"


def _title_key(title: str) -> str:
    return " ".join(title.split()).casefold()


# Decoding and the header


def decode(data: bytes) -> tuple[str | None, list[RowError]]:
    """Decode UTF-8 with or without a byte order mark; name the first line that is not UTF-8."""
    if data.startswith(UTF16_BOMS):
        message = "The file is UTF-16 text. Save it as CSV in UTF-8 (\"CSV UTF-8\" in spreadsheet programs) and upload it again."
        return None, [RowError(1, "file", "", message)]
    try:
        return data.removeprefix(UTF8_BOM).decode("utf-8"), []
    except UnicodeDecodeError as error:
        start = error.start + (len(UTF8_BOM) if data.startswith(UTF8_BOM) else 0)
        line = data[:start].count(b"\n") + 1
        byte = data[start:start + 1].hex().upper()
        message = (
            f"Line {line} is not UTF-8 text (byte 0x{byte}); the file may be in another encoding such as Windows-1252. "
            "Save it as CSV in UTF-8 and upload it again."
        )
        return None, [RowError(line, "file", "", message)]


def _column_name(text: str) -> str:
    return "_".join(text.strip().lower().replace("-", " ").split())


def detect_delimiter(header_line: str) -> str | None:
    """Return the delimiter that splits the header into the most known columns, or None."""
    best, best_count = None, 0
    for delimiter in DELIMITERS:
        names = next(csv.reader([header_line], delimiter=delimiter), [])
        count = sum(_column_name(name) in COLUMNS for name in names)
        if count > best_count:
            best, best_count = delimiter, count
    return best


def check_header(cells: list[str]) -> tuple[list[str], list[RowError]]:
    names = [_column_name(cell) for cell in cells]
    errors = []
    for position, (cell, name) in enumerate(zip(cells, names), start=1):
        if not name:
            message = f"Column {position} of the first line has no name: name it, or remove the extra delimiter."
            errors.append(RowError(1, f"column {position}", cell, message, position))
        elif name not in COLUMNS:
            message = f"Unknown column {cell.strip()!r}. The columns are: {', '.join(COLUMNS)}."
            errors.append(RowError(1, cell.strip(), cell, message, position))
        elif names.index(name) != position - 1:
            errors.append(RowError(1, name, cell, f"Column {name!r} appears more than once.", position))
    for name in REQUIRED_COLUMNS:
        if name not in names:
            errors.append(RowError(1, name, "", f"The required column {name!r} is missing. Required columns: {', '.join(REQUIRED_COLUMNS)}."))
    return names, errors


# Rows


class _Row:
    """The cells of one record by column name, collecting errors with their line and column."""

    def __init__(self, line: int, names: list[str], cells: list[str], errors: list[RowError]):
        self.line = line
        self.cells = {name: cell.strip() for name, cell in zip(names, cells)}
        self.positions = {name: position for position, name in enumerate(names, start=1)}
        self.errors = errors
        self.bad: set[str] = set()

    def get(self, name: str) -> str:
        return "" if name in self.bad else self.cells.get(name, "")

    def error(self, name: str, message: str) -> None:
        self.bad.add(name)
        self.errors.append(RowError(self.line, name, _preview(self.cells.get(name, "")), message, self.positions.get(name)))

    def check_formulas(self, raw: dict[str, str]) -> None:
        """Reject cells that start with a formula character, before or after stripping spaces."""
        for name, value in raw.items():
            first = value[:1] if value.startswith(("\t", "\r")) else value.strip()[:1]
            if name == "goal" and _NEGATIVE.match(value.strip()):
                # parse_amount names the real problem: an amount below zero.
                continue
            if first and first in FORMULA_STARTS:
                character = {"\t": "a tab", "\r": "a carriage return"}.get(first, repr(first))
                self.error(name, f"The value starts with {character}, which spreadsheet programs run as a formula. Remove that character.")

    def text(self, name: str, required: bool = False) -> str:
        value = self.get(name)
        if required and not value and name not in self.bad:
            self.error(name, f"A value for {name} is required.")
        limit = MAX_LENGTHS.get(name)
        if limit and len(value) > limit:
            self.error(name, f"{name} has {len(value)} characters, more than the maximum of {limit}.")
            return ""
        return value

    def codes(self, name: str) -> list[str]:
        singular, known, normalise, hint = CODE_KINDS[name]
        lookup = known()
        result: list[str] = []
        for code in (part.strip() for part in _CODE_SEPARATORS.split(self.get(name))):
            if not code:
                continue
            value = normalise(code)
            if value not in lookup:
                self.error(name, f"Unknown {singular} {code!r}: use {hint}, separated by ; or |.")
            elif value not in result:
                result.append(value)
        return result

    def day(self, name: str) -> date | None:
        value = self.get(name)
        if not value:
            return None
        try:
            if _ISO_DATE.match(value):
                return date.fromisoformat(value)
        except ValueError:
            pass
        self.error(name, f"Date {value!r} is not valid: use YYYY-MM-DD, such as 2026-12-31.")
        return None

    def flag(self, name: str) -> bool:
        value = self.get(name)
        if value.lower() in TRUE_WORDS:
            return True
        if value.lower() not in FALSE_WORDS:
            self.error(name, f"{value!r} is not yes or no.")
        return False


def _project_input(row: _Row) -> ProjectInput:
    data = ProjectInput(
        title=row.text("title", required=True),
        summary=row.text("summary"),
        description=row.text("description"),
        countries=row.codes("countries"),
        regions=row.codes("regions"),
        themes=row.codes("themes"),
        sectors=row.codes("sectors"),
        start_date=row.day("start_date"),
        end_date=row.day("end_date"),
    )
    if data.start_date and data.end_date and data.end_date < data.start_date:
        row.error("end_date", f"End date {data.end_date.isoformat()} is before the start date {data.start_date.isoformat()}.")
    return data


def _need_input(row: _Row, delimiter: str) -> NeedInput | None:
    title = row.text("need_title", required=True)
    currency_text = row.get("currency")
    currency = None
    try:
        currency = check_currency(currency_text, "currency")
    except MoneyError as error:
        if "currency" not in row.bad:
            row.error("currency", error.message)
    goal_text = row.get("goal")
    goal = None
    if delimiter == ";" and "," in goal_text:
        row.error("goal", f"Amount {goal_text!r} contains a comma: write it with a decimal point and no thousands separators, such as 1500.50.")
    elif not goal_text and "goal" not in row.bad:
        row.error("goal", "A value for goal is required.")
    elif currency is not None and goal_text:
        try:
            goal = parse_amount(goal_text, currency, "goal")
        except MoneyError as error:
            row.error("goal", error.message)
    deadline = row.day("deadline")
    allow_overfunding = row.flag("allow_overfunding")
    if not title or currency is None or goal is None:
        return None
    return NeedInput(title=title, goal_minor=goal, currency=currency, deadline=deadline, allow_overfunding=allow_overfunding)


def _check_repeated_project(row: _Row, project: ProjectRows) -> None:
    """Check that a row of a further need leaves the project columns empty or repeats them."""
    for name in PROJECT_COLUMNS:
        value = row.cells.get(name, "")
        if name == "title" or name in row.bad or not value or value == project.cells.get(name, ""):
            continue
        row.error(
            name,
            f"The project {project.title!r} was first given on line {project.line} with a different {name} value. "
            f"Leave {name} empty on the rows of its further needs, or repeat the value of line {project.line}.",
        )


def _add_row(row: _Row, delimiter: str, projects: dict[str, ProjectRows]) -> None:
    title = row.get("title")
    key = _title_key(title)
    project = projects.get(key) if key else None
    if project is None:
        data = _project_input(row)
        if key:
            project = ProjectRows(row.line, " ".join(title.split()), data, {name: row.cells.get(name, "") for name in PROJECT_COLUMNS})
            projects[key] = project
    else:
        _check_repeated_project(row, project)

    need = _need_input(row, delimiter)
    if project is None or need is None:
        return
    need_key = _title_key(need.title)
    if need_key in project.need_lines:
        row.error(
            "need_title",
            f"Line {row.line} repeats the need {need.title!r} of the project {project.title!r} from line {project.need_lines[need_key]}.",
        )
        return
    if len(project.data.needs) >= MAX_NEEDS:
        row.error("need_title", f"The project {project.title!r} has more than {MAX_NEEDS} needs.")
        return
    project.need_lines[need_key] = row.line
    project.data.needs.append(need)


def read_projects_csv(data: bytes) -> tuple[list[ProjectRows], list[RowError]]:
    """Parse an uploaded file into projects with their needs, and every error found."""
    text, errors = decode(data)
    if text is None:
        return [], errors
    if not text.strip():
        return [], [RowError(1, "file", "", f"The file is empty: the first line names the columns, at least {', '.join(REQUIRED_COLUMNS)}.")]
    header_line = text.splitlines()[0]
    delimiter = detect_delimiter(header_line)
    if delimiter is None:
        message = f"The first line must name the columns, at least {', '.join(REQUIRED_COLUMNS)}, separated by commas or semicolons."
        return [], [RowError(1, "header", _preview(header_line), message)]

    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    projects: dict[str, ProjectRows] = {}
    rows = 0
    try:
        names, errors = check_header(next(reader))
        if errors:
            return [], errors
        line = reader.line_num + 1
        for cells in reader:
            start, line = line, reader.line_num + 1
            if not any(cell.strip() for cell in cells):
                continue
            rows += 1
            if rows > MAX_ROWS:
                errors.append(RowError(start, "file", "", f"The file has more than {MAX_ROWS:,} rows: split it into smaller files."))
                break
            if len(cells) != len(names):
                message = f"Expected {len(names)} values separated by {delimiter!r}, found {len(cells)}."
                if len(cells) > len(names):
                    message += " A value that contains the delimiter must be in double quotes."
                errors.append(RowError(start, "row", _preview(delimiter.join(cells)), message))
                continue
            row = _Row(start, names, cells, errors)
            row.check_formulas({name: cell for name, cell in zip(names, cells)})
            _add_row(row, delimiter, projects)
    except csv.Error as error:
        errors.append(RowError(reader.line_num, "file", "", f"The file is not valid CSV: {error}."))
    if not projects and not errors:
        errors.append(RowError(1, "file", "", "The file names its columns but contains no project."))
    return list(projects.values()), errors


# Import


def _existing_titles(organisation_id: int) -> dict[str, int]:
    rows = db.session.execute(
        select(Project.id, Project.title).where(Project.organisation_id == organisation_id, Project.status != "withdrawn")
    )
    return {_title_key(title): project_id for project_id, title in rows}


def _service_errors(project: ProjectRows, error: DomainError) -> list[RowError]:
    """Place errors that create_project raised at the line of the project or of its need."""
    need_lines = list(project.need_lines.values())
    result = []
    for name, message in (error.fields or {"file": error.message}).items():
        parts = name.split(".")
        line, column = project.line, name
        if parts[0] == "needs" and len(parts) == 3 and parts[1].isdigit() and int(parts[1]) < len(need_lines):
            line, column = need_lines[int(parts[1])], {"title": "need_title"}.get(parts[2], parts[2])
        result.append(RowError(line, column, "", message))
    return result


def import_projects_csv(user: User, data: bytes) -> list[Project]:
    """Create a draft project for each project of the file, or none; return the projects.

    Raise CsvImportFailed listing every problem with its line and column. The projects are
    created through create_project inside a savepoint and flushed, not committed, so the
    caller commits them in one transaction.
    """
    if user.role != "owner":
        raise Forbidden("Only project owners can import projects.")
    if user.organisation_id is None:
        raise ValidationFailed("Your account has no organisation.", {"organisation": "Your account has no organisation; ask an admin to add one."})
    logger.info("project csv import started user=%s organisation=%s bytes=%s", user.id, user.organisation_id, len(data))
    projects, errors = read_projects_csv(data)
    if not errors:
        existing = _existing_titles(user.organisation_id)
        for project in projects:
            project_id = existing.get(_title_key(project.title))
            if project_id is not None:
                message = f"Your organisation already has the project {project.title!r} (id {project_id}). Rename it, or remove its rows if it was imported before."
                errors.append(RowError(project.line, "title", _preview(project.title), message))
    if errors:
        logger.info("project csv import rejected user=%s errors=%s lines=%s", user.id, len(errors), len({e.line for e in errors}))
        raise CsvImportFailed(errors)

    created = []
    try:
        with db.session.begin_nested():
            for project in projects:
                try:
                    created.append(create_project(user, project.data, source="csv"))
                except DomainError as error:
                    raise CsvImportFailed(_service_errors(project, error)) from error
    except CsvImportFailed as error:
        logger.warning("project csv import failed in create_project user=%s errors=%s", user.id, len(error.errors))
        raise
    needs = sum(len(project.needs) for project in created)
    logger.info("project csv import finished user=%s projects=%s needs=%s", user.id, len(created), needs)
    return created
