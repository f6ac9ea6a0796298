"""Rehearse the autoscaling cluster of cluster.yaml on this machine: Ray's autoscaler (fake_multinode provider)
starts and retires nodes of cluster.yaml's types, with token authentication on; GPUs are logical only.

    python -m jobs.cluster_sim cluster.yaml --sweep autoscale-rehearsal   # start, submit, watch nodes, stop
    python -m jobs.cluster_sim cluster.yaml                               # start; submit yourself; Ctrl-C stops
    python -m jobs.cluster_sim cluster.yaml --dry-run                     # print the generated config

With --sweep, the sweep is submitted with `ray job submit` (trials must set scaling.simulate_accelerators)
as a new sweep named <sweep>-<time> (unless sweep.name=... is given); KEY=VALUE overrides go to the sweep.
Node launches and removals are printed with `ray status` as they happen; after the job the command waits
for the idle nodes to go, then stops the cluster. Everything
(config, token, logs) is under --out. See docs/cluster.md, "Try the autoscaler locally".
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from yxanul.cli import job_parser, run_job

REPO = Path(__file__).resolve().parents[1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = job_parser(__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/cluster-sim", help="folder for the config, token and logs")
    parser.add_argument("--sweep", default=None, help="sweep to submit (a file, or a name under experiments/sweeps)")
    parser.add_argument("--idle-timeout-minutes", type=float, default=0.2,
                        help="idle nodes are removed after this long (cluster.yaml says 10; short here to watch it)")
    args = parser.parse_intermixed_args(argv)

    from yxanul.cluster_sim import SimulatedCluster, simulated_config

    if args.dry_run:
        import yaml

        from yxanul.config import read_yaml

        config = simulated_config(read_yaml(args.config), gcs_port=6379, source=args.config,
                                  idle_timeout_minutes=args.idle_timeout_minutes)
        print(yaml.safe_dump(config, sort_keys=False), end="")
        return 0
    if args.sweep:
        if not any(o.startswith("sweep.name=") for o in args.overrides):  # a new sweep each time, as jobs.demo
            args.overrides.append(f"sweep.name={Path(args.sweep).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
        _check_sweep(args.sweep, args.overrides, args.config)
    elif args.overrides:
        parser.error("KEY=VALUE overrides are for the sweep: give --sweep")

    cluster = SimulatedCluster(args.config, args.out, idle_timeout_minutes=args.idle_timeout_minutes)
    with cluster:
        from yxanul.ray_session import local_server_env

        loopback = "".join(f" {k}={v}" for k, v in local_server_env().items())  # `ray status` must not leave 127.0.0.1
        print(f"head up: dashboard {cluster.dashboard_url}, config {cluster.config_path}\nclients: export "
              f"RAY_ADDRESS={cluster.dashboard_url} RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={cluster.token_path}"
              f"{loopback}", flush=True)
        if not args.sweep:
            print("watching nodes; Ctrl-C stops the cluster", flush=True)
            try:
                cluster.watch(until=lambda: False)
            except KeyboardInterrupt:
                pass
            return 0
        return cluster.rehearse(["python", "-m", "jobs.sweep", args.sweep, *args.overrides], REPO)


def _check_sweep(sweep: str, overrides: list[str], cluster_yaml: str) -> None:
    """Print the sweep's plan against the cluster's node types; fail before starting anything when its data
    is missing."""
    from yxanul.accelerators import cluster_config_accelerator_types
    from yxanul.config import read_yaml
    from yxanul.errors import DataError
    from yxanul.sweep import ClusterView, check_data, format_plan, load_sweep, plan_sweep

    types = tuple(cluster_config_accelerator_types(read_yaml(cluster_yaml)))
    plan = plan_sweep(*load_sweep(sweep, overrides), cluster=ClusterView(types, None, f"{cluster_yaml} (simulated)"))
    print(format_plan(plan), flush=True)
    try:
        check_data(plan)
    except DataError as exc:
        raise DataError(f"{exc} (autoscale-rehearsal reads the demo's smoke data: python -m jobs.demo --smoke)"
                        ) from None


if __name__ == "__main__":
    sys.exit(run_job(main))
