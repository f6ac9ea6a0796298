"""Config loading: YAML + dotted overrides, precedence, presets, readable errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from yxanul.config import ExperimentConfig, apply_overrides, experiments_dir, load_config, parse_count
from yxanul.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults_validate_and_hash_is_stable():
    a, b = ExperimentConfig(), load_config(None, [])
    assert a == b
    assert a.config_hash() == b.config_hash()
    assert len(a.config_hash()) == 16


def test_precedence_cli_over_yaml_over_defaults(tmp_path):
    path = write(tmp_path, "train:\n  max_tokens: 5000\n  tokens_per_step: 1024\n")
    cfg = load_config(path, ["train.max_tokens=2e6"])
    assert cfg.train.max_tokens == 2_000_000  # CLI wins
    assert cfg.train.tokens_per_step == 1024  # YAML wins over default
    assert cfg.train.on_nan == "stop"  # default


@pytest.mark.parametrize("text,expected", [("2e6", 2_000_000), ("2M", 2_000_000), ("1.5k", 1500),
                                           ("2_000", 2000), (3e3, 3000), (17, 17)])
def test_token_counts_accept_human_spellings(text, expected):
    assert parse_count(text) == expected


def test_override_values_are_yaml_typed():
    tree = apply_overrides({}, ["data.sources=[builtin:wiki-en, /x/*.parquet]", "scaling.use_gpu=true",
                                "optim.lr=1e-3", "run.name=abc"])
    assert tree["data"]["sources"] == ["builtin:wiki-en", "/x/*.parquet"]
    assert tree["scaling"]["use_gpu"] is True
    assert tree["optim"]["lr"] == pytest.approx(1e-3)
    assert tree["run"]["name"] == "abc"


def test_bf16_eval_takes_auto_on_off_and_yaml_booleans():
    assert load_config(None).eval.bf16_eval == "auto"
    for text, expected in (("on", "on"), ("true", "on"), ("off", "off"), ("false", "off"), ("auto", "auto")):
        assert load_config(None, [f"eval.bf16_eval={text}"]).eval.bf16_eval == expected
    with pytest.raises(ConfigError, match=r"eval\.bf16_eval.*'always'"):
        load_config(None, ["eval.bf16_eval=always"])


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "data:\n  min_buckt: 16\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "unknown key 'data.min_buckt'" in str(err.value)
    assert str(path) in str(err.value)


def test_unknown_key_on_command_line_says_so():
    with pytest.raises(ConfigError, match=r"unknown key 'tokenizer\.vocab' on the command line"):
        load_config(None, ["tokenizer.vocab=8192"])


def test_bad_value_names_key_value_and_reason(tmp_path):
    path = write(tmp_path, "precision:\n  mode: fp16\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "precision.mode" in message and "'fp16'" in message and str(path) in message


def test_contradictions_raise_with_a_sentence():
    with pytest.raises(ConfigError, match="must be a power of two, got 24"):
        load_config(None, ["data.min_bucket=24"])
    with pytest.raises(ConfigError, match="min_bucket .* is larger than"):
        load_config(None, ["data.min_bucket=64", "data.max_bucket=32"])
    with pytest.raises(ConfigError, match="n_heads .* divisible by model.n_kv_heads"):
        load_config(None, ["model.n_kv_heads=3"])


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "data: [unclosed\n"))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config(None, ["no-equals-sign"])


def test_model_preset_fills_and_explicit_keys_win():
    cfg = load_config(None, ["model.preset=yxanul-270m", "model.n_layers=4"])
    assert (cfg.model.hidden, cfg.model.n_heads, cfg.model.n_kv_heads) == (640, 10, 2)
    assert (cfg.model.ffn_hidden, cfg.model.embed_rank, cfg.model.vocab_size) == (1712, 128, 200005)
    assert cfg.model.n_layers == 4


def test_unknown_preset_lists_available():
    with pytest.raises(ConfigError, match="unknown models preset 'nope'.*available: .*tiny"):
        load_config(None, ["model.preset=nope"])


def test_flat_params_cover_every_leaf():
    params = ExperimentConfig().flat_params()
    assert params["train.max_tokens"] == "1000000"
    assert params["run.name"] == "yxanul"
    assert params["data.sources"] == '["builtin:wiki-en", "builtin:python-code"]'
    assert all(isinstance(v, str) for v in params.values())


def test_every_field_documents_itself():
    def walk(model_cls, prefix=""):
        for name, field in model_cls.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields") and name != "stages":
                yield from walk(annotation, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}", field.description

    undocumented = [key for key, doc in walk(ExperimentConfig) if not doc]
    assert undocumented == []


def test_every_run_yaml_and_model_preset_validates():
    root = experiments_dir()
    for preset in sorted((root / "models").glob("*.yaml")):
        load_config(None, [f"model.preset={preset.stem}"])
    runs = sorted((root / "runs").glob("*.yaml"))
    for run in runs:
        load_config(run)


def test_a_model_vocabulary_beyond_the_tokenizer_padding_is_refused_unless_allowed():
    from yxanul.errors import ConfigError
    from yxanul.train.launch import check_vocab

    def cfg(*overrides):
        return load_config(None, ["model.preset=yxanul-270m", *overrides])

    check_vocab(cfg("model.vocab_size=8192"), 8192, "the tokenizer")
    check_vocab(cfg("model.vocab_size=8190"), 8100, "the tokenizer")  # within the padding to 8192 (64 x 128)
    with pytest.raises(ConfigError) as err:
        check_vocab(cfg(), 8192, "the tokenizer that prepared /data/x")  # the preset's 200005
    message = str(err.value)
    assert "model.vocab_size=200005 is larger than the vocabulary of the tokenizer that prepared /data/x (8192)" \
        in message and "191,813 logits per position" in message and "model.vocab_size=null" in message \
        and "model.allow_unused_vocab=true" in message and "\n" not in message
    check_vocab(cfg("model.allow_unused_vocab=true"), 8192, "the tokenizer")  # a speed benchmark says so
    with pytest.raises(ConfigError, match="smaller than the vocabulary"):
        check_vocab(cfg("model.vocab_size=4096"), 8192, "the tokenizer")
    assert load_config(None, ["model.preset=yxanul-270m", "model.vocab_size=null"]).model.vocab_size is None


def test_the_shuffle_window_is_a_positive_training_setting_outside_the_dataset_hash(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from yxanul.data.prepare import make_plan
    from yxanul.tokenizer import train_bpe

    with pytest.raises(ConfigError, match="data.shuffle_window"):
        load_config(None, ["data.shuffle_window=0"])
    tokenizer = train_bpe(["hello world, the quick brown fox"] * 50, 300, tmp_path / "tok.json", show_progress=False)
    source = tmp_path / "text.parquet"
    pq.write_table(pa.table({"text": ["the quick brown fox"] * 4}), source)

    def dataset_hash(*overrides: str) -> str:
        cfg = load_config(None, [f"tokenizer.path={tokenizer}", f"data.sources=[{source}]",
                                 "data.validation_sources={}", f"data.output_dir={tmp_path / 'out'}",
                                 f"data.cache_dir={tmp_path / 'cache'}", *overrides])
        return make_plan(cfg).config_hash

    # changing how training reads the data prepares nothing again; changing the data does
    assert dataset_hash("data.shuffle_window=1") == dataset_hash("data.shuffle_window=64")
    assert dataset_hash("data.order_seed=3") == dataset_hash() == dataset_hash("data.order_seed=null")
    assert dataset_hash("data.shuffle_window=1") != dataset_hash("data.min_bucket=16")


def test_the_data_order_follows_run_seed_unless_data_order_seed_fixes_it():
    assert load_config(None, ["run.seed=3"]).data_order_seed() == 3
    assert load_config(None, ["run.seed=3", "data.order_seed=0"]).data_order_seed() == 0
    science = load_config(Path("experiments/runs/science.yaml"), ["run.seed=2"])
    assert science.data_order_seed() == 0 and science.run.seed == 2  # the science setup: seeds vary the init only
