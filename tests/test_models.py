"""Model loading (`model=hub` from a local directory), the tiny model builder, and LoRA/DoRA adapters."""

from __future__ import annotations

import importlib.util
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import load_file

from rlhf_lab.errors import ConfigError
from rlhf_lab.models import HubModel, LoraAdapter, TinyModel
from tests.conftest import compose_config

CORPUS = [
    "Is a cat an animal or a tool?",
    "It is an animal.",
    "It is a tool.",
    "Ben saw a hammer in the garage. Is it an animal or a tool?",
    "Tell me whether a wolf is an animal or a tool.",
] * 4


def config_error(error: BaseException) -> ConfigError:
    """The `ConfigError` in an exception chain (Hydra's instantiate wraps what a constructor raises)."""
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, ConfigError):
            return current
        current = current.__cause__ or current.__context__
    raise AssertionError(f"no ConfigError in the chain of {error!r}")


def linear_suffixes(model: torch.nn.Module, with_lora: bool) -> set[str]:
    return {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if (hasattr(module, "lora_A") if with_lora else isinstance(module, torch.nn.Linear))
    }


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    """The tiny model of the default config (the same directory `build(cfg)` prepares)."""
    cfg = compose_config()
    spec = instantiate(cfg.model, _convert_="all")
    spec.prepare(instantiate(cfg.data, _convert_="all").corpus)
    path = Path(spec.name_or_path)
    assert path.parent == Path(cfg.paths.cache_dir) / "tiny"
    return path


@pytest.fixture
def hub_spec(tiny_dir: Path) -> Callable[..., HubModel]:
    def make(*overrides: str, path: Path = tiny_dir) -> HubModel:
        cfg = compose_config(["model=hub", f"model.name_or_path={path}", "model.dtype=float32", *overrides])
        spec = instantiate(cfg.model, _convert_="all")
        assert type(spec) is HubModel
        return spec

    return make


# --- model=hub from a local directory -----------------------------------------------------------


def test_hub_model_loads_local_directory_in_train_mode(hub_spec, tiny_dir: Path) -> None:
    spec = hub_spec()
    model = spec.load_model()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.training
    assert all(module.training for module in model.modules())
    assert model.config.use_cache is False
    assert model.is_gradient_checkpointing is False
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    # The weights are the saved ones.
    saved = load_file(tiny_dir / "model.safetensors")
    state = model.state_dict()
    assert set(saved) <= set(state)
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name
    tokenizer = spec.load_tokenizer()
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.padding_side) == ("<pad>", "</s>", "right")


def test_tokenizer_without_pad_token_pads_with_eos(hub_spec, tiny_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    target = tmp_path / "no_pad"
    target.mkdir()
    for name in ("model.safetensors", "generation_config.json"):
        shutil.copy(tiny_dir / name, target / name)
    config = AutoConfig.from_pretrained(tiny_dir)
    config.pad_token_id = None
    config.save_pretrained(target)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(target)
    assert AutoTokenizer.from_pretrained(target).pad_token is None  # the premise

    spec = hub_spec(path=target)
    loaded = spec.load_tokenizer()
    assert loaded.pad_token == loaded.eos_token == "</s>"
    assert loaded.pad_token_id == loaded.eos_token_id
    model = spec.load_model()
    assert model.config.pad_token_id == loaded.eos_token_id


def test_chat_template_override(hub_spec) -> None:
    tokenizer = hub_spec(
        "model.chat_template='{% for m in messages %}{{ m.content }}|{% endfor %}'"
    ).load_tokenizer()
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], tokenize=False
    )
    assert rendered == "hi|yo|"


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash_attn is installed")
def test_flash_attention_falls_back_to_sdpa_without_flash_attn(hub_spec, caplog) -> None:
    spec = hub_spec("model.attn_implementation=flash_attention_2")
    with caplog.at_level(logging.WARNING, logger="rlhf_lab.models.hub"):
        model = spec.load_model()
    assert model.config._attn_implementation == "sdpa"
    warnings = [r.getMessage() for r in caplog.records if r.name == "rlhf_lab.models.hub"]
    assert warnings == [
        "model.attn_implementation=flash_attention_2 requested but flash_attn is not installed; using sdpa"
    ]


def test_eager_attention_is_passed_through(hub_spec) -> None:
    assert hub_spec("model.attn_implementation=eager").load_model().config._attn_implementation == "eager"


def test_bfloat16_dtype(hub_spec) -> None:
    model = hub_spec("model.dtype=bfloat16").load_model()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("model_option", ["hub", "tiny"])
def test_invalid_dtype_names_the_key_and_the_choices(model_option: str) -> None:
    cfg = compose_config([f"model={model_option}", "model.name_or_path=somewhere", "model.dtype=int3"])
    with pytest.raises(Exception) as caught:
        instantiate(cfg.model, _convert_="all")
    assert str(config_error(caught.value)) == (
        "model.dtype='int3' is not supported; choose one of: float32, bfloat16, float16"
    )


def test_gradient_checkpointing_is_turned_on(hub_spec) -> None:
    model = hub_spec("model.gradient_checkpointing=true").load_model()
    assert model.is_gradient_checkpointing is True
    assert model.training


# --- the tiny model builder ---------------------------------------------------------------------


def _tiny(cache: Path, **fields: Any) -> tuple[TinyModel, dict[str, torch.Tensor]]:
    spec = TinyModel(cache_dir=str(cache), hidden_size=32, intermediate_size=64, vocab_size=300, **fields)
    spec.prepare(lambda: iter(CORPUS))
    return spec, spec.load_model().state_dict()


def test_tiny_model_same_seed_and_corpus_same_weights_and_cache_dir(tmp_path: Path) -> None:
    first, first_state = _tiny(tmp_path / "a", seed=3)
    second, second_state = _tiny(tmp_path / "b", seed=3)
    assert Path(first.name_or_path).name == Path(second.name_or_path).name
    assert Path(first.name_or_path).parent == tmp_path / "a" / "tiny"
    assert first_state.keys() == second_state.keys()
    assert all(torch.equal(first_state[k], second_state[k]) for k in first_state)
    # Preparing again finds the cached build.
    again, _ = _tiny(tmp_path / "a", seed=3)
    assert again.name_or_path == first.name_or_path
    assert sorted(p.name for p in (tmp_path / "a" / "tiny").iterdir()) == [Path(first.name_or_path).name]


def test_tiny_model_different_seed_different_weights(tmp_path: Path) -> None:
    first, first_state = _tiny(tmp_path, seed=3)
    second, second_state = _tiny(tmp_path, seed=4)
    assert first.name_or_path != second.name_or_path
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(first_state[name], second_state[name])


def test_tiny_model_different_corpus_different_cache_dir(tmp_path: Path) -> None:
    first, _ = _tiny(tmp_path, seed=3)
    other = TinyModel(cache_dir=str(tmp_path), hidden_size=32, intermediate_size=64, vocab_size=300, seed=3)
    other.prepare(lambda: iter([*CORPUS, "A new sentence about a trowel."]))
    assert other.name_or_path != first.name_or_path


def test_tiny_model_mistral_architecture(tmp_path: Path) -> None:
    spec, _ = _tiny(tmp_path, architecture="mistral")
    model = spec.load_model()
    assert type(model).__name__ == "MistralForCausalLM"
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (32, 2)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 2)


def test_tiny_model_unknown_architecture() -> None:
    with pytest.raises(
        ConfigError, match="model.architecture='gpt2' is not supported; choose one of: llama, mistral"
    ):
        TinyModel(architecture="gpt2")


def test_tiny_model_needs_a_corpus() -> None:
    with pytest.raises(ValueError, match="trains its tokenizer on the training data"):
        TinyModel().prepare(None)


# --- LoRA / DoRA ---------------------------------------------------------------------------------


@pytest.fixture
def base_model(hub_spec) -> torch.nn.Module:
    return hub_spec().load_model()


def _adapter(*overrides: str) -> LoraAdapter:
    adapter = instantiate(compose_config(["adapter=lora", *overrides]).adapter, _convert_="all")
    assert type(adapter) is LoraAdapter
    return adapter


def test_lora_default_targets_attention_qkv(base_model) -> None:
    model = _adapter().apply(base_model)
    assert linear_suffixes(model, with_lora=True) == {"q_proj", "k_proj", "v_proj"}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    config = model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.use_dora) == (8, 16, False)


def test_lora_all_targets_every_linear_but_the_head(base_model) -> None:
    every_linear = linear_suffixes(base_model, with_lora=False)
    assert every_linear == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "lm_head",
    }
    model = _adapter("adapter.target_modules=all").apply(base_model)
    assert linear_suffixes(model, with_lora=True) == every_linear - {"lm_head"}


def test_lora_explicit_target_list(base_model) -> None:
    model = _adapter("adapter.target_modules=[o_proj,down_proj]", "adapter.r=4").apply(base_model)
    assert linear_suffixes(model, with_lora=True) == {"o_proj", "down_proj"}
    assert model.peft_config["default"].r == 4


def test_dora_option_sets_weight_decomposition(hub_spec) -> None:
    adapter = instantiate(compose_config(["adapter=dora"]).adapter, _convert_="all")
    assert adapter.use_dora is True
    model = adapter.apply(hub_spec().load_model())
    assert model.peft_config["default"].use_dora is True
    magnitudes = [name for name, _ in model.named_parameters() if "lora_magnitude_vector" in name]
    assert len(magnitudes) == 2 * 3  # two layers x q/k/v


def test_lora_rank_zero_is_a_config_error() -> None:
    cfg = compose_config(["adapter=lora", "adapter.r=0"])
    with pytest.raises(Exception) as caught:
        instantiate(cfg.adapter, _convert_="all")
    assert str(config_error(caught.value)) == "adapter.r=0 must be a positive integer"


def test_lora_default_without_attention_projections() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(
        ConfigError, match="adapter.target_modules=default found no attention q/k/v projection"
    ):
        LoraAdapter().resolve_targets(model)
