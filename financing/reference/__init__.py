"""Reference data: ITU-D regions, countries, themes, DAC sectors and currencies, read from the package's files."""

from .currencies import currencies, currency
from .errors import (
    UnknownCode,
    UnknownCountry,
    UnknownCurrency,
    UnknownIatiRegion,
    UnknownRegion,
    UnknownSector,
    UnknownSectorCategory,
    UnknownTheme,
)
from .geography import (
    countries,
    country,
    iati_region,
    iati_regions,
    region,
    region_of_country,
    regions,
    regions_of_iati_region,
)
from .records import Country, Currency, IatiRegion, Region, Sector, Theme
from .sectors import sector, sector_categories, sector_category, sectors, theme, themes, themes_of_sector

__all__ = [
    "Country", "Currency", "IatiRegion", "Region", "Sector", "Theme",
    "UnknownCode", "UnknownCountry", "UnknownCurrency", "UnknownIatiRegion", "UnknownRegion",
    "UnknownSector", "UnknownSectorCategory", "UnknownTheme",
    "countries", "country", "currencies", "currency", "iati_region", "iati_regions",
    "region", "region_of_country", "regions", "regions_of_iati_region",
    "sector", "sector_categories", "sector_category", "sectors",
    "theme", "themes", "themes_of_sector",
]
