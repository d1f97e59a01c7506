"""Hostile input: every malformed row is a DataError naming file, row and field (or a counted skip), never a
traceback from inside JSON, tokenizers or collators; the data's text stays text."""

from __future__ import annotations

import base64
import json
import os
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rlhf_lab.data import io as io_module
from rlhf_lab.data.collate import PreferenceCollator
from rlhf_lab.data.datamodule import CORPUS_WORD_CHARS, PreferenceDataModule
from rlhf_lab.data.formats import FORMATS, DataError, convert_rows, detect_format
from rlhf_lab.data.formats.registry import known_columns
from rlhf_lab.data.images import ImageProcessing, encode_png
from rlhf_lab.data.io import read_rows
from rlhf_lab.data.sources import LocalFiles
from rlhf_lab.data.tokenize import (
    CHARS_PER_TOKEN,
    TokenizeSettings,
    bound_example,
    field_limit,
    tokenize_examples,
)
from rlhf_lab.errors import ConfigError
from rlhf_lab.models.tiny import train_tokenizer
from rlhf_lab.models.tiny_vlm import TinyVisionLanguageModel

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


# --- huge fields and lines ------------------------------------------------------------------------------


def test_a_10mb_single_token_line_is_cut_before_tokenising(tmp_path: Path) -> None:
    """A 10 MB run with no space (one BPE pre-token) in a completion and in a prompt: the whole data path (read,
    corpus, the tiny tokenizer's training, tokenising) sees at most the field bound; the completion's row is
    truncated, the prompt's (no prompt limit) dropped as too long, both counted."""
    big = "a" * 10_000_000
    train = write(
        tmp_path / "train.jsonl",
        "".join(json.dumps(r) + "\n" for r in [GOOD, {**GOOD, "chosen": " " + big}, {**GOOD, "prompt": big}]),
    )
    datamodule = PreferenceDataModule(
        LocalFiles(train_path=str(train), eval_path=str(write(tmp_path / "eval.jsonl", json.dumps(GOOD)))),
        max_length=64,
        max_prompt_length=None,
    )
    datamodule.load_examples()
    corpus = list(datamodule.corpus())
    limit = field_limit(datamodule.settings)
    assert limit == 64 * CHARS_PER_TOKEN
    assert max(map(len, corpus)) <= limit + limit // CORPUS_WORD_CHARS
    assert max(len(word) for text in corpus for word in text.split()) == CORPUS_WORD_CHARS
    datamodule.set_tokenizer(train_tokenizer(corpus, vocab_size=300))
    datamodule.setup()
    assert datamodule.stats["train"] == {
        "rows": 3, "identical_dropped": 0, "examples": 3, "truncated": 1, "dropped_too_long": 1
    }  # fmt: skip
    (_, long), tokenizer = datamodule.datasets["train"].examples, datamodule.tokenizer
    # Cut, then truncated to fit (this tokenizer learnt tokens of hundreds of a's from the corpus).
    assert long.truncated and len(long.prompt_ids) + len(long.chosen_ids) <= 64
    assert set(tokenizer.decode(long.chosen_ids, skip_special_tokens=True)) == {" ", "a"}


def _outcome(tokenized: list) -> list:
    return [(t.prompt_ids, t.chosen_ids, t.rejected_ids, t.truncated) for t in tokenized]


@pytest.mark.parametrize("mode", ["keep_end", "keep_start"])
def test_the_field_bound_changes_nothing_but_the_cost(tokenizer, mode: str) -> None:
    """Rows within the bound tokenise to the same ids with the bound on or off; a row over it is truncated (or
    dropped, a prompt without a limit of its own) as it is without the bound, to the same ids."""
    long = "the cat sat on it " * 500  # 9,000 characters: over 8 x 128
    rows = [
        GOOD,
        {"prompt": "hello world " * 40, "chosen": " the cat sat", "rejected": " on it"},
        {"prompt": long, "chosen": " 4", "rejected": " 5"},
        {"prompt": "2 + 2 =", "chosen": " " + long, "rejected": " 5"},
        {"prompt": [{"role": "user", "content": long}], "chosen": [{"role": "assistant", "content": long}],
         "rejected": [{"role": "assistant", "content": "no"}]},
    ]  # fmt: skip
    for max_prompt_length, dropped in ((4, 0), (None, 3)):
        results = {}
        for chars in (None, CHARS_PER_TOKEN):
            settings = TokenizeSettings(8, max_prompt_length, mode, chars_per_token=chars)
            examples = [convert_rows([row], file="b.jsonl")[0][0] for row in rows]
            assert [bound_example(e, settings)[1] for e in examples] == [False, False] + [
                chars is not None
            ] * 3
            results[chars] = tokenize_examples(examples, tokenizer, settings)
        (off, off_stats), (on, on_stats) = results[None], results[CHARS_PER_TOKEN]
        assert on_stats == off_stats and on_stats["dropped_too_long"] == dropped
        assert _outcome(on) == _outcome(off)


def test_a_line_over_the_row_limit_is_named_with_its_size(tmp_path: Path) -> None:
    """A line longer than the limit is measured a chunk at a time and named: file, line, size, limit."""
    row = json.dumps({**GOOD, "chosen": "x" * 5_000})
    path = write(tmp_path / "train.jsonl", json.dumps(GOOD) + "\n" + row + "\n" + json.dumps(GOOD) + "\n")
    assert len(read_rows(path)) == 3
    with pytest.raises(DataError) as caught:
        read_rows(path, max_row_bytes=1_000)
    assert str(caught.value) == (
        f"{path}: line 2: the line is {len(row):,} bytes, over the limit of 1,000 bytes for one row; split it, "
        "or give its images as files (paths) rather than inline text"
    )
    csv_path = write(tmp_path / "train.csv", 'prompt,chosen,rejected\n2 + 2 =,"' + "4" * 3_000 + '",5\n')
    with pytest.raises(
        DataError, match=r"train.csv: line 2: the line is 3,012 bytes, over the limit of 1,000"
    ):
        read_rows(csv_path, max_row_bytes=1_000)


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_file_rewritten_while_it_is_read_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    """The file is rewritten (fewer rows) after its first row was parsed: the rows read would mix two versions,
    so the read fails naming the file."""
    rows = [{**GOOD, "prompt": f"{i} + {i} ="} for i in range(40)]
    text = "".join(json.dumps(r) + "\n" for r in rows) if suffix == ".jsonl" else json.dumps(rows)
    path = write(tmp_path / f"train{suffix}", text)
    parse = io_module._parse

    def rewriting(*args):
        write(path, text[: len(text) // 2])
        return parse(*args)

    monkeypatch.setattr(io_module, "_parse", rewriting)
    with pytest.raises(DataError) as caught:
        read_rows(path)
    assert str(caught.value).startswith(f"{path}: changed while it was read (its size, modification time or ")


# --- images of every kind -------------------------------------------------------------------------------


def _png() -> bytes:
    from PIL import Image

    return encode_png(Image.new("RGB", (4, 4), (255, 0, 0)))


def _image_row(images) -> dict:
    return {"prompt": "<image>What colour?", "chosen": " red", "rejected": " blue", "images": images}


@pytest.mark.parametrize(
    "images",
    [
        [base64.b64encode(_png()).decode()],  # base64 text, as ms-swift reads it (short: tried as base64)
        [base64.b64encode(_png() + b"\0" * 300).decode()],  # long: base64 (PNG ignores trailing bytes)
        ["data:image/png;base64," + base64.b64encode(_png()).decode()],
        [{"bytes": base64.b64encode(_png()).decode(), "path": None}],  # JSON holds bytes as text
        [{"bytes": _png(), "path": "ignored.png"}],
        _png(),
    ],
    ids=["base64-short", "base64-long", "data-uri", "object-base64-bytes", "object-bytes", "bare-bytes"],
)
def test_images_as_peers_give_them_are_read(images) -> None:
    (example,), _ = convert_rows([_image_row(images)], file="i.jsonl")
    assert example.images is not None and example.images[0].size == (4, 4)


@pytest.mark.parametrize(
    ("images", "field", "reason"),
    [
        ([123], "images[0]", "expected an image as a path, URL, bytes, base64 text, a data URI or a {bytes, path} "
         "object, got int"),
        (7, "images", "got int"),
        ([None], "images[0]", "got null"),
        ([["a.png"]], "images[0]", "got list"),
        ([{"path": 123}], "images[0]", "an image object's 'path' must be a string, got int"),
        ([{"bytes": [1, 2]}], "images[0]", "an image object's 'bytes' must be bytes (or base64 text), got list"),
        ([{"url": "a.png"}], "images[0]", "an image object has keys ['url']; expected 'bytes' and/or 'path'"),
        ([{"bytes": "not base64!"}], "images[0]", "an image object's 'bytes' text is not valid base64"),
        (["x" * 5_000], "images[0]", "the image text 'xxxxxxxxxx"),
        (["missing.png"], "images[0]", "image file not found: missing.png"),
        (["a\0b.png"], "images[0]", r"image file not found: 'a\x00b.png'"),
    ],
    ids=["int", "column-int", "null", "nested-list", "path-int", "bytes-list", "unknown-key", "bytes-text",
         "long-text", "missing", "nul"],
)  # fmt: skip
def test_an_image_of_the_wrong_kind_is_named(tmp_path: Path, images, field: str, reason: str) -> None:
    error = row_error(tmp_path, _image_row(images))
    assert error.field == field and reason in error.reason, str(error)
    assert len(str(error)) < 400  # a megabyte of base64 is not echoed back


def test_an_image_content_part_of_the_wrong_kind_is_named(tmp_path: Path) -> None:
    prompt = [
        {"role": "user", "content": [{"type": "image", "image": 5}, {"type": "text", "text": "colour?"}]}
    ]
    row = {"prompt": prompt, "chosen": [{"role": "assistant", "content": "red"}],
           "rejected": [{"role": "assistant", "content": "blue"}]}  # fmt: skip
    error = row_error(tmp_path, row)
    assert error.field == "prompt[0].content[0]" and "got int" in error.reason


# --- property-based: any row, any layout, any image ------------------------------------------------------

#: Stands for the path of a real image file (written by the `image_file` fixture) in generated rows.
IMAGE_FILE = "@image-file@"
PNG = encode_png(__import__("PIL.Image", fromlist=["Image"]).new("RGB", (8, 8), (0, 128, 255)))
B64 = base64.b64encode(PNG).decode()

PIECES = st.sampled_from(["\ud800", "\u200b", "</s>", "<|user|>", "<image>", "\n", " ", "a", "2 + 2"])
TEXT = st.lists(st.text(max_size=3) | PIECES, max_size=5).map("".join)
SCALAR = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | TEXT


# Images as peers give them (paths, base64, data URIs, bytes, {bytes, path}) and as they should not.
def _one_of(values: list):
    """``sampled_from`` without its repr (the values hold images: hypothesis would print kilobytes)."""
    return st.integers(0, len(values) - 1).map(values.__getitem__)


IMAGE = (
    _one_of([
        PNG, B64, "data:image/png;base64," + B64, {"bytes": PNG, "path": None}, {"bytes": B64}, {"path": IMAGE_FILE},
        IMAGE_FILE, "missing.png", "data:image/png,raw", "data:image/png;base64,@@", "A" * 300, "\0" * 300,
        PNG[:20], b"", {"url": "a.png"}, {"path": 3}, {"bytes": 3}, {"bytes": [1]}, {}, "", " ", "/",
    ])
    | SCALAR
    | st.lists(SCALAR, max_size=2)
    | st.binary(max_size=8)
)  # fmt: skip
IMAGES = IMAGE | st.lists(IMAGE, max_size=3)
GOOD_IMAGES = st.lists(
    _one_of(
        [
            PNG,
            B64,
            "data:image/png;base64," + B64,
            {"bytes": PNG},
            {"bytes": B64},
            {"path": IMAGE_FILE},
            IMAGE_FILE,
        ]
    ),
    min_size=1,
    max_size=2,
)
PART = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}),
    st.fixed_dictionaries({"type": st.just("image")}, optional={"image": IMAGE}),
    st.fixed_dictionaries(
        {"type": st.just("image_url"), "image_url": IMAGE | st.fixed_dictionaries({"url": IMAGE})}
    ),
    st.dictionaries(st.sampled_from(["type", "text", "value", "image", "url"]), SCALAR | IMAGE, max_size=2),
)
CONTENT = SCALAR | st.lists(PART, max_size=3)
MESSAGE = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "assistant", "system", "tool", 3]),
        "content": CONTENT,
        "from": st.sampled_from(["human", "gpt", "system"]),
        "value": CONTENT,
    },
)
VALUE = (
    SCALAR
    | st.lists(MESSAGE | SCALAR, max_size=3)
    | st.dictionaries(st.sampled_from(["from", "value"]), SCALAR)
)
#: Every column a layout of the registry reads, and one none does.
COLUMNS = sorted(known_columns() | {"answer"})
RANDOM_ROW = st.dictionaries(st.sampled_from(COLUMNS), VALUE | IMAGES, max_size=6)


def _turns(*texts: str) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]


#: A valid row of each layout (detected, or named by data.format), for mutations to start from.
BASES = [
    GOOD,
    {"prompt": _turns("2 + 2?"), "chosen": _turns("x", "4")[1:], "rejected": _turns("x", "5")[1:]},
    {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "colour?"}]}],
     "chosen": _turns("x", "blue")[1:], "rejected": _turns("x", "red")[1:], "images": [PNG]},
    {"chosen": "2 + 2 = 4", "rejected": "2 + 2 = 5"},
    {"chosen": _turns("2 + 2?", "4"), "rejected": _turns("2 + 2?", "5")},
    {"prompt": "2 + 2 =", "completion": " 4", "label": True},
    {"prompt": "2 + 2 =", "completion": " 4"},
    {"prompt": "2 + 2 ="},
    {"text": "hello world"},
    {"prompt": "2 + 2 =", "completions": [" 2 + 2", " = 4"], "labels": [True, False]},
    {"messages": _turns("2 + 2?", "4")},
    {"messages": _turns("2 + 2?", "4"), "rejected_response": "5"},
    {"messages": _turns("<image>colour?", "blue"), "images": [IMAGE_FILE]},
    {"conversations": [{"from": "human", "value": "2 + 2?"}, {"from": "gpt", "value": "4"}]},
    {"conversations": [{"from": "human", "value": "<image>colour?"}],
     "chosen": {"from": "gpt", "value": "blue"}, "rejected": {"from": "gpt", "value": "red"}, "images": [B64]},
    {"instruction": "add", "input": "2 + 2", "output": "4"},
    {"instruction": "add", "input": "2 + 2", "chosen": "4", "rejected": "5"},
    {"query": "2 + 2?", "response": "4", "rejected_response": "5"},
    {"query": "<image>colour?", "response": "blue", "rejected_response": "red", "images": ["data:image/png;base64," + B64],
     "rejected_images": [{"bytes": PNG}]},
    {"chosen_messages": [{"role": "user", "content": [{"type": "text", "value": "2 + 2?"}]},
                         {"role": "assistant", "content": [{"type": "text", "value": "4"}]}],
     "rejected_messages": [{"role": "user", "content": [{"type": "text", "value": "2 + 2?"}]},
                           {"role": "assistant", "content": [{"type": "text", "value": "5"}]}]},
]  # fmt: skip
MUTATED_ROW = st.builds(
    lambda base, changes, images: {**base, **changes, **({} if images is None else {"images": images})},
    _one_of(BASES),
    st.just({}) | st.dictionaries(st.sampled_from(COLUMNS), VALUE | IMAGES, max_size=1),
    st.none() | GOOD_IMAGES | IMAGES,
)
ROW = MUTATED_ROW | RANDOM_ROW
#: A row and the layout it is read as: a random row as any layout (or detected), a mutated valid row as its
#: own layout (or detected), so that conversion gets past the first column often enough to reach the images.
CASE = st.tuples(RANDOM_ROW, st.sampled_from(["auto", *FORMATS])) | MUTATED_ROW.flatmap(
    lambda row: st.tuples(st.just(row), st.sampled_from(["auto", _layout_of(row)]))
)


def _layout_of(row: dict) -> str:
    try:
        return detect_format(row.keys(), row)
    except DataError:
        return "auto"


def _text(value: bytes) -> str:
    """Bytes in a row written as JSON: base64 text (as JSON exports of image bytes hold them)."""
    return base64.b64encode(value).decode()


def _with_file(value, path: str):
    """``value`` with each `IMAGE_FILE` replaced by ``path``."""
    if value == IMAGE_FILE:
        return path
    if isinstance(value, list):
        return [_with_file(item, path) for item in value]
    if isinstance(value, dict):
        return {key: _with_file(item, path) for key, item in value.items()}
    return value


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("images") / "blue.png"
    path.write_bytes(PNG)
    return str(path)


@pytest.fixture(scope="module")
def vision() -> ImageProcessing:
    """A tiny vision-language model's image processing (rows with images are tokenised with it)."""
    spec = TinyVisionLanguageModel(architecture="qwen2_vl", cache_dir=os.environ["RLHF_LAB_CACHE"])
    spec.prepare(lambda: ["2 + 2 = 4", "the cat sat </s> on <|user|> it", "colour blue red"] * 20)
    processor = spec.load_processor()
    processor.tokenizer = spec.load_tokenizer()
    return ImageProcessing(processor)


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", 300)),
    deadline=None,
    derandomize="FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=CASE)
def test_any_row_converts_or_is_named(tokenizer, vision, image_file: str, case: tuple[dict, str]) -> None:
    """Over every layout of the registry (and detection), a generated row, images included, either becomes an
    example that tokenises and collates, or fails with a DataError naming the file and the row; nothing else
    escapes. ``FUZZ_EXAMPLES=5000`` runs more (random, not derandomised); ``--hypothesis-show-statistics``
    shows the outcomes per layout."""
    row, fmt = _with_file(case[0], image_file), case[1]
    try:
        examples, _ = convert_rows([row], fmt, file="gen.jsonl")
    except DataError as error:
        assert error.file == "gen.jsonl" and (error.row == 0 or "cannot detect" in error.reason), str(error)
        event(f"{fmt}: named at conversion")
        return
    shows_images = any(example.images for example in examples)
    model_tokenizer = vision.tokenizer if shows_images else tokenizer
    try:
        tokenized, _ = tokenize_examples(
            examples,
            model_tokenizer,
            TokenizeSettings(max_length=64 if not shows_images else 256, max_prompt_length=None),
            vision if shows_images else None,
        )
    except DataError as error:
        assert "gen.jsonl" in str(error)
        event(f"{fmt}: named at tokenisation")
        return
    kept = [(i, example) for i, example in enumerate(tokenized) if example.chosen_ids]
    if kept:  # what reaches a batch collates
        collator = PreferenceCollator(
            pad_token_id=model_tokenizer.pad_token_id, images=vision if shows_images else None
        )
        collator(kept)
    event(f"{fmt}: {'tokenised with images' if shows_images else 'tokenised'}")


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", 100)),
    deadline=None,
    derandomize="FUZZ_EXAMPLES" not in os.environ,
)
@given(
    text=st.text(alphabet=string.printable + "\ud800\u200b\ufeff", max_size=80)
    | st.lists(ROW, max_size=3).map(lambda rows: "\n".join(json.dumps(r, default=_text) for r in rows))
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
