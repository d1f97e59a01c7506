"""Hostile input: every malformed row is a DataError naming file, row and field (or a counted skip), never a
traceback from inside JSON, tokenizers or collators; the data's text stays text."""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf_lab.data.collate import PreferenceCollator
from rlhf_lab.data.datamodule import PreferenceDataModule
from rlhf_lab.data.formats import FORMATS, DataError, convert_rows
from rlhf_lab.data.io import read_rows
from rlhf_lab.data.sources import LocalFiles
from rlhf_lab.data.tokenize import TokenizeSettings, tokenize_examples
from rlhf_lab.errors import ConfigError
from rlhf_lab.models.tiny import train_tokenizer

GOOD = {"prompt": "2 + 2 =", "chosen": " 4", "rejected": " 5"}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(
        ["2 + 2 = 4", "the cat sat </s> on <|user|> it", "hello world"] * 20, vocab_size=300
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def load(path: Path, eval_path: Path | None = None) -> PreferenceDataModule:
    datamodule = PreferenceDataModule(LocalFiles(train_path=str(path), eval_path=str(eval_path or path)))
    datamodule.load_examples()
    return datamodule


def row_error(tmp_path: Path, row: dict, *, line: bool = True) -> DataError:
    path = write(tmp_path / "train.jsonl", json.dumps(row) + "\n")
    with pytest.raises(DataError) as caught:
        load(path)
    assert str(caught.value).startswith(f"{path}, row 0")
    return caught.value


def test_a_lone_surrogate_is_named_not_a_tokenizer_traceback(tmp_path: Path) -> None:
    path = write(
        tmp_path / "train.jsonl",
        json.dumps(GOOD) + '\n{"prompt": "a\\ud800b", "chosen": " 4", "rejected": " 5"}\n',
    )
    with pytest.raises(
        DataError, match=r"row 1, field 'prompt': invalid Unicode: a lone surrogate U\+D800 at character 1"
    ):
        load(path)


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        ({"prompt": "   \t", "chosen": " 4", "rejected": " 5"}, "prompt", "empty prompt"),
        ({"prompt": "q", "chosen": "\u200b\u200b", "rejected": " 5"}, "chosen", "empty completion"),
        (
            {"prompt": [{"role": "user", "content": " \n"}], "chosen": [{"role": "assistant", "content": "a"}],
             "rejected": [{"role": "assistant", "content": "b"}]},
            "prompt[0].content",
            "empty user turn",
        ),
        (
            {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "\u2060 "}],
             "rejected": [{"role": "assistant", "content": "b"}]},
            "chosen[0].content",
            "empty completion",
        ),
    ],
    ids=["blank-prompt", "zero-width-completion", "blank-user-turn", "word-joiner-completion"],
)  # fmt: skip
def test_blank_and_invisible_text_is_named(tmp_path: Path, row: dict, field: str, reason: str) -> None:
    error = row_error(tmp_path, row)
    assert error.field == field and reason in error.reason


def test_deeply_nested_json_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "train.jsonl", "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(DataError, match=r"line 1: JSON nested too deeply"):
        read_rows(path)
    path = write(tmp_path / "train.json", "[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match=r"train.json: JSON nested too deeply"):
        read_rows(path)


def test_duplicate_keys_are_named(tmp_path: Path) -> None:
    path = write(
        tmp_path / "train.jsonl", '{"prompt": "a", "chosen": " 4", "chosen": " 5", "rejected": " 6"}\n'
    )
    with pytest.raises(DataError, match=r"field 'chosen': line 1: duplicate key 'chosen' in one object"):
        read_rows(path)


def test_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
    assert read_rows(path) == [GOOD]


def test_an_empty_or_all_identical_training_file_is_named(tmp_path: Path) -> None:
    held_out = write(tmp_path / "eval.jsonl", json.dumps(GOOD) + "\n")
    empty = write(tmp_path / "empty.jsonl", "\n")
    with pytest.raises(ConfigError, match=rf"the training split is empty: {empty} \(0 rows\)"):
        load(empty, held_out)
    same = write(
        tmp_path / "same.jsonl", json.dumps({"prompt": "a", "chosen": " b", "rejected": " b"}) + "\n"
    )
    with pytest.raises(ConfigError, match=rf"{same} \(all 1 rows were dropped as identical"):
        load(same, held_out)


def test_special_token_text_in_a_conversation_stays_text(tokenizer) -> None:
    """A completion saying "</s>" and "<|user|>" is tokenised as those characters: the only special tokens in
    the scored completion are the template's own end-of-turn."""
    row = {
        "prompt": [{"role": "user", "content": "write </s> please"}],
        "chosen": [{"role": "assistant", "content": "the cat sat </s> on <|user|> it"}],
        "rejected": [{"role": "assistant", "content": "no"}],
    }
    examples, _ = convert_rows([row], "conversational", file="t.jsonl")
    (tokenized,), _ = tokenize_examples(
        examples, tokenizer, TokenizeSettings(max_length=None, max_prompt_length=None)
    )
    special = {tokenizer.convert_tokens_to_ids(t) for t in ("</s>", "<|user|>", "<|assistant|>", "<s>")}
    assert [t for t in tokenized.chosen_ids if t in special] == [tokenizer.eos_token_id]
    assert tokenized.chosen_ids[-1] == tokenizer.eos_token_id
    assert [t for t in tokenized.prompt_ids if t == tokenizer.eos_token_id] == [
        tokenizer.eos_token_id
    ]  # the user turn's end
    assert tokenizer.decode(tokenized.chosen_ids) == "the cat sat </s> on <|user|> it</s>"


# --- property-based: any row, any format --------------------------------------------------------------

PIECES = st.sampled_from(["\ud800", "\u200b", "</s>", "<|user|>", "\n", " ", "a", "2 + 2"])
TEXT = st.lists(st.text(max_size=3) | PIECES, max_size=5).map("".join)
SCALAR = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | TEXT
MESSAGE = st.fixed_dictionaries(
    {}, optional={"role": st.sampled_from(["user", "assistant", "system", "tool", 3]), "content": SCALAR}
)
VALUE = (
    SCALAR
    | st.lists(MESSAGE | SCALAR, max_size=3)
    | st.dictionaries(st.sampled_from(["from", "value"]), SCALAR)
)
COLUMNS = ["prompt", "chosen", "rejected", "completion", "label", "messages", "query", "response",
           "rejected_response", "history", "conversations", "instruction", "input", "system", "margin", "images"]  # fmt: skip
ROW = st.dictionaries(st.sampled_from(COLUMNS), VALUE, max_size=6)


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", 300)),
    deadline=None,
    derandomize="FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(row=ROW, fmt=st.sampled_from(["auto", *FORMATS]))
def test_any_row_converts_or_is_named(tokenizer, row: dict, fmt: str) -> None:
    """Over every format (and detection), a generated row either becomes an example that tokenises, or
    fails with a DataError naming the file and the row; nothing else escapes."""
    try:
        examples, _ = convert_rows([row], fmt, file="gen.jsonl")
    except DataError as error:
        assert error.file == "gen.jsonl" and (error.row == 0 or "cannot detect" in error.reason), str(error)
        return
    try:
        tokenized, _ = tokenize_examples(
            examples, tokenizer, TokenizeSettings(max_length=64, max_prompt_length=32)
        )
    except DataError as error:
        assert "gen.jsonl" in str(error)
        return
    kept = [(i, example) for i, example in enumerate(tokenized) if example.chosen_ids]
    if kept:  # what reaches a batch collates
        PreferenceCollator(pad_token_id=tokenizer.pad_token_id)(kept)


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", 100)),
    deadline=None,
    derandomize="FUZZ_EXAMPLES" not in os.environ,
)
@given(
    text=st.text(alphabet=string.printable + "\ud800\u200b\ufeff", max_size=80)
    | st.lists(ROW, max_size=3).map(lambda rows: "\n".join(json.dumps(r) for r in rows))
)
def test_any_file_reads_or_is_named(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("files") / "gen.jsonl"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        rows = read_rows(path)
    except DataError as error:
        assert error.file == str(path)
        return
    assert all(isinstance(row, dict) for row in rows)
