"""Render user Markdown to HTML and sanitise it with an allowlist.

Two layers guard the output. markdown-it escapes raw HTML ("html": False) and drops links
whose URL has a javascript:, vbscript: or file: scheme, or data: other than a GIF, PNG, JPEG
or WebP image. nh3 then keeps only the tags, attributes, classes and URL schemes below.
Its `_filter_attribute` hook also drops a link whose URL turns into another scheme once
entities, percent-escapes, whitespace and control characters are removed (such as
"java%09script:"). tests/test_security.py runs its payloads through both layers and
through nh3 alone.
"""

import html
import re
from urllib.parse import unquote

import nh3
from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from markupsafe import Markup

ALLOWED_TAGS = {
    # h1 is left out so that a description cannot outrank the page's own title; its text
    # stays as plain text.
    "p", "br", "hr", "h2", "h3", "h4", "h5", "h6", "strong", "em", "code", "pre",
    "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td",
}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}}
URL_SCHEMES = {"http", "https", "mailto"}
# Table column alignment as classes, because the Content-Security-Policy blocks the
# style="text-align:..." attributes that markdown-it writes.
ALIGNMENTS = ("left", "center", "right")
ALLOWED_CLASSES = {tag: {f"align-{side}" for side in ALIGNMENTS} for tag in ("th", "td")}

_SCHEME = re.compile(r"([a-z][a-z0-9+.\-]*):")
# Whitespace, control and format characters, and U+FFFD, which "&#0;" decodes to. Browsers
# keep most of these inside a scheme, making it no scheme at all, but links that only
# differ from javascript: by such a character are dropped anyway.
_INVISIBLE = re.compile("[\x00-\x20\x7f-\x9f\u00ad\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff\ufffd\\s]+")


def _alignment_classes(state: StateCore) -> None:
    """Replace the style="text-align:X" of table cells with class="align-X"."""
    for token in state.tokens:
        if token.type not in ("th_open", "td_open"):
            continue
        style = token.attrGet("style")
        if style is None:
            continue
        del token.attrs["style"]
        side = str(style).removeprefix("text-align:")
        if side in ALIGNMENTS:
            token.attrSet("class", f"align-{side}")


_renderer = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
_renderer.core.ruler.push("alignment_classes", _alignment_classes)


def url_scheme(url: str) -> str | None:
    """Return the lower-case scheme a browser could read from url, or None for a relative URL.

    Entities and percent-escapes are decoded and whitespace and control characters removed
    first, repeatedly, so that "jav&#x61;script:", "java%09script:" and " JAVASCRIPT:" all
    give "javascript".
    """
    decoded = url
    for _ in range(5):
        undone = unquote(html.unescape(decoded))
        if undone == decoded:
            break
        decoded = undone
    match = _SCHEME.match(_INVISIBLE.sub("", decoded).lower())
    return match.group(1) if match else None


def _filter_attribute(tag: str, attribute: str, value: str) -> str | None:
    if tag == "a" and attribute == "href":
        scheme = url_scheme(value)
        if scheme is not None and scheme not in URL_SCHEMES:
            return None
    return value


def sanitise_html(markup: str) -> str:
    """Keep only allowed tags, attributes, table alignment classes and http(s)/mailto links."""
    return nh3.clean(
        markup,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        allowed_classes=ALLOWED_CLASSES,
        attribute_filter=_filter_attribute,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer nofollow",
    )


def render_markdown(text: str | None) -> Markup:
    """Render Markdown (CommonMark with tables), then sanitise the HTML."""
    return Markup(sanitise_html(_renderer.render(text or "")))
