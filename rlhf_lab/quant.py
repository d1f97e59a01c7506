"""Quantisation of the base weights (QLoRA etc. arrive with the scale issue)."""

from __future__ import annotations

from typing import Any


class NoQuantization:
    """Full-precision weights; adds nothing to ``from_pretrained``."""

    def load_kwargs(self) -> dict[str, Any]:
        return {}
