"""The in-process session (yxanul.train.session.TuneSession) without Ray running: the GPU it trains on, and the
training report as Tune sees it."""

from __future__ import annotations

import torch

from yxanul.train.session import TuneSession, for_tune


def test_an_in_process_trial_trains_on_the_gpu_ray_gave_it(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [3])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # Ray narrows it to the trial's GPU
    assert TuneSession().device() == torch.device("cuda", 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES
    assert TuneSession().device() == torch.device("cuda", 3)


def test_the_loops_done_reaches_tune_as_finished():
    """``done`` is Tune's reserved "trial over" key: a true value would end the trial before its run is ended."""
    assert for_tune({"done": 1.0, "tokens": 8, "val/bpb": 0.5}) == {"finished": 1.0, "tokens": 8, "val/bpb": 0.5}
