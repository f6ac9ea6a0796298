"""The science setup's calibration: read the BF16 calibration runs from MLflow, pick the learning rate, and hold
the chosen setup against the criteria of docs/results/calibration/README.md.

    python scripts/calibration.py choose --tracking-uri URI             # prints the best learning rate
    python scripts/calibration.py collect --tracking-uri URI --out DIR  # DIR/runs.jsonl + DIR/criteria.json
    python scripts/calibration.py gaps --tracking-uri URI               # how each rate's seeds part, batch by batch
    ... --experiment NAME                                                # another MLflow experiment (default
                                                                         # science-calibration)

A run's row: learning rate, seed, final val/bpb (and per domain), the unigram baseline it was measured
against, the largest interval grad norm after the spike check began, the spike check's verdict, tokens/s,
compile and wall seconds, epochs of the training split, the card. ``choose`` takes, among the rates measured at
3+ seeds with no spike, the lowest mean final val/bpb of those whose seed sd meets criterion (b) (of all of them,
with a warning, where none does); with no such rate, the rate with the lowest final val/bpb among finished runs
of seed 0 with no spike (among all finished seed-0 runs, with a warning, where every one spiked). One seed ranks
rates poorly where the seed sd is as large as their gaps (round 5: 0.045 bpb at 2e-3, chosen on seed 0 alone).
``collect`` writes ``by_rate`` into criteria.json too: each rate's seeds, mean, sd and spikes, and, where its seeds
trained on one data order (``data.order_seed`` set), the sd of their training loss on the same last batches.

``gaps``: where seeds share a data order, their training losses are on the same batches, so their differences are
the models' alone, without batch noise: per rate, each seed's loss minus the first seed's, averaged over windows of
logged steps, from the first window to the last. How the seeds of calibration rounds 5 and 6 drifted apart was
read this way (docs/results/calibration/README.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from yxanul.tags import GIT_SHA_TAG, GPU_NAME_TAG, ROLE_TAG, SPIKE_CHECK_TAG, SPIKES_TAG, STATUS_TAG, SWEEP_TAG

EXPERIMENT = "science-calibration"


def _runs(uri: str, name: str = EXPERIMENT) -> list[dict]:
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise SystemExit(f"error: no MLflow experiment {name!r} at {uri}")
    rows = []
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        if tags.get(ROLE_TAG) == "parent" or "optim.lr" not in params:
            continue

        def series(key: str) -> list[tuple[int, float]]:
            return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))

        val = series("val/bpb")
        loss = series("train/loss")
        grad = series("train/grad_norm_max")
        rates = [v for _, v in series("train/tokens_per_s")]
        manifest_tokens = None
        try:
            path = client.download_artifacts(run.info.run_id, "data_manifest.json")
            manifest_tokens = json.loads(Path(path).read_text())["train"]["tokens"]
        except Exception:  # an artifact store that is gone: the row says so by a null
            pass
        tokens = val[-1][0] if val else None
        start_tokens = max(int(params.get("optim.warmup_tokens", 0)), int(0.05 * int(params["train.max_tokens"])))
        rows.append({
            "experiment": name, "run_id": run.info.run_id, "status": tags.get(STATUS_TAG, run.info.status),
            "sweep": tags.get(SWEEP_TAG), "lr": float(params["optim.lr"]), "seed": int(params["run.seed"]),
            "tokens": tokens, "max_tokens": int(params["train.max_tokens"]),
            "final_val_bpb": val[-1][1] if val else None,
            "final_val_bpb_by_domain": {k.split("/")[1]: v for k, v in metrics.items()
                                        if k.startswith("val/") and k.endswith("/bpb") and k != "val/bpb"},
            "unigram_bpb": metrics.get("val/unigram_bpb"),
            "val_bpb_curve": val,
            "train_loss_curve": loss,
            "order_seed": _order_seed(params.get("data.order_seed")),
            "max_grad_norm_after_check_start": max((v for t, v in grad if t >= start_tokens), default=None),
            "spike_check": tags.get(SPIKE_CHECK_TAG), "spikes": tags.get(SPIKES_TAG, ""),
            "tokens_per_s_median": statistics.median(rates) if rates else None,
            "compile_s": metrics.get("train/compile_s"), "train_s": metrics.get("train/elapsed_s"),
            "wall_s": (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else None,
            "training_split_tokens": manifest_tokens,
            "epochs": tokens / manifest_tokens if tokens and manifest_tokens else None,
            "sources": json.loads(params.get("data.sources", "[]")),
            "gpu": tags.get(GPU_NAME_TAG), "git_sha": tags.get(GIT_SHA_TAG),
        })
    return sorted(rows, key=lambda r: (r["lr"], r["seed"]))


def _order_seed(param: str | None) -> int | None:
    """The run's ``data.order_seed`` param (None: unset, so the order followed the run's seed)."""
    return None if param in (None, "None", "null") else int(param)


def _finished(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["status"] == "finished" and r["final_val_bpb"] is not None]


def _finished_by_rate(rows: list[dict]) -> list[tuple[float, list[dict]]]:
    """The finished runs grouped by learning rate, ascending; each group by seed."""
    rates: dict[float, list[dict]] = {}
    for row in _finished(rows):
        rates.setdefault(row["lr"], []).append(row)
    return [(lr, sorted(runs, key=lambda r: r["seed"])) for lr, runs in sorted(rates.items())]


SEED_SD_MAX = 0.01
"""Criterion (b): the seed standard deviation of final val/bpb, in bpb."""


def by_rate(rows: list[dict]) -> list[dict]:
    """Per learning rate (ascending), its finished runs: seeds, mean and sample sd of final val/bpb (sd None
    under 2 seeds), and whether any spiked."""
    out = []
    for lr, runs in _finished_by_rate(rows):
        finals = [r["final_val_bpb"] for r in runs]
        out.append({"lr": lr, "seeds": sorted(r["seed"] for r in runs), "mean": statistics.fmean(finals),
                    "sd": statistics.stdev(finals) if len(finals) > 1 else None,
                    "spiked": any(r["spikes"] for r in runs), "train_loss_sd_end": _same_batch_sd(runs)})
    return out


SAME_BATCH_WINDOW = 16
"""Logged steps whose training losses are averaged into one point of the same-batch comparisons."""


def _shared_steps(runs: list[dict]) -> list[int] | None:
    """The logged steps every run has a training loss at, when the runs share one data order (else None: their
    losses are on different batches)."""
    orders = {r.get("order_seed") for r in runs}
    if len(runs) < 2 or len(orders) != 1 or None in orders or not all(r.get("train_loss_curve") for r in runs):
        return None
    return sorted(set.intersection(*({step for step, _ in r["train_loss_curve"]} for r in runs)))


def _mean_loss(run: dict, steps: list[int]) -> float:
    """The run's mean training loss over ``steps`` (logged steps it has)."""
    values = dict(run["train_loss_curve"])
    return statistics.fmean(values[s] for s in steps)


def _same_batch_sd(runs: list[dict]) -> float | None:
    """Sample sd across seeds of the training loss (nats) over the last logged steps they share, on one data
    order; None otherwise."""
    steps = _shared_steps(runs)
    if not steps:
        return None
    last = steps[-SAME_BATCH_WINDOW:]
    return statistics.stdev(_mean_loss(r, last) for r in runs)


def gaps(rows: list[dict], window: int = SAME_BATCH_WINDOW) -> str:
    """Per rate whose finished seeds share a data order: at the end of each window of ``window`` shared logged
    steps, the first seed's mean training loss and every other seed's difference to it (nats)."""
    lines = []
    for lr, runs in _finished_by_rate(rows):
        steps = _shared_steps(runs)
        if not steps:
            lines.append(f"lr {lr:g}: seeds {[r['seed'] for r in runs]} do not share a data order (or a loss "
                         "curve): no same-batch comparison")
            continue
        first = runs[0]
        lines.append(f"lr {lr:g}: training loss of seed {first['seed']} and each seed's difference to it, mean of "
                     f"{window} logged steps (one data order, so the same batches)")
        for end in range(window, len(steps) + 1, window):
            part = steps[end - window:end]
            base = _mean_loss(first, part)
            diffs = "  ".join(f"s{r['seed']} {_mean_loss(r, part) - base:+.3f}" for r in runs[1:])
            lines.append(f"  to {part[-1] / 1e6:7.2f}M tokens: s{first['seed']} {base:.3f}  {diffs}")
        sd = _same_batch_sd(runs)
        lines.append(f"  sd across seeds over the last {min(window, len(steps))} shared steps: {sd:.4f} nats")
    return "\n".join(lines)


def choose(rows: list[dict]) -> float:
    """The rate to hold against the criteria. Rates measured at 3+ seeds without a spike come first: the lowest
    mean final val/bpb among those whose seed sd meets (b), or, with a warning, among all of them. Without such a
    rate, the rate of the best finished seed-0 run without a spike; where every seed-0 run spiked, the best of
    them, with a warning (criterion c then fails in ``collect``, which must still report a-e)."""
    replicated = [r for r in by_rate(rows) if len(r["seeds"]) >= 3 and not r["spiked"]]
    if replicated:
        steady = [r for r in replicated if r["sd"] <= SEED_SD_MAX]
        if not steady:
            sds = "; ".join(f"lr {r['lr']:g}: {r['sd']:.4f}" for r in replicated)
            print(f"warning: no rate measured at 3+ seeds has a seed sd <= {SEED_SD_MAX} bpb ({sds}); choosing by "
                  "the mean among them", file=sys.stderr)
        return min(steady or replicated, key=lambda r: r["mean"])["lr"]
    finished = [r for r in _finished(rows) if r["seed"] == 0]
    if not finished:
        raise SystemExit("error: no finished seed-0 calibration run")
    candidates = [r for r in finished if not r["spikes"]]
    if not candidates:
        spiked = "; ".join(f"lr {r['lr']:g}: {r['spikes']}" for r in finished)
        print(f"warning: every finished seed-0 run has a spike ({spiked}); choosing among them", file=sys.stderr)
        candidates = finished
    return min(candidates, key=lambda r: r["final_val_bpb"])["lr"]


def criteria(rows: list[dict], lr: float, sweep_wall_s: float | None) -> dict:
    """(a)-(e) of the science setup for the runs at ``lr`` (docs/results/calibration/README.md)."""
    chosen = [r for r in _finished(rows) if r["lr"] == lr]
    finals = [r["final_val_bpb"] for r in chosen]
    ratio = [r["final_val_bpb"] / r["unigram_bpb"] for r in chosen if r["unigram_bpb"]]
    sd = statistics.stdev(finals) if len(finals) > 1 else None
    walls = [r["wall_s"] for r in chosen if r["wall_s"]]
    return {
        "lr": lr, "seeds": sorted(r["seed"] for r in chosen), "final_val_bpb": finals,
        "mean_final_val_bpb": statistics.fmean(finals) if finals else None,
        "a_max_ratio_to_unigram": max(ratio) if ratio else None, "a_ok": bool(ratio) and max(ratio) <= 0.6,
        "b_seed_sd_bpb": sd, "b_ok": sd is not None and len(finals) >= 3 and sd <= SEED_SD_MAX,
        "c_spikes": {r["seed"]: r["spikes"] or "none" for r in chosen},
        "c_spike_checks": {r["seed"]: r["spike_check"] for r in chosen},
        "c_ok": bool(chosen) and all(not r["spikes"] and (r["spike_check"] or "").startswith("checked")
                                      for r in chosen),
        "d_run_wall_s": walls, "d_sweep_wall_s_measured": sweep_wall_s,
        "d_projected_2x3_sweep_min": 2 * 3 * statistics.fmean(walls) / 60 if walls else None,
        "e_epochs": max((r["epochs"] for r in chosen if r["epochs"]), default=None),
        "e_ok": all(r["epochs"] is not None and r["epochs"] <= 1 for r in chosen) and bool(chosen),
        "by_rate": by_rate(rows),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["choose", "collect", "gaps"])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment", default=EXPERIMENT, help="MLflow experiment of the calibration runs")
    parser.add_argument("--out", type=Path, help="collect: folder for runs.jsonl and criteria.json")
    parser.add_argument("--lr", type=float, help="collect: the chosen rate (default: choose's)")
    parser.add_argument("--sweep-wall-s", type=float, help="collect: measured wall seconds of the seed sweep(s)")
    parser.add_argument("--split-tokens", type=int, help="collect: training-split tokens, where the runs' manifest "
                        "artifacts are not reachable from here (a store copied off the GPU machine)")
    args = parser.parse_intermixed_args(argv)
    rows = _runs(args.tracking_uri, args.experiment)
    for row in rows:
        if row["training_split_tokens"] is None and args.split_tokens:
            row["training_split_tokens"] = args.split_tokens
            row["epochs"] = row["tokens"] / args.split_tokens if row["tokens"] else None
    if args.command == "choose":
        print(choose(rows))
        return 0
    if args.command == "gaps":
        print(gaps(rows))
        return 0
    lr = args.lr if args.lr is not None else choose(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.experiment == EXPERIMENT else f"-{args.experiment}"
    (args.out / f"runs{suffix}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = criteria(rows, lr, args.sweep_wall_s)
    (args.out / f"criteria{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
