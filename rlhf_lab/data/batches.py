"""Typed batches: what a collator builds and an objective consumes.

Every batch holds its token rows as one `Sequences` (so one decoder pass scores them all) plus the
dataset index of each example. The row layout is a property of the batch type, written here once:

- `PairBatch`: ``B`` pairs as ``2B`` rows, chosen rows ``0..B-1`` then rejected rows ``B..2B-1``.
- `SingleBatch`: ``B`` rows, one completion each (SFT).
- `UnpairedBatch`: ``B`` labelled completions, then ``B`` mismatched rows (each prompt with another
  example's completion, for KTO's KL reference point).
- `PromptBatch`: ``B`` left-padded prompts with no completion (generation).

Batches are dataclasses of tensors, so Lightning moves them to the device like dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch


@dataclass
class Sequences:
    """Padded token rows and which of their tokens are completion tokens.

    Attributes:
        input_ids: ``[N, T]`` token ids.
        attention_mask: ``[N, T]`` 1 at real tokens, 0 at padding.
        completion_mask: ``[N, T]`` True at completion tokens (the tokens objectives score).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])

    def rows(self, part: slice | torch.Tensor) -> Sequences:
        """The rows ``part`` (a slice, or a tensor of row indices), as their own `Sequences`."""
        return Sequences(self.input_ids[part], self.attention_mask[part], self.completion_mask[part])

    def to(self, device: torch.device | str) -> Sequences:
        return Sequences(*(getattr(self, f.name).to(device) for f in fields(self)))

    @property
    def prompt_mask(self) -> torch.Tensor:
        """``[N, T]`` True at real tokens that are not completion tokens."""
        return self.attention_mask.bool() & ~self.completion_mask.bool()


@dataclass
class Batch:
    """Rows of ``rows_per_example`` sequences per example, in blocks: row ``s * B + b`` is sequence ``s`` of
    example ``b``.

    Attributes:
        sequences: The token rows of every example.
        index: ``[B]`` dataset index of each example (keys precomputed reference tables).
    """

    sequences: Sequences
    index: torch.Tensor

    kind: ClassVar[str] = ""
    #: Sequences per example (pairs: chosen and rejected).
    rows_per_example: ClassVar[int] = 1

    @property
    def size(self) -> int:
        """Examples in the batch (``B``)."""
        return int(self.index.numel())

    def block(self, position: int) -> Sequences:
        """Sequence ``position`` of every example (for pairs: 0 chosen, 1 rejected)."""
        return self.sequences.rows(slice(position * self.size, (position + 1) * self.size))

    def per_example(self, values: torch.Tensor) -> torch.Tensor:
        """``[N]`` per-row values -> ``[B, rows_per_example]``."""
        return values.view(self.rows_per_example, self.size).t()

    def per_row(self, values: torch.Tensor) -> torch.Tensor:
        """``[B, rows_per_example]`` per-example values -> ``[N]`` in row order (inverse of `per_example`)."""
        return values.t().reshape(-1)

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens in the batch."""
        return int(self.sequences.attention_mask.sum())


@dataclass
class PairBatch(Batch):
    """Preference pairs: chosen rows, then rejected rows.

    Attributes:
        margin: ``[B]`` per-pair margins from the data (reward models), or None.
    """

    margin: torch.Tensor | None = None

    kind: ClassVar[str] = "pairs"
    rows_per_example: ClassVar[int] = 2

    def chosen(self) -> Sequences:
        return self.block(0)

    def rejected(self) -> Sequences:
        return self.block(1)

    def split(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[2B]`` per-row values -> ``([B] chosen, [B] rejected)``."""
        return values[: self.size], values[self.size :]


@dataclass
class SingleBatch(Batch):
    """One target completion per example (SFT)."""

    kind: ClassVar[str] = "single"
    rows_per_example: ClassVar[int] = 1


@dataclass
class UnpairedBatch(Batch):
    """Labelled completions, then mismatched rows (prompt ``b`` with another example's completion).

    Attributes:
        labels: ``[B]`` True where the completion is desirable.
    """

    labels: torch.Tensor

    kind: ClassVar[str] = "unpaired"
    rows_per_example: ClassVar[int] = 2

    def completions(self) -> Sequences:
        return self.block(0)

    def mismatched(self) -> Sequences:
        return self.block(1)


@dataclass
class PromptBatch(Batch):
    """Left-padded prompts to generate from (``completion_mask`` is all False).

    Attributes:
        prompts: ``B`` prompts as data (strings or message lists), for reward functions.
        columns: The rows' extra columns (e.g. ``answer``), each a list of ``B`` values.
    """

    prompts: list[Any] = field(default_factory=list)
    columns: dict[str, list[Any]] = field(default_factory=dict)

    kind: ClassVar[str] = "prompts"
    rows_per_example: ClassVar[int] = 1


BATCH_TYPES: dict[str, type[Batch]] = {
    cls.kind: cls for cls in (PairBatch, SingleBatch, UnpairedBatch, PromptBatch)
}
