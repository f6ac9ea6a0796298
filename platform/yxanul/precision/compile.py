"""Compilation around Transformer Engine: regional ``torch.compile`` and the shared Inductor cache.

    compile_model(model)                 # blocks (or their TE-free parts) and the final norm, in place
    use_compile_cache(layout.compile_cache)   # Inductor's and Triton's caches in one folder, before compiling

Both live here because what may be compiled depends on the precision: DelayedScaling raises under
``torch.compile``, so a block holding Transformer Engine modules is compiled around them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from yxanul.precision.policy import is_te_module

__all__ = ["COMPILE_CACHE_ENV", "compile_model", "use_compile_cache"]


def compile_model(model: nn.Module, **compile_kwargs: Any) -> nn.Module:
    """Compile ``model`` region by region, in place, around Transformer Engine modules.

    Each top-level child of the model's ``blocks`` without TE modules is compiled whole (one graph,
    reused for every block); a block holding TE modules has its TE-free children (norms, RoPE +
    attention core, SwiGLU) compiled instead, so TE runs eagerly (DelayedScaling raises under
    torch.compile). The final norm is compiled too. State-dict keys do not change.
    """
    def compile_region(module: nn.Module) -> None:
        if not any(is_te_module(m) for m in module.modules()):
            module.compile(**compile_kwargs)
            return
        for child in module.children():
            compile_region(child)

    for block in getattr(model, "blocks", []):
        compile_region(block)
    final_norm = getattr(model, "final_norm", None)
    if final_norm is not None:
        final_norm.compile(**compile_kwargs)
    return model


COMPILE_CACHE_ENV = {
    "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",  # Inductor's compiled graphs, keyed by graph, inputs and versions
    "TORCHINDUCTOR_AUTOGRAD_CACHE": "1",  # AOT autograd's joint forward/backward graphs (needs the FX cache)
}
"""Forced on for a shared compile cache: both are on by default in torch 2.13, but a user's or an image's
environment may have turned them off, and a cache that is silently off measures nothing."""


def use_compile_cache(folder: Path) -> dict[str, str]:
    """Point Inductor's persistent caches at ``folder`` for this process and the compile workers it starts
    (they read the environment): ``TORCHINDUCTOR_CACHE_DIR`` (FX-graph and AOT-autograd caches) and
    ``TRITON_CACHE_DIR`` (``<folder>/triton``, Triton's compiled kernels), and force both caches on. Call before
    the first compilation; returns what was set.

    Why: by default Inductor caches under ``/tmp/torchinductor_<user>``, per machine and lost with it; a sweep's
    trials, a resumed run and a later sweep on the same storage share this folder instead (on a cluster, with a
    shared storage, across nodes too). Every entry is keyed by what it was compiled from (graph, shapes, torch
    and Triton versions, the card), so a stale entry is never used."""
    import os

    folder.mkdir(parents=True, exist_ok=True)
    env = {"TORCHINDUCTOR_CACHE_DIR": str(folder), "TRITON_CACHE_DIR": str(folder / "triton"), **COMPILE_CACHE_ENV}
    os.environ.update(env)
    # The config flags read the environment when torch._inductor.config is first imported, which may have
    # happened already in this process (Ray Train imports torch early): set them too.
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    return env
