"""Immutable records of the reference data."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Country:
    """An ISO 3166-1 alpha-2 country or area with its ITU-D region slug (None for Antarctica)."""

    code: str
    name: str
    region: str | None
    withdrawn: bool = False


@dataclass(frozen=True)
class Region:
    """An ITU-D region with the codes of the active countries and areas in it."""

    slug: str
    name: str
    countries: frozenset[str]


@dataclass(frozen=True)
class Theme:
    """A WSIS Action Line C2 theme with the DAC 5-digit sector codes it covers."""

    slug: str
    name: str
    description: str
    sectors: frozenset[str]


@dataclass(frozen=True)
class Sector:
    """An OECD DAC 5-digit purpose code with its 3-digit category code."""

    code: str
    name: str
    category: str
    withdrawn: bool = False


@dataclass(frozen=True)
class Currency:
    """An ISO 4217 currency with its minor-unit exponent (2 for EUR: 1 EUR = 100 cents)."""

    code: str
    name: str
    minor_units: int


@dataclass(frozen=True)
class IatiRegion:
    """An IATI (OECD DAC) region code with the ITU-D region slugs it overlaps."""

    code: str
    name: str
    regions: tuple[str, ...]
    withdrawn: bool = False
