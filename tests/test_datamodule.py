"""The bundled synthetic task, the held-out split of local files, and the DataModule's batches."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch

from rlhf_lab.data.batches import PairBatch, SingleBatch
from rlhf_lab.data.datamodule import PreferenceDataModule
from rlhf_lab.data.datasets import EpochSampler, mismatched_partners
from rlhf_lab.data.formats import DataError
from rlhf_lab.data.sources import LocalFiles
from rlhf_lab.data.synthetic import ANSWER, CATEGORIES, SyntheticPreferences
from rlhf_lab.data.tokenize import TokenizedExample
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
    assert batch.sequences.input_ids.shape[0] == 2 * pairs
    assert batch.index.shape == (pairs,)
    examples = datamodule.datasets["train"].examples
    source = datamodule.load_examples()["train"]
    for row, index in enumerate(batch.index.tolist()):
        example = examples[index]
        for offset, completion_ids, text in (
            (0, example.chosen_ids, _answer(source[index].chosen)),
            (pairs, example.rejected_ids, _answer(source[index].rejected)),
        ):
            ids = batch.sequences.input_ids[row + offset]
            mask = batch.sequences.completion_mask[row + offset]
            attention = batch.sequences.attention_mask[row + offset]
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
    assert objective.batch_kind == "single"
    batch = next(iter(datamodule.train_dataloader()))
    assert batch.sequences.input_ids.shape[0] == 8
    source = datamodule.load_examples()["train"]
    for row, index in enumerate(batch.index.tolist()):
        completion = batch.sequences.input_ids[row][batch.sequences.completion_mask[row]]
        assert tokenizer.decode(completion) == _answer(source[index].chosen) + tokenizer.eos_token
    val = next(iter(datamodule.val_dataloader()))
    assert val.sequences.input_ids.shape[0] == val.index.shape[0] == 32


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


# --- batch kinds --------------------------------------------------------------------------------------

PAIRS = [
    {"prompt": "2 + 2 =", "chosen": " 4", "rejected": " 5"},
    {"prompt": "3 + 3 =", "chosen": " 6", "rejected": " 7"},
]
HELD_OUT_PAIRS = [{"prompt": "1 + 1 =", "chosen": " 2", "rejected": " 3"}]
KTO_ROWS = [
    {"prompt": "2 + 2 =", "completion": " 4", "label": True},
    {"prompt": "2 + 2 =", "completion": " 5", "label": False},
    {"prompt": "3 + 3 =", "completion": " 7", "label": 0},
]
HELD_OUT_KTO = [
    {"prompt": "1 + 1 =", "completion": " 2", "label": True},
    {"prompt": "1 + 1 =", "completion": " 3", "label": False},
]


@pytest.fixture(scope="module")
def arithmetic_tokenizer():
    from rlhf_lab.models.tiny import train_tokenizer

    return train_tokenizer(["1 + 1 = 2 3", "2 + 2 = 4 5", "3 + 3 = 6 7"] * 4, vocab_size=300)


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def _datamodule(
    tmp_path: Path, tokenizer, train: list[dict], held_out: list[dict], kind: str | None, **kwargs
) -> PreferenceDataModule:
    source = LocalFiles(
        train_path=_write(tmp_path / "train.jsonl", train),
        eval_path=_write(tmp_path / "eval.jsonl", held_out),
    )
    settings = {"batch_size": 4, "eval_batch_size": 4, "max_length": 32, "max_prompt_length": 16, **kwargs}
    datamodule = PreferenceDataModule(source, **settings)
    if kind is not None:
        datamodule.batch_kind = kind
    datamodule.set_tokenizer(tokenizer)
    datamodule.setup("fit")
    return datamodule


def _texts(batch, tokenizer) -> list[str]:
    return [
        tokenizer.decode(ids[mask.bool()])
        for ids, mask in zip(batch.sequences.input_ids, batch.sequences.attention_mask, strict=True)
    ]


def test_unpaired_train_batches_from_pairs_and_paired_held_out_batches(
    tmp_path, arithmetic_tokenizer
) -> None:
    datamodule = _datamodule(tmp_path, arithmetic_tokenizer, PAIRS, HELD_OUT_PAIRS, "unpaired")
    assert datamodule.split_kinds == {"train": "unpaired", "val": "pairs"}
    # Two pairs become four labelled completions, in pair order: chosen then rejected.
    texts = {0: "2 + 2 = 4</s>", 1: "2 + 2 = 5</s>", 2: "3 + 3 = 6</s>", 3: "3 + 3 = 7</s>"}
    prompts = {0: "2 + 2 =", 1: "2 + 2 =", 2: "3 + 3 =", 3: "3 + 3 ="}
    completions = {0: " 4</s>", 1: " 5</s>", 2: " 6</s>", 3: " 7</s>"}
    labels = {0: True, 1: False, 2: True, 3: False}
    assert datamodule.stats["train"] == {
        "rows": 2,
        "identical_dropped": 0,
        "unpaired_from_pairs": 2,
        "examples": 4,
        "truncated": 0,
        "dropped_too_long": 0,
    }
    assert datamodule.stats["val"] == {
        "rows": 1, "identical_dropped": 0, "examples": 1, "truncated": 0, "dropped_too_long": 0,
    }  # fmt: skip

    (batch,) = list(datamodule.train_dataloader())
    order = batch.index.tolist()
    assert sorted(order) == [0, 1, 2, 3]
    assert batch.sequences.input_ids.shape[0] == 8
    assert batch.labels.tolist() == [labels[i] for i in order]
    rows = _texts(batch, arithmetic_tokenizer)
    assert rows[:4] == [texts[i] for i in order]
    # Row 4 + i: prompt i with the completion of its fixed partner, which answers the other prompt.
    partners = datamodule.datasets["train"].partners
    assert rows[4:] == [prompts[i] + completions[partners[i]] for i in order]
    assert all(prompts[partners[i]] != prompts[i] for i in order)
    for row, i in enumerate(order):
        completion = batch.sequences.input_ids[row][batch.sequences.completion_mask[row]]
        assert arithmetic_tokenizer.decode(completion) == completions[i]

    (val,) = list(datamodule.val_dataloader())
    assert isinstance(val, PairBatch)
    assert _texts(val, arithmetic_tokenizer) == ["1 + 1 = 2</s>", "1 + 1 = 3</s>"]
    assert val.index.tolist() == [0]


def test_unpaired_data_stays_unpaired_in_both_splits(tmp_path, arithmetic_tokenizer) -> None:
    datamodule = _datamodule(tmp_path, arithmetic_tokenizer, KTO_ROWS, HELD_OUT_KTO, "unpaired")
    assert datamodule.split_kinds == {"train": "unpaired", "val": "unpaired"}
    assert datamodule.stats["train"]["unpaired_from_pairs"] == 0
    assert datamodule.stats["train"]["examples"] == 3
    (batch,) = list(datamodule.train_dataloader())
    labels = {0: True, 1: False, 2: False}
    assert batch.labels.tolist() == [labels[i] for i in batch.index.tolist()]
    assert batch.sequences.input_ids.shape[0] == 6
    (val,) = list(datamodule.val_dataloader())
    assert val.labels.tolist() == [True, False]
    assert _texts(val, arithmetic_tokenizer) == [
        "1 + 1 = 2</s>",
        "1 + 1 = 3</s>",
        "1 + 1 = 3</s>",
        "1 + 1 = 2</s>",
    ]


def test_unpaired_batches_of_any_size_have_mismatched_rows(tmp_path, arithmetic_tokenizer) -> None:
    """Partners belong to examples, so a last batch of one still has its mismatched row."""
    datamodule = _datamodule(tmp_path, arithmetic_tokenizer, KTO_ROWS, HELD_OUT_KTO, "unpaired", batch_size=2)
    batches = list(datamodule.train_dataloader())
    assert [batch.size for batch in batches] == [2, 1]
    assert all(batch.sequences.num_rows == 2 * batch.size for batch in batches)


def test_epoch_sampler_shards_one_permutation_over_ranks() -> None:
    assert list(EpochSampler(5, 0, False)) == [0, 1, 2, 3, 4]
    # 11 indices over 2 ranks: 5 each, every other index; the tail that does not divide is dropped.
    assert [list(EpochSampler(11, 0, False, rank=r, world_size=2)) for r in (0, 1)] == [
        [0, 2, 4, 6, 8],
        [1, 3, 5, 7, 9],
    ]


def test_mismatched_partners_answer_other_prompts_and_are_fixed_by_the_seed() -> None:
    def example(prompt: int, completion: int) -> TokenizedExample:
        return TokenizedExample([prompt], [completion], None, False, label=True)

    # Paired data split for KTO: each prompt's two completions sit next to each other.
    examples = [example(p, 10 * p + k) for p in range(5) for k in range(2)]
    partners = mismatched_partners(examples, seed=3)
    assert partners == mismatched_partners(examples, seed=3)
    assert partners != mismatched_partners(examples, seed=4)
    assert all(examples[j].prompt_ids != examples[i].prompt_ids for i, j in enumerate(partners))
    # One prompt only: any other completion will do.
    assert mismatched_partners([example(1, 2), example(1, 3)], seed=0) == [1, 0]
    with pytest.raises(ConfigError, match="at least 2 examples in a split"):
        mismatched_partners([example(1, 2)], seed=0)
    assert mismatched_partners([], seed=0) == []  # an empty held-out split


@pytest.mark.parametrize(
    ("kind", "train", "message"),
    [
        (
            "pairs",
            KTO_ROWS,
            "train.jsonl:row 0: pairwise objectives (e.g. algo=dpo) need paired data (chosen and rejected); "
            "this row is unpaired (prompt/completion/label): use an unpaired objective (algo=kto) "
            "(3 of 3 train rows)",
        ),
        (
            "pairs",
            [{"prompt": "2 + 2 =", "completion": " 4"}],
            "train.jsonl:row 0: pairwise objectives (e.g. algo=dpo) need paired data (chosen and rejected); "
            "this row has no rejected completion (SFT data): use algo=sft, or add rejected completions "
            "(1 of 1 train rows)",
        ),
        (
            "single",
            KTO_ROWS,
            "train.jsonl:row 1: SFT (algo=sft) trains on every completion, but this row is labelled "
            "undesirable (label=false): use algo=kto, or keep only the desirable rows (2 of 3 train rows)",
        ),
        (
            "unpaired",
            [{"prompt": "2 + 2 =", "completion": " 4"}],
            "train.jsonl:row 0: unpaired objectives (algo=kto) need prompt/completion/label rows or "
            "chosen/rejected pairs; this row has neither a label nor a rejected completion (SFT data) "
            "(1 of 1 train rows)",
        ),
        (
            "single",
            [{"prompt": "2 + 2 ="}],
            "train.jsonl:row 0: this row has a prompt and no completion (prompt-only data: for online RL, or "
            "distillation, whose teacher completes it), which this objective cannot train on "
            "(batch_kind='single') (1 of 1 train rows)",
        ),
    ],
)
def test_data_that_cannot_make_the_batch_kind_fails_clearly(
    tmp_path, arithmetic_tokenizer, kind: str, train: list[dict], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _datamodule(tmp_path, arithmetic_tokenizer, train, HELD_OUT_PAIRS, kind)
    assert str(caught.value) == f"{tmp_path}/{message}"


def test_batch_kind_mismatch_fails_before_the_tokenizer_corpus_is_read(tmp_path) -> None:
    source = LocalFiles(
        train_path=_write(tmp_path / "train.jsonl", KTO_ROWS), eval_path=None, eval_fraction=0.3
    )
    datamodule = PreferenceDataModule(source)
    datamodule.batch_kind = "pairs"
    with pytest.raises(ConfigError, match=r"use an unpaired objective \(algo=kto\)"):
        list(datamodule.corpus())


def test_batch_kind_is_checked(tmp_path, arithmetic_tokenizer) -> None:
    datamodule = PreferenceDataModule(LocalFiles(train_path="unused.jsonl"))
    assert datamodule.batch_kind == "pairs"
    with pytest.raises(
        ConfigError, match=r"batch_kind='triples' is not supported; choose one of: pairs, single, "
    ):
        datamodule.batch_kind = "triples"


def test_fingerprint_changes_with_batch_kind_and_setup_follows_a_new_kind(
    tmp_path, arithmetic_tokenizer
) -> None:
    datamodule = _datamodule(tmp_path, arithmetic_tokenizer, PAIRS, HELD_OUT_PAIRS, None)
    prints = {"pairs": datamodule.fingerprint()}
    for kind in ("single", "unpaired", "pairs"):
        datamodule.batch_kind = kind
        datamodule.setup("fit")
        prints.setdefault(kind, datamodule.fingerprint())
        assert datamodule.fingerprint() == prints[kind]
        assert datamodule.split_kinds["train"] == kind
        assert len(datamodule.datasets["train"]) == (4 if kind == "unpaired" else 2)
    assert len(set(prints.values())) == 3
    # Back to pairs: the stats lose the unpaired count again.
    assert "unpaired_from_pairs" not in datamodule.stats["train"]


def test_reference_loaders_match_training_rows_unpaired_included(tmp_path, arithmetic_tokenizer) -> None:
    datamodule = _datamodule(tmp_path, arithmetic_tokenizer, PAIRS, HELD_OUT_PAIRS, "pairs")
    loaders = datamodule.reference_loaders()
    assert [batch.sequences.input_ids.shape[0] for batch in loaders["train"]] == [4]
    assert _texts(next(iter(loaders["val"])), arithmetic_tokenizer) == ["1 + 1 = 2</s>", "1 + 1 = 3</s>"]
    # KTO: every example's mismatched row is fixed by the dataset, so it can be precomputed too.
    datamodule.batch_kind = "unpaired"
    datamodule.setup("fit")
    (reference,) = list(datamodule.reference_loaders()["train"])
    (training,) = list(datamodule.train_dataloader())
    assert reference.index.tolist() == [0, 1, 2, 3]
    row_of = {index: row for row, index in enumerate(training.index.tolist())}
    reference_rows = [reference.per_example(torch.arange(8))[i] for i in range(4)]
    training_rows = [training.per_example(torch.arange(8))[row_of[i]] for i in range(4)]
    reference_texts, training_texts = (
        _texts(reference, arithmetic_tokenizer),
        _texts(training, arithmetic_tokenizer),
    )
    for i in range(4):
        assert [reference_texts[r] for r in reference_rows[i]] == [
            training_texts[r] for r in training_rows[i]
        ]


def test_margins_reach_paired_batches(tmp_path, arithmetic_tokenizer) -> None:
    train = [{**PAIRS[0], "margin": 1.5}, {**PAIRS[1], "margin": 0.25}]
    datamodule = _datamodule(
        tmp_path, arithmetic_tokenizer, train, [{**HELD_OUT_PAIRS[0], "margin": 3}], "pairs"
    )
    (batch,) = list(datamodule.train_dataloader())
    margins = {0: 1.5, 1: 0.25}
    assert batch.margin.tolist() == [margins[i] for i in batch.index.tolist()]
    assert next(iter(datamodule.val_dataloader())).margin.tolist() == [3.0]
    # SFT batches carry no margin.
    datamodule.batch_kind = "single"
    datamodule.setup("fit")
    assert isinstance(next(iter(datamodule.train_dataloader())), SingleBatch)


def test_margins_in_one_file_of_a_split_only(tmp_path, arithmetic_tokenizer) -> None:
    source = LocalFiles(
        train_path=[
            _write(tmp_path / "a.jsonl", [{**PAIRS[0], "margin": 1.0}]),
            _write(tmp_path / "b.jsonl", PAIRS),
        ],
        eval_path=_write(tmp_path / "eval.jsonl", HELD_OUT_PAIRS),
    )
    with pytest.raises(DataError) as caught:
        PreferenceDataModule(source).load_examples()
    assert str(caught.value) == (
        f"{tmp_path}/b.jsonl, field 'margin': the pairs have no margin but those of {tmp_path}/a.jsonl do; "
        "give every pair of a split a margin or none"
    )


def test_length_grouping_keeps_each_epochs_examples_and_cuts_padding() -> None:
    lengths = [((i * 37) % 101) + 1 for i in range(96)]
    batch = 4

    def padding(order: list[int]) -> int:
        batches = [order[i : i + batch] for i in range(0, len(order), batch)]
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    for epoch in range(3):
        plain = EpochSampler(96, 5, True)
        grouped = EpochSampler(96, 5, True, lengths=lengths, group_size=8 * batch)
        plain.set_epoch(epoch)
        grouped.set_epoch(epoch)
        plain_order, grouped_order = list(plain), list(grouped)
        assert grouped_order != plain_order and sorted(grouped_order) == sorted(plain_order)
        # The same examples in each group of 8 batches, only reordered within it.
        for start in range(0, 96, 32):
            assert sorted(grouped_order[start : start + 32]) == sorted(plain_order[start : start + 32])
        assert padding(grouped_order) < padding(plain_order) / 2
    # Ranks split a grouped epoch as they split a plain one: together they see one process's examples.
    ranks = [
        list(EpochSampler(96, 5, True, rank=r, world_size=2, lengths=lengths, group_size=64)) for r in (0, 1)
    ]
    assert sorted(ranks[0] + ranks[1]) == list(range(96))


def test_group_by_length_serves_the_same_examples_per_epoch(make_config) -> None:
    seen = []
    for group in (0, 4):
        _, datamodule, _ = build(make_config(f"data.group_by_length={group}", "data.batch_size=4"))
        indices = [int(i) for batch in datamodule.train_dataloader() for i in batch.index]
        seen.append(indices)
    assert seen[0] != seen[1] and sorted(seen[0]) == sorted(seen[1])
