"""Tokenization throughput of the prepare pipeline vs a plain single-process ``encode_batch`` loop.

Both read the same parquet file and tokenize every document; the baseline runs in this process on
one core (``TOKENIZERS_PARALLELISM=false``), the pipeline is :func:`~yxanul.data.prepare.build_dataset`
(read, clean, actor pool) on every core of the machine, timed from building the dataset to the last
batch in the driver (actor start-up included). Two rates per core: tokens per wall-clock second
divided by the cores each may use (1 vs all), and tokens per CPU-second actually consumed (the
baseline process; the pipeline's driver plus every Ray process it started: GCS, raylet, workers,
actors). On a machine shared with other jobs only the second is stable.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from yxanul.config import ExperimentConfig


def run_benchmark(cfg: ExperimentConfig, config_path: str | None, *, target_mb: float = 64.0,
                  batch: int = 512, log: Any = print) -> dict[str, Any]:
    """Run both and return {documents, mb, cores, baseline_*, pipeline_*, ratio, identical}."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from yxanul.corpora import Source
    from yxanul.data.prepare import Plan, _ensure_ray, build_dataset, make_plan
    from yxanul.tokenizer import eos_id, load_tokenizer

    plan = make_plan(cfg, config_path)
    texts: list[str] = []
    for src in plan.train:
        for path in src.files:
            column = pq.read_table(path, columns=[src.text_column]).column(0).to_pylist()
            texts += [t for t in column if isinstance(t, str) and t.strip()]
    size = sum(len(t.encode()) for t in texts)
    texts = texts * max(1, int(np.ceil(target_mb * 1e6 / size)))
    cores = len(os.sched_getaffinity(0))
    result: dict[str, Any] = {"documents": len(texts), "mb": round(sum(len(t.encode()) for t in texts) / 1e6, 1),
                              "cores": cores}
    tmp = Path(tempfile.mkdtemp(prefix="yxanul-bench-data-"))
    try:
        path = tmp / "bench.parquet"
        pq.write_table(pa.table({"text": pa.array(texts, pa.large_string())}), path, row_group_size=4096)
        del texts
        log(f"text: {result['documents']} documents, {result['mb']} MB from {', '.join(cfg.data.sources)}; "
            f"{cores} CPU cores")
        tok = load_tokenizer(plan.tokenizer_path)
        eos = eos_id(tok)

        start, cpu0 = time.perf_counter(), time.process_time()
        docs = pq.read_table(path).column("text").to_pylist()
        base_ids: list[list[int]] = []
        for i in range(0, len(docs), batch):
            base_ids += [e.ids for e in tok.encode_batch(docs[i:i + batch], add_special_tokens=False)]
        base_s, base_cpu = time.perf_counter() - start, time.process_time() - cpu0
        base_tokens = sum(map(len, base_ids))
        log(f"baseline: {base_tokens} tokens in {base_s:.1f} s on 1 core")

        data = cfg.data.model_copy(update={"validation_fraction": 0.0, "mode": "packed",
                                           "max_documents": None, "id_column": None})
        bench_plan = Plan(cfg.model_copy(update={"data": data}), config_path, [], [], tmp, plan.tokenizer_path)
        _ensure_ray()
        start, cpu0 = time.perf_counter(), _tree_cpu_s()
        ds = build_dataset(bench_plan, eos, sources=[(Source(str(path), files=(str(path),)), False)])
        parts = [b.column("tokens").combine_chunks().flatten().to_numpy()
                 for b in ds.iter_batches(batch_format="pyarrow", batch_size=None)]
        pipe_s, pipe_cpu = time.perf_counter() - start, _tree_cpu_s() - cpu0
        pipe = np.concatenate(parts)
        pipe_tokens = len(pipe) - len(docs)  # one EOS per document
        log(f"pipeline: {pipe_tokens} tokens in {pipe_s:.1f} s on {cores} cores")

        expected = np.fromiter((t for ids in base_ids for t in (*ids, eos)), np.uint32,
                               count=base_tokens + len(docs))
        base_rate, pipe_rate = base_tokens / base_s, pipe_tokens / pipe_s / cores
        result.update(baseline_tokens=base_tokens, baseline_s=round(base_s, 2),
                      baseline_tokens_per_s_per_core=round(base_rate), pipeline_tokens=pipe_tokens,
                      pipeline_s=round(pipe_s, 2), pipeline_tokens_per_s_per_core=round(pipe_rate),
                      ratio=round(pipe_rate / base_rate, 3), baseline_cpu_s=round(base_cpu, 2),
                      pipeline_cpu_s=round(pipe_cpu, 2), baseline_tokens_per_cpu_s=round(base_tokens / base_cpu),
                      pipeline_tokens_per_cpu_s=round(pipe_tokens / pipe_cpu),
                      ratio_cpu=round((pipe_tokens / pipe_cpu) / (base_tokens / base_cpu), 3),
                      identical=bool(np.array_equal(pipe, expected)))
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tree_cpu_s() -> float:
    """CPU seconds (user + system) of this process and all its live descendants (the local Ray it
    started), from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        # after "(comm)": state ppid ... utime (12th) stime (13th)
        stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _) in stats.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    return sum(stats[pid][1] for pid in tree if pid in stats)
