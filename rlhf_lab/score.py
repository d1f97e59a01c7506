"""Score a data file with an exported reward model.

    python -m rlhf_lab.score model_dir=<reward model dir> data=<data file> [out=scores.jsonl]
        [format=auto] [batch_size=16] [max_length=2048]

A Hydra app: the options take training's override syntax (``model_dir`` and ``data`` are required); ``--help``
lists them. It writes nothing but the scores (no ``outputs/``, no ``.hydra/``). The older form
``python -m rlhf_lab.score <model dir> <data file> [--out F] [--format F] [--batch-size N] [--max-length N]``
still works, with a note that it is deprecated.

Paired rows (chosen/rejected, any supported format) get ``chosen_score`` and ``rejected_score`` and the run
prints the pairwise accuracy; single completions (prompt/completion, KTO rows) get ``score``. The model is
any ``AutoModelForSequenceClassification`` with one label, e.g. ``<run dir>/export`` of ``algo=reward``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import MISSING, DictConfig

from rlhf_lab.data.collate import PreferenceCollator
from rlhf_lab.data.formats import PreferenceExample, convert_rows
from rlhf_lab.data.io import read_rows
from rlhf_lab.data.tokenize import TokenizeSettings, tokenize_examples
from rlhf_lab.launch import register_app, require, run_app
from rlhf_lab.policy import FrozenModel


class RewardScorer:
    """Scores prompt + completion sequences with a sequence-classification reward model.

    Args:
        model_dir: Directory (or hub id) of the reward model and its tokenizer.
        max_length: Longest sequence scored (prompt truncated from the start first).
        batch_size: Sequences per forward pass.
        device: Torch device.
    """

    def __init__(
        self, model_dir: str | Path, max_length: int | None = 2048, batch_size: int = 16, device: str = "cpu"
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForSequenceClassification.from_pretrained(model_dir).to(device)
        self.model = FrozenModel(model, self.tokenizer)
        self.settings = TokenizeSettings(max_length=max_length, max_prompt_length=None)
        self.batch_size = batch_size
        self.device = device

    @torch.no_grad()
    def score(self, examples: Sequence[PreferenceExample]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scores of the chosen (or only) completions ``[N]`` and of the rejected ones (or None)."""
        tokenized, stats = tokenize_examples(examples, self.tokenizer, self.settings)
        if stats.get("dropped_too_long"):
            raise ValueError(
                f"{stats['dropped_too_long']} examples do not fit max_length={self.settings.max_length}"
            )
        collate = PreferenceCollator(pad_token_id=self.tokenizer.pad_token_id)
        chosen_scores, rejected_scores = [], []
        for start in range(0, len(tokenized), self.batch_size):
            items = list(enumerate(tokenized[start : start + self.batch_size], start))
            batch = collate(items)
            scores = self.model.scores(batch.sequences.to(self.device)).cpu()
            size = batch.size
            chosen_scores.append(scores[:size])
            if scores.numel() > size:
                rejected_scores.append(scores[size:])
        chosen = torch.cat(chosen_scores) if chosen_scores else torch.zeros(0)
        rejected = torch.cat(rejected_scores) if rejected_scores else None
        return chosen, rejected


APP = "score"


@dataclass
class ScoreOptions:
    """``python -m rlhf_lab.score``'s options (``???``: required).

    Attributes:
        model_dir: The reward model's directory (or hub id), e.g. ``<run dir>/export``.
        data: A JSON, JSONL or Parquet file.
        out: Where the scores go (JSONL); default ``<data>.scores.jsonl``.
        format: The data's layout (``auto``: detected).
        batch_size: Sequences per forward pass.
        max_length: Longest sequence scored.
    """

    model_dir: str = MISSING
    data: str = MISSING
    out: Optional[str] = None  # noqa: UP045 - OmegaConf needs typing.Optional
    format: str = "auto"
    batch_size: int = 16
    max_length: int = 2048


register_app(APP, ScoreOptions, __doc__ or "")
# The argparse flags of the older command line -> the options they set.
LEGACY_FLAGS = {
    "--out": "out",
    "--format": "format",
    "--batch-size": "batch_size",
    "--max-length": "max_length",
}


def _quoted(value: str) -> str:
    """``value`` as a quoted string of Hydra's override grammar (a path stays a string, whatever it holds)."""
    # Backslashes are literal except before a quote (or the closing one), where they escape it.
    doubled = re.sub(r"(\\+)(?='|$)", lambda run: run.group(1) * 2, value)
    return "'" + doubled.replace("'", "\\'") + "'"


def legacy_arguments(argv: Sequence[str]) -> list[str] | None:
    """The ``key=value`` form of an older command line (``<model dir> <data> [--out F] ...``), or None when
    ``argv`` is already in the ``key=value`` form."""
    flagged = any(arg.partition("=")[0] in LEGACY_FLAGS for arg in argv)
    if not argv or not (flagged or (not argv[0].startswith("-") and "=" not in argv[0])):
        return None
    parser = argparse.ArgumentParser(prog="python -m rlhf_lab.score", add_help=False)
    parser.add_argument("model_dir")
    parser.add_argument("data")
    for flag in LEGACY_FLAGS:
        parser.add_argument(flag)
    args = vars(parser.parse_args(list(argv)))
    converted = [f"model_dir={_quoted(args.pop('model_dir'))}", f"data={_quoted(args.pop('data'))}"]
    for key, value in args.items():
        if value is not None:
            converted.append(f"{key}={value if key in ('batch_size', 'max_length') else _quoted(value)}")
    return converted


def score_file(options: ScoreOptions | DictConfig) -> dict[str, Any]:
    """Score ``options.data`` into ``options.out``; returns ``scored``, ``out`` and, for pairs, ``accuracy``
    and ``mean_margin``."""
    examples, _ = convert_rows(read_rows(options.data), options.format, file=options.data)
    scorer = RewardScorer(options.model_dir, max_length=options.max_length, batch_size=options.batch_size)
    chosen, rejected = scorer.score(examples)
    out = Path(options.out or f"{options.data}.scores.jsonl")
    with out.open("w") as file:
        for row, example in enumerate(examples):
            record: dict[str, Any] = {"source": example.source}
            if rejected is None:
                record["score"] = float(chosen[row])
            else:
                record["chosen_score"] = float(chosen[row])
                record["rejected_score"] = float(rejected[row])
            file.write(json.dumps(record) + "\n")
    result: dict[str, Any] = {"scored": len(examples), "out": str(out)}
    if rejected is not None:
        result["accuracy"] = float((chosen > rejected).float().mean())
        result["mean_margin"] = float((chosen - rejected).mean())
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m rlhf_lab.score``; prints and returns the result (``{}`` after ``--help`` or ``--cfg``)."""
    from rlhf_lab.cli import reported_errors

    argv = list(sys.argv[1:] if argv is None else argv)
    legacy = legacy_arguments(argv)
    if legacy is not None:
        print(
            f"note: this form is deprecated; use python -m rlhf_lab.score {' '.join(legacy)}", file=sys.stderr
        )
        argv = legacy

    def task(cfg: DictConfig) -> dict[str, Any]:
        with reported_errors(ValueError, FileNotFoundError):
            require(cfg, APP)
            result = score_file(cfg)
        print(json.dumps(result))
        return result

    return run_app(APP, task, argv) or {}


if __name__ == "__main__":
    main()
