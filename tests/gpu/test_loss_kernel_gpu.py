"""GPU proof of the fused head's loss kernel (yxanul.loss_kernel), compiled by Triton for the card: on a chunk of
yxanul-270m's logits (4,096 x 200,064 BF16, 200,005 real columns) its loss and the gradient it writes over the
logits equal the reference kernels' within fp32 error and BF16 rounding to nearest (run: ``pytest -m gpu
tests/gpu``). The fused head that launches it is held to the plain head in tests/gpu/test_head_gpu.py."""

from __future__ import annotations

import pytest
import torch

from tests.gpu.test_fp8 import DEV
from yxanul.loss_kernel import chunk_loss_and_grad_
from yxanul.model import IGNORE_INDEX, _ce_backward_chunk, _ce_forward_chunk

pytestmark = pytest.mark.gpu

ROWS, COLUMNS, VOCAB = 4096, 200_064, 200_005


@pytest.mark.parametrize("block,num_warps", [(32768, 32), (4096, 8)])
def test_the_loss_kernel_equals_the_reference_kernels_on_a_chunk_of_200k_logits(block, num_warps):
    g = torch.Generator(device=DEV).manual_seed(0)
    logits = (torch.randn(ROWS, COLUMNS, device=DEV, generator=g) * 3).to(torch.bfloat16)
    targets = torch.randint(0, VOCAB, (ROWS,), device=DEV, generator=g)
    targets[::7] = IGNORE_INDEX
    scale = torch.tensor(0.125, device=DEV)
    # The reference in fp64 on the same BF16 logits (the eager kernels' arithmetic, exactly).
    lse, ref_loss = _ce_forward_chunk(logits.double(), targets, VOCAB)
    ref_grad = _ce_backward_chunk(logits.double(), targets, lse, scale.double(), VOCAB)
    got = logits.clone()
    loss = chunk_loss_and_grad_(got, targets, VOCAB, scale, IGNORE_INDEX, block=block, num_warps=num_warps)
    torch.cuda.synchronize()
    # fp32 (u = 2^-24): a row's log-sum-exp is off by at most ~(columns + 2 |x|max) u, its loss as much again; the
    # rows' sum adds u per row of the total. A gradient element: that, relatively, then half a BF16 ulp (2^-8
    # relative) from rounding to nearest.
    u, xmax = 2.0**-24, float(logits.abs().max())
    row_error = u * (VOCAB + 4 * xmax + 16)
    assert abs(float(loss) - float(ref_loss)) <= ROWS * row_error + ROWS * u * abs(float(ref_loss))
    bound = (row_error + 2.0**-8) * ref_grad.abs() + 0.125 * row_error
    assert ((got.double() - ref_grad).abs() <= bound).all()
    ignored = targets == IGNORE_INDEX
    assert (got[ignored] == 0).all() and (got[:, VOCAB:] == 0).all()



def test_the_plain_head_sums_its_weight_gradient_in_fp32_either_way(monkeypatch):
    """The plain head's weight gradient summed over chunks in fp32, by the GEMM itself where this torch's addmm
    takes an fp32 input, else by an fp32 GEMM output added after it (forced here as well): the same sum either way,
    and the head's backward through autograd's to BF16 rounding of each chunk's product."""
    from torch.nn import functional as F

    from yxanul import model as model_module
    from yxanul.model import linear_cross_entropy

    g = torch.Generator(device=DEV).manual_seed(2)
    weight = (torch.randn(4096, 256, device=DEV, generator=g) * 0.05).requires_grad_()
    hidden = torch.randn(2048, 256, device=DEV, generator=g)
    targets = torch.randint(0, 4000, (2048,), device=DEV, generator=g)

    def weight_grad(plain: bool) -> torch.Tensor:
        weight.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = linear_cross_entropy(hidden, lambda x, _: F.linear(x, weight), [weight], targets, 4000,
                                        chunk_tokens=512, plain=plain)
        loss.backward()
        return weight.grad.clone()

    native = model_module._addmm_adds_into_fp32(DEV)
    print(f"this torch's addmm adds BF16 products into an fp32 input: {native}")
    ours, autograd = weight_grad(True), weight_grad(False)
    monkeypatch.setitem(model_module._ADDMM_INTO_FP32, DEV, False)
    added_after = weight_grad(True)
    # fp32 sums of the same fp32-accumulated chunk products, in another order of additions
    assert (ours - added_after).norm() <= 2**-20 * ours.norm()
    # autograd sums four BF16-rounded chunk products (2^-8 relative each) where the plain head sums them unrounded
    assert (ours - autograd).norm() <= 2**-7 * autograd.norm()


def test_a_profiled_fused_head_puts_the_loss_kernel_in_the_loss_s_time():
    """The Triton kernel is launched from Python, outside any op, so the profiler links it to no op (on an H100,
    2026-12-08: its driver call and the kernel share a correlation id, linked to none). The step's split by kind
    (yxanul.profiling) still counts it as the loss's time, by where its launch call was made."""
    from torch.nn import functional as F

    from yxanul.model import linear_cross_entropy
    from yxanul.profiling import attention_share, profiled, recorded_events

    g = torch.Generator(device=DEV).manual_seed(3)
    weight = (torch.randn(COLUMNS, 640, device=DEV, generator=g) * 0.02).requires_grad_()
    hidden = torch.randn(8192, 640, device=DEV, generator=g, requires_grad=True)
    targets = torch.randint(0, VOCAB, (8192,), device=DEV, generator=g)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = linear_cross_entropy(hidden, lambda x, _: F.linear(x, weight), [weight], targets, VOCAB,
                                        chunk_tokens=4096, plain=True)
        loss.backward()

    step()
    torch.cuda.synchronize()
    with profiled(DEV) as prof:
        step()
        torch.cuda.synchronize()
    events = list(recorded_events(prof))
    kernel_ms = sum(e.end_ns() - e.start_ns() for e in events
                    if e.device_type() != torch.autograd.DeviceType.CPU and "_ce_chunk_kernel" in e.name()) / 1e6
    by_kind = dict(attention_share(events, "cuda").device_ms)
    print(f"loss kernel {kernel_ms:.3f} ms; by kind {by_kind}")
    assert kernel_ms > 0
    assert by_kind["cross_entropy"] >= kernel_ms  # the kernel and the loss's own small ops (the rows' sum)
    assert by_kind["other"] < kernel_ms  # not counted as "other", where the job put it on 2026-12-08
