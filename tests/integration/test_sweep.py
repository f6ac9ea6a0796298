"""Sweeps end to end on real local Ray (Tune + Train, 1-worker CPU trials) and a real MLflow store:
the parent run and one child run per trial with tags and metrics, FP8 trials recorded as not runnable
on a CPU cluster, resume of a finished sweep without re-running or duplicating trials, and ASHA
stopping a trial at a token milestone with its MLflow run ended."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mlflow import MlflowClient

from jobs import sweep as sweep_job
from tests.train_helpers import checkpoint_on_storage, make_dataset
from yxanul.sweep import load_sweep, run_sweep

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    # 7 distinct tokens: a model with a useful learning rate gets well below its initial loss in a few steps.
    data = make_dataset(root / "data", {32: 300, 64: 150}, row_group_rows=32, vocab=8,
                        validation={"english": 10, "code": 6})
    return {"root": root, "data": data, "uri": f"sqlite:///{root / 'mlflow.db'}"}


def write_sweep(env, name: str, body: str) -> Path:
    path = env["root"] / f"{name}.yaml"
    path.write_text(f"""
base:
  config: experiments/runs/pulse.yaml
  overrides:
    data.output_dir: {env['data']}
    run.storage_path: {env['root'] / 'ray'}
    tracking.uri: {env['uri']}
    tracking.experiment: sweeps
    train.max_tokens: 8192
    train.tokens_per_step: 1024
    train.max_tokens_per_microbatch: 512
    optim.warmup_tokens: 0
    eval.every_tokens: 2048
    eval.seq_len: 32
    eval.max_tokens_per_domain: 256
    checkpoint.every_tokens: 2048
    log.every_steps: 2
resources: {{num_workers: 1, cpus_per_worker: 1}}
{body}""")
    return path


def children(client: MlflowClient, parent_id: str) -> dict[str, object]:
    runs = client.search_runs([client.get_run(parent_id).info.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {r.data.tags["yxanul.variant"]: r for r in runs}


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_two_by_two_sweep_in_mlflow_with_fp8_not_runnable_and_resume(env, ray_cluster, capsys):
    path = write_sweep(env, "grid", """
axes:
  curriculum:
    variants:
      short: {curriculum.stages: [{seq_len: 32}]}
      long: {curriculum.stages: [{seq_len: 64}]}
  precision:
    key: precision.mode
    values: [fp32, fp8]
max_concurrent_trials: 2
""")
    assert sweep_job.main([str(path), "sweep.name=grid"]) == 0
    printed = capsys.readouterr().out
    client = MlflowClient(env["uri"])
    [parent] = client.search_runs([client.get_experiment_by_name("sweeps").experiment_id],
                                  filter_string="tags.`yxanul.sweep` = 'grid' and tags.`yxanul.role` = 'sweep'")
    assert parent.info.status == "FINISHED" and parent.data.tags["yxanul.status"] == "finished"
    assert parent.data.params["sweep.trials"] == "4"
    # what jobs.compare needs to compare fairly: the reference arm, the command (no target fixed here)
    assert parent.data.params["sweep.reference"] == "curriculum=short,precision.mode=fp32"
    assert "sweep.target_bpb" not in parent.data.params and parent.data.tags["yxanul.command"]
    assert parent.data.params["sweep.command_overrides"] == "[]"  # sweep.name=grid changes the sweep, not the runs
    runs = children(client, parent.info.run_id)
    assert sorted(runs) == ["curriculum=long,precision.mode=fp32", "curriculum=long,precision.mode=fp8",
                            "curriculum=short,precision.mode=fp32", "curriculum=short,precision.mode=fp8"]
    for curriculum, seq_len in (("short", 32), ("long", 64)):
        ran = runs[f"curriculum={curriculum},precision.mode=fp32"]
        tags = ran.data.tags
        assert ran.info.status == "FINISHED" and tags["yxanul.status"] == "finished"
        assert (tags["yxanul.sweep"], tags["yxanul.pair"]) == ("grid", f"curriculum={curriculum}")
        # the arm and grid point as tags (the report reads them; it never parses the label)
        assert tags["yxanul.arm"] == f"curriculum={curriculum},precision.mode=fp32"
        assert tags["yxanul.axes"] == f'{{"curriculum": "{curriculum}", "precision.mode": "fp32"}}'
        assert ran.data.params["precision.mode"] == "fp32" and ran.data.params["run.seed"] == "0"
        assert steps(client, ran.info.run_id, "val/bpb") == [2048, 4096, 6144, 8192]
        assert steps(client, ran.info.run_id, "train/loss") == [2048, 4096, 6144, 8192]  # log every 2 steps
        assert {m.value for m in client.get_metric_history(ran.info.run_id, "train/seq_len")} == {seq_len}
        # FP8 is never run in another precision: recorded, ended, with the reason, no metrics
        skipped = runs[f"curriculum={curriculum},precision.mode=fp8"]
        assert skipped.data.tags["yxanul.status"] == "not_runnable" and skipped.info.status == "KILLED"
        assert skipped.data.tags["yxanul.reason"].startswith("not runnable: precision.mode=fp8")
        assert "no GPU" in skipped.data.tags["yxanul.reason"] and skipped.data.metrics == {}
        assert skipped.data.tags["yxanul.pair"] == f"curriculum={curriculum}"
        assert skipped.data.tags["yxanul.arm"] == f"curriculum={curriculum},precision.mode=fp8"
    assert "not runnable: precision.mode=fp8" in printed and "finished" in printed
    # The console: one line per trial event under the trial's name; Ray's and Tune's output is in the log.
    for label in ("t00 curriculum=short,precision.mode=fp32", "t02 curriculum=long,precision.mode=fp32"):
        mine = [line.removeprefix(f"{label} | ") for line in printed.splitlines() if line.startswith(f"{label} | ")]
        # the driver prints the trial's timeline (from its run's metrics) just before its verdict: never lost to Ray's
        # log forwarding, which may deliver a trial's last lines after the driver has exited
        assert mine[0] == "started" and mine[-1] == "finished: at 8192 tokens", mine
        assert [line for line in mine if line.startswith("timeline: ")] == [mine[-2]], mine
        assert re.match(r"timeline: wall [\d.]+ s: steps [\d.]+ s \([\d.]+%\)", mine[-2])
        progress = [line for line in mine if "% step " in line]  # the progress bar's lines
        assert [re.search(r" step (\d+)/8 ", line).group(1) for line in progress] == ["2", "4", "6", "8"]
        assert all(re.search(r"loss \d+\.\d+ .* [\d,]+ tok/s .*eta \S+$", line) for line in progress), progress
        assert len([line for line in mine if re.match(r"validation at [\d.]+k tokens: bpb \d", line)]) == 4
    assert not re.search(r"pid=\d+.*yxanul\[grid-t0", printed)  # no raw forwarded worker line
    log = (env["root"] / "ray" / "sweeps" / "grid.log").read_text()
    assert "Ray and Tune output: " + str(env["root"] / "ray" / "sweeps" / "grid.log") in printed
    # (in the trial's own process: one-worker trials train there, sweep.in_process: auto)
    assert re.search(r"\(_trial_fn pid=\d+[^)]*\)(\x1b\[0m)? yxanul\[grid-t00\] .* step 2/8 ", log)

    # The same command again restores the (finished) Tune experiment: no trial runs again, no new runs.
    outcome = run_sweep(*load_sweep(path, ["sweep.name=grid"]))
    assert outcome.resumed and outcome.parent_run_id == parent.info.run_id
    again = children(client, parent.info.run_id)
    assert {k: r.info.run_id for k, r in again.items()} == {k: r.info.run_id for k, r in runs.items()}
    assert all(again[k].info.end_time == runs[k].info.end_time for k in runs)

    # ...but a changed sweep under the same name is refused instead of mixing trials.
    with pytest.raises(Exception, match="started with different trials"):
        run_sweep(*load_sweep(path, ["sweep.name=grid", "train.max_tokens=4096"]))


def test_asha_stops_the_worse_trial_at_a_token_milestone(env, ray_cluster):
    path = write_sweep(env, "asha", """
axes:
  optim.lr: [1.0e-7, 3.0e-2]
scheduler: {grace_tokens: 2048, reduction_factor: 2}
max_concurrent_trials: 1
""")
    # On this data (7 equiprobable tokens) lr 1e-7 stays at its initial 0.7538 bits/byte while lr 3e-2
    # overshoots to 0.7726 at 2048 tokens (CPU fp32 is deterministic); one trial at a time, so the first
    # trial sets the cutoff at the 2048-token milestone and the second falls below it.
    spec, overrides = load_sweep(path, ["sweep.name=asha"])
    outcome = run_sweep(spec, overrides)
    client = MlflowClient(env["uri"])
    runs = children(client, outcome.parent_run_id)
    good, bad = runs["optim.lr=1e-07"], runs["optim.lr=0.03"]
    assert good.info.status == "FINISHED" and good.data.tags["yxanul.status"] == "finished"
    assert steps(client, good.info.run_id, "val/bpb")[-1] == 8192
    # Stopped at the first milestone (2048 tokens), where its bits/byte were worse than the good trial's.
    assert bad.data.tags["yxanul.status"] == "stopped_early" and bad.info.status == "KILLED"
    assert bad.data.tags["yxanul.stopped_at_tokens"] == "2048"
    assert "ASHA" in bad.data.tags["yxanul.reason"]
    bad_bpb = dict((m.step, m.value) for m in client.get_metric_history(bad.info.run_id, "val/bpb"))
    good_bpb = dict((m.step, m.value) for m in client.get_metric_history(good.info.run_id, "val/bpb"))
    assert bad_bpb[2048] > good_bpb[2048]
    # (How many steps the worker still ran before Tune's stop reached it is timing, not asserted.)
    assert outcome.rows[1]["status"] == "stopped_early"


@pytest.mark.parametrize("in_process", ["auto", "false"])
def test_sigterm_stops_the_sweep_in_one_line_and_the_same_command_resumes_it_exactly(env, ray_cluster, in_process):
    """A real SIGTERM to `python -m jobs.sweep` after the trial's first checkpoint: one line ("interrupted at ...
    in trial t00; the same command resumes"), exit code 143, no stack dump; the parent and the trial's run record
    the interruption. The same command resumes the trial from its checkpoint into the same MLflow run, and its
    losses are bit-identical (CPU fp32) to an uninterrupted sweep's. The driver attaches to the session's Ray (as
    `ray job submit` drivers do), so only the driver gets the signal. Both ways a trial trains: in the Tune trial's
    process (its checkpoints in Tune's trial folder, restored by Tune) and on a TorchTrainer (in its run folder)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    path = write_sweep(env, "resume", """
axes:
  optim.lr: [3.0e-3]
""")
    name = f"resume-{in_process}"
    overrides = ["train.max_tokens=32768", "eval.every_tokens=4096", "log.every_steps=4",  # checkpoints follow eval
                 f"sweep.in_process={in_process}"]
    command = [sys.executable, "-m", "jobs.sweep", str(path), f"sweep.name={name}", *overrides]
    environ = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ)
    deadline = time.monotonic() + 400
    trial_dir = env["root"] / "ray" / f"{name}-t00"
    while time.monotonic() < deadline and proc.poll() is None and not checkpoint_on_storage(trial_dir):
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 143, (out[-3000:], err[-3000:])
    assert re.fullmatch(r"interrupted at \S+ tokens in trial t00; the same command resumes\n", err), err
    assert "SIGTERM received" not in out + err and "Traceback" not in out + err
    client = MlflowClient(env["uri"])
    [parent] = client.search_runs([client.get_experiment_by_name("sweeps").experiment_id],
                                  filter_string=f"tags.`yxanul.sweep` = '{name}' and tags.`yxanul.role` = 'sweep'")
    assert parent.data.tags["yxanul.status"] == "interrupted" and parent.data.tags["yxanul.interruptions"] == "1"
    assert re.search(r"Z SIGTERM at \S+ tokens in trial t00$", parent.data.tags["yxanul.last_interruption"])
    [child] = children(client, parent.info.run_id).values()
    assert child.data.tags["yxanul.status"] == "killed" and child.data.tags["yxanul.interruptions"] == "1"
    assert child.data.tags["yxanul.execution"] == ("in_process" if in_process == "auto" else "ray_train")
    killed_at = max(steps(client, child.info.run_id, "train/loss"))
    assert killed_at < 32768

    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=environ, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(resuming)" in again.stdout and "t00 optim.lr=0.003 | finished: at 32768 tokens" in again.stdout
    assert re.search(r"t00 optim.lr=0.003 \| timeline: wall [\d.]+ s: steps [\d.]+ s \([\d.]+%\)", again.stdout)
    assert re.search(r"sweep efficiency [\d.]+%: training steps [\d.]+ s of [\d.]+ s wall x 1 trial slot", again.stdout)
    [run] = children(client, parent.info.run_id).values()
    assert run.info.run_id == child.info.run_id and run.info.status == "FINISHED"  # the same child run, continued
    assert run.data.tags["yxanul.resumed"] == "true" and run.data.tags["yxanul.resumes"] == "1"
    # the second start trained on from the interrupted start's checkpoint (rank 0's "<pid> start <step> <tokens>")
    starts = [line.split() for line in (trial_dir / "workers" / "rank0.log").read_text().splitlines() if " start " in line]
    assert len(starts) == 2 and int(starts[0][3]) == 0 and int(starts[1][3]) >= 2048, starts
    assert steps(client, run.info.run_id, "val/bpb") == list(range(4096, 32769, 4096))  # none twice
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["yxanul.resumes"] == "1"
    # the sweep's timeline on the parent, at step 2 (its second start)
    assert [m.step for m in client.get_metric_history(parent.info.run_id, "timeline/efficiency")] == [2]

    # An uninterrupted sweep of the same trial: the same losses, bit for bit (CPU fp32).
    reference = run_sweep(*load_sweep(path, [f"sweep.name={name}-ref", *overrides]))
    [ref] = children(client, reference.parent_run_id).values()
    losses = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert losses == sorted((m.step, m.value) for m in client.get_metric_history(ref.info.run_id, "train/loss"))
    assert len(losses) >= 8 and losses[-1][0] == 32768


def test_tune_starts_the_trials_in_the_planned_order(env, ray_cluster, tmp_path):
    """One trial at a time (as on one GPU), Ray Tune starts the trials in the plan's run order: seed by seed,
    the arms rotated (tests/unit/test_sweep.py checks the plan itself). A trivial trainable stands in for
    training: what is tested is the param space and the Tune config the sweep builds."""
    from ray import tune

    from yxanul.sweep import ClusterView, plan_sweep
    from yxanul.sweep.tune import param_space, tune_config

    path = write_sweep(env, "order", """
axes:
  optim.lr: [1.0e-3, 2.0e-3, 3.0e-3]
seeds: [0, 1, 2]
""")
    plan = plan_sweep(*load_sweep(path, ["sweep.name=order"]), cluster=ClusterView((), None, "test"))
    started: list[int] = []

    class Order(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            started.append(trial.config["trial"]["index"])

    def trial(config):
        import os

        return {"done": True, "pid": os.getpid()}

    config = tune_config(plan, load_sweep(path, ["sweep.name=order"])[0])
    assert config.reuse_actors and config.metric == "val/bpb"
    tuner = tune.Tuner(tune.with_resources(trial, {"cpu": 0, "node:__internal_head__": 0.01}),
                       param_space=param_space(plan, {"name": plan.name}),
                       tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=config.reuse_actors),
                       run_config=tune.RunConfig(name="order", storage_path=str(tmp_path), verbose=0,
                                                 callbacks=[Order()]))
    results = tuner.fit()
    assert started == list(range(9))
    # one trial driver process served every trial (its imports and MLflow client stay warm)
    assert len({r.metrics["pid"] for r in results}) == 1
    assert [(t.cfg.optim.lr, t.seed) for t in plan.trials][:4] == [(1e-3, 0), (2e-3, 0), (3e-3, 0), (2e-3, 1)]


def test_seeds_auto_stops_the_tune_experiment_once_the_rule_has_decided(env, ray_cluster, tmp_path):
    """``seeds: auto`` on a real Tune run and a real MLflow store: each trial (a stand-in for training) records its
    finished child run with a final val/bpb; the arms differ by 0.05 at every seed (seed noise 0.001), so the rule
    decides "different" at its first look, 3 seeds, and Tune never starts the 4 trials of seeds 3 and 4."""
    from ray import tune

    from yxanul.sweep import ClusterView, plan_sweep
    from yxanul.sweep.auto import AutoStop, AutoWatch, decided
    from yxanul.sweep.tune import _auto_seeds, param_space
    from yxanul.tracking import connect, create_run

    path = write_sweep(env, "auto", """
axes:
  optim.lr: [1.0e-3, 2.0e-3]
seeds: auto
max_seeds: 5
""")
    plan = plan_sweep(*load_sweep(path, ["sweep.name=auto"]), cluster=ClusterView((), None, "test"))
    assert len(plan.trials) == 10
    experiment = connect(env["uri"], "auto")
    parent = create_run(env["uri"], experiment, "sweep-auto")
    auto = _auto_seeds(plan, env["uri"], experiment, parent)
    started: list[int] = []

    class Started(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            started.append(trial.config["trial"]["index"])

    def stand_in(config):
        from yxanul.tracking import Status, create_run, end_run

        trial, sweep = config["trial"], config["sweep"]
        seed = trial["seed"]
        rid = create_run(sweep["uri"], sweep["experiment"], trial["run_name"], params={"run.seed": str(seed)},
                         tags={"mlflow.parentRunId": sweep["parent"], "yxanul.arm": trial["arm"]})
        from mlflow import MlflowClient

        worse = 0.05 if "0.002" in trial["arm"] else 0.0
        MlflowClient(sweep["uri"]).log_metric(rid, "val/bpb", 1.0 + worse + 0.001 * seed, step=1)
        end_run(sweep["uri"], rid, Status.FINISHED)
        return {"done": True}

    consts = {"name": plan.name, "uri": env["uri"], "experiment": experiment, "parent": parent}
    tuner = tune.Tuner(tune.with_resources(stand_in, {"cpu": 0, "node:__internal_head__": 0.01}),
                       param_space=param_space(plan, consts),
                       tune_config=tune.TuneConfig(max_concurrent_trials=1),
                       run_config=tune.RunConfig(name="auto", storage_path=str(tmp_path), verbose=0,
                                                 stop=AutoStop(plan.name), callbacks=[Started(), AutoWatch(auto)]))
    tuner.fit()
    assert started == [0, 1, 2, 3, 4, 5]  # seeds 0, 1, 2 of both arms, nothing after the decision
    done, line = decided(auto)
    assert done and line.startswith("seeds: auto after 3 seeds: optim.lr=0.002 vs optim.lr=0.001: different")


def tune_pids(tune_path: str) -> dict[str, set[int]]:
    """Run name -> the process ids Tune itself recorded for the trial's results (its trial actor's)."""
    import json

    pids: dict[str, set[int]] = {}
    for results in Path(tune_path).glob("*/result.json"):
        for line in results.read_text().splitlines():
            result = json.loads(line)
            pids.setdefault(result["config"]["trial"]["run_name"], set()).add(result["pid"])
    return pids


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_one_worker_trials_train_in_the_reused_tune_process_as_they_would_on_ray_train(env, ray_cluster):
    """``in_process: auto`` (the default): two one-worker trials, one at a time, train inside the Tune trial's own
    process: both finish and are recorded in MLflow, the training ran in the process Tune reported the trial from
    (no TorchTrainer worker) and in the same one for both, checkpoints went to Tune's trial folders, and the timeline
    has no worker start and no phase counted twice. The same trial with ``sweep.in_process=false`` (a TorchTrainer)
    gives bit-identical losses and bits/byte (CPU fp32)."""
    path = write_sweep(env, "inproc", """
axes:
  optim.lr: [1.0e-3, 3.0e-3]
max_concurrent_trials: 1
""")
    client = MlflowClient(env["uri"])
    outcome = run_sweep(*load_sweep(path, ["sweep.name=inproc"]))
    runs = children(client, outcome.parent_run_id)
    assert sorted(runs) == ["optim.lr=0.001", "optim.lr=0.003"]
    pids = tune_pids(outcome.tune_path)
    for run in runs.values():
        tags = run.data.tags
        assert run.info.status == "FINISHED" and tags["yxanul.status"] == "finished"
        assert tags["yxanul.execution"] == "in_process"
        assert pids[tags["yxanul.run_name"]] == {int(tags["yxanul.worker_pid"])}  # trained where Tune ran the trial
        assert steps(client, run.info.run_id, "val/bpb") == [2048, 4096, 6144, 8192]
        run_folder = env["root"] / "ray" / tags["yxanul.run_name"]
        assert not list(run_folder.glob("checkpoint_*"))  # no Ray Train run: its checkpoints would be here
        assert len(list(Path(outcome.tune_path).glob("*/checkpoint_*/state.json"))) >= 2
        metrics = run.data.metrics
        assert metrics["timeline/worker_start_s"] < 1.0 and metrics["timeline/other_s"] >= 0
        assert metrics["timeline/steps_s"] > 0 and metrics["timeline/build_s"] > 0
    assert len({r.data.tags["yxanul.worker_pid"] for r in runs.values()}) == 1  # one process served both trials
    first, later = sorted(runs.values(), key=lambda r: r.info.start_time)
    # the trial process's imports are the first trial's: the later one finds them done
    assert first.data.metrics["timeline/imports_s"] > later.data.metrics["timeline/imports_s"] >= 0

    single = write_sweep(env, "inproc-ray-train", """
axes:
  optim.lr: [3.0e-3]
""")
    reference = run_sweep(*load_sweep(single, ["sweep.in_process=false"]))
    [ray_train] = children(client, reference.parent_run_id).values()
    assert ray_train.data.tags["yxanul.execution"] == "ray_train"
    assert int(ray_train.data.tags["yxanul.worker_pid"]) not in set().union(*tune_pids(reference.tune_path).values())
    in_process = runs["optim.lr=0.003"].info.run_id
    for key in ("train/loss", "val/bpb"):
        assert history(client, in_process, key) == history(client, ray_train.info.run_id, key), key
    assert len(history(client, in_process, "train/loss")) == 4


def test_an_in_process_trial_that_fails_is_one_line_and_the_next_trial_trains(env, ray_cluster):
    """In process a trial's error reaches the launcher directly (no Ray Train failure wraps it): the run ends
    ``failed`` with the user's one line, the trial errors in Tune, and the next trial (which may get the same process,
    its model released) trains to the end."""
    path = write_sweep(env, "inproc-fail", """
axes:
  optim.lr: [1.0e+12, 3.0e-3]
max_concurrent_trials: 1
""")
    client = MlflowClient(env["uri"])
    outcome = run_sweep(*load_sweep(path, ["optim.grad_clip=0", "train.on_nan=stop"]))
    runs = children(client, outcome.parent_run_id)
    failed, good = runs["optim.lr=1000000000000.0"], runs["optim.lr=0.003"]
    assert failed.info.status == "FAILED" and failed.data.tags["yxanul.execution"] == "in_process"
    assert failed.data.tags["yxanul.error"].startswith("non-finite loss or gradient at step "), failed.data.tags
    assert "\n" not in failed.data.tags["yxanul.error"]
    # the verdict's reason (the sweep's table and console line) is that line, not "see the trial's error file"
    assert failed.data.tags["yxanul.reason"] == failed.data.tags["yxanul.error"]
    assert good.info.status == "FINISHED" and steps(client, good.info.run_id, "val/bpb")[-1] == 8192
    assert [r["status"] for r in outcome.rows] == ["failed", "finished"]
    assert outcome.rows[0]["reason"] == failed.data.tags["yxanul.error"]


def test_a_trial_whose_process_dies_restarts_from_its_checkpoint_and_says_why(env):
    """A real segmentation fault of an in-process trial's process (test-only YXANUL_TEST_FAILURE=segv@5, after
    checkpoints): Ray only says the actor died; the sweep names the fault and where it struck from the stack the
    process left (yxanul.fatal), starts the trial again in a new process from the checkpoint Tune registered last
    (sweep.trial_restarts, default 1), and the same MLflow run trains on to the end, every step logged once, its
    restart counted with that line. With trial_restarts=0 the trial fails with the same line. The sweep runs in its
    own local Ray (as `python -m jobs.sweep` on a machine without a head does), whose workers see the variable."""
    import os
    import subprocess
    import sys

    path = write_sweep(env, "segv", """
axes:
  optim.lr: [3.0e-3]
""")
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"YXANUL_TEST_FAILURE": "segv@5"}
    fault = (r"its process died: Fatal Python error: Segmentation fault in train/loop\.py:\d+ \(_inject_test_failure\)"
             r" <- train/loop\.py:\d+ \(_train\)")
    client = MlflowClient(env["uri"])

    done = subprocess.run([sys.executable, "-m", "jobs.sweep", str(path), "sweep.name=segv"], cwd=ROOT,
                          capture_output=True, text=True, env=environ, timeout=600)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    restart = re.search(r"t00 optim.lr=0.003 \| restarting: from (\S+) tokens \(its latest checkpoint\) "
                        r"\(restart 1 of 1\), after: " + fault + r"; every thread's stack: (\S+)\n", done.stdout)
    assert restart, done.stdout[-3000:]
    assert restart[1] in ("2.05k", "4.1k") and Path(restart[2]).read_text().startswith("Fatal Python error")
    assert "t00 optim.lr=0.003 | finished: at 8192 tokens" in done.stdout
    [parent] = client.search_runs([client.get_experiment_by_name("sweeps").experiment_id],
                                  filter_string="tags.`yxanul.sweep` = 'segv' and tags.`yxanul.role` = 'sweep'")
    [run] = children(client, parent.info.run_id).values()
    assert run.info.status == "FINISHED" and run.data.tags["yxanul.restarts"] == "1"
    assert re.search(r"Z from \S+ tokens \(its latest checkpoint\) \(restart 1 of 1\), after: " + fault,
                     run.data.tags["yxanul.last_restart"])
    assert run.data.tags["yxanul.resumes"] == "1"  # the restart reopened the same run
    assert steps(client, run.info.run_id, "train/loss") == [2048, 4096, 6144, 8192]  # none lost, none twice
    assert steps(client, run.info.run_id, "val/bpb") == [2048, 4096, 6144, 8192]
    report = subprocess.run([sys.executable, "-m", "jobs.compare", "--sweep", "segv", "--out", str(env["root"] / "segv"),
                             "--tracking-uri", env["uri"], "--no-log"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    history = next(line for line in (env["root"] / "segv" / "comparison.md").read_text().splitlines()
                   if line.startswith("- history: "))
    assert re.search(r"restarted after a failure: optim.lr=0.003 seed 0 \(1; last: \S+Z from \S+ tokens .*"
                     r"Segmentation fault", history), history

    done = subprocess.run([sys.executable, "-m", "jobs.sweep", str(path), "sweep.name=segv-0",
                           "sweep.trial_restarts=0"], cwd=ROOT, capture_output=True, text=True, env=environ,
                          timeout=600)
    assert done.returncode != 0 and "restarting" not in done.stdout
    assert re.search(r"t00 optim.lr=0.003 \| failed: " + fault, done.stdout), done.stdout[-3000:]
    [parent] = client.search_runs([client.get_experiment_by_name("sweeps").experiment_id],
                                  filter_string="tags.`yxanul.sweep` = 'segv-0' and tags.`yxanul.role` = 'sweep'")
    [run] = children(client, parent.info.run_id).values()
    assert run.info.status == "FAILED" and re.match(fault, run.data.tags["yxanul.reason"])


def test_a_trial_whose_process_dies_before_its_run_opens_says_where_and_counts_the_restart(env):
    """A real segmentation fault of an in-process trial's process before its MLflow run opens (test-only
    YXANUL_TEST_FAILURE=segv@mlflow: in the run's first process only), as one struck a reused trial process on an H100
    (2026-12-07): the trial records faults from its start, so the sweep names the fault and where it struck (in the
    file of the dead process Ray names), not only Ray's "Worker unexpectedly exits"; the run the restarted trial opens
    counts the restart with that line. With trial_restarts=0 the failed run it records says the same."""
    import os
    import subprocess
    import sys

    path = write_sweep(env, "segv-mlflow", """
axes:
  optim.lr: [3.0e-3]
""")
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"YXANUL_TEST_FAILURE": "segv@mlflow"}
    fault = (r"its process died: Fatal Python error: Segmentation fault in train/launch\.py:\d+ "
             r"\(_inject_test_failure_before_mlflow\) <- train/launch\.py:\d+ \(_prepare\); every thread's stack: \S+"
             r"/segv-mlflow(?:-0)?-t00/workers/rank0-\d+\.fatal")
    client = MlflowClient(env["uri"])

    def the_run(sweep: str):
        [parent] = client.search_runs([client.get_experiment_by_name("sweeps").experiment_id],
                                      filter_string=f"tags.`yxanul.sweep` = '{sweep}' and tags.`yxanul.role` = 'sweep'")
        [run] = children(client, parent.info.run_id).values()
        return run

    done = subprocess.run([sys.executable, "-m", "jobs.sweep", str(path), "sweep.name=segv-mlflow"], cwd=ROOT,
                          capture_output=True, text=True, env=environ, timeout=600)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert re.search(r"t00 optim.lr=0.003 \| restarting: from the start \(restart 1 of 1\), after: " + fault,
                     done.stdout), done.stdout[-3000:]
    assert "t00 optim.lr=0.003 | finished: at 8192 tokens" in done.stdout
    run = the_run("segv-mlflow")
    assert run.info.status == "FINISHED" and run.data.tags["yxanul.restarts"] == "1"
    assert re.search(r"Z from the start \(restart 1 of 1\), after: " + fault, run.data.tags["yxanul.last_restart"])
    assert steps(client, run.info.run_id, "train/loss") == [2048, 4096, 6144, 8192]

    done = subprocess.run([sys.executable, "-m", "jobs.sweep", str(path), "sweep.name=segv-mlflow-0",
                           "sweep.trial_restarts=0"], cwd=ROOT, capture_output=True, text=True, env=environ,
                          timeout=600)
    assert done.returncode != 0
    assert re.search(r"t00 optim.lr=0.003 \| failed: " + fault, done.stdout), done.stdout[-3000:]
    run = the_run("segv-mlflow-0")
    assert run.info.status == "FAILED" and re.match(fault, run.data.tags["yxanul.reason"])
