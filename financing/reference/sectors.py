"""OECD DAC sectors, their 3-digit categories and the platform's themes."""

from functools import cache

from .errors import UnknownSector, UnknownSectorCategory, UnknownTheme
from .files import codelist_items, is_withdrawn, load_json, normalise
from .records import Sector, Theme


@cache
def _all_sectors() -> dict[str, Sector]:
    """Build every DAC 5-digit sector, withdrawn codes included."""
    return {
        item["code"]: Sector(item["code"], item["name"], item["category"], is_withdrawn(item))
        for item in codelist_items("Sector")
    }


@cache
def _active_sectors() -> dict[str, Sector]:
    return {code: item for code, item in _all_sectors().items() if not item.withdrawn}


@cache
def _all_categories() -> dict[str, tuple[str, bool]]:
    """Map every DAC 3-digit category code to its name and whether it is withdrawn."""
    return {item["code"]: (item["name"], is_withdrawn(item)) for item in codelist_items("SectorCategory")}


@cache
def _themes() -> dict[str, Theme]:
    result = {}
    for item in load_json("themes.json")["themes"]:
        sectors = frozenset(item["sectors"])
        result[item["slug"]] = Theme(item["slug"], item["name"], item["description"], sectors)
    return result


@cache
def _themes_by_sector() -> dict[str, tuple[str, ...]]:
    """Map each sector code that some theme covers to those theme slugs, in theme order."""
    result: dict[str, tuple[str, ...]] = {}
    for slug, item in _themes().items():
        for code in item.sectors:
            result[code] = result.get(code, ()) + (slug,)
    return result


def sectors() -> dict[str, Sector]:
    """Return the active DAC 5-digit sectors by code, as a new dict on each call."""
    return dict(_active_sectors())


def sector_categories() -> dict[str, str]:
    """Return the names of the active DAC 3-digit categories by code."""
    return {code: name for code, (name, withdrawn) in _all_categories().items() if not withdrawn}


def themes() -> dict[str, Theme]:
    """Return the themes by slug in the platform's theme order, as a new dict on each call."""
    return dict(_themes())


def sector(code: str) -> Sector:
    """Look up a DAC 5-digit sector, withdrawn codes included, or raise UnknownSector."""
    found = _all_sectors().get(normalise(code))
    if found is None:
        raise UnknownSector(code)
    return found


def sector_category(code: str) -> str:
    """Return the name of a DAC 3-digit category, withdrawn codes included, or raise UnknownSectorCategory."""
    found = _all_categories().get(normalise(code))
    if found is None:
        raise UnknownSectorCategory(code)
    return found[0]


def theme(slug: str) -> Theme:
    """Look up a theme by slug, or raise UnknownTheme."""
    found = _themes().get(normalise(slug, case="lower"))
    if found is None:
        raise UnknownTheme(slug)
    return found


def themes_of_sector(code: str) -> list[str]:
    """Return the slugs of the themes covering a DAC 5-digit sector, or raise UnknownSector."""
    return list(_themes_by_sector().get(sector(code).code, ()))
