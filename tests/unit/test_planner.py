"""Planning a sweep before paying for it: the time and cost table from a real MLflow store's earlier runs (and its
fallbacks), the minimal detectable effect and seed count against published t quantiles, and the ``seeds: auto``
stopping rule on simulated paired differences (false positives within 5%, power at a 2-sigma effect)."""

from __future__ import annotations

import math
import textwrap

import pytest

from yxanul.metrics import flops_per_token
from yxanul.sequential import SequentialDesign, simulate
from yxanul.stats import minimal_detectable_effect, seeds_needed
from yxanul.sweep import load_sweep, plan_sweep
from yxanul.sweep.budget import (
    DEFAULT_MFU,
    DEFAULT_OVERHEAD_S,
    IN_PROCESS_OVERHEAD_S,
    node_types,
    plan_budget,
    store_runs,
)
from yxanul.sweep.cluster import ClusterView
from yxanul.tags import GPU_NAME_TAG, STATUS_TAG
from yxanul.tracking import Status, connect, create_run, end_run

H100 = ClusterView(("H100",), True, "test: 1 x H100")
TOKENS = 36_000_000


@pytest.fixture()
def cluster(tmp_path):
    (tmp_path / "cluster.yaml").write_text(textwrap.dedent("""\
        available_node_types:
          head: {resources: {CPU: 0}, node_config: {InstanceType: m7i.2xlarge}}
          gpu.h100:
            max_workers: 1
            resources: {CPU: 192, GPU: 8, "accelerator_type:H100": 1}
            node_config: {InstanceType: p5.48xlarge}
          gpu.a100:
            max_workers: 2
            resources: {CPU: 96, GPU: 8, "accelerator_type:A100": 1}
            node_config: {InstanceType: p4d.24xlarge}
        """))
    (tmp_path / "cluster-prices.yaml").write_text(textwrap.dedent("""\
        as_of: 2026-01
        currency: USD
        node_types:
          gpu.h100: {instance: p5.48xlarge, per_hour: 80.0}
        """))
    return tmp_path / "cluster.yaml"


def _sweep(tmp_path, seeds="[0, 1]"):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(f"""\
        base:
          overrides:
            model.preset: tiny
            model.vocab_size: 512
            curriculum: none
            train.max_tokens: {TOKENS}
            train.tokens_per_step: 65536
            train.max_tokens_per_microbatch: 32768
            tracking.uri: sqlite:///{tmp_path}/mlflow.db
        axes:
          precision:
            key: precision.mode
            values: [bf16, fp8]
        seeds: {seeds}
        resources: {{num_workers: 1, gpus_per_worker: 1}}
        """))
    return plan_sweep(*load_sweep(path), cluster=H100)


def _earlier_run(uri: str, experiment: str, cfg, tokens_per_s: float, wall_s: float, card: str) -> None:
    """A finished run as the training job leaves it: params, the card tag, its final tokens/s, a wall time."""
    from yxanul.tracking import client

    rid = create_run(uri, experiment, "earlier", tags={GPU_NAME_TAG: card}, params=cfg.flat_params())
    mlflow = client(uri)
    mlflow.log_metric(rid, "train/tokens_per_s", tokens_per_s, step=1)
    end_run(uri, rid, Status.FINISHED)
    run = mlflow.get_run(rid)
    mlflow.set_terminated(rid, "FINISHED", end_time=run.info.start_time + int(wall_s * 1000))  # its wall clock


def test_rates_and_overhead_come_from_the_stores_earlier_runs_and_cost_is_gpu_hours_times_price(tmp_path, cluster):
    plan = _sweep(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment = connect(uri, "earlier")
    bf16 = next(t.cfg for t in plan.trials if t.cfg.precision.mode == "bf16")
    for rate, overhead in ((90_000, 50.0), (100_000, 60.0), (110_000, 70.0)):
        _earlier_run(uri, experiment, bf16, rate, TOKENS / rate + overhead, "NVIDIA H100 80GB HBM3")
    _earlier_run(uri, experiment, bf16, 1_000, 10.0, "NVIDIA A100-SXM4-40GB")  # another card: not an H100 rate
    runs, note = store_runs(uri)
    assert len(runs) == 4 and "4 finished runs" in note and all(r.tags[STATUS_TAG] == "finished" for r in runs)

    budget = plan_budget(plan, cluster_file=cluster, tracking_uri=uri)
    rows = {(r[0], r[2]): r for r in budget.rows[1:]}
    h100_bf16 = rows[("gpu.h100", "precision.mode=bf16")]
    assert h100_bf16[4] == "100k" and h100_bf16[5] == "store: 3 runs"
    per_trial = TOKENS / 100_000 + 60.0  # the median rate and the median overhead (wall - tokens / rate)
    assert h100_bf16[6] == "7m00s" and per_trial == 420.0
    # fp8 has no earlier runs: the card's BF16 peak x the stated MFU, and the stated overhead
    fp8 = plan.trials[1].cfg
    peak_rate = DEFAULT_MFU * 989.4e12 / flops_per_token(fp8.model, 2048, 512)
    assert rows[("gpu.h100", "precision.mode=fp8")][5] == "peak x 35% MFU (not measured)"
    fp8_trial = TOKENS / peak_rate + IN_PROCESS_OVERHEAD_S  # one-worker trials train in their Tune process
    gpu_hours = (2 * per_trial + 2 * fp8_trial) / 3600
    totals = budget.totals_by_node["gpu.h100"]
    assert totals["gpu_hours"] == pytest.approx(gpu_hours, rel=1e-12)
    assert totals["cost"] == pytest.approx(gpu_hours * 80.0 / 8, rel=1e-12)  # $80 per 8-GPU node-hour
    assert totals["wall_s"] == pytest.approx(gpu_hours * 3600 / 4, rel=1e-12)  # 4 trials at once on 8 GPUs
    # the A100 has no FP8: an FP8 arm and the BF16 arm paired with it run on one card type, so neither runs there
    assert "gpu.a100" not in budget.totals_by_node
    text = budget.text()
    assert "else 30 s for a trial in its Tune process, 60 s on a TorchTrainer (not measured here)" in text
    # on TorchTrainers (sweep.in_process=false) the unmeasured overhead is a worker group's start-up and teardown
    trainer = plan_sweep(*load_sweep(tmp_path / "s.yaml", ["sweep.in_process=false"]), cluster=H100)
    on_workers = plan_budget(trainer, cluster_file=cluster, tracking_uri=uri).totals_by_node["gpu.h100"]
    assert on_workers["gpu_hours"] == pytest.approx(gpu_hours + 2 * (DEFAULT_OVERHEAD_S - IN_PROCESS_OVERHEAD_S) / 3600,
                                                    rel=1e-12)
    assert "gpu.a100 (A100): runs none of these trials (FP8 arms and their pairs need FP8 tensor cores)" in text
    assert "as of 2026-01" in text
    # a BF16-only sweep runs there too, at the A100 run's own rate, and unpriced
    bf16_only = plan_sweep(*load_sweep(tmp_path / "s.yaml", ["sweep.axes={}", "precision.mode=bf16"]), cluster=H100)
    other = plan_budget(bf16_only, cluster_file=cluster, tracking_uri=uri)
    a100 = next(r for r in other.rows[1:] if r[0] == "gpu.a100")
    assert a100[4] == "1k" and a100[5] == "store: 1 run" and a100[-1] == ""


def test_bench_rows_are_the_second_source(tmp_path, cluster):
    import json

    plan = _sweep(tmp_path)
    bench = tmp_path / "bench.jsonl"
    bench.write_text("\n".join(json.dumps(r) for r in [
        {"preset": "tiny", "runner": "bench", "precision": "bf16", "tokens_per_s": 250_000.0, "card": "NVIDIA H100 80GB HBM3"},
        {"preset": "tiny", "runner": "train", "precision": "bf16", "tokens_per_s": 200_000.0, "card": "NVIDIA H100 80GB HBM3"},
        {"preset": "tiny", "runner": "peer", "precision": "bf16", "tokens_per_s": 90_000.0, "card": "NVIDIA H100 80GB HBM3"},
    ]) + "\n")
    budget = plan_budget(plan, cluster_file=cluster, tracking_uri=f"sqlite:///{tmp_path}/none.db", bench_files=[bench])
    row = next(r for r in budget.rows[1:] if r[0] == "gpu.h100" and r[2] == "precision.mode=bf16")
    assert row[4] == "200k" and row[5] == "jobs.train result (1 row)"  # the training job's rows come first
    assert any("no store at" in note for note in budget.notes)


def test_node_types_read_the_price_table_beside_the_cluster_config(cluster):
    nodes, header = node_types(cluster)
    assert [(n.name, n.accelerator, n.gpus, n.price_per_hour) for n in nodes] == [
        ("gpu.h100", "H100", 8, 80.0), ("gpu.a100", "A100", 8, None)]
    assert nodes[0].price_per_gpu_hour == 10.0 and header["as_of"] == "2026-01"


def test_the_shipped_price_table_prices_every_gpu_node_type_of_cluster_yaml():
    from yxanul.config import experiments_dir

    nodes, header = node_types(experiments_dir().parent / "cluster.yaml")
    assert nodes and all(n.price_per_hour and n.price_per_hour > 0 for n in nodes) and header["as_of"]
    import yaml

    prices = yaml.safe_load((experiments_dir().parent / "cluster-prices.yaml").read_text())["node_types"]
    assert all(prices[n.name]["instance"] == n.instance for n in nodes)


# --- seeds from the noise floor --------------------------------------------------------------------

T975 = {9: 2.262157, 19: 2.093024, 33: 2.034515}  # Student t quantiles (scipy.stats.t.ppf, computed once)
T80 = {9: 0.883404, 19: 0.860951, 33: 0.852649}


def test_mde_and_the_seed_count_match_the_formula_with_published_t_quantiles():
    sd = 0.02
    for n in (10, 20, 34):
        expected = (T975[n - 1] + T80[n - 1]) * sd / math.sqrt(n)
        assert minimal_detectable_effect(sd, n) == pytest.approx(expected, rel=1e-5)
    # 0.01 bpb at a paired sd of 0.02: 34 seeds (33 give (2.0369 + 0.8534) x 0.02 / sqrt(33) = 0.01006)
    assert seeds_needed(sd, 0.01) == 34
    assert minimal_detectable_effect(sd, 34) <= 0.01 < minimal_detectable_effect(sd, 33)
    assert seeds_needed(0.0, 0.01) == 2 and seeds_needed(1.0, 1e-6, most=50) is None


def test_the_dry_run_plans_seeds_from_a_noise_floor(tmp_path, cluster):
    plan = _sweep(tmp_path)
    spec = plan.spec.model_copy(update={"target_effect": 0.01})
    plan = plan_sweep(spec, [], cluster=H100)
    budget = plan_budget(plan, cluster_file=cluster, tracking_uri=f"sqlite:///{tmp_path}/none.db", noise_floor=0.0107)
    power = budget.power
    assert power.sd_diff == pytest.approx(0.0107 * math.sqrt(2), rel=1e-12)  # arms as independent: conservative
    assert power.mde == pytest.approx(minimal_detectable_effect(0.0107 * math.sqrt(2), 2), rel=1e-12)
    assert power.needed == seeds_needed(0.0107 * math.sqrt(2), 0.01) == 20
    assert "target effect 0.01 (sweep.target_effect): needs 20 seeds" in budget.text()


# --- seeds: auto -------------------------------------------------------------------------------------

def test_the_levels_are_spent_quadratically_and_sum_to_alpha():
    design = SequentialDesign(max_seeds=6)
    assert design.looks == [3, 4, 5, 6]
    assert [round(design.alpha_at(n), 6) for n in design.looks] == [0.003125, 0.009375, 0.015625, 0.021875]
    assert sum(design.alpha_at(n) for n in design.looks) == pytest.approx(0.05, abs=1e-15)
    with pytest.raises(ValueError):
        SequentialDesign(max_seeds=2)


@pytest.mark.parametrize("max_seeds", [4, 6, 8])
def test_false_positives_at_a_true_zero_effect_stay_within_five_percent(max_seeds):
    """20,000 simulated sweeps each: the standard error of a 5% rate is 0.15 points, and the union bound
    guarantees at most 5%; looking after every seed at 5% each would not keep it (the second half)."""
    result = simulate(SequentialDesign(max_seeds=max_seeds), effect_sd=0.0, sims=20_000, seed=1)
    assert result["different"] <= 0.05
    naive = SequentialDesign(max_seeds=max_seeds)
    object.__setattr__(naive, "alpha_at", lambda n: 0.05)  # 5% at every look: the inflation the rule avoids
    assert simulate(naive, effect_sd=0.0, sims=20_000, seed=1)["different"] > 0.06


def test_power_at_a_two_sigma_effect_and_false_equivalence_at_the_margin():
    """Reported in docs/sweeps.md: at a true effect of 2 paired sds, max_seeds 6 finds it in ~90% of sweeps
    using ~5 seeds on average; with margin 1 sd, a true difference of exactly 1 sd is called equivalent in at
    most 5%."""
    power = simulate(SequentialDesign(max_seeds=6), effect_sd=2.0, sims=20_000, seed=2)
    assert power["different"] >= 0.85 and power["mean_seeds"] < 5.5
    at_margin = simulate(SequentialDesign(max_seeds=6, margin=1.0), effect_sd=1.0, sims=20_000, seed=3)
    assert at_margin["equivalent"] <= 0.05
    null = simulate(SequentialDesign(max_seeds=6, margin=1.0), effect_sd=0.0, sims=20_000, seed=4)
    assert null["equivalent"] > 0.1  # a real zero effect is often shown equivalent within the margin


def test_decide_on_handmade_differences():
    design = SequentialDesign(max_seeds=5, margin=0.01)
    assert design.decide([-0.02, -0.021]).state == "continue"  # before the first look
    clear = design.decide([-0.020, -0.021, -0.019])
    assert clear.state == "different" and clear.n == 3 and clear.high < 0 and clear.alpha == design.alpha_at(3)
    same = design.decide([0.0001, -0.0002, 0.0001, 0.0000])
    assert same.state == "equivalent" and -0.01 < same.low and same.high < 0.01
    noisy = design.decide([0.03, -0.04, 0.05, -0.02])
    assert noisy.state == "continue"
    assert design.decide([0.03, -0.04, 0.05, -0.02, 0.01]).state == "undecided"  # max_seeds reached
    assert "at most 5%" in design.describe() and "±0.01" in design.describe()


def test_seeds_auto_in_the_sweep_file(tmp_path):
    plan = _sweep(tmp_path, seeds="auto")
    assert plan.spec.seeds == "auto" and plan.spec.seed_list == list(range(6))
    assert len(plan.trials) == 12  # trials are planned up to max_seeds; they run one seed at a time
    from yxanul.errors import ConfigError

    with pytest.raises(ConfigError, match="equivalence_margin is the stopping rule of seeds: auto"):
        load_sweep(tmp_path / "s.yaml", ["sweep.seeds=[0,1]", "sweep.equivalence_margin=0.01"])


def test_seeds_auto_runs_at_most_one_seed_of_trials_at_once():
    from yxanul.sweep.auto import concurrency

    assert concurrency(8, 3) == 3 and concurrency(1, 3) == 1 and concurrency(2, 3) == 2
