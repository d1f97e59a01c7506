"""Best-of-N and rejection sampling (``python -m rlhf_lab.sample``): the choice worked by hand, exact counts,
files rlhf_lab reads back, best-of-N above N=1, and an interrupted run resumed byte for byte."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from rlhf_lab.data.formats import convert_rows
from rlhf_lab.data.formats.registry import detect_format
from rlhf_lab.data.io import read_rows
from rlhf_lab.errors import ConfigError
from rlhf_lab.sample import main
from rlhf_lab.sampling.select import Choice, choose, summarize
from rlhf_lab.sampling.store import ChunkStore
from rlhf_lab.train import build
from tests.conftest import compose_config

#: The bundled RL task, small: prompts with an ``answer`` column; generation short.
TASK = (
    "data=synthetic_rl",
    "data.source.num_train=64",
    "data.source.num_eval=16",
    "trainer.accelerator=cpu",
    "max_new_tokens=8",
    "batch_size=4",
)
EVEN = "reward_functions=[tests.custom_rewards.even_tokens]"
OUTPUTS = ("sft.jsonl", "pairs.jsonl", "samples.jsonl", "summary.json", "settings.json")


def sample(out_dir: Path, *args: str) -> dict:
    return main([f"out_dir={out_dir}", *TASK, *args])


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------------ by hand
def test_choose_by_hand() -> None:
    """Best: the highest reward, lowest index among equals; worst: the lowest, lowest index among equals;
    random: one of those strictly below the best, by the seed; all equal: no pair."""
    rewards = [0.5, 1.0, 0.2, 1.0, 0.2]
    assert choose(rewards, "best_vs_worst", 0) == (best_worst := choose(rewards, "best_vs_worst", 7))
    assert (best_worst.best, best_worst.rejected) == (1, 2)
    lower = [0, 2, 4]
    for seed in range(5):
        drawn = choose(rewards, "best_vs_random", seed)
        assert (drawn.best, drawn.rejected) == (1, lower[random.Random(seed).randrange(3)])
    assert {choose(rewards, "best_vs_random", seed).rejected for seed in range(40)} == set(lower)
    tie = choose([0.3, 0.3, 0.3], "best_vs_worst", 0)
    assert (tie.best, tie.rejected) == (0, None)
    # Blank completions are never chosen: the best and worst among the others.
    blank = [False, True, False, False, True]
    assert choose(rewards, "best_vs_worst", 0, blank) == Choice(3, 2)
    assert choose([1.0, 0.0], "best_vs_worst", 0, [True, True]) == Choice(None, None)
    with pytest.raises(ConfigError, match="pairs=.*best_vs_worst"):
        choose(rewards, "best_vs_best", 0)


def _record(
    rewards: list[float] | None,
    best: int | None,
    rejected: int | None,
    keep: bool = True,
    blank: bool = False,
) -> dict:
    return {
        "rewards": rewards,
        "best": best,
        "rejected": rejected,
        "keep": keep,
        "truncated": [False, True],
        "blank": [blank, blank],
    }


def test_summary_by_hand() -> None:
    """Three prompts of N=2 scored (one tie, one below min_reward), one with both completions blank, and one
    a reward failed on.

    first samples 0.0, 1.0, 0.5 -> mean 0.5; best 1.0, 1.0, 0.5 -> 0.833...; worst 0.0, 1.0, 0.5 -> 0.5;
    all six 0, 1, 1, 1, 0.5, 0.5: mean 4/6, sample variance (4/9 + 3/9 + 3/9 + 2/36 * 2) / 5 = 2/9 * ... (below).
    """
    records = [
        _record([0.0, 1.0], 1, 0),
        _record([1.0, 1.0], 0, None),
        _record([0.5, 0.5], 0, None, keep=False),
        _record([0.25, 0.75], None, None, keep=False, blank=True),
        _record(None, None, None, keep=False),
    ]
    summary = summarize(records, 2)
    every = [0.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.75]
    mean = sum(every) / 8
    std = (sum((x - mean) ** 2 for x in every) / 7) ** 0.5
    assert summary == {
        "prompts": 5,
        "num_samples": 2,
        "completions": 10,
        "sft_rows": 2,
        "pairs": 1,
        "ties": 2,
        "identical_pairs": 0,
        "below_min_reward": 1,
        "reward_errors": 1,
        "all_blank": 1,
        "blank_completions": 2,
        "frac_reward_zero_std": 2 / 3,
        "reward/first_mean": 0.5,
        "reward/best_mean": pytest.approx(2.5 / 3),
        "reward/worst_mean": 0.5,
        "reward/mean": pytest.approx(5 / 8),
        "reward/std": pytest.approx(std),
        "completions/clipped_ratio": 0.5,
    }
    assert std == pytest.approx(0.3779644730)


def test_chunks_are_whole_and_settings_must_match(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    store.check_settings({"num_samples": 4, "seed": 1})
    store.write(0, [{"index": 0}])
    (store.dir / ".chunk_000001.jsonl.tmp-123").write_text('{"index": 4')  # a killed writer's
    assert store.done() == {0}
    store.remove_partial()
    assert sorted(p.name for p in store.dir.iterdir()) == ["chunk_000000.jsonl"]
    store.check_settings({"num_samples": 4, "seed": 1})
    with pytest.raises(ConfigError, match=r"other settings \(num_samples, seed differ\)"):
        store.check_settings({"num_samples": 8, "seed": 2})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("num_samples=1", EVEN), "num_samples=1"),
        (("pairs=best_vs_best", EVEN), "pairs='best_vs_best' is not supported; choose one of: best_vs_worst"),
        (("split=test", EVEN), "split='test'"),
        ((), "sampling needs a reward"),
        (("weights=export", EVEN), "weights=export names a run's weights: give run_dir"),
        ((EVEN, "data.source.num_trian=3"), "Could not override 'data.source.num_trian'"),
        ((EVEN, "model=nope"), "Could not find 'model/nope'"),
    ],
)
def test_bad_options_fail_before_any_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: tuple[str, ...], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        sample(tmp_path / "out", *args)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------- end to end
def test_best_of_n_counts_files_and_reward_gain(tmp_path: Path) -> None:
    """10 prompts x 4 samples in chunks of 4: every count exact, one record per prompt, the files read back
    through rlhf_lab's data layer (layouts detected), and best-of-N's reward above N=1's."""
    out = tmp_path / "bon"
    summary = sample(out, EVEN, "num_samples=4", "max_prompts=10", "chunk_size=4")
    assert sorted(p.name for p in (out / "chunks").iterdir()) == [f"chunk_00000{i}.jsonl" for i in range(3)]
    records = lines(out / "samples.jsonl")
    assert [r["index"] for r in records] == list(range(10))
    assert all(len(r["completions"]) == len(r["rewards"]) == 4 for r in records)
    for record in records:
        assert record["rewards"][record["best"]] == max(record["rewards"])
        assert record["rewards"] == record["per_reward"]["even_tokens"]
        assert record["columns"]["answer"] in ("It is a tool.", "It is an animal.")
    pairs = [r for r in records if r["rejected"] is not None]
    ties = [r for r in records if len(set(r["rewards"])) == 1]
    assert summary["prompts"] == 10 and summary["completions"] == 40 and summary["sft_rows"] == 10
    assert (summary["pairs"], summary["ties"], summary["identical_pairs"]) == (len(pairs), len(ties), 0)
    assert summary["pairs"] + summary["ties"] + summary["all_blank"] == 10
    assert summary == json.loads((out / "summary.json").read_text())
    # Best-of-N over N=1 (the first sample), as measured on this seed; and the summary is the records'.
    first = sum(r["rewards"][0] for r in records) / 10
    best = sum(max(r["rewards"]) for r in records) / 10
    assert summary["reward/first_mean"] == pytest.approx(first)
    assert summary["reward/best_mean"] == pytest.approx(best)
    assert best > first
    assert (round(first, 4), round(best, 4)) == MEASURED

    sft, pair_rows = lines(out / "sft.jsonl"), lines(out / "pairs.jsonl")
    assert len(sft) == 10 and len(pair_rows) == summary["pairs"]
    assert sft[0] == {
        "prompt": records[0]["prompt"],
        "completion": records[0]["completions"][records[0]["best"]],
    }
    assert detect_format(sft[0], sft[0]) == "sft"
    assert detect_format(pair_rows[0], pair_rows[0]) == "conversational"
    examples, counts = convert_rows(read_rows(out / "pairs.jsonl"), file="pairs.jsonl")
    assert counts == {"rows": summary["pairs"], "identical_dropped": 0}
    assert [e.chosen for e in examples] == [r["completions"][r["best"]] for r in pairs]
    # Trainable as they are: SFT on sft.jsonl, DPO on pairs.jsonl (the data module tokenises every row).
    for algo, name, rows in (("sft", "sft.jsonl", 10), ("dpo", "pairs.jsonl", summary["pairs"])):
        path = out / name
        _, datamodule, _ = build(
            compose_config(
                [
                    f"algo={algo}",
                    "data=jsonl",
                    f"data.source.train_path={path}",
                    f"data.source.eval_path={path}",
                ],
                tiny=False,
            )
        )
        assert len(datamodule.datasets["train"]) == rows


#: reward/first_mean and reward/best_mean of the run above (tiny model, seed 42, even_tokens, N=4).
MEASURED = (0.475, 0.675)


def test_no_pair_where_the_rewards_agree_and_min_reward_filters_sft(tmp_path: Path) -> None:
    """exact_match on the untrained tiny model: every reward 0, so every prompt is a tie (no pair, counted),
    and ``min_reward=1`` keeps no SFT row."""
    out = tmp_path / "ties"
    summary = sample(
        out,
        "reward_functions=[rlhf_lab.rewards.exact_match]",
        "max_prompts=6",
        "num_samples=3",
        "min_reward=1",
    )
    assert (summary["prompts"], summary["ties"], summary["pairs"], summary["sft_rows"]) == (6, 6, 0, 0)
    assert summary["below_min_reward"] == 6 and summary["frac_reward_zero_std"] == 1.0
    assert summary["reward/best_mean"] == summary["reward/first_mean"] == 0.0
    assert (out / "pairs.jsonl").read_text() == "" and (out / "sft.jsonl").read_text() == ""


def test_best_vs_random_pairs_a_lower_completion(tmp_path: Path) -> None:
    summary = sample(tmp_path / "r", EVEN, "pairs=best_vs_random", "max_prompts=6", "num_samples=4")
    records = lines(tmp_path / "r" / "samples.jsonl")
    for record in records:
        if record["rejected"] is not None:
            assert record["rewards"][record["rejected"]] < max(record["rewards"])
    assert summary["pairs"] == sum(r["rejected"] is not None for r in records) > 0


def test_an_interrupted_run_resumes_byte_for_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after 1 of 3 chunks (and mid-write of the next), run again: only the 6 missing prompts are
    sampled, and every output equals an uninterrupted run's, byte for byte."""
    import rlhf_lab.sample as app

    args = (EVEN, "num_samples=3", "max_prompts=10", "chunk_size=4")
    sample(tmp_path / "whole", *args)

    sampled: list[int] = []
    real_sample = app.sample_prompts

    def counting(objective, datamodule, items, options):
        sampled.extend(index for index, _ in items)
        return real_sample(objective, datamodule, items, options)

    real_write = ChunkStore.write

    def dies_after_one(self, index, records):
        if index >= 1:
            (self.dir / f".chunk_{index:06d}.jsonl.tmp-99").write_text(json.dumps(records[0])[:50])
            raise KeyboardInterrupt("killed")
        real_write(self, index, records)

    monkeypatch.setattr(app, "sample_prompts", counting)
    monkeypatch.setattr(ChunkStore, "write", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        sample(tmp_path / "resumed", *args)
    assert ChunkStore(tmp_path / "resumed").done() == {0}
    assert not (tmp_path / "resumed" / "sft.jsonl").exists()
    monkeypatch.setattr(ChunkStore, "write", real_write)
    sampled.clear()
    sample(tmp_path / "resumed", *args)
    assert sampled == list(range(4, 10))
    for name in OUTPUTS:
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    for index in range(3):
        assert (ChunkStore(tmp_path / "resumed").path(index).read_bytes()) == (
            ChunkStore(tmp_path / "whole").path(index).read_bytes()
        )
    assert list(ChunkStore(tmp_path / "resumed").dir.glob(".*")) == []


def test_a_resumed_run_with_other_settings_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sample(tmp_path / "o", EVEN, "num_samples=2", "max_prompts=2")
    with pytest.raises(SystemExit):
        sample(tmp_path / "o", EVEN, "num_samples=3", "max_prompts=2")
    assert "other settings (num_samples differ)" in capsys.readouterr().err


def test_a_runs_export_is_sampled_from_run_dir(tmp_path: Path) -> None:
    """``run_dir=`` samples the run's export: a run whose export holds the initial tiny model samples what
    ``model=tiny`` does, byte for byte; with other weights in its export, other completions."""
    import torch
    from omegaconf import OmegaConf

    run = tmp_path / "run"
    cfg = compose_config(["algo=grpo", *TASK[:3]], run_dir=run)
    objective, _, tokenizer = build(cfg)
    objective.configure_model()
    run.mkdir()
    OmegaConf.save(cfg, run / "config.yaml", resolve=True)
    objective.policy.model.save_pretrained(run / "export")
    tokenizer.save_pretrained(run / "export")
    common = (EVEN, "max_new_tokens=8", "batch_size=4", "max_prompts=6", "num_samples=3")
    sample(tmp_path / "tiny", *common)
    main([f"out_dir={tmp_path / 'from_run'}", f"run_dir={run}", *common])
    for name in ("sft.jsonl", "pairs.jsonl", "samples.jsonl", "summary.json"):
        assert (tmp_path / "from_run" / name).read_bytes() == (tmp_path / "tiny" / name).read_bytes(), name

    with torch.no_grad():
        objective.policy.model.get_output_embeddings().weight.mul_(-1.0)
    objective.policy.model.save_pretrained(run / "export")
    main([f"out_dir={tmp_path / 'flipped'}", f"run_dir={run}", "weights=export", *common])
    flipped, tiny = lines(tmp_path / "flipped" / "samples.jsonl"), lines(tmp_path / "tiny" / "samples.jsonl")
    assert [r["completions"] for r in flipped] != [r["completions"] for r in tiny]
    assert [r["prompt"] for r in flipped] == [r["prompt"] for r in tiny]


def test_rejection_sampling_chain_passes_the_samples_and_the_model_along(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """experiment=rejection_sampling with the processes faked: the sample stage gets the command's model
    and data and its options; SFT reads <sample>/sft.jsonl from the tiny model the sample stage built (not
    the command's data); DPO reads <sample>/pairs.jsonl from the SFT export."""
    import rlhf_lab.stages as stages

    started: list[tuple[str, list[str]]] = []
    tiny_dir = tmp_path / "cache" / "tiny" / "abc"

    def fake_run(stage: stages.Stage, resume: bool, *_: object) -> None:
        started.append((stage.name, stage.command))
        stage.run_dir.mkdir(parents=True, exist_ok=True)
        if stage.app == "sample":
            model = {"name_or_path": str(tiny_dir), "built": True, "dtype": "float32", "target": "TinyModel"}
            (stage.run_dir / "model.json").write_text(json.dumps(model))
            (stage.run_dir / "summary.json").write_text("{}")
            return
        (stage.run_dir / "export").mkdir(exist_ok=True)
        (stage.run_dir / "export" / "config.json").write_text("{}")
        (stage.run_dir / "config.yaml").write_text("model:\n  _target_: rlhf_lab.models.hub.HubModel\n")
        (stage.run_dir / "summary.json").write_text(json.dumps({"run/complete": True}))

    monkeypatch.setattr(stages, "_run", fake_run)
    cfg = compose_config(
        ["experiment=rejection_sampling", "data=synthetic_rl", "paths.cache_dir=" + str(tmp_path / "cache")],
        run_dir=tmp_path / "run",
    )
    forwarded = ["model=tiny", "data=synthetic_rl", "data.source.num_train=64", "algo.beta=0.2", "seed=3"]
    stages.run_stages(cfg, forwarded)
    (_, sample_cmd), (_, sft_cmd), (_, dpo_cmd) = started
    sample_dir = Path(json.loads((tmp_path / "run" / "stages.json").read_text())[0]["run_dir"])
    sft_dir = Path(json.loads((tmp_path / "run" / "stages.json").read_text())[1]["run_dir"])
    assert sample_cmd[1:3] == ["-m", "rlhf_lab.sample"]
    assert sample_cmd[3:] == [
        "model=tiny", "data=synthetic_rl", "data.source.num_train=64", "seed=3", "num_samples=8",
        "pairs=best_vs_worst", "reward_functions=[rlhf_lab.rewards.exact_match]", "reward_models=[]",
        "reward_weights=null", "min_reward=null", "max_new_tokens=32", "temperature=1.0", "top_p=1.0",
        "split=train", "max_prompts=null", "batch_size=8", f"out_dir={sample_dir}",
    ]  # fmt: skip
    assert sft_cmd[1:3] == ["-m", "rlhf_lab"]
    assert sft_cmd[3:] == [
        "seed=3", "algo=sft", "data=jsonl", f"data.source.train_path={sample_dir}/sft.jsonl", "model=hub",
        f"model.name_or_path={tiny_dir}", "model.dtype=float32", "model.attn_implementation=sdpa",
        f"hydra.run.dir={sft_dir}",
    ]  # fmt: skip
    assert dpo_cmd[3:] == [
        "algo.beta=0.2", "seed=3", "algo=dpo", "data=jsonl", f"data.source.train_path={sample_dir}/pairs.jsonl",
        "model=hub", f"model.name_or_path={sft_dir / 'export'}", "model.dtype=float32",
        "model.attn_implementation=sdpa", f"hydra.run.dir={tmp_path / 'run'}",
    ]  # fmt: skip
    # Again: the sample and SFT stages are reused.
    started.clear()
    stages.run_stages(cfg, forwarded)
    assert [name for name, _ in started] == ["dpo"]


def test_a_sampling_stage_is_checked_early() -> None:
    from omegaconf import OmegaConf

    from rlhf_lab.stages import _specs

    sft = {"name": "sft", "overrides": ["algo=sft"]}
    with pytest.raises(ConfigError, match=r"stages\[1\]: the last stage trains"):
        _specs(OmegaConf.create({"stages": [sft, {"name": "s", "app": "sample"}]}))
    with pytest.raises(ConfigError, match=r"stages\[0\]: app=score needs a name, and app is one of: sample"):
        _specs(OmegaConf.create({"stages": [{"name": "s", "app": "score"}, sft]}))


def test_failing_rewards_drop_their_prompts_or_stop(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A reward NaN on the first prompt of each generation call (batch_size=4): under reward_errors=skip
    prompts 0 and 4 of 8 are dropped (no SFT row, no pair, counted); under stop, one error line."""
    failing = "reward_functions=[tests.custom_rewards.nan_on_first_prompt]"
    summary = sample(tmp_path / "skip", failing, "reward_errors=skip", "max_prompts=8", "num_samples=2")
    records = lines(tmp_path / "skip" / "samples.jsonl")
    assert [r["index"] for r in records if r["rewards"] is None] == [0, 4]
    assert (summary["reward_errors"], summary["sft_rows"], summary["prompts"]) == (2, 6, 8)
    assert summary["pairs"] + summary["ties"] + summary["identical_pairs"] == 6
    assert len(lines(tmp_path / "skip" / "sft.jsonl")) == 6
    with pytest.raises(SystemExit) as exited:
        sample(tmp_path / "stop", failing, "max_prompts=8", "num_samples=2")
    assert exited.value.code == 2
    assert "nan_on_first_prompt" in capsys.readouterr().err


@pytest.mark.slow
def test_a_killed_sampling_process_resumes_byte_for_byte(tmp_path: Path) -> None:
    """SIGKILL of ``python -m rlhf_lab.sample`` once its first chunk is on disk; the same command again
    writes what an uninterrupted process writes, byte for byte."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.subprocesses import REPO, python_module

    args = [*TASK, EVEN, "num_samples=3", "max_prompts=12", "chunk_size=2", "max_new_tokens=24"]
    env = {"OMP_NUM_THREADS": "1"}
    whole = python_module("rlhf_lab.sample", f"out_dir={tmp_path / 'whole'}", *args, env=env)
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "rlhf_lab.sample", f"out_dir={out}", *args]
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, **env}, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not ChunkStore(out).done() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    written = ChunkStore(out).done()
    assert written and len(written) < 6, written
    again = python_module("rlhf_lab.sample", f"out_dir={out}", *args, env=env)
    assert again.returncode == 0, again.stderr
    assert f"resuming: {len(written)} of 6 chunks already written" in again.stdout
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


@pytest.mark.slow
def test_rejection_sampling_from_one_command(tmp_path: Path) -> None:
    """``experiment=rejection_sampling`` on the tiny model: the sample stage writes the data, SFT trains on
    its best completions from the model it sampled, DPO on its pairs from the SFT export."""
    from omegaconf import OmegaConf

    from tests.test_e2e import cli

    result = cli(
        "experiment=rejection_sampling",
        "data=synthetic_rl",
        "data.source.num_train=32",
        "data.source.num_eval=8",
        "stages.0.options.reward_functions=[tests.custom_rewards.even_tokens]",
        "stages.0.options.num_samples=4",
        "stages.0.options.max_new_tokens=8",
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",
        "trainer.enable_progress_bar=false",
        run_dir=tmp_path / "rs",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stages = json.loads((tmp_path / "rs" / "stages.json").read_text())
    assert [stage["name"] for stage in stages] == ["sample", "sft", "dpo"]
    sample_dir, sft_dir = Path(stages[0]["run_dir"]), Path(stages[1]["run_dir"])
    summary = json.loads((sample_dir / "summary.json").read_text())
    assert summary["prompts"] == summary["sft_rows"] == len(lines(sample_dir / "sft.jsonl")) == 32
    assert summary["pairs"] == len(lines(sample_dir / "pairs.jsonl")) > 0
    model = json.loads((sample_dir / "model.json").read_text())
    assert (
        model["built"] and OmegaConf.load(sft_dir / "config.yaml").model.name_or_path == model["name_or_path"]
    )
    assert OmegaConf.load(sft_dir / "config.yaml").data.source.train_path == str(sample_dir / "sft.jsonl")
    dpo = OmegaConf.load(tmp_path / "rs" / "config.yaml")
    assert dpo.model.name_or_path == str(sft_dir / "export")
    assert dpo.data.source.train_path == str(sample_dir / "pairs.jsonl")
    assert (tmp_path / "rs" / "export" / "config.json").is_file()
