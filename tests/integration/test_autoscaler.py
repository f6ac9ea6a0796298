"""The heterogeneous autoscaling cluster of cluster.yaml, for real on one machine: Ray's own autoscaler
with the fake_multinode provider (node types generated from cluster.yaml by yxanul.cluster_sim), a head
started with `ray start --head` and token authentication on, the autoscale-rehearsal sweep submitted
with `ray job submit` as a user submits to the cloud cluster, a real MLflow SQLite store.

From zero worker nodes: the FP8/BF16 pair must run on one FP8-capable type, the other BF16 arm on a
GPU type, the B200 arm is recorded not runnable; only the node types the trials needed are launched,
and idle nodes are removed after the (short) idle timeout. The head's process group and the processes
under its temp folder are ended at the end (never `ray stop`)."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.train_helpers import make_dataset
from yxanul.cluster_sim import HEAD_NODE_TYPE, SimulatedCluster, submit_args

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
IDLE_TIMEOUT_MINUTES = 0.1


@pytest.fixture
def cluster(tmp_path):
    sim = SimulatedCluster(REPO / "cluster.yaml", tmp_path / "sim", idle_timeout_minutes=IDLE_TIMEOUT_MINUTES)
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


def test_sweep_on_the_simulated_autoscaling_cluster(tmp_path, cluster):
    # The generated node types are cluster.yaml's, scaled down; the cluster starts with no worker node.
    types = cluster.config["available_node_types"]
    assert set(types) == {HEAD_NODE_TYPE, "cpu", "gpu.h100", "gpu.a100", "gpu.l40s", "gpu.l4"}
    assert types["gpu.l4"]["resources"] == {"CPU": 2, "GPU": 2, "accelerator_type:L4": 1}
    assert types[HEAD_NODE_TYPE]["resources"] == {"CPU": 0}
    assert cluster.config["idle_timeout_minutes"] == IDLE_TIMEOUT_MINUTES
    assert [n.node_type for n in cluster.nodes()] == [HEAD_NODE_TYPE]

    # Token authentication is on: the Jobs API refuses a request without the token.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{cluster.dashboard_url}/api/jobs/", timeout=10)
    assert refused.value.code in (401, 403)

    data = make_dataset(tmp_path / "data", {256: 160}, vocab=8, validation={"english": 6, "code": 4})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job_id = f"yxanul-autoscale-{os.getpid()}-{int(time.time())}"
    entrypoint = ["python", "-m", "jobs.sweep", "autoscale-rehearsal", f"data.output_dir={data}",
                  f"run.storage_path={tmp_path / 'ray'}", f"tracking.uri={uri}", "train.max_tokens=8192",
                  "train.tokens_per_step=4096", "eval.seq_len=64", "eval.max_tokens_per_domain=256"]
    started = time.monotonic()
    done = cluster.ray_cli(*submit_args(cluster.dashboard_url, REPO, entrypoint, submission_id=job_id),
                           timeout_s=400, check=False)
    job_s = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    assert f"Job '{job_id}' succeeded" in done.stdout + done.stderr

    client = MlflowClient(uri)
    [parent] = client.search_runs([client.get_experiment_by_name("autoscale-rehearsal").experiment_id],
                                  filter_string="tags.`yxanul.role` = 'sweep'")
    assert parent.info.status == "FINISHED"
    runs = {r.data.tags["yxanul.variant"]: r for r in client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")}
    assert sorted(runs) == ["arm=b200", "arm=bf16", "arm=bf16-lr", "arm=fp8"]

    # Where each trial ran: the node type on its run, checked against Ray's node table.
    nodes = {n.node_id: n for n in cluster.nodes()}
    ran_on = {}
    for arm in ("fp8", "bf16", "bf16-lr"):
        run = runs[f"arm={arm}"]
        tags = run.data.tags
        assert run.info.status == "FINISHED" and tags["yxanul.status"] == "finished", tags
        assert nodes[tags["yxanul.node_id"]].node_type == tags["yxanul.node_type"]
        ran_on[arm] = tags["yxanul.node_type"]
        # Simulated, and recorded as such: the precision asked for, what actually ran, and why.
        assert tags["yxanul.simulated_accelerators"] == "true" and tags["yxanul.precision_ran"] == "fp32"
        assert tags["yxanul.simulation"].endswith("because scaling.simulate_accelerators=true (logical GPUs only)")
        assert tags["yxanul.gpu_count"] == "0"
        assert run.data.params["scaling.use_gpu"] == "true"
        assert client.get_metric_history(run.info.run_id, "val/bpb")[-1].step == 8192
    assert runs["arm=fp8"].data.tags["yxanul.precision"] == "fp8"
    assert runs["arm=fp8"].data.tags["yxanul.simulation"].startswith("precision.mode=fp8 ran as fp32 on CPU")
    # The pair shares one FP8-capable type (the first such type of the cluster: H100); the other arm may
    # go to any GPU type and pins none.
    assert ran_on["fp8"] == ran_on["bf16"] == "gpu.h100"
    assert {runs[f"arm={a}"].data.params["scaling.accelerator_type"] for a in ("fp8", "bf16")} == {"H100"}
    assert ran_on["bf16-lr"].startswith("gpu.")
    assert runs["arm=bf16-lr"].data.params["scaling.accelerator_type"] == "null"

    # A type the cluster lacks: recorded, with the reason, never run.
    b200 = runs["arm=b200"]
    assert b200.data.tags["yxanul.status"] == "not_runnable" and b200.info.status == "KILLED"
    assert b200.data.tags["yxanul.reason"] == ("not runnable: scaling.accelerator_type=B200 is not a node type of "
                                               "the cluster (available: A100, H100, L4, L40S)")
    assert b200.data.metrics == {}

    # Only the node types the trials needed were launched: the pair's H100 type, and for the other arm at
    # most one node of a GPU type (the autoscaler may start one while the H100 node is full; the arm may
    # still take a GPU of the H100 node if one frees first). No CPU node: trial drivers run on the head.
    launched = sorted(n.node_type for n in nodes.values() if n.node_type != HEAD_NODE_TYPE)
    assert "gpu.h100" in launched and len(launched) <= 2, launched
    assert all(t.startswith("gpu.") for t in launched) and set(ran_on.values()) <= set(launched), launched

    # Idle nodes go after the idle timeout (6 s, checked every second by the autoscaler).
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and any(n.alive for n in cluster.nodes() if n.node_type != HEAD_NODE_TYPE):
        time.sleep(1)
    after = cluster.nodes()
    assert [n.node_type for n in after if n.alive] == [HEAD_NODE_TYPE], after
    status = cluster.status()
    assert "Active:\n 1 ray.head.default\n" in status and "gpu." not in status.split("Pending:")[0], status
    print(json.dumps({"job_s": round(job_s), "ran_on": ran_on, "launched": launched}))
