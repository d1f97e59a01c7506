"""Collating tokenized examples into padded tensors."""

from __future__ import annotations

import pytest
import torch

from rlhf_lab.data.collate import PreferenceCollator
from rlhf_lab.data.tokenize import TokenizedExample

PAD = 0


def preference_items() -> list[tuple[int, TokenizedExample]]:
    return [
        (
            7,
            TokenizedExample(
                prompt_ids=[11, 12], chosen_ids=[21, 22, 23], rejected_ids=[31], truncated=False
            ),
        ),
        (
            3,
            TokenizedExample(prompt_ids=[13], chosen_ids=[24], rejected_ids=[32, 33, 34, 35], truncated=True),
        ),
    ]


def test_preference_batch_chosen_rows_then_rejected_rows():
    batch = PreferenceCollator(pad_token_id=PAD)(preference_items())
    assert batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].dtype == torch.long
    assert batch["completion_mask"].dtype == torch.bool
    assert batch["input_ids"].tolist() == [
        [11, 12, 21, 22, 23],  # example 7, chosen
        [13, 24, 0, 0, 0],  # example 3, chosen
        [11, 12, 31, 0, 0],  # example 7, rejected
        [13, 32, 33, 34, 35],  # example 3, rejected
    ]
    assert batch["attention_mask"].tolist() == [
        [1, 1, 1, 1, 1],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
    ]
    assert batch["completion_mask"].tolist() == [
        [False, False, True, True, True],
        [False, True, False, False, False],
        [False, False, True, False, False],
        [False, True, True, True, True],
    ]
    assert batch["index"].tolist() == [7, 3]
    assert batch["index"].dtype == torch.long


def test_pad_to_multiple_of_eight():
    batch = PreferenceCollator(pad_token_id=-5, pad_to_multiple_of=8)(preference_items())
    assert batch["input_ids"].tolist() == [
        [11, 12, 21, 22, 23, -5, -5, -5],
        [13, 24, -5, -5, -5, -5, -5, -5],
        [11, 12, 31, -5, -5, -5, -5, -5],
        [13, 32, 33, 34, 35, -5, -5, -5],
    ]
    assert batch["attention_mask"].tolist() == [
        [1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0],
    ]
    assert batch["completion_mask"].int().tolist() == [
        [0, 0, 1, 1, 1, 0, 0, 0],
        [0, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 1, 0, 0, 0],
    ]


def test_length_already_a_multiple_is_not_padded_further():
    items = [(0, TokenizedExample([1, 2, 3, 4], [5, 6, 7, 8], None, False))]
    batch = PreferenceCollator(pad_token_id=PAD, pad_to_multiple_of=8)(items)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8]]


def test_sft_batch_has_one_row_per_example():
    items = [
        (0, TokenizedExample(prompt_ids=[1, 2], chosen_ids=[3], rejected_ids=None, truncated=False)),
        (1, TokenizedExample(prompt_ids=[], chosen_ids=[4, 5, 6, 7], rejected_ids=None, truncated=False)),
    ]
    batch = PreferenceCollator(pad_token_id=9)(items)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 9], [4, 5, 6, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["completion_mask"].tolist() == [[False, False, True, False], [True, True, True, True]]
    assert batch["index"].tolist() == [0, 1]


def test_mixed_preference_and_sft_examples_rejected():
    items = [*preference_items(), (4, TokenizedExample([1], [2], None, False))]
    with pytest.raises(ValueError, match=r"dataset indices \[4\]"):
        PreferenceCollator(pad_token_id=PAD)(items)


def test_empty_batch_rejected():
    with pytest.raises(ValueError, match="empty batch"):
        PreferenceCollator(pad_token_id=PAD)([])
