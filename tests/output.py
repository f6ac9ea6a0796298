"""Reading what an in-process job printed, without the lines Ray forwards from its workers.

Tests that call a job's ``main`` in-process share the session's Ray with earlier tests, and Ray
forwards worker and actor logs (``(Name pid=123) ...``) to the driver's stderr whenever they arrive,
including late ones from a finished Ray Train run's cleaner actor. Those lines are Ray's, not the
job's, so assertions about the job's own output ignore them.
"""

from __future__ import annotations

import re

_RAY_FORWARDED = re.compile(r"^(\x1b\[[0-9;]*m)*\([^()]* pid=\d+[^()]*\)")


def own_lines(text: str) -> list[str]:
    """Non-blank lines of ``text`` that are not Ray's forwarded worker logs."""
    return [line for line in text.splitlines() if line.strip() and not _RAY_FORWARDED.match(line)]
