"""The bundled synthetic task, the held-out split of local files, and the DataModule's batches."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch

from rlhf_lab.data.sources import LocalFiles
from rlhf_lab.data.synthetic import ANSWER, CATEGORIES, SyntheticPreferences
from rlhf_lab.errors import ConfigError
from rlhf_lab.train import build

ITEM_CATEGORY = {item: category for category, items in CATEGORIES.items() for item in items}


def _rows(task: SyntheticPreferences) -> dict[str, list[dict]]:
    splits = task.load()
    assert {split: len(blocks) for split, blocks in splits.items()} == {"train": 1, "val": 1}
    return {split: blocks[0].rows for split, blocks in splits.items()}


def _prompt(row: dict) -> str:
    (message,) = row["prompt"]
    assert message["role"] == "user"
    return message["content"]


def _answer(completion: list[dict]) -> str:
    (message,) = completion
    assert message["role"] == "assistant"
    return message["content"]


def _item(prompt: str) -> str:
    """The object a prompt asks about."""
    (item,) = [word for word in re.findall(r"\b(?:a|the) ([a-z]+)\b", prompt) if word in ITEM_CATEGORY]
    return item


# --- the synthetic task -------------------------------------------------------------------------


def test_synthetic_rows_are_deterministic_from_the_seed() -> None:
    first = _rows(SyntheticPreferences(num_train=64, num_eval=32, seed=7))
    second = _rows(SyntheticPreferences(num_train=64, num_eval=32, seed=7))
    other = _rows(SyntheticPreferences(num_train=64, num_eval=32, seed=8))
    assert first == second
    assert [_prompt(row) for row in first["train"]] != [_prompt(row) for row in other["train"]]
    assert (len(first["train"]), len(first["val"])) == (64, 32)


def test_synthetic_train_and_held_out_prompts_are_disjoint_and_unique() -> None:
    rows = _rows(SyntheticPreferences(num_train=400, num_eval=100, seed=3))
    train = [_prompt(row) for row in rows["train"]]
    held_out = [_prompt(row) for row in rows["val"]]
    assert len(set(train)) == 400
    assert len(set(held_out)) == 100
    assert set(train).isdisjoint(held_out)
    # Held-out prompts are new sentences over the same objects.
    assert {_item(prompt) for prompt in held_out} <= {_item(prompt) for prompt in train}


@pytest.mark.parametrize("split", ["train", "val"])
def test_synthetic_task_is_balanced(split: str) -> None:
    rows = _rows(SyntheticPreferences(num_train=400, num_eval=200, seed=1234))[split]
    chosen = Counter(_answer(row["chosen"]) for row in rows)
    assert set(chosen) == {ANSWER.format(category=category) for category in CATEGORIES}
    share = chosen["It is an animal."] / len(rows)
    assert 0.4 <= share <= 0.6, share
    # Which category the prompt names first is balanced too, so word order gives nothing away.
    first_named = Counter(_prompt(row).index("an animal") < _prompt(row).index("a tool") for row in rows)
    assert 0.4 <= first_named[True] / len(rows) <= 0.6


def test_synthetic_chosen_answer_is_decided_by_the_object() -> None:
    rows = _rows(SyntheticPreferences(num_train=400, num_eval=100, seed=5))
    chosen_by_item: dict[str, set[str]] = defaultdict(set)
    for row in rows["train"] + rows["val"]:
        item = _item(_prompt(row))
        chosen, rejected = _answer(row["chosen"]), _answer(row["rejected"])
        assert chosen == ANSWER.format(category=ITEM_CATEGORY[item])
        assert rejected != chosen and rejected in {ANSWER.format(category=c) for c in CATEGORIES}
        chosen_by_item[item].add(chosen)
    assert all(len(answers) == 1 for answers in chosen_by_item.values())
    assert len(chosen_by_item) >= 24  # most of the 32 objects occur, in both categories
    assert chosen_by_item["cat"] == {"It is an animal."}
    assert chosen_by_item["hammer"] == {"It is a tool."}


# --- the held-out split of local files ---------------------------------------------------------------


@pytest.fixture
def numbered_file(tmp_path: Path) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"n": n}) + "\n" for n in range(40)), encoding="utf-8")
    return path


def _split(path: Path, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    splits = LocalFiles(train_path=str(path), eval_fraction=fraction, seed=seed).load()
    (train,), (held_out,) = splits["train"], splits["val"]
    assert train.name == held_out.name == str(path)
    # Row numbers are the rows' positions in the file, and the rows are those rows.
    assert [row["n"] for row in train.rows] == train.row_numbers
    assert [row["n"] for row in held_out.rows] == held_out.row_numbers
    return train.row_numbers, held_out.row_numbers


def test_eval_fraction_split_is_deterministic_and_disjoint(numbered_file: Path) -> None:
    train, held_out = _split(numbered_file, 0.25, seed=3)
    assert _split(numbered_file, 0.25, seed=3) == (train, held_out)
    assert len(held_out) == 10
    assert len(train) == 30
    assert set(train).isdisjoint(held_out)
    assert sorted(train + held_out) == list(range(40))
    assert _split(numbered_file, 0.25, seed=4)[1] != held_out


def test_eval_fraction_keeps_at_least_one_held_out_row(numbered_file: Path) -> None:
    train, held_out = _split(numbered_file, 0.001, seed=0)
    assert (len(train), len(held_out)) == (39, 1)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_eval_fraction_out_of_range(fraction: float) -> None:
    with pytest.raises(
        ConfigError, match=r"data.source.eval_fraction=.* is out of range; expected a value in \(0"
    ):
        LocalFiles(train_path="x.jsonl", eval_fraction=fraction)


# --- batches ----------------------------------------------------------------------------------------


def _prompt_length(completion_mask_row: torch.Tensor) -> int:
    return int(completion_mask_row.nonzero()[0])


def test_preference_batch_is_chosen_rows_then_rejected_rows(make_config) -> None:
    _, datamodule, tokenizer = build(make_config())
    assert datamodule.stats["train"]["examples"] == 64
    batch = next(iter(datamodule.train_dataloader()))
    pairs = 8  # data.batch_size
    assert batch["input_ids"].shape[0] == 2 * pairs
    assert batch["index"].shape == (pairs,)
    examples = datamodule.datasets["train"].examples
    source = datamodule.load_examples()["train"]
    for row, index in enumerate(batch["index"].tolist()):
        example = examples[index]
        for offset, completion_ids, text in (
            (0, example.chosen_ids, _answer(source[index].chosen)),
            (pairs, example.rejected_ids, _answer(source[index].rejected)),
        ):
            ids = batch["input_ids"][row + offset]
            mask = batch["completion_mask"][row + offset]
            attention = batch["attention_mask"][row + offset]
            length = len(example.prompt_ids) + len(completion_ids)
            # The same prompt tokens in both rows; the mask covers exactly the completion.
            assert ids[: len(example.prompt_ids)].tolist() == example.prompt_ids
            assert _prompt_length(mask) == len(example.prompt_ids)
            assert mask.nonzero().flatten().tolist() == list(range(len(example.prompt_ids), length))
            assert ids[mask].tolist() == completion_ids
            assert tokenizer.decode(ids[mask]) == text + tokenizer.eos_token
            # Attention over prompt + completion; padding after it is the pad id.
            assert attention.tolist() == [1] * length + [0] * (len(attention) - length)
            assert (ids[length:] == tokenizer.pad_token_id).all()
        assert example.chosen_ids != example.rejected_ids
        decoded_prompt = tokenizer.decode(example.prompt_ids)
        assert decoded_prompt.endswith("<|assistant|>\n")
        assert source[index].prompt[0]["content"] in decoded_prompt


def test_sft_batches_have_only_chosen_rows(make_config) -> None:
    objective, datamodule, tokenizer = build(make_config("algo=sft"))
    assert objective.needs_pairs is False
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["input_ids"].shape[0] == 8
    source = datamodule.load_examples()["train"]
    for row, index in enumerate(batch["index"].tolist()):
        completion = batch["input_ids"][row][batch["completion_mask"][row]]
        assert tokenizer.decode(completion) == _answer(source[index].chosen) + tokenizer.eos_token
    val = next(iter(datamodule.val_dataloader()))
    assert val["input_ids"].shape[0] == val["index"].shape[0] == 32


def test_fingerprint_tracks_tokenisation_settings_only(make_config) -> None:
    first = build(make_config())[1].fingerprint()
    assert build(make_config())[1].fingerprint() == first
    # Batching does not change the tokenised data...
    assert build(make_config("data.batch_size=4", "data.eval_batch_size=8"))[1].fingerprint() == first
    # ...the length limit does, even when no example is long enough to be cut.
    longer = build(make_config("data.max_length=200"))[1]
    assert longer.stats["train"]["truncated"] == 0
    assert longer.fingerprint() != first
    assert len(first) == 24
