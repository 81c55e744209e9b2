"""Errors raised for codes and slugs that the reference data does not contain."""


class UnknownCode(ValueError):
    """Base class of the errors for a code or slug not found in the reference data."""

    kind = "code"
    hint = ""

    def __init__(self, code: object):
        self.code = code
        super().__init__(f"Unknown {self.kind} {code!r}. {self.hint}".strip())


class UnknownCountry(UnknownCode):
    """An ISO 3166-1 alpha-2 code not in the Country codelist."""

    kind = "country code"
    hint = "Use an ISO 3166-1 alpha-2 code such as KE."


class UnknownRegion(UnknownCode):
    """A slug that is not one of the six ITU-D regions."""

    kind = "region"
    hint = "Use one of: africa, americas, arab-states, asia-pacific, cis, europe."


class UnknownIatiRegion(UnknownCode):
    """A code not in the IATI (OECD DAC) Region codelist."""

    kind = "IATI region code"
    hint = "Use an OECD DAC region code such as 289."


class UnknownTheme(UnknownCode):
    """A slug that is not one of the platform's themes."""

    kind = "theme"
    hint = ("Use one of: public-access, ict-applications, broadband, backbones, "
            "policy-harmonization, capacity-building, spectrum, broadcasting.")


class UnknownSector(UnknownCode):
    """A code not in the OECD DAC 5-digit Sector codelist."""

    kind = "DAC sector code"
    hint = "Use a 5-digit OECD DAC purpose code such as 22040."


class UnknownSectorCategory(UnknownSector):
    """A code not in the OECD DAC 3-digit SectorCategory codelist."""

    kind = "DAC sector category code"
    hint = "Use a 3-digit OECD DAC category code such as 220."


class UnknownCurrency(UnknownCode):
    """A code that is not an ISO 4217 currency with a minor unit the platform can store."""

    kind = "currency code"
    hint = "Use an ISO 4217 code such as EUR or USD."
