"""The Yxanul model: shapes, exact parameter counts, RoPE, GQA, causality, padding, HF equivalence."""

from __future__ import annotations

import math

import pytest
import torch

from yxanul.config import ModelConfig, experiments_dir
from yxanul.errors import ConfigError
from yxanul.export import hf_config, to_hf_state_dict
from yxanul.model import Yxanul, _rope_tables, apply_rope, attention_priority, padded_vocab_size, parameter_count

VOCAB = 1000  # padded to 1024


def cfg(**kw) -> ModelConfig:
    base = dict(preset="tiny", vocab_size=VOCAB)
    base.update(kw)
    return ModelConfig(**base)


def test_shapes_and_padded_vocab():
    torch.manual_seed(0)
    model = Yxanul(cfg())
    assert model.padded_vocab == 1024 and padded_vocab_size(200005) == 200064
    logits = model(torch.randint(0, VOCAB, (3, 17)))
    assert logits.shape == (3, 17, 1024)
    assert torch.isinf(logits[..., VOCAB:]).all() and (logits[..., VOCAB:] < 0).all()
    assert torch.isfinite(logits[..., :VOCAB]).all()
    assert (logits.argmax(-1) < VOCAB).all()  # padded logits never win
    raw = model(torch.randint(0, VOCAB, (1, 5)), mask_padding=False)
    assert torch.isfinite(raw).all()


@pytest.mark.parametrize("preset", sorted(p.stem for p in (experiments_dir() / "models").glob("*.yaml")))
def test_parameter_count_is_exact_for_every_preset(preset):
    c = ModelConfig(preset=preset)
    if c.vocab_size is None:  # a preset whose vocabulary comes from its tokenizer
        c = ModelConfig(preset=preset, vocab_size=VOCAB)
    with torch.device("meta"):
        model = Yxanul(c)
    assert model.num_parameters() == parameter_count(c).total


def test_parameter_count_of_the_270m_preset():
    count = parameter_count(ModelConfig(preset="yxanul-270m"))
    assert count.total == 273_329_792
    assert count.embedding == 200064 * 128 + 128 * 640
    assert count.head == 200064 * 640


def test_the_science_preset_is_the_270m_body_with_a_16k_head():
    science = parameter_count(ModelConfig(preset="science", vocab_size=16384))
    body = parameter_count(ModelConfig(preset="yxanul-270m"))
    assert science.blocks == body.blocks and science.head == 16384 * 640
    assert science.embedding == 16384 * 128 + 128 * 640 and science.total == 132_263_552


def test_tied_head_shares_the_embedding():
    c = cfg(tie_embeddings=True, embed_rank=0)
    model = Yxanul(c)
    assert model.head is None
    assert model.num_parameters() == parameter_count(c).total
    assert parameter_count(c).head == 0


def test_vocab_size_must_be_known_and_consistent():
    with pytest.raises(ConfigError, match="model.vocab_size is not set"):
        Yxanul(ModelConfig(preset="tiny"))
    with pytest.raises(ConfigError, match="disagrees"):
        Yxanul(cfg(), vocab_size=999)
    assert Yxanul(ModelConfig(preset="tiny"), vocab_size=500).vocab_size == 500


def test_rope_rotates_pairs_by_position_times_frequency():
    hd, theta = 8, 10000.0
    cos, sin = _rope_tables(16, hd, theta)
    x = torch.randn(1, 1, 16, hd)
    y = apply_rope(x, cos, sin)
    # Reference: complex rotation of (x[i], x[i + hd/2]) by angle pos * theta^(-2i/hd).
    for pos in (0, 3, 15):
        for i in range(hd // 2):
            angle = pos * theta ** (-2 * i / hd)
            z = complex(x[0, 0, pos, i], x[0, 0, pos, i + hd // 2]) * complex(math.cos(angle), math.sin(angle))
            assert y[0, 0, pos, i].item() == pytest.approx(z.real, abs=1e-5)
            assert y[0, 0, pos, i + hd // 2].item() == pytest.approx(z.imag, abs=1e-5)
    # Scores depend only on the relative position.
    q, k = torch.randn(hd), torch.randn(hd)
    def score(pq, pk):
        qs = apply_rope(q.expand(1, 1, 16, hd), cos, sin)[0, 0, pq]
        ks = apply_rope(k.expand(1, 1, 16, hd), cos, sin)[0, 0, pk]
        return (qs @ ks).item()
    assert score(5, 2) == pytest.approx(score(12, 9), abs=1e-4)


def test_positions_beyond_the_training_length_and_the_table():
    torch.manual_seed(0)
    model = Yxanul(cfg())  # context 256, max_positions 512
    cos, sin = model.rope(700)  # beyond the table: computed on the fly
    table_cos, _ = model.rope(512)
    assert cos.shape == (700, model.head_dim)
    assert torch.allclose(cos[:512], table_cos, atol=1e-6)
    logits = model(torch.randint(0, VOCAB, (1, 600)))
    assert torch.isfinite(logits[..., :VOCAB]).all()


def test_causal_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    model = Yxanul(cfg())
    x = torch.randint(0, VOCAB, (2, 20))
    y = x.clone()
    y[:, 12:] = torch.randint(0, VOCAB, (2, 8))
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-6)
    assert not torch.allclose(a[:, 12:, :VOCAB], b[:, 12:, :VOCAB])


def test_gqa_equals_full_attention_with_repeated_kv_heads():
    torch.manual_seed(0)
    gqa = Yxanul(cfg(n_heads=4, n_kv_heads=2))
    mha = Yxanul(cfg(n_heads=4, n_kv_heads=4))
    sd = gqa.state_dict()
    hd, nh, nkv = 16, 4, 2
    for i in range(len(gqa.blocks)):
        w = sd[f"blocks.{i}.attn.qkv.weight"]
        q, k, v = w.split((nh * hd, nkv * hd, nkv * hd))
        rep = lambda t: t.view(nkv, hd, -1).repeat_interleave(nh // nkv, dim=0).reshape(nh * hd, -1)  # noqa: E731
        sd[f"blocks.{i}.attn.qkv.weight"] = torch.cat([q, rep(k), rep(v)])
    mha.load_state_dict(sd)
    x = torch.randint(0, VOCAB, (2, 33))
    with torch.no_grad():
        assert torch.allclose(gqa(x), mha(x), atol=1e-5)


def test_attention_backend_auto_puts_cudnn_first_on_hopper_only(monkeypatch):
    from torch.nn.attention import SDPBackend as B

    cuda = torch.device("cuda", 0)
    for capability, first in (((9, 0), B.CUDNN_ATTENTION), ((8, 0), None), ((8, 9), None), ((10, 0), None)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        order = attention_priority("auto", cuda)
        assert (order[0] if order else None) == first, capability
    assert attention_priority("auto", torch.device("cpu")) is None
    assert attention_priority("torch", cuda) is None
    # an explicit choice goes first and every other backend stays behind it, so a shape it cannot serve falls back
    assert attention_priority("flash", torch.device("cpu")) == (B.FLASH_ATTENTION, B.EFFICIENT_ATTENTION, B.MATH,
                                                                B.CUDNN_ATTENTION)
    assert attention_priority("cudnn", cuda) == (B.CUDNN_ATTENTION, B.FLASH_ATTENTION, B.EFFICIENT_ATTENTION, B.MATH)
    with pytest.raises(Exception, match="attention_backend"):
        cfg(attention_backend="flash3")


@pytest.mark.parametrize("compiled", [False, True])
def test_the_blocks_attend_under_the_chosen_priority_and_it_is_restored_after(monkeypatch, compiled):
    """Every attention call runs under the chosen priority, eager and compiled; compiled, a model with another
    backend compiles its own block graph in the same process, with no Dynamo reset between (before 2026-12-07 it
    reused the first model's graph, traced under the first priority: the H100's compiled models all ran
    FlashAttention). The process's own priority is back after every forward: nothing leaks into another model (the
    bench's peer). (torch's CPU attention ignores the priority, so the kernels themselves are checked on the GPU:
    tests/gpu/test_attention_gpu.py.)"""
    import yxanul.model as model_module
    from yxanul.precision import compile_model

    default = torch._C._get_sdp_priority_order()
    seen: list[list[int]] = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):  # the priority in force when an attention call runs
        seen.append(list(torch._C._get_sdp_priority_order()))
        return real(*args, **kwargs)

    graphs: list[int] = []

    def spying_backend(gm, example_inputs):  # Dynamo calls it once per graph; the graph then runs as traced
        for node in gm.graph.nodes:
            if node.target is real:
                node.target = spy
                graphs.append(1)
        gm.recompile()
        return gm.forward

    if not compiled:
        monkeypatch.setattr(model_module.F, "scaled_dot_product_attention", spy)
    torch._dynamo.reset()
    x = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    losses = {}
    for backend in ("torch", "cudnn", "flash"):
        torch.manual_seed(0)
        model = Yxanul(cfg(attention_backend=backend))
        if compiled:
            compile_model(model, backend=spying_backend)
        seen.clear()
        graphs.clear()
        losses[backend] = model(x, targets=x).item()
        assert len(seen) == model.cfg.n_layers, (backend, seen)
        if compiled:
            assert graphs, f"{backend}: no block graph of its own was compiled"
        want = default if backend == "torch" else [int(b) for b in attention_priority(backend, torch.device("cuda"))]
        assert all(order[:len(want)] == want for order in seen), (backend, seen)  # torch appends what is not named
        assert torch._C._get_sdp_priority_order() == default
    # the CPU runs the same kernel whatever the priority: the same loss to the bit
    assert losses["cudnn"] == losses["torch"] == losses["flash"]
    torch._dynamo.reset()


def test_with_cudnn_first_kv_heads_go_to_sdpa_unexpanded_and_train_the_same(monkeypatch):
    """cuDNN first: K/V reach SDPA at their own n_kv_heads with enable_gqa (no copy to every query head); torch's
    order keeps the copy. The attention is the same: equal loss and gradients, fp32 on the CPU, to a few roundings
    of a sum over the head group (2 heads here: 1e-5 relative leaves a wide margin over fp32's 6e-8)."""
    import yxanul.model as model_module

    calls: list[tuple[int, bool]] = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        calls.append((k.shape[1], kwargs.get("enable_gqa", False)))
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(model_module.F, "scaled_dot_product_attention", spy)
    x = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    grads, losses, seen = {}, {}, {}
    for backend in ("torch", "cudnn"):
        torch.manual_seed(0)
        model = Yxanul(cfg(attention_backend=backend))
        calls.clear()
        loss = model(x, targets=x)
        loss.backward()
        losses[backend], seen[backend] = loss.item(), set(calls)
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    heads, kv_heads = model.cfg.n_heads, model.cfg.n_kv_heads
    assert kv_heads < heads
    assert seen == {"torch": {(heads, False)}, "cudnn": {(kv_heads, True)}}
    assert losses["cudnn"] == pytest.approx(losses["torch"], rel=1e-5)
    assert grads["cudnn"].keys() == grads["torch"].keys()
    for name, g in grads["torch"].items():
        scale = g.abs().max().item()
        assert (grads["cudnn"][name] - g).abs().max().item() <= 1e-5 * scale + 1e-12, name


@pytest.mark.parametrize("shape", [dict(embed_rank=16), dict(embed_rank=0), dict(embed_rank=0, tie_embeddings=True),
                                   dict(n_kv_heads=1, rope_theta=500.0)])
def test_logits_match_hf_llama_in_fp32(shape):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    c = cfg(**shape)
    model = Yxanul(c).eval()
    with torch.no_grad():  # random norms so the test sees them
        for p in model.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    hf = LlamaForCausalLM(hf_config(c, VOCAB)).eval()
    hf.load_state_dict(to_hf_state_dict(model), strict=True)
    x = torch.randint(0, VOCAB, (2, 300))  # beyond context=256
    with torch.no_grad():
        ours, theirs = model(x)[..., :VOCAB], hf(x).logits
    assert theirs.shape == (2, 300, VOCAB)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_factorized_embedding_factors_learn_at_the_rate_of_the_other_weights():
    """The token factor starts at init_std and its projection at unit gain, so the product keeps std init_std
    and AdamW, which moves every element by about the learning rate, changes the token factor as fast,
    relative to its size, as the other matrices (a unit-std factor moved 50x more slowly: the seeds drifted)."""
    from yxanul.config import OptimConfig
    from yxanul.train.step import build_optimizer

    torch.manual_seed(0)
    c = cfg(embed_rank=32)
    model = Yxanul(c)
    tok, proj = model.embed.tok.weight[:VOCAB], model.embed.proj.weight  # 32k and 2k elements: sample stds
    assert tok.std().item() == pytest.approx(c.init_std, rel=0.03)      # within ~1% and ~3% of the drawn ones
    assert proj.std().item() == pytest.approx(1 / math.sqrt(32), rel=0.1)
    assert model.embed.full_weight()[:VOCAB].std().item() == pytest.approx(c.init_std, rel=0.1)
    # One AdamW step: its first update is lr * sign(grad) on every element with a gradient (bias-corrected
    # moments), so an element's relative change is lr / its size, whatever the loss.
    opt = build_optimizer(model, OptimConfig(lr=1e-3, weight_decay=0.0))
    tokens = torch.randint(0, VOCAB, (4, 64))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model(tokens[:, :-1], targets=tokens[:, 1:]).backward()
    opt.step()
    params = dict(model.named_parameters())

    def relative_change(name: str, rows: torch.Tensor | None = None) -> float:
        old, new = before[name], params[name].detach()
        if rows is not None:
            old, new = old[rows], new[rows]
        return ((new - old).norm() / old.norm()).item()

    seen = tokens[:, :-1].unique()
    embed = relative_change("embed.tok.weight", seen)
    qkv = relative_change("blocks.0.attn.qkv.weight")
    assert embed == pytest.approx(1e-3 / c.init_std, rel=0.1) and qkv == pytest.approx(1e-3 / c.init_std, rel=0.1)


def test_factorized_embedding_multiplies_out():
    torch.manual_seed(0)
    model = Yxanul(cfg(embed_rank=8))
    tokens = torch.tensor([[1, 5, 999]])
    full = model.embed.full_weight()
    assert full.shape == (1024, 64)
    assert torch.allclose(model.embed(tokens), full[tokens], atol=1e-6)
