"""Copy the IATI codelists this package ships from the repository's data folder and check them.

Run from the repository root after the codelists in data/iati-codelists change:

    python -m financing.reference.build

The package reads only the copies in financing/reference/data at run time, because an
installed package has no access to the repository's data folder.
"""

import argparse
import json
import shutil
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = REPOSITORY / "data" / "iati-codelists"
TARGET = Path(__file__).resolve().parent / "data"

# Code for IATI's copies are used instead of the official XML because Code for IATI refreshes
# them from the OECD and ISO, so they have DAC sector 22081 and the 2023-2024 ISO 4217 changes.
CODELISTS = ("Country", "Region", "Sector", "SectorCategory", "Currency")


def official_codes(source: Path, name: str) -> set[str]:
    """Read the codes of one official IATI XML codelist."""
    tree = ElementTree.parse(source / "xml" / f"{name}.xml")
    return {item.findtext("code") for item in tree.iter("codelist-item")}


def copy_codelist(source: Path, name: str) -> list[str]:
    """Copy one Code for IATI JSON codelist and return the official codes it lacks."""
    shipped = source / "codeforiati-json" / f"{name}.json"
    shutil.copyfile(shipped, TARGET / f"{name}.json")
    with shipped.open(encoding="utf-8") as handle:
        copied = {item["code"] for item in json.load(handle)["data"]}
    return sorted(official_codes(source, name) - copied)


def main(argv: list[str] | None = None) -> int:
    """Copy every codelist; exit non-zero when a copy lacks a code of the official list."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE,
                        help="folder with xml/ and codeforiati-json/ (default: %(default)s)")
    source = parser.parse_args(argv).source

    failed = False
    for name in CODELISTS:
        missing = copy_codelist(source, name)
        print(f"{name}: copied to {TARGET / (name + '.json')}")
        if missing:
            failed = True
            print(f"{name}: the official XML has codes missing from the copy: {', '.join(missing)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
