"""Data parallelism (yxanul.train.parallel): DDP and FSDP2 agree step for step, and an FSDP run's full state
dict (weights and optimizer) continues in a plain single-process model exactly.

Two real processes with torch.multiprocessing and gloo (no Ray: this is about the wrapping, not the launcher).
One spawn runs everything distributed; the parent process then plays the single-process resume.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from yxanul.config import ModelConfig, OptimConfig, PrecisionConfig
from yxanul.errors import ConfigError, PrecisionError
from yxanul.model import Yxanul
from yxanul.precision import Precision
from yxanul.train.parallel import (
    full_optimizer_state_dict,
    full_state_dict,
    is_sharded,
    load_full_optimizer_state_dict,
    load_full_state_dict,
    wrap_model,
)
from yxanul.train.step import build_optimizer, train_step

WORLD = 2
STEPS = 100
VOCAB = 200
SEQ_LEN = 16
PER_RANK = 2  # sequences per rank per step
LR = 3e-3
MODEL = ModelConfig(preset=None, hidden=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, context=SEQ_LEN,
                    max_positions=SEQ_LEN)
FP32 = PrecisionConfig(mode="fp32")


def _pool() -> torch.Tensor:
    """A fixed pool of 8 sequences: the model can learn them, so the loss falls far below ln(VOCAB)."""
    return torch.randint(0, VOCAB, (8, SEQ_LEN), generator=torch.Generator().manual_seed(7))


def _global_batch(step: int) -> torch.Tensor:
    """The step's WORLD x PER_RANK sequences, identical in every process; rank r trains on rows r*PER_RANK..."""
    order = torch.randperm(8, generator=torch.Generator().manual_seed(1000 + step))
    return _pool()[order[:WORLD * PER_RANK]]


def _build(seed: int = 0) -> Yxanul:
    torch.manual_seed(seed)
    return Yxanul(MODEL, VOCAB)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=120))
    try:
        device = torch.device("cpu")
        precision = Precision(FP32, device)
        result: dict[str, object] = {}
        for strategy in ("ddp", "fsdp"):
            model = wrap_model(_build(), strategy, device)
            optimizer = build_optimizer(model, OptimConfig(lr=LR))
            losses = []
            for step in range(STEPS):
                mine = _global_batch(step)[rank * PER_RANK:(rank + 1) * PER_RANK]
                losses.append(train_step(model, optimizer, [mine], lr=LR, precision=precision).loss)
            result[f"{strategy}_losses"] = torch.stack(losses)  # this rank's mean loss per step
            if strategy == "ddp" and rank == 0:  # local under DDP: rank 0 alone may call them (no collective)
                result["ddp_keys"] = sorted(full_state_dict(model))
                result["ddp_optim_keys"] = sorted(full_optimizer_state_dict(model, optimizer)["state"])
            result[f"{strategy}_type"] = type(model).__name__
            result[f"{strategy}_sharded"] = is_sharded(model)
        # `model` is the FSDP one now: shards, checkpoint, logits, then one more step for the resume check.
        qkv = model.blocks[0].attn.qkv.weight
        result["fsdp_local_rows"] = qkv.to_local().shape[0]
        result["full_rows"] = qkv.shape[0]
        weights = full_state_dict(model)
        optim_state = full_optimizer_state_dict(model, optimizer)
        with torch.no_grad():
            result["logits"] = model(_pool())
        mine = _global_batch(STEPS)[rank * PER_RANK:(rank + 1) * PER_RANK]
        result["next_loss"] = train_step(model, optimizer, [mine], lr=LR, precision=precision).loss
        after = full_state_dict(model)
        try:
            wrap_model(_build().to(torch.bfloat16), "fsdp", device)
        except PrecisionError as exc:
            result["bf16_error"] = str(exc)
        if rank == 0:
            torch.save({"weights": weights, "optim": optim_state, "after": after}, Path(out) / "checkpoint.pt")
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("parallel")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    return {"ranks": ranks, **checkpoint}


def _global(ranks: list[dict], key: str) -> torch.Tensor:
    """Mean over ranks of per-rank mean losses = the global mean loss (every rank has as many tokens)."""
    return torch.stack([r[key] for r in ranks]).mean(0)


def test_ddp_and_fsdp_losses_agree_over_100_steps(run):
    ranks = run["ranks"]
    ddp, fsdp = _global(ranks, "ddp_losses"), _global(ranks, "fsdp_losses")
    assert ranks[0]["ddp_type"] == "DistributedDataParallel" and not ranks[0]["ddp_sharded"]
    assert ranks[0]["fsdp_sharded"]
    assert len(ddp) == len(fsdp) == STEPS
    assert ddp[0] == pytest.approx(5.3, abs=0.3)  # ~ln(200) at init
    assert ddp[-1] < 1.0  # it learned the pool: the comparison is not between two flat curves
    assert torch.allclose(ddp, fsdp, rtol=0, atol=1e-5), (ddp - fsdp).abs().max()
    # The ranks saw different data: their losses differ, so the agreement above is across real sharding.
    assert not torch.equal(ranks[0]["fsdp_losses"], ranks[1]["fsdp_losses"])


def test_ddp_state_dicts_are_local_and_keyed_like_a_plain_model(run):
    keys = sorted(_build().state_dict())
    assert run["ranks"][0]["ddp_keys"] == keys  # no "module." prefix
    assert run["ranks"][0]["ddp_optim_keys"] == sorted(n for n, _ in _build().named_parameters())


def test_fsdp_shards_parameters_per_rank(run):
    ranks = run["ranks"]
    full = ranks[0]["full_rows"]
    assert [r["fsdp_local_rows"] for r in ranks] == [full // WORLD] * WORLD


def test_full_state_dict_of_fsdp_run_loads_into_a_plain_model_with_identical_logits(run):
    plain = _build(seed=123)  # different init: the load must overwrite every weight
    weights = run["weights"]
    assert set(weights) == set(plain.state_dict())
    assert all(v.device.type == "cpu" and v.dtype == torch.float32 for v in weights.values())
    load_full_state_dict(plain, weights)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' setting: same kernels, so bitwise equal logits
    try:
        with torch.no_grad():
            logits = plain(_pool())
    finally:
        torch.set_num_threads(threads)
    for rank in run["ranks"]:
        assert torch.equal(logits, rank["logits"])


def test_fsdp_checkpoint_resumes_in_one_process(run):
    """2 -> 1 workers: weights + optimizer state from the 2-process FSDP run, then the next step on the whole
    global batch in one plain process gives the same loss and the same weights as the FSDP run's next step."""
    plain = _build(seed=123)
    load_full_state_dict(plain, run["weights"])
    optimizer = build_optimizer(plain, OptimConfig(lr=LR))
    load_full_optimizer_state_dict(plain, optimizer, run["optim"])
    assert all(len(s) == 3 for s in optimizer.state.values())  # step, exp_avg, exp_avg_sq for every parameter
    loss = train_step(plain, optimizer, [_global_batch(STEPS)], lr=LR, precision=Precision(FP32, "cpu")).loss
    assert float(loss) == pytest.approx(float(_global(run["ranks"], "next_loss")), abs=1e-6)
    after = plain.state_dict()
    for key, value in run["after"].items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=1e-6, msg=key)


def test_fsdp_refuses_low_precision_master_weights(run):
    assert "fp32 master weights" in run["ranks"][0]["bf16_error"]


def test_single_process_is_left_unwrapped_and_bad_input_is_refused():
    model = _build()
    for strategy in ("ddp", "fsdp"):
        assert wrap_model(model, strategy, torch.device("cpu")) is model
    with pytest.raises(ConfigError, match="scaling.strategy"):
        wrap_model(model, "zero3", torch.device("cpu"))  # type: ignore[arg-type]
    with pytest.raises(PrecisionError, match="missing blocks.1"):
        load_full_state_dict(model, {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.1.")})


def test_full_state_dict_is_a_detached_cpu_copy():
    model = _build()
    weights = full_state_dict(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert not any(torch.equal(weights[k], v) for k, v in model.state_dict().items())
