"""FP8 state in checkpoints: weights any precision loads, Transformer Engine's scaling state apart.

:func:`split_state_dict` separates TE's FP8 scaling state (``*._extra_state``) from the weights, and
:func:`load_model_state` loads weights saved by a BF16 or FP8 model into either (checkpoints are portable
across precisions).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from yxanul.errors import PrecisionError

__all__ = ["EXTRA_STATE_SUFFIX", "load_model_state", "split_state_dict"]

EXTRA_STATE_SUFFIX = "_extra_state"
"""State-dict keys of Transformer Engine's FP8 scaling state end with this."""

def split_state_dict(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(weights, fp8_state): the model weights, loadable by any precision, and TE's FP8 scaling
    state (``*._extra_state``), meaningful only to an FP8 model with the same layers."""
    weights = {k: v for k, v in state.items() if not k.endswith(EXTRA_STATE_SUFFIX)}
    fp8_state = {k: v for k, v in state.items() if k.endswith(EXTRA_STATE_SUFFIX)}
    return weights, fp8_state


def load_model_state(model: nn.Module, weights: Mapping[str, Any],
                     fp8_state: Mapping[str, Any] | None = None) -> None:
    """Load weights saved by a model of any precision into ``model`` (BF16 or FP8).

    Weights must match exactly (every parameter present, no unknown key). TE's FP8 scaling state
    in ``weights`` is ignored; pass it as ``fp8_state`` to restore it into an FP8 model with the
    same TE layers (keys the model lacks are ignored: a BF16 model has no scaling state; an FP8
    model given none starts its scaling afresh).
    """
    weights, stray = split_state_dict(weights)
    own_keys = set(model.state_dict().keys())
    missing = sorted(k for k in own_keys if k not in weights and not k.endswith(EXTRA_STATE_SUFFIX))
    unexpected = sorted(k for k in weights if k not in own_keys)
    if missing or unexpected:
        raise PrecisionError(
            "checkpoint does not fit this model: "
            + (f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}" if unexpected else "")
            + " (was it saved from another model shape? compare model.* in both configs)"
        )
    restore = {k: v for k, v in (fp8_state or {}).items() if k in own_keys}
    try:
        result = model.load_state_dict({**weights, **restore}, strict=False)
    except RuntimeError as exc:
        if "NVTE_ALLOW_UNSAFE_PICKLE_EXTRA_STATE" not in str(exc):
            raise
        raise PrecisionError(
            "the checkpoint's FP8 scaling state is delayed-scaling metadata, which Transformer Engine stores "
            "as a pickle and refuses to load by default; if the checkpoint is yours, set "
            "NVTE_ALLOW_UNSAFE_PICKLE_EXTRA_STATE=1, or load only the weights (scaling restarts), or train with "
            "precision.recipe=current"
        ) from None
    leftover = [k for k in result.missing_keys if not k.endswith(EXTRA_STATE_SUFFIX)]
    if leftover or result.unexpected_keys:  # cannot happen after the checks above
        raise PrecisionError(f"checkpoint load failed: missing {leftover}, unexpected {result.unexpected_keys}")
