"""The attention share of a profiled step (yxanul.profiling): which events are attention, summed without counting a
microsecond twice, on a synthetic event tree built from torch's own FunctionEvent (exact sums: the tree's times are
whole microseconds) and on a real profile of the tiny model's train step on CPU (checked against the total PyTorch's
own table prints, and bounded by the attention ops' own self times: timings themselves are never compared)."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import DeviceType
from torch.autograd.profiler_util import EventList, FunctionEvent

from yxanul.profiling import attention_share, is_attention_op, profiled


def test_attention_ops_and_autograd_nodes_are_named_but_not_their_wrappers_or_neighbours():
    for name in ("aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention",
                 "aten::_scaled_dot_product_efficient_attention_backward", "aten::_scaled_dot_product_cudnn_attention",
                 "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
                 "aten::_flash_attention_forward", "aten::_efficient_attention_backward",
                 "ScaledDotProductFlashAttentionBackward0", "ScaledDotProductFlashAttentionForCpuBackward0",
                 "ScaledDotProductCudnnAttentionBackward0", "FlashAttentionBackward0"):
        assert is_attention_op(name), name
    for name in ("autograd::engine::evaluate_function: ScaledDotProductFlashAttentionBackward0", "aten::mm",
                 "aten::bmm", "aten::_softmax", "aten::repeat_interleave", "MmBackward0", "flash_fwd_kernel"):
        assert not is_attention_op(name), name


def _tree(use_device: str | None) -> list[FunctionEvent]:
    """A step's events: forward SDPA (the flash op inside the composite), a matmul, the SDPA backward inside the
    autograd engine's wrapper (which also adds a gradient into the next node's buffer), an optimizer annotation
    with a foreach op, an NCCL all-reduce; with ``use_device`` each op's kernels as device events too."""
    ids = iter(range(1, 100))

    def cpu(name: str, start: int, end: int, **kw) -> FunctionEvent:
        return FunctionEvent(next(ids), name, thread=1, start_us=start, end_us=end, use_device=use_device, **kw)

    events = [cpu("aten::scaled_dot_product_attention", 0, 100),
              cpu("aten::_scaled_dot_product_flash_attention", 10, 90),
              cpu("aten::mm", 100, 150),
              cpu("autograd::engine::evaluate_function: ScaledDotProductFlashAttentionBackward0", 200, 400),
              cpu("ScaledDotProductFlashAttentionBackward0", 210, 390),
              cpu("aten::_scaled_dot_product_flash_attention_backward", 220, 380),
              cpu("aten::add_", 392, 398),
              cpu("Optimizer.step#AdamW.step", 400, 500, is_user_annotation=True),
              cpu("aten::_foreach_add_", 410, 490),
              cpu("nccl:all_reduce", 500, 510)]
    if use_device:
        kernels = {"aten::_scaled_dot_product_flash_attention": ("flash_fwd_kernel", 40), "aten::mm": ("gemm", 30),
                   "aten::_scaled_dot_product_flash_attention_backward": ("flash_bwd_kernel", 80),
                   "aten::add_": ("elementwise_add", 5), "aten::_foreach_add_": ("multi_tensor_apply", 10),
                   "nccl:all_reduce": ("ncclDevKernel_AllReduce_Sum_f32", 50)}
        start = 1000
        for event in list(events):
            if event.name in kernels:
                kernel, us = kernels[event.name]
                event.append_kernel(kernel, 0, us)
                events.append(FunctionEvent(next(ids), kernel, thread=7, start_us=start, end_us=start + us,
                                            use_device=use_device, device_type=DeviceType.CUDA))
                start += us
        # the GPU range of the optimizer's record_function: it spans kernels already counted
        events.append(FunctionEvent(next(ids), "Optimizer.step#AdamW.step", thread=7, start_us=1160, end_us=1175,
                                    use_device=use_device, device_type=DeviceType.CUDA, is_user_annotation=True))
    tree = EventList(events, use_device=use_device)
    tree._build_tree()
    return list(tree)


def test_gpu_device_time_counts_each_kernel_once_without_communication_or_annotations():
    measured = attention_share(_tree("cuda"), "cuda")
    # attention: the forward flash kernel (40, inside the composite op) + the backward one (80); the gradient add in
    # the engine's wrapper (5) is not attention. step: every kernel once (40 + 30 + 80 + 5 + 10), without NCCL (50)
    # and the annotation's GPU range (15).
    assert (measured.attention_ms, measured.step_ms, measured.device) == (0.12, 0.165, "cuda")
    assert measured.share == pytest.approx(120 / 165, rel=1e-15)  # the microseconds are divided by 1000 first


def test_cpu_time_counts_outermost_attention_ops_and_every_microsecond_in_ops_once():
    measured = attention_share(_tree(None), "cpu")
    # attention: the composite forward op (100) + the backward node (180), not the wrapper around it (200)
    # step: the top-level ops' spans, 100 + 50 + 200 + 100 + 10 (each nested op's time is inside its parent's)
    assert (measured.attention_ms, measured.step_ms, measured.device) == (0.28, 0.46, "cpu")


def test_no_recorded_time_is_no_measurement():
    assert attention_share([], "cpu") is None
    assert attention_share([e for e in _tree("cuda") if e.device_type == DeviceType.CPU], "cuda") is None


def test_a_real_train_step_profiled_on_cpu():
    from yxanul.config import ModelConfig, OptimConfig, PrecisionConfig
    from yxanul.model import Yxanul
    from yxanul.precision import Precision
    from yxanul.train.step import build_optimizer, train_step

    torch.manual_seed(0)
    model = Yxanul(ModelConfig(preset="tiny"), 256)
    optimizer = build_optimizer(model, OptimConfig())
    precision = Precision(PrecisionConfig(mode="fp32"), "cpu")
    batch = list(torch.randint(1, 256, (4, 64)).split(2))
    with profiled(torch.device("cpu")) as prof:
        result = train_step(model, optimizer, batch, lr=1e-3, precision=precision)
    assert torch.isfinite(result.loss)
    events = prof.events()
    measured = attention_share(events, "cpu")
    assert 0 < measured.share < 1
    # the step's CPU time is the total PyTorch's own table prints ("Self CPU time total"), up to summation order
    assert measured.step_ms == pytest.approx(prof.key_averages().self_cpu_time_total / 1000, rel=1e-9)
    # the flash kernels for CPU ran forward and backward, inside what was counted as attention
    names = {e.name for e in events}
    assert {"aten::_scaled_dot_product_flash_attention_for_cpu",
            "aten::_scaled_dot_product_flash_attention_for_cpu_backward"} <= names
    own = sum(e.self_cpu_time_total for e in events if is_attention_op(e.name)) / 1000
    assert own <= measured.attention_ms * (1 + 1e-9)
