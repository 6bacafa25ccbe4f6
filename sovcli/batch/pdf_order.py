"""Reading order for pages in columns: PDFium gives text in the order the page draws it.

Most producers draw in reading order, and PDFium's text is kept as it is. But a page laid
out in columns may draw the right column first (or interleave them); then the text would
read across the gutter. Whether a page has columns is told from its text rectangles
(PDFium's runs of characters on one line) by a recursive XY cut: a region is split at a
vertical gutter (a gap of at least `GUTTER` points that no rectangle crosses, with at least
`MIN_SIDE` lines on each side) into left then right, else at its widest horizontal gap into
top then bottom. A page without a gutter keeps PDFium's own text, spacing and all. A page
with one is cut into runs of PDFium's own characters (a line, up to a gutter-wide gap),
which the same XY cut orders: no character is lost or cut.
"""

from __future__ import annotations

import itertools
from typing import Any

GUTTER = 12.0  # points: a gap between columns at least this wide
MIN_SIDE = 2  # lines on each side of a gutter (a lone page number is not a column)
MAX_RECTS = 3000  # a page with more text rectangles keeps PDFium's order
LINE_TOLERANCE = 2.0  # points: the smallest line height taken for a line

Rect = tuple[float, float, float, float]  # left, bottom, right, top


def column_text(textpage: Any) -> str | None:
    """The page's text in column order, or None when the page has no columns."""
    count = textpage.count_rects()
    if not 2 * MIN_SIDE <= count <= MAX_RECTS:
        return None
    rects = [tuple(textpage.get_rect(i)) for i in range(count)]
    _groups, columns = _cut(list(range(count)), rects)
    if not columns:
        return None
    text = textpage.get_text_range()  # one character per character index
    runs = _runs(textpage, text)
    boxes = [box for _start, _end, box in runs]
    groups, _ = _cut(list(range(len(runs))), boxes)
    blocks = []
    for group in groups:
        lines: list[list[int]] = []
        for i in sorted(group, key=lambda i: (-_middle(boxes[i]), boxes[i][0])):
            if lines and _same_line(boxes[lines[-1][0]], boxes[i]):
                lines[-1].append(i)
            else:
                lines.append([i])
        blocks.append(
            "\n".join(
                " ".join(_run_text(text, runs[i]) for i in sorted(line, key=lambda i: boxes[i][0]))
                for line in lines
            )
        )
    return "\n".join(blocks)


def _runs(textpage: Any, text: str) -> list[tuple[int, int, Rect]]:
    """Runs of characters on one line with no gutter-wide gap: (start, end, box).

    Exact: each run is a range of PDFium's character indices, so no character is lost or
    cut the way reading a rectangle's area would.
    """
    runs: list[tuple[int, int, Rect]] = []
    start, box = -1, None
    for index, char in enumerate(text):
        if char in "\r\n":
            if box is not None:
                runs.append((start, index, box))
            start, box = -1, None
            continue
        left, bottom, right, top = textpage.get_charbox(index)
        if right <= left and top <= bottom:  # a generated space: no box of its own
            continue
        glyph = (left, bottom, right, top)
        if box is not None and not _continues(box, glyph):
            runs.append((start, index, box))
            start, box = -1, None
        if box is None:
            start, box = index, glyph
        else:
            box = (min(box[0], left), min(box[1], bottom), max(box[2], right), max(box[3], top))
    if box is not None:
        runs.append((start, len(text), box))
    return runs


def _continues(run: Rect, glyph: Rect) -> bool:
    """Whether a glyph goes on the run: next along the same line, before any gutter.

    A glyph that touches the run's end continues it even off its height ("_", "2" in x2),
    and so do the letters of a ligature, which share one box.
    """
    gap = glyph[0] - run[2]
    if gap >= GUTTER:
        return False
    if gap < -LINE_TOLERANCE:  # back over the run: the same glyph again (a ligature's
        return glyph[0] >= run[0] and _same_line(run, glyph)  # letters), else a new line
    return _same_line(run, glyph) or abs(gap) <= 1.5


def _middle(box: Rect) -> float:
    return (box[1] + box[3]) / 2


def _same_line(a: Rect, b: Rect) -> bool:
    """Whether two boxes share a line: their vertical extents overlap by half the smaller."""
    overlap = min(a[3], b[3]) - max(a[1], b[1])
    return overlap >= 0.5 * min(a[3] - a[1], b[3] - b[1], LINE_TOLERANCE * 4)


def _run_text(text: str, run: tuple[int, int, Rect]) -> str:
    return " ".join(text[run[0] : run[1]].split())


def _cut(indices: list[int], rects: list[Rect]) -> tuple[list[list[int]], bool]:
    """Ordered groups of rectangles, and whether a vertical gutter split any region."""
    groups: list[list[int]] = []
    columns = False
    stack = [indices]
    while stack:  # depth-first, so that groups come out in reading order
        region = stack.pop()
        halves = _vertical(region, rects)
        if halves is not None:
            columns = True
        else:
            halves = _horizontal(region, rects)
        if halves is None:
            groups.append(region)
        else:
            stack.extend(reversed(halves))
    return groups, columns


def _vertical(region: list[int], rects: list[Rect]) -> list[list[int]] | None:
    """Left and right of the widest gutter no rectangle crosses, or None."""
    ordered = sorted(region, key=lambda i: rects[i][0])
    best, best_gap, reach = None, GUTTER, float("-inf")
    for k, i in enumerate(ordered):
        gap = rects[i][0] - reach
        if (
            k
            and gap >= best_gap
            and min(_lines(ordered[:k], rects), _lines(ordered[k:], rects)) >= MIN_SIDE
        ):
            best, best_gap = k, gap
        reach = max(reach, rects[i][2])
    return None if best is None else [ordered[:best], ordered[best:]]


def _lines(region: list[int], rects: list[Rect]) -> int:
    """How many distinct lines (tops) the rectangles are on."""
    tops = sorted(rects[i][3] for i in region)
    return 1 + sum(1 for a, b in itertools.pairwise(tops) if b - a > LINE_TOLERANCE)


def _horizontal(region: list[int], rects: list[Rect]) -> list[list[int]] | None:
    """Above and below the widest horizontal gap, or None (one line)."""
    ordered = sorted(region, key=lambda i: -rects[i][3])
    best, best_gap, low = None, 0.0, float("inf")
    for k, i in enumerate(ordered):
        if k and low - rects[i][3] > best_gap:
            best, best_gap = k, low - rects[i][3]
        low = min(low, rects[i][1])
    return None if best is None else [ordered[:best], ordered[best:]]
