"""Countries, ITU-D regions and IATI (OECD DAC) region codes."""

from functools import cache

from .errors import UnknownCountry, UnknownIatiRegion, UnknownRegion
from .files import codelist_items, is_withdrawn, load_json, normalise
from .records import Country, IatiRegion, Region


@cache
def _region_by_country() -> dict[str, str | None]:
    """Map every country code of itu_regions.json to its region slug, or None."""
    data = load_json("itu_regions.json")
    result: dict[str, str | None] = dict.fromkeys(data["no_region"])
    for region in data["regions"]:
        codes = region["member_states"] + region["other_areas"] + region["withdrawn_codes"]
        for code in codes:
            if code in result:
                raise ValueError(f"itu_regions.json places country {code!r} twice.")
            result[code] = region["slug"]
    return result


@cache
def _all_countries() -> dict[str, Country]:
    """Build every country of the Country codelist, withdrawn codes included."""
    region_by_country = _region_by_country()
    result = {}
    for item in codelist_items("Country"):
        code = item["code"]
        if code not in region_by_country:
            raise ValueError(f"itu_regions.json has no entry for country {code!r}.")
        result[code] = Country(code, item["name"], region_by_country[code], is_withdrawn(item))
    return result


@cache
def _active_countries() -> dict[str, Country]:
    return {code: item for code, item in _all_countries().items() if not item.withdrawn}


@cache
def _regions() -> dict[str, Region]:
    result = {}
    for region in load_json("itu_regions.json")["regions"]:
        slug = region["slug"]
        members = frozenset(code for code, item in _active_countries().items() if item.region == slug)
        result[slug] = Region(slug, region["name"], members)
    return result


@cache
def _all_iati_regions() -> dict[str, IatiRegion]:
    """Build every code of the IATI Region codelist, withdrawn codes included."""
    overlaps = load_json("iati_regions.json")["regions"]
    result = {}
    for item in codelist_items("Region"):
        code = item["code"]
        if code not in overlaps:
            raise ValueError(f"iati_regions.json has no entry for IATI region {code!r}.")
        result[code] = IatiRegion(code, item["name"], tuple(overlaps[code]), is_withdrawn(item))
    return result


def countries() -> dict[str, Country]:
    """Return the active countries by ISO code, as a new dict on each call."""
    return dict(_active_countries())


def regions() -> dict[str, Region]:
    """Return the six ITU-D regions by slug, as a new dict on each call."""
    return dict(_regions())


def iati_regions() -> dict[str, IatiRegion]:
    """Return the active IATI region codes, as a new dict on each call."""
    return {code: item for code, item in _all_iati_regions().items() if not item.withdrawn}


def country(code: str) -> Country:
    """Look up a country by ISO code, withdrawn codes included, or raise UnknownCountry."""
    found = _all_countries().get(normalise(code))
    if found is None:
        raise UnknownCountry(code)
    return found


def region(slug: str) -> Region:
    """Look up an ITU-D region by slug, or raise UnknownRegion."""
    found = _regions().get(normalise(slug, case="lower"))
    if found is None:
        raise UnknownRegion(slug)
    return found


def iati_region(code: str) -> IatiRegion:
    """Look up an IATI region code, withdrawn codes included, or raise UnknownIatiRegion."""
    found = _all_iati_regions().get(normalise(code))
    if found is None:
        raise UnknownIatiRegion(code)
    return found


def region_of_country(code: str) -> str | None:
    """Return the ITU-D region slug of a country (None for Antarctica), or raise UnknownCountry."""
    return country(code).region


def regions_of_iati_region(code: str) -> tuple[str, ...]:
    """Return the ITU-D region slugs an IATI region overlaps, or raise UnknownIatiRegion."""
    return iati_region(code).regions
