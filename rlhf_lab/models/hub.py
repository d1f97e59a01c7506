"""Hub models: `from_pretrained` for a hub name or a local directory, with the settings real models need."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_lab.errors import ConfigError, check_choice

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
PADDING_SIDES = ("right", "left")


class FirstRetryOnly(logging.Filter):
    """Lets one hub ``Retrying in ...`` warning through per process: one says the network is flaky; twenty
    (each printed twice) bury the console."""

    def __init__(self) -> None:
        super().__init__()
        self.shown = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Retry" not in record.getMessage():
            return True
        shown, self.shown = self.shown, True
        return not shown


def quiet_hub_retries() -> None:
    """Install `FirstRetryOnly` on huggingface_hub's HTTP logger (once)."""
    hub_http = logging.getLogger("huggingface_hub.utils._http")
    if not any(isinstance(f, FirstRetryOnly) for f in hub_http.filters):
        hub_http.addFilter(FirstRetryOnly())


class NotASequenceClassifier(ValueError):
    """A model loaded as a sequence classifier whose checkpoint holds no score head (a policy, not a reward
    model): transformers would give it a new, random head without a word."""


def torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


@dataclass
class HubModel:
    """A causal LM loaded with ``AutoModelForCausalLM.from_pretrained``.

    Attributes:
        name_or_path: Hub id (``mistralai/Mistral-7B-v0.1``) or a local directory.
        revision: Hub revision (branch, tag or commit).
        dtype: Weight dtype: ``float32``, ``bfloat16`` or ``float16``.
        attn_implementation: ``sdpa`` (default), ``eager`` or ``flash_attention_2`` (falls back to
            ``sdpa`` with a warning when the ``flash_attn`` package is missing).
        trust_remote_code: Allow custom modelling code from the hub (off by default).
        gradient_checkpointing: Recompute activations in the backward pass (non-reentrant).
        padding_side: Tokenizer padding side for generation; training batches are built by the collator.
        chat_template: Jinja template to use instead of the tokenizer's own (needed for base models): the
            template's text, or the path of a file holding it (``.jinja``).
        tokenizer: Load the tokenizer from here (a local directory or hub id) instead of ``name_or_path``; a
            tiny model built from config takes its vocabulary from it.
    """

    name_or_path: str = "???"
    revision: str | None = None
    dtype: str = "bfloat16"
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    padding_side: str = "right"
    chat_template: str | None = None
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        check_choice("model.dtype", self.dtype, DTYPES)
        check_choice("model.attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)
        check_choice("model.padding_side", self.padding_side, PADDING_SIDES)
        self.chat_template = chat_template_text(self.chat_template)

    def prepare(self, corpus: Callable[[], Iterable[str]] | None) -> None:
        """Hub models need no preparation; tiny models train their tokenizer here."""

    def load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        quiet_hub_retries()
        tokenizer = AutoTokenizer.from_pretrained(
            self.tokenizer or self.name_or_path,
            revision=None if self.tokenizer else self.revision,
            trust_remote_code=self.trust_remote_code,
        )
        if tokenizer.pad_token is None:
            # Mistral and Llama ship without a pad token; padded positions are masked out anyway.
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = self.padding_side
        if self.chat_template is not None:
            tokenizer.chat_template = self.chat_template
        return tokenizer

    def adapter_plan(self, model: Any) -> tuple[Any, tuple[str, ...]]:
        """What an adapter must leave frozen (a predicate on module names, or None: nothing) and what it trains
        in full beside its own weights (`rlhf_lab.models.adapters.Adapter.apply`)."""
        return None, ()

    def load_processor(self) -> Any:
        """The multimodal processor (images + text); None for a text model."""
        return None

    def auto_class(self, task: str) -> Any:
        """The ``Auto*`` class that loads this model for ``task``."""
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        return AutoModelForCausalLM if task == "causal_lm" else AutoModelForSequenceClassification

    def resolved_attn_implementation(self) -> str:
        if self.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            log.warning(
                "model.attn_implementation=flash_attention_2 requested but flash_attn is not "
                "installed; using sdpa"
            )
            return "sdpa"
        return self.attn_implementation

    def load_model(self, task: str = "causal_lm", require_head: bool = False, **extra: Any) -> Any:
        """Load the model in train mode (``from_pretrained`` returns eval mode: dropout would be off).

        Args:
            task: ``causal_lm`` (policies) or ``sequence_classification`` (a reward model: one score per
                sequence, read at its last non-pad token; the score head is newly initialised).
            require_head: Every weight must come from the checkpoint (a trained reward model's score head):
                `NotASequenceClassifier` when some were newly initialised.
            **extra: Further ``from_pretrained`` arguments (quantisation).
        """
        check_choice("task", task, ("causal_lm", "sequence_classification"))
        quiet_hub_retries()
        auto = self.auto_class(task)
        if task == "sequence_classification":
            extra = {"num_labels": 1, **extra}
            if "pad_token_id" not in extra:
                extra["pad_token_id"] = self.load_tokenizer().pad_token_id
        model = auto.from_pretrained(
            self.name_or_path,
            revision=self.revision,
            dtype=torch_dtype(self.dtype),
            attn_implementation=self.resolved_attn_implementation(),
            trust_remote_code=self.trust_remote_code,
            output_loading_info=require_head,
            **extra,
        )
        if require_head:
            model, info = model
            missing = sorted(info.get("missing_keys") or [])
            if missing:
                raise NotASequenceClassifier(
                    f"it is not a sequence classifier: {', '.join(missing[:3])} would be newly initialised "
                    "(a reward model is the export of an algo=reward run)"
                )
        model.config.use_cache = False
        # getattr: a vision-language model's config keeps its token ids in its text config.
        if getattr(model.config, "pad_token_id", None) is None and getattr(
            model.config, "eos_token_id", None
        ):
            eos = model.config.eos_token_id
            model.config.pad_token_id = eos[0] if isinstance(eos, list) else eos
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        return model

    def identity(self) -> str:
        """A string that changes when the initial weights change (keys the reference log-prob cache)."""
        parts = [self.name_or_path, str(self.revision), self.dtype]
        path = Path(self.name_or_path)
        if path.is_dir():
            for weight_file in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
                stat = weight_file.stat()
                parts.append(f"{weight_file.name}:{stat.st_size}:{int(stat.st_mtime)}")
        return "|".join(parts)


def chat_template_text(value: str | None, key: str = "model.chat_template") -> str | None:
    """A chat template given as its text, or as the path of a file holding it (read here)."""
    if value is None or "{%" in value or "{{" in value:
        return value  # a Jinja template's text
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"{key}={value!r} is neither a Jinja template (no {{% or {{{{) nor a file that exists"
        )
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{key}={value!r}: cannot read the template file ({error})") from None


def default_cache_dir() -> str:
    return os.environ.get("RLHF_LAB_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "rlhf_lab"))
