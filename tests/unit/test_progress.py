"""The training progress line's ETA (yxanul.train.loop._eta_s)."""

from __future__ import annotations

import math

import pytest

from yxanul.formatting import clock
from yxanul.train.loop import _eta_s


def test_the_eta_projects_the_steady_step_rate_not_the_first_compile():
    """Calibration round 7's first line: step 5 of 600 (64Ki tokens a step), 15.4 s of compile in 16.3 s of
    training, 300k tokens/s over the interval's timed steps. The run's average (328k tokens in 16.3 s) said
    32 minutes; the steps left take 595 x 65,536 / 300,000 = 130 s."""
    left = 595 * 65_536
    assert _eta_s(left, 300_000.0, 5 * 65_536, 16.3) == pytest.approx(left / 300_000.0)
    assert clock(_eta_s(left, 300_000.0, 5 * 65_536, 16.3)) == "2m09s"
    # an interval of only first-of-shape steps has no steady rate: the average so far, else unknown
    assert _eta_s(left, 0.0, 5 * 65_536, 16.3) == pytest.approx(left * 16.3 / (5 * 65_536))
    assert math.isnan(_eta_s(left, 0.0, 0, 0.0)) and clock(_eta_s(left, 0.0, 0, 0.0)) == "?"
