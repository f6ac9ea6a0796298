"""Checkpoint layout: everything a run needs to continue exactly where it stopped, stored as data.

One checkpoint directory per report (Ray Train merges the files every worker writes into it)::

    state.json           rank 0: step, tokens, stage, MLflow run id, workers, seed, tokens_per_step, ...
    model.pt             rank 0: full model weights (precision- and strategy-portable: no FP8 scaling state,
                         keyed like a plain single-process model under DDP and FSDP alike)
    fp8_state.pt/.json   rank 0, FP8 only: Transformer Engine's scaling state as plain tensors + JSON
    optimizer.pt         rank 0: full AdamW state keyed by parameter name (yxanul.train.parallel)
    rank<r>.json         every rank: its RNG states (python, numpy, torch CPU, CUDA) and data position
    manifest.rank<r>.json  every rank, written last: the size and sha256 of each file that rank wrote

**Data, not code.** A checkpoint lives where others can write (``run.storage_path``, an S3 bucket), and a
pickle runs code when it is loaded. So nothing here is unpickled: tensors are read with
``torch.load(weights_only=True)`` (tensors, numbers, strings, lists and dicts only) and everything else is
JSON. Transformer Engine pickles its FP8 scaling state (a recipe object among tensors); it is taken apart
into tensors and JSON when saved and rebuilt, with the run's own recipe object, when loaded
(:func:`fp8_state_to_data`, :func:`fp8_state_from_data`). A file that is not plain data is refused with
one :class:`~yxanul.errors.CheckpointError` line naming it.

**Validated before use.** Each rank's manifest is written after its files, so a checkpoint is complete only
when every rank's manifest is there and every file has the size and hash it lists
(:func:`verify_checkpoint`). The training loop resumes from the newest checkpoint that verifies and says in
one line which file made it skip a newer one (:func:`candidates`).

**Written off the training thread.** :func:`snapshot` copies a rank's state into host memory in the training
thread (the only part training waits for); :func:`write_snapshot` writes it, and with
``checkpoint.asynchronous`` (the default) that happens in Ray Train's checkpoint-upload thread together with the
copy to ``run.storage_path``, while training goes on (:mod:`yxanul.train.loop`). Ray registers a checkpoint
only once it is written and copied, in report order, and waits for the last one before the run ends.

The learning rate needs no state: it is a function of tokens seen (:mod:`yxanul.schedule`). The data
position is a function of the step as well; it is saved anyway and checked on resume, so a change in
the data order (a different dataset, another number of workers) is caught instead of silently shifting.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import pickle
import random
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from yxanul.errors import CheckpointError, ConfigError, first_line
from yxanul.files import sha256_file
from yxanul.precision import split_state_dict

__all__ = ["RESUME_KEYS", "HostBuffers", "Snapshot", "TrainState", "candidates", "check_compatible", "fp8_state_from_data",
           "fp8_state_to_data", "load_checkpoint", "read_state", "resume_changes", "resume_values", "save_checkpoint",
           "snapshot", "verify_checkpoint", "write_snapshot"]

FORMAT_VERSION = 2
"""2: JSON per-rank state, FP8 state as tensors + JSON, manifests. 1 (pickled per-rank state) is not loaded."""

_MANIFEST = "manifest.rank{rank}.json"


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
    compile_s: float = 0.0
    """Of ``elapsed_s``, the seconds of each process's first step of a batch shape (compilation and warm-up): a
    resumed process adds its own, so the run's clock less this is its training time whatever restarts it had (0 in
    checkpoints written before it existed)."""
    skipped_steps: int = 0
    """Optimizer steps skipped for a non-finite gradient (train.on_nan=skip)."""
    run_id: str | None = None
    """MLflow run this training logs into (the same run continues on resume)."""
    num_workers: int = 1
    tokens_per_step: int = 0
    seed: int = 0
    max_tokens: int = 0
    shuffle_window: int = 1
    """data.shuffle_window; 1 for checkpoints written before it existed, whose data order is that of window 1."""
    order_seed: int | None = None
    """data.order_seed (None: the data order follows ``seed``, as it did in checkpoints written before it existed)."""
    config_hash: str = ""
    format_version: int = FORMAT_VERSION


# ---------------------------------------------------------------------------------------------------
# RNG states as JSON


def _rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    algorithm, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {"algorithm": algorithm, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npy = state["numpy"]
    np.random.set_state((npy["algorithm"], np.asarray(npy["keys"], dtype=np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# ---------------------------------------------------------------------------------------------------
# Transformer Engine's FP8 scaling state as tensors + JSON

_TE_RECIPES = {"DelayedScaling": "delayed", "Float8CurrentScaling": "current", "Float8BlockScaling": "block",
               "MXFP8BlockScaling": "mxfp8"}
"""TE recipe class -> precision.recipe: the recipe object is rebuilt from the name (yxanul.precision.build_recipe,
the function that built it for training), never unpickled."""


def _te_payload(value: Any) -> dict[str, Any] | None:
    """TE's extra state of one layer as the dict TE pickled, or None when the layer has none.

    Only ever called on state this process's own model just returned (``get_extra_state``), never on bytes
    read from storage: those go through :func:`fp8_state_from_data`."""
    if isinstance(value, torch.Tensor):
        if value.numel() == 0:
            return None
        return pickle.loads(value.detach().cpu().numpy().tobytes())  # noqa: S301  (our own bytes, in memory)
    if isinstance(value, io.BytesIO):  # older TE: a torch.save'd dict
        value.seek(0)
        return torch.load(value, map_location="cpu", weights_only=False)  # (our own bytes, in memory)
    if value is None:
        return None
    raise CheckpointError(f"unknown Transformer Engine extra state type {type(value).__name__}; expected a byte "
                          f"tensor (Transformer Engine 2.x)")


def _to_json(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"tuple": [_to_json(v, where) for v in value]}
    if isinstance(value, list):
        return [_to_json(v, where) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: _to_json(v, where) for k, v in value.items()}}
    raise CheckpointError(f"FP8 scaling state {where} holds a {type(value).__name__}, which is not data; this "
                          f"Transformer Engine version stores something the checkpoint format does not know")


def _from_json(value: Any) -> Any:
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"tuple"}:
            return tuple(_from_json(v) for v in value["tuple"])
        if set(value) == {"dict"}:
            return {k: _from_json(v) for k, v in value["dict"].items()}
        raise CheckpointError(f"fp8_state.json holds an object with keys {sorted(value)[:5]}; expected data only")
    return value


def fp8_state_to_data(fp8_state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split TE's FP8 scaling state (``{"<layer>._extra_state": pickled bytes}``, straight from the model) into
    tensors (``"<layer>._extra_state/<field>"``, for ``torch.save``) and JSON (the recipe's name, the other
    fields). What TE would restore from its pickle is restored from these (:func:`fp8_state_from_data`)."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    for key, value in fp8_state.items():
        payload = _te_payload(value)
        if payload is None:
            meta[key] = None
            continue
        entry: dict[str, Any] = {"tensors": [], "values": {}}
        for field, item in payload.items():
            if isinstance(item, torch.Tensor):
                tensors[f"{key}/{field}"] = item.detach().cpu().clone()
                entry["tensors"].append(field)
            elif field == "recipe":
                name = _TE_RECIPES.get(type(item).__name__)
                if name is None:
                    raise CheckpointError(f"FP8 scaling state of {key} uses the Transformer Engine recipe "
                                          f"{type(item).__name__}, which the checkpoint format does not know "
                                          f"(known: {', '.join(sorted(_TE_RECIPES))})")
                entry["recipe"] = name
            else:
                entry["values"][field] = _to_json(item, f"{key}/{field}")
        meta[key] = entry
    return tensors, meta


def fp8_state_from_data(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
                        recipe_factory: Callable[[str], Any] | None = None,
                        keys: set[str] | None = None) -> dict[str, torch.Tensor]:
    """TE's extra state rebuilt from :func:`fp8_state_to_data`'s tensors and JSON, for the layers in ``keys``
    (all when None): the payload TE expects, made here from data only, with the recipe object
    ``recipe_factory(name)`` (default :func:`yxanul.precision.build_recipe`) builds."""
    if recipe_factory is None:
        from yxanul.precision import build_recipe as recipe_factory
    out: dict[str, torch.Tensor] = {}
    for key, entry in meta.items():
        if keys is not None and key not in keys:
            continue
        if entry is None:
            out[key] = torch.empty(0, dtype=torch.uint8)
            continue
        payload: dict[str, Any] = {field: _from_json(v) for field, v in entry["values"].items()}
        for field in entry["tensors"]:
            name = f"{key}/{field}"
            if name not in tensors:
                raise CheckpointError(f"fp8_state.pt lacks {name}, which fp8_state.json lists")
            payload[field] = tensors[name]
        if "recipe" in entry:
            payload["recipe"] = recipe_factory(entry["recipe"])
        out[key] = torch.frombuffer(bytearray(pickle.dumps(payload)), dtype=torch.uint8)
    return out


@contextlib.contextmanager
def _own_te_payloads() -> Iterator[None]:
    """Let TE unpickle the FP8 payloads :func:`fp8_state_from_data` just built (TE >= 2.18 refuses a pickled
    delayed-scaling state unless NVTE_ALLOW_UNSAFE_PICKLE_EXTRA_STATE=1): they were made in this process from
    tensors read with weights_only and JSON, so they hold nothing but data and our own recipe object."""
    from yxanul.environ import temporary_env

    with temporary_env("NVTE_ALLOW_UNSAFE_PICKLE_EXTRA_STATE", "1"):
        yield


# ---------------------------------------------------------------------------------------------------
# Writing


def _write_json(path: Path, content: Any) -> None:
    path.write_text(json.dumps(content, indent=1 if path.name == "state.json" else None))


@dataclass
class Snapshot:
    """One rank's part of a checkpoint, copied into host memory: taken in the training thread (training then
    goes on and changes the originals) and written by :func:`write_snapshot` later, e.g. in Ray Train's
    checkpoint-upload thread (``checkpoint.asynchronous``). Rank 0 holds the weights, the FP8 scaling state
    and the optimizer state: a host copy of the size of the checkpoint while it is written."""

    rank: int
    rank_state: dict[str, Any]
    """RNG states and data position (``rank<r>.json``)."""
    weights: dict[str, torch.Tensor] | None = None
    fp8: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None
    optimizer: dict[str, Any] | None = None
    state: dict[str, Any] | None = None


class HostBuffers:
    """Host memory a run's snapshots are copied into, kept from one snapshot to the next: the state has the same
    tensors at every checkpoint, so after the first the copy allocates nothing, and a GPU tensor's buffer is pinned
    (page-locked), which the device copies into asynchronously at full bus speed; one synchronisation ends the
    snapshot. A buffer may be reused only once the snapshot that used it is written (the training loop keeps one
    checkpoint in flight, and takes new buffers when it cannot wait for one). On the H100 a snapshot is 1.6 GB for the science model,
    six a trial (docs/benchmarks.md)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[Any, ...], torch.Tensor] = {}

    def copy(self, value: Any, path: tuple[Any, ...] = ()) -> Any:
        """``value`` with every tensor copied into host memory (a copy even for CPU tensors: the originals change)."""
        if isinstance(value, torch.Tensor):
            source = value.detach()
            held = self._buffers.get(path)
            if held is None or held.shape != source.shape or held.dtype != source.dtype:
                pinned = source.device.type == "cuda"
                held = self._buffers[path] = torch.empty(source.shape, dtype=source.dtype, pin_memory=pinned)
            return held.copy_(source, non_blocking=held.is_pinned())
        if isinstance(value, Mapping):
            return {k: self.copy(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.copy(v, (*path, i)) for i, v in enumerate(value))
        return value


def snapshot(*, rank: int, state: TrainState, model: nn.Module, optimizer: torch.optim.Optimizer,
             data_state: dict[str, Any], buffers: HostBuffers | None = None) -> Snapshot:
    """This rank's checkpoint as it stands now, in host memory (``buffers``: a run's reused buffers, else new ones).
    Every rank must call it: under FSDP the full weights and optimizer state are gathered collectively
    (:mod:`yxanul.train.parallel`); rank 0 keeps them, keyed like a plain single-process model's, so a checkpoint
    loads under DDP, FSDP or one process alike."""
    from yxanul.train.parallel import full_optimizer_state_dict, full_state_dict

    buffers = buffers or HostBuffers()
    # the tensors where they are (gathered to the CPU under FSDP): copied once, into the buffers
    weights, fp8_state = split_state_dict(full_state_dict(model, copy=False))
    optimizer_state = full_optimizer_state_dict(model, optimizer, copy=False)
    taken = Snapshot(rank=rank, rank_state={"rng": _rng_state(), "data": json.loads(json.dumps(data_state))})
    if rank == 0:
        taken.weights = buffers.copy(weights, ("weights",))
        if fp8_state:
            tensors, meta = fp8_state_to_data(fp8_state)
            taken.fp8 = (buffers.copy(tensors, ("fp8",)), meta)
        taken.optimizer = buffers.copy(optimizer_state, ("optimizer",))
        taken.state = asdict(state)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()  # the asynchronous copies into pinned buffers are complete before training goes on
    return taken


def _file_entry(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


class _HashingFile:
    """A binary file that hashes what is written to it: a checkpoint file's sha256 without reading it back
    (1.2 GB on the 2-core VM: torch.save 2.6-3.5 s plus 0.8 s to hash the file again, 2.8-4.1 s hashed as written)."""

    def __init__(self, fh: Any) -> None:
        self._fh, self.digest, self.size = fh, hashlib.sha256(), 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self.size += view.nbytes
        return self._fh.write(view)

    def flush(self) -> None:
        self._fh.flush()


def _save_hashed(obj: Any, path: Path) -> dict[str, Any]:
    """``torch.save(obj, path)``; the manifest entry (size, sha256) of what was written."""
    with open(path, "wb") as fh:
        out = _HashingFile(fh)
        torch.save(obj, out)
    if out.size != path.stat().st_size:  # never a manifest that does not describe the file
        raise CheckpointError(f"checkpoint file {path} has {path.stat().st_size} bytes, {out.size} were written")
    return {"bytes": out.size, "sha256": out.digest.hexdigest()}


def write_snapshot(directory: str | Path, taken: Snapshot) -> Path:
    """Write a rank's :class:`Snapshot` into ``directory`` (which is then reported to Ray); its manifest last."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, Any]] = {}
    name = f"rank{taken.rank}.json"
    _write_json(directory / name, taken.rank_state)
    files[name] = _file_entry(directory / name)
    if taken.weights is not None:
        files["model.pt"] = _save_hashed(taken.weights, directory / "model.pt")
    if taken.fp8 is not None:
        files["fp8_state.pt"] = _save_hashed(taken.fp8[0], directory / "fp8_state.pt")
        _write_json(directory / "fp8_state.json", taken.fp8[1])
        files["fp8_state.json"] = _file_entry(directory / "fp8_state.json")
    if taken.optimizer is not None:
        files["optimizer.pt"] = _save_hashed(taken.optimizer, directory / "optimizer.pt")
    if taken.state is not None:
        _write_json(directory / "state.json", taken.state)
        files["state.json"] = _file_entry(directory / "state.json")
    manifest = {"format_version": FORMAT_VERSION, "rank": taken.rank, "files": files}
    _write_json(directory / _MANIFEST.format(rank=taken.rank), manifest)  # last: the rank's part is complete
    return directory


def save_checkpoint(directory: str | Path, *, rank: int, state: TrainState, model: nn.Module,
                    optimizer: torch.optim.Optimizer, data_state: dict[str, Any]) -> Path:
    """Write this rank's part of a checkpoint into ``directory`` now: :func:`snapshot` then
    :func:`write_snapshot`. Every rank must call it (FSDP gathers collectively)."""
    return write_snapshot(directory, snapshot(rank=rank, state=state, model=model, optimizer=optimizer,
                                              data_state=data_state))


# ---------------------------------------------------------------------------------------------------
# Reading


def read_state(directory: str | Path) -> TrainState:
    """The ``state.json`` of a checkpoint (no tensors loaded; unknown keys are an error, not code)."""
    path = Path(directory) / "state.json"
    try:
        content = json.loads(path.read_text())
        known = {f.name for f in fields(TrainState)}
        if not isinstance(content, dict):
            raise ValueError(f"not an object: {content!r:.80}")
        if set(content) - known:
            raise ValueError(f"unexpected keys {sorted(set(content) - known)[:5]}")
        return TrainState(**content)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} is missing: the checkpoint is incomplete") from None
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint file {path} is not a valid state.json ({first_line(exc)})") from None


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} is missing: {what}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint file {path} is not valid JSON ({first_line(exc)})") from None


def _check_manifest(directory: Path, rank: int) -> None:
    path = directory / _MANIFEST.format(rank=rank)
    if not path.exists() and (directory / f"rank{rank}.pt").exists():
        raise CheckpointError(f"checkpoint {directory} was written by an older version (format 1: pickled per-rank "
                              f"state, no manifest), which is not loaded because a pickle can run code; start a new "
                              f"run.name")
    manifest = _read_json(path, "the checkpoint is incomplete (a worker's part was not written or uploaded)")
    try:
        listed = dict(manifest["files"])
        version = manifest["format_version"]
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"checkpoint file {path} is not a manifest (no files / format_version)") from None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {directory} has format {version}; this version reads format "
                              f"{FORMAT_VERSION} only")
    for name, expected in listed.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
            raise CheckpointError(f"checkpoint file {path} lists {name!r}, which is not a file of this checkpoint")
        file = directory / name
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint file {file} is missing (listed in {path.name})") from None
        if size != expected["bytes"]:
            raise CheckpointError(f"checkpoint file {file} is corrupt: {size} bytes, {path.name} says "
                                  f"{expected['bytes']} (truncated or overwritten)")
        if sha256_file(file) != expected["sha256"]:
            raise CheckpointError(f"checkpoint file {file} is corrupt: its sha256 differs from {path.name}")


def verify_checkpoint(directory: str | Path) -> TrainState:
    """Check every rank's manifest and every file it lists; return the checkpoint's state.

    Raises :class:`CheckpointError` naming the first file that is missing, truncated or changed."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} is missing")
    _check_manifest(directory, 0)
    state = read_state(directory)
    for rank in range(1, state.num_workers):
        _check_manifest(directory, rank)
    return state


def _load_tensors(path: Path) -> Any:
    """``torch.load`` of data only: a file holding anything but tensors and plain containers is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"(?:Unsupported global: |unsupported )GLOBAL (\S+)", str(exc))  # torch 2.13's two wordings
        what = f" (it asks for {found.group(1)})" if found else ""
        raise CheckpointError(f"checkpoint file {path} is not plain tensor data{what} and was not loaded: a pickle "
                              f"can run code. Resume only from checkpoints this platform wrote, or start a new "
                              f"run.name") from None
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} is missing") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint file {path} cannot be read ({first_line(exc, 300)})") from None


def load_checkpoint(directory: str | Path, *, rank: int, model: nn.Module,
                    optimizer: torch.optim.Optimizer) -> tuple[TrainState, dict[str, Any]]:
    """Restore model, optimizer (plain, DDP or FSDP: every rank calls) and this rank's RNG states; return the
    loop state and this rank's data position. Call :func:`verify_checkpoint` first; this reads data only."""
    directory = Path(directory)
    state = read_state(directory)
    from yxanul.train.parallel import load_full_optimizer_state_dict, load_full_state_dict, unwrap

    weights = _load_tensors(directory / "model.pt")
    fp8_state = None
    if (directory / "fp8_state.json").exists():
        meta = _read_json(directory / "fp8_state.json", "")
        own = {k for k in unwrap(model).state_dict() if k in meta}  # a BF16 model has none: no TE needed
        if own:
            fp8_state = fp8_state_from_data(_load_tensors(directory / "fp8_state.pt"), meta, keys=own)
    with _own_te_payloads() if fp8_state else contextlib.nullcontext():
        load_full_state_dict(model, weights, fp8_state)
    load_full_optimizer_state_dict(model, optimizer, _load_tensors(directory / "optimizer.pt"))
    mine = directory / f"rank{rank}.json"
    if not mine.exists():
        raise ConfigError(f"checkpoint {directory} has no state for worker rank {rank} (it was written by "
                          f"{state.num_workers} workers); resume with scaling.num_workers={state.num_workers}")
    per_rank = _read_json(mine, "")
    try:
        _set_rng_state(per_rank["rng"])
        data = dict(per_rank["data"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint file {mine} is not a valid per-rank state ({first_line(exc)})") from None
    return state, data


# ---------------------------------------------------------------------------------------------------
# Which checkpoint to resume from


def candidates(latest: Any) -> list[Any]:
    """``latest`` (a ``ray.train.Checkpoint``) and then the older checkpoints of the same run folder, newest
    first: where to fall back when the latest does not verify. Ray names them ``checkpoint_<date>_<time>``,
    so names sort by age."""
    import pyarrow.fs
    from ray.train import Checkpoint

    folder, _, name = latest.path.rstrip("/").rpartition("/")
    try:
        infos = latest.filesystem.get_file_info(pyarrow.fs.FileSelector(folder))
    except OSError:
        return [latest]
    older = sorted((i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory
                    and i.base_name.startswith("checkpoint_") and i.base_name < name), reverse=True)
    return [latest, *(Checkpoint(path=f"{folder}/{n}", filesystem=latest.filesystem) for n in older)]


RESUME_KEYS: dict[str, str] = {"scaling.num_workers": "num_workers", "train.tokens_per_step": "tokens_per_step",
                               "run.seed": "seed", "train.max_tokens": "max_tokens",
                               "data.shuffle_window": "shuffle_window", "data.order_seed": "order_seed"}
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
