"""The loss: next-token (shifted), chunked = plain (value and gradient), padding excluded, bits/byte."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from yxanul.model import IGNORE_INDEX, bits_per_byte, cross_entropy, next_token_targets


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
