"""Batching tokenized examples into right-padded tensors with a mask of the scored tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_lab.data.tokenize import TokenizedExample


def _pad(
    rows: list[tuple[list[int], list[int]]], pad_token_id: int, pad_to_multiple_of: int | None
) -> dict[str, torch.Tensor]:
    """Right-pad ``(prompt, completion)`` rows into ``input_ids``, ``attention_mask``, ``completion_mask``."""
    length = max(len(prompt) + len(completion) for prompt, completion in rows)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    completion_mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for row, (prompt, completion) in enumerate(rows):
        end = len(prompt) + len(completion)
        input_ids[row, :end] = torch.tensor(prompt + completion, dtype=torch.long)
        attention_mask[row, :end] = 1
        completion_mask[row, len(prompt) : end] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


def _indices(items: list[tuple[int, TokenizedExample]]) -> torch.Tensor:
    return torch.tensor([index for index, _ in items], dtype=torch.long)


@dataclass
class PreferenceCollator:
    """Collate ``(dataset index, TokenizedExample)`` pairs into one batch.

    Preference batches stack chosen rows first and rejected rows after them (rows ``0..B-1`` chosen,
    ``B..2B-1`` rejected), so one forward pass scores both and ``logps.chunk(2)`` separates them.

    Attributes:
        pad_token_id: Id written after each sequence.
        pad_to_multiple_of: Round the padded length up to a multiple of this (e.g. 8 for tensor cores).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, items: list[tuple[int, TokenizedExample]]) -> dict[str, torch.Tensor]:
        """Build ``input_ids``, ``attention_mask``, ``completion_mask`` ([S*B, T]) and ``index`` ([B]).

        ``margin`` ([B], float) is added when every example has one.

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
        completions = [example.chosen_ids for _, example in items]
        prompts = [example.prompt_ids for _, example in items]
        if has_rejected.pop():
            completions += [example.rejected_ids for _, example in items]  # type: ignore[misc]
            prompts += prompts
        batch = _pad(list(zip(prompts, completions, strict=True)), self.pad_token_id, self.pad_to_multiple_of)
        batch["index"] = _indices(items)
        margins = [example.margin for _, example in items]
        if all(margin is not None for margin in margins):
            batch["margin"] = torch.tensor(margins, dtype=torch.float)
        elif any(margin is not None for margin in margins):
            indices = [index for index, example in items if example.margin is None]
            raise ValueError(
                f"a batch mixes examples with and without a margin (none at dataset indices {indices}); "
                "give every pair a margin or none"
            )
        return batch


@dataclass
class UnpairedCollator:
    """Collate labelled ``(dataset index, TokenizedExample)`` items for unpaired objectives (KTO).

    Rows ``0..B-1`` are ``prompt_i + completion_i``; rows ``B..2B-1`` are the mismatched
    ``prompt_i + completion_{(i+1) % B}``, from which KTO estimates its KL reference point (TRL shifts the
    completions by one the same way).

    Attributes:
        pad_token_id: Id written after each sequence.
        max_length: Longest row; a mismatched row over it loses the end of its completion. None: no limit.
        pad_to_multiple_of: Round the padded length up to a multiple of this.
    """

    pad_token_id: int
    max_length: int | None
    pad_to_multiple_of: int | None = None

    def __call__(self, items: list[tuple[int, TokenizedExample]]) -> dict[str, torch.Tensor]:
        """Build the [2B, T] tensors plus ``labels`` and ``index`` ([B]).

        Raises:
            ValueError: The batch has fewer than 2 examples, or an example is paired or unlabelled.
        """
        if not items:
            raise ValueError("cannot collate an empty batch")
        if len(items) < 2:
            raise ValueError(
                "KTO needs at least 2 examples per batch (data.batch_size > 1) to estimate its KL term from "
                f"mismatched prompt/completion pairs; got a batch of {len(items)}"
            )
        bad = [index for index, example in items if example.label is None or example.rejected_ids is not None]
        if bad:
            raise ValueError(
                "unpaired batches need labelled examples without a rejected completion (dataset indices "
                f"{bad} are not); convert pairs with rlhf_lab.data.formats.to_unpaired"
            )
        prompts = [example.prompt_ids for _, example in items]
        completions = [example.chosen_ids for _, example in items]
        size = len(items)
        rows = list(zip(prompts, completions, strict=True))
        rows += [(prompts[i], completions[(i + 1) % size]) for i in range(size)]
        if self.max_length is not None:
            # Only mismatched rows can exceed it (tokenisation fitted each matched row); cut the completion's
            # end so the prompt, which conditions the whole row, stays whole.
            rows = [
                (prompt, completion[: max(0, self.max_length - len(prompt))]) for prompt, completion in rows
            ]
        batch = _pad(rows, self.pad_token_id, self.pad_to_multiple_of)
        batch["labels"] = torch.tensor([bool(example.label) for _, example in items], dtype=torch.bool)
        batch["index"] = _indices(items)
        return batch
