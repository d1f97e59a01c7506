"""One huge "word" in a data row: the cost of reading, training the tiny tokenizer on and tokenising it, before and
after text fields are bounded (`rlhf_lab.data.tokenize.field_limit`).

    python benchmarks/long_line.py [--before 20000 50000 100000 1000000 10000000] [--after 1000000 10000000] [--cap 5] [--llama3]

A row's completion is one run of ``a`` with no space (one pre-token for a byte-level BPE). Each size is timed
by stage, single-threaded:

- ``before``: the bound off (``chars_per_token=None``, the corpus as the rows hold it): training the tiny model's
  tokenizer on the corpus (byte-level BPE, ``rlhf_lab.models.tiny.train_tokenizer``) and tokenising the row. A
  size is skipped once the previous one took longer than ``--cap`` seconds, and the next size's time is then
  only extrapolated (x (ratio)^2).
- ``after``: the whole data path with the bound, from the file: read and convert the rows, train the tokenizer
  on the corpus, tokenise (``PreferenceDataModule`` with ``data.max_length`` 1024).

With ``--llama3``, tokenising the same row with Llama 3's own 128k tokenizer (from ``llama-models``) is timed
too, bound off and on (this tokenizer encodes linearly; the bound caps its cost per field).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

from rlhf_lab.data.datamodule import PreferenceDataModule
from rlhf_lab.data.formats import convert_rows
from rlhf_lab.data.sources import LocalFiles
from rlhf_lab.data.tokenize import TokenizeSettings, tokenize_examples
from rlhf_lab.models.tiny import train_tokenizer

MAX_LENGTH = 1024
GOOD = [{"prompt": f"{i} + {i} =", "chosen": f" {2 * i}", "rejected": f" {2 * i + 1}"} for i in range(20)]


def row(size: int) -> dict[str, str]:
    return {"prompt": "Say it:", "chosen": " " + "a" * size, "rejected": " no"}


def timed(function: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def before(size: int) -> dict[str, float]:
    """The bound off: the tiny tokenizer trained on the whole row, the row tokenised whole."""
    examples, _ = convert_rows([*GOOD, row(size)], "plain", file="long.jsonl")
    corpus = [text for e in examples for text in (e.prompt, e.chosen, e.rejected)]
    train_s, tokenizer = timed(lambda: train_tokenizer(corpus, vocab_size=300))
    settings = TokenizeSettings(max_length=MAX_LENGTH, max_prompt_length=512, chars_per_token=None)
    tokenize_s, _ = timed(lambda: tokenize_examples(examples, tokenizer, settings))
    return {"train_tokenizer_s": train_s, "tokenize_s": tokenize_s}


def after(size: int, folder: Path) -> dict[str, float]:
    """The bound on, the whole data path from a file: read + convert, corpus + tokenizer, tokenise."""
    path = folder / f"long_{size}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*GOOD, row(size)]))
    datamodule = PreferenceDataModule(
        LocalFiles(train_path=str(path), eval_path=str(path)), max_length=MAX_LENGTH, max_prompt_length=512
    )
    read_s, _ = timed(datamodule.load_examples)
    train_s, tokenizer = timed(lambda: train_tokenizer(list(datamodule.corpus()), vocab_size=300))
    datamodule.set_tokenizer(tokenizer)
    tokenize_s, _ = timed(datamodule.setup)
    stats = datamodule.stats["train"]
    assert stats["truncated"] == 1 and stats["dropped_too_long"] == 0, stats
    return {"read_convert_s": read_s, "train_tokenizer_s": train_s, "tokenize_s": tokenize_s}


def llama3(sizes: list[int]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from transformers import AutoTokenizer

    from tests.real_tokenizers import llama3_tokenizer

    os.environ.setdefault("RLHF_LAB_CACHE", tempfile.mkdtemp())
    tokenizer = AutoTokenizer.from_pretrained(str(llama3_tokenizer()))
    for size in sizes:
        examples, _ = convert_rows([row(size)], "plain", file="long.jsonl")
        for label, chars in (("off", None), ("on", 128)):
            settings = TokenizeSettings(max_length=MAX_LENGTH, max_prompt_length=512, chars_per_token=chars)
            seconds, _ = timed(lambda s=settings, e=examples: tokenize_examples(e, tokenizer, s))
            print(f"llama3 tokenise, bound {label:3s} {size:>12,} chars  {seconds:8.3f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--before", type=int, nargs="*", default=[20_000, 50_000, 100_000, 1_000_000, 10_000_000]
    )
    parser.add_argument("--after", type=int, nargs="*", default=[1_000_000, 10_000_000])
    parser.add_argument("--cap", type=float, default=5.0, help="skip larger 'before' sizes past this (s)")
    parser.add_argument("--llama3", action="store_true")
    options = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)  # the truncation warnings are expected here
    print(f"data.max_length={MAX_LENGTH}: fields cut at {MAX_LENGTH * 128:,} characters when the bound is on")
    last: tuple[int, float] | None = None
    for size in options.before:
        if last is not None and last[1] > options.cap:
            guess = last[1] * (size / last[0]) ** 2
            print(f"before {size:>12,} chars  skipped (about {guess:,.0f} s if quadratic)", flush=True)
            continue
        times = before(size)
        total = sum(times.values())
        parts = "  ".join(f"{k} {v:8.3f}" for k, v in times.items())
        print(f"before {size:>12,} chars  total {total:8.3f} s   {parts}", flush=True)
        last = (size, total)
    with tempfile.TemporaryDirectory() as folder:
        for size in options.after:
            times = after(size, Path(folder))
            total = sum(times.values())
            parts = "  ".join(f"{k} {v:8.3f}" for k, v in times.items())
            print(f"after  {size:>12,} chars  total {total:8.3f} s   {parts}", flush=True)
    if options.llama3:
        llama3(options.after)


if __name__ == "__main__":
    main()
