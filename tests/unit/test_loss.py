"""The loss: next-token (shifted), chunked = plain (value and gradient), padding excluded, bits/byte; the fused
head (linear_cross_entropy) = the plain head within fp32 error bounds, never holding the whole logits."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from yxanul.model import IGNORE_INDEX, bits_per_byte, cross_entropy, linear_cross_entropy, next_token_targets

REPO = Path(__file__).resolve().parents[2]


def test_targets_are_the_next_token_and_the_last_position_has_none():
    tokens = torch.tensor([[5, 6, 7, 8]])
    assert next_token_targets(tokens).tolist() == [[6, 7, 8, IGNORE_INDEX]]


def _one_hot_logits(ids: torch.Tensor, vocab: int, scale: float = 20.0) -> torch.Tensor:
    return F.one_hot(ids, vocab).float() * scale


def test_loss_rewards_predicting_the_next_token_not_copying_the_current_one():
    vocab = 50
    tokens = torch.randint(0, vocab, (4, 32))
    targets = next_token_targets(tokens)
    copy_current = _one_hot_logits(tokens, vocab)  # the seed's bug: "predict" the input token
    predict_next = _one_hot_logits(targets.clamp(min=0), vocab)
    assert cross_entropy(predict_next, targets, reduction="mean").item() < 1e-6
    assert cross_entropy(copy_current, targets, reduction="mean").item() > 10


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_chunked_loss_equals_plain_loss_value_and_gradient(chunk):
    torch.manual_seed(0)
    vocab, padded = 300, 384
    logits = torch.randn(3, 21, padded, dtype=torch.float64) * 3
    logits[..., vocab:] = 50.0  # padding that would dominate if it took part
    targets = torch.randint(0, vocab, (3, 21))
    targets[:, -1] = IGNORE_INDEX
    targets[1, 4] = IGNORE_INDEX
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    ours = cross_entropy(a, targets, vocab, chunk_tokens=chunk)
    plain = F.cross_entropy(b[..., :vocab].reshape(-1, vocab), targets.reshape(-1), reduction="sum",
                            ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(ours.double(), plain, rtol=1e-6, atol=1e-6)
    (ours * 0.37).backward()
    (plain * 0.37).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-7)
    assert (a.grad[..., vocab:] == 0).all()
    assert (a.grad[1, 4] == 0).all() and (a.grad[:, -1] == 0).all()


def test_chunked_loss_on_bf16_logits_matches_fp32_reference():
    torch.manual_seed(0)
    logits = (torch.randn(2, 50, 256) * 2).bfloat16().requires_grad_(True)
    targets = torch.randint(0, 256, (2, 50))
    ours = cross_entropy(logits, targets, reduction="mean", chunk_tokens=16)
    ref_in = logits.detach().float().requires_grad_(True)
    ref = F.cross_entropy(ref_in.reshape(-1, 256), targets.reshape(-1))
    assert ours.dtype == torch.float32
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    ours.backward()
    ref.backward()
    assert logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(logits.grad.float(), ref_in.grad, rtol=2e-2, atol=1e-4)


def test_mean_reduction_counts_only_targets():
    logits = torch.zeros(1, 4, 8)
    targets = torch.tensor([[1, 2, IGNORE_INDEX, IGNORE_INDEX]])
    assert cross_entropy(logits, targets, reduction="mean").item() == pytest.approx(math.log(8))
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(logits, targets, reduction="max")


def test_bits_per_byte():
    # ln(2) nats per token at 1 byte per token is exactly 1 bit per byte.
    assert bits_per_byte(math.log(2), 1.0) == pytest.approx(1.0)
    assert bits_per_byte(2.0, 4.0) == pytest.approx(2.0 / math.log(2) / 4.0)
    assert float(bits_per_byte(torch.tensor(math.log(2) * 3), 3.0)) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------
# The fused head: linear_cross_entropy never holds the whole logits, and equals the plain head


def _gamma(n: int, unit: float = 2.0**-24) -> float:
    """Higham's gamma_n = n u / (1 - n u): |fl(sum of n products) - exact| <= gamma_n x sum of |products|."""
    return n * unit / (1 - n * unit)


def _problem(n_tokens: int = 45, hidden: int = 24, vocab: int = 300, padded: int = 384, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n_tokens, hidden, generator=g) * 0.7
    w = torch.randn(padded, hidden, generator=g) * 0.5
    b = torch.randn(padded, generator=g) * 0.1
    b[vocab:] = 50.0  # padding that would dominate if it took part
    targets = torch.randint(0, vocab, (n_tokens,), generator=g)
    targets[::7] = IGNORE_INDEX
    return h, w, b, targets, vocab


def _head_and_params(w: torch.Tensor, b: torch.Tensor):
    w, b = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    return (lambda x, _index: F.linear(x, w, b)), [w, b]


def _bounds(h, w, b, targets, vocab, scale):
    """Error bounds (float64) of an fp32 computation of the loss and its gradients, whatever the chunking, from
    the arithmetic: logits are dot products of length hidden (+ bias); log-sum-exp is 1-Lipschitz in the logits
    plus its own rounding over V terms; the softmax moves by at most exp of twice the logit error; the gradient
    GEMMs add gamma_V (d hidden) and gamma_N (d weight, d bias) of their absolute sums."""
    h64, w64, b64 = h.double(), w.double(), b.double()
    n, hid = h.shape
    V = w.shape[0]
    u = 2.0**-24
    z = h64 @ w64.T + b64
    z[:, vocab:] = float("-inf")
    err_z = (_gamma(hid + 1) * (h64.abs() @ w64.abs().T + b64.abs()))[:, :vocab].amax(1)  # per row
    lse = torch.logsumexp(z, 1)
    valid = targets != IGNORE_INDEX
    picked = z.gather(1, targets.clamp(min=0)[:, None]).squeeze(1)
    rows = 2 * err_z + _gamma(V + 4) * (1 + lse.abs() + picked.abs())
    loss_terms = torch.where(valid, lse - picked, 0.0)
    loss_bound = rows[valid].sum() + _gamma(n) * loss_terms.abs().sum()
    p = torch.exp(z - lse[:, None])
    grad = (p - F.one_hot(targets.clamp(min=0), V).double()) * valid[:, None]
    kappa = 3 * err_z + _gamma(V + 8) * (2 + lse.abs())
    err_grad = (p * kappa[:, None] + 2 * u) * valid[:, None]
    gh = scale * (_gamma(V) * (grad.abs() @ w64.abs()) + err_grad @ w64.abs()) + 2 * u * (grad.abs() @ w64.abs())
    gw = scale * (_gamma(n) * (grad.abs().T @ h64.abs()) + err_grad.T @ h64.abs()) + 2 * u * (grad.abs().T @ h64.abs())
    gb = scale * (_gamma(n) * grad.abs().sum(0) + err_grad.sum(0)) + 2 * u * grad.abs().sum(0)
    return loss_bound, gh, gw, gb


@pytest.mark.parametrize("chunk", [1, 7, 16, 45, 1000])
def test_fused_head_equals_the_plain_head_within_the_fp32_error_bound(chunk):
    h, w, b, targets, vocab = _problem()
    scale = 0.37
    # float64 reference: the plain head on all logits
    h64 = h.double().requires_grad_(True)
    w64, b64 = w.double().requires_grad_(True), b.double().requires_grad_(True)
    ref = F.cross_entropy(F.linear(h64, w64, b64)[:, :vocab], targets, reduction="sum", ignore_index=IGNORE_INDEX)
    (ref * scale).backward()
    loss_bound, gh_bound, gw_bound, gb_bound = _bounds(h, w, b, targets, vocab, scale)

    hidden = h.clone().requires_grad_(True)
    head, (wt, bt) = _head_and_params(w, b)
    ours = linear_cross_entropy(hidden, head, [wt, bt], targets, vocab, chunk_tokens=chunk)
    (ours * scale).backward()
    assert ours.dtype == torch.float32
    assert abs(ours.double() - ref.detach()) <= loss_bound
    assert ((hidden.grad.double() - h64.grad).abs() <= gh_bound).all()
    assert ((wt.grad.double() - w64.grad).abs() <= gw_bound).all()
    assert ((bt.grad.double() - b64.grad).abs() <= gb_bound).all()
    assert (wt.grad[vocab:] == 0).all() and (bt.grad[vocab:] == 0).all()  # padded columns never learn
    assert (hidden.grad[targets == IGNORE_INDEX] == 0).all()
    # The bound is tight enough to mean something: it is far below the gradients themselves.
    assert gw_bound.max() < 1e-4 * w64.grad.abs().max()


def test_fused_head_matches_the_plain_fp32_path_the_model_used_before():
    h, w, b, targets, vocab = _problem(seed=1)
    head, params = _head_and_params(w, b)
    plain_h = h.clone().requires_grad_(True)
    plain = cross_entropy(head(plain_h, 0), targets, vocab)
    plain.backward()
    plain_grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    fused_h = h.clone().requires_grad_(True)
    fused = linear_cross_entropy(fused_h, head, params, targets, vocab, chunk_tokens=8)
    fused.backward()
    loss_bound, gh_bound, gw_bound, gb_bound = _bounds(h, w, b, targets, vocab, 1.0)
    assert abs(fused.double() - plain.double()) <= 2 * loss_bound  # each within the bound of the exact value
    assert ((fused_h.grad - plain_h.grad).abs().double() <= 2 * gh_bound).all()
    for p, before, bound in zip(params, plain_grads, (gw_bound, gb_bound)):
        assert ((p.grad - before).abs().double() <= 2 * bound).all()


class _ShapeLog(TorchDispatchMode):
    """Every tensor shape an operation produces."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def _logit_rows(shapes: list[tuple[int, ...]], padded: int) -> int:
    """The most rows of any (rows, padded-vocabulary) tensor produced."""
    return max((s[0] for s in shapes if len(s) == 2 and s[1] == padded), default=0)


def test_fused_head_never_holds_more_than_a_chunk_of_logits_in_forward_or_backward():
    h, w, b, targets, vocab = _problem(n_tokens=64, hidden=12)  # hidden < chunk: the weight's transpose is no match
    head, params = _head_and_params(w, b)
    hidden = h.clone().requires_grad_(True)
    with _ShapeLog() as log:
        linear_cross_entropy(hidden, head, params, targets, vocab, chunk_tokens=16).backward()
    assert _logit_rows(log.shapes, 384) == 16
    with _ShapeLog() as plain:  # the check sees the whole logits where they exist
        cross_entropy(head(h.clone().requires_grad_(True), 0), targets, vocab).backward()
    assert _logit_rows(plain.shapes, 384) == 64


def test_fused_head_without_gradients_computes_the_loss_only():
    h, w, b, targets, vocab = _problem(hidden=12)
    head, params = _head_and_params(w, b)
    with torch.no_grad(), _ShapeLog() as log:
        loss = linear_cross_entropy(h, head, params, targets, vocab, chunk_tokens=16, reduction="mean")
    expected = cross_entropy(head(h, 0).detach(), targets, vocab, reduction="mean")
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert (384, 12) not in log.shapes  # no weight gradient computed
    assert _logit_rows(log.shapes, 384) == 16


def _model_pair(**kw):
    from yxanul.config import ModelConfig
    from yxanul.model import Yxanul

    torch.manual_seed(0)
    plain = Yxanul(ModelConfig(preset="tiny", vocab_size=300, head_chunk_tokens=0, **kw))
    fused = Yxanul(ModelConfig(preset="tiny", vocab_size=300, head_chunk_tokens=128, **kw))
    fused.load_state_dict(plain.state_dict())
    return plain, fused


@pytest.mark.parametrize("tied", [False, True])
def test_the_model_loss_is_the_same_through_either_head_path(tied):
    plain, fused = _model_pair(**({"tie_embeddings": True, "embed_rank": 0} if tied else {}))
    assert (plain.head_chunk_tokens, fused.head_chunk_tokens) == (0, 128)
    tokens = torch.randint(0, 300, (3, 100))
    targets = next_token_targets(tokens)
    losses = []
    for model in (plain, fused):
        loss = model(tokens, targets=targets)
        (loss / 297).backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=2e-6, atol=0)
    for (name, a), b in zip(plain.named_parameters(), fused.parameters()):
        # fp32 through the whole model: agreement to a few ulps of the largest gradient of the tensor
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-5 * a.grad.abs().max().item(), msg=name)


@pytest.mark.parametrize("autocast", [False, True])
def test_a_plain_weight_head_gives_what_its_backward_through_autograd_gives(autocast):
    """``plain=True`` (the model's own nn.Linear or tied head) runs the head's GEMMs itself; the same head as an opaque
    callable goes through autograd (how a Transformer Engine head runs). Same loss and gradients: in fp32 to a few
    ulps, under BF16 autocast to BF16 rounding of the same products (the CPU sums the weight's gradient of BF16
    chunks in fp32 on both paths)."""
    torch.manual_seed(0)
    weight = (torch.randn(384, 32) * 0.2).requires_grad_()
    hidden = torch.randn(70, 32)
    targets = torch.randint(0, 300, (70,))
    targets[5] = IGNORE_INDEX
    out = {}
    for plain in (True, False):
        h = hidden.clone().requires_grad_()
        weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = linear_cross_entropy(h, lambda x, _: F.linear(x, weight), [weight], targets, 300, chunk_tokens=16,
                                        plain=plain)
        (loss / 69).backward()
        out[plain] = (loss.detach(), h.grad, weight.grad.clone())
    assert out[True][2].dtype == torch.float32 and out[True][1].dtype == torch.float32
    tol = {"rtol": 2e-2, "atol": 1e-3} if autocast else {"rtol": 1e-5, "atol": 1e-7}
    for ours, theirs in zip(out[True], out[False]):
        torch.testing.assert_close(ours, theirs, **tol)
    with pytest.raises(ValueError, match="plain=True takes the head's one weight"):
        linear_cross_entropy(hidden, lambda x, _: F.linear(x, weight), [weight, weight], targets, 300,
                             chunk_tokens=16, plain=True)


def test_head_chunk_tokens_auto_chunks_only_wide_heads():
    from yxanul.config import ModelConfig
    from yxanul.model import HEAD_CHUNK_AUTO_TOKENS, resolve_head_chunk_tokens

    assert resolve_head_chunk_tokens(ModelConfig(preset="yxanul-270m"), 200_064) == HEAD_CHUNK_AUTO_TOKENS
    assert resolve_head_chunk_tokens(ModelConfig(preset="tiny"), 16_384) == 0
    assert resolve_head_chunk_tokens(ModelConfig(preset="tiny", head_chunk_tokens=256), 16_384) == 256
    assert resolve_head_chunk_tokens(ModelConfig(preset="yxanul-270m", head_chunk_tokens=0), 200_064) == 0
    with pytest.raises(ValueError, match="model.head_chunk_tokens=100 must be 0 or a multiple of 128"):
        ModelConfig(head_chunk_tokens=100)


def test_compiled_chunk_kernels_compile_once_per_width_for_every_chunk_size_vocabulary_and_autocast_state():
    """The CUDA path compiles the chunk kernels; a graph per remainder chunk, model vocabulary, autocast state or
    caller (logits that require grad in the plain head's training, not in validation or the fused head) ran past
    Dynamo's recompile limit (8) into a silent eager fallback (H100 test sessions, 2026-12-06, twice). The width
    (padded columns) stays static, one graph per width: a symbolic width cost 9% of the BF16 step (H100,
    2026-12-07). Counted here with Dynamo's own graph counter on CPU tensors: the same compile options, no
    compiler needed."""
    from torch._dynamo.testing import CompileCounter

    from yxanul.model import _ce_backward_chunk, _ce_forward_chunk, compile_chunk_fn

    torch._dynamo.reset()
    try:
        counters = {"fwd": CompileCounter(), "bwd": CompileCounter()}
        fwd = compile_chunk_fn(_ce_forward_chunk, backend=counters["fwd"])
        bwd = compile_chunk_fn(_ce_backward_chunk, backend=counters["bwd"])
        calls = 0
        # three models with padded columns and one without (the vocabulary a multiple of 64)
        for vocab, padded in ((300, 384), (1000, 1024), (2000, 2048), (1024, 1024)):
            for rows in (64, 37, 5):  # full chunks and remainders
                for autocast in (False, True):  # the plain head's backward runs outside autocast, the fused inside
                    for requires_grad, grad_mode in ((False, False), (True, False), (True, True)):
                        logits = torch.randn(rows, padded, dtype=torch.bfloat16).requires_grad_(requires_grad)
                        targets = torch.randint(0, vocab, (rows,))
                        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), \
                                torch.set_grad_enabled(grad_mode):
                            lse, loss = fwd(logits, targets, vocab)
                            grad = bwd(logits, targets, lse, torch.ones(()), vocab)
                        with torch.no_grad():
                            ref_lse, ref_loss = _ce_forward_chunk(logits, targets, vocab)
                            ref_grad = _ce_backward_chunk(logits, targets, ref_lse, torch.ones(()), vocab)
                        assert torch.equal(lse, ref_lse) and torch.equal(loss, ref_loss)
                        assert torch.equal(grad, ref_grad)
                        calls += 1
        assert calls == 72
        # one graph per width (384, 1024, 2048): vocabularies 1000 and 1024 share the width 1024
        assert counters["fwd"].frame_count == 3 and counters["bwd"].frame_count == 3
    finally:
        torch._dynamo.reset()




def test_the_triton_chunk_kernel_gives_the_exact_loss_and_gradient_in_place():
    """The fused head's GPU kernel (yxanul.loss_kernel), run by Triton's interpreter on the CPU, in FP32 and BF16,
    with blocks shorter and longer than a row. A subprocess: the interpreter is chosen when Triton is imported,
    and this process may have imported it for the GPU already (Inductor does)."""
    pytest.importorskip("triton", reason="Triton's interpreter runs the kernel on the CPU (installed with the dev "
                        "extra on Linux x86_64)")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(REPO / "platform"), str(REPO)])}
    code = "from tests.unit.test_loss import check_triton_kernel as c; [c(d, b) for d in ('float32', 'bfloat16') " \
           "for b in (64, 512)]; print('checked')"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "checked", done.stderr[-3000:]


def check_triton_kernel(dtype_name: str, block: int) -> None:
    """One case of the test above, in a process whose Triton interprets: rows longer than a block (the online
    log-sum-exp carries its max and sum across blocks) or shorter, padded columns (never counted, gradient zero),
    an ignored row (loss and gradient zero) and an upstream scale, against the loss and gradient in float64."""
    from yxanul import loss_kernel

    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    rows, cols, vocab, scale = 6, 300, 290, 0.25
    x = (torch.randn(rows, cols) * 4).to(dtype)
    x[:, vocab:] = 60.0  # padding that would dominate the softmax if it were counted
    targets = torch.randint(0, vocab, (rows,))
    targets[3] = IGNORE_INDEX
    exact = x.double()[:, :vocab]
    lse = exact.logsumexp(-1)
    valid = targets != IGNORE_INDEX
    loss = (lse - exact.gather(1, targets.clamp(min=0)[:, None]).squeeze(1))[valid].sum()
    grad = torch.zeros(rows, cols, dtype=torch.float64)
    grad[:, :vocab] = (exact - lse[:, None]).exp()
    grad[torch.arange(rows), targets.clamp(min=0)] -= 1
    grad = grad * valid[:, None] * scale
    logits = x.clone()
    got = loss_kernel.chunk_loss_and_grad_(logits, targets, vocab, torch.tensor(scale), IGNORE_INDEX, block=block,
                                           num_warps=4)
    # fp32 arithmetic (u = 2^-24): a row's log-sum-exp is off by at most ~(columns + 2 |x|max) u, its loss as
    # much again; a gradient element then by that, relatively, and by its rounding to the logits' dtype when BF16:
    # under one BF16 ulp, 2^-7 relative (the interpreter truncates fp32 to BF16; a GPU rounds to nearest, under
    # 2^-8, which tests/gpu/test_loss_kernel_gpu.py holds it to).
    u, xmax = 2.0**-24, float(x.abs().max())
    row_error = u * (vocab + 4 * xmax + 16)
    assert abs(float(got) - float(loss)) <= rows * row_error + u * abs(float(loss)), (float(got), float(loss))
    rounding = 2.0**-7 if dtype == torch.bfloat16 else u
    assert ((logits.double() - grad).abs() <= (row_error + rounding) * grad.abs() + scale * row_error).all()
    assert logits.dtype == dtype and (logits[3] == 0).all() and (logits[:, vocab:] == 0).all()
