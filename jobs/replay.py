"""Send to MLflow what a run kept because MLflow failed while it trained (a rotated password, a server down).

    python -m jobs.replay <run.storage_path>/<run.name> [--tracking-uri URI]

Training never stops for its tracker: rank 0 keeps what MLflow refuses and, if MLflow still fails when training
ends, writes it to <run folder>/mlflow-spool/ (as does the driver with the run's verdict). This sends it, in
order, with the MLflow account in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD: metrics (never a step the
run already holds), tags, texts, artifacts, then the verdict (finished, stopped, failed), and removes the spool.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from yxanul.cli import run_job


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_folder", metavar="RUN_FOLDER", help="<run.storage_path>/<run.name> (a path or a URI)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: the one the run used, recorded in the spool)")
    args = parser.parse_args(argv)

    from yxanul.console import say
    from yxanul.files import absolute_path
    from yxanul.tracking import replay_spool, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri) if args.tracking_uri else None
    total = replay_spool(absolute_path(args.run_folder), uri, say=say)
    say(f"done: {total} record(s) sent")
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
