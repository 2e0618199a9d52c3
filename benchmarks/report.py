"""Render benchmark rows as aligned text or Markdown tables."""

from __future__ import annotations

from typing import Any, Sequence


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], markdown: bool = False) -> str:
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines)
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
