"""Vision-language models: loading (model, processor), which parts are frozen, and saving the processor.

A vision-language model (Qwen2-VL, Qwen2.5-VL, LLaVA, LLaVA-NeXT) is loaded with
``AutoModelForImageTextToText`` and its ``AutoProcessor``. Its vision tower and projector are frozen by
default (``model.freeze_vision_tower``, ``model.freeze_projector``): full fine-tuning then trains the
language model only, and LoRA targets only modules that are not frozen (`rlhf_lab.models.adapters`).

Processors whose video processor needs torchvision (Qwen2-VL's, Qwen2.5-VL's) cannot be loaded on a machine
without it, although no video is ever used here; `load_processor` then assembles the same processor class
from its image processor and tokenizer alone, and `save_processor` writes what reloads it. An export's
processor loads with ``AutoProcessor.from_pretrained`` without torchvision for LLaVA and LLaVA-NeXT (their
image processors are saved by type name, and transformers picks its PIL implementation); for the Qwen2-VL
family transformers' own processor class check needs torchvision (``pip install torchvision``), and
`load_processor` loads it without.
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_lab.errors import ConfigError
from rlhf_lab.models.hub import HubModel

log = logging.getLogger(__name__)

#: Module names of vision towers and of the projectors that map their features into the language model
#: (the projector may sit inside the tower: Qwen2-VL's ``visual.merger``).
VISION_TOWER_NAMES = ("visual", "vision_tower", "vision_model")
PROJECTOR_NAMES = ("multi_modal_projector", "merger", "mm_projector")


def is_vision_language(model: Any) -> bool:
    """True for a multimodal model whose base computes image features."""
    config = getattr(model, "config", None)
    return getattr(config, "vision_config", None) is not None


def vision_parts(model: Any) -> dict[str, list[str]]:
    """Qualified names of the vision tower and projector modules of ``model`` (outermost matches only)."""
    parts: dict[str, list[str]] = {"vision_tower": [], "projector": []}
    for name, _ in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        for part, names in (("projector", PROJECTOR_NAMES), ("vision_tower", VISION_TOWER_NAMES)):
            if leaf in names and not any(name.startswith(f"{found}.") for found in parts[part]):
                parts[part].append(name)
                break
    return parts


def under(name: str, prefixes: list[str]) -> bool:
    """Whether module or parameter ``name`` is one of ``prefixes`` or inside one."""
    return any(name == prefix or name.startswith(f"{prefix}.") for prefix in prefixes)


def freeze_vision_parts(model: Any, vision_tower: bool, projector: bool) -> dict[str, list[str]]:
    """Freeze the vision tower and/or the projector (the projector follows its own flag even inside the tower).

    Raises:
        ConfigError: The model has no recognisable vision tower or projector.
    """
    parts = vision_parts(model)
    if not parts["vision_tower"] or not parts["projector"]:
        raise ConfigError(
            f"{type(model).__name__}: cannot find its vision tower ({'/'.join(VISION_TOWER_NAMES)}) and projector "
            f"({'/'.join(PROJECTOR_NAMES)}) modules, so model.freeze_vision_tower/freeze_projector cannot apply"
        )

    for name, parameter in model.named_parameters():
        if under(name, parts["projector"]):
            parameter.requires_grad_(not projector)
        elif under(name, parts["vision_tower"]):
            parameter.requires_grad_(not vision_tower)
    return parts


def _processor_class(
    name_or_path: str, revision: str | None, trust_remote_code: bool
) -> tuple[Any, dict[str, Any]]:
    """The processor class of a model, and the options of its ``processor_config.json`` (when local)."""
    from transformers import AutoConfig
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES, processor_class_from_name

    local = Path(name_or_path) / "processor_config.json"
    options: dict[str, Any] = {}
    if local.is_file():
        options = json.loads(local.read_text())
        name = options.pop("processor_class", None)
    else:
        config = AutoConfig.from_pretrained(
            name_or_path, revision=revision, trust_remote_code=trust_remote_code
        )
        name = PROCESSOR_MAPPING_NAMES.get(config.model_type)
    cls = processor_class_from_name(name) if name else None
    if cls is None:
        raise ConfigError(f"{name_or_path}: no processor class is known for this model")
    return cls, options


def assemble_processor(
    cls: Any, image_processor: Any, tokenizer: Any, chat_template: str | None, **options: Any
) -> Any:
    """``cls(image_processor, tokenizer, <no video processor>, **options)``, skipping transformers'
    sub-processor class check, which needs torchvision for the video processor even when it is None.

    ``options`` the constructor does not take are ignored (a processor config may hold more keys)."""
    processor = cls.__new__(cls)
    processor.check_argument_for_proper_class = lambda name, argument: type(argument)
    parameters = inspect.signature(cls.__init__).parameters
    arguments = {"image_processor": image_processor, "tokenizer": tokenizer, "chat_template": chat_template}
    arguments.update({key: value for key, value in options.items() if key in parameters})
    for name in parameters:
        if name.endswith("_processor") and name not in arguments:
            arguments[name] = None
    cls.__init__(processor, **arguments)
    del processor.check_argument_for_proper_class
    return processor


def load_processor(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """The model's ``AutoProcessor``, or (when a sub-processor it has but never uses here cannot be loaded,
    e.g. a video processor without torchvision) the same processor class with images and text only."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    options: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        return AutoProcessor.from_pretrained(name_or_path, **options)
    except ImportError as error:
        log.info(
            "%s: loading the processor for images only (%s)", name_or_path, str(error).strip().splitlines()[0]
        )
    cls, saved = _processor_class(name_or_path, revision, trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **options)
    image_processor = AutoImageProcessor.from_pretrained(name_or_path, **options)
    return assemble_processor(
        cls, image_processor, tokenizer, getattr(tokenizer, "chat_template", None), **saved
    )


def save_processor(processor: Any, directory: Path) -> None:
    """Save a processor (or a plain tokenizer) so `load_processor` / ``AutoTokenizer`` reload it."""
    if not hasattr(processor, "image_processor"):
        processor.save_pretrained(directory)
        return
    # The parts, then the processor's own config: works whether or not its video processor could load.
    processor.image_processor.save_pretrained(directory)
    processor.tokenizer.save_pretrained(directory)
    if getattr(processor, "video_processor", None) is not None:
        # Loaded (torchvision present): its own settings, which AutoProcessor otherwise takes from the image's.
        processor.video_processor.save_pretrained(directory)
    config: dict[str, int | str] = {"processor_class": type(processor).__name__}
    for key in ("patch_size", "vision_feature_select_strategy", "num_additional_image_tokens", "image_token"):
        value = getattr(processor, key, None)
        if isinstance(value, int | str):
            config[key] = value
    (Path(directory) / "processor_config.json").write_text(json.dumps(config, indent=2))


@dataclass
class VisionLanguageModel(HubModel):
    """A vision-language model from the hub or a local directory (``AutoModelForImageTextToText``).

    Attributes:
        freeze_vision_tower: Keep the vision encoder's weights fixed.
        freeze_projector: Keep the projector (vision features -> language-model embeddings) fixed.
    """

    freeze_vision_tower: bool = True
    freeze_projector: bool = True

    def __post_init__(self) -> None:
        if self.tokenizer:
            raise ConfigError(
                f"model.tokenizer={self.tokenizer!r}: a vision-language model takes its tokenizer from its processor "
                "(its image tokens must match); leave model.tokenizer unset"
            )
        super().__post_init__()

    def load_processor(self) -> Any:
        processor = load_processor(self.name_or_path, self.revision, self.trust_remote_code)
        if self.chat_template:
            processor.chat_template = self.chat_template  # the processor renders image parts with it too
        return processor

    def load_tokenizer(self) -> Any:
        processor = self.load_processor()
        tokenizer = processor.tokenizer
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = self.padding_side
        template = self.chat_template or getattr(processor, "chat_template", None)
        if template:
            tokenizer.chat_template = template
        return tokenizer

    def auto_class(self, task: str) -> Any:
        from transformers import AutoModelForImageTextToText

        if task != "causal_lm":
            raise ConfigError(
                f"{self.name_or_path} is a vision-language model; it can be a policy, reference or teacher, not "
                f"a {task} model (reward and value models are text models here)"
            )
        return AutoModelForImageTextToText

    def load_model(self, task: str = "causal_lm", require_head: bool = False, **extra: Any) -> Any:
        model = super().load_model(task, require_head, **extra)
        freeze_vision_parts(model, self.freeze_vision_tower, self.freeze_projector)
        return model

    def adapter_plan(self, model: Any) -> tuple[Any, tuple[str, ...]]:
        """LoRA leaves the frozen vision parts alone; an unfrozen projector trains in full beside it (an
        unfrozen vision tower gets LoRA on its attention like the language model)."""
        parts = vision_parts(model)

        def frozen(name: str) -> bool:
            if under(name, parts["projector"]):
                return self.freeze_projector
            return under(name, parts["vision_tower"]) and self.freeze_vision_tower

        return frozen, () if self.freeze_projector else tuple(parts["projector"])
