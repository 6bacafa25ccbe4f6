"""Ruled tables on a PDF page, rebuilt as Markdown tables (PDFium's paths and text).

A table here is what a word processor draws: horizontal and vertical rules that cross.
The rules are the axis-aligned line segments of the page's path objects (lines, thin filled
rectangles, rectangles' edges), at least `MIN_RULE` points long. Rules that touch form a
grid; a grid of at least 2x2 cells is a table. Each cell's text is what PDFium finds inside
it; a missing rule between two cells of a row merges them. The page's text is then the text
above each table, the table as Markdown, the text beside it, and so on down the page.
Tables without rules (columns aligned by spaces only) are left as text.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from sovcli.batch.markdown import markdown_table

MIN_RULE = 8.0  # points: shorter segments are not rules
TOLERANCE = 2.0  # points: rules this close are one, ends this close touch
MAX_PATH_SEGMENTS = 20_000  # per page: a drawing, not a table, beyond this
_LINETO, _MOVETO = 0, 2


@dataclass(frozen=True)
class _Rule:
    horizontal: bool
    at: float  # y of a horizontal rule, x of a vertical one
    start: float
    end: float


@dataclass
class Table:
    """A table found on a page: its box (PDF points, y up) and its rows of cells."""

    left: float
    bottom: float
    right: float
    top: float
    rows: list[list[str]]


def find_tables(page: Any, textpage: Any) -> list[Table]:
    """The ruled tables of a page, top to bottom."""
    rules = _rules(page)
    if len(rules) < 4:
        return []
    tables = []
    for group in _connected(rules):
        table = _grid(group, textpage)
        if table is not None:
            tables.append(table)
    return sorted(tables, key=lambda t: -t.top)


def page_text_with_tables(page: Any, textpage: Any, tables: list[Table]) -> str:
    """The page's text with each table as Markdown in its place."""
    width, height = page.get_size()
    parts: list[str] = []
    above = height + 1
    for table in tables:
        parts.append(_text_in(textpage, 0, table.top, width, above))
        parts.append(f"\0\n{markdown_table(table.rows)}\n")  # \0: kept as is
        parts.append(_text_in(textpage, 0, table.bottom, table.left, table.top))
        parts.append(_text_in(textpage, table.right, table.bottom, width, table.top))
        above = table.bottom
    parts.append(_text_in(textpage, 0, -1, width, above))
    kept = [p[1:] if p.startswith("\0") else p.strip("\r\n") for p in parts if p.strip()]
    return "\n".join(part for part in kept if part.strip())


def _text_in(textpage: Any, left: float, bottom: float, right: float, top: float) -> str:
    if right - left < 1 or top - bottom < 1:
        return ""
    return str(textpage.get_text_bounded(left=left, bottom=bottom, right=right, top=top))


def _rules(page: Any) -> list[_Rule]:
    """The axis-aligned segments of the page's paths, at least MIN_RULE long."""
    import pypdfium2.raw as pdfium_c

    found: list[_Rule] = []
    budget = MAX_PATH_SEGMENTS
    matrix = pdfium_c.FS_MATRIX()
    for index in range(pdfium_c.FPDFPage_CountObjects(page.raw)):
        obj = pdfium_c.FPDFPage_GetObject(page.raw, index)
        if pdfium_c.FPDFPageObj_GetType(obj) != pdfium_c.FPDF_PAGEOBJ_PATH:
            continue
        count = pdfium_c.FPDFPath_CountSegments(obj)
        budget -= max(count, 0)
        if budget < 0:
            return []
        if not pdfium_c.FPDFPageObj_GetMatrix(obj, matrix):
            continue
        for (x0, y0), (x1, y1) in _points(obj, count, matrix, pdfium_c):
            if abs(y1 - y0) <= 0.5 and abs(x1 - x0) >= MIN_RULE:
                found.append(_Rule(True, (y0 + y1) / 2, min(x0, x1), max(x0, x1)))
            elif abs(x1 - x0) <= 0.5 and abs(y1 - y0) >= MIN_RULE:
                found.append(_Rule(False, (x0 + x1) / 2, min(y0, y1), max(y0, y1)))
    return found


def _points(raw: Any, count: int, matrix: Any, pdfium_c: Any) -> list[tuple[tuple, tuple]]:
    """The straight segments of a path, in page coordinates."""
    import ctypes

    segments = []
    start = previous = None
    x, y = ctypes.c_float(), ctypes.c_float()
    for i in range(count):
        segment = pdfium_c.FPDFPath_GetPathSegment(raw, i)
        if not segment or not pdfium_c.FPDFPathSegment_GetPoint(segment, x, y):
            continue
        point = (
            matrix.a * x.value + matrix.c * y.value + matrix.e,
            matrix.b * x.value + matrix.d * y.value + matrix.f,
        )
        kind = pdfium_c.FPDFPathSegment_GetType(segment)
        if kind == _MOVETO:
            start = point
        elif kind == _LINETO and previous is not None:
            segments.append((previous, point))
        previous = point
        if pdfium_c.FPDFPathSegment_GetClose(segment) and start is not None:
            segments.append((point, start))
            previous = start
    return segments


def _touch(h: _Rule, v: _Rule) -> bool:
    return (
        h.start - TOLERANCE <= v.at <= h.end + TOLERANCE
        and v.start - TOLERANCE <= h.at <= v.end + TOLERANCE
    )


def _connected(rules: list[_Rule]) -> list[list[_Rule]]:
    """Groups of rules that touch (union-find over horizontal-vertical crossings)."""
    parent = list(range(len(rules)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    horizontal = [i for i, r in enumerate(rules) if r.horizontal]
    vertical = [i for i, r in enumerate(rules) if not r.horizontal]
    for i in horizontal:
        for j in vertical:
            if _touch(rules[i], rules[j]):
                parent[root(i)] = root(j)
    groups: dict[int, list[_Rule]] = {}
    for i, rule in enumerate(rules):
        groups.setdefault(root(i), []).append(rule)
    return list(groups.values())


def _cluster(values: list[float]) -> list[float]:
    merged: list[float] = []
    for value in sorted(values):
        if not merged or value - merged[-1] > TOLERANCE:
            merged.append(value)
    return merged


def _grid(rules: list[_Rule], textpage: Any) -> Table | None:
    ys = _cluster([r.at for r in rules if r.horizontal])[::-1]  # top first
    xs = _cluster([r.at for r in rules if not r.horizontal])
    if (len(ys) < 3 and len(xs) < 3) or len(ys) < 2 or len(xs) < 2:
        return None  # fewer than 2 cells: a box, not a table
    verticals = [r for r in rules if not r.horizontal]
    rows = []
    for top, bottom in itertools.pairwise(ys):
        middle = (top + bottom) / 2
        row: list[str] = []
        left = xs[0]
        for x in xs[1:]:
            closed = x == xs[-1] or any(
                abs(v.at - x) <= TOLERANCE and v.start - TOLERANCE <= middle <= v.end + TOLERANCE
                for v in verticals
            )
            if closed:
                text = _text_in(textpage, left + 0.5, bottom + 0.5, x - 0.5, top - 0.5)
                row.append(" ".join(text.split()))
                row.extend([""] * (_span(xs, left, x) - 1))
                left = x
        rows.append(row)
    if not any(cell for row in rows for cell in row):
        return None
    return Table(xs[0], ys[-1], xs[-1], ys[0], rows)


def _span(xs: list[float], left: float, right: float) -> int:
    return sum(1 for a in xs if left <= a < right - TOLERANCE)
