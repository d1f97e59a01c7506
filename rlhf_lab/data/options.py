"""Checks of the data config's batching options, failing early with the key, the value and what is allowed."""

from __future__ import annotations

from rlhf_lab.errors import ConfigError, check_choice, check_range


def check_sizes(batch_size: int, eval_batch_size: int | None, group_by_length: int) -> None:
    """Fail naming the key when a batch size or the length-grouping window is out of range."""
    if batch_size < 1:
        raise ConfigError(f"data.batch_size={batch_size} must be at least 1")
    if eval_batch_size is not None and eval_batch_size < 1:
        raise ConfigError(
            f"data.eval_batch_size={eval_batch_size} must be at least 1 (or null: data.batch_size)"
        )
    check_range("data.group_by_length", group_by_length, 0)


def prefix_sharing_on(value: bool | str) -> bool:
    """Whether the collator packs pairs for ``data.prefix_sharing`` (auto, true, false): auto and true alike;
    whether the model can read them is decided at its forward (`rlhf_lab.policy.shares_prompts`)."""
    check_choice("data.prefix_sharing", value, ("auto", True, False))
    return value in (True, "auto")
