"""A bundled task that a tiny model learns from preferences alone, or from a programmatic reward.

Each prompt names an object and asks which of two categories it belongs to; the chosen answer names the
right category, the rejected one the other. The object is what decides, so a model that ignores the
prompt scores about 50% on the balanced held-out split. Held-out prompts are new sentences (template,
person, place and object combinations never seen in training), over the same objects.

The same prompts come in three row layouts (``rows``): preference pairs; prompts with the right answer in
an ``answer`` column, for online RL with `rlhf_lab.rewards.exact_match`; or SFT rows whose completion is
right only with probability ``correct_rate`` (a warm start that has learnt the answer's form but not which
category is right: online RL then has something to learn).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from rlhf_lab.data.sources import RowBlock, Splits
from rlhf_lab.errors import check_choice, check_range

CATEGORIES: dict[str, list[str]] = {
    "an animal": [
        "cat",
        "dog",
        "horse",
        "eagle",
        "salmon",
        "rabbit",
        "tiger",
        "sparrow",
        "whale",
        "frog",
        "beetle",
        "wolf",
        "goat",
        "owl",
        "shark",
        "mouse",
    ],
    "a tool": [
        "hammer",
        "wrench",
        "saw",
        "drill",
        "chisel",
        "shovel",
        "rake",
        "pliers",
        "ladder",
        "axe",
        "screwdriver",
        "crowbar",
        "trowel",
        "clamp",
        "mallet",
        "spanner",
    ],
}
NAMES = ["Ada", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jon", "Kemal", "Lena"]
PLACES = ["garden", "garage", "kitchen", "forest", "barn", "shed", "river", "attic", "field", "market"]
TEMPLATES = [
    "Is a {item} {a} or {b}?",
    "{name} saw a {item} in the {place}. Is it {a} or {b}?",
    "Tell me whether a {item} is {a} or {b}.",
    "In the {place}, {name} picked up a {item}. Would you call it {a} or {b}?",
    "{name} asks: a {item}, {a} or {b}?",
    "Quick question from the {place}: is the {item} {a} or {b}?",
]
ANSWER = "It is {category}."
ROW_LAYOUTS = ("pairs", "prompts", "sft")


def _distinct_prompts() -> int:
    items = sum(len(v) for v in CATEGORIES.values())
    total = 0
    for template in TEMPLATES:
        variants = items * 2  # which category is named first
        variants *= len(NAMES) if "{name}" in template else 1
        variants *= len(PLACES) if "{place}" in template else 1
        total += variants
    return total


# Generation draws until it has this many distinct prompts; stay well below so it finishes quickly.
MAX_DISTINCT_PROMPTS = _distinct_prompts() // 2


@dataclass
class SyntheticPreferences:
    """Generated conversational preference pairs with train and held-out splits.

    Attributes:
        num_train: Training pairs.
        num_eval: Held-out pairs (prompts disjoint from training).
        seed: Generator seed; same seed, same data.
        rows: ``pairs`` (prompt, chosen, rejected), ``prompts`` (prompt, answer) or ``sft`` (prompt,
            completion).
        correct_rate: ``sft`` rows: the share of completions that name the right category.
    """

    num_train: int = 2000
    num_eval: int = 256
    seed: int = 1234
    rows: str = "pairs"
    correct_rate: float = 1.0

    def __post_init__(self) -> None:
        check_choice("data.source.rows", self.rows, ROW_LAYOUTS)
        check_range("data.source.correct_rate", self.correct_rate, 0.0, 1.0)

    def _row(self, rng: random.Random, coin: random.Random) -> dict[str, Any]:
        category = rng.choice(sorted(CATEGORIES))
        other = next(c for c in sorted(CATEGORIES) if c != category)
        item = rng.choice(CATEGORIES[category])
        first, second = (category, other) if rng.random() < 0.5 else (other, category)
        question = rng.choice(TEMPLATES).format(
            item=item, a=first, b=second, name=rng.choice(NAMES), place=rng.choice(PLACES)
        )
        prompt = [{"role": "user", "content": question}]
        right, wrong = ANSWER.format(category=category), ANSWER.format(category=other)
        if self.rows == "prompts":
            return {"prompt": prompt, "answer": right}
        if self.rows == "sft":
            # Its own generator: every layout draws the same prompts, in the same splits.
            answer = right if coin.random() < self.correct_rate else wrong
            return {"prompt": prompt, "completion": [{"role": "assistant", "content": answer}]}
        return {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": right}],
            "rejected": [{"role": "assistant", "content": wrong}],
        }

    def load(self) -> Splits:
        """Rows per split."""
        rng = random.Random(self.seed)
        coin = random.Random(f"{self.seed}:correct")
        seen: set[str] = set()
        splits: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
        targets = {"train": self.num_train, "val": self.num_eval}
        attempts = 0
        for split in ("val", "train"):
            while len(splits[split]) < targets[split]:
                attempts += 1
                if attempts > 100 * (self.num_train + self.num_eval):
                    raise ValueError(
                        "data.num_train + data.num_eval exceed the distinct prompts the task has"
                    )
                row = self._row(rng, coin)
                key = row["prompt"][0]["content"]
                if key in seen:
                    continue
                seen.add(key)
                splits[split].append(row)
        return {split: [RowBlock(f"synthetic[{split}]", rows)] for split, rows in splits.items()}
