"""Collating tokenized examples into typed batches of padded tensors."""

from __future__ import annotations

import pytest
import torch

from rlhf_lab.data.batches import PairBatch, PromptBatch, SingleBatch, UnpairedBatch
from rlhf_lab.data.collate import PreferenceCollator, PromptCollator, UnpairedCollator
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
    assert isinstance(batch, PairBatch) and batch.size == 2
    assert batch.sequences.input_ids.dtype == torch.long
    assert batch.sequences.attention_mask.dtype == torch.long
    assert batch.sequences.completion_mask.dtype == torch.bool
    assert batch.sequences.input_ids.tolist() == [
        [11, 12, 21, 22, 23],  # example 7, chosen
        [13, 24, 0, 0, 0],  # example 3, chosen
        [11, 12, 31, 0, 0],  # example 7, rejected
        [13, 32, 33, 34, 35],  # example 3, rejected
    ]
    assert batch.sequences.attention_mask.tolist() == [
        [1, 1, 1, 1, 1],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
    ]
    assert batch.sequences.completion_mask.tolist() == [
        [False, False, True, True, True],
        [False, True, False, False, False],
        [False, False, True, False, False],
        [False, True, True, True, True],
    ]
    assert batch.index.tolist() == [7, 3]
    assert batch.index.dtype == torch.long
    assert batch.chosen().input_ids.tolist() == batch.sequences.input_ids[:2].tolist()
    assert batch.rejected().completion_mask.tolist() == batch.sequences.completion_mask[2:].tolist()
    assert batch.num_tokens == 5 + 2 + 3 + 5


def test_batch_layout_maps_rows_to_examples_and_back():
    """Row ``s * B + b`` is sequence ``s`` of example ``b``: per-row values [c0, c1, r0, r1] are the
    per-example table [[c0, r0], [c1, r1]], the layout precomputed reference tables are stored in."""
    batch = PreferenceCollator(pad_token_id=PAD)(preference_items())
    rows = torch.tensor([1.0, 2.0, 3.0, 4.0])
    table = batch.per_example(rows)
    assert table.tolist() == [[1.0, 3.0], [2.0, 4.0]]
    assert batch.per_row(table).tolist() == rows.tolist()
    assert [t.tolist() for t in batch.split(rows)] == [[1.0, 2.0], [3.0, 4.0]]


def test_pad_to_multiple_of_eight():
    batch = PreferenceCollator(pad_token_id=-5, pad_to_multiple_of=8)(preference_items())
    assert batch.sequences.input_ids.tolist() == [
        [11, 12, 21, 22, 23, -5, -5, -5],
        [13, 24, -5, -5, -5, -5, -5, -5],
        [11, 12, 31, -5, -5, -5, -5, -5],
        [13, 32, 33, 34, 35, -5, -5, -5],
    ]
    assert batch.sequences.attention_mask.tolist() == [
        [1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0],
    ]
    assert batch.sequences.completion_mask.int().tolist() == [
        [0, 0, 1, 1, 1, 0, 0, 0],
        [0, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 1, 0, 0, 0],
    ]


def test_length_already_a_multiple_is_not_padded_further():
    items = [(0, TokenizedExample([1, 2, 3, 4], [5, 6, 7, 8], None, False))]
    batch = PreferenceCollator(pad_token_id=PAD, pad_to_multiple_of=8)(items)
    assert batch.sequences.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7, 8]]


def test_sft_batch_has_one_row_per_example():
    items = [
        (0, TokenizedExample(prompt_ids=[1, 2], chosen_ids=[3], rejected_ids=None, truncated=False)),
        (1, TokenizedExample(prompt_ids=[], chosen_ids=[4, 5, 6, 7], rejected_ids=None, truncated=False)),
    ]
    batch = PreferenceCollator(pad_token_id=9)(items)
    assert isinstance(batch, SingleBatch) and batch.rows_per_example == 1
    assert batch.sequences.input_ids.tolist() == [[1, 2, 3, 9], [4, 5, 6, 7]]
    assert batch.sequences.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch.sequences.completion_mask.tolist() == [[False, False, True, False], [True, True, True, True]]
    assert batch.index.tolist() == [0, 1]


def test_mixed_preference_and_sft_examples_rejected():
    items = [*preference_items(), (4, TokenizedExample([1], [2], None, False))]
    with pytest.raises(ValueError, match=r"dataset indices \[4\]"):
        PreferenceCollator(pad_token_id=PAD)(items)


def test_empty_batch_rejected():
    with pytest.raises(ValueError, match="empty batch"):
        PreferenceCollator(pad_token_id=PAD)([])


# --- margins ----------------------------------------------------------------------------------------


def test_margin_tensor_when_every_pair_has_one():
    items = [
        (7, TokenizedExample([11], [21], [31], False, margin=0.5)),
        (3, TokenizedExample([12], [22], [32], False, margin=-2.0)),
    ]
    batch = PreferenceCollator(pad_token_id=PAD)(items)
    assert batch.margin.dtype == torch.float32
    assert batch.margin.tolist() == [0.5, -2.0]
    assert batch.sequences.input_ids.tolist() == [[11, 21], [12, 22], [11, 31], [12, 32]]


def test_no_margin_without_margins():
    assert PreferenceCollator(pad_token_id=PAD)(preference_items()).margin is None


def test_mixed_margins_rejected():
    items = [*preference_items(), (5, TokenizedExample([1], [2], [3], False, margin=1.0))]
    with pytest.raises(
        ValueError, match=r"mixes examples with and without a margin \(none at dataset indices \[7, 3\]\)"
    ):
        PreferenceCollator(pad_token_id=PAD)(items)


# --- unpaired (KTO) batches ---------------------------------------------------------------------------


def unpaired_items() -> list[tuple[int, TokenizedExample]]:
    """Each example carries its mismatched partner's completion (set by the dataset): here 4 -> 9 -> 2 -> 4."""
    return [
        (4, TokenizedExample([11, 12], [21, 22, 23], None, False, label=True, mismatched_ids=[24])),
        (9, TokenizedExample([13], [24], None, False, label=False, mismatched_ids=[25, 26])),
        (2, TokenizedExample([14, 15, 16], [25, 26], None, False, label=True, mismatched_ids=[21, 22, 23])),
    ]


def test_unpaired_batch_matched_rows_then_mismatched_rows():
    batch = UnpairedCollator(pad_token_id=PAD, max_length=None)(unpaired_items())
    assert isinstance(batch, UnpairedBatch)
    assert batch.sequences.input_ids.tolist() == [
        [11, 12, 21, 22, 23, 0],  # prompt 4 + completion 4
        [13, 24, 0, 0, 0, 0],  # prompt 9 + completion 9
        [14, 15, 16, 25, 26, 0],  # prompt 2 + completion 2
        [11, 12, 24, 0, 0, 0],  # prompt 4 + its partner's completion (9)
        [13, 25, 26, 0, 0, 0],  # prompt 9 + completion 2
        [14, 15, 16, 21, 22, 23],  # prompt 2 + completion 4
    ]
    assert batch.sequences.attention_mask.tolist() == [
        [1, 1, 1, 1, 1, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 1],
    ]
    assert batch.sequences.completion_mask.int().tolist() == [
        [0, 0, 1, 1, 1, 0],
        [0, 1, 0, 0, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 1],
    ]
    assert batch.labels.dtype == torch.bool
    assert batch.labels.tolist() == [True, False, True]
    assert batch.index.dtype == torch.long
    assert batch.index.tolist() == [4, 9, 2]
    assert batch.mismatched().input_ids.tolist() == batch.sequences.input_ids[3:].tolist()


def test_unpaired_batch_of_one_uses_its_partner():
    """The partner belongs to the example, so a batch of one still has a mismatched row."""
    batch = UnpairedCollator(pad_token_id=PAD, max_length=None)(unpaired_items()[:1])
    assert batch.sequences.input_ids.tolist() == [[11, 12, 21, 22, 23], [11, 12, 24, 0, 0]]


def test_unpaired_mismatched_row_over_max_length_loses_its_completion_end():
    batch = UnpairedCollator(pad_token_id=PAD, max_length=5)(unpaired_items())
    assert batch.sequences.input_ids.tolist() == [
        [11, 12, 21, 22, 23],
        [13, 24, 0, 0, 0],
        [14, 15, 16, 25, 26],
        [11, 12, 24, 0, 0],
        [13, 25, 26, 0, 0],
        [14, 15, 16, 21, 22],  # completion 4 cut from 3 tokens to 2
    ]
    assert batch.sequences.completion_mask.int().tolist()[5] == [0, 0, 0, 1, 1]
    assert batch.sequences.attention_mask.tolist()[5] == [1, 1, 1, 1, 1]


def test_unpaired_pads_to_multiple():
    items = [
        (0, TokenizedExample([1], [2, 3], None, False, label=False, mismatched_ids=[6])),
        (1, TokenizedExample([4, 5], [6], None, False, label=False, mismatched_ids=[2, 3])),
    ]
    batch = UnpairedCollator(pad_token_id=-1, max_length=3, pad_to_multiple_of=4)(items)
    assert batch.sequences.input_ids.tolist() == [
        [1, 2, 3, -1],
        [4, 5, 6, -1],
        [1, 6, -1, -1],
        [4, 5, 2, -1],  # [2, 3] cut to fit max_length=3 after the 2-token prompt
    ]
    assert batch.sequences.completion_mask.int().tolist() == [
        [0, 1, 1, 0],
        [0, 0, 1, 0],
        [0, 1, 0, 0],
        [0, 0, 1, 0],
    ]
    assert batch.labels.tolist() == [False, False]


@pytest.mark.parametrize(
    "bad",
    [
        TokenizedExample([1], [2], None, False, mismatched_ids=[3]),
        TokenizedExample([1], [2], [3], False, label=True, mismatched_ids=[3]),
        TokenizedExample([1], [2], None, False, label=True),
    ],
    ids=["unlabelled", "paired", "no-partner"],
)
def test_unpaired_rejects_unlabelled_paired_or_partnerless_examples(bad: TokenizedExample):
    with pytest.raises(ValueError, match=r"dataset indices \[8\] are not\); convert pairs with"):
        UnpairedCollator(pad_token_id=PAD, max_length=None)([*unpaired_items(), (8, bad)])


def test_unpaired_empty_batch_rejected():
    with pytest.raises(ValueError, match="empty batch"):
        UnpairedCollator(pad_token_id=PAD, max_length=None)([])


# --- prompts (generation) ------------------------------------------------------------------------------


def test_prompt_batch_is_left_padded_with_no_completion():
    items = [(5, TokenizedExample([1, 2, 3], [9], None, False)), (6, TokenizedExample([4], [], None, False))]
    batch = PromptCollator(pad_token_id=0)(items)
    assert isinstance(batch, PromptBatch)
    assert batch.sequences.input_ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert batch.sequences.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert not batch.sequences.completion_mask.any()
    assert batch.index.tolist() == [5, 6]
