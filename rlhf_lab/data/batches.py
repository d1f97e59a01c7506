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
class ImageInputs:
    """The pixels of the images some rows show, each distinct image processed once.

    A pair's chosen and rejected rows show the same images (unless the data gives ``rejected_images``), so
    the vision tower encodes each image once and its features are placed in every row that shows it.

    Attributes:
        pixel_values: The image processor's pixels of every distinct image, concatenated along dim 0.
        pixel_rows: ``[I]`` rows of ``pixel_values`` per distinct image.
        per_image: The processor's other outputs, one row per distinct image (``image_grid_thw``...).
        shown: ``[M]`` the distinct image of each image the rows show, in reading order (row by row, left to
            right), which is the order of the image-token runs in ``input_ids``.
        row_counts: ``[N]`` images shown per row.
    """

    pixel_values: torch.Tensor
    pixel_rows: torch.Tensor
    per_image: dict[str, torch.Tensor]
    shown: torch.Tensor
    row_counts: torch.Tensor

    def rows(self, part: slice | torch.Tensor) -> ImageInputs:
        """The images of the rows ``part``, keeping only the distinct images those rows show."""
        selected = torch.arange(self.row_counts.numel(), device=self.row_counts.device)[part]
        starts = self.row_counts.cumsum(0) - self.row_counts
        spans = [torch.arange(int(starts[r]), int(starts[r] + self.row_counts[r])) for r in selected.tolist()]
        occurrences = torch.cat(spans).long() if spans else torch.zeros(0, dtype=torch.long)
        shown = self.shown[occurrences.to(self.shown.device)]
        kept, remapped = torch.unique(shown, sorted=True, return_inverse=True)
        pixel_starts = self.pixel_rows.cumsum(0) - self.pixel_rows
        pixel_index = [
            torch.arange(int(pixel_starts[i]), int(pixel_starts[i] + self.pixel_rows[i]))
            for i in kept.tolist()
        ]
        gather = torch.cat(pixel_index).long() if pixel_index else torch.zeros(0, dtype=torch.long)
        return ImageInputs(
            pixel_values=self.pixel_values[gather.to(self.pixel_values.device)],
            pixel_rows=self.pixel_rows[kept],
            per_image={key: value[kept.to(value.device)] for key, value in self.per_image.items()},
            shown=remapped.reshape(-1),
            row_counts=self.row_counts[selected],
        )

    def to(self, device: torch.device | str) -> ImageInputs:
        return ImageInputs(
            self.pixel_values.to(device),
            self.pixel_rows.to(device),
            {key: value.to(device) for key, value in self.per_image.items()},
            self.shown.to(device),
            self.row_counts.to(device),
        )


@dataclass
class SharedPrompts:
    """Pairs packed one row each, ``[prompt | chosen | rejected]``, so the decoder reads each prompt once
    (and, for a rollout, ``[prompt | completion 1 | ... | completion G]``: `share_completions`).

    The rejected block attends to the prompt and to itself, never to the chosen block, and its positions
    restart where the chosen block's start, so each block sees exactly what it sees in its own row.
    `source_rows` / `source_positions` map every position of the unshared rows (`Sequences`: chosen rows,
    then rejected rows) to the packed position holding its hidden state.

    Attributes:
        input_ids: ``[B, L]`` packed token ids (right-padded).
        position_ids: ``[B, L]``.
        segments: ``[B, L]`` 0 prompt, 1 chosen, 2 rejected (``k``: the ``k``-th completion), -1 padding.
        source_rows: ``[2B, T]`` the packed row of each unshared position (``[N, T]`` for a rollout).
        source_positions: ``[2B, T]`` its position in that row (0 at padding).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segments: torch.Tensor
    source_rows: torch.Tensor
    source_positions: torch.Tensor

    def attention(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``[B, 1, L, L]`` attention mask: boolean (True: attend), or additive in ``dtype`` (eager attention)."""
        segments = self.segments
        length = segments.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
        allowed = causal[None] & (segments >= 0)[:, None, :]
        # A completion block sees the prompt and itself, never another completion block.
        query, key = segments[:, :, None], segments[:, None, :]
        allowed &= ~((query >= 1) & (key >= 1) & (query != key))
        # A padding query sees itself: a row with nothing to attend to would be NaN, and NaN times a zero
        # attention weight is still NaN in the next layer.
        allowed |= torch.eye(length, dtype=torch.bool, device=segments.device)[None]
        mask = allowed[:, None]
        if dtype is None:
            return mask
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(dtype).min
        )

    def to(self, device: torch.device | str) -> SharedPrompts:
        return SharedPrompts(*(getattr(self, f.name).to(device) for f in fields(self)))


@dataclass
class Sequences:
    """Padded token rows and which of their tokens are completion tokens.

    Attributes:
        input_ids: ``[N, T]`` token ids.
        attention_mask: ``[N, T]`` 1 at real tokens, 0 at padding.
        completion_mask: ``[N, T]`` True at completion tokens (the tokens objectives score).
        images: The images the rows show (vision-language models), or None.
        shared: The same pairs with each prompt read once (``data.prefix_sharing``), or None. A forward may use
            either layout; both give the same hidden states at every position.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    images: ImageInputs | None = None
    shared: SharedPrompts | None = None

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])

    def rows(self, part: slice | torch.Tensor) -> Sequences:
        """The rows ``part`` (a slice, or a tensor of row indices), as their own `Sequences` (unshared: a part of
        a pair batch is no longer pairs)."""
        return Sequences(
            self.input_ids[part],
            self.attention_mask[part],
            self.completion_mask[part],
            None if self.images is None else self.images.rows(part),
        )

    def to(self, device: torch.device | str) -> Sequences:
        return Sequences(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.completion_mask.to(device),
            images=None if self.images is None else self.images.to(device),
            shared=None if self.shared is None else self.shared.to(device),
        )

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

    def shared_lengths(self) -> torch.Tensor:
        """``[2B]`` each row's pair's shorter completion length ``min(|y_c|, |y_r|)`` (LD-DPO's shared part)."""
        chosen, rejected = self.split(self.sequences.completion_mask.sum(1))
        shared = torch.minimum(chosen, rejected)
        return torch.cat([shared, shared])


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
