"""Sweep specs: every shipped sweep (and its base run) loads; trial expansion, labels and pairs; the
fairness checks (pairs differ in precision only); ASHA milestones in tokens on validation points; FP8
placement on FP8-capable types, with the BF16 arm pinned to the same type; the dry-run table."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs import sweep as sweep_job
from yxanul.config import experiments_dir
from yxanul.errors import ConfigError
from yxanul.sweep import ClusterView, format_plan, load_sweep, plan_sweep

SHIPPED = sorted(p.stem for p in (experiments_dir() / "sweeps").glob("*.yaml"))
CPU = ClusterView((), None, "test: no GPU")
MIXED = ClusterView(("A100", "H100"), True, "test: A100 + H100")


def test_the_required_sweeps_are_shipped():
    assert {"fp8-vs-bf16", "curriculum-variants", "precision-x-curriculum", "demo", "demo-smoke"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_sweep_and_its_base_config_load(name):
    spec, overrides = load_sweep(name)
    plan = plan_sweep(spec, overrides, cluster=MIXED)  # builds and validates every trial's full config
    assert plan.trials and spec.name == name
    assert len({t.label for t in plan.trials}) == len(plan.trials)
    assert len({t.run_name for t in plan.trials}) == len(plan.trials)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


BASE = """
base:
  overrides:
    train.max_tokens: 65536
    train.tokens_per_step: 4096
    eval.every_tokens: 8192
"""


def test_grid_expansion_labels_pairs_and_seeds(tmp_path):
    path = write(tmp_path, BASE + """
axes:
  precision:
    key: precision.mode
    values: [bf16, fp8]
  curriculum:
    variants:
      a: {optim.lr: 1.0e-3}
      b: {optim.lr: 2.0e-3, optim.warmup_tokens: 4096}
seeds: [0, 1]
""")
    plan = plan_sweep(*load_sweep(path), cluster=CPU)
    # run order: seed by seed, the four grid points rotated by one place per seed
    assert [t.label for t in plan.trials][:5] == ["precision.mode=bf16,curriculum=a,seed=0",
                                                 "precision.mode=bf16,curriculum=b,seed=0",
                                                 "precision.mode=fp8,curriculum=a,seed=0",
                                                 "precision.mode=fp8,curriculum=b,seed=0",
                                                 "precision.mode=bf16,curriculum=b,seed=1"]
    assert len(plan.trials) == 8 and [t.index for t in plan.trials] == list(range(8))
    t = plan.trials[4]
    assert t.pair == "curriculum=b,seed=1" and t.cfg.run.seed == 1 and t.cfg.optim.warmup_tokens == 4096
    assert t.cfg.run.name == "s-t04" and Path(t.cfg.data.output_dir).is_absolute()
    pairs = {}
    for trial in plan.trials:
        pairs.setdefault(trial.pair, []).append(trial.cfg.precision.mode)
    assert all(sorted(v) == ["bf16", "fp8"] for v in pairs.values()) and len(pairs) == 4
    # the run's tags say its arm and grid point, so a reader never parses the label back
    assert t.identity_tags() == {
        "yxanul.variant": "precision.mode=bf16,curriculum=b,seed=1", "yxanul.pair": "curriculum=b,seed=1",
        "yxanul.trial": "4", "yxanul.run_name": "s-t04", "yxanul.arm": "precision.mode=bf16,curriculum=b",
        "yxanul.axes": '{"precision.mode": "bf16", "curriculum": "b"}'}


@pytest.mark.parametrize(("arms", "expected"), [
    (["bf16", "fp8"], "bf16 s0, fp8 s0, fp8 s1, bf16 s1, bf16 s2, fp8 s2"),
    (["bf16", "fp8", "fp32"], "bf16 s0, fp8 s0, fp32 s0, fp8 s1, fp32 s1, bf16 s1, fp32 s2, bf16 s2, fp8 s2"),
])
def test_arms_alternate_seed_by_seed_in_the_run_order(tmp_path, arms, expected):
    path = write(tmp_path, BASE + f"""
axes:
  precision.mode: [{", ".join(arms)}]
seeds: [0, 1, 2]
resources: {{gpus_per_worker: 1}}
""")
    plan = plan_sweep(*load_sweep(path), cluster=MIXED)
    assert all(t.runnable for t in plan.trials)
    order = ", ".join(f"{t.cfg.precision.mode} s{t.seed}" for t in plan.trials)
    assert order == expected
    assert [t.cfg.run.name for t in plan.trials] == [f"s-t{i:02d}" for i in range(len(plan.trials))]
    # what Ray Tune is given, in that order (one GPU runs them one at a time in this order: tests/integration)
    from yxanul.sweep.tune import trial_params

    assert [p["index"] for p in trial_params(plan)] == list(range(len(plan.trials)))
    table = format_plan(plan)
    assert "trials run in the order of the table: seed by seed, the arms rotated by one place per seed" in table
    rows = [line.split()[1] for line in table.splitlines() if line.split()[:1] and line.split()[0].isdigit()
            and "seed=" in line.split()[1]]
    assert rows == [f"precision.mode={t.cfg.precision.mode},seed={t.seed}" for t in plan.trials]


def test_choice_axes_are_sampled_reproducibly(tmp_path):
    path = write(tmp_path, BASE + """
axes:
  optim.lr: {values: [1.0e-3, 2.0e-3, 3.0e-3, 4.0e-3], sample: choice}
num_samples: 5
sample_seed: 7
""")
    first = [t.cfg.optim.lr for t in plan_sweep(*load_sweep(path), cluster=CPU).trials]
    again = [t.cfg.optim.lr for t in plan_sweep(*load_sweep(path), cluster=CPU).trials]
    assert len(first) == 5 and first == again and set(first) <= {1e-3, 2e-3, 3e-3, 4e-3}


def test_pairs_that_differ_outside_precision_are_refused(tmp_path):
    path = write(tmp_path, BASE + """
axes:
  precision:
    variants:
      bf16: {precision.mode: bf16}
      fp8: {precision.mode: fp8}
  lr:
    key: optim.lr
    values: [1.0e-3]
""")
    plan_sweep(*load_sweep(path), cluster=CPU)  # fine: same lr for both arms
    # A bundle mixing precision with another key (the seed project's confound: FP8 with a higher LR)
    confounded = write(tmp_path, BASE + """
axes:
  precision:
    variants:
      bf16: {precision.mode: bf16}
      fp8: {precision.mode: fp8, optim.lr: 1.2e-3}
""")
    with pytest.raises(ConfigError, match="mixes precision keys with other keys"):
        plan_sweep(*load_sweep(confounded), cluster=CPU)


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'axess'"):
        load_sweep(write(tmp_path, "axess: {}\n"))
    with pytest.raises(ConfigError, match="exactly one of `values`"):
        load_sweep(write(tmp_path, "axes:\n  x: {key: optim.lr}\n"))
    with pytest.raises(ConfigError, match="num_samples > 1 without"):
        load_sweep(write(tmp_path, "axes:\n  optim.lr: [1.0e-3]\nnum_samples: 3\n"))
    with pytest.raises(ConfigError, match="use the `seeds` list"):
        load_sweep(write(tmp_path, "axes:\n  run.seed: [1, 2]\n"))
    path = write(tmp_path, BASE + "axes:\n  precision.mode: [bf16, fp8]\n")
    with pytest.raises(ConfigError, match="sets a key the sweep varies"):
        plan_sweep(*load_sweep(path, ["precision.mode=fp32"]), cluster=CPU)
    with pytest.raises(ConfigError, match=r"optim\.lr on the command line"):
        plan_sweep(*load_sweep(path, ["optim.lr=fast"]), cluster=CPU)
    with pytest.raises(ConfigError, match="sweep 'nope' not found"):
        load_sweep("nope")


def test_asha_milestones_are_token_counts_on_validation_points(tmp_path):
    path = write(tmp_path, BASE + "axes:\n  optim.lr: [1.0e-3, 2.0e-3]\nscheduler: {grace_tokens: 8192, reduction_factor: 2}\n")
    plan = plan_sweep(*load_sweep(path), cluster=CPU)
    assert plan.milestones == [8192, 16384, 32768]  # below the 65536-token horizon
    assert "ASHA at tokens 8.19k, 16.4k, 32.8k" in format_plan(plan)
    off = write(tmp_path, BASE + "axes:\n  optim.lr: [1.0e-3]\nscheduler: {grace_tokens: 6000}\n")
    with pytest.raises(ConfigError, match="not validation points"):
        plan_sweep(*load_sweep(off), cluster=CPU)


def test_fp8_is_placed_on_fp8_capable_types_and_its_pair_on_the_same_type(tmp_path):
    path = write(tmp_path, BASE + "axes:\n  precision.mode: [bf16, fp8]\nresources: {gpus_per_worker: 1}\n")
    plan = plan_sweep(*load_sweep(path), cluster=MIXED)
    assert [t.cfg.scaling.accelerator_type for t in plan.trials] == ["H100", "H100"]
    assert all(t.runnable for t in plan.trials)
    # no FP8-capable type: the FP8 arm is not runnable (with the reason), the BF16 arm still runs
    plan = plan_sweep(*load_sweep(path), cluster=ClusterView(("A100",), True, "A100 only"))
    bf16, fp8 = plan.trials
    assert bf16.runnable and not fp8.runnable
    assert fp8.reason.startswith("not runnable: precision.mode=fp8") and "A100" in fp8.reason
    # Transformer Engine missing where the trials run
    plan = plan_sweep(*load_sweep(path), cluster=ClusterView(("H100",), False, "H100 without TE"))
    assert "Transformer Engine" in plan.trials[1].reason and not plan.trials[1].runnable
    # CPU-only cluster
    plan = plan_sweep(*load_sweep(path, ["sweep.resources.gpus_per_worker=0"]), cluster=CPU)
    assert plan.trials[0].runnable and not plan.trials[1].runnable
    assert "no GPU" in plan.trials[1].reason


def test_dry_run_prints_the_trial_table_without_ray(capsys, monkeypatch):
    import ray

    # The session's Ray may already be up (other tests): prove the dry run starts none itself.
    def no_init(*args, **kwargs):
        raise AssertionError("--dry-run must not start Ray")

    monkeypatch.setattr(ray, "init", no_init)
    was_running = ray.is_initialized()
    assert sweep_job.main(["fp8-vs-bf16", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "sweep fp8-vs-bf16: 9 trials" in out
    assert "3 variants x 3 seeds (0, 1, 2; shared by every variant) = 9 trials; token budget 39.3M per trial, 354M in all" in out
    assert "reference arm: precision=bf16; target for time-to-target: 1.4 bits/byte (fixed in the sweep)" in out
    assert "precision=bf16" in out and "precision=fp8-auto" in out and "precision=fp8-all" in out and "placement" in out
    assert "target effect 0.01 (sweep.target_effect)" not in out  # no noise floor yet, so no seed count
    assert sweep_job.main(["fp8-vs-bf16", "--dry-run", "sweep.target_bpb=null", "--noise-floor", "0.0178"]) == 0
    out = capsys.readouterr().out
    assert ("reference arm: precision=bf16; target for time-to-target: the worst final val/bpb of the reference "
            "arm's runs (every reference run reaches it)") in out
    assert "target effect 0.01 (sweep.target_effect): needs 52 seeds" in out
    assert ray.is_initialized() == was_running


def test_tokenizer_axis_pairs_each_tokenizer_with_the_dataset_it_prepared(tmp_path):
    spec, overrides = load_sweep("tokenizer-bpe-vs-superbpe", ["sweep.seeds=[0]"])
    plan = plan_sweep(spec, overrides, cluster=MIXED)
    by_label = {t.label: t.cfg for t in plan.trials}
    assert sorted(by_label) == ["tokenizer=bpe-32k", "tokenizer=superbpe-32k"]
    bpe, superbpe = by_label["tokenizer=bpe-32k"], by_label["tokenizer=superbpe-32k"]
    assert bpe.tokenizer.path.endswith("bpe-32k/tokenizer.json")
    assert superbpe.tokenizer.path.endswith("superbpe-32k-t26214/tokenizer.json")
    assert bpe.data.output_dir != superbpe.data.output_dir
    # Everything else is shared: the comparison has exactly one variable (the tokenizer + its data).
    differ = {k for k, v in bpe.flat_params().items() if superbpe.flat_params()[k] != v}
    assert differ == {"tokenizer.path", "data.output_dir", "run.name"}
    # The dry run tells how to build each dataset with its own tokenizer.
    table = format_plan(plan)
    for cfg in (bpe, superbpe):
        if not (Path(cfg.data.output_dir) / "manifest.json").is_file():
            assert f"data.output_dir={cfg.data.output_dir} tokenizer.path={cfg.tokenizer.path}" in table


@pytest.mark.parametrize("name", ["fp8-vs-bf16", "curriculum-variants", "precision-x-curriculum",
                                  "tokenizer-bpe-vs-superbpe", "yxanul-claims"])
def test_gpu_sweeps_run_every_variant_at_three_shared_seeds(name):
    plan = plan_sweep(*load_sweep(name), cluster=MIXED)
    by_arm: dict[str, list[int]] = {}
    for t in plan.trials:
        by_arm.setdefault(t.arm, []).append(t.cfg.run.seed)
        assert t.label == f"{t.arm},seed={t.seed}"
    assert all(seeds == [0, 1, 2] for seeds in by_arm.values()) and len(plan.trials) == 3 * len(by_arm)
    # Arms of a precision pair share each seed (paired): their configs differ in precision only (checked
    # by plan_sweep), and their pair label carries the seed.
    for t in plan.trials:
        partners = [o for o in plan.trials if o.pair == t.pair]
        assert {o.cfg.run.seed for o in partners} == {t.seed}


def test_yxanul_claims_is_the_full_stack_the_baseline_and_three_one_change_variants():
    spec, overrides = load_sweep("yxanul-claims")
    plan = plan_sweep(spec, overrides, cluster=MIXED)
    arms = {t.arm: t.cfg for t in plan.trials}
    assert sorted(arms) == ["data=bpe+seed-ultra,precision=bf16", "data=bpe,precision=bf16", "data=bpe,precision=fp8",
                            "data=superbpe+seed-ultra,precision=fp8", "data=superbpe,precision=bf16"]
    assert plan.reference == "data=bpe,precision=bf16" and spec.target_bpb is None
    base, full = arms["data=bpe,precision=bf16"], arms["data=superbpe+seed-ultra,precision=fp8"]
    assert (base.precision.mode, base.curriculum.preset, "bpe-32k" in base.tokenizer.path) == ("bf16", "none", True)
    assert (full.precision.mode, full.curriculum.preset, "superbpe" in full.tokenizer.path) == ("fp8", "seed-ultra", True)
    assert full.precision.fp8_layers == "auto"
    # each one-change variant differs from the baseline in one of the three things only
    ignore = {"run.name", "run.seed", "scaling.accelerator_type"}
    changed = {}
    for arm, cfg in arms.items():
        differ = {k for k, v in cfg.flat_params().items() if base.flat_params().get(k) != v} - ignore
        changed[arm] = {k.split(".")[0] for k in differ}
    assert changed["data=bpe,precision=fp8"] == {"precision"}
    assert changed["data=superbpe,precision=bf16"] == {"tokenizer", "data"}
    assert changed["data=bpe+seed-ultra,precision=bf16"] == {"curriculum", "data"}
    # the fp8 arm and the baseline form a precision pair on the same card type
    fp8 = [t for t in plan.trials if t.arm == "data=bpe,precision=fp8"][0]
    bf16 = [t for t in plan.trials if t.pair == fp8.pair and t is not fp8][0]
    assert bf16.cfg.scaling.accelerator_type == fp8.cfg.scaling.accelerator_type == "H100"


def test_exclude_reference_and_target_are_validated(tmp_path):
    path = write(tmp_path, BASE + """
axes:
  precision:
    key: precision.mode
    values: [bf16, fp8]
  lr:
    key: optim.lr
    values: [1.0e-3, 2.0e-3]
exclude:
  - {precision: fp8, lr: 2.0e-3}
reference: {precision: bf16, lr: 2.0e-3}
target_bpb: 2.5
seeds: [0, 1]
""")
    spec, overrides = load_sweep(path)
    plan = plan_sweep(spec, overrides, cluster=CPU)
    assert sorted({t.arm for t in plan.trials}) == ["precision.mode=bf16,optim.lr=0.001", "precision.mode=bf16,optim.lr=0.002",
                                                    "precision.mode=fp8,optim.lr=0.001"]
    assert len(plan.trials) == 6 and plan.reference == "precision.mode=bf16,optim.lr=0.002"
    assert "target for time-to-target: 2.5 bits/byte (fixed in the sweep)" in format_plan(plan)
    for bad, message in ((["sweep.exclude=[{nope: 1}]"], "exclude names axis 'nope'"),
                         (["sweep.reference={precision: fp16}"], "reference gives axis 'precision' the value 'fp16'"),
                         (["sweep.target_bpb=-1"], "target_bpb"),
                         (["sweep.reference={precision: fp8, lr: 2.0e-3}"], "is excluded")):
        with pytest.raises(ConfigError, match=message):
            load_sweep(path, bad)


def test_one_trial_per_gpu_on_a_two_gpu_host_unless_the_sweep_caps_it():
    from yxanul.sweep.placement import planned_concurrency

    plan = plan_sweep(*load_sweep(experiments_dir() / "sweeps/fp8-vs-bf16.yaml"),
                      cluster=ClusterView(("H200", "H200"), True, "test: 2 x H200"))
    assert len(plan.runnable) == 9 and {t.cfg.scaling.num_workers for t in plan.runnable} == {1}
    assert {t.cfg.scaling.accelerator_type for t in plan.runnable} == {"H200"}  # pairs on one card type
    assert planned_concurrency(plan.runnable, {"GPU": 2.0, "CPU": 32.0}) == 2
    assert planned_concurrency(plan.runnable, {"GPU": 1.0, "CPU": 16.0}) == 1
    assert planned_concurrency(plan.runnable, {"GPU": 8.0, "CPU": 128.0}, cap=3) == 3
    assert planned_concurrency(plan.runnable, {"CPU": 2.0}) == 1  # no GPU node yet (autoscaling): one at a time
    assert planned_concurrency(plan.runnable, {"CPU": 2.0}, cap=3) == 3  # ... unless the sweep says how many
    two_workers = plan_sweep(*load_sweep(experiments_dir() / "sweeps/fp8-vs-bf16.yaml", ["sweep.resources={num_workers: 2, gpus_per_worker: 1}"]),
                             cluster=ClusterView(("H200",), True, "test"))
    assert {t.cfg.scaling.num_workers for t in two_workers.runnable} == {2}
    assert planned_concurrency(two_workers.runnable, {"GPU": 4.0, "CPU": 64.0}) == 2


def test_one_worker_trials_train_in_process_and_ask_for_the_workers_resources(tmp_path):
    """``in_process: auto`` (the default): a one-worker trial trains in its Tune trial's process and so asks Tune for
    what its worker would hold (CPUs, the GPU, the accelerator type's share); a multi-worker trial, or any trial with
    ``in_process: false``, waits on a TorchTrainer with a token share of the head."""
    from yxanul.sweep.tune import HEAD_TOKEN, trial_params

    path = write(tmp_path, BASE + """
axes:
  scaling.num_workers: [1, 2]
resources: {gpus_per_worker: 1, cpus_per_worker: 3, accelerator_type: H100}
""")
    spec, overrides = load_sweep(path)
    assert spec.in_process == "auto"
    plan = plan_sweep(spec, overrides, cluster=MIXED)
    assert ("training: 1 trial(s) in their Tune trial's own process, 1 on a Ray Train TorchTrainer each "
            "(in_process: auto)") in format_plan(plan)
    one, two = trial_params(plan)
    assert one["in_process"] and one["resources"] == {"CPU": 3, "GPU": 1, "accelerator_type:H100": 0.001}
    assert not two["in_process"] and two["resources"] == HEAD_TOKEN
    spec, overrides = load_sweep(path, ["sweep.in_process=false"])
    params = trial_params(plan_sweep(spec, overrides, cluster=MIXED))
    assert [(p["in_process"], p["resources"]) for p in params] == [(False, HEAD_TOKEN)] * 2
    with pytest.raises(ConfigError, match="in_process"):
        load_sweep(path, ["sweep.in_process=true"])


@pytest.mark.parametrize(("name", "fp8"), [("fp8-vs-bf16", True), ("curriculum-variants", False)])
def test_in_process_trials_load_transformer_engine_first_only_in_a_sweep_with_fp8_trials(name, fp8):
    """The trials' shared constants say whether any runnable trial trains in FP8: only then does an in-process
    trial's process load Transformer Engine before torch's cuDNN (a BF16 sweep does not pay for the import)."""
    from yxanul.sweep.tune import sweep_consts

    consts = sweep_consts(plan_sweep(*load_sweep(name), cluster=MIXED), "parent-id")
    assert consts["fp8"] is fp8 and consts["parent_run_id"] == "parent-id" and consts["name"] == name


def test_a_failed_trial_s_line_is_read_from_tune_s_own_error_file_before_it_is_synced(tmp_path):
    """Tune appends the error to the driver's copy (trial.error_file) just before the callbacks run and syncs it to
    the storage later (get_error then returns None): the restart line says the error, not "see the error file"."""
    from yxanul.sweep.records import _error_line

    class Trial:
        def __init__(self, error_file: str | None, stored: str | None = None) -> None:
            self.error_file, self.stored = error_file, stored

        def get_error(self) -> str | None:
            return self.stored

    error = tmp_path / "error.txt"
    error.write_text("Failure # 1 (occurred at 2026-12-07_04-00-06)\nray::_trial_fn() (pid=4242, ip=10.0.0.7)\n"
                     "  File \"x.py\", line 1, in f\nFileNotFoundError: [Errno 2] No such file: 'a.bin'\n")
    assert _error_line(Trial(str(error))) == "FileNotFoundError: [Errno 2] No such file: 'a.bin'"
    assert _error_line(Trial(None, "RuntimeError: from the storage\n")) == "RuntimeError: from the storage"
    assert _error_line(Trial(str(tmp_path / "gone.txt"))) == "failed (see the trial's error file in the Ray Tune folder)"
