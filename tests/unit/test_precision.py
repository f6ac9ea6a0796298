"""yxanul.precision on CPU: loud FP8 errors, autocast dtypes, checkpoints across precisions."""

from __future__ import annotations

import pytest
import torch

from yxanul.config import ModelConfig, PrecisionConfig
from yxanul.errors import PrecisionError
from yxanul.model import Yxanul
from yxanul.precision import Precision, load_model_state, split_state_dict


def model(seed: int = 0) -> Yxanul:
    torch.manual_seed(seed)
    return Yxanul(ModelConfig(preset="tiny", vocab_size=1000))


@pytest.mark.parametrize("recipe", ["delayed", "current", "block", "mxfp8"])
def test_fp8_without_cuda_fails_loudly(recipe):
    with pytest.raises(PrecisionError) as err:
        Precision(PrecisionConfig(mode="fp8", recipe=recipe), "cpu")
    msg = str(err.value)
    assert "needs a CUDA GPU with compute capability >= 8.9" in msg
    assert "precision.mode=bf16" in msg  # says what to do instead


def test_fp8_with_empty_layers_is_refused_by_the_config():
    with pytest.raises(ValueError, match="would train in BF16"):
        PrecisionConfig(mode="fp8", fp8_layers=[])


def test_fp32_and_bf16_leave_the_model_alone_and_set_autocast():
    x = torch.randint(0, 1000, (2, 16))
    for mode, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        m = model()
        before = {k: v.clone() for k, v in m.state_dict().items()}
        precision = Precision(PrecisionConfig(mode=mode), "cpu")
        assert precision.apply(m) is m
        assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
        assert all(p.dtype == torch.float32 for p in m.parameters())  # master weights stay fp32
        with precision.autocast():
            logits = m(x)
        assert logits.dtype == dtype
        assert precision.describe() == mode
    precision.check_batch(7)  # only FP8 constrains the token count


def test_the_bf16_path_is_the_same_context_without_fp8():
    """autocast(fp8=False): fp32 and bf16 have no other path (the same dtype, the same bits); an FP8 policy keeps
    torch.autocast(bf16) but never enters te.autocast, so its TE layers compute in BF16. On CPU the FP8 branch runs
    with a stand-in for Transformer Engine's autocast that records whether it was entered."""
    import contextlib

    x = torch.randint(0, 1000, (2, 16))
    m = model()
    for mode, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        precision = Precision(PrecisionConfig(mode=mode), "cpu")
        assert not precision.computes_fp8
        with precision.autocast():
            usual = m(x)
        with precision.autocast(fp8=False):
            bf16_path = m(x)
        assert bf16_path.dtype == dtype and torch.equal(bf16_path, usual)
    entered = []

    class _TE:
        @staticmethod
        @contextlib.contextmanager
        def autocast(enabled, recipe):
            entered.append(recipe)
            yield

    fp8 = Precision(PrecisionConfig(mode="bf16"), "cpu")
    fp8.mode, fp8._te, fp8.recipe, fp8.fp8_layers = "fp8", _TE, "recipe", ("head",)
    assert fp8.computes_fp8
    with fp8.autocast(fp8=False):
        assert m(x).dtype == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    assert entered == []
    with fp8.autocast():
        m(x)
    assert entered == ["recipe"]
    fp8.fp8_layers = ()  # a measured plan that kept no group computes in BF16
    assert not fp8.computes_fp8


def test_split_state_dict_separates_te_scaling_state():
    state = {"a.weight": torch.ones(2), "a._extra_state": b"scales", "b.weight": torch.zeros(1)}
    weights, fp8_state = split_state_dict(state)
    assert set(weights) == {"a.weight", "b.weight"}
    assert fp8_state == {"a._extra_state": b"scales"}


def test_checkpoint_round_trip_ignores_fp8_scaling_state(tmp_path):
    src, dst = model(0), model(1)
    x = torch.randint(0, 1000, (2, 16))
    # What an FP8 model saves: the same weights plus TE's scaling state per swapped layer.
    saved = dict(src.state_dict())
    saved["blocks.0.mlp.down._extra_state"] = torch.tensor([1, 2, 3], dtype=torch.uint8)
    weights, fp8_state = split_state_dict(saved)
    torch.save(weights, tmp_path / "model.pt")
    load_model_state(dst, torch.load(tmp_path / "model.pt", weights_only=True), fp8_state)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))
    load_model_state(dst, saved)  # the scaling state may also ride along in the same dict


def test_checkpoint_of_another_shape_is_refused_with_the_keys():
    other = Yxanul(ModelConfig(preset="tiny", vocab_size=1000, n_layers=3))
    with pytest.raises(PrecisionError, match=r"unexpected blocks\.2\.") as err:
        load_model_state(model(), other.state_dict())
    assert "model.*" in str(err.value)
    with pytest.raises(PrecisionError, match=r"missing blocks\.2\."):
        load_model_state(other, model().state_dict())
