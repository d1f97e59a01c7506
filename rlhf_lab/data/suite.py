"""``data=suite``: graded preference tasks that rank objectives, each probing one property papers argue about.

Every task is generated deterministically from ``seed`` into train / val / test splits with disjoint prompts
(the validation split chooses hyperparameters, the test split is reported once), in a conversational or a
plain rendering:

- ``control``: the bundled category task (`rlhf_lab.data.synthetic`): which of two categories an object
  belongs to. Easy: it tells learned from not learned.
- ``in_context``: the prompt lists ``num_facts`` facts ("Ada has a red box. Ben has a blue box.") and asks
  about one; the chosen answer is read from the prompt. The rejected one is another fact's colour (for
  ``context_distractors`` of the pairs: the asked name decides) or a colour the prompt does not mention
  (reading the prompt decides). The facts are drawn per prompt, so nothing can be memorised.
- ``label_noise``: object-to-category knowledge over three categories, with ``flip_rate`` of the training
  pairs' chosen and rejected swapped (0.2 unless set); validation and test labels are clean. The prompts
  are the same at every flip rate: only the labels change. Where robust DPO, cDPO and IPO claim gains.
- ``length_bias``: the control task's content with filler clauses ("..., if you ask me, as far as I can
  tell.") on both answers, two on the long one and none or one on the short one. In training and validation
  the long one is always the ``long_side`` answer (the rejected, or the chosen); on the test split it is
  either, at random. A model that learnt the length, not the content, fails the test split; length-normalised
  objectives (SimPO, ORPO) and DPO are said to differ here.
- ``compositional``: the category question, plain ("Is a cat an animal or a tool?" "It is an animal.") or
  negated ("Which is a cat not: an animal or a tool?" "It is not a tool."). Every object is asked plainly;
  a quarter of them are also asked negated in training and validation, and the test split negates only
  the others: it combines a seen object with a seen operation, never together. A model that memorised each
  object's answer words scores below chance there.
- ``two_hop``: ``in_context`` with one more step: the prompt lists ``num_facts`` facts and who sits next to
  whom ("Cy sits next to Ada."), and asks about the thing of the one someone sits next to; the rejected
  colour is always another fact's, so only following both steps decides. The hard one: an SFT start leaves
  room on it (docs/leaderboard.md).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from rlhf_lab.data.sources import RowBlock, Splits
from rlhf_lab.data.synthetic import CATEGORIES, NAMES, PLACES, TEMPLATES
from rlhf_lab.errors import ConfigError, check_choice, check_range

TASKS = ("control", "in_context", "label_noise", "length_bias", "compositional", "two_hop")
RENDERINGS = ("conversational", "plain")
ROW_LAYOUTS = ("pairs", "prompts")
LONG_SIDES = ("rejected", "chosen")
SPLIT_NAMES = ("train", "val", "test")
DEFAULT_FLIP_RATE = {"label_noise": 0.2}

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "pink", "brown", "grey", "orange"]
THINGS = ["box", "cup", "hat", "bag", "kite", "ball", "coat", "lamp"]
FACT_TEMPLATES = ["{name} has a {colour} {thing}.", "The {thing} of {name} is {colour}."]
QUESTIONS = [
    "What colour is the {thing} of {name}?",
    "Which colour does {name}'s {thing} have?",
    "Tell me the colour of {name}'s {thing}.",
]
# label_noise: a wider knowledge base than the control task's, so each object is seen fewer times and the
# flipped labels matter.
KNOWLEDGE: dict[str, list[str]] = {
    **CATEGORIES,
    "a food": [
        "bread",
        "apple",
        "cheese",
        "rice",
        "carrot",
        "pear",
        "soup",
        "plum",
        "bean",
        "onion",
        "lemon",
        "melon",
        "grape",
        "olive",
        "cherry",
        "potato",
    ],
}
# Four words each, so two clauses are always longer than one.
FILLERS = [
    "as far as I know",
    "if you ask me",
    "I am quite sure",
    "going by my experience",
    "most people would agree",
    "at least I think",
]
ANSWER = "It is {value}."
# compositional: the question turned round; the right answer names the category the object is not.
NEGATED = [
    "Which is a {item} not: {a} or {b}?",
    "{name} found a {item} in the {place}. Which is it not, {a} or {b}?",
    "Tell me what a {item} is not: {a} or {b}.",
]
NOT_ANSWER = "It is not {value}."


# The answer a completion gives: "It is [not] <value>" up to the first comma or full stop (filler clauses come
# after a comma, so they never change it). Values are lower case ("an animal", "red"): a degenerate "It is It
# is ..." gives none.
ANSWER_PATTERN = re.compile(r"It is (not )?([a-z][a-z ]*?)\s*[,.]")


def answer_of(text: str) -> tuple[bool, str] | None:
    """The first answer ``text`` gives: (negated, value), or None when it gives none.

    ``answer_of("It is an animal, if you ask me.") == (False, "an animal")``;
    ``answer_of("It is not a tool.") == (True, "a tool")``; ``answer_of("It is It is") is None``.
    """
    match = ANSWER_PATTERN.search(text)
    return None if match is None else (match.group(1) is not None, match.group(2))


def _same_answer(completion: str, chosen: str) -> bool:
    """The completion's first answer is the chosen one's: value and polarity, filler ignored."""
    given, right = answer_of(completion), answer_of(chosen)
    return given is not None and given == right


#: Task -> checker(completion, chosen) -> whether the completion gives the right answer. On held-out splits
#: the chosen answer is always the right one (only training labels are ever flipped); every task answers
#: "It is [not] <value>.", so one checker serves them all, keyed by task so a new task can bring its own.
CHECKERS: dict[str, Callable[[str, str], bool]] = {task: _same_answer for task in TASKS}


def answer_correct(task: str, completion: str, chosen: str) -> bool:
    """Whether a greedy ``completion`` of a held-out ``task`` prompt gives the right answer (``chosen``)."""
    check_choice("data.source.task", task, TASKS)
    return CHECKERS[task](completion, chosen)


def answer_words(completion: str) -> int:
    """The completion's length in words, up to and including its first full stop (length_bias: 3 or 4 for
    a bare answer, 4 more per filler clause); the whole completion when it has none."""
    sentence = completion.split(".", 1)[0]
    return len(sentence.split())


def generation_metrics(
    task: str, completions: Sequence[str], chosen: Sequence[str], split: str
) -> dict[str, float]:
    """``<split>/generation_accuracy``: the share of ``completions`` giving the right answer; with
    ``length_bias`` also ``<split>/answer_length``: their mean length in words (`answer_words`). Empty for
    no completions."""
    if not completions:
        return {}
    right = [answer_correct(task, c, r) for c, r in zip(completions, chosen, strict=True)]
    metrics = {f"{split}/generation_accuracy": sum(right) / len(right)}
    if task == "length_bias":
        metrics[f"{split}/answer_length"] = sum(map(answer_words, completions)) / len(completions)
    return metrics


@dataclass
class Pair:
    """One generated pair before rendering; ``question`` identifies the prompt (splits never share one)."""

    question: str
    chosen: str
    rejected: str


def _category_pair(rng: random.Random, knowledge: dict[str, list[str]], templates: list[str]) -> Pair:
    category, other = rng.sample(sorted(knowledge), 2)
    item = rng.choice(knowledge[category])
    first, second = (category, other) if rng.random() < 0.5 else (other, category)
    question = rng.choice(templates).format(
        item=item, a=first, b=second, name=rng.choice(NAMES), place=rng.choice(PLACES)
    )
    return Pair(question, ANSWER.format(value=category), ANSWER.format(value=other))


def _padded(answer: str, rng: random.Random, clauses: int) -> str:
    """``answer`` with ``clauses`` filler clauses before its full stop."""
    return answer[:-1] + "".join(f", {clause}" for clause in rng.sample(FILLERS, clauses)) + "."


@dataclass
class SuiteTask:
    """One task of the suite, as train / val / test rows.

    Attributes:
        task: One of `TASKS`.
        num_train: Training pairs.
        num_eval: Validation pairs (hyperparameter selection).
        num_test: Test pairs (reported once).
        seed: Generator seed; same seed, same rows.
        rendering: ``conversational`` (messages, the model's chat template) or ``plain`` (prompt text ending
            in ``Answer:`` and completions as text).
        rows: ``pairs`` (prompt, chosen, rejected) or ``prompts`` (prompt and the chosen ``answer``, for
            online RL with `rlhf_lab.rewards.exact_match`).
        flip_rate: Share of training pairs with chosen and rejected swapped (held-out labels stay clean);
            ``None``: the task's own (0.2 for ``label_noise``, else 0).
        num_facts: ``in_context`` and ``two_hop``: facts per prompt (more is harder; ``two_hop`` needs 2).
        context_distractors: ``in_context``: share of pairs whose rejected colour is another fact's (the
            asked name decides: harder); the others reject a colour the prompt does not mention.
        long_side: ``length_bias``: which answer carries the filler in training and validation.
    """

    #: The splits `load` returns (the leaderboard reports a run on ``test``).
    SPLITS: ClassVar[tuple[str, ...]] = SPLIT_NAMES

    task: str = "in_context"
    num_train: int = 2000
    num_eval: int = 256
    num_test: int = 256
    seed: int = 1234
    rendering: str = "conversational"
    rows: str = "pairs"
    flip_rate: float | None = None
    num_facts: int = 2
    context_distractors: float = 0.5
    long_side: str = "rejected"

    def __post_init__(self) -> None:
        check_choice("data.source.task", self.task, TASKS)
        check_choice("data.source.rendering", self.rendering, RENDERINGS)
        check_choice("data.source.rows", self.rows, ROW_LAYOUTS)
        check_choice("data.source.long_side", self.long_side, LONG_SIDES)
        if self.flip_rate is not None:
            check_range("data.source.flip_rate", self.flip_rate, 0.0, 0.5, high_inclusive=False)
        check_range("data.source.num_facts", self.num_facts, 1, len(COLOURS) - 1)
        if self.task == "two_hop":
            # Another fact's colour is the rejected answer, and the names (facts + the friend) must be distinct.
            check_range("data.source.num_facts", self.num_facts, 2, len(NAMES) - 1)
        check_range("data.source.context_distractors", self.context_distractors, 0.0, 1.0)
        for key in ("num_train", "num_eval", "num_test"):
            check_range(f"data.source.{key}", getattr(self, key), 0)

    @property
    def effective_flip_rate(self) -> float:
        """The share of training pairs flipped: ``flip_rate``, or the task's default."""
        return self.flip_rate if self.flip_rate is not None else DEFAULT_FLIP_RATE.get(self.task, 0.0)

    # ------------------------------------------------------------------------------------- tasks
    def _in_context(self, rng: random.Random, split: str) -> Pair:
        names = rng.sample(NAMES, self.num_facts)
        colours = rng.sample(COLOURS, self.num_facts)
        thing = rng.choice(THINGS)
        facts = " ".join(
            rng.choice(FACT_TEMPLATES).format(name=name, colour=colour, thing=thing)
            for name, colour in zip(names, colours, strict=True)
        )
        asked = rng.randrange(self.num_facts)
        # The rejected colour: another fact's (the name decides), or one the prompt does not mention (reading
        # the prompt decides).
        mentioned = [c for i, c in enumerate(colours) if i != asked]
        unmentioned = [c for c in COLOURS if c not in colours]
        in_context = mentioned and rng.random() < self.context_distractors
        distractor = rng.choice(mentioned if in_context else unmentioned)
        question = f"{facts} {rng.choice(QUESTIONS).format(name=names[asked], thing=thing)}"
        return Pair(question, ANSWER.format(value=colours[asked]), ANSWER.format(value=distractor))

    def _two_hop(self, rng: random.Random, split: str) -> Pair:
        *owners, friend = rng.sample(NAMES, self.num_facts + 1)
        colours = rng.sample(COLOURS, self.num_facts)
        thing = rng.choice(THINGS)
        sentences = [
            rng.choice(FACT_TEMPLATES).format(name=name, colour=colour, thing=thing)
            for name, colour in zip(owners, colours, strict=True)
        ]
        asked = rng.randrange(self.num_facts)
        # The link sits anywhere among the facts: its position says nothing about the answer.
        sentences.insert(rng.randrange(len(sentences) + 1), f"{friend} sits next to {owners[asked]}.")
        question = f"{' '.join(sentences)} What colour is the {thing} of the one {friend} sits next to?"
        distractor = rng.choice([c for i, c in enumerate(colours) if i != asked])
        return Pair(question, ANSWER.format(value=colours[asked]), ANSWER.format(value=distractor))

    def _control(self, rng: random.Random, split: str) -> Pair:
        return _category_pair(rng, CATEGORIES, TEMPLATES)

    def _label_noise(self, rng: random.Random, split: str) -> Pair:
        return _category_pair(rng, KNOWLEDGE, TEMPLATES)

    def _length_bias(self, rng: random.Random, split: str) -> Pair:
        pair = _category_pair(rng, CATEGORIES, TEMPLATES)
        # Both answers may carry filler, the long one always more: length, not the filler's words, is the cue.
        short, long = rng.choice((0, 1)), 2
        side = self.long_side if split != "test" else rng.choice(LONG_SIDES)
        chosen_clauses, rejected_clauses = (long, short) if side == "chosen" else (short, long)
        pair.chosen = _padded(pair.chosen, rng, chosen_clauses)
        pair.rejected = _padded(pair.rejected, rng, rejected_clauses)
        return pair

    def _compositional(self, rng: random.Random, split: str) -> Pair:
        items = [item for category in sorted(CATEGORIES) for item in CATEGORIES[category]]
        category = rng.choice(sorted(CATEGORIES))
        other = next(c for c in sorted(CATEGORIES) if c != category)
        item = rng.choice(CATEGORIES[category])
        # Every object is asked about plainly; a quarter of them also negated. The test split negates the others.
        negatable = items.index(item) % 4 == 0
        negated = not negatable if split == "test" else negatable and rng.random() < 0.5
        if split == "test" and not negated:
            item = rng.choice([i for i in CATEGORIES[category] if items.index(i) % 4 != 0])
            negated = True
        first, second = (category, other) if rng.random() < 0.5 else (other, category)
        template = rng.choice(NEGATED if negated else TEMPLATES)
        question = template.format(
            item=item, a=first, b=second, name=rng.choice(NAMES), place=rng.choice(PLACES)
        )
        if negated:
            return Pair(question, NOT_ANSWER.format(value=other), NOT_ANSWER.format(value=category))
        return Pair(question, ANSWER.format(value=category), ANSWER.format(value=other))

    def _generator(self) -> Callable[[random.Random, str], Pair]:
        return getattr(self, f"_{self.task}")

    # ----------------------------------------------------------------------------------- rendering
    def _render(self, pair: Pair) -> dict[str, Any]:
        if self.rendering == "plain":
            prompt: Any = f"Question: {pair.question}\nAnswer:"
            chosen: Any = f" {pair.chosen}"
            rejected: Any = f" {pair.rejected}"
        else:
            prompt = [{"role": "user", "content": pair.question}]
            chosen = [{"role": "assistant", "content": pair.chosen}]
            rejected = [{"role": "assistant", "content": pair.rejected}]
        if self.rows == "prompts":
            return {"prompt": prompt, "answer": pair.chosen}
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}

    def load(self) -> Splits:
        """Rows per split (``train``, ``val``, ``test``); prompts never repeat across or within splits."""
        rng = random.Random(f"{self.seed}:{self.task}:{self.num_facts}")
        generate = self._generator()
        seen: set[str] = set()
        targets = {"train": self.num_train, "val": self.num_eval, "test": self.num_test}
        pairs: dict[str, list[Pair]] = {split: [] for split in SPLIT_NAMES}
        budget = 20 * sum(targets.values()) + 1000
        # Held-out splits first, so their size never depends on how many training rows are asked for.
        for split in ("test", "val", "train"):
            while len(pairs[split]) < targets[split]:
                budget -= 1
                if budget < 0:
                    raise ConfigError(
                        f"data.source: task {self.task} has fewer distinct prompts than num_train + num_eval "
                        f"+ num_test = {sum(targets.values())}; ask for fewer rows"
                    )
                pair = generate(rng, split)
                if pair.question in seen:
                    continue
                seen.add(pair.question)
                pairs[split].append(pair)
        # Its own generator: the prompts are the same at every flip rate.
        coin = random.Random(f"{self.seed}:{self.task}:flip")
        rate = self.effective_flip_rate
        for pair in pairs["train"]:
            if coin.random() < rate:
                pair.chosen, pair.rejected = pair.rejected, pair.chosen
        return {
            split: [RowBlock(f"suite[{self.task}][{split}]", [self._render(p) for p in rows])]
            for split, rows in pairs.items()
        }
