"""Read the JSON data files shipped in financing/reference/data."""

import json
from importlib import resources
from typing import Any


def load_json(name: str) -> Any:
    """Parse one file of the package's data folder."""
    path = resources.files(__package__) / "data" / name
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


def codelist_items(name: str) -> list[dict[str, Any]]:
    """Return the items of a shipped IATI codelist in Code for IATI's JSON format."""
    return load_json(f"{name}.json")["data"]


def is_withdrawn(item: dict[str, Any]) -> bool:
    """Tell whether a codelist item has the status 'withdrawn'."""
    return item.get("status") == "withdrawn"


def normalise(code: object, case: str = "upper") -> str | None:
    """Strip a code and fold its case, or return None for a value that is not a string."""
    if not isinstance(code, str):
        return None
    code = code.strip()
    return code.upper() if case == "upper" else code.lower()
