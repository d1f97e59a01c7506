"""Batching tokenized examples into right-padded tensors with a mask of the scored tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_lab.data.tokenize import TokenizedExample


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

        Raises:
            ValueError: The batch is empty or mixes examples with and without a rejected completion.
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
        length = max(
            len(prompt) + len(completion) for prompt, completion in zip(prompts, completions, strict=True)
        )
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        rows = len(completions)
        input_ids = torch.full((rows, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((rows, length), dtype=torch.long)
        completion_mask = torch.zeros((rows, length), dtype=torch.bool)
        for row, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            end = len(prompt) + len(completion)
            input_ids[row, :end] = torch.tensor(prompt + completion, dtype=torch.long)
            attention_mask[row, :end] = 1
            completion_mask[row, len(prompt) : end] = True
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "completion_mask": completion_mask,
            "index": torch.tensor([index for index, _ in items], dtype=torch.long),
        }
