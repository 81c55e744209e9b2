"""Reference codes (countries, regions, themes, DAC sectors) kept as rows of (kind, code)."""


class CodesMixin:
    """Read a model's code rows by kind; `_code_rows` names the relationship that contains them."""

    _code_rows: str

    def codes(self, kind: str) -> list[str]:
        return sorted(row.code for row in getattr(self, self._code_rows) if row.kind == kind)

    @property
    def countries(self) -> list[str]:
        return self.codes("country")

    @property
    def regions(self) -> list[str]:
        return self.codes("region")

    @property
    def themes(self) -> list[str]:
        return self.codes("theme")

    @property
    def sectors(self) -> list[str]:
        return self.codes("sector")
