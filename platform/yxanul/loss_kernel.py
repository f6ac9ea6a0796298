"""The fused head's loss and gradient for one chunk of logits, as one Triton kernel on a GPU.

:class:`yxanul.model._LinearCrossEntropy` needs, per chunk of (n, V_padded) logits, the summed loss and
d loss / d logits (softmax - one-hot). Composed of the two compiled chunk kernels (``_ce_forward_chunk``, then
``_ce_backward_chunk``) that is four passes over the chunk's BF16 logits in HBM: two reads for the log-sum-exp
(Inductor's reduction reads the 200k-wide row once for its max and once for its sum), one read and one write for
the gradient, into a second buffer as large as the logits. Here, one program per row reads the row once for an
online log-sum-exp (max and sum carried block by block), then reads it again and writes the gradient over it in
place: three passes and no second buffer (Liger-Kernel's cross-entropy kernel is built the same way). The
arithmetic is the reference's, in fp32: ``lse = logsumexp(x[:vocab])``, loss ``lse - x[target]``, gradient
``(exp(x - lse) - onehot) * scale`` rounded to the logits' dtype, zero on padded columns and on ignored rows.

Triton ships with CUDA builds of PyTorch and is imported on first use; CPU tensors take the reference kernels
(tests/unit/test_loss.py runs this kernel in Triton's interpreter against fp64 when Triton is installed; the GPU
tests in tests/gpu/test_loss_kernel_gpu.py compile it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["BLOCK_COLUMNS", "NUM_WARPS", "chunk_loss_and_grad_"]

BLOCK_COLUMNS = 4096
"""Columns a program reads per step of its loops (a power of two; fewer for narrower rows)."""
NUM_WARPS = 8
"""Warps per program (one row). The launch shape measured fastest of five on an H100 for 4,096 x 200,064 BF16
logits (scripts/ce_chunk_bench.py, 2026-12-08, docs/benchmarks.md): 4096 x 8 1.77 ms, 8192 x 16 1.83, 16384 x 16
1.88, 32768 x 32 (Liger-Kernel's) 2.10-2.14, 32768 x 16 2.25; the compiled kernels 2.41-2.52. Small programs, many
rows in flight: the loads, not the arithmetic, bound it."""

_kernel: list[Callable[..., object]] = []


def _build() -> Callable[..., object]:
    import triton
    import triton.language as tl

    @triton.jit
    def _ce_chunk_kernel(logits_ptr, row_stride, targets_ptr, loss_ptr, scale_ptr, n_cols, vocab, ignore_index,
                         BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        base = logits_ptr + row * row_stride
        offsets = tl.arange(0, BLOCK)
        # Pass 1: online log-sum-exp over the vocabulary's columns (padded columns excluded).
        m = float("-inf")
        s = 0.0
        for start in range(0, vocab, BLOCK):
            cols = start + offsets
            x = tl.load(base + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, axis=0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
            m = m_new
        lse = m + tl.log(s)
        target = tl.load(targets_ptr + row)
        valid = target != ignore_index
        target = tl.where(valid, target, 0)
        picked = tl.load(base + target).to(tl.float32)  # read before pass 2 overwrites the row
        tl.store(loss_ptr + row, tl.where(valid, lse - picked, 0.0))
        weight = tl.where(valid, tl.load(scale_ptr).to(tl.float32), 0.0)
        # Pass 2: the gradient, written over the logits it is computed from.
        for start in range(0, n_cols, BLOCK):
            cols = start + offsets
            inside = cols < n_cols
            x = tl.load(base + cols, mask=inside, other=0.0).to(tl.float32)
            probs = tl.where(cols < vocab, tl.exp(x - lse), 0.0)
            grad = (probs - tl.where(cols == target, 1.0, 0.0)) * weight
            tl.store(base + cols, grad.to(logits_ptr.dtype.element_ty), mask=inside)

    return _ce_chunk_kernel


def chunk_loss_and_grad_(logits: torch.Tensor, targets: torch.Tensor, vocab: int, scale: torch.Tensor,
                         ignore_index: int, *, block: int = BLOCK_COLUMNS, num_warps: int = NUM_WARPS
                         ) -> torch.Tensor:
    """The summed loss (fp32, 0-d) of (n, V_padded) ``logits`` against ``targets`` (n,) over columns < ``vocab``;
    ``logits`` is overwritten with d(loss_sum)/d(logits) * ``scale`` (a 0-d tensor on the logits' device: no sync).

    ``logits`` must be contiguous along its columns. ``block`` and ``num_warps`` are the kernel's launch shape
    (scripts/ce_chunk_bench.py compares a few)."""
    if logits.dim() != 2 or logits.stride(1) != 1:
        raise ValueError(f"logits must be 2-D with contiguous columns, got shape {tuple(logits.shape)} "
                         f"strides {logits.stride()}")
    if not _kernel:
        _kernel.append(_build())
    n, n_cols = logits.shape
    losses = torch.empty(n, dtype=torch.float32, device=logits.device)
    if n:
        block = min(block, 1 << max(n_cols - 1, 1).bit_length())
        _kernel[0][(n,)](logits, logits.stride(0), targets, losses, scale, n_cols, vocab, ignore_index,
                         BLOCK=block, num_warps=num_warps)
    return losses.sum()
