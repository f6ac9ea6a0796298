"""The spike detector on synthetic curves: one grad-norm spike, one loss spike, none on a smooth
falling curve, none on a noisy curve without outliers; the warm-up; the tag text."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from yxanul.spikes import SpikeDetector, format_spikes, spike_start_tokens


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


def test_points_before_start_tokens_are_neither_checked_nor_remembered():
    detector = SpikeDetector(start_tokens=6000)
    early = [(1000 * (i + 1), 5.0, 1.0) for i in range(5)] + [(5500, 5.0, 50.0)]
    assert feed(detector, early) == [] and detector.checked == 0
    assert detector.observe(7000, loss=None, grad_norm=float("nan")) == []
    steady = [(8000 + 1000 * i, 5.0, 1.0) for i in range(3)]  # min_history = 3 points from 6000 on
    assert feed(detector, steady) == []
    [spike] = detector.observe(20000, loss=5.0, grad_norm=6.0)  # 6x the median 1.0 (the 50.0 was never seen)
    assert spike.kind == "grad_norm" and spike.median == 1.0
    assert detector.observe(21000, loss=5.0, grad_norm=4.9) == []


def test_a_spike_right_after_a_smaller_one_is_found():
    """The held-out run's case: 5.75 right after 3.27 in a series whose median is ~0.9; the 3.27 (3.6x) is
    below the factor, the 5.75 (6.4x) is not."""
    values = [0.9, 0.85, 0.95, 0.88, 0.92, 3.27, 5.75, 0.9, 0.91]
    points = [(1000 * (i + 1), 4.0, v) for i, v in enumerate(values)]
    found = feed(SpikeDetector(), points)
    assert [(s.kind, s.tokens, s.value) for s in found] == [("grad_norm", 7000, 5.75)]
    assert 0.89 <= found[0].median <= 0.92


def test_the_run_median_sees_what_a_lifted_trailing_window_hides():
    """Eleven intervals at 2.5 lift the trailing median of the last 20 to 2.5; a 6.0 after them is 2.4x that
    but 6.7x the run's median (0.9)."""
    values = [0.9] * 30 + [2.5] * 11 + [6.0]
    points = [(1000 * (i + 1), 4.0, v) for i, v in enumerate(values)]
    detector = SpikeDetector(window=20)
    found = feed(detector, points)
    assert [(s.tokens, s.value) for s in found] == [(42000, 6.0)]
    assert found[0].median == 0.9
    assert 6.0 < 5 * statistics.median(values[-21:-1])  # the trailing median alone would not flag it


def test_status_says_not_checked_for_a_short_run_and_counts_points_otherwise():
    short = SpikeDetector(start_tokens=1000)
    feed(short, [(1000 * (i + 1), 4.0, 1.0) for i in range(3)])
    assert short.status() == "not checked: 3 logging points, a check needs more than 3 from 1k tokens on"
    long = SpikeDetector(start_tokens=0)
    feed(long, [(1000 * (i + 1), 4.0, 1.0) for i in range(10)] + [(11000, 4.0, 9.0)])
    assert long.status() == "checked 8 logging points (interval maxima) from 0 tokens: 1 spike"
    quiet = SpikeDetector()
    feed(quiet, falling(20))
    assert quiet.status().endswith(": no spike")


def test_checks_start_after_the_warmup_or_a_fraction_of_the_run():
    assert spike_start_tokens(10_000_000, 0) == 500_000
    assert spike_start_tokens(10_000_000, 2_000_000) == 2_000_000


def test_the_training_loop_checks_the_largest_grad_norm_of_each_interval(capsys):
    """The loop's logging hook (``_Loop._log``) feeds the detector each interval's largest grad norm and loss
    (a one-step spike between two logging points is seen), logs them, and the run's tags say what was checked."""
    from types import SimpleNamespace

    import torch

    from yxanul.config import ModelConfig, load_config
    from yxanul.metrics import Throughput
    from yxanul.model import Yxanul
    from yxanul.tracking import NullTracker
    from yxanul.train.checkpoint import TrainState
    from yxanul.train.loop import _Loop

    loop = object.__new__(_Loop)  # the hook alone: no Ray Train context, no data
    loop.cfg = load_config(None, ["train.tokens_per_step=1024", "train.max_tokens=30720"])
    loop.rank, loop.world, loop.device = 0, 1, torch.device("cpu")
    loop.state, loop.tracker, loop.compile_s = TrainState(), NullTracker(), 0.0
    loop.spikes = SpikeDetector(start_tokens=spike_start_tokens(30720))
    torch.manual_seed(0)
    loop.model = Yxanul(ModelConfig(preset="tiny", embed_rank=16), vocab_size=300)
    stage = SimpleNamespace(seq_len=64, index=0)
    throughput = Throughput(tokens_per_s=1000.0, tokens_per_s_per_gpu=1000.0, mfu_bf16=None, mfu_fp8=None,
                            peak_mem_gib=None, elapsed_s=1.0)
    for i in range(30):
        loop.state.step, loop.state.tokens = i + 1, 1024 * (i + 1)
        # interval 21: its last step is quiet (grad norm 1.0), one step before it reached 10.0
        peak = 10.0 if i == 20 else 1.0
        loop._log(stage, 1e-3, torch.tensor(3.0), 1, torch.tensor(1.0), throughput, 30,
                  torch.tensor([peak, 3.0]))
    logged = [(step, m["train/spike_grad_norm"]) for step, m in loop.tracker.metrics if "train/spike_grad_norm" in m]
    assert logged == [(21 * 1024, 10.0)]
    assert [m["train/grad_norm_max"] for step, m in loop.tracker.metrics if step == 21 * 1024] == [10.0]
    assert not any("train/spike_loss" in m for _, m in loop.tracker.metrics)
    # each interval also logs how large each weight group is (RMS over the group's elements)
    last = loop.tracker.metrics[-1][1]
    expected = {group: torch.cat([w.detach().flatten() for w in weights]).pow(2).mean().sqrt().item()
                for group, weights in loop.model.weight_groups().items()}
    assert set(expected) == {"embed", "embed_proj", "attention", "mlp", "head"}
    for group, rms in expected.items():
        assert last[f"train/weight_rms/{group}"] == pytest.approx(rms, rel=1e-5)
    # the token factor at init_std (0.02), its padding rows 0
    assert last["train/weight_rms/embed"] == pytest.approx(0.02 * math.sqrt(300 / 384), rel=0.05)
    assert loop.tracker.tags["yxanul.spikes"] == "grad_norm@21504 (10.0x)"
    assert "warning: grad-norm spike at 21504 tokens: 10 = 10.0x its median 1" in capsys.readouterr().err
    # 29 points from 1536 tokens on (2048 .. 30720), the first 3 only remembered
    assert loop.spikes.status() == "checked 26 logging points (interval maxima) from 1.54k tokens: 1 spike"
