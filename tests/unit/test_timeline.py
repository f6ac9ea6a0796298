"""The timeline of a run and of a sweep: exclusive phases that add up to the wall-clock, efficiency, the
union of trial intervals, the one console line."""

from __future__ import annotations

import pytest

from yxanul.timeline import Timeline, format_timeline, sweep_metrics, timed, timeline_metrics


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_nested_phases_are_exclusive_and_the_rest_is_other():
    clock = Clock()
    t = Timeline(clock)
    with t.phase("steps"):
        clock.now += 10
        with t.phase("validation"):
            clock.now += 3
            with t.phase("mlflow"):
                clock.now += 1
        t.took("compile", 2.0)  # measured by hand inside steps
        clock.now += 2
    assert t.seconds == {"mlflow": 1.0, "validation": 3.0, "compile": 2.0, "steps": 10.0}
    metrics = timeline_metrics(t.seconds, wall_s=20.0)
    assert metrics["timeline/other_s"] == pytest.approx(4.0)
    assert sum(v for k, v in metrics.items() if k.endswith("_s") and k != "timeline/wall_s") == pytest.approx(20.0)
    assert metrics["timeline/efficiency"] == pytest.approx(0.5)
    line = format_timeline(metrics)
    assert line.startswith("wall 20.0 s: steps 10.0 s (50.0%), other 4.0 s, validation 3.0 s, compile 2.0 s")


def test_a_timed_object_counts_its_calls_in_a_phase():
    clock = Clock()
    t = Timeline(clock)

    class Tracker:
        run_id = "r"

        def log(self, n: int) -> int:
            clock.now += n
            return n

    tracker = timed(Tracker(), t, "mlflow")
    with t.phase("steps"):
        clock.now += 5
        assert tracker.log(2) == 2 and tracker.run_id == "r"
    assert t.seconds == {"mlflow": 2.0, "steps": 5.0}


def test_sweep_efficiency_is_step_seconds_over_wall_and_slots():
    trials = [timeline_metrics({"steps": 50.0, "compile": 10.0}, 80.0),
              timeline_metrics({"steps": 60.0, "compile": 5.0}, 70.0)]
    # two trials one after the other, 5 s apart, inside a 170 s sweep: 20 s outside any trial
    metrics = sweep_metrics(trials, [(100.0, 180.0), (185.0, 255.0)], wall_s=170.0, slots=1)
    assert metrics["timeline/steps_s"] == 110.0 and metrics["timeline/compile_s"] == 15.0
    assert metrics["timeline/outside_trials_s"] == pytest.approx(20.0)
    assert metrics["timeline/efficiency"] == pytest.approx(110.0 / 170.0)
    assert metrics["timeline/trials"] == 2.0
    # overlapping trials (two slots): the union counts once, the efficiency is per slot
    both = sweep_metrics(trials, [(0.0, 80.0), (10.0, 80.0)], wall_s=100.0, slots=2)
    assert both["timeline/outside_trials_s"] == pytest.approx(20.0)
    assert both["timeline/efficiency"] == pytest.approx(110.0 / 200.0)
