"""GPU proof that an FP8 run's checkpoint is data and restores Transformer Engine's scaling state exactly (run on the
GPU machine: ``pytest -m gpu tests/gpu/test_checkpoint_fp8.py``).

Transformer Engine pickles its FP8 extra state (a recipe object among tensors). ``yxanul.train.checkpoint`` stores
it as tensors (``fp8_state.pt``, read with ``weights_only=True``) and JSON (``fp8_state.json``) and rebuilds TE's
payload with the run's own recipe object, so resuming a delayed-scaling run needs no
``NVTE_ALLOW_UNSAFE_PICKLE_EXTRA_STATE=1`` and never unpickles a file. The CPU tests cover the same code with a
stand-in recipe (tests/unit/test_checkpoint.py)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.gpu.test_fp8 import RECIPES, _delayed_state, build, fp8, markov_batches
from yxanul.config import OptimConfig
from yxanul.precision import split_state_dict
from yxanul.train.checkpoint import TrainState, load_checkpoint, save_checkpoint, verify_checkpoint
from yxanul.train.step import build_optimizer, train_step

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("recipe", ["delayed", "current"])
def test_fp8_checkpoint_is_data_and_restores_the_scaling_state(recipe, tmp_path, monkeypatch):
    if recipe not in RECIPES:
        pytest.fail(f"{recipe} expected on an H100-class card; this card supports {RECIPES}")
    monkeypatch.delenv("NVTE_ALLOW_UNSAFE_PICKLE_EXTRA_STATE", raising=False)
    model, precision = build(fp8(recipe))
    optimizer = build_optimizer(model, OptimConfig())
    for batch in markov_batches(3, batch=8, seq=128, seed=2):
        train_step(model, optimizer, [batch], lr=1e-3, precision=precision)
    saved = {name: _delayed_state(m) for name, m in model.named_modules() if _delayed_state(m)}
    if recipe == "delayed":
        assert saved, "delayed scaling keeps amax history and scales"
    save_checkpoint(tmp_path, rank=0, state=TrainState(num_workers=1), model=model, optimizer=optimizer,
                    data_state={"stage": 0, "position": 0})
    verify_checkpoint(tmp_path)
    tensors = torch.load(tmp_path / "fp8_state.pt", weights_only=True)  # plain tensors
    meta = json.loads((tmp_path / "fp8_state.json").read_text())
    assert set(meta) == set(split_state_dict(model.state_dict())[1])
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    print(f"{recipe}: fp8_state.pt {len(tensors)} tensors; recipes in fp8_state.json "
          f"{sorted({e.get('recipe') for e in meta.values() if e})}")

    fresh, _ = build(fp8(recipe), seed=17)
    fresh_optimizer = build_optimizer(fresh, OptimConfig())
    load_checkpoint(tmp_path, rank=0, model=fresh, optimizer=fresh_optimizer)
    assert "NVTE_ALLOW_UNSAFE_PICKLE_EXTRA_STATE" not in os.environ  # scoped to the load, then gone
    for name, module in fresh.named_modules():
        if name in saved:
            restored = _delayed_state(module)
            assert set(restored) == set(saved[name]), name
            for key, value in saved[name].items():
                assert torch.equal(value, restored[key]), f"{name} {key}"
    for key, value in model.state_dict().items():
        if not key.endswith("_extra_state"):
            assert torch.equal(value, fresh.state_dict()[key]), key



def test_snapshots_on_the_gpu_reuse_pinned_buffers_and_hold_the_state_they_were_taken_at(tmp_path):
    """checkpoint.HostBuffers on the card: the weights and AdamW state (on the GPU) are copied asynchronously into
    pinned host buffers, the same memory at the next snapshot; after each snapshot returns its tensors equal the
    state at that moment although training goes on, and the second one written loads bit for bit."""
    from yxanul.train.checkpoint import HostBuffers, snapshot, write_snapshot

    model, precision = build(fp8("delayed"))
    optimizer = build_optimizer(model, OptimConfig())
    batches = list(markov_batches(4, batch=8, seq=128, seed=3))
    buffers = HostBuffers()
    taken = []
    for batch in batches[:2]:
        train_step(model, optimizer, [batch], lr=1e-3, precision=precision)
        taken.append(snapshot(rank=0, state=TrainState(num_workers=1), model=model, optimizer=optimizer,
                              data_state={"stage": 0, "position": 0}, buffers=buffers))
        at = {k: v.detach().cpu().clone() for k, v in split_state_dict(model.state_dict())[0].items()}
        train_step(model, optimizer, [batches[2]], lr=1e-3, precision=precision)  # changes what was snapshotted
        for key, value in taken[-1].weights.items():
            assert value.is_pinned() and torch.equal(value, at[key]), key
    first, second = taken
    assert all(first.weights[k].data_ptr() == second.weights[k].data_ptr() for k in first.weights)
    directory = write_snapshot(tmp_path / "ckpt", second)
    verify_checkpoint(directory)
    fresh, _ = build(fp8("delayed"), seed=17)
    load_checkpoint(directory, rank=0, model=fresh, optimizer=build_optimizer(fresh, OptimConfig()))
    for key, value in split_state_dict(fresh.state_dict())[0].items():
        assert torch.equal(value.cpu(), second.weights[key]), key
