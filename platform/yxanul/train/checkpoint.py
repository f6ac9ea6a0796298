"""Checkpoint layout: everything a run needs to continue exactly where it stopped.

One checkpoint directory per report (Ray Train merges the files every worker writes into it)::

    state.json        rank 0: step, tokens, stage, MLflow run id, workers, seed, tokens_per_step, ...
    model.pt          rank 0: full model weights (precision- and strategy-portable: no FP8 scaling state,
                      keyed like a plain single-process model under DDP and FSDP alike)
    fp8_state.pt      rank 0, FP8 only: Transformer Engine scaling state (opaque, for the same layers)
    optimizer.pt      rank 0: full AdamW state keyed by parameter name (yxanul.train.parallel)
    rank<r>.pt        every rank: its RNG states (python, numpy, torch CPU, CUDA) and data position

The learning rate needs no state: it is a function of tokens seen (:mod:`yxanul.schedule`). The data
position is a function of the step as well; it is saved anyway and checked on resume, so a change in
the data order (a different dataset, another number of workers) is caught instead of silently shifting.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from yxanul.errors import ConfigError
from yxanul.precision import split_state_dict

__all__ = ["RESUME_KEYS", "TrainState", "check_compatible", "load_checkpoint", "resume_changes", "resume_values",
           "save_checkpoint"]

FORMAT_VERSION = 1


@dataclass
class TrainState:
    """The loop's position (JSON in ``state.json``)."""

    step: int = 0
    """Optimizer steps done."""
    tokens: int = 0
    """Training tokens seen (step x tokens_per_step)."""
    stage: int = 0
    """Curriculum stage of the next step."""
    elapsed_s: float = 0.0
    """Training wall-clock so far (validation and checkpointing excluded)."""
    skipped_steps: int = 0
    """Optimizer steps skipped for a non-finite gradient (train.on_nan=skip)."""
    run_id: str | None = None
    """MLflow run this training logs into (the same run continues on resume)."""
    num_workers: int = 1
    tokens_per_step: int = 0
    seed: int = 0
    max_tokens: int = 0
    config_hash: str = ""
    format_version: int = FORMAT_VERSION


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | Path, *, rank: int, state: TrainState, model: nn.Module,
                    optimizer: torch.optim.Optimizer, data_state: dict[str, Any]) -> Path:
    """Write this rank's part of a checkpoint into ``directory`` (which the caller reports to Ray).

    Every rank must call it: under FSDP the full weights and optimizer state are gathered collectively
    (:mod:`yxanul.train.parallel`); rank 0 writes them, keyed like a plain single-process model's, so a
    checkpoint loads under DDP, FSDP or one process alike.
    """
    from yxanul.train.parallel import full_optimizer_state_dict, full_state_dict

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights, fp8_state = split_state_dict(full_state_dict(model))
    optimizer_state = full_optimizer_state_dict(model, optimizer)
    torch.save({"rng": _rng_state(), "data": data_state}, directory / f"rank{rank}.pt")
    if rank == 0:
        torch.save(weights, directory / "model.pt")
        if fp8_state:
            torch.save(fp8_state, directory / "fp8_state.pt")
        torch.save(optimizer_state, directory / "optimizer.pt")
        # state.json last: its presence marks rank 0's part as complete.
        (directory / "state.json").write_text(json.dumps(asdict(state), indent=2))
    return directory


def read_state(directory: str | Path) -> TrainState:
    """The ``state.json`` of a checkpoint (no tensors loaded)."""
    return TrainState(**json.loads((Path(directory) / "state.json").read_text()))


def load_checkpoint(directory: str | Path, *, rank: int, model: nn.Module,
                    optimizer: torch.optim.Optimizer) -> tuple[TrainState, dict[str, Any]]:
    """Restore model, optimizer (plain, DDP or FSDP: every rank calls) and this rank's RNG states; return the
    loop state and this rank's data position."""
    directory = Path(directory)
    state = read_state(directory)
    from yxanul.train.parallel import load_full_optimizer_state_dict, load_full_state_dict

    weights = torch.load(directory / "model.pt", map_location="cpu", weights_only=True)
    fp8_path = directory / "fp8_state.pt"
    # FP8 extra state holds pickled recipe metadata, so it is not loadable with weights_only.
    fp8_state = torch.load(fp8_path, map_location="cpu", weights_only=False) if fp8_path.exists() else None
    load_full_state_dict(model, weights, fp8_state)
    load_full_optimizer_state_dict(model, optimizer, torch.load(directory / "optimizer.pt", map_location="cpu",
                                                                weights_only=True))
    mine = directory / f"rank{rank}.pt"
    if not mine.exists():
        raise ConfigError(f"checkpoint {directory} has no state for worker rank {rank} (it was written by "
                          f"{state.num_workers} workers); resume with scaling.num_workers={state.num_workers}")
    per_rank = torch.load(mine, weights_only=False)  # RNG states are python/numpy objects
    _set_rng_state(per_rank["rng"])
    return state, per_rank["data"]


RESUME_KEYS: dict[str, str] = {"scaling.num_workers": "num_workers", "train.tokens_per_step": "tokens_per_step",
                               "run.seed": "seed", "train.max_tokens": "max_tokens"}
"""Config keys a resumed run must keep, because they fix the data order and the learning-rate schedule,
each with the :class:`TrainState` field that records it. The one table both resume checks use: the
driver's (against ``yxanul_run.json``) and the worker's (against the checkpoint)."""


def resume_values(cfg: Any) -> dict[str, Any]:
    """The :data:`RESUME_KEYS` values of an :class:`~yxanul.config.ExperimentConfig`."""
    values = {}
    for key in RESUME_KEYS:
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        values[key] = value
    return values


def resume_changes(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"<key> was <old>, now <new>"`` for every resume key whose value changed (keys ``previous``
    lacks, e.g. from an older run file, are not compared)."""
    return [f"{key} was {previous[key]}, now {current[key]}" for key in RESUME_KEYS
            if key in previous and key in current and previous[key] != current[key]]


def check_compatible(state: TrainState, current: dict[str, Any], where: str) -> None:
    """A resumed run must keep what fixes the data order and the schedule; say which key changed.
    ``current``: the :data:`RESUME_KEYS` values of the run now (:func:`resume_values`)."""
    changed = resume_changes({key: getattr(state, name) for key, name in RESUME_KEYS.items()}, current)
    if changed:
        raise ConfigError(f"cannot resume from {where}: {'; '.join(changed)} (these fix the data order and the "
                          f"learning-rate schedule); restore them, or start a new run with another run.name")
