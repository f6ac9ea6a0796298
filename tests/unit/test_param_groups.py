"""The arms of an FP8/BF16 comparison differ in precision only: their parameters, optimizer groups,
weight decay, learning rates and schedule are identical (issue: an FP8 arm that ended ~0.10 bpb better
than BF16 must not owe it to a different optimizer setup). CPU: the table the builder would produce, on a
meta-device model of the sweep's real shape (the FP8 swap itself needs a GPU; tests/gpu reuses
``param_group_table`` on the swapped model)."""

from __future__ import annotations

import torch

from yxanul.model import Yxanul
from yxanul.schedule import lr_for_step
from yxanul.sweep import ClusterView, load_sweep, plan_sweep
from yxanul.train.step import ParamRow, param_group_table

H200 = ClusterView(("H200",), True, "test: H200")
VOCAB = 32768


def table(cfg) -> list[ParamRow]:
    with torch.device("meta"):
        model = Yxanul(cfg.model, cfg.model.vocab_size or VOCAB)
    return param_group_table(model, cfg.optim)


def test_fp8_and_bf16_arms_have_identical_parameter_groups_decay_and_learning_rates():
    plan = plan_sweep(*load_sweep("fp8-vs-bf16"), cluster=H200)
    pairs: dict[str, list] = {}
    for trial in plan.trials:
        pairs.setdefault(trial.pair, []).append(trial.cfg)
    for members in pairs.values():  # the run order rotates the arms per seed: BF16 first here
        members.sort(key=lambda c: c.precision.mode != "bf16")
    assert len(pairs) == 3  # one group of arms per seed: bf16 and the two fp8 arms
    for pair, (bf16, *fp8_arms) in pairs.items():
        assert [bf16.precision.mode] + [c.precision.mode for c in fp8_arms] == ["bf16", "fp8", "fp8"]
        bf16_table = table(bf16)
        for fp8 in fp8_arms:
            assert bf16.run.seed == fp8.run.seed  # same initialisation and data order
            assert bf16_table == table(fp8), pair
            assert bf16.optim == fp8.optim and bf16.train == fp8.train
            steps = bf16.train.max_tokens // bf16.train.tokens_per_step
            assert [lr_for_step(s, bf16.train.tokens_per_step, bf16.optim, bf16.train.max_tokens)
                    for s in range(steps)] == \
                [lr_for_step(s, fp8.train.tokens_per_step, fp8.optim, fp8.train.max_tokens) for s in range(steps)]
    # The table is the real one: matrices decay, embeddings and norms do not, every parameter appears once.
    rows = table(next(iter(pairs.values()))[0])
    cfg = plan.trials[0].cfg
    with torch.device("meta"):
        model = Yxanul(cfg.model, cfg.model.vocab_size or VOCAB)
    assert [r.name for r in rows] == sorted(n for n, _ in model.named_parameters())
    by_name = {r.name: r for r in rows}
    decayed = {r.name for r in rows if r.group == "decay"}
    assert decayed and all(by_name[n].weight_decay == plan.trials[0].cfg.optim.weight_decay for n in decayed)
    assert all(by_name[n].shape and len(by_name[n].shape) == 2 for n in decayed)
    assert all(r.weight_decay == 0.0 for r in rows if r.group == "no_decay")
    assert any("norm" in n for n in by_name if by_name[n].group == "no_decay")
    assert all(r.lr == plan.trials[0].cfg.optim.lr for r in rows)


def test_a_different_optimizer_setting_changes_the_table():
    plan = plan_sweep(*load_sweep("fp8-vs-bf16", ["optim.weight_decay=0.05"]), cluster=H200)
    default = plan_sweep(*load_sweep("fp8-vs-bf16"), cluster=H200)
    assert table(plan.trials[0].cfg) != table(default.trials[0].cfg)
