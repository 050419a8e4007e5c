"""Is a figure actually drawn? Checks on the static SVG that vl-convert makes of an Altair chart.

What vl-convert 1.9 (Vega's SVG renderer) writes: the data of a chart sit in `<g class="mark-TYPE role-mark NAME">`
groups, one per layer (inside `role-scope` cells for facets and concatenations), one child element per datum or
series: `<path d=...>` for rect (a bar is `M x,y h w v h h -w Z`), symbol (point, circle, square: a path around the
origin moved by `transform="translate(x,y)"`), line, area, arc and trail marks; `<line x2 y2>` moved by a translate
for rule marks; `<text>` for text marks. Axes, legends and titles are drawn with the same kinds of marks, but in groups
whose role is `role-axis-*`, `role-legend-*` or `role-title-*`: only `role-mark` groups hold data. An empty layer is an
empty `role-mark` group. Vega-Lite drops NaN, null and infinite positions before drawing, and Vega's renderer writes
a NaN position that still gets through as 0 in `translate(...)`, so a NaN rarely shows in the geometry: it shows in
the mark's `aria-label` ("x: NaN") or the axis's ("values from NaN to NaN"), which are checked too.

What is rejected (`mark_problems`):
- no data mark at all (every `role-mark` group empty, or none);
- a data mark drawn with zero extent that its data do not explain: a rect, area or arc with zero width or zero
  height (the bars of a log scale that start at zero), a line, trail, rule or symbol whose points all coincide (a
  line through several equal points, a point of size 0), a text mark with no text. Degenerate data are drawn
  honestly and pass: a bar, area or arc whose label shows a value of 0; a rect, area or rule spanning a range whose
  two ends are equal (the label repeats a number, e.g. the lowest and highest seed of a single seed); a line through
  a single datum (one vertex: Vega writes `Mx,yZ`). Vega-Lite labels each mark `field: value; ...`
  (`aria-label`), which is what these exceptions read. A chart whose every bar is 0 (an untrained tiny model's
  SQuAD scores) therefore passes, drawing only its axes: it shows what the data say;
- NaN or ±Infinity in any geometry attribute (d, transform, x, y, width, ...) anywhere in the SVG, or as a value in
  the aria-label of a data mark or of an axis; a log-scale axis whose domain starts at 0 or below (its zero maps to
  -Infinity: bars from zero vanish, points pile up at the edge).

Not caught: a NaN given as a constant value rather than a field (drawn at 0 with no trace in the SVG), and marks
that are drawn but misplaced for other reasons.

A placeholder chart (`report.placeholder_chart`: one text mark saying why there is nothing to draw, no axes) passes:
it draws its message, which is what the page means to show when a profile has no runs for it. `is_placeholder` tells
it apart, so a test can still insist on a drawn chart where runs exist (`mark_problems(..., allow_placeholder=False)`
reports it)."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

SVG_NS = "{http://www.w3.org/2000/svg}"
GEOMETRY = ("d", "transform", "x", "y", "x1", "y1", "x2", "y2", "width", "height", "cx", "cy", "r", "rx", "ry",
            "points", "viewBox", "font-size", "stroke-width", "opacity", "fill-opacity", "stroke-opacity",
            "stroke-dasharray", "stroke-dashoffset", "style")
SIZED = {"rect", "area", "arc"}  # filled marks: zero width or zero height draws nothing
NOT_FINITE = re.compile(r"NaN|Infinity|∞")  # as JavaScript writes them; no path command or CSS word holds these
NOT_FINITE_VALUE = re.compile(r"(?<![\w.])[-−]?(?:NaN|Infinity|∞)(?![\w])")  # a whole value in a label
PATH_TOKEN = re.compile(r"[MmLlHhVvCcSsQqTtAaZz]|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
LOG_AXIS = re.compile(r"for a log scale with values from ([-−]?[\d,.]+)")
ARGS = {"m": 2, "l": 2, "h": 1, "v": 1, "c": 6, "s": 4, "q": 4, "t": 2, "a": 7, "z": 0}


@dataclass
class MarkGroup:
    """One `role-mark` group of the SVG: its mark type (rect, symbol, line, ...), Vega name and drawn elements."""

    kind: str
    name: str
    items: list[ET.Element]


def _local(tag: Any) -> str:
    """An element's tag without the SVG namespace."""
    return str(tag).replace(SVG_NS, "")


def _classes(element: ET.Element) -> list[str]:
    """The tokens of an element's class attribute."""
    return element.get("class", "").split()


def mark_groups(root: ET.Element) -> list[MarkGroup]:
    """Every data mark group (`mark-TYPE role-mark`) of a parsed SVG, group marks (containers) left out."""
    groups = []
    for element in root.iter(f"{SVG_NS}g"):
        classes = _classes(element)
        if "role-mark" not in classes:
            continue
        kind = next((c[len("mark-"):] for c in classes if c.startswith("mark-")), "?")
        if kind == "group":
            continue  # a container; the marks inside it are role-mark groups of their own
        name = next((c for c in classes if c != "role-mark" and not c.startswith("mark-")), "")
        groups.append(MarkGroup(kind, name, list(element)))
    return groups


def path_box(d: str) -> tuple[float, float, float, float, int] | None:
    """The bounding box (x0, y0, x1, y1) of an SVG path's points (arcs widened by their radii, curves by their
    control points) and its number of vertices; None when it has none."""
    tokens = PATH_TOKEN.findall(d or "")
    xs: list[float] = []
    ys: list[float] = []
    vertices = 0
    x = y = start_x = start_y = 0.0
    command = ""
    i = 0
    while i < len(tokens):
        if tokens[i].isalpha():
            command = tokens[i]
            i += 1
            if command in "Zz":
                x, y = start_x, start_y
                continue
        if not command or command in "Zz":
            return None  # numbers without a command: not a path Vega writes
        lower = command.lower()
        args = [float(t) for t in tokens[i:i + ARGS[lower]]]
        if len(args) < ARGS[lower]:
            break
        i += ARGS[lower]
        relative = command.islower()
        if lower == "h":
            x = x + args[0] if relative else args[0]
        elif lower == "v":
            y = y + args[0] if relative else args[0]
        else:
            px, py = args[-2], args[-1]
            if lower == "a":
                rx, ry = abs(args[0]), abs(args[1])
                xs += [x - rx, x + rx]
                ys += [y - ry, y + ry]
            else:  # control points of curves count too: an overestimate, enough to tell zero from not
                for j in range(0, len(args) - 2, 2):
                    xs.append(x + args[j] if relative else args[j])
                    ys.append(y + args[j + 1] if relative else args[j + 1])
            x, y = (x + px, y + py) if relative else (px, py)
            if lower == "m":
                start_x, start_y = x, y
                command = "l" if relative else "L"  # further pairs after a moveto are linetos
        xs.append(x)
        ys.append(y)
        vertices += 1
    if not xs:
        return None
    return min(xs), min(ys), max(xs), max(ys), vertices


def _number(element: ET.Element, name: str) -> float:
    """A numeric attribute, 0 when absent (SVG's default for x1, y1, x2, y2)."""
    try:
        return float(element.get(name, "0"))
    except ValueError:
        return math.nan


def extent(kind: str, element: ET.Element) -> tuple[float, float]:
    """The drawn width and height of one mark element (0, 0 when it draws nothing)."""
    tag = _local(element.tag)
    if tag == "text":
        return (1.0, 1.0) if "".join(element.itertext()).strip() else (0.0, 0.0)
    if tag == "line":
        x1, y1, x2, y2 = (_number(element, name) for name in ("x1", "y1", "x2", "y2"))
        return abs(x2 - x1), abs(y2 - y1)
    if tag in ("rect", "image"):
        return _number(element, "width"), _number(element, "height")
    if tag == "circle":
        return 2 * _number(element, "r"), 2 * _number(element, "r")
    if tag == "path":
        box = path_box(element.get("d", ""))
        return (0.0, 0.0) if box is None else (box[2] - box[0], box[3] - box[1])
    if tag == "g":  # a group item (e.g. of a nested mark): drawn if anything inside is
        sizes = [extent(kind, child) for child in element]
        return (max((w for w, _ in sizes), default=0.0), max((h for _, h in sizes), default=0.0))
    return 1.0, 1.0  # an element kind Vega does not use for marks: not judged


def is_blank(kind: str, element: ET.Element) -> bool:
    """Does this mark element draw nothing: zero width or height for filled marks, a single point for the rest?"""
    width, height = extent(kind, element)
    if kind in SIZED:
        return not (width > 0 and height > 0)
    return not (width > 0 or height > 0)


def label_numbers(label: str) -> list[float]:
    """The finite numeric values of a Vega-Lite mark label `field: value; field: value` (other values left out)."""
    numbers = []
    for entry in label.split("; "):
        _, colon, value = entry.partition(": ")
        try:
            number = float(value.strip().replace("−", "-").replace(",", ""))
        except ValueError:
            continue
        if colon and math.isfinite(number):
            numbers.append(number)
    return numbers


def explained(kind: str, element: ET.Element) -> bool:
    """Is a blank element what its data say: a value of 0 (bar, area, arc), a range whose ends are equal (bar,
    area, rule), a line through a single datum?"""
    numbers = label_numbers(element.get("aria-label", ""))
    if kind in SIZED and 0.0 in numbers:
        return True
    if kind in SIZED | {"rule"} and len(set(numbers)) < len(numbers):
        return True
    if kind in ("line", "trail") and _local(element.tag) == "path":
        box = path_box(element.get("d", ""))
        return box is not None and box[4] == 1
    return False


def _describe(element: ET.Element) -> str:
    """A short description of a mark element for a problem message."""
    role = element.get("aria-roledescription", _local(element.tag))
    label = element.get("aria-label", "")
    shape = element.get("d") or " ".join(f"{k}={element.get(k)}" for k in ("transform", "x2", "y2") if element.get(k))
    text = f"{role} ({label[:80]}{'…' if len(label) > 80 else ''})" if label else role
    return f"{text} {shape[:60]}".strip()


def _not_finite_problems(root: ET.Element, groups: list[MarkGroup]) -> list[str]:
    """NaN or infinite numbers in geometry anywhere, or as values in the aria-labels of data marks and axes."""
    problems = []
    for element in root.iter():
        for name in GEOMETRY:
            value = element.get(name)
            if value and NOT_FINITE.search(value):
                problems.append(f"not a finite number in {name}={value[:60]!r} of <{_local(element.tag)}> "
                                f"{_describe(element)}")
        if "role-axis" in _classes(element):
            label = element.get("aria-label", "")
            low = LOG_AXIS.search(label)
            if NOT_FINITE_VALUE.search(label):
                problems.append(f"an axis with a NaN or infinite scale: {label!r}")
            elif low and float(low.group(1).replace("−", "-").replace(",", "")) <= 0:
                problems.append(f"a log scale whose domain reaches {low.group(1)} (log of it is not finite): {label!r}")
    for group in groups:
        bad = [item for item in group.items if NOT_FINITE_VALUE.search(item.get("aria-label", ""))]
        if bad:
            problems.append(f"{group.kind} marks {group.name!r}: {len(bad)} of {len(group.items)} with a NaN or "
                            f"infinite value, e.g. {_describe(bad[0])}")
    return problems


def is_placeholder(svg_text: str) -> bool:
    """Is this a placeholder chart: only text data marks and no axes (a message instead of data)?"""
    root = ET.fromstring(svg_text)
    items = [(g.kind, item) for g in mark_groups(root) for item in g.items]
    axes = any(c.startswith("role-axis") for e in root.iter() for c in _classes(e))
    return bool(items) and all(kind == "text" for kind, _ in items) and not axes


def mark_problems(svg_text: str, allow_placeholder: bool = True) -> list[str]:
    """What is wrong with the data marks of a vl-convert SVG (empty list: every data mark is drawn)."""
    try:
        root = ET.fromstring(svg_text)
    except ET.ParseError as exc:
        return [f"not an SVG document: {exc}"]
    if _local(root.tag) != "svg":
        return [f"not an SVG document: the root element is <{_local(root.tag)}>"]
    groups = mark_groups(root)
    problems = _not_finite_problems(root, groups)
    if not any(group.items for group in groups):
        return problems + ["no data marks: the chart draws no data (empty or no role-mark groups)"]
    for group in groups:
        blank = [item for item in group.items if is_blank(group.kind, item) and not explained(group.kind, item)]
        if blank:
            problems.append(f"{group.kind} marks {group.name!r}: {len(blank)} of {len(group.items)} drawn with zero "
                            f"extent, e.g. {_describe(blank[0])}")
    if not allow_placeholder and is_placeholder(svg_text):
        problems.append("a placeholder: the chart shows only a text message, no data")
    return problems


def chart_svg(chart: Any) -> str:
    """The SVG text the book shows for an Altair chart (what `report.glue_chart` glues)."""
    from .report import svg

    return svg(chart).data


def check_chart(chart: Any, allow_placeholder: bool = True) -> list[str]:
    """Render an Altair chart with vl-convert and return the problems of its data marks (`mark_problems`)."""
    return mark_problems(chart_svg(chart), allow_placeholder)
