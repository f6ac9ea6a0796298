"""Checkpoints are data, not code, and are verified before use: a crafted pickle never runs and is one line naming
its file; a truncated or changed file is one line naming it; RNG state and the FP8 scaling state round-trip as
tensors + JSON. (The fallback to the previous valid checkpoint in a real run: tests/integration/test_train.py.)"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from yxanul.errors import CheckpointError, ConfigError
from yxanul.files import sha256_file
from yxanul.train.checkpoint import (
    HostBuffers,
    TrainState,
    fp8_state_from_data,
    fp8_state_to_data,
    load_checkpoint,
    save_checkpoint,
    snapshot,
    verify_checkpoint,
    write_snapshot,
)


def _model_and_optimizer(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(3, 8)).sum().backward()
    optimizer.step()
    return model, optimizer


def _save(directory: Path, rank: int = 0, workers: int = 1) -> Path:
    model, optimizer = _model_and_optimizer()
    state = TrainState(step=3, tokens=300, num_workers=workers, tokens_per_step=100, seed=1, max_tokens=1000)
    return save_checkpoint(directory, rank=rank, state=state, model=model, optimizer=optimizer,
                           data_state={"stage": 0, "position": 12, "rank": rank, "world_size": workers, "seq_len": 8})


class _Payload:
    """What the probe put into a checkpoint: unpickling it creates a marker file (it could run anything)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class _Shell:
    """The probe's own payload: a shell command, run as the Train worker's user."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _rewrite_manifest(directory: Path) -> None:
    """What an attacker who can write the storage does too: a manifest that matches the crafted file."""
    from yxanul.files import sha256_file

    path = directory / "manifest.rank0.json"
    manifest = json.loads(path.read_text())
    for name in manifest["files"]:
        manifest["files"][name] = {"bytes": (directory / name).stat().st_size,
                                   "sha256": sha256_file(directory / name)}
    path.write_text(json.dumps(manifest))


def test_round_trip_restores_weights_optimizer_rng_and_position(tmp_path):
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    directory = _save(tmp_path / "ckpt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    names = {p.name for p in directory.iterdir()}
    assert names == {"model.pt", "optimizer.pt", "state.json", "rank0.json", "manifest.rank0.json"}
    assert verify_checkpoint(directory).tokens == 300
    model, optimizer = _model_and_optimizer(seed=99)
    state, data = load_checkpoint(directory, rank=0, model=model, optimizer=optimizer)
    assert (state.step, state.tokens, data["position"]) == (3, 300, 12)
    saved_model, saved_optimizer = _model_and_optimizer()
    for (name, a), b in zip(model.state_dict().items(), saved_model.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"],
                       saved_optimizer.state_dict()["state"][0]["exp_avg"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected  # RNG streams continue exactly
    rank_state = json.loads((directory / "rank0.json").read_text())  # JSON: nothing in it can be code
    assert set(rank_state) == {"rng", "data"}


def test_a_snapshot_is_a_copy_written_later_as_the_state_it_was_taken_from(tmp_path):
    """checkpoint.asynchronous: the snapshot is taken in the training thread and written later (Ray's upload thread)
    while training changes the weights, the optimizer state and the RNG in place. What is written must be the state
    at the snapshot, bit for bit, not the state at the write."""
    model, optimizer = _model_and_optimizer()
    state = TrainState(step=3, tokens=300, num_workers=1, tokens_per_step=100, seed=1, max_tokens=1000)
    data = {"stage": 0, "position": 12, "rank": 0, "world_size": 1, "seq_len": 8}
    torch.manual_seed(5)
    taken = snapshot(rank=0, state=state, model=model, optimizer=optimizer, data_state=data)
    at_snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    exp_avg = optimizer.state_dict()["state"][0]["exp_avg"].clone()
    after_snapshot_draw = torch.rand(1).item()
    model(torch.randn(3, 8)).sum().backward()  # training goes on: in-place updates of everything the snapshot holds
    optimizer.step()
    state.step, data["position"] = 4, 16
    assert not torch.equal(model.state_dict()["0.weight"], at_snapshot["0.weight"])
    directory = write_snapshot(tmp_path / "ckpt", taken)
    assert {p.name for p in directory.iterdir()} == {"model.pt", "optimizer.pt", "state.json", "rank0.json",
                                                     "manifest.rank0.json"}
    assert verify_checkpoint(directory).step == 3
    fresh, fresh_optimizer = _model_and_optimizer(seed=99)
    loaded, position = load_checkpoint(directory, rank=0, model=fresh, optimizer=fresh_optimizer)
    assert (loaded.step, position["position"]) == (3, 12)
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, at_snapshot[name]), name
    assert torch.equal(fresh_optimizer.state_dict()["state"][0]["exp_avg"], exp_avg)
    assert torch.rand(1).item() == after_snapshot_draw  # the RNG as it was at the snapshot


def test_snapshots_reuse_their_host_buffers_and_a_fresh_set_keeps_one_in_flight(tmp_path):
    """A run's snapshots copy into the same host memory (no allocation after the first): the second snapshot holds
    the state at its own time in the first one's buffers. While a snapshot may still be being written, the loop
    takes the next into fresh buffers, and the first stays the state it was taken from, as written."""
    model, optimizer = _model_and_optimizer()
    state = TrainState(step=3, tokens=300, num_workers=1, tokens_per_step=100, seed=1, max_tokens=1000)
    data = {"stage": 0, "position": 12, "rank": 0, "world_size": 1, "seq_len": 8}
    buffers = HostBuffers()
    first = snapshot(rank=0, state=state, model=model, optimizer=optimizer, data_state=data, buffers=buffers)
    at_first = {k: v.clone() for k, v in first.weights.items()}
    model(torch.randn(3, 8)).sum().backward()
    optimizer.step()
    second = snapshot(rank=0, state=state, model=model, optimizer=optimizer, data_state=data, buffers=buffers)
    for name, value in model.state_dict().items():
        assert torch.equal(second.weights[name], value), name
        assert second.weights[name].data_ptr() == first.weights[name].data_ptr(), name  # the same memory
    param = next(iter(first.optimizer["state"]))  # keyed by parameter name
    assert second.optimizer["state"][param]["exp_avg"].data_ptr() == first.optimizer["state"][param]["exp_avg"].data_ptr()
    in_flight = second
    at_second = {k: v.clone() for k, v in in_flight.weights.items()}
    model(torch.randn(3, 8)).sum().backward()
    optimizer.step()
    third = snapshot(rank=0, state=state, model=model, optimizer=optimizer, data_state=data, buffers=HostBuffers())
    for name, value in model.state_dict().items():
        assert torch.equal(third.weights[name], value) and not torch.equal(value, at_second[name]), name
        assert torch.equal(in_flight.weights[name], at_second[name]), name  # untouched by the third
    directory = write_snapshot(tmp_path / "ckpt", in_flight)
    fresh, fresh_optimizer = _model_and_optimizer(seed=99)
    load_checkpoint(directory, rank=0, model=fresh, optimizer=fresh_optimizer)
    assert all(torch.equal(v, at_second[k]) for k, v in fresh.state_dict().items())
    assert not any(torch.equal(at_first[k], at_second[k]) for k in at_first if at_first[k].numel() > 1)


def test_the_manifest_describes_every_file_as_written(tmp_path):
    """The .pt files are hashed as they are written (no read-back): the manifest's size and sha256 of every file are
    those of the file on disk, and a byte changed afterwards is caught on load."""
    model, optimizer = _model_and_optimizer()
    taken = snapshot(rank=0, state=TrainState(step=1, num_workers=1), model=model, optimizer=optimizer,
                     data_state={"stage": 0, "position": 0})
    directory = write_snapshot(tmp_path / "ckpt", taken)
    manifest = json.loads((directory / "manifest.rank0.json").read_text())
    assert set(manifest["files"]) == {"rank0.json", "model.pt", "optimizer.pt", "state.json"}
    for name, entry in manifest["files"].items():
        assert entry == {"bytes": (directory / name).stat().st_size, "sha256": sha256_file(directory / name)}, name
    raw = bytearray((directory / "model.pt").read_bytes())
    raw[len(raw) // 2] ^= 1
    (directory / "model.pt").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="model.pt is corrupt"):
        verify_checkpoint(directory)


def test_rank_one_writes_only_its_own_state(tmp_path):
    model, optimizer = _model_and_optimizer()
    taken = snapshot(rank=1, state=TrainState(num_workers=2), model=model, optimizer=optimizer,
                     data_state={"stage": 0, "position": 0})
    assert taken.weights is None and taken.optimizer is None and taken.state is None
    assert {p.name for p in write_snapshot(tmp_path, taken).iterdir()} == {"rank1.json", "manifest.rank1.json"}


@pytest.mark.parametrize(("target", "payload", "global_name"), [("model.pt", _Shell, "posix.system"),
                                                                 ("optimizer.pt", _Payload, "getattr")])
def test_a_crafted_pickle_is_refused_in_one_line_naming_the_file_and_never_runs(tmp_path, target, payload, global_name):
    directory = _save(tmp_path / "ckpt")
    marker = tmp_path / "the-payload-ran"
    torch.save({"weights": payload(marker)}, directory / target)  # a torch checkpoint whose pickle runs code
    _rewrite_manifest(directory)
    verify_checkpoint(directory)  # the manifest matches: only reading the file as data can tell
    model, optimizer = _model_and_optimizer()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(directory, rank=0, model=model, optimizer=optimizer)
    assert not marker.exists()
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"checkpoint file {directory / target} is not plain tensor data")
    assert f"(it asks for {global_name})" in message and "was not loaded: a pickle can run code" in message
    # The same payload through plain pickle semantics would have run: the test's payload is real.
    torch.load(directory / target, weights_only=False)
    assert marker.exists()


def test_the_old_pickled_per_rank_file_is_never_read(tmp_path):
    directory = _save(tmp_path / "ckpt")
    marker = tmp_path / "the-payload-ran"
    torch.save({"rng": _Payload(marker)}, directory / "rank0.pt")  # the file the probe crafted (format 1)
    model, optimizer = _model_and_optimizer()
    load_checkpoint(directory, rank=0, model=model, optimizer=optimizer)
    assert not marker.exists()
    (directory / "manifest.rank0.json").unlink()  # a format-1 checkpoint: rank0.pt and no manifest
    with pytest.raises(CheckpointError, match=r"older version \(format 1: pickled per-rank state, no manifest\)"):
        verify_checkpoint(directory)
    assert not marker.exists()


def test_truncated_changed_and_missing_files_are_one_line_naming_the_file(tmp_path):
    directory = _save(tmp_path / "ckpt")
    model_pt = directory / "model.pt"
    blob = model_pt.read_bytes()
    model_pt.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError) as err:
        verify_checkpoint(directory)
    assert str(err.value) == (f"checkpoint file {model_pt} is corrupt: {len(blob) // 2} bytes, manifest.rank0.json "
                              f"says {len(blob)} (truncated or overwritten)")
    model_pt.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(CheckpointError, match=r"model.pt is corrupt: its sha256 differs from manifest.rank0.json$"):
        verify_checkpoint(directory)
    model_pt.write_bytes(blob)
    verify_checkpoint(directory)
    (directory / "optimizer.pt").unlink()
    with pytest.raises(CheckpointError, match=r"optimizer.pt is missing \(listed in manifest.rank0.json\)$"):
        verify_checkpoint(directory)


def test_every_rank_manifest_is_required(tmp_path):
    directory = _save(tmp_path / "ckpt", rank=0, workers=2)
    with pytest.raises(CheckpointError, match=r"manifest.rank1.json is missing: the checkpoint is incomplete"):
        verify_checkpoint(directory)
    _save(directory, rank=1, workers=2)  # Ray Train merges every rank's files into one folder
    assert verify_checkpoint(directory).num_workers == 2
    model, optimizer = _model_and_optimizer()
    with pytest.raises(ConfigError, match="no state for worker rank 2"):
        load_checkpoint(directory, rank=2, model=model, optimizer=optimizer)


class _Recipe:
    """Stands in for a Transformer Engine recipe (TE is not installed on CPU machines)."""

    def __init__(self, name: str = "delayed") -> None:
        self.name = name


def test_fp8_scaling_state_round_trips_as_tensors_and_json(tmp_path, monkeypatch):
    import pickle

    import yxanul.train.checkpoint as checkpoint

    monkeypatch.setitem(checkpoint._TE_RECIPES, "_Recipe", "delayed")
    live = {"recipe": _Recipe(), "scale_fwd": torch.tensor([1.5, 2.0]), "amax_history_fwd": torch.rand(4, 2),
            "extra_fp8_variables": {"fp8_checkpoint": True, "num_gemms": 1, "shape": (2, 3)}}
    fp8_state = {"head._extra_state": torch.frombuffer(bytearray(pickle.dumps(live)), dtype=torch.uint8),
                 "blocks.0.mlp._extra_state": torch.empty(0, dtype=torch.uint8)}  # a layer without state
    tensors, meta = fp8_state_to_data(fp8_state)
    assert set(tensors) == {"head._extra_state/scale_fwd", "head._extra_state/amax_history_fwd"}
    torch.save(tensors, tmp_path / "fp8_state.pt")
    (tmp_path / "fp8_state.json").write_text(json.dumps(meta))
    loaded = torch.load(tmp_path / "fp8_state.pt", weights_only=True)  # data only
    rebuilt = fp8_state_from_data(loaded, json.loads((tmp_path / "fp8_state.json").read_text()),
                                  recipe_factory=_Recipe)
    assert rebuilt["blocks.0.mlp._extra_state"].numel() == 0
    payload = pickle.loads(rebuilt["head._extra_state"].numpy().tobytes())  # what TE unpickles: made by us
    assert isinstance(payload["recipe"], _Recipe) and payload["recipe"].name == "delayed"
    assert torch.equal(payload["scale_fwd"], live["scale_fwd"])
    assert torch.equal(payload["amax_history_fwd"], live["amax_history_fwd"])
    assert payload["extra_fp8_variables"] == live["extra_fp8_variables"]  # the tuple stays a tuple
    only_head = fp8_state_from_data(loaded, meta, recipe_factory=_Recipe, keys={"head._extra_state"})
    assert set(only_head) == {"head._extra_state"}
