"""export_hf: a directory LlamaForCausalLM.from_pretrained loads, with the same logits."""

from __future__ import annotations

import pytest
import torch

from yxanul.config import ModelConfig
from yxanul.errors import ConfigError
from yxanul.export import export_hf
from yxanul.model import Yxanul

VOCAB = 1000


def _model(**kw) -> Yxanul:
    torch.manual_seed(0)
    return Yxanul(ModelConfig(preset="tiny", vocab_size=VOCAB, **kw)).eval()


@pytest.mark.parametrize("shape", [dict(embed_rank=16), dict(embed_rank=0, tie_embeddings=True)])
def test_exported_directory_loads_in_transformers_with_equal_logits(tmp_path, shape):
    from transformers import LlamaForCausalLM

    model = _model(**shape)
    out = export_hf(model, tmp_path / "hf")
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    hf = LlamaForCausalLM.from_pretrained(out).eval()
    assert hf.config.vocab_size == VOCAB  # padding dropped
    x = torch.randint(0, VOCAB, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x)[..., :VOCAB], rtol=1e-4, atol=1e-5)


def test_export_from_a_checkpoint_file(tmp_path):
    from transformers import LlamaForCausalLM

    model = _model()
    ckpt = tmp_path / "ckpt" / "model.pt"
    ckpt.parent.mkdir()
    torch.save({"model": model.state_dict(), "model_config": model.cfg.model_dump(mode="json"),
                "vocab_size": VOCAB}, ckpt)
    out = export_hf(ckpt.parent, tmp_path / "hf")
    hf = LlamaForCausalLM.from_pretrained(out).eval()
    x = torch.randint(0, VOCAB, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x)[..., :VOCAB], rtol=1e-4, atol=1e-5)


def test_export_refuses_a_non_empty_directory_and_a_missing_config(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        export_hf(_model(), tmp_path / "taken")
    assert (tmp_path / "taken" / "x").read_text() == "keep me"
    torch.save(_model().state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ConfigError, match="carries no model config"):
        export_hf(tmp_path / "bare.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()
