"""Data parallelism: the one place that wraps a model for several workers, and portable state dicts.

    model = wrap_model(model, cfg.scaling.strategy, device)   # after precision.apply, before the optimizer
    optimizer = build_optimizer(model, cfg.optim)
    ...
    weights = full_state_dict(model)                # every rank calls; rank 0 gets the full fp32 weights on CPU
    load_full_state_dict(other_model, weights)      # DDP, FSDP or a plain single-process model alike

Strategies (``scaling.strategy``):

- ``ddp``: ``torch.nn.parallel.DistributedDataParallel`` around the model when there is more than one
  worker (``device_ids=[device.index]`` on CUDA), exactly what the training loop did before this module;
  the model is replicated, gradients are averaged over workers.
- ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``): each transformer block is one sharding
  unit, then the root (embedding, final norm, head). Parameters, gradients and optimizer state are
  sharded over the workers (dim 0 of each parameter); a block's full weights exist only while it runs.
  Gradients are averaged over workers, as under DDP.

Precision stays :mod:`yxanul.precision`'s business under both: master weights, gradients and optimizer
state are fp32, and the forward runs under its autocast (bf16, plus Transformer Engine FP8 for the
swapped layers). FSDP's mixed-precision policy therefore keeps parameters in fp32 for the all-gather
and reduces gradients in fp32: the arithmetic is the same as DDP's, so DDP and FSDP runs of one config
match up to floating-point summation order (tests/unit/test_parallel.py checks 100 steps on CPU). An
all-gather in bf16 would halve FSDP's parameter traffic but changes numerics (norm weights would be
bf16 too); it is deliberately not done here.

Transformer Engine under FSDP2 (checked 2026-11-25 in TE's sources; not runnable here, no GPU): TE's own
tests (``tests/pytorch/distributed/fsdp2_tests/run_fsdp2_model.py``) shard ``te.Linear`` and
``te.TransformerLayer`` with ``fully_shard`` per child and then the root, with fp32 parameters and every
FP8 recipe (delayed, current, block, MXFP8); TE casts the all-gathered high-precision weight to FP8 inside
its forward, which is the mode used here. FP8 *all-gather* needs FP8 primary weights
(``te.quantized_model_init``, TE PR #1358) and is not used (the platform keeps fp32 master weights);
TE's tests mark block scaling + FP8 init as an expected failure. TE's tests restore custom attributes
that TE sets on its parameters after ``fully_shard`` replaces them by DTensors: :func:`wrap_model` does
the same. FP8 with FSDP2 has not been run on this platform yet (scripts/gpu_multi.sh does it on a
multi-GPU machine).

Every rank must call :func:`full_state_dict`, :func:`full_optimizer_state_dict` and the two loaders
(FSDP gathers shards collectively); with DDP or a single process they are local.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from yxanul.errors import ConfigError, PrecisionError
from yxanul.precision import EXTRA_STATE_SUFFIX, load_model_state, split_state_dict

__all__ = [
    "STRATEGIES",
    "Strategy",
    "full_optimizer_state_dict",
    "full_state_dict",
    "is_sharded",
    "load_full_optimizer_state_dict",
    "load_full_state_dict",
    "unwrap",
    "wrap_model",
]

Strategy = Literal["ddp", "fsdp"]
STRATEGIES: tuple[str, ...] = ("ddp", "fsdp")

def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (FSDP2 shards in place: an FSDP model is its own inner model)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def is_sharded(model: nn.Module) -> bool:
    """True when ``model`` (or a submodule) was sharded by FSDP2's ``fully_shard``."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in unwrap(model).modules())


def _blocks(model: nn.Module) -> list[nn.Module]:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ConfigError(f"scaling.strategy=fsdp shards a model block by block, but {type(model).__name__} has no "
                          f"non-empty `blocks` ModuleList; use scaling.strategy=ddp")
    return list(blocks)


def wrap_model(model: nn.Module, strategy: Strategy, device: torch.device) -> nn.Module:
    """Prepare ``model`` (already on ``device``, precision already applied) for data-parallel training.

    With one worker (no process group, or a group of one) the model is returned unchanged, whatever the
    strategy. ``ddp`` returns a ``DistributedDataParallel`` wrapper (the optimizer may take the inner
    model's parameters or the wrapper's: they are the same tensors). ``fsdp`` shards ``model`` in place
    and returns it: build the optimizer *after* this call, from the returned model's parameters (they are
    now DTensor shards). Attributes of the model (``vocab_size``...) stay readable on the result.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown scaling.strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    world = _world_size()
    if world == 1:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        wrapped = DistributedDataParallel(model, device_ids=ids)
        wrapped.vocab_size = model.vocab_size  # train_step reads it from the module it gets
        return wrapped
    return _fully_shard(model, device, world)


def _fully_shard(model: nn.Module, device: torch.device, world: int) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    wrong = sorted({str(p.dtype) for p in model.parameters() if p.dtype != torch.float32})
    if wrong:
        raise PrecisionError(f"FSDP keeps fp32 master weights, but the model has {wrong} parameters; build it in "
                             f"fp32 and let precision.mode choose the compute dtype")
    blocks = _blocks(model)
    # Transformer Engine sets attributes on its parameters; fully_shard replaces parameters by DTensors, which
    # would lose them (TE's own FSDP2 tests restore them the same way).
    attrs = {name: {k: v for k, v in vars(p).items() if not k.startswith("_")} for name, p in model.named_parameters()}
    mesh = init_device_mesh(device.type, (world,))
    # fp32 all-gather and fp32 gradient reduction: compute precision is the autocast's (yxanul.precision).
    policy = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    for name, p in model.named_parameters():
        for key, value in attrs.get(name, {}).items():
            setattr(p, key, value)
    return model


# ---------------------------------------------------------------------------------------------------
# Portable state dicts


def _options(**kwargs: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_state_dict(model: nn.Module, copy: bool = True) -> dict[str, Any]:
    """The model's full (unsharded) state dict on the CPU, keyed as a plain single-process model's.

    Under FSDP every rank must call it (it all-gathers); rank 0 receives the weights, other ranks an
    empty dict. Under DDP and in a single process every rank gets a CPU copy, or with ``copy=False`` the model's
    own tensors where they are (a caller that copies them itself, once: :class:`yxanul.train.checkpoint.HostBuffers`).
    Transformer Engine's FP8 scaling state (``*._extra_state``) is included as the model holds it;
    :func:`yxanul.precision.split_state_dict` separates it.
    """
    inner = unwrap(model)
    if is_sharded(inner):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(inner, options=_options(cpu_offload=True))
    return {k: (v.detach().to("cpu", copy=True) if copy else v.detach()) if isinstance(v, torch.Tensor) else v
            for k, v in inner.state_dict().items()}


def load_full_state_dict(model: nn.Module, state_dict: Mapping[str, Any],
                         fp8_state: Mapping[str, Any] | None = None) -> None:
    """Load a full state dict (from :func:`full_state_dict`, or a plain ``model.state_dict()``) into a plain,
    DDP or FSDP model. Every rank passes the same full weights (e.g. each read the checkpoint file).

    Keys must match exactly (a :class:`PrecisionError` names the missing and unexpected ones); FP8 scaling
    state follows :func:`yxanul.precision.load_model_state`'s rules (kept only where the model has it).
    """
    inner = unwrap(model)
    if not is_sharded(inner):
        load_model_state(inner, state_dict, fp8_state)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    weights, _ = split_state_dict(state_dict)
    own_keys = set(inner.state_dict().keys())  # FQNs; local under FSDP2 (sharded tensors, no collective)
    missing = sorted(k for k in own_keys if k not in weights and not k.endswith(EXTRA_STATE_SUFFIX))
    unexpected = sorted(k for k in weights if k not in own_keys)
    if missing or unexpected:
        raise PrecisionError(f"checkpoint does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]} "
                             f"(was it saved from another model shape? compare model.* in both configs)")
    restore = {k: v for k, v in (fp8_state or {}).items() if k in own_keys}
    set_model_state_dict(inner, {**weights, **restore}, options=_options(strict=False))


def full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, copy: bool = True) -> dict[str, Any]:
    """The optimizer's full state on the CPU, keyed by parameter name (not by position), so that it loads
    into the optimizer of a plain, DDP or FSDP model of the same shape (``copy=False``, not sharded: the optimizer's
    own tensors where they are, for a caller that copies them itself).

    Every rank must call it; under FSDP rank 0 receives it and other ranks get an empty dict.
    """
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    inner = unwrap(model)
    if is_sharded(inner):
        return get_optimizer_state_dict(inner, optimizer, options=_options(cpu_offload=True))
    # Not sharded: nothing to gather, and cpu_offload would need a process group (ranks > 0 get nothing).
    state = get_optimizer_state_dict(inner, optimizer, options=_options())
    return _to_cpu(state) if copy else state


def load_full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer,
                                   state: Mapping[str, Any]) -> None:
    """Load a state from :func:`full_optimizer_state_dict` (saved by any strategy) into ``optimizer``, which was
    built from ``model``'s parameters. Every rank passes the same full state."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(unwrap(model), optimizer, dict(state), options=_options())


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value
