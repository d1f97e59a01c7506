"""Tiny Llama/Mistral-architecture models built from config, with a tokenizer trained on the run's data.

A tiny model lets every objective run end to end on a laptop CPU. It is a real `transformers` model
saved with `save_pretrained` and loaded back with `from_pretrained`, so the hub-loading path is the one
exercised. The tokenizer is a byte-level BPE trained on the run's own training texts, with a
Zephyr-style chat template, so `model=tiny` works with any local dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from rlhf_lab.errors import ConfigError, check_choice, check_range
from rlhf_lab.models.hub import HubModel, default_cache_dir

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]

# Each turn ends with EOS, so a completion rendered by this template ends with EOS: the model learns to stop.
# Tools (their JSON schemas) open the conversation; tool calls follow their turn's text as JSON in <tool_call>.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}<|system|>\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}{{ eos_token }}{% endif %}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{% for call in message.tool_calls or [] %}<tool_call>{{ (call.function or call) | tojson }}</tool_call>{% endfor %}"
    "{{ eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

ARCHITECTURES = ("llama", "mistral")


def tokenizer_identity(name_or_path: str) -> str:
    """Identifies a tokenizer: a local directory's files (names, sizes, contents' hash), or a hub id."""
    path = Path(name_or_path)
    if not path.is_dir():
        return f"hub:{name_or_path}"
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        digest.update(file.name.encode())
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return f"dir:{digest.hexdigest()}"


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 512,
    min_frequency: int = 2,
    extra_special_tokens: list[str] | None = None,
    chat_template: str = CHAT_TEMPLATE,
) -> Any:
    """Train a byte-level BPE tokenizer with the chat special tokens and template.

    Args:
        texts: Training corpus (message contents, not rendered templates).
        vocab_size: Target vocabulary size including the 256 byte symbols and the special tokens.
        min_frequency: Minimum pair frequency for a merge.
        extra_special_tokens: More special tokens (a vision-language model's image tokens).
        chat_template: The Jinja chat template.

    Returns:
        A `transformers` fast tokenizer with ``bos``/``eos``/``pad``/``unk`` set and ``chat_template``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS + list(extra_special_tokens or []),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>", *(extra_special_tokens or [])],
        model_max_length=4096,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = chat_template
    return fast


@dataclass
class TinyModel(HubModel):
    """A small causal LM built from config, cached on disk per (architecture, seed, training corpus).

    Attributes:
        architecture: ``llama`` or ``mistral``.
        hidden_size: Model width.
        num_layers: Decoder layers.
        num_heads: Attention heads.
        num_kv_heads: Key/value heads (grouped-query attention when smaller than ``num_heads``).
        intermediate_size: MLP width.
        vocab_size: BPE vocabulary size (special tokens included).
        max_position_embeddings: Longest sequence the rotary embedding is configured for.
        seed: Seed for the initial weights; same seed and corpus give the same model.
        cache_dir: Where built models are kept (one sub-directory per cache key).
        tokenizer: A real tokenizer (local directory or hub id) to use instead of training one on the data:
            the vocabulary is sized to it, its special tokens and chat template come with it (``vocab_size``
            is then unused).
    """

    name_or_path: str = ""
    architecture: str = "llama"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    vocab_size: int = 512
    max_position_embeddings: int = 1024
    seed: int = 0
    cache_dir: str = field(default_factory=default_cache_dir)
    dtype: str = "float32"

    #: The architectures `architecture` may name.
    architectures: ClassVar[tuple[str, ...]] = ARCHITECTURES

    def __post_init__(self) -> None:
        check_choice("model.architecture", self.architecture, self.architectures)
        for key in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size"):
            check_range(f"model.{key}", getattr(self, key), 1)
        check_range("model.vocab_size", self.vocab_size, 300)  # 256 byte symbols + the special tokens
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"model.hidden_size={self.hidden_size} must be divisible by model.num_heads={self.num_heads}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"model.num_heads={self.num_heads} must be divisible by model.num_kv_heads={self.num_kv_heads} "
                "(grouped-query attention shares each key/value head among a whole number of query heads)"
            )
        super().__post_init__()

    def _architecture_fields(self) -> dict[str, Any]:
        keys = (
            "architecture",
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "intermediate_size",
            "vocab_size",
            "max_position_embeddings",
            "seed",
        )
        return {k: v for k, v in asdict(self).items() if k in keys}

    def prepare(self, corpus: Callable[[], Iterable[str]] | None) -> None:
        """Build (or find in the cache) the tokenizer and initial weights for this corpus."""
        if corpus is None:
            raise ValueError("model=tiny trains its tokenizer on the training data; no corpus was given")
        texts = list(corpus())
        digest = hashlib.sha256()
        digest.update(json.dumps(self._architecture_fields(), sort_keys=True).encode())
        digest.update(CHAT_TEMPLATE.encode())  # saved with the tokenizer
        if self.tokenizer:
            # A given tokenizer does not depend on the data, and neither do the weights then.
            digest.update(tokenizer_identity(self.tokenizer).encode())
        else:
            for text in texts:
                digest.update(text.encode("utf-8", "surrogatepass"))
                digest.update(b"\x00")
        key = digest.hexdigest()[:16]
        target = Path(self.cache_dir) / "tiny" / key
        if not (target / "config.json").exists():
            self._build(texts, target)
        self.name_or_path = str(target)

    def _build(self, texts: list[str], target: Path) -> None:
        from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

        tokenizer = (
            self.given_tokenizer() if self.tokenizer else train_tokenizer(texts, vocab_size=self.vocab_size)
        )
        common = self.text_config(tokenizer)
        config: Any
        model_cls: Any
        if self.architecture == "llama":
            config, model_cls = LlamaConfig(**common), LlamaForCausalLM
        else:
            config, model_cls = MistralConfig(sliding_window=None, **common), MistralForCausalLM
        self.publish(target, self.seeded(lambda: model_cls(config)), tokenizer.save_pretrained)

    def given_tokenizer(self) -> Any:
        """``model.tokenizer``, loaded; a pad token (EOS when it has none) so batches can be padded."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.tokenizer, trust_remote_code=self.trust_remote_code)
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(
                f"model.tokenizer={self.tokenizer!r} loads as a slow tokenizer; a fast (Rust) one is needed "
                "(character offsets split prompt from completion)"
            )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def text_config(self, tokenizer: Any) -> dict[str, Any]:
        """The language model's config arguments: this spec's sizes and the tokenizer's special tokens."""
        return dict(
            vocab_size=len(tokenizer),
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )

    def seeded(self, make: Callable[[], Any]) -> Any:
        """``make()`` with torch's generator seeded by `seed` (and restored after): the initial weights."""
        import torch

        generator_state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)
        try:
            return make()
        finally:
            torch.random.set_rng_state(generator_state)

    @staticmethod
    def publish(target: Path, model: Any, save_rest: Callable[[Path], Any]) -> None:
        """Save ``model`` (and, by ``save_rest``, its tokenizer or processor) as ``target``, whole or not at all.

        Built in a temporary directory and renamed, so concurrent jobs of a sweep never see half a model.
        """
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".building-"))
        model.save_pretrained(staging, safe_serialization=True)
        save_rest(staging)
        try:
            os.rename(staging, target)
        except OSError:  # another process finished first: its copy is identical
            shutil.rmtree(staging, ignore_errors=True)

    def identity(self) -> str:
        """Identifies the initial weights: the cache key already hashes architecture, seed and corpus."""
        return f"tiny:{self.name_or_path}:{self.dtype}"
