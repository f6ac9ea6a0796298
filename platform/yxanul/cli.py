"""The shared command-line contract of every job.

``python -m jobs.<name> CONFIG [dotted.key=value ...] [--dry-run]``: exit 0 on success; on bad
input or bad config, one readable ``error: ...`` line on stderr (no traceback) and exit 2; a training worker that
fails on something that is not the user's input (a bug, a driver error) is one ``error: ...`` line too, with exit
1 (yxanul.errors.WorkerFailedError). Options and
overrides mix in any order (``CONFIG --dry-run key=value``): jobs parse with argparse's
``parse_intermixed_args``, because plain ``parse_args`` ends the ``KEY=VALUE`` list at the first option.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from yxanul.errors import YxanulError
from yxanul.interrupt import Interrupted


def job_parser(description: str, config_required: bool = True, verbose: bool = False) -> argparse.ArgumentParser:
    """Parser with the positional CONFIG, the dotted overrides and --dry-run (and --verbose for the jobs
    that run Ray Train or Tune: their console shows one line per event unless it is given). Parse with
    ``parse_intermixed_args`` so that options may come between the overrides."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("config", nargs=None if config_required else "?", metavar="CONFIG",
                        help="YAML config file (see experiments/)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides, e.g. train.max_tokens=2e6 precision.mode=bf16")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and the plan, then exit")
    if verbose:
        add_verbose(parser)
    return parser


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's and Tune's own output here too (by default it goes to the job's log file)")


def run_job(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)``; turn a :class:`YxanulError` (or Ray refusing this client's token) into one line on
    stderr and the error's exit code (2, or 1 for a failed training worker).

    Ray's token authentication is on unless the user opted out explicitly (``RAY_AUTH_MODE=disabled``): the
    job's own local Ray and its connection to a cluster (``$RAY_ADDRESS``) both use it, so a job behaves the
    same on a laptop, under ``ray job submit`` and in the tests (docs/cluster.md, Security model)."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        result = main(argv)
    except YxanulError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        refused = _ray_auth_refusal(exc)
        if refused is None:
            raise
        print(f"error: {refused}", file=sys.stderr)
        return 2
    except Interrupted as exc:  # a job that handles SIGINT/SIGTERM (yxanul.interrupt): its one line
        print(exc.message, file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


def _ray_auth_refusal(exc: BaseException) -> str | None:
    """The one-line message for Ray's ``AuthenticationError`` (no token, or not the cluster's), else None."""
    if "ray" not in sys.modules:  # a job that never imported Ray cannot have raised Ray's error
        return None
    from ray.exceptions import AuthenticationError

    if not isinstance(exc, AuthenticationError):
        return None
    lines = str(exc.message).strip().splitlines()
    what = lines[0].split(". ")[0].rstrip(".") if lines else "authentication failed"
    return (f"Ray refused this client: {what}; give it the cluster's token (RAY_AUTH_TOKEN_PATH=<file>, "
            f"RAY_AUTH_TOKEN, or ~/.ray/auth_token) with RAY_AUTH_MODE=token (docs/cluster.md, Security model)")
