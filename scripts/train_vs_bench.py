"""Train vs bench on one card: is the training job as fast as its own benchmark? (a benchmark, not a test)

    python scripts/train_vs_bench.py --data DIR --out DIR [--preset yxanul-270m] [--micro-batch 16] [--steps 40]

In one process tree on one card, at the same micro-batch (``--micro-batch`` x 2048 tokens, one micro-batch per
optimizer step): the Hugging Face Llama peer (compiled), ``jobs.bench`` in BF16 and FP8 (``fp8_layers: auto``),
then ``jobs.train`` (real Ray Train, 1 worker, MLflow SQLite store) in BF16 and FP8 auto, each for ``--steps``
optimizer steps after warm-up. The training job's rate is the median of its logged ``train/tokens_per_s_per_gpu``
windows (the first step, compilation, is never in a window). Writes, under ``--out``:

- ``train-vs-bench-<card>.jsonl``: one JSON object per row (card, runner, precision, fp8_layers, tokens_per_s per
  GPU, mfu_bf16, peak_gib, the FP8 plan each FP8 auto run measured, the job's attention kernels as its profiled
  step saw them, date, versions);
- ``train-vs-bench-<card>.md``: the table with the ratios the issue's targets are stated in.

``--data`` is a packed 2048-token dataset (scripts/gpu_check.sh prepares one).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def failure_line(text: str) -> str:
    """The job's own one-line ``error: ...`` (yxanul.cli), else the last line that says something: never a Ray log
    prefix, a traceback's caret markers or colour codes (yxanul.errors.clean_line)."""
    from yxanul.errors import clean_line

    lines = [clean_line(line) for line in text.splitlines()]
    errors = [line for line in lines if line.startswith("error: ")]
    if errors:
        return errors[-1].removeprefix("error: ")
    return next((line for line in reversed(lines) if line), "no output")


def bench_rows(preset: str, micro_batch: int, steps: int, peer: bool) -> list[dict]:
    from yxanul.bench import BenchConfig, run_bench

    cfg = BenchConfig(presets=[preset], precisions=["bf16", "fp8"], recipes=["delayed"], fp8_layer_sets=["auto"],
                      micro_batch=micro_batch, seq_len=2048, warmup_steps=5, steps=steps, peer=peer)
    rows = []
    for r in run_bench(cfg):
        rows.append({"preset": preset, "runner": "peer" if r.impl == "hf-peer" else "bench", "precision": r.precision,
                     "fp8_layers": r.fp8_layers, "tokens_per_s": r.tokens_per_s, "mfu_bf16": r.mfu_bf16,
                     "peak_gib": r.peak_mem_gib, "warmup_s": r.warmup_s, "error": r.error,
                     "fp8_plan": r.extra.get("fp8_plan")})
    return rows


def measured_plan(client: Any, run_id: str, scratch: Path) -> dict | None:
    """The timings of the FP8 plan the run measured (its ``fp8_plan.json`` artifact: group -> bf16/fp8 ms and MiB,
    ratio), as the bench rows carry theirs; None for a run without one (BF16, or FP8 with fixed layers)."""
    if not any(a.path == "fp8_plan.json" for a in client.list_artifacts(run_id)):
        return None
    scratch.mkdir(parents=True, exist_ok=True)
    path = client.download_artifacts(run_id, "fp8_plan.json", str(scratch))
    return json.loads(Path(path).read_text())["timings"]


def run_row(client: Any, run_id: str, plans: Path) -> dict:
    """What a finished jobs.train run measured, from its MLflow run: the median of its speed windows (the first one,
    which still warms the allocator up, left out), MFU, peak memory, compile seconds, the FP8 layers, whether it
    compiled, the attention kernels its profiled step ran, that step's device time by kind (``device_ms``: gemm,
    attention, cross_entropy, optimizer, other; None off a GPU), and the FP8 plan it measured (None where it had
    none)."""
    from yxanul.tags import ATTENTION_KERNELS_TAG, COMPILED_TAG, DEVICE_MS_METRIC_PREFIX, FP8_LAYERS_TAG

    data = client.get_run(run_id).data
    tags = data.tags
    device_ms = {key[len(DEVICE_MS_METRIC_PREFIX):]: round(value, 3) for key, value in sorted(data.metrics.items())
                 if key.startswith(DEVICE_MS_METRIC_PREFIX)}

    def values(key: str) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]

    rates = values("train/tokens_per_s_per_gpu")[1:]
    return {"fp8_layers": tags.get(FP8_LAYERS_TAG), "tokens_per_s": statistics.median(rates) if rates else None,
            "mfu_bf16": statistics.median(values("train/mfu_bf16")[1:] or [float("nan")]),
            "peak_gib": max(values("train/peak_mem_gib") or [float("nan")]),
            "compile_s": (values("train/compile_s") or [None])[-1], "windows": len(rates),
            "compiled": tags.get(COMPILED_TAG), "attention_kernels": tags.get(ATTENTION_KERNELS_TAG),
            "device_ms": device_ms or None, "run_id": run_id, "fp8_plan": measured_plan(client, run_id, plans / run_id)}


def train_row(preset: str, precision: str, micro_batch: int, steps: int, data: Path, out: Path) -> dict:
    from mlflow import MlflowClient

    tokens_per_step = micro_batch * 2048
    uri = f"sqlite:///{out / 'mlflow.db'}"
    name = f"tvb-{preset}-{precision}-{int(time.time())}"
    overrides = [
        f"run.name={name}", f"run.storage_path={out / 'ray'}", f"data.output_dir={data}", f"model.preset={preset}",
        "model.allow_unused_vocab=true",  # the presets' 200k head on the 8k benchmark data: a speed run
        f"precision.mode={precision}", "scaling.use_gpu=true", "scaling.num_workers=1", "scaling.cpus_per_worker=2",
        "curriculum.stages=[{seq_len: 2048}]", f"train.tokens_per_step={tokens_per_step}",
        f"train.max_tokens_per_microbatch={tokens_per_step}", f"train.max_tokens={(steps + 1) * tokens_per_step}",
        "optim.lr=3e-4", "optim.warmup_tokens=0", "eval.every_tokens=0", "eval.seq_len=2048",
        "eval.max_tokens_per_domain=16384", "log.every_steps=5", "checkpoint.every_tokens=0",
        f"tracking.uri={uri}", "tracking.experiment=train-vs-bench"]
    log = out / f"{name}.log"
    with log.open("w") as f:
        rc = subprocess.run([sys.executable, "-m", "jobs.train", str(ROOT / "experiments/runs/pulse.yaml"), *overrides],
                            cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    text = log.read_text()
    row = {"preset": preset, "runner": "train", "precision": precision, "log": log.name}
    match = re.search(r"MLflow run ([0-9a-f]{32})", text)
    if rc != 0 or not match:
        row["error"] = f"jobs.train exited {rc}: {failure_line(text)}"[:500]
        return row
    row.update(run_row(MlflowClient(uri), match.group(1), out / "plans"))
    return row


def table(rows: list[dict]) -> str:
    def get(preset: str, runner: str, precision: str) -> float | None:
        return next((r["tokens_per_s"] for r in rows if (r["preset"], r["runner"], r["precision"]) == (preset, runner,
                                                                                                      precision)
                     and r.get("tokens_per_s")), None)

    lines = ["| preset | runner | precision | fp8 layers | tokens/s per GPU | MFU bf16 | peak GiB | vs bench same precision "
             "| vs peer | vs own bf16 |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("error") or not r.get("tokens_per_s"):
            lines.append(f"| {r['preset']} | {r['runner']} | {r['precision']} | | error: {r.get('error')} | | | | | |")
            continue
        rate = r["tokens_per_s"]
        bench = get(r["preset"], "bench", r["precision"])
        peer = get(r["preset"], "peer", "bf16")
        own = get(r["preset"], r["runner"], "bf16")

        def ratio(base: float | None, show: bool = True) -> str:
            return f"{rate / base:.3f}" if base and show else "-"

        lines.append(f"| {r['preset']} | {r['runner']} | {r['precision']} | {r.get('fp8_layers') or '-'} | {rate:,.0f} | "
                     f"{100 * (r.get('mfu_bf16') or 0):.1f}% | {r.get('peak_gib') or 0:.1f} | "
                     f"{ratio(bench, r['runner'] == 'train')} | {ratio(peer, r['runner'] != 'peer')} | "
                     f"{ratio(own, r['precision'] != 'bf16' and r['runner'] != 'peer')} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", action="append", help="model preset (repeatable; default yxanul-270m)")
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--runners", default="peer,bench,train", help="comma list of peer, bench, train")
    args = parser.parse_args()
    import torch

    from yxanul.bench import environment

    args.out.mkdir(parents=True, exist_ok=True)
    env = environment()
    card = re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name()).strip("-")
    runners = set(args.runners.split(","))
    rows: list[dict] = []
    for preset in args.preset or ["yxanul-270m"]:
        if runners & {"peer", "bench"}:
            rows += [r for r in bench_rows(preset, args.micro_batch, args.steps, "peer" in runners)
                     if r["runner"] in runners]
        if "train" in runners:
            for precision in ("bf16", "fp8"):
                rows.append(train_row(preset, precision, args.micro_batch, args.steps, args.data, args.out))
                print(json.dumps(rows[-1]), flush=True)
    for r in rows:
        r.update({"card": env["card"], "micro_batch": args.micro_batch, "seq_len": 2048, "steps": args.steps,
                  "date": env["date"], "torch": env["torch"], "transformer_engine": env.get("transformer_engine")})
    stem = args.out / f"train-vs-bench-{card}"
    with stem.with_suffix(".jsonl").open("a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    md = f"{env['card']}, torch {env['torch']}, TE {env.get('transformer_engine')}, {env['date']}\n\n{table(rows)}\n"
    with stem.with_suffix(".md").open("a") as f:
        f.write(md + "\n")
    print(md)
    return 0 if all(not r.get("error") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
