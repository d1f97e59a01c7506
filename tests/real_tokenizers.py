"""Real models' tokenizers and chat templates, offline: from registry packages, saved as Hugging Face
tokenizer folders a tiny model can take (``model.tokenizer=<folder>``).

- Mistral-7B's sentencepiece tokenizer (v1, 32k) ships in ``mistral-common`` (``data/tokenizer.model.v1``).
- Llama 3's tiktoken tokenizer (128k) ships in ``llama-models`` (``llama3/tokenizer.model``); its special
  tokens are the ones ``llama_models/llama3/tokenizer.py`` defines.
- Chat templates: TRL ships real models' templates (``trl/chat_templates/*.jinja``); Mistral-7B-Instruct-v0.1's
  is in ``tests/assets/templates`` (see the README there).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "assets" / "templates"


def trl_template(name: str) -> Path:
    """A chat template TRL ships (``llama3``, ``qwen2_5``, ``qwen2_5_vl``, ``llava_next``...)."""
    import trl

    return Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja"


def mistral_instruct_template() -> Path:
    return TEMPLATES / "mistral_instruct_v0_1.jinja"


def _built(name: str, build) -> Path:
    """A tokenizer folder built once per test cache, under a lock (parallel workers wait for it)."""
    root = Path(os.environ["RLHF_LAB_CACHE"]) / "real_tokenizers" / name
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "tokenizer_config.json").exists():
            staging = root.with_name(f".{name}.building")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            build(staging)
            os.rename(staging, root)
    return root


def mistral_tokenizer() -> Path:
    """Mistral-7B's own tokenizer (``mistral-common``'s ``tokenizer.model.v1``) as a fast HF tokenizer."""
    import mistral_common

    def build(folder: Path) -> None:
        model = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
        shutil.copy(model, folder / "tokenizer.model")
        config = {
            "tokenizer_class": "LlamaTokenizer",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "add_bos_token": True,
            "add_eos_token": False,
            "legacy": True,  # as Mistral-7B ships it: the same ids as mistral-common's own encoder
        }
        # As Mistral-7B's first hub folders: the sentencepiece model and a config (converted to a fast tokenizer
        # when loaded; a saved tokenizer.json would lose `legacy` and tokenise "<s>[INST]" differently).
        (folder / "tokenizer_config.json").write_text(json.dumps(config))

    return _built("mistral_v1", build)


def llama3_tokenizer() -> Path:
    """Llama 3's own tokenizer (``llama-models``' tiktoken file) with its special tokens, as a fast HF tokenizer."""
    import llama_models

    def build(folder: Path) -> None:
        from transformers import PreTrainedTokenizerFast
        from transformers.convert_slow_tokenizer import TikTokenConverter

        # As llama_models/llama3/tokenizer.py numbers them: after the 128,000 BPE ranks.
        special = [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|reserved_special_token_0|>",
            "<|reserved_special_token_1|>",
            "<|finetune_right_pad_id|>",
            "<|step_id|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eom_id|>",
            "<|eot_id|>",
            "<|python_tag|>",
            "<|image|>",
        ]
        special += [f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(special))]
        model = Path(llama_models.__file__).parent / "llama3" / "tokenizer.model"
        converted = TikTokenConverter(vocab_file=str(model), extra_special_tokens=special).converted()
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=converted,
            bos_token="<|begin_of_text|>",
            eos_token="<|eot_id|>",
            pad_token="<|finetune_right_pad_id|>",
        )
        tokenizer.save_pretrained(folder)

    return _built("llama3", build)
