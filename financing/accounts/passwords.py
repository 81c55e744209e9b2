"""The list of common passwords that registration rejects, shipped as package data."""

import gzip
from functools import cache
from importlib.resources import files

# Django's common-password list; see data/COMMON-PASSWORDS-NOTICE.txt for its source and licence.
COMMON_PASSWORDS_FILE = "common-passwords.txt.gz"


@cache
def common_passwords() -> frozenset[str]:
    """Return the shipped common passwords, lower-case; the file is read once per process."""
    with (files("financing.accounts") / "data" / COMMON_PASSWORDS_FILE).open("rb") as raw:
        with gzip.open(raw, "rt", encoding="utf-8") as text:
            return frozenset(line.strip() for line in text if line.strip())


def is_common_password(password: str) -> bool:
    """Return True when password, ignoring case and surrounding spaces, is on the list."""
    # lower(), not casefold(), because the list was lower-cased that way.
    return password.strip().lower() in common_passwords()
