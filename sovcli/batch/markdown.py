"""Tables as Markdown, the form in which DOCX and PDF tables reach the prompt."""

from __future__ import annotations


def markdown_table(rows: list[list[str]]) -> str:
    """Rows of cells as a Markdown table (the first row is the header; short rows padded)."""
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        return ""
    width = max(len(row) for row in rows)
    lines = []
    for i, row in enumerate(rows):
        cells = [_md_cell(cell) for cell in row] + [""] * (width - len(row))
        lines.append("| " + " | ".join(cells) + " |")
        if i == 0:
            lines.append("|" + " --- |" * width)
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")
