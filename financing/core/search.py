"""Accent- and case-insensitive text search that behaves the same on SQLite and PostgreSQL.

SQLite's lower() and LIKE fold ASCII letters only, PostgreSQL's lower() follows the
database locale, and neither removes accents. So searchable text is folded in Python into
a separate column, the query is folded the same way, and a LIKE compares the two without
any folding by the database.
"""

import re
import unicodedata

from sqlalchemy import ColumnElement, and_

# Typographic quotes that people type as ASCII ones: "Côte d’Ivoire" is found by "d'ivoire".
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u02bc": "'", "\u201c": '"', "\u201d": '"'})
_SPACES = re.compile(r"\s+")
# Maximum length of a query word and maximum number of words used. Longer words are cut and
# further words ignored, so the LIKE conditions of one query stay bounded.
MAX_WORD_LENGTH = 100
MAX_WORDS = 10


def fold(text: str | None) -> str:
    """Return text case-folded, without accents, with ASCII quotes and single spaces.

    NFKD splits "é" into "e" plus a combining accent, which is dropped; casefold maps "ß"
    to "ss" and "TÉLÉCOM" to "telecom". Letters of scripts without case, such as Chinese
    or Arabic, are kept (Arabic and Hebrew vowel marks are dropped like accents).
    """
    # Decompose before and after case folding, since each can produce what the other maps
    # ("℃" decomposes to an upper-case C, and "İ" folds to "i" plus a combining dot).
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text or "").casefold())
    bare = "".join(char for char in decomposed if not unicodedata.combining(char))
    folded = unicodedata.normalize("NFKC", bare).translate(_QUOTES)
    return _SPACES.sub(" ", folded).strip()


def search_text(*parts: str | None) -> str:
    """Return the folded text of several fields, one per line, for a search column."""
    return "\n".join(fold(part) for part in parts)


def query_words(query: str | None) -> list[str]:
    """Return the distinct folded words of a search query, in order."""
    words: list[str] = []
    for word in fold(query).split(" "):
        word = word[:MAX_WORD_LENGTH]
        if word and word not in words:
            words.append(word)
    return words[:MAX_WORDS]


def _like_pattern(word: str) -> str:
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def matches_all_words(column, query: str | None) -> ColumnElement[bool] | None:
    """Build a condition that the folded column contains every word of query; None for no words."""
    words = query_words(query)
    if not words:
        return None
    return and_(*(column.like(_like_pattern(word), escape="\\") for word in words))
