"""How numbers and durations read, in one place: plans, consoles and the comparison report all call these.

Fixed decimals per quantity, so that a column of one quantity lines up and two reports compare by eye:
bits/byte 4 decimals (``3.0169``), differences signed (``+0.0038``, ``-0.0424``), ratios 3 decimals with an
``x`` (``0.830x``), seconds 1 decimal (``27.7 s``, ``1,234.5 s``), shares as percent with 1 decimal
(``40.8%``). Counts are human (``10.5M``, ``655k``), never ``1.04858e+07`` or ``10485760``. Text never uses
exponent notation. Paths in text meant to be committed are shown relative to the current folder, or by their
last two parts (:func:`shown_paths`).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

__all__ = ["bpb", "clock", "count_or_blank", "gib", "human_count", "parse_timestamp", "percent", "ratio", "seconds",
           "shown_paths", "signed", "timestamp"]

_UNITS = (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3))


def human_count(n: float) -> str:
    """``12_345_678 -> '12.3M'``, ``2_621_440 -> '2.62M'``, ``20_971_520 -> '21M'``, ``655_360 -> '655k'``,
    ``512 -> '512'``: 3 significant digits, trailing zeros dropped, no exponent."""
    if n == 0 or not math.isfinite(n):
        return str(n)
    for unit, scale in _UNITS:
        # compare after rounding to 3 significant digits: 999_999 reads '1M', not '1e+03k'
        if abs(float(f"{n:.3g}")) >= scale:
            return f"{_three_digits(n / scale)}{unit}"
    return _three_digits(n)


def _three_digits(v: float) -> str:
    """3 significant digits in fixed notation, trailing zeros (and a trailing point) dropped."""
    rounded = float(f"{v:.3g}")
    decimals = max(0, 2 - math.floor(math.log10(abs(rounded)))) if rounded else 0
    text = f"{rounded:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def count_or_blank(n: float | None) -> str:
    """:func:`human_count`, or '' for a missing value (table cells)."""
    return "" if n is None or not math.isfinite(n) else human_count(n)


def seconds(s: float | None) -> str:
    """The report's one time format: seconds with 1 decimal (``56.4 s``, ``74.0 s``, ``1,234.5 s``)."""
    return "" if s is None or not math.isfinite(s) else f"{s:,.1f} s"


def clock(s: float) -> str:
    """A compact duration for progress lines and ETAs: ``4m05s``, ``1h02m`` (``?`` when unknown)."""
    if not math.isfinite(s):
        return "?"
    whole = int(s)
    hours, rest = divmod(whole, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


_TIMESTAMP = "%Y-%m-%dT%H:%M:%SZ"


def timestamp(t: float) -> str:
    """A moment in UTC, to the second (``2026-12-05T10:31:07Z``): tags that record when something happened."""
    import time

    return time.strftime(_TIMESTAMP, time.gmtime(t))


def parse_timestamp(text: str | None) -> float | None:
    """The seconds since the epoch of a :func:`timestamp`; None when absent or unreadable."""
    import calendar
    import time

    if not text:
        return None
    try:
        return float(calendar.timegm(time.strptime(text, _TIMESTAMP)))
    except ValueError:
        return None


def bpb(v: float | None) -> str:
    """Bits per byte: 4 decimals (``3.0169``)."""
    return "" if v is None or not math.isfinite(v) else f"{v:.4f}"


def signed(v: float | None, decimals: int = 4) -> str:
    """A difference: always signed, fixed decimals (``+0.0038``, ``-0.0424``; a rounded zero reads ``+0.0000``)."""
    if v is None or not math.isfinite(v):
        return ""
    text = f"{v:+.{decimals}f}"
    return "+" + text[1:] if text.startswith("-") and float(text) == 0 else text


def ratio(v: float | None) -> str:
    """A ratio: 3 decimals and an ``x`` (``0.830x``)."""
    return "" if v is None or not math.isfinite(v) else f"{v:.3f}x"


def percent(share: float | None) -> str:
    """A share (0..1) as a percent with 1 decimal (``40.8%``)."""
    return "" if share is None or not math.isfinite(share) else f"{100 * share:.1f}%"


def gib(v: float | None) -> str:
    """Memory in GiB, 1 decimal (``47.6 GiB``)."""
    return "" if v is None or not math.isfinite(v) else f"{v:.1f} GiB"


_ABSOLUTE = re.compile(r"(sqlite:///|file://)?(/[^\s'\",\]);]+)")


def _short_path(path: str) -> str:
    """A path under the current folder relative to it; another machine-local path as ``.../<last two parts>``."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        parts = Path(path).parts[1:]  # without the root
        return ".../" + "/".join(parts[-2:]) if parts else path


def shown_paths(text: str) -> str:
    """``text`` with its absolute paths (bare, ``key=/path``, ``sqlite:////path``, ``file:///path``) relative to
    the current folder, or shortened to their last two parts: a committed report names no machine's paths."""
    def sub(m: re.Match) -> str:
        prefix, path = m.group(1) or "", m.group(2)
        before = text[m.start() - 1] if m.start() else " "
        if not prefix and before not in " =[\"'(,":
            return m.group(0)  # part of a relative path or a URL
        return prefix + _short_path(path)

    return _ABSOLUTE.sub(sub, text)
