"""Learning rate as a function of tokens: warmup, cosine, warmup-stable-decay, per-stage scale."""

from __future__ import annotations

import pytest

from yxanul.config import OptimConfig
from yxanul.schedule import learning_rate, lr_for_step


def test_cosine_warmup_peak_midpoint_and_floor():
    optim = OptimConfig(lr=1e-3, min_lr_ratio=0.1, schedule="cosine", warmup_tokens=1000)
    assert learning_rate(0, optim, 11000) == 0.0
    assert learning_rate(500, optim, 11000) == pytest.approx(5e-4)
    assert learning_rate(1000, optim, 11000) == pytest.approx(1e-3)
    assert learning_rate(6000, optim, 11000) == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # halfway down the cosine
    assert learning_rate(11000, optim, 11000) == pytest.approx(1e-4)
    assert learning_rate(50000, optim, 11000) == pytest.approx(1e-4)  # clamped past the end


def test_wsd_is_flat_then_decays_linearly_over_the_last_fraction():
    optim = OptimConfig(lr=2e-3, min_lr_ratio=0.0, schedule="wsd", warmup_tokens=0, decay_fraction=0.2)
    assert learning_rate(0, optim, 10000) == pytest.approx(2e-3)
    assert learning_rate(7999, optim, 10000) == pytest.approx(2e-3)
    assert learning_rate(9000, optim, 10000) == pytest.approx(1e-3)
    assert learning_rate(10000, optim, 10000) == pytest.approx(0.0)


def test_first_warmup_step_learns_and_stage_scale_multiplies():
    optim = OptimConfig(lr=1e-3, warmup_tokens=4096)
    assert lr_for_step(0, 1024, optim, 100000) == pytest.approx(0.25e-3)
    assert lr_for_step(3, 1024, optim, 100000) == pytest.approx(1e-3)
    assert lr_for_step(10, 1024, optim, 100000, lr_scale=0.5) == pytest.approx(
        0.5 * learning_rate(10 * 1024, optim, 100000))
