"""Where trials can run: the accelerator types of this machine or of the Ray cluster."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ClusterView", "local_cluster_view", "ray_cluster_view"]


@dataclass(frozen=True)
class ClusterView:
    """What the placement check knows about the cluster."""

    accelerator_types: tuple[str, ...]
    """Ray accelerator types of the cluster's GPU nodes (empty: no GPUs)."""
    transformer_engine: bool | None
    """Whether Transformer Engine is importable where trials run (None: unknown, a remote cluster)."""
    source: str
    """Where this view comes from, for the table header."""


def local_cluster_view() -> ClusterView:
    """This machine, without starting Ray: its CUDA devices (via torch) and Transformer Engine."""
    import importlib.util

    from yxanul.accelerators import spec_for_device_name

    types: list[str] = []
    try:
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                name = torch.cuda.get_device_name(i)
                spec = spec_for_device_name(name)
                types.append(spec.name if spec else name)
    except ImportError:
        pass
    te = importlib.util.find_spec("transformer_engine") is not None
    what = ", ".join(sorted(set(types))) or "no GPU"
    return ClusterView(tuple(sorted(set(types))), te, f"this machine ({what}; Ray not started)")


def ray_cluster_view(local: bool) -> ClusterView:
    """The connected Ray cluster's accelerator types; Transformer Engine is checked only when the
    cluster is this machine (``local``)."""
    import importlib.util

    import ray

    from yxanul.accelerators import available_accelerator_types, launcher_accelerator_types

    # Nodes running now, plus the node types the autoscaler may start (a cluster scaling from zero
    # has no GPU node yet, but FP8 trials are still placeable there).
    running = available_accelerator_types(ray.cluster_resources())
    types = tuple(dict.fromkeys([*running, *launcher_accelerator_types()]))
    te = importlib.util.find_spec("transformer_engine") is not None if local else None
    where = "local Ray" if local else "Ray cluster"
    return ClusterView(types, te, f"{where} ({', '.join(types) or 'no GPU'})")
