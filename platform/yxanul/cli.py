"""The shared command-line contract of every job.

``python -m jobs.<name> CONFIG [dotted.key=value ...] [--dry-run]``: exit 0 on success; on bad
input or bad config, one readable ``error: ...`` line on stderr (no traceback) and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from yxanul.errors import YxanulError


def job_parser(description: str, config_required: bool = True) -> argparse.ArgumentParser:
    """Parser with the positional CONFIG, the dotted overrides and --dry-run."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("config", nargs=None if config_required else "?", metavar="CONFIG",
                        help="YAML config file (see experiments/)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides, e.g. train.max_tokens=2e6 precision.mode=bf16")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and the plan, then exit")
    return parser


def run_job(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)``; turn a :class:`YxanulError` into one line on stderr and exit code 2."""
    try:
        result = main(argv)
    except YxanulError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
