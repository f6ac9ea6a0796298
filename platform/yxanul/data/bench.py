"""Tokenization throughput of the prepare pipeline vs a plain single-process ``encode_batch`` loop.

Both read the same parquet file and tokenize every document; the baseline runs in this process on
one core (``TOKENIZERS_PARALLELISM=false``) twice: with ``encode_batch`` (the plain loop the ratio is
defined against) and with ``encode_batch_fast`` (the call the pipeline makes: the same ids without
character offsets), so the second ratio isolates what Ray and the pipeline cost. The pipeline is
:func:`~yxanul.data.prepare.build_dataset` (read, clean, actor pool) on every core of the machine,
timed from building the dataset to the last batch in the driver (the tokenize actors' start-up
included; Ray's own start-up, its idle workers and Ray Data's helper actors excluded: a tiny warm-up
dataset runs first). Two rates per core: tokens per wall-clock second divided by the cores each may
use (1 vs all), and tokens per CPU-second actually consumed (the baseline process; the pipeline's
driver plus every Ray process it started: GCS, raylet, workers, actors, also reported per role). On
a machine shared with other jobs only the second is stable.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from yxanul.config import ExperimentConfig
from yxanul.data.tokenize import flatten_ids
from yxanul.errors import DataError


def run_benchmark(cfg: ExperimentConfig, config_path: str | None, *, target_mb: float = 64.0,
                  batch: int = 512, log: Any = print) -> dict[str, Any]:
    """Run both and return {documents, mb, cores, baseline_*, pipeline_*, ratio, identical}."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    import pyarrow as pa
    import pyarrow.parquet as pq

    from yxanul.corpora import Source
    from yxanul.data.prepare import Plan, build_dataset, make_plan
    from yxanul.ray_session import ensure_ray
    from yxanul.tokenizer import eos_id, load_tokenizer

    plan = make_plan(cfg, config_path)
    texts = source_texts(plan)
    size = sum(len(t.encode()) for t in texts)
    texts = texts * max(1, int(np.ceil(target_mb * 1e6 / size)))
    cores = len(os.sched_getaffinity(0))
    result: dict[str, Any] = {"documents": len(texts), "mb": round(sum(len(t.encode()) for t in texts) / 1e6, 1),
                              "cores": cores}
    tmp = Path(tempfile.mkdtemp(prefix="yxanul-bench-data-"))
    try:
        path = tmp / "bench.parquet"
        pq.write_table(pa.table({"text": pa.array(texts, pa.large_string())}), path, row_group_size=4096)
        log(f"text: {result['documents']} documents, {result['mb']} MB from {', '.join(cfg.data.sources)}; "
            f"{cores} CPU cores")
        eos = eos_id(load_tokenizer(plan.tokenizer_path))

        docs = texts  # the file's rows, as written
        # a fresh tokenizer for each run: none starts with the other's word cache warm
        *base_ids, base_s, base_cpu = _baseline(load_tokenizer(plan.tokenizer_path).encode_batch, docs, batch)
        base_tokens = int(base_ids[1][-1])
        log(f"baseline (encode_batch): {base_tokens} tokens in {base_s:.1f} s on 1 core")
        *fast_ids, fast_s, fast_cpu = _baseline(load_tokenizer(plan.tokenizer_path).encode_batch_fast, docs, batch)
        fast_same = all(np.array_equal(a, b) for a, b in zip(fast_ids, base_ids))
        del fast_ids
        log(f"baseline (encode_batch_fast, the call the pipeline makes): {fast_s:.1f} s on 1 core")

        data = cfg.data.model_copy(update={"validation_fraction": 0.0, "mode": "packed",
                                           "max_documents": None, "id_column": None})
        bench_plan = Plan(cfg.model_copy(update={"data": data}), config_path, [], [], tmp, plan.tokenizer_path)
        ensure_ray()
        _warm_up()
        _ROLES.clear()
        start, cpu0 = time.perf_counter(), _tree_cpu()
        ds = build_dataset(bench_plan, eos, sources=[(Source(str(path), files=(str(path),)), False)])
        parts = []
        for i, b in enumerate(ds.iter_batches(batch_format="pyarrow", batch_size=None)):
            parts.append(b.column("tokens").combine_chunks().flatten().to_numpy())
            if i % 16 == 0:
                _tree_cpu()  # learn the roles of the processes alive now (an exited actor has no cmdline)
        cpu1 = _tree_cpu()
        pipe_s, by_role, started = time.perf_counter() - start, cpu_by_role(cpu0, cpu1), new_processes(cpu0, cpu1)
        pipe_cpu = sum(by_role.values())
        pipe = np.concatenate(parts)
        pipe_tokens = len(pipe) - len(docs)  # one EOS per document
        log(f"pipeline: {pipe_tokens} tokens in {pipe_s:.1f} s on {cores} cores; CPU seconds: "
            + ", ".join(f"{role} {cpu:.1f}" for role, cpu in by_role.items())
            + f"; processes started: {started or 'none'}")

        expected = np.insert(base_ids[0], base_ids[1][1:], np.uint32(eos))  # EOS after each document
        base_rate, pipe_rate = base_tokens / base_s, pipe_tokens / pipe_s / cores
        fast_rate = base_tokens / fast_s
        result.update(baseline_fast_s=round(fast_s, 2), baseline_fast_cpu_s=round(fast_cpu, 2),
                      baseline_fast_tokens_per_s_per_core=round(fast_rate),
                      ratio_vs_fast=round(pipe_rate / fast_rate, 3),
                      ratio_cpu_vs_fast=round((pipe_tokens / pipe_cpu) / (base_tokens / fast_cpu), 3))
        result.update(baseline_tokens=base_tokens, baseline_s=round(base_s, 2),
                      baseline_tokens_per_s_per_core=round(base_rate), pipeline_tokens=pipe_tokens,
                      pipeline_s=round(pipe_s, 2), pipeline_tokens_per_s_per_core=round(pipe_rate),
                      ratio=round(pipe_rate / base_rate, 3), baseline_cpu_s=round(base_cpu, 2),
                      pipeline_cpu_s=round(pipe_cpu, 2), baseline_tokens_per_cpu_s=round(base_tokens / base_cpu),
                      pipeline_tokens_per_cpu_s=round(pipe_tokens / pipe_cpu),
                      ratio_cpu=round((pipe_tokens / pipe_cpu) / (base_tokens / base_cpu), 3),
                      pipeline_cpu_s_by_role=by_role, pipeline_processes_started=started,
                      load_average=[round(x, 2) for x in os.getloadavg()],
                      identical=bool(fast_same and np.array_equal(pipe, expected)))
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _baseline(encode: Any, docs: list[str], batch: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(flat uint32 ids, document offsets, wall seconds, CPU seconds) of one process encoding ``docs``
    ``batch`` at a time. Each batch's ids go into a uint32 array as they come, as in the pipeline's
    actors, so neither side pays for keeping millions of Python ints alive."""
    start, cpu0 = time.perf_counter(), time.process_time()
    chunks, lengths = [], []
    for i in range(0, len(docs), batch):
        flat, n = flatten_ids([e.ids for e in encode(docs[i:i + batch], add_special_tokens=False)])
        chunks.append(flat)
        lengths.append(n)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
    offsets = np.zeros(len(docs) + 1, np.int64)
    np.cumsum(np.concatenate(lengths) if lengths else [], out=offsets[1:])
    return np.concatenate(chunks) if chunks else np.empty(0, np.uint32), offsets, seconds, cpu


def _warm_up() -> None:
    """Start-up of Ray itself, out of the timed region: a tiny dataset through a task and an actor
    pool boots the worker processes Ray starts at init and Ray Data's own helper actors. (The
    pipeline's tokenize actors are new processes for every dataset: their start-up stays timed.)"""
    import ray.data

    class _Identity:
        def __call__(self, batch):
            return batch

    ds = ray.data.range(64, override_num_blocks=4).map_batches(lambda b: b, batch_size=None)
    ds.map_batches(_Identity, batch_size=None, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.5).take_all()
    time.sleep(2.0)  # let the idle workers finish importing


def _tree_cpu() -> dict[int, tuple[str, float]]:
    """pid -> (role, CPU seconds) of this process and its live descendants; role is ``driver``,
    ``tokenize actors``, ``other Ray workers`` (read, clean, idle workers), ``Ray services`` (GCS,
    raylet, agents, log monitor), and under pid -1 ``exited processes`` (descendants that exited)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        # after "(comm)": state ppid ... utime (12th) stime (13th) cutime cstime (reaped children)
        stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick,
                             (int(fields[13]) + int(fields[14])) / tick)
    me = os.getpid()
    tree, frontier = {me}, [me]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, *_) in stats.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    out = {pid: (_role(pid, me), stats[pid][1]) for pid in tree if pid in stats}
    # processes that exited and were reaped inside the tree (e.g. actors the pool shut down): their
    # CPU time is in their parent's cutime/cstime; pid -1 carries the sum
    out[-1] = ("exited processes", sum(stats[pid][2] for pid in tree if pid in stats))
    return out


_ROLES: dict[int, str] = {}


def _role(pid: int, me: int) -> str:
    """A process's role from its command line, or the last one seen for it while it was readable (an
    exited process not yet reaped has an empty one; a pooled worker turns from ``ray::IDLE`` into an
    actor, so the latest readable one counts)."""
    if pid == me:
        return "driver"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read(4096).replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        cmd = ""
    if not cmd.strip():
        return _ROLES.get(pid, "exited processes")
    if cmd.startswith("ray::"):
        role = "tokenize actors" if "TokenizeBatch" in cmd else "other Ray workers"
    else:
        role = "other Ray workers" if "default_worker.py" in cmd else "Ray services"
    _ROLES[pid] = role
    return role


def cpu_by_role(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds spent between two :func:`_tree_cpu` snapshots, per role (processes that exited in
    between under ``exited processes``, when a process of the tree reaped them)."""
    out: dict[str, float] = {}
    for pid, (role, cpu) in after.items():
        spent = cpu - before.get(pid, ("", 0.0))[1]
        out[role] = round(out.get(role, 0.0) + spent, 2)
    return dict(sorted(out.items()))


def new_processes(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, int]:
    """Processes per role alive at ``after`` that were not at ``before`` (started meanwhile)."""
    out: dict[str, int] = {}
    for pid, (role, _) in after.items():
        if pid not in before and pid != -1:
            out[role] = out.get(role, 0) + 1
    return dict(sorted(out.items()))


def source_texts(plan: Any) -> list[str]:
    """The non-empty texts of the plan's training sources, in order: local files one by one, a URI
    (``s3://...``, ``file://...``: a parquet file or a folder of them) through pyarrow."""
    import pyarrow.parquet as pq

    texts: list[str] = []
    for src in plan.train:
        for path in src.paths:
            column = pq.read_table(path, columns=[src.text_column]).column(0).to_pylist()
            texts += [t for t in column if isinstance(t, str) and t.strip()]
    if not texts:
        specs = ", ".join(src.spec for src in plan.train) or "none"
        raise DataError(f"no text to benchmark in data.sources ({specs}): no non-empty document in the text "
                        "column; point data.sources at parquet files with text (data.text_column)")
    return texts
