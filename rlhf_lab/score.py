"""Score a data file with an exported reward model.

    python -m rlhf_lab.score <reward model dir> <data file> [--out scores.jsonl] [--batch-size 16]

Paired rows (chosen/rejected, any supported format) get ``chosen_score`` and ``rejected_score`` and the run
prints the pairwise accuracy; single completions (prompt/completion, KTO rows) get ``score``. The model is
any ``AutoModelForSequenceClassification`` with one label, e.g. ``<run dir>/export`` of ``algo=reward``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rlhf_lab.data.collate import PreferenceCollator
from rlhf_lab.data.formats import PreferenceExample, convert_rows
from rlhf_lab.data.io import read_rows
from rlhf_lab.data.tokenize import TokenizeSettings, tokenize_examples
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


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model_dir", help="reward model directory, e.g. <run dir>/export")
    parser.add_argument("data", help="JSON, JSONL or Parquet file")
    parser.add_argument("--out", help="where to write scores (JSONL); default <data>.scores.jsonl")
    parser.add_argument("--format", default="auto", help="data format (auto-detected by default)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=2048)
    args = parser.parse_args(argv)

    examples, _ = convert_rows(read_rows(args.data), args.format, file=args.data)
    scorer = RewardScorer(args.model_dir, max_length=args.max_length, batch_size=args.batch_size)
    chosen, rejected = scorer.score(examples)
    out = Path(args.out or f"{args.data}.scores.jsonl")
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
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
