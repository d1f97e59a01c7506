"""Model builders: hub models loaded with `from_pretrained`, tiny models built from config, adapters."""

from rlhf_lab.models.adapters import Adapter, FullFinetune, LoraAdapter
from rlhf_lab.models.hub import HubModel
from rlhf_lab.models.tiny import TinyModel, train_tokenizer
from rlhf_lab.models.tiny_vlm import TinyVisionLanguageModel
from rlhf_lab.models.vision import VisionLanguageModel

__all__ = [
    "Adapter",
    "FullFinetune",
    "HubModel",
    "LoraAdapter",
    "TinyModel",
    "TinyVisionLanguageModel",
    "VisionLanguageModel",
    "train_tokenizer",
]
