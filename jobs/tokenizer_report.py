"""Compare tokenizers per validation domain: chars/token, bytes/token, MB/s per core, round trip.

    python -m jobs.tokenizer_report experiments/runs/tokenizer-report.yaml
    python -m jobs.tokenizer_report --tokenizers outputs/tokenizer/bpe-16k,outputs/tokenizer/superbpe-16k-t13107 \
        --out outputs/reports/tokenizers

Tokenizers: tokenizer.path plus tokenizer.compare (or --tokenizers a,b,c). Domains: the held-out
slice of data.sources (english from builtin:wiki-en, code from builtin:python-code) plus
data.validation_sources (code: builtin:humaneval, math: builtin:gsm8k-test). Writes
tokenizer_report.csv/.md; logs them to MLflow when tracking.uri or $MLFLOW_TRACKING_URI is set.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from yxanul.cli import job_parser, run_job


def main(argv: Sequence[str] | None = None) -> int:
    parser = job_parser(__doc__.splitlines()[0], config_required=False)
    parser.add_argument("--tokenizers", default=None,
                        help="comma-separated tokenizer.json paths, folders or hub ids (default: tokenizer.path "
                             "and tokenizer.compare)")
    parser.add_argument("--out", default="outputs/reports/tokenizers", help="folder for the CSV and Markdown")
    parser.add_argument("--repeats", type=int, default=3, help="timed encodes per measurement (best counts)")
    args = parser.parse_intermixed_args(argv)

    from yxanul.config import load_config

    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not os.path.exists(config):  # CONFIG is optional: k=v came first
        config, overrides = None, [config, *overrides]
    cfg = load_config(config, overrides)
    specs = ([s.strip() for s in args.tokenizers.split(",") if s.strip()] if args.tokenizers
             else [cfg.tokenizer.path, *cfg.tokenizer.compare])
    plan = (f"plan: measure {len(specs)} tokenizer(s) [{', '.join(specs)}] on up to "
            f"{cfg.tokenizer.report_bytes_per_domain / 1e6:.1f} MB per validation domain -> {args.out}")
    if args.dry_run:
        print(cfg.to_yaml())
        print(plan)
        return 0
    print(plan, flush=True)

    from yxanul.tokenizer import compare_tokenizers, format_markdown, load_tokenizer, validation_texts, write_report

    for spec in specs:  # fail before the (slow) text preparation when a tokenizer is missing
        load_tokenizer(spec)
    domains = validation_texts(cfg.data, cfg.tokenizer.report_bytes_per_domain)
    for domain, texts in domains.items():
        print(f"domain {domain}: {len(texts)} documents, {sum(len(t.encode()) for t in texts) / 1e6:.2f} MB",
              flush=True)
    rows = compare_tokenizers(specs, domains, repeats=args.repeats, log=lambda line: print(line, flush=True))
    files = write_report(rows, args.out)
    print(format_markdown(rows))
    print("wrote " + ", ".join(str(f) for f in files))

    if cfg.tracking.enabled and (cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")):
        _log_to_mlflow(cfg, specs, rows, files)
    return 0


def _log_to_mlflow(cfg, specs, rows, files) -> None:
    from yxanul.tags import JOB_TAG
    from yxanul.tracking import MLflowTracker, Status, connect, end_run, resolve_tracking_uri

    uri = resolve_tracking_uri(cfg.tracking.uri)
    experiment_id = connect(uri, cfg.tracking.experiment)
    params = {"tokenizers": ",".join(specs), "domains": ",".join(sorted({r["domain"] for r in rows})),
              "report_bytes_per_domain": str(cfg.tokenizer.report_bytes_per_domain)}
    tracker = MLflowTracker.create(uri, experiment_id, "tokenizer-report",
                                   tags={JOB_TAG: "tokenizer_report"}, params=params)
    metrics = {f"tok/{r['tokenizer']}/{r['domain']}/{key}": float(r[key]) for r in rows
               for key in ("chars_per_token", "bytes_per_token", "encode_mb_per_cpu_s", "round_trip_failures")}
    metrics.update({f"tok/{r['tokenizer']}/vocab_size": float(r["vocab_size"]) for r in rows})
    tracker.log_metrics(metrics, step=0)
    for path in files:
        tracker.log_artifact(path, "tokenizer_report")
    end_run(uri, tracker.run_id, Status.FINISHED)
    print(f"logged to MLflow run {tracker.run_id} at {uri} (experiment {cfg.tracking.experiment})")


if __name__ == "__main__":
    sys.exit(run_job(main))
