"""data=suite: each task's rows, splits, renderings and the property it probes; data.eval_split."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlhf_lab.data import PreferenceDataModule, SuiteTask, SyntheticPreferences
from rlhf_lab.data.formats import convert_rows
from rlhf_lab.data.suite import (
    FILLERS,
    KNOWLEDGE,
    TASKS,
    answer_correct,
    answer_of,
    answer_words,
    generation_metrics,
)
from rlhf_lab.data.synthetic import NAMES
from rlhf_lab.errors import ConfigError
from tests.conftest import compose_config
from tests.test_e2e import cli


def rows(task: SuiteTask, split: str) -> list[dict]:
    (block,) = task.load()[split]
    return block.rows


def text(value: object) -> str:
    return value if isinstance(value, str) else value[0]["content"]  # type: ignore[index]


def answer(value: object) -> str:
    match = re.match(r"\s*It is (.+?)[,.]", text(value))
    assert match, value
    return match.group(1)


@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("rendering", ["conversational", "plain"])
def test_every_task_is_deterministic_with_disjoint_splits_in_both_renderings(
    name: str, rendering: str
) -> None:
    task = SuiteTask(task=name, num_train=300, num_eval=40, num_test=50, rendering=rendering, seed=7)
    splits = task.load()
    assert {split: len(blocks[0].rows) for split, blocks in splits.items()} == {
        "train": 300,
        "val": 40,
        "test": 50,
    }
    assert (
        splits
        == SuiteTask(task=name, num_train=300, num_eval=40, num_test=50, rendering=rendering, seed=7).load()
    )
    assert (
        splits
        != SuiteTask(task=name, num_train=300, num_eval=40, num_test=50, rendering=rendering, seed=8).load()
    )
    prompts = {split: {text(row["prompt"]) for row in blocks[0].rows} for split, blocks in splits.items()}
    assert sum(map(len, prompts.values())) == 390  # no prompt repeats, within or across splits
    for blocks in splits.values():
        examples, counts = convert_rows(blocks[0].rows, "auto", file=blocks[0].name)
        assert len(examples) == len(blocks[0].rows) and all(e.is_pair for e in examples), counts
        assert isinstance(blocks[0].rows[0]["prompt"], str) == (rendering == "plain")
    # The held-out splits do not depend on how many training rows are asked for.
    more = SuiteTask(task=name, num_train=350, num_eval=40, num_test=50, rendering=rendering, seed=7).load()
    assert more["val"] == splits["val"] and more["test"] == splits["test"]


def test_prompts_rows_carry_the_chosen_answer() -> None:
    pairs = rows(SuiteTask(task="in_context", num_train=20, num_eval=4, num_test=4), "train")
    prompts = rows(
        SuiteTask(task="in_context", num_train=20, num_eval=4, num_test=4, rows="prompts"), "train"
    )
    assert [p["prompt"] for p in prompts] == [p["prompt"] for p in pairs]
    assert [p["answer"] for p in prompts] == [text(p["chosen"]) for p in pairs]


def test_in_context_answers_are_read_from_the_prompt() -> None:
    task = SuiteTask(task="in_context", num_train=2000, num_eval=10, num_test=10, num_facts=3)
    in_prompt = 0
    for row in rows(task, "train"):
        prompt = text(row["prompt"])
        question = prompt.rsplit(". ", 1)[-1]
        (name,) = [name for name in NAMES if re.search(rf"\b{name}\b", question)]
        chosen, rejected = answer(row["chosen"]), answer(row["rejected"])
        # The asked name's own fact names the chosen colour.
        assert re.search(rf"{name} has a {chosen} |The \w+ of {name} is {chosen}\.", prompt), prompt
        assert rejected != chosen
        in_prompt += f" {rejected} " in f" {prompt.replace('.', ' ')} "
    # Half the pairs reject another fact's colour, the rest a colour the prompt never mentions.
    assert in_prompt / 2000 == pytest.approx(0.5, abs=0.04)


def test_label_noise_flips_only_training_labels_at_the_given_rate() -> None:
    def category(row: dict) -> str:
        return answer(row["chosen"])

    def right(row: dict) -> str:
        item = next(
            i
            for items in KNOWLEDGE.values()
            for i in items
            if re.search(rf"\b(?:a|the) {i}\b", text(row["prompt"]))
        )
        return next(c for c, items in KNOWLEDGE.items() if item in items)

    clean = SuiteTask(task="label_noise", flip_rate=0.0, num_train=2000, num_eval=100, num_test=100)
    assert all(category(row) == right(row) for row in rows(clean, "train"))
    for rate in (0.1, 0.2, 0.4):
        noisy = SuiteTask(task="label_noise", flip_rate=rate, num_train=2000, num_eval=100, num_test=100)
        train = rows(noisy, "train")
        assert [r["prompt"] for r in train] == [r["prompt"] for r in rows(clean, "train")]  # same prompts
        flipped = sum(category(row) != right(row) for row in train) / len(train)
        assert flipped == pytest.approx(rate, abs=0.03)
        for split in ("val", "test"):  # held-out labels stay clean
            assert rows(noisy, split) == rows(clean, split)
    # The task's own default flip rate.
    assert SuiteTask(task="label_noise").effective_flip_rate == 0.2
    assert SuiteTask(task="control").effective_flip_rate == 0.0


@pytest.mark.parametrize("long_side", ["rejected", "chosen"])
def test_length_bias_is_systematic_in_training_and_balanced_on_test(long_side: str) -> None:
    task = SuiteTask(task="length_bias", long_side=long_side, num_train=1000, num_eval=200, num_test=400)

    def clauses(value: object) -> int:
        return sum(filler in text(value) for filler in FILLERS)

    for split in ("train", "val"):
        for row in rows(task, split):
            long, short = (
                (row["chosen"], row["rejected"])
                if long_side == "chosen"
                else (row["rejected"], row["chosen"])
            )
            assert clauses(long) == 2 and clauses(short) in (0, 1)
            assert len(text(long)) > len(text(short))
    test = rows(task, "test")
    chosen_longer = sum(clauses(r["chosen"]) > clauses(r["rejected"]) for r in test) / len(test)
    assert chosen_longer == pytest.approx(0.5, abs=0.08)
    # The content decides every pair: the chosen names the object's category.
    control = {i: c for c, items in KNOWLEDGE.items() for i in items}
    for row in test:
        item = next(i for i in control if re.search(rf"\b(?:a|the) {i}\b", text(row["prompt"])))
        assert answer(row["chosen"]) == control[item]


def test_compositional_negates_on_test_only_objects_never_negated_in_training() -> None:
    task = SuiteTask(task="compositional", num_train=1500, num_eval=200, num_test=200)
    items = {i: c for c, items in KNOWLEDGE.items() if c in ("an animal", "a tool") for i in items}

    def parse(row: dict) -> tuple[str, bool]:
        prompt = text(row["prompt"])
        item = next(i for i in items if re.search(rf"\b(?:a|the) {i}\b", prompt))
        return item, " not" in prompt

    def right(row: dict) -> bool:
        item, negated = parse(row)
        other = next(c for c in ("an animal", "a tool") if c != items[item])
        expected = f"It is not {other}." if negated else f"It is {items[item]}."
        return text(row["chosen"]) == expected and text(row["rejected"]) != expected

    seen = {split: Counter(parse(row) for row in rows(task, split)) for split in ("train", "val", "test")}
    negated_in_training = {item for item, negated in seen["train"] if negated}
    tested = {item for item, negated in seen["test"]}
    assert all(negated for _, negated in seen["test"])  # the test split asks negated questions only
    assert tested and not tested & negated_in_training  # about objects never negated in training
    assert tested <= {item for item, negated in seen["train"] if not negated}  # but asked plainly there
    assert {item for item, negated in seen["val"] if negated} <= negated_in_training
    assert all(right(row) for split in ("train", "val", "test") for row in rows(task, split))


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"data.source.task='ranking'.*in_context"):
        SuiteTask(task="ranking")
    with pytest.raises(ConfigError, match="data.source.flip_rate"):
        SuiteTask(task="label_noise", flip_rate=0.5)
    with pytest.raises(ConfigError, match="data.source.rendering"):
        SuiteTask(rendering="chat")
    with pytest.raises(ConfigError, match="fewer distinct prompts"):
        SuiteTask(task="control", num_train=20_000).load()


def test_eval_split_serves_the_test_split_as_held_out() -> None:
    source = SuiteTask(task="control", num_train=50, num_eval=10, num_test=12)
    test = PreferenceDataModule(source, eval_split="test").load_examples()
    val = PreferenceDataModule(source).load_examples()
    assert len(test["val"]) == 12 and len(val["val"]) == 10
    assert [e.prompt for e in test["train"]] == [e.prompt for e in val["train"]]
    assert {str(e.prompt) for e in test["val"]}.isdisjoint(str(e.prompt) for e in val["val"])
    with pytest.raises(ConfigError, match=r"data.eval_split='test'.*SyntheticPreferences.*train, val"):
        PreferenceDataModule(
            SyntheticPreferences(num_train=50, num_eval=10), eval_split="test"
        ).load_examples()
    with pytest.raises(ConfigError, match="data.eval_split"):
        PreferenceDataModule(source, eval_split="train")


@pytest.mark.slow
def test_dpo_accuracy_falls_with_the_flip_rate(tmp_path: Path) -> None:
    """The label-noise task is informative: clean held-out accuracy drops as training labels are flipped."""
    accuracies = {}
    for rate in (0.0, 0.4):
        run_dir = tmp_path / f"flip{rate}"
        result = cli(
            "data=suite",
            "data.source.task=label_noise",
            f"data.source.flip_rate={rate}",
            "data.source.num_train=1000",
            "trainer.max_epochs=2",
            "optim.lr=1e-3",
            "trainer.enable_progress_bar=false",
            run_dir=run_dir,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        accuracies[rate] = json.loads((run_dir / "summary.json").read_text())["val/rewards/accuracies"]
    assert accuracies[0.0] >= 0.9
    assert accuracies[0.4] <= accuracies[0.0] - 0.15, accuracies


@pytest.mark.parametrize("experiment", ["suite", "suite_full", "suite_label_noise", "suite_dpo_family"])
def test_every_run_a_suite_plans_composes(experiment: str, tmp_path: Path) -> None:
    """Each planned command line is a valid config (its task, grid keys and variants exist), before any run;
    so is each task's SFT start, and every run of a task starts from that task's export."""
    from rlhf_lab.leaderboard import plan, plan_starts

    cfg = compose_config([f"experiment={experiment}"], tiny=False)
    starts = plan_starts(cfg, [])
    supervised = experiment != "suite_scratch"
    assert all((start.stage is not None) == supervised for start in starts.values())
    # Not trained: the overrides its export would give (`Start.overrides` reads the trained stage's config).
    from_export = {
        task: ["model=hub", f"model.name_or_path={start.export}"] if start.stage is not None else []
        for task, start in starts.items()
    }
    jobs = plan(cfg, tmp_path, [], starts=from_export)
    assert len({job.name for job in jobs}) == len(jobs)
    # The seed changes no key, and every task gets the same objectives: one task's runs, each task's first.
    first_of_each_task = {job.task: job for job in reversed(jobs)}.values()
    checked = [job for job in jobs if job.seed == jobs[0].seed and job.task == jobs[0].task]
    for job in [*checked, *first_of_each_task]:
        overrides = [o for o in job.command[3:] if not o.startswith("hydra.")]
        run = compose_config(overrides, tiny=False)
        assert run.data.source._target_ == "rlhf_lab.data.SuiteTask"
        for key, value in job.setting.items():
            assert OmegaConf.select(run, key) == value
        if supervised:
            assert run.model.name_or_path == str(starts[job.task].export)
        else:
            assert run.model._target_.endswith("TinyModel")
    for start in starts.values():
        if start.stage is not None:
            sft = compose_config([o for o in start.stage.overrides if not o.startswith("hydra.")], tiny=False)
            assert sft.algo._target_.endswith("SFT") and sft.data.source._target_.endswith("SuiteTask")
    # One start per task, each in its own cached stage directory.
    if supervised:
        assert len({str(start.export) for start in starts.values()}) == len(starts)
    tasks = {job.task for job in jobs}
    if experiment == "suite_dpo_family":  # the suite's tasks set to null are left out
        assert tasks == {"in_context", "two_hop"} and len({job.objective for job in jobs}) == 19
    else:
        assert len(tasks) >= 4


def test_suite_scratch_is_the_suite_from_random_init() -> None:
    from rlhf_lab.leaderboard import plan_starts

    scratch = compose_config(["experiment=suite_scratch"], tiny=False).leaderboard
    suite = compose_config(["experiment=suite"], tiny=False).leaderboard
    assert scratch.start == "scratch" and suite.start == "sft"
    cfg = compose_config(["experiment=suite_scratch"], tiny=False)
    assert all(start.stage is None and not start.overrides for start in plan_starts(cfg, []).values())
    # Everything else is the suite's: the same objectives, tasks, grid, budget and seeds.
    for key in ("objectives", "tasks", "grid", "seeds", "shared_overrides", "samples"):
        assert scratch[key] == suite[key], key


# Hand-worked rows: (task, greedy completion, the test row's chosen answer, right?).
CHECKED = [
    ("control", "It is an animal.", "It is an animal.", True),
    ("control", "It is a tool.", "It is an animal.", False),  # the other category
    ("control", "It is an animal or a tool.", "It is an animal.", False),  # hedging names no one answer
    ("control", "It is It is It is It is", "It is an animal.", False),  # degenerate: no answer at all
    ("control", "", "It is an animal.", False),
    ("in_context", "It is red. It is blue.", "It is red.", True),  # the first answer counts
    ("in_context", "It is blue. It is red.", "It is red.", False),
    (
        "length_bias",
        "It is a tool, if you ask me, as far as I know.",
        "It is a tool.",
        True,
    ),  # filler: content
    ("length_bias", "It is a tool.", "It is a tool, at least I think, I am quite sure.", True),
    ("length_bias", "It is an animal, if you ask me.", "It is a tool, if you ask me.", False),
    ("compositional", "It is not a tool.", "It is not a tool.", True),
    ("compositional", "It is a tool.", "It is not a tool.", False),  # the polarity is the answer's half
    ("compositional", "It is not an animal.", "It is not a tool.", False),
    ("two_hop", "It is green.", "It is green.", True),
    ("two_hop", "green", "It is green.", False),  # not in the answer's form
]


@pytest.mark.parametrize(("task", "completion", "chosen", "right"), CHECKED)
def test_answer_checkers_on_hand_worked_rows(task: str, completion: str, chosen: str, right: bool) -> None:
    assert answer_correct(task, completion, chosen) is right


def test_answers_and_generation_metrics_by_hand() -> None:
    assert answer_of("It is an animal, if you ask me.") == (False, "an animal")
    assert answer_of("<|assistant|>It is not a tool.</s>") == (True, "a tool")
    assert answer_of("It is It is") is None
    # Words up to the first full stop: a bare answer is 4, then "if you ask me" 4 and "as far as I know" 5.
    assert answer_words("It is a tool.") == 4
    assert answer_words("It is a tool, if you ask me, as far as I know. It is") == 13
    assert answer_words("It is It is It is") == 6
    completions = ["It is a tool, if you ask me.", "It is an animal.", "It is It is It is"]
    chosen = ["It is a tool.", "It is a tool.", "It is an animal, at least I think."]
    # 1 of 3 right; lengths 8, 4, 6 -> 6.
    assert generation_metrics("length_bias", completions, chosen, "test") == {
        "test/generation_accuracy": pytest.approx(1 / 3),
        "test/answer_length": 6.0,
    }
    assert generation_metrics("control", completions[:2], chosen[:2], "val") == {
        "val/generation_accuracy": 0.5
    }
    assert generation_metrics("control", [], [], "test") == {}
    with pytest.raises(ConfigError, match="data.source.task='ranking'"):
        answer_correct("ranking", "It is red.", "It is red.")


def test_every_held_out_chosen_answer_is_right_and_every_rejected_wrong() -> None:
    """The checker agrees with the labels on every task's test rows: it scores answers, not the phrasing."""
    for name in TASKS:
        for row in rows(SuiteTask(task=name, num_train=40, num_eval=8, num_test=40), "test"):
            chosen, rejected = text(row["chosen"]), text(row["rejected"])
            assert answer_correct(name, chosen, chosen), (name, chosen)
            assert not answer_correct(name, rejected, chosen), (name, rejected, chosen)


def test_two_hop_answers_follow_the_link_to_a_fact() -> None:
    task = SuiteTask(task="two_hop", num_train=500, num_eval=10, num_test=10, num_facts=3)
    for row in rows(task, "train"):
        prompt = text(row["prompt"])
        (friend, owner) = re.search(r"(\w+) sits next to (\w+)\.", prompt).groups()  # type: ignore[union-attr]
        assert prompt.endswith(f"of the one {friend} sits next to?")
        chosen, rejected = answer(row["chosen"]), answer(row["rejected"])
        # The chosen colour is the owner's; the rejected one is another fact's (both in the prompt).
        assert re.search(rf"{owner} has a {chosen} |The \w+ of {owner} is {chosen}\.", prompt), prompt
        assert rejected != chosen and re.search(rf"\b{rejected}\b", prompt)
    with pytest.raises(ConfigError, match="data.source.num_facts"):
        SuiteTask(task="two_hop", num_facts=1)


@pytest.mark.parametrize("objective", ["dpo", "ipo", "simpo"])
def test_sft_then_experiments_compose_two_stages(objective: str) -> None:
    cfg = compose_config([f"experiment=sft_then_{objective}"], tiny=False)
    assert [stage.name for stage in cfg.stages] == ["sft", objective]
    assert list(cfg.stages[1].overrides) == [f"algo={objective}"]
