"""Server-side SVG charts: stacked bars, grouped columns by month, and a heat map.

Each function returns the markup of one `<svg role="img">` with a `<title>` and a `<desc>`
that `aria-labelledby` points to, axis labels and a legend. lxml builds the tree, so every
label is escaped and the result is well-formed XML. Values are integers (minor units or
counts), turned into floats only to place shapes. The caller formats the text shown for a
value. Pages put a data table next to each chart for screen readers, because role="img"
hides the chart's own text from them.
"""

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lxml import etree
from markupsafe import Markup

SVG_NAMESPACE = "http://www.w3.org/2000/svg"
INK = "#1a1f2b"
MUTED = "#4a5366"
GRID = "#d5d9e0"
WHITE = "#ffffff"
FONT_SIZE = 13
SMALL_FONT_SIZE = 11
# Heat map colours from light to dark. The text colour of a cell is chosen for contrast.
HEAT_COLOURS = ("#eff3ff", "#c6dbef", "#6baed6", "#4292c6", "#2171b5", "#08306b")
EMPTY_CELL = "#ffffff"
# WCAG 2.1 minimum contrast for normal text.
TEXT_CONTRAST = 4.5
# Characters that XML 1.0 does not allow, such as most control characters.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


@dataclass(frozen=True)
class Series:
    """One kind of value in a chart, with its legend name and fill colour."""

    name: str
    colour: str


@dataclass(frozen=True)
class BarRow:
    """One bar: its label, one value per series (stacked in order) and the text after the bar."""

    label: str
    values: Sequence[int]
    text: str


@dataclass(frozen=True)
class HeatCell:
    value: int
    text: str


# Colour contrast


def _luminance(colour: str) -> float:
    channels = [int(colour[index:index + 2], 16) / 255 for index in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast_ratio(first: str, second: str) -> float:
    """Return the WCAG 2.1 contrast ratio of two "#rrggbb" colours, from 1 to 21."""
    lighter, darker = sorted((_luminance(first), _luminance(second)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def text_colour_on(fill: str) -> str:
    """Return dark ink or white, whichever contrasts more with the fill."""
    return INK if contrast_ratio(INK, fill) >= contrast_ratio(WHITE, fill) else WHITE


# Building blocks


def _clean(text: str) -> str:
    return _NOT_XML.sub("", str(text))


def _number(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _element(parent, tag: str, text: str | None = None, **attributes) -> etree._Element:
    node = etree.SubElement(parent, f"{{{SVG_NAMESPACE}}}{tag}")
    for name, value in attributes.items():
        if value is None:
            continue
        node.set(name.rstrip("_").replace("_", "-"), _number(value) if isinstance(value, float) else str(value))
    if text is not None:
        node.text = _clean(text)
    return node


def _text(parent, x: float, y: float, text: str, **attributes) -> etree._Element:
    defaults = {"font_size": FONT_SIZE, "fill": INK}
    return _element(parent, "text", text, x=float(x), y=float(y), **{**defaults, **attributes})


def _lines(parent, x: float, y: float, lines: list[str], line_height: float, **attributes) -> None:
    """Write text of several lines, each a tspan starting at x."""
    node = _text(parent, x, y, "", **attributes)
    node.text = None
    for index, line in enumerate(lines):
        _element(node, "tspan", line, x=float(x), dy=None if index == 0 else float(line_height))


def wrap(text: str, width: int) -> list[str]:
    """Split text at spaces into lines of at most `width` characters, keeping longer words whole."""
    lines: list[str] = []
    for word in _clean(text).split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


def _svg(chart_id: str, width: float, height: float, title: str, description: str) -> etree._Element:
    svg = etree.Element(f"{{{SVG_NAMESPACE}}}svg", nsmap={None: SVG_NAMESPACE})
    for name, value in (
        ("viewBox", f"0 0 {_number(width)} {_number(height)}"),
        ("role", "img"),
        ("aria-labelledby", f"{chart_id}-title {chart_id}-desc"),
        ("class", "chart"),
        ("id", chart_id),
    ):
        svg.set(name, value)
    _element(svg, "title", title, id=f"{chart_id}-title")
    _element(svg, "desc", description, id=f"{chart_id}-desc")
    return svg


def _markup(svg: etree._Element) -> Markup:
    return Markup(etree.tostring(svg, encoding="unicode"))


def nice_ticks(maximum: int, count: int = 4) -> list[int]:
    """Return round tick values from 0 to at least `maximum`, about `count` steps apart.

    Steps are 1, 2 or 5 times a power of ten of the value's unit, so ticks of minor units
    are round in major units as well.
    """
    if maximum <= 0:
        return [0, 1]
    raw = maximum / count
    power = 10 ** max(int(math.floor(math.log10(raw))), 0)
    step = next(multiple * power for multiple in (1, 2, 5, 10) if multiple * power >= raw)
    last = -(-maximum // step) * step
    return list(range(0, last + 1, step))


def _legend(parent, series: Sequence[Series], x: float, y: float, width: float) -> float:
    """Draw the legend in rows of two items, or of one when a name is too long, and return the y below it."""
    longest = max((len(item.name) for item in series), default=0)
    # About 7 units per character at the legend's font size, plus the swatch.
    columns = 2 if longest * 7 + 24 <= width / 2 else 1
    column_width = width / columns
    for index, item in enumerate(series):
        left = x + (index % columns) * column_width
        top = y + (index // columns) * 20
        _element(parent, "rect", x=float(left), y=float(top), width=14, height=14, fill=item.colour, stroke=INK, stroke_width="0.5")
        _text(parent, left + 20, top + 11.5, item.name, font_size=SMALL_FONT_SIZE + 1)
    return y + math.ceil(len(series) / columns) * 20


# Charts


def stacked_bar_chart(
    chart_id: str, title: str, description: str, rows: Sequence[BarRow], series: Sequence[Series],
    value_label: str, category_label: str, tick_text: Callable[[int], str],
) -> Markup:
    """Draw horizontal bars, one per row, each a stack of its series' values in order.

    The label of a row is above its bar, so that long names need no margin and the chart stays
    legible on a narrow screen.
    """
    width, text_room, bar_height, row_height = 360.0, 78.0, 16.0, 42.0
    plot_width = width - text_room
    top = 8.0

    svg = _svg(chart_id, width, 0, title, description)
    body = _element(svg, "g")
    y = _legend(body, series, 0, top, width) + 8
    _text(body, 0, y + 12, category_label, font_weight="bold")
    y += 22

    maximum = max((sum(row.values) for row in rows), default=0)
    ticks = nice_ticks(maximum)
    scale = plot_width / ticks[-1]
    plot_top = y
    plot_bottom = y + row_height * len(rows)
    for tick in ticks:
        x = tick * scale
        _element(body, "line", x1=float(x), x2=float(x), y1=float(plot_top), y2=float(plot_bottom), stroke=GRID, stroke_width="1")

    for row in rows:
        _text(body, 0, y + 13, row.label)
        x = 0.0
        bar_top = y + 18
        for item, value in zip(series, row.values):
            if value <= 0:
                continue
            length = value * scale
            _element(body, "rect", x=float(x), y=float(bar_top), width=float(length), height=float(bar_height), fill=item.colour, stroke=WHITE, stroke_width="1")
            x += length
        _text(body, x + 6, bar_top + 12.5, row.text, font_size=SMALL_FONT_SIZE + 1, fill=MUTED)
        y += row_height

    _element(body, "line", x1=0.0, x2=float(plot_width), y1=float(plot_bottom), y2=float(plot_bottom), stroke=MUTED, stroke_width="1")
    for index, tick in enumerate(ticks):
        # The first and last labels stay inside the plot's width.
        anchor = "middle"
        if index == 0:
            anchor = "start"
        elif index == len(ticks) - 1:
            anchor = "end"
        _text(body, tick * scale, plot_bottom + 16, tick_text(tick), font_size=SMALL_FONT_SIZE, fill=MUTED, text_anchor=anchor)
    _text(body, plot_width / 2, plot_bottom + 36, value_label, text_anchor="middle", font_weight="bold")

    svg.set("viewBox", f"0 0 {_number(width)} {_number(plot_bottom + 46)}")
    return _markup(svg)


def column_chart(
    chart_id: str, title: str, description: str, categories: Sequence[str], series: Sequence[Series],
    values: Sequence[Sequence[int]], value_label: str, category_label: str, tick_text: Callable[[int], str],
) -> Markup:
    """Draw grouped columns: one group per category (a month), one column per series."""
    width, left, right = 640.0, 78.0, 10.0
    plot_width = width - left - right
    svg = _svg(chart_id, width, 0, title, description)
    body = _element(svg, "g")
    plot_top = _legend(body, series, left, 8, plot_width) + 12
    plot_height = 220.0
    plot_bottom = plot_top + plot_height

    maximum = max((value for group in values for value in group), default=0)
    ticks = nice_ticks(maximum)
    scale = plot_height / ticks[-1]
    for tick in ticks:
        y = plot_bottom - tick * scale
        _element(body, "line", x1=float(left), x2=float(width - right), y1=float(y), y2=float(y), stroke=GRID, stroke_width="1")
        _text(body, left - 6, y + 4, tick_text(tick), font_size=SMALL_FONT_SIZE, fill=MUTED, text_anchor="end")

    count = max(len(categories), 1)
    # A few months get columns of a readable width, not the whole plot each.
    group_width = min(plot_width / count, 72.0)
    column_width = group_width * 0.8 / max(len(series), 1)
    # Label every n-th category so that labels about 60 units wide do not overlap.
    label_every = max(math.ceil(60 / group_width), 1)
    # The groups are centred when capped columns leave part of the plot empty.
    first_left = left + (plot_width - group_width * count) / 2
    for index, (category, group) in enumerate(zip(categories, values)):
        group_left = first_left + index * group_width + group_width * 0.1
        for position, (item, value) in enumerate(zip(series, group)):
            if value <= 0:
                continue
            height = value * scale
            _element(
                body, "rect", x=float(group_left + position * column_width), y=float(plot_bottom - height),
                width=float(column_width), height=float(height), fill=item.colour,
            )
        if index % label_every == 0:
            _text(body, first_left + (index + 0.5) * group_width, plot_bottom + 16, category, font_size=SMALL_FONT_SIZE, fill=MUTED, text_anchor="middle")

    _element(body, "line", x1=float(left), x2=float(width - right), y1=float(plot_bottom), y2=float(plot_bottom), stroke=MUTED, stroke_width="1")
    _text(body, left + plot_width / 2, plot_bottom + 38, category_label, text_anchor="middle", font_weight="bold")
    axis_x, axis_y = 14.0, plot_top + plot_height / 2
    _text(body, axis_x, axis_y, value_label, text_anchor="middle", font_weight="bold", transform=f"rotate(-90 {_number(axis_x)} {_number(axis_y)})")

    svg.set("viewBox", f"0 0 {_number(width)} {_number(plot_bottom + 50)}")
    return _markup(svg)


def heat_colour(value: int, maximum: int) -> str:
    """Return the colour of a cell: the empty colour for 0, else one of HEAT_COLOURS by share of the maximum."""
    if value <= 0 or maximum <= 0:
        return EMPTY_CELL
    bins = len(HEAT_COLOURS)
    index = min(-(-value * bins // maximum) - 1, bins - 1)
    return HEAT_COLOURS[index]


def heat_map(
    chart_id: str, title: str, description: str, row_labels: Sequence[str], column_labels: Sequence[str],
    cells: Sequence[Sequence[HeatCell]], row_axis_label: str, column_axis_label: str,
    legend_label: str, legend_text: Callable[[int], str],
) -> Markup:
    """Draw a grid of cells coloured by value, with the value written in each cell.

    The legend gives the upper end of each colour band. The bands split the range from 0 to
    the largest cell into equal steps.
    """
    label_width, cell_width, cell_height = 170.0, 86.0, 40.0
    header_lines = [wrap(label, 11) for label in column_labels]
    header_height = 22 + 14 * max((len(lines) for lines in header_lines), default=1)
    width = label_width + cell_width * len(column_labels)
    svg = _svg(chart_id, width, 0, title, description)
    body = _element(svg, "g")

    _text(body, label_width, 14, column_axis_label, font_weight="bold")
    for index, lines in enumerate(header_lines):
        _lines(body, label_width + index * cell_width + cell_width / 2, 34, lines, 14, font_size=SMALL_FONT_SIZE + 1, text_anchor="middle")
    _text(body, 0, header_height - 4, row_axis_label, font_weight="bold")

    maximum = max((cell.value for row in cells for cell in row), default=0)
    top = header_height + 4
    for row_index, (label, row) in enumerate(zip(row_labels, cells)):
        y = top + row_index * cell_height
        lines = wrap(label, 24)[:3]
        first_line = y + cell_height / 2 - (len(lines) - 1) * 7 + 4
        _lines(body, 0, first_line, lines, 14, font_size=SMALL_FONT_SIZE + 1)
        for column_index, cell in enumerate(row):
            x = label_width + column_index * cell_width
            fill = heat_colour(cell.value, maximum)
            _element(body, "rect", x=float(x), y=float(y), width=cell_width, height=cell_height, fill=fill, stroke=GRID if fill == EMPTY_CELL else WHITE, stroke_width="1")
            _text(body, x + cell_width / 2, y + cell_height / 2 + 4, cell.text, font_size=SMALL_FONT_SIZE + 1, fill=text_colour_on(fill) if fill != EMPTY_CELL else MUTED, text_anchor="middle")

    legend_top = top + cell_height * len(row_labels) + 16
    swatch_width = (width - label_width) / (len(HEAT_COLOURS) + 1)
    _lines(body, 0, legend_top + 12, wrap(legend_label, 24)[:2], 14, font_size=SMALL_FONT_SIZE + 1)
    bands = [(EMPTY_CELL, "0")]
    if maximum > 0:
        bands += [
            (colour, legend_text(-(-maximum * (index + 1) // len(HEAT_COLOURS))))
            for index, colour in enumerate(HEAT_COLOURS)
        ]
    for index, (colour, text) in enumerate(bands):
        x = label_width + index * swatch_width
        _element(body, "rect", x=float(x), y=float(legend_top), width=float(swatch_width - 2), height=16.0, fill=colour, stroke=GRID, stroke_width="1")
        _text(body, x + (swatch_width - 2) / 2, legend_top + 30, text, font_size=SMALL_FONT_SIZE - 1, fill=MUTED, text_anchor="middle")

    svg.set("viewBox", f"0 0 {_number(width)} {_number(legend_top + 40)}")
    return _markup(svg)
