"""Fixed-width text tables for the console, dry-runs and text artifacts (one implementation)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

__all__ = ["table"]


def table(rows: Sequence[Sequence[str]], *, align: Literal["left", "right"] = "left") -> list[str]:
    """The lines of a table whose first row is the header, columns two spaces apart, each as wide as
    its widest cell.

    ``left``: cells left-aligned and the last column not padded (it may hold free text such as a
    reason; no trailing spaces). ``right``: every cell right-aligned (numbers line up).
    """
    if not rows:
        return []
    columns = max(len(r) for r in rows)
    cells = [[str(c) for c in r] + [""] * (columns - len(r)) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(columns)]
    if align == "right":
        return ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return ["  ".join([*(c.ljust(w) for c, w in zip(r[:-1], widths)), r[-1]]).rstrip() for r in cells]
