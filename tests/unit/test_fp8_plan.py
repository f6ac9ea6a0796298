"""The FP8 plan on CPU: layer shapes read from the model (not the config), the head as it runs (per chunk), the
decision rule, the memory columns, the cache; driven by a fake measurement (the real one needs a GPU and TE)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from yxanul.config import ModelConfig
from yxanul.errors import PrecisionError
from yxanul.model import Yxanul
from yxanul.precision import MIN_GAIN, LayerShape, layer_shapes, measure_fp8_plan

CFG = ModelConfig(preset="tiny", vocab_size=70_000, head_chunk_tokens=0)  # padded to 70,016 columns
CPU = torch.device("cpu")


def meta_model(cfg: ModelConfig = CFG) -> Yxanul:
    with torch.device("meta"):  # shapes only: no memory
        return Yxanul(cfg)


def test_layer_shapes_are_read_from_the_model_as_built():
    model = meta_model()
    h, ffn, layers = CFG.hidden, CFG.ffn_hidden, CFG.n_layers
    qkv = (CFG.n_heads + 2 * CFG.n_kv_heads) * (h // CFG.n_heads)
    shapes = layer_shapes(model, 1024)
    assert shapes == {
        "attention": [LayerShape(h, qkv, 1024, layers), LayerShape(h, h, 1024, layers)],
        "mlp": [LayerShape(h, 2 * ffn, 1024, layers), LayerShape(ffn, h, 1024, layers)],
        "head": [LayerShape(h, 70_016, 1024, 1)],
    }
    # A layer that differs from what the config says is measured as it is (the config would never show it).
    with torch.device("meta"):
        model.blocks[0].mlp.down = nn.Linear(2 * ffn, h, bias=False)
    assert layer_shapes(model, 1024)["mlp"] == [LayerShape(h, 2 * ffn, 1024, layers),  # in the model's order
                                                LayerShape(2 * ffn, h, 1024, 1),
                                                LayerShape(ffn, h, 1024, layers - 1)]


def test_a_chunked_head_is_measured_per_chunk_and_a_tied_head_not_at_all():
    chunked = meta_model(CFG.model_copy(update={"head_chunk_tokens": 4096}))
    assert layer_shapes(chunked, 16 * 1024)["head"] == [LayerShape(CFG.hidden, 70_016, 4096, 4)]
    assert layer_shapes(chunked, 10_000)["head"] == [LayerShape(CFG.hidden, 70_016, 4096, 2),
                                                     LayerShape(CFG.hidden, 70_016, 1808, 1)]
    assert layer_shapes(chunked, 2048)["head"] == [LayerShape(CFG.hidden, 70_016, 2048, 1)]  # one partial chunk
    tied = meta_model(CFG.model_copy(update={"tie_embeddings": True, "embed_rank": 0}))
    assert "head" not in layer_shapes(tied, 1024)


def fake(ms: dict[tuple[str, bool], float], calls: list) -> object:
    """A measurement that knows each layer's time by (kind, fp8); memory: 1 MiB per 1000 output features,
    twice that in FP8."""
    def measure(shape: LayerShape, fp8: bool) -> tuple[float, int]:
        calls.append((shape, fp8))
        kind = "head" if shape.out_features == 70_016 else "mlp" if shape.in_features == CFG.ffn_hidden or \
            shape.out_features == 2 * CFG.ffn_hidden else "attention"
        return ms[(kind, fp8)], (2 if fp8 else 1) * shape.out_features * 2**20 // 1000

    return measure


def test_the_plan_keeps_fp8_where_it_is_at_least_min_gain_faster_and_logs_memory(tmp_path):
    ms = {("attention", False): 1.0, ("attention", True): 2.0,  # FP8 slower: bf16
          ("mlp", False): 1.0, ("mlp", True): 1.0 - MIN_GAIN / 2,  # gains less than MIN_GAIN: bf16
          ("head", False): 10.0, ("head", True): 7.0}  # pays: fp8
    calls: list = []
    lines: list[str] = []
    plan = measure_fp8_plan(meta_model(), tokens_per_microbatch=1024, recipe="delayed", device=CPU,
                            cache_dir=tmp_path, log=lines.append, measure=fake(ms, calls))
    assert plan.layers == ("head",) and not plan.cached
    layers = CFG.n_layers
    assert plan.timings["attention"]["bf16_ms"] == pytest.approx(2 * layers * 1.0)  # qkv + proj, per block
    assert plan.timings["head"]["ratio"] == pytest.approx(10 / 7)
    # memory: the largest single call of the group (calls run one at a time), in MiB
    assert plan.timings["head"]["bf16_mib"] == pytest.approx(70_016 / 1000, abs=1)
    assert plan.timings["head"]["fp8_mib"] == pytest.approx(2 * 70_016 / 1000, abs=1)
    assert plan.group_line("head") == "bf16 10.00 ms 70 MiB, fp8 7.00 ms 140 MiB"
    table = lines[0]
    assert "bf16 MiB" in table and "fp8 MiB" in table and "fp8_layers auto -> head" in table
    assert len(calls) == 3 * 2 * 5  # 3 rounds of every distinct shape in both precisions: qkv, proj, gate_up, down, head
    # side by side: each shape's BF16 and FP8 calls follow each other, FP8 first in the second round
    assert [fp8 for _, fp8 in calls[:2]] == [False, True] and [fp8 for _, fp8 in calls[10:12]] == [True, False]
    assert calls[0][0] == calls[1][0] and calls[10][0] == calls[11][0]

    saved = json.loads(next(tmp_path.glob("fp8-plan-*.json")).read_text())
    assert saved["layers"] == ["head"] and saved["key"]["shapes"]["head"] == [[CFG.hidden, 70_016, 1024, 1]]
    again = measure_fp8_plan(meta_model(), tokens_per_microbatch=1024, recipe="delayed", device=CPU,
                             cache_dir=tmp_path, measure=fake(ms, calls))
    assert again.cached and again.layers == plan.layers and len(calls) == 30  # read, not measured
    # the head as it runs is part of the key: chunking it measures again
    chunked = meta_model(CFG.model_copy(update={"head_chunk_tokens": 512}))
    other = measure_fp8_plan(chunked, tokens_per_microbatch=1024, recipe="delayed", device=CPU, cache_dir=tmp_path,
                             measure=fake(ms, calls))
    assert not other.cached and other.timings["head"]["bf16_ms"] == pytest.approx(2 * 10.0)  # 2 chunks of 512


def test_the_plan_takes_medians_of_rounds_so_a_cards_warm_up_does_not_decide_it():
    """Every layer is equally fast in BF16 and FP8, but the first calls run slow (clocks ramping, first kernel
    launches): measured once (even side by side), that warm-up made FP8 look 1.24x faster on attention."""
    ms = {(kind, fp8): 1.0 for kind in ("attention", "mlp", "head") for fp8 in (False, True)}
    calls: list = []
    base = fake(ms, calls)

    def warming(shape: LayerShape, fp8: bool) -> tuple[float, int]:
        t, peak = base(shape, fp8)
        return t * (1 + 0.5 ** (len(calls) - 1)), peak  # 2x on the first call, 1.5x on the second...

    one = measure_fp8_plan(meta_model(), tokens_per_microbatch=1024, recipe="delayed", device=CPU,
                           measure=warming, rounds=1)
    assert "attention" in one.layers and one.timings["attention"]["ratio"] > 1.2  # the drift decided it
    calls.clear()
    plan = measure_fp8_plan(meta_model(), tokens_per_microbatch=1024, recipe="delayed", device=CPU, measure=warming)
    assert plan.layers == ()  # nothing pays: the medians of three rounds are the settled times
    for row in plan.timings.values():
        assert row["ratio"] == pytest.approx(1.0, abs=0.01)
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        measure_fp8_plan(meta_model(), tokens_per_microbatch=1024, recipe="delayed", device=CPU, measure=warming,
                         rounds=0)


def test_a_call_is_timed_back_to_back_with_the_others_not_synchronised_one_by_one(monkeypatch):
    """As training runs its layers: the host queues call after call while the GPU works, so a call's host work
    (heavier in FP8) is not added to every measured call. One pair of events around all timed calls, one sync."""
    from yxanul.precision import fp8_plan

    log: list[str] = []

    class Event:
        count = 0

        def __init__(self, enable_timing: bool) -> None:
            assert enable_timing
            Event.count += 1
            self.name = "start" if Event.count % 2 else "end"

        def record(self) -> None:
            log.append(f"{self.name}.record")

        def synchronize(self) -> None:
            log.append(f"{self.name}.synchronize")

        def elapsed_time(self, other: Event) -> float:
            return 30.0

    monkeypatch.setattr(fp8_plan.torch.cuda, "Event", Event)
    ms = fp8_plan.per_call_ms(lambda: log.append("call"), warmup=2, iters=3)
    assert log == ["call", "call", "start.record", "call", "call", "call", "end.record", "end.synchronize"]
    assert ms == 10.0  # 30 ms over 3 calls


def test_the_plan_needs_a_gpu_unless_given_a_measurement():
    with pytest.raises(PrecisionError, match="no CUDA device"):
        measure_fp8_plan(meta_model(), tokens_per_microbatch=1024, recipe="delayed", device=CPU)
