"""Export a Yxanul model to a Hugging Face ``LlamaForCausalLM`` checkpoint.

The shapes are Llama's; two things are converted: the factorized embedding is multiplied out
(vocab x r @ r x hidden -> vocab x hidden), and the fused projections are split (qkv -> q, k, v;
gate_up -> gate, up). The padded vocabulary rows are dropped, so the exported model has exactly
the tokenizer's vocabulary and padding can never be predicted.

    export_hf(model, "outputs/hf/yxanul-270m")         # or a checkpoint file / directory
    LlamaForCausalLM.from_pretrained("outputs/hf/yxanul-270m")
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yxanul.config import ModelConfig
from yxanul.errors import ConfigError
from yxanul.model import Yxanul
from yxanul.precision import load_model_state, split_state_dict

__all__ = ["export_hf", "hf_config", "to_hf_state_dict"]


def hf_config(cfg: ModelConfig, vocab_size: int) -> Any:
    """The ``transformers.LlamaConfig`` of a Yxanul shape (vocabulary unpadded)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.ffn_hidden,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.hidden // cfg.n_heads,
        hidden_act="silu",
        max_position_embeddings=cfg.max_positions,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        initializer_range=cfg.init_std,
        bos_token_id=None,
        eos_token_id=None,
    )


@torch.no_grad()
def to_hf_state_dict(model: Yxanul, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """``LlamaForCausalLM`` state dict (CPU, contiguous, ``dtype``) holding ``model``'s weights."""
    cfg, vocab = model.cfg, model.vocab_size
    hd = cfg.hidden // cfg.n_heads
    q_rows, kv_rows = cfg.n_heads * hd, cfg.n_kv_heads * hd

    def out(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", torch.float32).to(dtype).contiguous().clone()

    embed = model.embed.full_weight().float()[:vocab]
    sd: dict[str, torch.Tensor] = {"model.embed_tokens.weight": out(embed)}
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        qkv = block.attn.qkv.weight
        sd[p + "self_attn.q_proj.weight"] = out(qkv[:q_rows])
        sd[p + "self_attn.k_proj.weight"] = out(qkv[q_rows:q_rows + kv_rows])
        sd[p + "self_attn.v_proj.weight"] = out(qkv[q_rows + kv_rows:])
        sd[p + "self_attn.o_proj.weight"] = out(block.attn.proj.weight)
        gate_up = block.mlp.gate_up.weight
        sd[p + "mlp.gate_proj.weight"] = out(gate_up[:cfg.ffn_hidden])
        sd[p + "mlp.up_proj.weight"] = out(gate_up[cfg.ffn_hidden:])
        sd[p + "mlp.down_proj.weight"] = out(block.mlp.down.weight)
        sd[p + "input_layernorm.weight"] = out(block.attn_norm.weight)
        sd[p + "post_attention_layernorm.weight"] = out(block.mlp_norm.weight)
    sd["model.norm.weight"] = out(model.final_norm.weight)
    # A tied model repeats the embedding under lm_head (what LlamaForCausalLM.state_dict() holds);
    # export_hf leaves it out of the file, as HF does for tied weights.
    sd["lm_head.weight"] = out(model.head.weight[:vocab]) if model.head is not None else sd["model.embed_tokens.weight"].clone()
    return sd


def _model_from_checkpoint(path: Path, config: ModelConfig | None, vocab_size: int | None) -> Yxanul:
    """Read a checkpoint file (torch.save of a dict) or a directory holding one.

    Accepted layouts: ``{"model": state, "model_config": {...}, "vocab_size": N}`` (what
    :func:`export_hf` documents for training checkpoints) or a bare state dict with ``config``.
    In a directory: ``model.pt`` (or the single ``*.pt`` file) and, optionally, ``config.json`` /
    ``config.yaml`` holding an experiment config with a ``model`` section.
    """
    if path.is_dir():
        candidates = [path / "model.pt"] if (path / "model.pt").is_file() else sorted(path.glob("*.pt"))
        if len(candidates) != 1:
            raise ConfigError(f"checkpoint directory {path} must hold model.pt (or exactly one *.pt file)")
        if config is None:
            config = _config_near(path)
        path = candidates[0]
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, Mapping):
        raise ConfigError(f"checkpoint {path} does not hold a state dict")
    state: Mapping[str, Any] = blob
    if "model" in blob and isinstance(blob["model"], Mapping):
        state = blob["model"]
        if config is None and isinstance(blob.get("model_config"), Mapping):
            config = ModelConfig.model_validate({**blob["model_config"], "preset": None})
        if vocab_size is None and blob.get("vocab_size") is not None:
            vocab_size = int(blob["vocab_size"])
    if config is None:
        raise ConfigError(f"checkpoint {path} carries no model config: pass config=ModelConfig(...)")
    if vocab_size is None and config.vocab_size is None:
        raise ConfigError(
            f"the vocabulary size of {path} is unknown (model.vocab_size unset and not stored in the checkpoint); "
            "pass vocab_size=N (the tokenizer's vocabulary)"
        )
    model = Yxanul(config, vocab_size)
    weights, _ = split_state_dict(state)
    load_model_state(model, weights)
    return model


def _config_near(directory: Path) -> ModelConfig | None:
    import yaml

    for name in ("config.json", "config.yaml"):
        f = directory / name
        if f.is_file():
            data = json.loads(f.read_text()) if f.suffix == ".json" else yaml.safe_load(f.read_text())
            section = data.get("model", data) if isinstance(data, dict) else None
            if isinstance(section, dict):
                return ModelConfig.model_validate({**section, "preset": None})
    return None


def export_hf(source: nn.Module | str | Path, out_dir: str | Path, *, config: ModelConfig | None = None,
              vocab_size: int | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Write ``config.json`` + ``model.safetensors`` loadable with ``LlamaForCausalLM.from_pretrained``.

    ``source``: a :class:`Yxanul` model (BF16 or FP8: TE layers hold the same weights), or a
    checkpoint file/directory (see :func:`_model_from_checkpoint`). Writes into a temporary sibling
    folder and renames it, so a failed export leaves no half-written directory.
    """
    from safetensors.torch import save_file

    if isinstance(source, nn.Module):
        model = source
    else:
        model = _model_from_checkpoint(Path(source), config, vocab_size)
    if not isinstance(model, Yxanul):
        raise ConfigError(f"export_hf needs a Yxanul model, got {type(model).__name__}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"export directory {out} exists and is not empty; choose a new directory")
    tmp = out.with_name(out.name + ".tmp-export")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    hf_cfg = hf_config(model.cfg, model.vocab_size)
    hf_cfg.architectures = ["LlamaForCausalLM"]
    hf_cfg.dtype = str(dtype).removeprefix("torch.")
    hf_cfg.save_pretrained(tmp)
    state = to_hf_state_dict(model, dtype)
    if model.cfg.tie_embeddings:
        del state["lm_head.weight"]
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out
