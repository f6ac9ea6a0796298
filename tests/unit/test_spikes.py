"""The spike detector on synthetic curves: one grad-norm spike, one loss spike, none on a smooth
falling curve, none on a noisy curve without outliers; the warm-up; the tag text."""

from __future__ import annotations

import math
import random

from yxanul.spikes import SpikeDetector, format_spikes


def falling(n: int) -> list[tuple[int, float, float]]:
    """(tokens, loss, grad norm): loss falling from 10 to ~3 nats, grad norm ~1."""
    return [(1000 * (i + 1), 3.0 + 7.0 * math.exp(-i / 8), 1.0 + 0.05 * math.sin(i)) for i in range(n)]


def feed(detector: SpikeDetector, points) -> list:
    found = []
    for tokens, loss, grad in points:
        found += detector.observe(tokens, loss=loss, grad_norm=grad)
    return found


def test_no_spike_on_a_smooth_falling_curve():
    detector = SpikeDetector()
    assert feed(detector, falling(100)) == [] and detector.spikes == []


def test_one_grad_norm_spike_is_found_at_its_tokens():
    points = falling(60)
    tokens, loss, _ = points[30]
    points[30] = (tokens, loss, 10.2)  # ~10x the running median of ~1
    [spike] = feed(SpikeDetector(), points)
    assert (spike.kind, spike.tokens, spike.value) == ("grad_norm", 31000, 10.2)
    assert 0.95 < spike.median < 1.05 and 9.5 < spike.size < 10.8
    assert "grad-norm spike at 31000 tokens" in spike.describe()
    assert format_spikes([spike]).startswith("grad_norm@31000 (")


def test_one_loss_spike_is_found_and_the_recovery_is_not():
    points = falling(60)
    t, loss, g = points[40]
    points[40] = (t, loss + 0.8, g)  # 0.8 nats above a trailing median that is itself above the curve
    [spike] = feed(SpikeDetector(), points)
    assert (spike.kind, spike.tokens) == ("loss", 41000)
    assert spike.size > 0.5


def test_noisy_but_no_spike():
    rng = random.Random(0)
    points = [(1000 * (i + 1), 3.0 + rng.uniform(-0.2, 0.2), rng.uniform(0.5, 2.0)) for i in range(300)]
    assert feed(SpikeDetector(), points) == []


def test_warmup_hides_early_points_and_none_values_are_ignored():
    detector = SpikeDetector(warmup=10)
    early = [(1000 * (i + 1), 5.0, 1.0) for i in range(5)] + [(6000, 5.0, 50.0)]
    assert feed(detector, early) == []  # 6th point: still in the warm-up
    assert detector.observe(7000, loss=None, grad_norm=float("nan")) == []
    steady = [(8000 + 1000 * i, 5.0, 1.0) for i in range(10)]
    assert feed(detector, steady) == []
    [spike] = detector.observe(20000, loss=5.0, grad_norm=6.0)  # 6x the median 1.0
    assert spike.kind == "grad_norm" and detector.observe(21000, loss=5.0, grad_norm=4.9) == []


def test_the_training_loop_logs_spikes_as_metrics_a_tag_and_a_console_line(capsys):
    """The loop's logging hook (``_Loop._log``) feeds the detector the loss and grad norm it already reads."""
    from types import SimpleNamespace

    import torch

    from yxanul.config import load_config
    from yxanul.metrics import Throughput
    from yxanul.tracking import NullTracker
    from yxanul.train.checkpoint import TrainState
    from yxanul.train.loop import _Loop

    loop = object.__new__(_Loop)  # the hook alone: no Ray Train context, no data
    loop.cfg = load_config(None, ["train.tokens_per_step=1024"])
    loop.rank, loop.world, loop.device = 0, 1, torch.device("cpu")
    loop.state, loop.tracker, loop.spikes, loop.compile_s = TrainState(), NullTracker(), SpikeDetector(), 0.0
    stage = SimpleNamespace(seq_len=64, index=0)
    throughput = Throughput(tokens_per_s=1000.0, tokens_per_s_per_gpu=1000.0, mfu_bf16=None, mfu_fp8=None,
                            peak_mem_gib=None, elapsed_s=1.0)
    for i in range(30):
        loop.state.step, loop.state.tokens = i + 1, 1024 * (i + 1)
        grad = 10.0 if i == 20 else 1.0
        loop._log(stage, 1e-3, torch.tensor(3.0), 1, torch.tensor(grad), throughput, 30)
    logged = [(step, m["train/spike_grad_norm"]) for step, m in loop.tracker.metrics if "train/spike_grad_norm" in m]
    assert logged == [(21 * 1024, 10.0)]
    assert not any("train/spike_loss" in m for _, m in loop.tracker.metrics)
    assert loop.tracker.tags["yxanul.spikes"] == "grad_norm@21504 (10.0x)"
    assert "warning: grad-norm spike at 21504 tokens: 10 = 10.0x its running median 1" in capsys.readouterr().err
