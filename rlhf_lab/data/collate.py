"""Batching tokenized examples into typed batches (`rlhf_lab.data.batches`) of padded tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_lab.data.batches import (
    ImageInputs,
    PairBatch,
    PromptBatch,
    Sequences,
    SharedPrompts,
    SingleBatch,
    UnpairedBatch,
)
from rlhf_lab.data.images import ImageProcessing, ImageSource
from rlhf_lab.data.tokenize import TokenizedExample


def pad_rows(
    rows: list[tuple[list[int], list[int]]],
    pad_token_id: int,
    pad_to_multiple_of: int | None = None,
    left: bool = False,
) -> Sequences:
    """Pad ``(prompt, completion)`` id rows into `Sequences` (right padding unless ``left``)."""
    length = max(len(prompt) + len(completion) for prompt, completion in rows)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    completion_mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for row, (prompt, completion) in enumerate(rows):
        size = len(prompt) + len(completion)
        start = length - size if left else 0
        input_ids[row, start : start + size] = torch.tensor(prompt + completion, dtype=torch.long)
        attention_mask[row, start : start + size] = 1
        completion_mask[row, start + len(prompt) : start + size] = True
    return Sequences(input_ids, attention_mask, completion_mask)


def image_inputs(shown: list[list[ImageSource]], processing: ImageProcessing | None) -> ImageInputs | None:
    """The pixels of the images each row shows (``shown[r]``, in reading order), each distinct image (by
    content) processed once; None when no row shows an image."""
    if not any(shown):
        return None
    if processing is None:
        raise ValueError("these rows show images but the collator has no image processing (a text model?)")
    distinct: dict[str, int] = {}
    sources: list[ImageSource] = []
    order: list[int] = []
    for images in shown:
        for image in images:
            if image.digest not in distinct:
                distinct[image.digest] = len(sources)
                sources.append(image)
            order.append(distinct[image.digest])
    pixel_values, pixel_rows, per_image = processing.pixels(sources)
    return ImageInputs(
        pixel_values=pixel_values,
        pixel_rows=pixel_rows,
        per_image=per_image,
        shown=torch.tensor(order, dtype=torch.long),
        row_counts=torch.tensor([len(images) for images in shown], dtype=torch.long),
    )


def share_prompts(examples: list[TokenizedExample], sequences: Sequences, pad_token_id: int) -> SharedPrompts:
    """Pack each pair as ``[prompt | chosen | rejected]`` (see `SharedPrompts`), beside its unshared rows."""
    size = len(examples)
    width = max(len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids or []) for e in examples)
    input_ids = torch.full((size, width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((size, width), dtype=torch.long)
    segments = torch.full((size, width), -1, dtype=torch.long)
    rows = sequences.input_ids.shape[1]
    source_rows = torch.arange(size).repeat(2).unsqueeze(1).expand(2 * size, rows).clone()
    source_positions = torch.zeros((2 * size, rows), dtype=torch.long)
    for b, example in enumerate(examples):
        prompt, chosen, rejected = (
            len(example.prompt_ids),
            len(example.chosen_ids),
            len(example.rejected_ids or []),
        )
        ids = example.prompt_ids + example.chosen_ids + list(example.rejected_ids or [])
        input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        position_ids[b, : prompt + chosen] = torch.arange(prompt + chosen)
        position_ids[b, prompt + chosen : len(ids)] = torch.arange(prompt, prompt + rejected)
        segments[b, :prompt] = 0
        segments[b, prompt : prompt + chosen] = 1
        segments[b, prompt + chosen : len(ids)] = 2
        source_positions[b, : prompt + chosen] = torch.arange(prompt + chosen)
        source_positions[size + b, :prompt] = torch.arange(prompt)
        source_positions[size + b, prompt : prompt + rejected] = torch.arange(prompt + chosen, len(ids))
    return SharedPrompts(input_ids, position_ids, segments, source_rows, source_positions)


def _images(example: TokenizedExample) -> list[ImageSource]:
    return list(example.images or [])


def _indices(items: list[tuple[int, TokenizedExample]]) -> torch.Tensor:
    return torch.tensor([index for index, _ in items], dtype=torch.long)


@dataclass
class PreferenceCollator:
    """Collate ``(dataset index, TokenizedExample)`` items into a `PairBatch` (or a `SingleBatch` when the
    examples have no rejected completion).

    Attributes:
        pad_token_id: Id written after each sequence.
        pad_to_multiple_of: Round the padded length up to a multiple of this (e.g. 8 for tensor cores).
        images: A vision-language model's image processing (the rows' pixels); None for text.
        prefix_sharing: Also pack each pair with its prompt once (`share_prompts`), for text pairs that share
            their prompt.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    images: ImageProcessing | None = None
    prefix_sharing: bool = False

    def __call__(self, items: list[tuple[int, TokenizedExample]]) -> PairBatch | SingleBatch:
        """Chosen rows then rejected rows (``[2B, T]``), with ``index`` ``[B]`` and optional ``margin``.

        Raises:
            ValueError: The batch is empty, mixes examples with and without a rejected completion, or
                mixes examples with and without a margin.
        """
        if not items:
            raise ValueError("cannot collate an empty batch")
        has_rejected = {example.rejected_ids is not None for _, example in items}
        if len(has_rejected) > 1:
            indices = [index for index, example in items if example.rejected_ids is None]
            raise ValueError(
                f"a batch mixes preference examples and SFT examples (no rejected completion: dataset "
                f"indices {indices}); all examples of a dataset must be of one kind"
            )
        prompts = [example.prompt_ids for _, example in items]
        completions = [example.chosen_ids for _, example in items]
        shown = [_images(example) for _, example in items]
        if not has_rejected.pop():
            rows = list(zip(prompts, completions, strict=True))
            sequences = pad_rows(rows, self.pad_token_id, self.pad_to_multiple_of)
            sequences.images = image_inputs(shown, self.images)
            return SingleBatch(sequences=sequences, index=_indices(items))
        completions += [example.rejected_ids for _, example in items]  # type: ignore[misc]
        # A rejected row shows the pair's images unless the data gives it its own (then with its own prompt).
        prompts += [example.rejected_prompt_ids or example.prompt_ids for _, example in items]
        shown += [list(example.rejected_images or example.images or []) for _, example in items]
        rows = list(zip(prompts, completions, strict=True))
        sequences = pad_rows(rows, self.pad_token_id, self.pad_to_multiple_of)
        sequences.images = image_inputs(shown, self.images)
        examples = [example for _, example in items]
        if (
            self.prefix_sharing
            and sequences.images is None
            and all(e.rejected_prompt_ids is None for e in examples)
        ):
            sequences.shared = share_prompts(examples, sequences, self.pad_token_id)
        margins = [example.margin for _, example in items]
        margin = None
        if all(value is not None for value in margins):
            margin = torch.tensor(margins, dtype=torch.float)
        elif any(value is not None for value in margins):
            indices = [index for index, example in items if example.margin is None]
            raise ValueError(
                f"a batch mixes examples with and without a margin (none at dataset indices {indices}); "
                "give every pair a margin or none"
            )
        return PairBatch(sequences=sequences, index=_indices(items), margin=margin)


@dataclass
class UnpairedCollator:
    """Collate labelled items into an `UnpairedBatch` (KTO).

    Rows ``0..B-1`` are ``prompt_b + completion_b``; rows ``B..2B-1`` are ``prompt_b`` with the completion of
    example ``b``'s mismatched partner (``TokenizedExample.mismatched_ids``, fixed per dataset example by
    `rlhf_lab.data.datasets.TokenizedDataset`), from which KTO estimates its KL reference point. The partner
    belongs to the example, not to the batch, so the estimate does not depend on which examples share a
    batch (or a rank).

    Attributes:
        pad_token_id: Id written after each sequence.
        max_length: Longest row; a mismatched row over it loses the end of its completion. None: no limit.
        pad_to_multiple_of: Round the padded length up to a multiple of this.
        images: A vision-language model's image processing; None for text.
    """

    pad_token_id: int
    max_length: int | None
    pad_to_multiple_of: int | None = None
    images: ImageProcessing | None = None

    def __call__(self, items: list[tuple[int, TokenizedExample]]) -> UnpairedBatch:
        """Build the ``[2B, T]`` rows plus ``labels`` and ``index`` (``[B]``).

        Raises:
            ValueError: The batch is empty, or an example is paired, unlabelled or has no partner.
        """
        if not items:
            raise ValueError("cannot collate an empty batch")
        bad = [
            index
            for index, example in items
            if example.label is None or example.rejected_ids is not None or example.mismatched_ids is None
        ]
        if bad:
            raise ValueError(
                "unpaired batches need labelled examples without a rejected completion and with a mismatched "
                f"partner (dataset indices {bad} are not); convert pairs with "
                "rlhf_lab.data.formats.to_unpaired and serve them from a TokenizedDataset(kind='unpaired')"
            )
        prompts = [example.prompt_ids for _, example in items]
        rows = [(example.prompt_ids, example.chosen_ids) for _, example in items]
        mismatched = [example.mismatched_ids for _, example in items]
        rows += list(zip(prompts, mismatched, strict=True))  # type: ignore[arg-type]
        if self.max_length is not None:
            # Only mismatched rows can exceed it (tokenisation fitted each matched row); cut the completion's
            # end so the prompt, which conditions the whole row, stays whole.
            rows = [
                (prompt, completion[: max(0, self.max_length - len(prompt))]) for prompt, completion in rows
            ]
        sequences = pad_rows(rows, self.pad_token_id, self.pad_to_multiple_of)
        # A mismatched row is prompt b (with its images) followed by another example's completion.
        sequences.images = image_inputs([_images(example) for _, example in items] * 2, self.images)
        return UnpairedBatch(
            sequences=sequences,
            index=_indices(items),
            labels=torch.tensor([bool(example.label) for _, example in items], dtype=torch.bool),
        )


@dataclass
class PromptCollator:
    """Collate items into a left-padded `PromptBatch` (generation continues from the last column).

    Attributes:
        pad_token_id: Id written before each prompt.
        images: A vision-language model's image processing; None for text.
    """

    pad_token_id: int
    images: ImageProcessing | None = None

    def __call__(self, items: list[tuple[int, TokenizedExample]]) -> PromptBatch:
        if not items:
            raise ValueError("cannot collate an empty batch")
        rows: list[tuple[list[int], list[int]]] = [(example.prompt_ids, []) for _, example in items]
        names = sorted({name for _, example in items for name in example.columns or {}})
        sequences = pad_rows(rows, self.pad_token_id, left=True)
        sequences.images = image_inputs([_images(example) for _, example in items], self.images)
        return PromptBatch(
            sequences=sequences,
            index=_indices(items),
            prompts=[example.prompt for _, example in items],
            # A column a row lacks is None for that row (reward functions see aligned lists).
            columns={name: [(example.columns or {}).get(name) for _, example in items] for name in names},
        )
