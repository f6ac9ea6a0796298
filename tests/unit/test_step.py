"""The pure train step: learns, accumulates exactly, clips, applies the LR, optimizer groups."""

from __future__ import annotations

import pytest
import torch

from yxanul.config import ModelConfig, OptimConfig, PrecisionConfig
from yxanul.model import IGNORE_INDEX, Yxanul, cross_entropy, next_token_targets
from yxanul.precision import Precision
from yxanul.train.step import build_optimizer, param_groups, train_step

FP32 = Precision(PrecisionConfig(mode="fp32"), "cpu")


def model(**kw) -> Yxanul:
    torch.manual_seed(0)
    return Yxanul(ModelConfig(preset="tiny", vocab_size=500, **kw))


def test_train_step_reduces_loss_on_a_fixed_batch():
    m = model()
    opt = build_optimizer(m, OptimConfig(lr=3e-3))
    x = torch.randint(0, 500, (2, 32), generator=torch.Generator().manual_seed(1))
    losses = [train_step(m, opt, [x], lr=3e-3, precision=FP32).loss.item() for _ in range(12)]
    assert losses[0] == pytest.approx(6.2, abs=0.3)  # ~ln(500) at init
    assert losses[-1] < losses[0] - 1.5


def test_result_is_the_mean_next_token_loss_before_the_update():
    m = model()
    x = torch.randint(0, 500, (2, 16))
    with torch.no_grad():
        expected = cross_entropy(m(x, mask_padding=False), next_token_targets(x), 500, reduction="mean")
    result = train_step(m, build_optimizer(m, OptimConfig()), [x], lr=1e-3, precision=FP32)
    assert result.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert result.tokens == 32 and not result.skipped
    assert isinstance(result.loss, torch.Tensor) and isinstance(result.grad_norm, torch.Tensor)


def test_gradient_accumulation_equals_one_big_batch():
    """Accumulating three unequal micro-batches gives the big batch's loss and gradients (train_step
    leaves the step's gradients on the parameters).

    Gradients are compared, not parameters after the AdamW step: Adam's first update is about
    lr * sign(g), so a near-zero gradient whose float32 sum rounds to the other sign (the micro-batches
    sum in another order; Xeon and EPYC kernels also order reductions differently) moves a parameter by
    2 * lr. That is not an accumulation error, and the gradients show it for what it is: a few ulps.
    """
    x = torch.randint(0, 500, (4, 24), generator=torch.Generator().manual_seed(2))
    a, b = model(), model()
    oa, ob = build_optimizer(a, OptimConfig()), build_optimizer(b, OptimConfig())
    ra = train_step(a, oa, [x], lr=1e-3, precision=FP32, grad_clip=0)
    rb = train_step(b, ob, [x[:1], x[1:3], x[3:]], lr=1e-3, precision=FP32, grad_clip=0)
    assert ra.loss.item() == pytest.approx(rb.loss.item(), rel=1e-5)
    assert ra.grad_norm.item() == pytest.approx(rb.grad_norm.item(), rel=1e-4)
    eps = torch.finfo(torch.float32).eps
    compared = 0
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert pa.grad is not None and pb.grad is not None, name
        # A gradient entry is a sum over the batch's 92 predicted tokens (and, through the layers, of
        # products of the same size): its float32 rounding error is bounded by about n * eps times the
        # size of the terms, so entries are compared to 1e3 * eps (~1.2e-4) relative to the tensor's
        # largest entry. A real accumulation bug (a micro-batch weighed by its own token count, or a
        # gradient zeroed between micro-batches) changes entries by 30% or more.
        scale = pa.grad.abs().max().item()
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e3 * eps, atol=1e3 * eps * scale, msg=name)
        compared += 1
    assert compared == len(list(a.parameters()))


def test_explicit_targets_with_ignored_positions():
    m = model()
    x = torch.randint(0, 500, (2, 16))
    targets = next_token_targets(x)
    targets[:, :8] = IGNORE_INDEX  # e.g. a prompt that takes no loss
    with torch.no_grad():
        expected = cross_entropy(m(x, mask_padding=False), targets, 500, reduction="mean")
    r = train_step(m, build_optimizer(m, OptimConfig()), [(x, targets)], lr=1e-3, precision=FP32)
    assert r.loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_clipping_reports_the_norm_before_clipping_and_bounds_the_update():
    m = model()
    x = torch.randint(0, 500, (2, 16))
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    before = torch.cat([p.detach().flatten().clone() for p in m.parameters()])
    r = train_step(m, opt, [x], lr=1.0, precision=FP32, grad_clip=1e-3)
    after = torch.cat([p.detach().flatten() for p in m.parameters()])
    assert r.grad_norm.item() > 1e-2  # the raw norm, not the clipped one
    assert (after - before).norm().item() == pytest.approx(1e-3, rel=1e-3)  # SGD step = clipped grad


def test_lr_is_the_callers():
    m = model()
    opt = build_optimizer(m, OptimConfig(lr=1.0))
    train_step(m, opt, [torch.randint(0, 500, (1, 8))], lr=1.234e-4, precision=FP32)
    assert all(g["lr"] == 1.234e-4 for g in opt.param_groups)


def test_skip_nonfinite_skips_the_update():
    m = model()
    with torch.no_grad():
        m.final_norm.weight.fill_(float("nan"))
    before = m.head.weight.detach().clone()
    r = train_step(m, build_optimizer(m, OptimConfig()), [torch.randint(0, 500, (1, 8))], lr=1e-3,
                   precision=FP32, skip_nonfinite=True)
    assert r.skipped and torch.equal(before, m.head.weight)


def test_no_weight_decay_on_embeddings_and_norms():
    m = model(embed_rank=16)
    decay, no_decay = param_groups(m, 0.1)
    names = {id(p): n for n, p in m.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {"embed.tok.weight", "embed.proj.weight", "final_norm.weight", "blocks.0.attn_norm.weight"} <= no_decay_names
    assert {"head.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.down.weight"} <= decay_names
    assert decay_names.isdisjoint(no_decay_names)
    assert len(decay_names) + len(no_decay_names) == len(list(m.parameters()))


def test_optimizer_is_adamw_with_the_configured_betas():
    opt = build_optimizer(model(), OptimConfig(beta1=0.8, beta2=0.9, eps=1e-7))
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["betas"] == (0.8, 0.9) and opt.param_groups[0]["eps"] == 1e-7
    with pytest.raises(TypeError, match="master weights must be fp32"):
        build_optimizer(model().bfloat16(), OptimConfig())
